//! Observability against the real tools: promtool runs the alert rules' unit tests and
//! parses every dashboard query, and a real Prometheus (Debian's, unpacked by
//! scripts/setup.sh) scrapes a scheduler and workers while their queue backs up and drains.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use qefleet_scheduler::SchedulerArgs;
use qefleet_shared::embedded::free_port;
use qefleet_shared::metrics::Metrics;
use qefleet_worker::PoolArg;

use crate::support::{eventually, job, Fleet, ScriptedEngine, CALC};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A binary of the Prometheus package: `$QEFLEET_PROMETHEUS_DIR/<name>`, else
/// `.tools/prometheus/usr/bin/<name>` (what scripts/setup.sh unpacks).
fn prometheus_tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("QEFLEET_PROMETHEUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join(".tools/prometheus/usr/bin"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: run ./scripts/setup.sh (it unpacks Debian's prometheus package into .tools/prometheus)",
        path.display()
    );
    path
}

fn promtool(args: &[&str], cwd: &Path) -> String {
    let out = Command::new(prometheus_tool("promtool"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// Names after `- <key>: ` in a rules file (alert or record names).
fn rule_names(rules: &str, key: &str) -> Vec<String> {
    let prefix = format!("- {key}: ");
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&prefix))
        .map(|n| n.trim().to_string())
        .collect()
}

/// Every `qefleet_*` metric an expression names, each checked against what the code
/// registers (histogram series by their family).
fn unknown_metrics(expr: &str, exported: &BTreeSet<String>) -> Vec<String> {
    let mut unknown = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("qefleet_") {
        let start = i + at;
        let before_ok = start == 0
            || !(bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b':');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map(|n| start + n)
            .unwrap_or(expr.len());
        let name = &expr[start..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| exported.contains(*f)))
            .unwrap_or(name);
        if before_ok && !exported.contains(family) {
            unknown.push(name.to_string());
        }
        i = end;
    }
    unknown
}

fn exported() -> BTreeSet<String> {
    Metrics::new().names().iter().cloned().collect()
}

#[test]
fn alert_rules_pass_promtool_and_each_has_a_runbook_section() {
    let dir = Path::new(ROOT).join("prometheus");
    let checked = promtool(&["check", "rules", "alerts.yml"], &dir);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts.test.yml"], &dir.join("tests"));
    assert!(tested.contains("SUCCESS"), "{tested}");

    let rules = std::fs::read_to_string(dir.join("alerts.yml")).expect("alerts.yml");
    let tests = std::fs::read_to_string(dir.join("tests/alerts.test.yml")).expect("tests");
    let runbook =
        std::fs::read_to_string(Path::new(ROOT).join("docs/RUNBOOK.md")).expect("RUNBOOK.md");
    let alerts = rule_names(&rules, "alert");
    assert!(alerts.len() >= 10, "{alerts:?}");
    for alert in &alerts {
        assert!(
            runbook.contains(&format!("\n## {alert}\n")),
            "docs/RUNBOOK.md has no section for {alert}"
        );
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "prometheus/tests/alerts.test.yml does not test {alert}"
        );
    }
    let unknown = unknown_metrics(&rules, &exported());
    assert!(
        unknown.is_empty(),
        "alerts.yml names metrics nobody exports: {unknown:?}"
    );
}

/// Every `expr` of every panel, recursing into rows.
fn panel_queries(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
    for panel in panels.as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("").to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((title.clone(), expr.to_string()));
            }
        }
        panel_queries(&panel["panels"], out);
    }
}

