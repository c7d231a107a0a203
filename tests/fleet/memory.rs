//! The ReasoningBank through the fleet: a worker with an embedder remembers each job it
//! completes (sled, HNSW) and gives a similar later job the earlier job's suite as an
//! example; near-duplicates merge; the bank outlives the worker.

use std::sync::Arc;
use std::time::Duration;

use qefleet_inference::embed::find_default_model;
use qefleet_inference::{Device, Embedder, EmbedderSettings, SessionSettings};
use qefleet_scheduler::SchedulerArgs;
use qefleet_shared::embedded::free_port;
use qefleet_shared::metrics::sample_sum;
use qefleet_worker::PoolArg;

use crate::support::*;

const PARSER: &str = "import re\n\n\nclass Tokens:\n    \"\"\"Splits a line of shell-like words.\"\"\"\n\n    def __init__(self, line):\n        self.words = re.findall(r'\\S+', line)\n\n    def first(self):\n        return self.words[0] if self.words else None\n";

fn embedder() -> Embedder {
    let dir = find_default_model().expect("the MiniLM model (run ./scripts/setup.sh)");
    let settings = EmbedderSettings {
        session: SessionSettings {
            device: Device::Cpu,
            intra_threads: 1,
            ..SessionSettings::default()
        },
        ..EmbedderSettings::default()
    };
    Embedder::start(&dir, settings, None).expect("embedder starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_remembers_jobs_and_gives_similar_ones_their_suites() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let embedder = embedder();
    let engine = Arc::new(ScriptedEngine::succeeding(Duration::from_millis(10)));
    let port = free_port();
    let mut args = fleet.worker_args(PoolArg::Local);
    args.embedder = Some(embedder.clone());
    args.metrics_addr = Some(([127, 0, 0, 1], port).into());
    let memory_dir = args.memory_dir.clone().expect("memory dir");
    let worker = fleet.worker(args, engine.clone()).await;

    for source in [
        CALC.to_string(),
        // The same module with one function renamed: similar, not a duplicate.
        CALC.replace("half", "halve"),
        // The first module again: a near-duplicate, merged.
        CALC.to_string(),
        PARSER.to_string(),
    ] {
        let id = fleet.submit_ok(&job(&source)).await;
        fleet.result(&id, Duration::from_secs(30)).await;
    }
    let seen = engine.examples.lock().expect("examples").clone();
    assert_eq!(seen.len(), 4);
    assert!(seen[0].is_empty(), "nothing to recall for the first job");
    assert_eq!(
        seen[1],
        vec!["def test_ok():\n    assert True\n".to_string()],
        "the similar module gets the first job's suite"
    );
    metrics_show(
        port,
        &[
            "qefleet_memory_inserts_total{outcome=\"new\"} 3",
            "qefleet_memory_inserts_total{outcome=\"merged\"} 1",
            "qefleet_memory_stored_trajectories 3",
            "qefleet_memory_search_seconds_count{pool=\"local\"} 4",
            "qefleet_memory_retrieved_quality_score_count{pool=\"local\"} 3",
            "qefleet_inference_seconds_count{op=\"embed\",provider=\"cpu\"} 4",
        ],
        "memory metrics",
    )
    .await;

    // The bank outlives the worker: a new one on the same directory starts with it.
    // Its key leaves the live-workers bucket at the end of its shutdown; sled lets go of
    // the directory's lock a little later, which opening waits for (`store::open_db`).
    worker.trigger();
    fleet.until_no_live_worker().await;
    let port = free_port();
    let mut args = fleet.worker_args(PoolArg::Local);
    args.embedder = Some(embedder);
    args.metrics_addr = Some(([127, 0, 0, 1], port).into());
    args.memory_dir = Some(memory_dir);
    fleet.worker(args, engine.clone()).await;
    metrics_show(
        port,
        &["qefleet_memory_stored_trajectories 3"],
        "the reopened bank",
    )
    .await;
    let id = fleet.submit_ok(&job(&CALC.replace("add", "plus"))).await;
    fleet.result(&id, Duration::from_secs(30)).await;
    let seen = engine.examples.lock().expect("examples").clone();
    assert_eq!(seen.len(), 5);
    assert!(!seen[4].is_empty(), "recalled from the reopened bank");
    fleet.stop().await;
}

/// Reports a fixed quality per module name.
#[derive(Debug)]
struct QualityByModule(&'static [(&'static str, f64)]);

impl qefleet_worker::engine::Engine for QualityByModule {
    fn name(&self) -> &str {
        "by-module"
    }

