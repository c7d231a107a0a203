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
    let markers = fleet
        .js
        .get_key_value(CONSOLIDATIONS_BUCKET)
        .await
        .expect("bucket");
    assert_eq!(
        markers.get("1").await.expect("get").as_deref(),
        Some(&b"published"[..])
    );
    assert_eq!(
        markers.get("2").await.expect("get").as_deref(),
        Some(&b"published"[..])
    );
    assert_eq!(markers.get("3").await.expect("get"), None);
    assert_eq!(
        fleet.stream_messages(JOBS_STREAM).await,
        0,
        "consolidation jobs consumed"
    );
    fleet.stop().await;
}
