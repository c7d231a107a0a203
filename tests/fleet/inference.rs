//! Local inference through the fleet: a `qefleet worker --engine local-llm` process on a
//! tiny generated causal LM (onnx-models/tiny_llm.py, answering one suite by heart) serves
//! a job end to end with the process's embedder started; status shows the execution
//! providers and /metrics the inference figures.

use std::path::Path;
use std::time::Duration;

use qefleet_scheduler::SchedulerArgs;
use qefleet_shared::embedded::venv_python;
use qefleet_shared::metrics::sample_sum;

use crate::support::*;

const MODULE: &str = "def add(a, b):\n    return a + b\n\n\ndef sign(x):\n    if x < 0:\n        return -1\n    return 1\n";
const ANSWER: &str = "```python\nimport calc\n\n\ndef test_add():\n    assert calc.add(2, 3) == 5\n\n\ndef test_sign():\n    assert calc.sign(-4) == -1\n    assert calc.sign(4) == 1\n```\n";

fn tiny_model(dir: &Path) -> std::path::PathBuf {
    let answer = dir.join("answer.txt");
    std::fs::write(&answer, ANSWER).expect("write answer");
    let python = venv_python().expect(".venv/bin/python (run ./scripts/setup.sh)");
    let model = dir.join("tiny-qwen2");
    let status = std::process::Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("onnx-models/tiny_llm.py"))
        .arg(&model)
        .arg("--answer")
        .arg(&answer)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("tiny_llm.py");
    assert!(status.success());
    model
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_llm_worker_serves_a_job_and_reports_its_provider() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let model = tiny_model(fleet.dir.path());
    let metrics_port = fleet.worker_process_with_metrics(&[
        "--engine",
        "local-llm",
        "--local-model",
        model.to_str().expect("path"),
        "--device",
        "cpu",
        "--inference-threads",
        "1",
        "--embeddings",
    ]);
    let mut spec = job(MODULE);
    spec.module_name = "calc".into();
    let job_id = fleet.submit_ok(&spec).await;
    let (result, _) = fleet.result(&job_id, Duration::from_secs(120)).await;
    assert_eq!(
        result.engine,
        "local-llm",
        "{result:?}\n{}",
        fleet.worker_log(1)
    );
    assert_eq!(
        result.status,
        qefleet_schemas::JobStatus::Succeeded,
        "{result:?}"
    );
    assert_eq!((result.tests_passed, result.tests_failed), (2, 0));
    assert_eq!(result.line_coverage, Some(1.0));
    assert!(
        result.tokens.prompt > 0 && result.tokens.completion > 0,
        "{:?}",
        result.tokens
    );

    let report = fleet.status_json();
    let workers = report["live_workers"].as_array().expect("workers");
    assert!(
        workers.iter().any(|w| w["engine"] == "local-llm"
            && w["inference_provider"] == "cpu"
            && w["embedding_provider"] == "cpu"),
        "{report}"
    );
    let body = http_get(metrics_port, "/metrics").await;
    let tokens = sample_sum(
        &body,
        "qefleet_inference_tokens_total",
        &[("provider", "cpu")],
    )
    .unwrap_or_else(|| panic!("no inference tokens metric:\n{body}"));
    assert!(tokens >= result.tokens.completion as f64, "{tokens}");
    for expected in [
        "qefleet_inference_seconds_count{op=\"generate\",provider=\"cpu\"} 1",
        "qefleet_inference_provider_info{op=\"generate\",provider=\"cpu\"} 1",
        "qefleet_inference_provider_info{op=\"embed\",provider=\"cpu\"} 1",
    ] {
        assert!(body.contains(expected), "no {expected}:\n{body}");
    }
    fleet.stop().await;
}

#[test]
fn a_missing_runtime_or_model_says_what_to_install() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("qefleet runs");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let missing = run(
        &["worker", "--embeddings", "--device", "cpu"],
        &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")],
    );
    assert!(
        missing.contains("is not a file") && missing.contains("pip install onnxruntime==1.31.1"),
        "{missing}"
    );
    let not_ort = run(
        &["worker", "--embeddings", "--device", "cpu"],
        &[("ORT_DYLIB_PATH", "/bin/ls")],
    );
    assert!(
        not_ort.contains("cannot load ONNX Runtime from /bin/ls")
            && not_ort.contains("./scripts/setup.sh"),
        "{not_ort}"
    );
    let no_model = run(
        &[
            "worker",
            "--embeddings",
            "--embedding-model",
            "/nonexistent",
            "--device",
            "cpu",
        ],
        &[],
    );
    assert!(no_model.contains("minilm.py convert"), "{no_model}");
    let wrong_engine = run(&["worker", "--local-model", "/tmp/m"], &[]);
    assert!(
        wrong_engine.contains("is for --engine local-llm (this worker runs --engine generator)"),
        "{wrong_engine}"
    );
}
