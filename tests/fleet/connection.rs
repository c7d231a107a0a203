//! Connecting and provisioning: old, unreachable and misconfigured servers get advice.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::{Config, RetentionPolicy};
use qefleet_scheduler::SchedulerArgs;
use qefleet_shared::embedded::free_port;
use qefleet_shared::nats::{connect, ConnectError, NatsArgs};
use qefleet_shared::provision::{ensure_all, ProvisionError};
use qefleet_shared::subjects::*;
use qefleet_worker::PoolArg;

use crate::support::*;

/// Debian's nats-server 2.9.10, the kind of old server the fleet must refuse.
const OLD_SERVER: &str = "/usr/sbin/nats-server";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_older_than_2_10_23_is_refused_with_what_to_do() {
    assert!(
        std::path::Path::new(OLD_SERVER).exists(),
        "this test needs Debian's old nats-server at {OLD_SERVER} (apt-get install nats-server)"
    );
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut old = Command::new(OLD_SERVER)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("old server starts");
    let url = format!("nats://127.0.0.1:{port}");
    let mut outcome = None;
    for _ in 0..100 {
        match connect(&NatsArgs::for_url(&url), "qefleet-test").await {
            Err(ConnectError::Unreachable { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => {
                outcome = Some(other);
                break;
            }
        }
    }
    let _ = old.kill();
    let _ = old.wait();
    let err = outcome.expect("old server answered").expect_err("refused");
    let message = err.to_string();
    assert!(
        matches!(err, ConnectError::ServerTooOld { .. }),
        "{message}"
    );
    assert!(
        message.contains("2.9.10") && message.contains("2.10.23") && message.contains("upgrade"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_gets_a_message_that_says_what_to_do() {
    let url = format!("nats://127.0.0.1:{}", free_port());
    let mut args = NatsArgs::for_url(&url);
    args.nats_connect_timeout = Duration::from_millis(500);
    let err = connect(&args, "qefleet-test")
        .await
        .expect_err("nothing listens");
    let message = err.to_string();
    assert!(
        message.contains(&url) && message.contains("qefleet up"),
        "{message}"
    );
    let output = Command::new(BIN)
        .args([
            "status",
            "--nats-url",
            &url,
            "--nats-connect-timeout",
            "500ms",
        ])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot reach NATS"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_existing_stream_is_reported_not_overwritten() {
    let fleet = Fleet::start().await;
    fleet
        .js
        .delete_stream(RESULTS_STREAM)
        .await
        .expect("delete");
    fleet
        .js
        .create_stream(Config {
            name: RESULTS_STREAM.into(),
            subjects: vec![RESULTS_SUBJECTS.into()],
            retention: RetentionPolicy::Interest,
            ..Default::default()
        })
        .await
        .expect("operator's own stream");
    let err = ensure_all(&fleet.js).await.expect_err("conflict");
    let message = err.to_string();
    assert!(
        matches!(err, ProvisionError::StreamConflict { .. }),
        "{message}"
    );
    assert!(
        message.contains("retention") && message.contains("max_msgs_per_subject"),
        "{message}"
    );
    let mut stream = fleet
        .js
        .get_stream(RESULTS_STREAM)
        .await
        .expect("still there");
    assert_eq!(
        stream.info().await.expect("info").config.retention,
        RetentionPolicy::Interest,
        "untouched"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_serves_prometheus_metrics() {
    let mut fleet = Fleet::start().await;
    let port = free_port();
    fleet
        .scheduler(SchedulerArgs {
            metrics_addr: Some(format!("127.0.0.1:{port}").parse().expect("addr")),
            ..SchedulerArgs::default()
        })
        .await;
    fleet.submit_ok(&job(CALC)).await;
    let mut bad = job(CALC);
    bad.language = "perl".into();
    fleet
        .submit(&bad, qefleet_schemas::ContentType::MsgPack)
        .await;
    let body = http_get(port, "/metrics").await;
    assert!(
        body.contains("qefleet_jobs_submitted_total{complexity=\"simple\",pool=\"local\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("qefleet_submissions_rejected_total{reason=\"unsupported_language\"} 1"),
        "{body}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_serves_outcome_rounds_and_quality_metrics() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let port = free_port();
    let mut args = fleet.worker_args(PoolArg::Local);
    args.metrics_addr = Some(format!("127.0.0.1:{port}").parse().expect("addr"));
    fleet
        .worker(args, Arc::new(ScriptedEngine::succeeding(Duration::ZERO)))
        .await;
    let job_id = fleet.submit_ok(&job(CALC)).await;
    fleet.result(&job_id, Duration::from_secs(30)).await;
    let body = http_get(port, "/metrics").await;
    for line in [
        "qefleet_jobs_completed_total{complexity=\"simple\",outcome=\"succeeded\",pool=\"local\"} 1",
        "qefleet_refinement_rounds_bucket{engine=\"scripted\",pool=\"local\",le=\"1\"} 1",
        "qefleet_quality_score_bucket{engine=\"scripted\",pool=\"local\",le=\"0.9\"} 0",
        "qefleet_quality_score_count{engine=\"scripted\",pool=\"local\"} 1",
    ] {
        assert!(body.contains(line), "{line} missing:\n{body}");
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_records_are_persisted_asynchronously_and_serve_as_a_key_value_bucket() {
    use async_nats::jetstream::stream::PersistenceMode;

    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let persist = |name: &str| {
        let js = fleet.js.clone();
        let name = name.to_string();
        async move {
            let mut stream = js.get_stream(&name).await.expect("stream");
            stream.info().await.expect("info").config.persist_mode
        }
    };
    // An index of what the fsynced streams hold (ADR 0016); jobs stay fsynced.
    assert_eq!(
        persist(&format!("KV_{JOB_STATE_BUCKET}")).await,
        Some(PersistenceMode::Async)
    );
    assert_ne!(persist(JOBS_STREAM).await, Some(PersistenceMode::Async));
    // A bucket like any other: one value per key, the latest wins.
    let bucket = fleet
        .js
        .get_key_value(JOB_STATE_BUCKET)
        .await
        .expect("bucket");
    bucket.put("job-1", "queued".into()).await.expect("put");
    bucket.put("job-1", "done".into()).await.expect("put");
    assert_eq!(
        bucket.get("job-1").await.expect("get").as_deref(),
        Some(&b"done"[..])
    );
    // Provisioning again changes nothing.
    ensure_all(&fleet.js).await.expect("idempotent");
    let submitted = fleet.submit_ok(&job(CALC)).await;
    assert!(
        bucket.get(&submitted).await.expect("get").is_some(),
        "the scheduler records the job"
    );
    fleet.stop().await;
}
