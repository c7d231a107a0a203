//! The cloud pool end to end: a `qefleet worker --pool cloud` process with a provider
//! configuration pointing at a local server that speaks the Anthropic protocol (the
//! stand-in for the paid API), and privacy: a `local_only` job never reaches the cloud.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use qefleet_cloud::stub::{anthropic_ok, Stub};
use qefleet_scheduler::SchedulerArgs;
use qefleet_schemas::{JobStatus, Pool};
use qefleet_worker::PoolArg;

use crate::support::*;

const MODULE: &str = "def add(a, b):\n    return a + b\n";
const SUITE: &str =
    "```python\nimport calc\n\n\ndef test_add():\n    assert calc.add(2, 3) == 5\n```";

pub(crate) fn cloud_config(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let key = dir.join("anthropic.key");
    std::fs::write(&key, "sk-ant-test-key\n").expect("write key");
    let path = dir.join("cloud.json");
    let config = serde_json::json!({
        "max_tokens": 1024,
        "providers": [{
            "name": "anthropic", "protocol": "anthropic", "base_url": url,
            "model": "claude-test", "api_key_file": key, "timeout_s": 10, "attempts": 2,
            "price": {"input_per_mtok": 3.0, "output_per_mtok": 15.0, "effective": "2026-11-01"}
        }]
    });
    std::fs::write(&path, config.to_string()).expect("write config");
    path
}

