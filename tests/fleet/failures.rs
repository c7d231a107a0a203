//! Failures: malformed messages, retries, exhausted deliveries and dead-letter replay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use futures_util::StreamExt;
use qefleet_scheduler::SchedulerArgs;
use qefleet_schemas::JobStatus;
use qefleet_shared::provision::{ensure_consumer, pool_consumer_config, DeliverySettings};
use qefleet_shared::subjects::*;
use qefleet_worker::PoolArg;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_job_message_is_dead_lettered_with_its_reason_and_the_worker_keeps_serving() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let args = fleet.worker_args(PoolArg::Local);
    fleet
        .worker(args, Arc::new(ScriptedEngine::succeeding(Duration::ZERO)))
        .await;
    fleet
        .js
        .publish("qe.jobs.local.simple", "this is not a job".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let job_id = fleet.submit_ok(&job(CALC)).await;
    let (result, _) = fleet.result(&job_id, Duration::from_secs(20)).await;
    assert_eq!(result.status, JobStatus::Succeeded);
    let letter = fleet
        .only_dead_letter(Duration::from_secs(10), "poison message dead-lettered")
        .await;
    assert_eq!(letter.subject.as_str(), "qe.dlq.local");
    assert_eq!(
        letter.payload.as_ref(),
        b"this is not a job",
        "original payload kept"
    );
    assert_eq!(header(&letter, HEADER_DLQ_SUBJECT), "qe.jobs.local.simple");
    assert_eq!(header(&letter, HEADER_DLQ_DELIVERIES), "1");
    assert!(
        header(&letter, HEADER_DLQ_REASON).starts_with("malformed job message"),
        "{}",
        header(&letter, HEADER_DLQ_REASON)
    );
    assert_eq!(
        fleet.stream_messages(JOBS_STREAM).await,
        0,
        "terminated, not left behind"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_failure_is_retried_after_a_delay_and_then_succeeds() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let mut engine = ScriptedEngine::succeeding(Duration::ZERO);
    engine.fail_until_attempt = 2;
    let mut args = fleet.worker_args(PoolArg::Local);
    args.retry_initial = Duration::from_millis(400);
    fleet.worker(args, Arc::new(engine.clone())).await;
    let started = Instant::now();
    let job_id = fleet.submit_ok(&job(CALC)).await;
    let (result, _) = fleet.result(&job_id, Duration::from_secs(30)).await;
    assert_eq!(result.status, JobStatus::Succeeded);
    assert_eq!(result.attempt, 3);
    assert_eq!(engine.runs(), 3);
    // Delays: >= 200 ms after attempt 1 and >= 400 ms after attempt 2 (half-jittered).
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fleet.stream_messages(DLQ_STREAM).await, 0);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_deliveries_land_in_the_dlq_and_dlq_replay_brings_them_back() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let mut failing = ScriptedEngine::succeeding(Duration::ZERO);
    failing.fail_until_attempt = u32::MAX;
    let mut args = fleet.worker_args(PoolArg::Local);
    args.max_deliver = 2;
    args.retry_initial = Duration::from_millis(100);
    let stop_failing = fleet.worker(args, Arc::new(failing.clone())).await;
    let job_id = fleet.submit_ok(&job(CALC)).await;
    let letter = fleet
        .only_dead_letter(Duration::from_secs(20), "job dead-lettered")
        .await;
    assert_eq!(failing.runs(), 2);
    assert!(
        header(&letter, HEADER_DLQ_REASON).starts_with("gave up after 2 attempts"),
        "{}",
        header(&letter, HEADER_DLQ_REASON)
    );
    stop_failing.trigger();

    let listed = fleet.cli(&["dlq", "list"]);
    let listing = String::from_utf8_lossy(&listed.stdout);
    assert!(listing.contains(&job_id), "{listing}");

    let mut args = fleet.worker_args(PoolArg::Local);
    args.max_deliver = 2;
    fleet
        .worker(args, Arc::new(ScriptedEngine::succeeding(Duration::ZERO)))
        .await;
    let replayed = fleet.cli(&["dlq", "replay", "--rate", "10"]);
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    let (result, _) = fleet.result(&job_id, Duration::from_secs(20)).await;
    assert_eq!(result.status, JobStatus::Succeeded);
    assert_eq!(
        fleet.stream_messages(DLQ_STREAM).await,
        0,
        "replayed letters leave the DLQ"
    );
    // Replaying again finds nothing and changes nothing.
    let again = fleet.cli(&["dlq", "replay"]);
    assert!(again.status.success());
    assert_eq!(fleet.stream_messages(RESULTS_STREAM).await, 1);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_workers_never_acknowledge_is_dead_lettered_from_the_advisory() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let settings = DeliverySettings {
        ack_wait: Duration::from_secs(1),
        max_deliver: 2,
        ..DeliverySettings::default()
    };
    let consumer: PullConsumer = ensure_consumer(
        &fleet.js,
        JOBS_STREAM,
        pool_consumer_config(qefleet_schemas::Pool::Local, settings),
    )
    .await
    .expect("consumer");
    let job_id = fleet.submit_ok(&job(CALC)).await;
    // Two deliveries taken and never acknowledged: workers that died mid-job.
    let mut taken = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while taken < 2 && Instant::now() < deadline {
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .expect("fetch");
        while let Some(Ok(_unacked)) = batch.next().await {
            taken += 1;
        }
    }
    assert_eq!(taken, 2);
    let mut args = fleet.worker_args(PoolArg::Local);
    args.ack_wait = Duration::from_secs(1);
    args.max_deliver = 2;
    let engine = ScriptedEngine::succeeding(Duration::ZERO);
    fleet.worker(args, Arc::new(engine.clone())).await;
    let letter = fleet
        .only_dead_letter(
            Duration::from_secs(15),
            "advisory turned into a dead letter",
        )
        .await;
    assert!(
        header(&letter, HEADER_DLQ_REASON).contains("max deliveries (2) exhausted"),
        "{}",
        header(&letter, HEADER_DLQ_REASON)
    );
    let (queued, _) = qefleet_shared::messages::decode::<qefleet_schemas::QueuedJob>(
        Some(&letter.headers),
        &letter.payload,
    )
    .expect("original job kept");
    assert_eq!(queued.job_id(), job_id);
    assert_eq!(
        fleet.stream_messages(JOBS_STREAM).await,
        0,
        "removed from the work queue"
    );
    assert_eq!(engine.runs(), 0);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_modules_fail_with_a_clear_reason_and_the_worker_keeps_serving() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let args = fleet.worker_args(PoolArg::Local);
    fleet
        .worker(
            args,
            Arc::new(qefleet_worker::engines::DoctestEngine::probe(None).await),
        )
        .await;
    let looping = "def spin():\n    \"\"\"\n    >>> spin()\n    1\n    \"\"\"\n    while True:\n        pass\n";
    let mut spec = job(looping);
    spec.module_name = "spin".into();
    spec.budget.max_seconds = Some(3);
    let spin = fleet.submit_ok(&spec).await;
    let flooding = "print('x' * 10_000_000)\n\ndef f():\n    \"\"\"\n    >>> f()\n    1\n    \"\"\"\n    return 1\n";
    let mut spec = job(flooding);
    spec.module_name = "flood".into();
    let flood = fleet.submit_ok(&spec).await;
    let broken = "import this_module_does_not_exist\n";
    let mut spec = job(broken);
    spec.module_name = "broken".into();
    let import = fleet.submit_ok(&spec).await;
    for (id, needle) in [
        (&spin, "time budget"),
        (&flood, "printed more than"),
        (&import, "does not import"),
    ] {
        let (result, _) = fleet.result(id, Duration::from_secs(60)).await;
        assert_eq!(result.status, JobStatus::Failed, "{id}");
        let error = result.error.unwrap_or_default();
        assert!(error.contains(needle), "{id}: {error}");
    }
    let ok = fleet.submit_ok(&job(CALC)).await;
    let (result, _) = fleet.result(&ok, Duration::from_secs(60)).await;
    assert_eq!(result.status, JobStatus::Succeeded, "{:?}", result.error);
    fleet.stop().await;
}
