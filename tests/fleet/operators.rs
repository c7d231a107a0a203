//! Operator commands: backlog replay, status, submit and result from the command line.

use std::sync::Arc;
use std::time::Duration;

use qefleet_scheduler::SchedulerArgs;
use qefleet_shared::subjects::*;
use qefleet_worker::PoolArg;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_replay_is_throttled_resumable_and_idempotent() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let file = fleet.dir.path().join("backlog.jsonl");
    let mut lines = Vec::new();
    for n in 0..6 {
        let mut spec = job(CALC);
        if n % 2 == 0 {
            spec.job_id = Some(format!("backlog-{n}"));
        }
        spec.metadata.insert("n".into(), n.to_string());
        lines.push(serde_json::to_string(&spec).expect("json"));
    }
    lines.insert(3, "{\"not\": \"a job\"}".into());
    std::fs::write(&file, lines.join("\n") + "\n").expect("write");
    let path = file.to_str().expect("utf-8 path");
    let checkpoint = fleet.dir.path().join("backlog.checkpoint");
    let first = fleet.cli(&["replay", path, "--rate", "20"]);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert_eq!(first.status.code(), Some(2), "one line rejected: {stderr}");
    assert!(stderr.contains("line 4: rejected"), "{stderr}");
    assert!(stderr.contains("accepted 6"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&checkpoint).expect("checkpoint"),
        "7"
    );
    assert_eq!(fleet.stream_messages(JOBS_STREAM).await, 6);
    // Resuming from the checkpoint submits nothing more.
    let resumed = fleet.cli(&["replay", path]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("resuming after line 7"));
    // Without the checkpoint every job is recognised, including those without job_id.
    std::fs::remove_file(&checkpoint).expect("rm");
    let again = fleet.cli(&["replay", path]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("accepted 0 duplicate 6"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        fleet.stream_messages(JOBS_STREAM).await,
        6,
        "nothing queued twice"
    );
    fleet.stop().await;
}

/// `qefleet submit --each-function`: a job per function of the module in one batch
/// request, each targeting its function; `--wait` prints every result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_each_function_queues_a_job_per_function_in_one_batch() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let args = fleet.worker_args(PoolArg::Local);
    fleet
        .worker(
            args,
            Arc::new(qefleet_worker::engines::DoctestEngine::probe(None).await),
        )
        .await;
    let module = fleet.dir.path().join("calc.py");
    std::fs::write(&module, CALC).expect("write");
    // Served before the requests are counted (see `serving_batches`).
    crate::submission::serving_batches(&fleet).await;
    let mut batches = fleet
        .client
        .subscribe(SUBMIT_BATCH_SUBJECT)
        .await
        .expect("subscribes");
    fleet.client.flush().await.expect("flush");
    let path = module.to_str().expect("path");
    let submitted = fleet.cli(&[
        "submit",
        path,
        "--each-function",
        "--job-id",
        "each",
        "--wait",
        "60s",
    ]);
    let (out, err) = (
        String::from_utf8_lossy(&submitted.stdout),
        String::from_utf8_lossy(&submitted.stderr),
    );
    assert!(submitted.status.success(), "{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], ["each-add", "each-half"], "{out}");
    assert!(
        out.contains("job each-add (calc): Succeeded")
            && out.contains("job each-half (calc): Succeeded"),
        "{out}"
    );
    assert!(
        err.contains("add: queued") && err.contains("half: queued"),
        "{err}"
    );
    assert_eq!(
        arrivals(&mut batches).await,
        1,
        "one batch request for both jobs"
    );
    // Each job tested its own function: the doctest engine took that function's examples.
    for (id, own, other) in [
        ("each-add", "test_calc_add", "test_calc_half"),
        ("each-half", "test_calc_half", "test_calc_add"),
    ] {
        let (result, _) = fleet.result(id, Duration::from_secs(5)).await;
        let file = result.test_file.unwrap_or_default();
        assert!(file.contains(own) && !file.contains(other), "{id}: {file}");
    }
    let conflicting = fleet.cli(&["submit", path, "--each-function", "--target", "add"]);
    assert!(
        !conflicting.status.success(),
        "--target with --each-function"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_result_and_status_work_from_the_command_line() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let module = fleet.dir.path().join("calc.py");
    std::fs::write(&module, CALC).expect("write");
    let submitted = fleet.cli(&[
        "submit",
        module.to_str().expect("path"),
        "--job-id",
        "cli-1",
        "--json",
    ]);
    assert!(
        submitted.status.success(),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&submitted.stdout).trim(), "cli-1");
    let report = fleet.status_json();
    let local = report["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .find(|p| p["pool"] == "local")
        .expect("local")
        .clone();
    assert_eq!(local["queued"], 1, "{report}");
    assert_eq!(
        local["consumer"], false,
        "no worker has served the pool yet"
    );
    assert!(
        local["oldest_pending_age_ms"].as_u64().is_some(),
        "{report}"
    );
    let waiting = fleet.cli(&["result", "cli-1"]);
    assert_eq!(waiting.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&waiting.stdout).contains("no result yet, queued"),
        "{}",
        String::from_utf8_lossy(&waiting.stdout)
    );
    let args = fleet.worker_args(PoolArg::Local);
    fleet
        .worker(
            args,
            Arc::new(qefleet_worker::engines::DoctestEngine::probe(None).await),
        )
        .await;
    let done = fleet.cli(&["result", "cli-1", "--wait", "60s"]);
    let out = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success(), "{out}");
    assert!(
        out.contains("Succeeded") && out.contains("2 passed, 0 failed"),
        "{out}"
    );
    let report = fleet.status_json();
    assert_eq!(
        report["live_workers"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_the_bundled_example_through_an_embedded_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(BIN)
        .args(["demo", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("qefleet demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("Succeeded") && stdout.contains(" 0 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("engine local-generator"),
        "the generator is the default: {stdout}"
    );
    assert!(
        stdout.contains("def test_divide_raises_zero_division_error"),
        "{stdout}"
    );
    assert!(!stdout.contains("mutation score: not measured"), "{stdout}");
    let config = std::fs::read_to_string(dir.path().join("nats/nats-server.conf"))
        .expect("embedded server config");
    assert!(config.contains("sync_interval: always"), "{config}");
}