/// Starts `qefleet worker --pool cloud` on `config` with `extra` arguments; returns its
/// metrics port.
pub(crate) fn cloud_worker(fleet: &mut Fleet, config: &std::path::Path, extra: &[&str]) -> u16 {
    let mut args = vec![
        "--pool",
        "cloud",
        "--cloud-config",
        config.to_str().expect("path"),
    ];
    args.extend_from_slice(extra);
    fleet.worker_process_with_metrics(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_worker_serves_cloud_jobs_and_local_only_jobs_never_reach_it() {
    // Two rounds of the loop: the second answer repeats the first, which ends it.
    let stub = Stub::start(vec![anthropic_ok(SUITE), anthropic_ok(SUITE)]).await;
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let config = cloud_config(fleet.dir.path(), &stub.url);
    let metrics_port = cloud_worker(&mut fleet, &config, &[]);
    let local = fleet.worker_args(PoolArg::Local);
    fleet
        .worker(
            local,
            Arc::new(qefleet_worker::engines::DoctestEngine::probe(None).await),
        )
        .await;
    let client = async_nats::connect(fleet.server.url())
        .await
        .expect("connect");
    let mut cloud_subjects = client
        .subscribe("qe.jobs.cloud.>")
        .await
        .expect("subscribe");
    // The server holds the subscription before anything is submitted (a round trip).
    client.flush().await.expect("flush");

    // A job that insists on the cloud pool.
    let mut spec = job(MODULE);
    spec.module_name = "calc".into();
    spec.pool = Some(Pool::Cloud);
    let id = fleet.submit_ok(&spec).await;
    let (result, _) = fleet.result(&id, Duration::from_secs(90)).await;
    assert_eq!(
        result.status,
        JobStatus::Succeeded,
        "{result:?}\n{}",
        fleet.worker_log(1)
    );
    assert_eq!(
        (result.engine.as_str(), result.pool),
        ("cloud", Pool::Cloud)
    );
    assert_eq!(result.tests_passed, 1);
    // Both calls are paid for: 2 × (1200 in, 300 out) at $3 / $15 per million.
    assert_eq!(
        (result.tokens.prompt, result.tokens.completion),
        (2400, 600)
    );
    assert!(
        (result.cost_usd - 2.0 * 0.0081).abs() < 1e-9,
        "{}",
        result.cost_usd
    );
    let sent = stub.requests();
    assert_eq!(sent.len(), 2);
    assert!(sent[0]
        .head
        .to_ascii_lowercase()
        .contains("x-api-key: sk-ant-test-key"));
    assert!(sent[0].body["messages"][0]["content"]
        .as_str()
        .unwrap_or("")
        .contains("import calc"));
    assert!(
        !fleet.worker_log(1).contains("sk-ant-test-key"),
        "the key appeared in the worker's log"
    );
    // The worker counts the result in its metrics just after publishing it.
    let expected = [
        "qefleet_cost_usd_total{engine=\"cloud\",pool=\"cloud\"} 0.0162",
        "qefleet_tokens_total{engine=\"cloud\",kind=\"prompt\",pool=\"cloud\"} 2400",
        "qefleet_tokens_total{engine=\"cloud\",kind=\"completion\",pool=\"cloud\"} 600",
    ];
    metrics_show(metrics_port, &expected, "cost and tokens in /metrics").await;
    let mut cloud_messages_before = 0;
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(300), cloud_subjects.next()).await
    {
        cloud_messages_before += 1;
    }
    assert_eq!(cloud_messages_before, 1, "the cloud job itself");

    // local_only with every reason to go to the cloud: quality strategy, a live cloud worker.
    let mut private = job(CALC);
    private.local_only = true;
    private.strategy = Some(qefleet_schemas::Strategy::Quality);
    let id = fleet.submit_ok(&private).await;
    let (result, _) = fleet.result(&id, Duration::from_secs(60)).await;
    assert_eq!(result.pool, Pool::Local, "{result:?}");
    assert_eq!(
        stub.requests().len(),
        2,
        "a local_only job produced a cloud request"
    );
    let leaked = tokio::time::timeout(Duration::from_millis(300), cloud_subjects.next()).await;
    assert!(
        leaked.is_err(),
        "a local_only job was published on a cloud subject: {leaked:?}"
    );
    fleet.stop().await;
}

#[test]
fn a_cloud_worker_without_configuration_says_what_it_needs() {
    let out = std::process::Command::new(BIN)
        .args(["worker", "--pool", "cloud"])
        .output()
        .expect("qefleet runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("the cloud pool needs --cloud-config FILE"),
        "{err}"
    );
}

/// The pool and reasons a submission was routed with.
async fn routed(fleet: &Fleet, spec: &qefleet_schemas::JobSpec) -> (Pool, Vec<String>) {
    match fleet
        .submit(spec, qefleet_schemas::ContentType::MsgPack)
        .await
    {
        qefleet_schemas::SubmitReply::Accepted { route, .. } => (route.pool, route.reasons),
        other => panic!("rejected: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_switch_moves_jobs_at_run_time_but_never_private_ones() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    for pool in [PoolArg::Local, PoolArg::Cloud] {
        let args = fleet.worker_args(pool);
        fleet
            .worker(args, Arc::new(ScriptedEngine::succeeding(Duration::ZERO)))
            .await;
    }
    let (pool, _) = routed(&fleet, &job(CALC)).await;
    assert_eq!(pool, Pool::Local, "a simple job stays local under balanced");

    let set = fleet.cli(&["route-mode", "force-cloud"]);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let shown = fleet.cli(&["route-mode"]);
    assert_eq!(
        String::from_utf8_lossy(&shown.stdout).trim(),
        "route mode: force-cloud"
    );
    let status = fleet.cli(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("route mode: force-cloud"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    eventually(
        Duration::from_secs(10),
        "the scheduler follows force-cloud",
        || async {
            let (pool, reasons) = routed(&fleet, &job(CALC)).await;
            pool == Pool::Cloud && reasons.iter().any(|r| r.contains("force-cloud switch"))
        },
    )
    .await;
    let mut private = job(CALC);
    private.local_only = true;
    assert_eq!(routed(&fleet, &private).await.0, Pool::Local);

    assert!(fleet.cli(&["route-mode", "auto"]).status.success());
    eventually(
        Duration::from_secs(10),
        "the scheduler follows auto",
        || async { routed(&fleet, &job(CALC)).await.0 == Pool::Local },
    )
    .await;
    let bad = fleet.cli(&["route-mode", "cloud"]);
    assert!(!bad.status.success());
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_with_open_breakers_take_their_worker_out_of_routing() {
    // Every request fails: one failure opens the breaker for a minute.
    let stub = Stub::start(vec![]).await;
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let local = fleet.worker_args(PoolArg::Local);
    fleet
        .worker(local, Arc::new(ScriptedEngine::succeeding(Duration::ZERO)))
        .await;
    let key = fleet.dir.path().join("key");
    std::fs::write(&key, "sk-down\n").expect("write key");
    let config = fleet.dir.path().join("cloud-down.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "breaker": {"failures": 1, "window_s": 60, "cool_down_s": 60},
            "providers": [{"name": "anthropic", "protocol": "anthropic", "base_url": stub.url,
                           "model": "m", "api_key_file": key, "attempts": 1, "timeout_s": 5}]
        })
        .to_string(),
    )
    .expect("write config");
    let metrics_port = cloud_worker(&mut fleet, &config, &[]);
    let mut quality = job(CALC);
    quality.strategy = Some(qefleet_schemas::Strategy::Quality);
    eventually(
        Duration::from_secs(20),
        "the cloud worker is live",
        || async { routed(&fleet, &quality).await.0 == Pool::Cloud },
    )
    .await;
    // That job reaches the provider, fails, and opens the breaker.
    eventually(
        Duration::from_secs(20),
        "the provider was called",
        || async { !stub.requests().is_empty() },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "routing sees the open breaker",
        || async {
            let (pool, reasons) = routed(&fleet, &quality).await;
            pool == Pool::Local
                && reasons
                    .iter()
                    .any(|r| r.contains("circuit breaker is open"))
        },
    )
    .await;
    let body = http_get(metrics_port, "/metrics").await;
    assert!(
        body.contains("qefleet_circuit_breaker_state{provider=\"anthropic\"} 2"),
        "{body}"
    );
    let report = fleet.status_json();
    let cloud = report["live_workers"]
        .as_array()
        .expect("workers")
        .iter()
        .find(|w| w["pool"] == "cloud")
        .cloned()
        .expect("the cloud worker is listed");
    assert_eq!(cloud["breakers"]["anthropic"], "open", "{cloud}");
    assert_eq!(cloud["accepting"], false, "{cloud}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_daily_budget_stops_a_tenants_cloud_spending() {
    let stub = Stub::start(vec![anthropic_ok(SUITE), anthropic_ok(SUITE)]).await;
    let mut fleet = Fleet::start().await;
    let scheduler_port = fleet
        .scheduler_with_metrics(SchedulerArgs {
            tenant_daily_budget_usd: Some(0.01),
            ..SchedulerArgs::default()
        })
        .await;
    let local = fleet.worker_args(PoolArg::Local);
    fleet
        .worker(local, Arc::new(ScriptedEngine::succeeding(Duration::ZERO)))
        .await;
    let config = cloud_config(fleet.dir.path(), &stub.url);
    cloud_worker(&mut fleet, &config, &[]);

    let for_acme = |pool: Option<Pool>| {
        let mut spec = job(MODULE);
        spec.module_name = "calc".into();
        spec.tenant = "acme".into();
        spec.pool = pool;
        spec.strategy = Some(qefleet_schemas::Strategy::Quality);
        spec
    };
    // Under budget: the job runs in the cloud and costs $0.0162 (two calls).
    let id = fleet.submit_ok(&for_acme(Some(Pool::Cloud))).await;
    let (result, _) = fleet.result(&id, Duration::from_secs(90)).await;
    assert_eq!(
        (result.status, result.pool),
        (JobStatus::Succeeded, Pool::Cloud),
        "{result:?}"
    );

    // The worker records the spend right after publishing the result.
    let js = async_nats::jetstream::new(fleet.client.clone());
    let ledger = js
        .get_key_value(qefleet_shared::subjects::SPEND_BUCKET)
        .await
        .expect("ledger");
    let key = qefleet_shared::ledger::spend_key(
        &qefleet_shared::ledger::utc_day(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis() as u64,
        ),
        "acme",
    );
    eventually(Duration::from_secs(10), "the spend is recorded", || async {
        qefleet_shared::ledger::spent(&ledger, &key)
            .await
            .unwrap_or(0.0)
            > 0.016
    })
    .await;
    // A scheduler's ledger reads stand for a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Over budget: a job that insists on the cloud is refused, the others stay local.
    match fleet
        .submit(
            &for_acme(Some(Pool::Cloud)),
            qefleet_schemas::ContentType::Json,
        )
        .await
    {
        qefleet_schemas::SubmitReply::Rejected { error, .. } => {
            assert_eq!(error.code, qefleet_schemas::ErrorCode::BudgetExhausted);
            assert!(
                error
                    .message
                    .contains("tenant acme spent $0.0162 of its $0.01 daily cloud budget"),
                "{}",
                error.message
            );
        }
        other => panic!("accepted over budget: {other:?}"),
    }
    let (pool, reasons) = routed(&fleet, &for_acme(None)).await;
    assert_eq!(pool, Pool::Local);
    assert!(
        reasons.iter().any(|r| r.contains("daily cloud budget")),
        "{reasons:?}"
    );
    let metrics = http_get(scheduler_port, "/metrics").await;
    assert!(
        metrics.contains("qefleet_budget_exhausted_total{scope=\"tenant\"} 2"),
        "{metrics}"
    );
    let report = fleet.status_json();
    let spend = report["cloud_spend_today_usd"]
        .as_f64()
        .expect("spend in status");
    assert!((spend - 0.0162).abs() < 1e-9, "{report}");
    // Another tenant's budget is its own.
    let mut other = for_acme(None);
    other.tenant = "globex".into();
    assert_eq!(routed(&fleet, &other).await.0, Pool::Cloud);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_spend_additions_are_never_lost() {
    let fleet = Fleet::start().await;
    let js = async_nats::jetstream::new(fleet.client.clone());
    qefleet_shared::provision::ensure_all(&js)
        .await
        .expect("provision");
    let ledger = js
        .get_key_value(qefleet_shared::subjects::SPEND_BUCKET)
        .await
        .expect("ledger");
    let mut adders = Vec::new();
    for _ in 0..4 {
        let ledger = ledger.clone();
        adders.push(tokio::spawn(async move {
            for _ in 0..25 {
                qefleet_shared::ledger::add(&ledger, "2026-12-02.acme", 0.25)
                    .await
                    .expect("added");
            }
        }));
    }
    for a in adders {
        a.await.expect("adder");
    }
    let total = qefleet_shared::ledger::spent(&ledger, "2026-12-02.acme")
        .await
        .expect("read");
    assert_eq!(total, 25.0, "100 additions of $0.25");
    fleet.stop().await;
}