#[test]
fn dashboards_parse_and_query_only_exported_metrics() {
    let dir = Path::new(ROOT).join("grafana/dashboards");
    let rules =
        std::fs::read_to_string(Path::new(ROOT).join("prometheus/alerts.yml")).expect("alerts.yml");
    let recorded: BTreeSet<String> = rule_names(&rules, "record").into_iter().collect();
    let exported = exported();
    let mut dashboards = Vec::new();
    let mut records = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("grafana/dashboards") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("dashboard");
        let dashboard: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        let title = dashboard["title"].as_str().expect("title").to_string();
        assert!(dashboard["uid"].is_string(), "{title}: no uid");
        let mut queries = Vec::new();
        panel_queries(&dashboard["panels"], &mut queries);
        assert!(
            queries.len() >= 4,
            "{title}: only {} queries",
            queries.len()
        );
        for (panel, expr) in queries {
            let unknown = unknown_metrics(&expr, &exported);
            assert!(
                unknown.is_empty(),
                "{title} / {panel}: {expr} names metrics nobody exports: {unknown:?}"
            );
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .filter(|w| w.starts_with("qefleet:"))
            {
                assert!(
                    recorded.contains(name),
                    "{title} / {panel}: recording rule {name} is not in alerts.yml"
                );
            }
            // Grafana's variables, as Grafana would expand them, so promtool sees PromQL.
            let promql = expr
                .replace("$__rate_interval", "5m")
                .replace("$__interval", "1m")
                .replace("$pool", ".*");
            records.push(serde_json::json!({
                "record": format!("panel_{}", records.len()),
                "expr": promql,
            }));
        }
        dashboards.push(title);
    }
    dashboards.sort();
    assert_eq!(
        dashboards,
        [
            "qefleet / fleet overview",
            "qefleet / inference",
            "qefleet / quality and cost",
            "qefleet / queues"
        ],
    );
    // JSON is YAML: every query becomes a recording rule, which promtool parses.
    let scratch = tempfile::tempdir().expect("tempdir");
    let file = scratch.path().join("panels.yml");
    let groups = serde_json::json!({"groups": [{"name": "panels", "rules": records}]});
    std::fs::write(&file, groups.to_string()).expect("write");
    let checked = promtool(
        &["check", "rules", file.to_str().expect("utf-8 path")],
        scratch.path(),
    );
    assert!(checked.contains("SUCCESS"), "{checked}");
}

/// A Prometheus server with its own port and store, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    http: reqwest::Client,
    log: PathBuf,
}

