//! Every 100 completions, exactly one consolidation job, however many schedulers run.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use qefleet_scheduler::SchedulerArgs;
use qefleet_schemas::EventKind;
use qefleet_shared::subjects::*;
use qefleet_worker::PoolArg;

use crate::support::*;

async fn consolidated_events(fleet: &Fleet) -> u64 {
    let subject = event_filter(EventKind::Consolidated);
    let stream = fleet
        .js
        .get_stream(EVENTS_STREAM)
        .await
        .expect("events stream");
    let mut subjects = stream.info_with_subjects(&subject).await.expect("info");
    let mut count = 0;
    while let Some(Ok((_, n))) = subjects.next().await {
        count += n as u64;
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_fifty_completions_with_two_scheduler_replicas_make_exactly_two_consolidations()
{
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let mut args = fleet.worker_args(PoolArg::Local);
    args.concurrency = 16;
    fleet
        .worker(args, Arc::new(ScriptedEngine::succeeding(Duration::ZERO)))
        .await;
    let args = fleet.worker_args(PoolArg::Maint);
    fleet
        .worker(args, Arc::new(ScriptedEngine::succeeding(Duration::ZERO)))
        .await;
    for n in 0..250 {
        let mut spec = job(CALC);
        spec.job_id = Some(format!("c-{n}"));
        fleet.submit_ok(&spec).await;
    }
    eventually(Duration::from_secs(60), "250 results", || async {
        fleet.stream_messages(RESULTS_STREAM).await == 250
    })
    .await;
    eventually(Duration::from_secs(20), "two consolidations", || async {
        consolidated_events(&fleet).await >= 2
    })
    .await;
    // Give a duplicate time to show up before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(consolidated_events(&fleet).await, 2);
    assert_eq!(
        marker(&fleet, "1").await.as_deref(),
        Some(&b"published"[..])
    );
    assert_eq!(
        marker(&fleet, "2").await.as_deref(),
        Some(&b"published"[..])
    );
    assert_eq!(marker(&fleet, "3").await, None);
    let report = fleet.status_json();
    assert_eq!(
        (&report["completions"], &report["consolidations"]),
        (&serde_json::json!(250), &serde_json::json!(2)),
        "qefleet status counts them"
    );
    assert_eq!(
        fleet.stream_messages(JOBS_STREAM).await,
        0,
        "consolidation jobs consumed"
    );
    fleet.stop().await;
}

/// The value under `key` in the consolidation markers bucket.
async fn marker(fleet: &Fleet, key: &str) -> Option<Vec<u8>> {
    let markers = fleet
        .js
        .get_key_value(CONSOLIDATIONS_BUCKET)
        .await
        .expect("bucket");
    markers.get(key).await.expect("get").map(|v| v.to_vec())
}

/// Results published straight onto the results stream, as workers store them.
async fn store_results(fleet: &Fleet, ids: std::ops::Range<u32>) {
    for n in ids {
        fleet
            .js
            .publish(format!("qe.results.m-{n}"), "done".into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_takes_over_the_count_of_the_retired_completion_counter_consumer() {
    use async_nats::jetstream::consumer::pull;

    // Before stop 21 a durable consumer counted completions; one that had acknowledged
    // 200 results had triggered consolidations 1 and 2.
    let mut fleet = Fleet::start().await;
    store_results(&fleet, 0..250).await;
    let results = fleet.js.get_stream(RESULTS_STREAM).await.expect("stream");
    let old = results
        .create_consumer(pull::Config {
            durable_name: Some(COMPLETION_COUNTER_CONSUMER.to_string()),
            filter_subject: RESULTS_SUBJECTS.to_string(),
            headers_only: true,
            ..Default::default()
        })
        .await
        .expect("old consumer");
    let mut batch = old
        .fetch()
        .max_messages(200)
        .messages()
        .await
        .expect("fetch");
    let mut acked = 0;
    while let Some(message) = batch.next().await {
        message.expect("message").double_ack().await.expect("ack");
        acked += 1;
    }
    assert_eq!(acked, 200);

    fleet.scheduler(SchedulerArgs::default()).await;
    eventually(
        Duration::from_secs(20),
        "the old consumer deleted",
        || async {
            results
                .consumer_info(COMPLETION_COUNTER_CONSUMER)
                .await
                .is_err()
        },
    )
    .await;
    assert_eq!(
        marker(&fleet, "watermark").await.as_deref(),
        Some(&b"2"[..])
    );
    // Several polls later nothing was published again for 1 and 2.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fleet.stream_messages(JOBS_STREAM).await, 0);

    // Counting goes on from there: the 300th result triggers consolidation 3, once.
    store_results(&fleet, 250..300).await;
    eventually(
        Duration::from_secs(20),
        "consolidation 3 queued",
        || async { fleet.stream_messages(JOBS_STREAM).await >= 1 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let queued = fleet.messages(JOBS_STREAM).await;
    assert_eq!(queued.len(), 1, "one consolidation job");
    let (job, _) = qefleet_shared::messages::decode::<qefleet_schemas::ConsolidationJob>(
        Some(&queued[0].headers),
        &queued[0].payload,
    )
    .expect("a consolidation job");
    assert_eq!((job.number, job.completions), (3, 300));
    assert_eq!(
        marker(&fleet, "watermark").await.as_deref(),
        Some(&b"3"[..])
    );
    assert_eq!(marker(&fleet, "1").await, None);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sona_consolidations_learn_from_results_store_versioned_snapshots_and_apply_once() {
    use qefleet_learn::SonaSnapshot;
    use qefleet_schemas::ConsolidationJob;
    use qefleet_shared::embedded::free_port;
    use qefleet_worker::consolidator::{ConsolidationContext, Consolidator};
    use qefleet_worker::sona::SonaConsolidator;

    let mut fleet = Fleet::start().await;
    let scheduler_port = fleet
        .scheduler_with_metrics(SchedulerArgs {
            consolidate_every: 10,
            ..SchedulerArgs::default()
        })
        .await;
    let mut args = fleet.worker_args(PoolArg::Local);
    args.concurrency = 4;
    fleet
        .worker(args, Arc::new(ScriptedEngine::succeeding(Duration::ZERO)))
        .await;
    let maint_port = free_port();
    let mut args = fleet.worker_args(PoolArg::Maint);
    args.metrics_addr = Some(([127, 0, 0, 1], maint_port).into());
    // One job at a time: consolidation 1 is applied before 2 (with more in flight, a later
    // one may apply first and the earlier one find itself already covered).
    args.concurrency = 1;
    fleet
        .worker_consolidating(
            args,
            Arc::new(ScriptedEngine::succeeding(Duration::ZERO)),
            Arc::new(SonaConsolidator::default()),
        )
        .await;
    // Consolidations are triggered by a poll of the results stream, so 25 quick results
    // could trigger both at once and the first would learn from all of them: the second
    // batch of jobs waits for the first consolidation.
    for _ in 0..10 {
        fleet.submit_ok(&job(CALC)).await;
    }
    eventually(
        Duration::from_secs(60),
        "the first consolidation",
        || async { consolidated_events(&fleet).await >= 1 },
    )
    .await;
    for _ in 0..15 {
        fleet.submit_ok(&job(CALC)).await;
    }
    eventually(Duration::from_secs(60), "two consolidations", || async {
        consolidated_events(&fleet).await >= 2
    })
    .await;
    let bucket = fleet.js.get_key_value(SONA_BUCKET).await.expect("bucket");
    let entry = bucket
        .entry(QUALITY_PREDICTOR_KEY)
        .await
        .expect("entry")
        .expect("a snapshot");
    let snapshot = SonaSnapshot::decode(&entry.value).expect("snapshot");
    assert_eq!((snapshot.version, snapshot.consolidation), (2, 2));
    assert!(
        snapshot.jobs >= 20 && snapshot.jobs <= 25,
        "learned from each result once: {}",
        snapshot.jobs
    );
    // The scripted engine reports quality 0.95 for these modules: the predictor learned it.
    let report = qefleet_scheduler::complexity::analyze(CALC)
        .expect("analyses")
        .report;
    let predicted = snapshot.predictor.predict(&qefleet_worker::sona::features(
        &report,
        qefleet_schemas::Pool::Local,
    ));
    assert!(predicted > 0.8, "predicted quality {predicted}");
    // The first snapshot is kept for rollback.
    let mut history = bucket
        .history(QUALITY_PREDICTOR_KEY)
        .await
        .expect("history");
    let mut versions = Vec::new();
    while let Some(Ok(e)) = history.next().await {
        versions.push(
            SonaSnapshot::decode(&e.value)
                .expect("old snapshot")
                .version,
        );
    }
    assert_eq!(versions, vec![1, 2]);
    // The scheduler follows the snapshots; the maint worker reports what it applied.
    metrics_show(
        scheduler_port,
        &["qefleet_sona_adapter_version 2"],
        "scheduler adapter version",
    )
    .await;
    metrics_show(
        maint_port,
        &[
            "qefleet_sona_adapter_version 2",
            "qefleet_sona_consolidation_seconds_count{outcome=\"applied\"} 2",
        ],
        "maint metrics",
    )
    .await;
    // A redelivered consolidation job that was already applied changes nothing.
    let context = ConsolidationContext {
        js: fleet.js.clone(),
        metrics: qefleet_shared::metrics::Metrics::new(),
    };
    let again = ConsolidationJob {
        schema_version: qefleet_schemas::SCHEMA_VERSION,
        number: 2,
        completions: 20,
        triggered_at_ms: 0,
    };
    let summary = SonaConsolidator::default()
        .consolidate(&again, &context)
        .await
        .expect("consolidates");
    assert!(summary.contains("already applied"), "{summary}");
    let after = bucket
        .entry(QUALITY_PREDICTOR_KEY)
        .await
        .expect("entry")
        .expect("snapshot");
    assert_eq!(after.revision, entry.revision, "nothing stored");
    assert!(
        snapshot.jobs_of(qefleet_schemas::Pool::Local) >= 20,
        "{:?}",
        snapshot.jobs_by_pool
    );
    // Rollback: the previous snapshot is put back as a new revision, and the scheduler
    // swaps it in.
    let listed = fleet.cli(&["sona", "history"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{listed:?}");
    assert!(
        text.contains("adapter v1") && text.contains("* revision") && text.contains("local "),
        "{text}"
    );
    let refused = fleet.cli(&["sona", "rollback", "--to", "999"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("revision 999 is not kept"),
        "{refused:?}"
    );
    let rolled = fleet.cli(&["sona", "rollback"]);
    let text = String::from_utf8_lossy(&rolled.stdout);
    assert!(rolled.status.success(), "{rolled:?}");
    assert!(
        text.contains("rolled back from") && text.contains("adapter v2"),
        "{text}"
    );
    let history = qefleet_worker::sona::history(&bucket)
        .await
        .expect("history");
    assert_eq!(
        history
            .iter()
            .map(|r| r.snapshot.version)
            .collect::<Vec<_>>(),
        vec![1, 2, 1]
    );
    assert_eq!(history[2].snapshot, history[0].snapshot);
    metrics_show(
        scheduler_port,
        &["qefleet_sona_adapter_version 1"],
        "scheduler adapter version after the rollback",
    )
    .await;
    let status = fleet.cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("SONA quality predictor: adapter v1 (consolidation 1, revision 3)"),
        "{text}"
    );
    fleet.stop().await;
}
