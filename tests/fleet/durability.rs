//! Nothing lost, nothing doubled: killed workers, a restarted nats-server, graceful drain.

use std::sync::Arc;
use std::time::{Duration, Instant};

use qefleet_scheduler::SchedulerArgs;
use qefleet_schemas::{EventKind, JobStatus};
use qefleet_shared::subjects::*;
use qefleet_worker::engines::DoctestEngine;
use qefleet_worker::PoolArg;

use crate::support::*;

/// Whether a worker has started the job (its `started` event exists).
async fn started(fleet: &Fleet, job_id: &str) -> bool {
    let Ok(stream) = fleet.js.get_stream(EVENTS_STREAM).await else {
        return false;
    };
    stream
        .get_last_raw_message_by_subject(&event_subject(EventKind::Started, job_id))
        .await
        .is_ok()
}

/// Submits a job whose doctest example sleeps `seconds` and waits until a worker runs it.
async fn submit_slow_job(fleet: &Fleet, seconds: f64, max_seconds: Option<u32>) -> String {
    let mut spec = job(&slow_module(seconds));
    spec.module_name = "slowmod".into();
    spec.budget.max_seconds = max_seconds;
    let job_id = fleet.submit_ok(&spec).await;
    eventually(
        Duration::from_secs(30),
        "a worker running the job",
        || async { started(fleet, &job_id).await },
    )
    .await;
    job_id
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_has_its_job_redelivered_and_completed_exactly_once() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let pid = fleet.worker_process(&["--engine", "doctest"]).id();
    let job_id = submit_slow_job(&fleet, 3.0, None).await;
    signal(pid, "-KILL");
    let mut args = fleet.worker_args(PoolArg::Local);
    args.ack_wait = Duration::from_secs(2);
    fleet
        .worker(args, Arc::new(DoctestEngine::probe(None).await))
        .await;
    let (result, _) = fleet.result(&job_id, Duration::from_secs(60)).await;
    assert_eq!(result.status, JobStatus::Succeeded, "{:?}", result.error);
    assert_eq!(result.attempt, 2, "redelivered after the kill");
    assert!(!result.worker_id.is_empty());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fleet.stream_messages(RESULTS_STREAM).await,
        1,
        "exactly one result"
    );
    assert_eq!(fleet.stream_messages(JOBS_STREAM).await, 0, "acknowledged");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_jobs_before_the_worker_exits() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let pid = fleet
        .worker_process(&["--worker-id", "draining-worker", "--engine", "doctest"])
        .id();
    let job_id = submit_slow_job(&fleet, 2.0, None).await;
    signal(pid, "-TERM");
    let (result, _) = fleet.result(&job_id, Duration::from_secs(30)).await;
    assert_eq!(result.status, JobStatus::Succeeded, "{:?}", result.error);
    assert_eq!(
        result.worker_id, "draining-worker",
        "finished by the draining worker"
    );
    assert_eq!(result.attempt, 1);
    let start = Instant::now();
    let mut exited = None;
    while start.elapsed() < Duration::from_secs(20) {
        let child = fleet.child(0);
        if let Some(status) = child.try_wait().expect("wait") {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = exited.expect("worker exits after draining");
    assert!(
        status.success(),
        "clean exit: {status:?}\n{}",
        fleet.worker_log(1)
    );
    assert!(fleet.worker_log(1).contains("draining"));
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_hands_back_jobs_delivered_after_its_shutdown() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let stopping = ScriptedEngine::succeeding(Duration::from_millis(10));
    let mut args = fleet.worker_args(PoolArg::Local);
    args.concurrency = 4;
    let trigger = fleet.worker(args, Arc::new(stopping.clone())).await;
    let warm_up = fleet.submit_ok(&job(CALC)).await;
    fleet.result(&warm_up, Duration::from_secs(20)).await;
    // The worker is in a fetch (each runs up to a second) when it is told to stop; jobs
    // queued right after reach that fetch.
    trigger.trigger();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(fleet.submit_ok(&job(CALC)).await);
    }
    fleet.until_no_live_worker().await;
    assert_eq!(
        stopping.runs(),
        1,
        "only the warm-up ran on the stopping worker"
    );
    let next = ScriptedEngine::succeeding(Duration::from_millis(10));
    let args = fleet.worker_args(PoolArg::Local);
    fleet.worker(args, Arc::new(next.clone())).await;
    for id in &ids {
        let (result, _) = fleet.result(id, Duration::from_secs(30)).await;
        assert_eq!(result.status, JobStatus::Succeeded, "{:?}", result.error);
    }
    assert_eq!(next.runs(), 3, "the next worker ran every job handed back");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_restart_mid_run_loses_no_job_and_duplicates_no_result() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let engine = ScriptedEngine::succeeding(Duration::from_millis(100));
    let mut args = fleet.worker_args(PoolArg::Local);
    args.concurrency = 4;
    fleet.worker(args, Arc::new(engine.clone())).await;
    let mut ids = Vec::new();
    for n in 0..40 {
        let mut spec = job(CALC);
        spec.job_id = Some(format!("restart-{n}"));
        ids.push(fleet.submit_ok(&spec).await);
    }
    eventually(
        Duration::from_secs(20),
        "some results before the restart",
        || async { fleet.stream_messages(RESULTS_STREAM).await >= 5 },
    )
    .await;
    fleet
        .server
        .restart()
        .expect("server restarts on the same store");
    for id in &ids {
        let (result, _) = fleet.result(id, Duration::from_secs(60)).await;
        assert_eq!(result.status, JobStatus::Succeeded);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fleet.stream_messages(RESULTS_STREAM).await,
        40,
        "one result per job"
    );
    assert_eq!(
        fleet.stream_messages(JOBS_STREAM).await,
        0,
        "every job acknowledged"
    );
    assert!(engine.runs() >= 40);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_computed_while_nats_is_down_is_published_later_without_rerunning_the_job() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    fleet.worker_process(&["--worker-id", "outbox-worker", "--engine", "doctest"]);
    // Too little budget left after the suite for mutation testing: the engine ends soon
    // after the 2 s example, while the server is still down.
    let job_id = submit_slow_job(&fleet, 2.0, Some(5)).await;
    fleet.server.kill();
    // The engine finishes while the server is down and the publish times out (5 s): the
    // result can only go to the outbox.
    tokio::time::sleep(Duration::from_secs(9)).await;
    fleet
        .server
        .restart()
        .expect("server restarts on the same store");
    let (result, _) = fleet.result(&job_id, Duration::from_secs(60)).await;
    assert_eq!(result.status, JobStatus::Succeeded, "{:?}", result.error);
    assert_eq!(result.attempt, 1, "the result of the first run");
    assert_eq!(result.worker_id, "outbox-worker");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = fleet.worker_log(1);
    assert!(log.contains("result kept in the outbox"), "{log}");
    let events = fleet.messages(EVENTS_STREAM).await;
    let count = |kind| {
        events
            .iter()
            .filter(|m| m.subject.as_str() == event_subject(kind, &job_id))
            .count()
    };
    assert_eq!(
        count(EventKind::Started),
        1,
        "the redelivered job was not run again"
    );
    assert_eq!(
        count(EventKind::Completed),
        1,
        "a result published from the outbox is accounted for like any other"
    );
    assert_eq!(fleet.stream_messages(RESULTS_STREAM).await, 1);
    assert_eq!(
        fleet.stream_messages(JOBS_STREAM).await,
        0,
        "acknowledged after reconnecting"
    );
    fleet.stop().await;
}