impl Prometheus {
    /// Scrapes each `(job, ports)` every second and evaluates `prometheus/alerts.yml`.
    fn start(dir: &Path, jobs: &[(&str, &[u16])]) -> Self {
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n",
        );
        config.push_str(&format!(
            "  - {ROOT}/prometheus/alerts.yml\nscrape_configs:\n"
        ));
        for (job, ports) in jobs {
            let targets: Vec<String> = ports.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ));
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).expect("prometheus.yml");
        let port = free_port();
        let log = dir.join("prometheus.log");
        let child = Command::new(prometheus_tool("prometheus"))
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("prometheus starts");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            log,
        }
    }

    async fn get(&self, path: &str, query: Option<&str>) -> Option<serde_json::Value> {
        let mut request = self.http.get(format!("{}{path}", self.url));
        if let Some(q) = query {
            request = request.query(&[("query", q)]);
        }
        let response = request.send().await.ok()?;
        response.json().await.ok()
    }

    /// The first sample of an instant query, `None` while there is none.
    async fn value(&self, query: &str) -> Option<f64> {
        let body = self.get("/api/v1/query", Some(query)).await?;
        body["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
    }

    async fn until(&self, query: &str, what: &str, ok: impl Fn(f64) -> bool) {
        let what = format!("{what} ({query}; log: {})", self.log.display());
        eventually(Duration::from_secs(45), &what, || async {
            self.value(query).await.is_some_and(&ok)
        })
        .await;
    }

    async fn ready(&self) {
        eventually(Duration::from_secs(30), "prometheus is ready", || async {
            match self.http.get(format!("{}/-/ready", self.url)).send().await {
                Ok(r) => r.status().is_success(),
                Err(_) => false,
            }
        })
        .await;
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_sees_queue_lag_rise_while_workers_stop_and_fall_when_they_resume() {
    let mut fleet = Fleet::start().await;
    let scheduler_port = fleet.scheduler_with_metrics(SchedulerArgs::default()).await;
    let worker_ports = [free_port(), free_port()];
    let engine = Arc::new(ScriptedEngine::succeeding(Duration::from_millis(20)));
    let mut args = fleet.worker_args(PoolArg::Local);
    args.metrics_addr = Some(([127, 0, 0, 1], worker_ports[0]).into());
    let first_worker = fleet.worker(args, engine.clone()).await;
    let prometheus = Prometheus::start(
        fleet.dir.path(),
        &[
            ("qefleet-scheduler", &[scheduler_port]),
            ("qefleet-worker", &worker_ports),
        ],
    );
    prometheus.ready().await;

    // The rules load and are healthy.
    let rules = prometheus.get("/api/v1/rules", None).await.expect("rules");
    let loaded: Vec<&serde_json::Value> = rules["data"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    assert!(loaded.len() >= 14, "{rules}");
    assert!(loaded.iter().all(|r| r["health"] != "err"), "{rules}");

    let warm_up = fleet.submit_ok(&job(CALC)).await;
    fleet.result(&warm_up, Duration::from_secs(20)).await;
    prometheus
        .until(
            r#"count(up{job=~"qefleet.*"} == 1)"#,
            "scheduler and first worker scraped",
            |n| n == 2.0,
        )
        .await;
    prometheus
        .until(
            r#"sum(qefleet_jobs_completed_total{outcome="succeeded"})"#,
            "the warm-up job counted",
            |n| n == 1.0,
        )
        .await;

    // Workers stop: the queue backs up and Prometheus sees it. The worker's key goes only
    // after its last fetch has ended, so no job submitted below can reach it.
    first_worker.trigger();
    fleet.until_no_live_worker().await;
    eventually(Duration::from_secs(10), "first worker gone", || async {
        prometheus
            .value(&format!(
                r#"up{{instance="127.0.0.1:{}"}}"#,
                worker_ports[0]
            ))
            .await
            == Some(0.0)
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(fleet.submit_ok(&job(CALC)).await);
    }
    let lag = r#"qefleet:queue_lag_jobs:max{pool="local"}"#;
    prometheus
        .until(lag, "lag of 12 seen by Prometheus", |n| n == 12.0)
        .await;
    prometheus
        .until(
            r#"max(qefleet_queue_oldest_job_age_seconds{pool="local"})"#,
            "oldest job age rising",
            |s| s >= 1.0,
        )
        .await;

    // Workers resume: the lag falls back to 0 and every job completes once.
    let mut args = fleet.worker_args(PoolArg::Local);
    args.metrics_addr = Some(([127, 0, 0, 1], worker_ports[1]).into());
    fleet.worker(args, engine.clone()).await;
    prometheus.until(lag, "lag back to 0", |n| n == 0.0).await;
    for id in &ids {
        fleet.result(id, Duration::from_secs(20)).await;
    }
    assert_eq!(engine.runs(), 13);
    // The resumed worker saw 12 jobs that had waited over half a second each.
    let resumed = format!(r#"instance="127.0.0.1:{}""#, worker_ports[1]);
    prometheus
        .until(
            &format!(r#"sum(qefleet_queue_wait_seconds_count{{{resumed}}})"#),
            "queue waits observed",
            |n| n == 12.0,
        )
        .await;
    let quick = prometheus
        .value(&format!(
            r#"sum(qefleet_queue_wait_seconds_bucket{{{resumed},le="0.5"}})"#
        ))
        .await;
    assert_eq!(quick, Some(0.0), "no job of the backlog waited under 0.5 s");
    prometheus
        .until(
            &format!(r#"sum(qefleet_refinement_stops_total{{{resumed},reason="plateau"}})"#),
            "refinement stops counted",
            |n| n == 12.0,
        )
        .await;
    prometheus
        .until(
            r#"min(qefleet_process_resident_memory_bytes)"#,
            "memory scraped",
            |b| b > 1e6,
        )
        .await;
    fleet.stop().await;
}

/// A child process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_submitters_traceparent_reaches_the_result_events_and_every_log_line_of_the_job() {
    use qefleet_shared::subjects::{EVENTS_STREAM, RESULTS_STREAM, SUBMIT_SUBJECT};
    use qefleet_shared::trace::{TraceContext, HEADER_TRACEPARENT};

    let mut fleet = Fleet::start().await;
    let scheduler_log = fleet.dir.path().join("scheduler.log");
    let _scheduler = Process(
        Command::new(crate::support::BIN)
            .args(["scheduler", "--nats-url", &fleet.server.url()])
            .env("RUST_LOG", "info,qefleet_scheduler=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&scheduler_log).expect("log"))
            .spawn()
            .expect("qefleet scheduler starts"),
    );
    fleet.worker_process(&["--engine", "doctest"]);

    let ours = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .expect("valid");
    let trace_id = ours.trace_id_hex();
    let mut headers = qefleet_shared::messages::headers_for(qefleet_schemas::ContentType::Json);
    ours.inject(&mut headers);
    let payload = serde_json::to_vec(&job(CALC)).expect("json");
    let reply = loop {
        match fleet
            .client
            .request_with_headers(SUBMIT_SUBJECT, headers.clone(), payload.clone().into())
            .await
        {
            Ok(reply) => break reply,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let (answer, _) = qefleet_shared::messages::decode::<qefleet_schemas::SubmitReply>(
        reply.headers.as_ref(),
        &reply.payload,
    )
    .expect("reply");
    let qefleet_schemas::SubmitReply::Accepted { job_id, .. } = answer else {
        panic!("rejected: {answer:?}");
    };
    let traced = |h: Option<&async_nats::HeaderMap>| {
        TraceContext::from_headers(h).map(|t| (t.trace_id_hex(), t.parent_id))
    };
    let (reply_trace, _) = traced(reply.headers.as_ref()).expect("the reply carries the trace");
    assert_eq!(reply_trace, trace_id);

    fleet.result(&job_id, Duration::from_secs(30)).await;
    let results = fleet.messages(RESULTS_STREAM).await;
    let result = results
        .iter()
        .find(|m| m.subject.ends_with(job_id.as_str()))
        .expect("result");
    let (result_trace, result_span) =
        traced(Some(&result.headers)).expect("the result carries the trace");
    assert_eq!(result_trace, trace_id);
    assert_ne!(result_span, ours.parent_id, "each hop is its own span");
    assert!(result.headers.get(HEADER_TRACEPARENT).is_some());
    let events: Vec<_> = fleet
        .messages(EVENTS_STREAM)
        .await
        .into_iter()
        .filter(|m| m.subject.ends_with(job_id.as_str()))
        .collect();
    assert!(
        events.len() >= 3,
        "submitted, started, completed: {events:?}"
    );
    for event in &events {
        assert_eq!(
            traced(Some(&event.headers)).map(|t| t.0).as_deref(),
            Some(trace_id.as_str()),
            "event {} outside the trace",
            event.subject
        );
    }

    // Every log line naming the job carries the trace id, in both processes.
    let worker_log = fleet.worker_log(1);
    let scheduler_log = std::fs::read_to_string(&scheduler_log).expect("scheduler log");
    for (process, log, expect) in [
        ("worker", &worker_log, "result published"),
        ("scheduler", &scheduler_log, "job queued"),
    ] {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(job_id.as_str()))
            .collect();
        assert!(
            lines.iter().any(|l| l.contains(expect)),
            "{process} log has no '{expect}' line for the job:\n{log}"
        );
        for line in lines {
            assert!(
                line.contains(&format!("trace_id={trace_id}")),
                "{process} log line without the trace id: {line}"
            );
        }
    }
    fleet.stop().await;
}

/// `.tools/compose/docker-compose` (Docker Compose v2, fetched by scripts/setup.sh).
fn compose_tool() -> PathBuf {
    let path = Path::new(ROOT).join(".tools/compose/docker-compose");
    assert!(
        path.is_file(),
        "{} not found: run ./scripts/setup.sh",
        path.display()
    );
    path
}

#[test]
fn the_compose_file_validates_and_wires_the_fleet_together() {
    // Compose's own parser and schema, every profile on; no Docker daemon is needed.
    let out = Command::new(compose_tool())
        .args([
            "-f",
            "docker-compose.yml",
            "--profile",
            "cloud",
            "--profile",
            "gpu",
            "config",
            "--format",
            "json",
        ])
        .current_dir(ROOT)
        .env("ANTHROPIC_API_KEY", "")
        .output()
        .expect("docker compose runs");
    assert!(
        out.status.success(),
        "docker compose config failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let services = config["services"].as_object().expect("services");
    let mut names: Vec<&str> = services.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grafana",
            "nats",
            "prometheus",
            "scheduler",
            "worker-cloud",
            "worker-gpu",
            "worker-local",
            "worker-maint"
        ]
    );
    // Every bind mount exists in the repository (deploy/cloud.json is the operator's
    // copy of deploy/cloud.example.json).
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            if volume["type"] != "bind" {
                continue;
            }
            let source = volume["source"].as_str().expect("source");
            if source.ends_with("/models") {
                continue; // the operator's own model directory
            }
            let path =
                PathBuf::from(source.replace("deploy/cloud.json", "deploy/cloud.example.json"));
            assert!(
                path.exists(),
                "{name} mounts {} which does not exist",
                path.display()
            );
        }
        if name.starts_with("worker") || name == "scheduler" {
            let command = service["command"].to_string();
            assert!(
                service["environment"]["QEFLEET_NATS_URL"] == "nats://nats:4222",
                "{name} does not reach nats"
            );
            assert!(
                command.contains("metrics-addr"),
                "{name} serves no metrics: {command}"
            );
        }
    }
    let gpu = &services["worker-gpu"];
    assert_eq!(
        gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"],
        "nvidia"
    );
    assert_eq!(gpu["build"]["args"]["FLAVOUR"], "cuda");
    assert!(services["worker-local"]["security_opt"]
        .to_string()
        .contains("seccomp=unconfined"));
    let nats_volumes = services["nats"]["volumes"].to_string();
    assert!(nats_volumes.contains("/data"), "{nats_volumes}");

    // The Prometheus configuration the compose file mounts, with its rule file where the
    // repository keeps it.
    let scratch = tempfile::tempdir().expect("tempdir");
    let prometheus_yml = std::fs::read_to_string(Path::new(ROOT).join("deploy/prometheus.yml"))
        .expect("deploy/prometheus.yml")
        .replace(
            "/etc/prometheus/rules/alerts.yml",
            &format!("{ROOT}/prometheus/alerts.yml"),
        );
    let file = scratch.path().join("prometheus.yml");
    std::fs::write(&file, prometheus_yml).expect("write");
    let checked = promtool(
        &["check", "config", file.to_str().expect("utf-8")],
        scratch.path(),
    );
    assert!(checked.contains("SUCCESS"), "{checked}");
    let nats_conf =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/nats.conf")).expect("nats.conf");
    assert!(nats_conf.contains("sync_interval: always"), "{nats_conf}");
}

#[test]
fn the_dockerfile_is_multi_stage_non_root_and_ships_the_pinned_onnx_runtime() {
    // Static checks only: no Docker daemon here to build it (docs/DEPLOY.md says so).
    let dockerfile =
        std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).expect("Dockerfile");
    let requirements =
        std::fs::read_to_string(Path::new(ROOT).join("requirements.txt")).expect("reqs");
    let froms = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .count();
    assert!(froms >= 3, "build, python and runtime stages");
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER instruction");
    assert!(!["root", "0"].contains(&user.trim()), "runs as {user}");
    let ort = requirements
        .lines()
        .find_map(|l| l.strip_prefix("onnxruntime=="))
        .expect("onnxruntime pinned");
    assert!(
        dockerfile.contains(&format!("libonnxruntime.so.{ort}")),
        "ORT_DYLIB_PATH names onnxruntime {ort}"
    );
    assert!(dockerfile.contains("requirements-gpu.txt") && dockerfile.contains("FLAVOUR"));
    let ignore =
        std::fs::read_to_string(Path::new(ROOT).join(".dockerignore")).expect(".dockerignore");
    for heavy in ["target/", ".venv/", ".tools/"] {
        assert!(ignore.contains(heavy), ".dockerignore keeps {heavy} out");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_every_components_metrics_on_one_address() {
    let fleet = Fleet::start().await;
    let port = free_port();
    let data = tempfile::tempdir().expect("tempdir");
    let _up = Process(
        Command::new(crate::support::BIN)
            .args([
                "up",
                "--nats-url",
                &fleet.server.url(),
                "--engine",
                "doctest",
            ])
            .arg("--scheduler-metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qefleet up starts"),
    );
    let id = fleet.submit_ok(&job(CALC)).await;
    fleet.result(&id, Duration::from_secs(60)).await;
    crate::support::metrics_show(
        port,
        &[
            // scheduler
            "qefleet_jobs_submitted_total{complexity=\"simple\",pool=\"local\"} 1",
            "qefleet_queue_lag_jobs{complexity=\"simple\",pool=\"local\"}",
            // local worker
            "qefleet_jobs_completed_total{complexity=\"simple\",outcome=\"succeeded\",pool=\"local\"} 1",
            "qefleet_queue_wait_seconds_count{complexity=\"simple\",pool=\"local\"} 1",
            "qefleet_outbox_pending_results{pool=\"local\"} 0",
        ],
        "up's one metrics address",
    )
    .await;
}