    fn generate<'a>(
        &'a self,
        request: qefleet_worker::engine::EngineRequest<'a>,
    ) -> qefleet_worker::engine::EngineFuture<'a> {
        Box::pin(async move {
            let name = request.job.job.module_name.as_str();
            let quality = self.0.iter().find(|(m, _)| *m == name).map(|(_, q)| *q);
            Ok(qefleet_worker::engine::EngineOutput {
                tests_total: 1,
                tests_passed: 1,
                quality_score: quality,
                ..Default::default()
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_router_learns_per_module_which_pool_does_better() {
    use qefleet_schemas::{JobSpec, Pool, SubmitReply};
    let mut fleet = Fleet::start().await;
    let memory_dir = tempfile::tempdir().expect("tempdir");
    let port = fleet
        .scheduler_with_metrics(SchedulerArgs {
            embedder: Some(embedder()),
            route_memory_dir: Some(memory_dir.path().to_path_buf()),
            // Deterministic: no exploration.
            route_explore: 0.0,
            ..SchedulerArgs::default()
        })
        .await;
    // Local does badly on the parser and well on calc; the cloud is middling on both. The
    // local worker's quality gate is the default 0.4.
    let local = fleet.worker_args(PoolArg::Local);
    fleet
        .worker(
            local,
            Arc::new(QualityByModule(&[("parser", 0.3), ("calc", 0.9)])),
        )
        .await;
    let cloud = fleet.worker_args(PoolArg::Cloud);
    fleet
        .worker(
            cloud,
            Arc::new(QualityByModule(&[("parser", 0.8), ("calc", 0.8)])),
        )
        .await;
    let module = |name: &str, source: &str, pool: Option<Pool>| {
        let mut j = JobSpec::python(name, source);
        j.pool = pool;
        j
    };
    let route = |reply: SubmitReply| match reply {
        SubmitReply::Accepted { job_id, route, .. } => (job_id, route),
        SubmitReply::Rejected { error, .. } => panic!("rejected: {error:?}"),
    };
    // Both workers registered, and seen by the scheduler (its liveness view refreshes
    // every second), before the first job: its escalation needs a live cloud worker.
    eventually(Duration::from_secs(10), "two live workers", || async {
        fleet.live_workers().await.len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Both modules are simple: the complexity rule keeps them local, and the memory is
    // empty, so it decides.
    let (first_id, first) = route(
        fleet
            .submit(
                &module("parser", PARSER, None),
                qefleet_schemas::ContentType::MsgPack,
            )
            .await,
    );
    assert_eq!(first.pool, Pool::Local, "{:?}", first.reasons);
    // Its local result (0.3) misses the quality gate (0.4): escalated, the cloud's result
    // comes back carrying the local one, and the memory learns both pools from it.
    let (escalated, _) = fleet.result(&first_id, Duration::from_secs(30)).await;
    assert_eq!(escalated.pool, Pool::Cloud);
    assert!(escalated.escalation.is_some());
    metrics_show(
        port,
        &["qefleet_memory_inserts_total{outcome=\"new\"} 2"],
        "both pools remembered from the escalated job",
    )
    .await;
    // Teach it: each module twice on each pool (jobs that insist on their pool).
    for (name, source) in [("parser", PARSER), ("calc", CALC)] {
        for pool in [Pool::Local, Pool::Local, Pool::Cloud, Pool::Cloud] {
            let id = fleet.submit_ok(&module(name, source, Some(pool))).await;
            fleet.result(&id, Duration::from_secs(30)).await;
        }
    }
    // Results reach the memory through a subscription: wait until it has stored all 8.
    eventually(
        Duration::from_secs(20),
        "the router's memory stored 8 outcomes",
        || async {
            let body = try_http_get(port, "/metrics").await.unwrap_or_default();
            let stored = sample_sum(&body, "qefleet_memory_inserts_total", &[]);
            stored.unwrap_or(0.0) >= 8.0
        },
    )
    .await;
    let (_, parser) = route(
        fleet
            .submit(
                &module("parser", PARSER, None),
                qefleet_schemas::ContentType::MsgPack,
            )
            .await,
    );
    assert_eq!(parser.pool, Pool::Cloud, "{:?}", parser.reasons);
    assert!(
        parser
            .reasons
            .iter()
            .any(|r| r.contains("router's memory") && r.contains("pays for the cloud")),
        "{:?}",
        parser.reasons
    );
    let (_, calc) = route(
        fleet
            .submit(
                &module("calc", CALC, None),
                qefleet_schemas::ContentType::MsgPack,
            )
            .await,
    );
    assert_eq!(calc.pool, Pool::Local, "{:?}", calc.reasons);
    assert!(
        calc.reasons.iter().any(|r| r.contains("stays local")),
        "{:?}",
        calc.reasons
    );
    metrics_show(
        port,
        &[
            "qefleet_route_estimates_total{source=\"none\"}",
            "qefleet_route_estimates_total{source=\"memory\"}",
            "qefleet_memory_search_seconds_count{pool=\"route\"} 11",
        ],
        "the router's estimates",
    )
    .await;
    fleet.stop().await;
}
