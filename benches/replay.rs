//! SONA in the fleet: 1,000 completions replayed through a real fleet (nats-server,
//! scheduler, a local and a cloud worker, the maint worker consolidating every 100
//! completions), on the same jobs in the same order: with the complexity rule alone (no
//! learning), with the SONA predictor's estimates, and with those and the router's memory
//! of similar past jobs (MiniLM embeddings, the scheduler's ReasoningBank).
//!
//! The jobs are the 20 real modules of the generation eval (their sources from
//! `.venv-eval`, so the complexity analysis and the predictor's features are real), 50
//! each, shuffled. The engines replay outcomes: the local pool's quality for a module is
//! what the local generator measured on it (`benches/replay/local-quality.tsv`); the
//! cloud pool's is an assumption, `REPLAY_CLOUD_QUALITY` (default 0.80, about CoverUp's
//! reported median line coverage), because no paid provider is reachable here. Each
//! outcome gets a noise of ±`REPLAY_NOISE` (default 0.05), drawn from the job id, so both
//! runs see the same draws.
//!
//! Printed per run: mean quality of all jobs and of the second half, cloud share, routing
//! agreement with the best choice by the true means (cloud when it adds at least the
//! router's min gain), and the predictor's error on each job's quality at the time it was
//! routed, against two no-learning predictors (the running mean, the untrained model).
//!
//! Each strategy that routes by estimates is replayed (`REPLAY_STRATEGIES`, default
//! `balanced,quality`): balanced pays for the cloud only where it adds the router's min
//! gain, quality wants the better pool whatever it costs.
//!
//! Run: `benches/eval/setup.sh && cargo bench --bench replay` (env REPLAY_JOBS=1000,
//! REPLAY_CLOUD_QUALITY, REPLAY_NOISE, REPLAY_SEED, REPLAY_STRATEGIES).

mod support;
use support::env_or;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use qefleet_learn::SonaSnapshot;
use qefleet_scheduler::router::DEFAULT_MIN_GAIN;
use qefleet_scheduler::SchedulerArgs;
use qefleet_schemas::{ContentType, JobResult, JobSpec, Pool, Strategy, SubmitReply};
use qefleet_shared::client::submit;
use qefleet_shared::embedded::{EmbeddedOptions, EmbeddedServer};
use qefleet_shared::nats::{connect, NatsArgs};
use qefleet_shared::shutdown;
use qefleet_shared::subjects::{QUALITY_PREDICTOR_KEY, RESULTS_SUBJECTS, SONA_BUCKET};
use qefleet_worker::engine::{Engine, EngineFuture, EngineOutput, EngineRequest};
use qefleet_worker::sona::SonaConsolidator;
use qefleet_worker::{PoolArg, WorkerArgs};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tokio::task::JoinSet;

const LOCAL_QUALITY: &str = include_str!("replay/local-quality.tsv");
const WAVE: usize = 100;

/// A module of the corpus: its source and the quality each pool reaches on it.
struct Module {
    name: String,
    source: String,
    local: f64,
}

/// Uniform in [-1, 1] from the job id and pool (FNV-1a): the same draw in both runs.
fn draw(job_id: &str, pool: Pool, seed: u64) -> f64 {
    let hash = format!("{seed}/{job_id}/{pool}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    (hash % 20_001) as f64 / 10_000.0 - 1.0
}

#[derive(Debug)]
struct ReplayEngine {
    pool: Pool,
    /// Module name -> expected quality on this pool.
    expected: Arc<HashMap<String, f64>>,
    noise: f64,
    seed: u64,
}

impl Engine for ReplayEngine {
    fn name(&self) -> &str {
        match self.pool {
            Pool::Cloud => "replay-cloud",
            _ => "replay-local",
        }
    }

    fn generate<'a>(&'a self, request: EngineRequest<'a>) -> EngineFuture<'a> {
        Box::pin(async move {
            let job = &request.job.job;
            let mean = self.expected.get(&job.module_name).copied().unwrap_or(0.0);
            let id = job.job_id.as_deref().unwrap_or_default();
            let quality = (mean + self.noise * draw(id, self.pool, self.seed)).clamp(0.0, 1.0);
            Ok(EngineOutput {
                tests_total: 1,
                tests_passed: 1,
                quality_score: Some(quality),
                ..EngineOutput::default()
            })
        })
    }
}

/// The estimate for `pool` in a reason like "... expects 0.42 local against 0.80 cloud".
fn stated_estimate(reasons: &[String], pool: Pool) -> Option<f64> {
    let reason = reasons.iter().find(|r| r.contains(" expects "))?;
    let rest = reason.split(" expects ").nth(1)?;
    let mut words = rest.split_whitespace();
    let local = words.next()?.parse().ok()?;
    let cloud = words.nth(2)?.parse().ok()?;
    Some(if pool == Pool::Cloud { cloud } else { local })
}

fn module_source(python: &str, module: &str) -> Result<String, String> {
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import importlib.util, sys; print(importlib.util.find_spec(sys.argv[1]).origin)",
            module,
        ])
        .output()
        .map_err(|e| format!("{python}: {e} (run benches/eval/setup.sh)"))?;
    if !out.status.success() {
        return Err(format!(
            "{module} is not installed in .venv-eval (run benches/eval/setup.sh): {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))
}

fn corpus() -> Vec<Module> {
    let python = ".venv-eval/bin/python";
    LOCAL_QUALITY
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (name, q) = line.split_once('\t').expect("module<TAB>quality");
            Module {
                name: name.to_string(),
                source: module_source(python, name).unwrap_or_else(|e| panic!("{e}")),
                local: q.trim().parse().expect("quality"),
            }
        })
        .collect()
}

#[derive(Debug, Default)]
struct Run {
    quality: Vec<f64>,
    cloud: Vec<bool>,
    /// Routed as the true means say (cloud iff it adds at least the min gain).
    agrees: Vec<bool>,
    /// |estimate − outcome| for jobs routed with a learned estimate for their pool.
    err_learned: Vec<f64>,
    /// The same jobs, estimated by the running mean of all outcomes so far.
    err_mean: Vec<f64>,
    /// The same jobs, estimated by the untrained predictor.
    err_initial: Vec<f64>,
    versions: u64,
    seconds: f64,
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn share(v: &[bool]) -> f64 {
    v.iter().filter(|b| **b).count() as f64 / v.len().max(1) as f64
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the cloud must add over local to be the better choice: the router's min gain for
/// the balanced strategy (it pays for the cloud), any gain for the quality strategy.
fn min_gain(strategy: Strategy) -> f64 {
    match strategy {
        Strategy::Quality => f64::MIN_POSITIVE,
        _ => DEFAULT_MIN_GAIN,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Routing {
    Rule,
    Predictor,
    PredictorAndMemory,
}

async fn replay(
    modules: &[Module],
    order: &[usize],
    routing: Routing,
    strategy: Strategy,
    cloud_q: f64,
) -> Run {
    let embedder = (routing == Routing::PredictorAndMemory).then(|| {
        let dir = qefleet_inference::embed::find_default_model()
            .expect("the MiniLM model (run ./scripts/setup.sh)");
        qefleet_inference::embed::shared(&dir, qefleet_inference::EmbedderSettings::default())
            .expect("embedder")
    });
    let noise = env_or("REPLAY_NOISE", 0.05);
    let seed = env_or("REPLAY_SEED", 1u64);
    let server = EmbeddedServer::start(EmbeddedOptions::default()).expect("nats-server");
    let url = server.url();
    let client = connect(&NatsArgs::for_url(&url), "replay")
        .await
        .expect("connect");
    let js = jetstream::new(client.clone());
    qefleet_shared::provision::ensure_all(&js)
        .await
        .expect("provision");
    let dir = tempfile::tempdir().expect("tempdir");
    let (trigger, stop) = shutdown::channel();
    let mut tasks = JoinSet::new();
    let c = connect(&NatsArgs::for_url(&url), "replay-scheduler")
        .await
        .expect("connect");
    let s = stop.clone();
    let memory_dir = dir.path().join("route-memory");
    tasks.spawn(async move {
        let args = SchedulerArgs {
            consolidate_every: WAVE as u64,
            learned_routing: routing != Routing::Rule,
            predictor_routing: routing == Routing::Predictor,
            embedder,
            route_memory_dir: Some(memory_dir),
            ..SchedulerArgs::default()
        };
        qefleet_scheduler::run(c, args, s).await.expect("scheduler");
    });
    let local: HashMap<String, f64> = modules.iter().map(|m| (m.name.clone(), m.local)).collect();
    let cloud: HashMap<String, f64> = modules.iter().map(|m| (m.name.clone(), cloud_q)).collect();
    for (pool, expected) in [
        (PoolArg::Local, local),
        (PoolArg::Cloud, cloud),
        (PoolArg::Maint, HashMap::new()),
    ] {
        let c = connect(&NatsArgs::for_url(&url), "replay-worker")
            .await
            .expect("connect");
        let mut args = WorkerArgs::for_pool(pool);
        args.concurrency = 8;
        args.outbox_dir = Some(dir.path().join(format!("outbox-{pool:?}")));
        args.no_memory = true;
        // Routing alone decides the pool: no escalation of low local results.
        args.results.quality_gate = 0.0;
        let engine = Arc::new(ReplayEngine {
            pool: match pool {
                PoolArg::Cloud => Pool::Cloud,
                _ => Pool::Local,
            },
            expected: Arc::new(expected),
            noise,
            seed,
        });
        let s = stop.clone();
        tasks.spawn(async move {
            qefleet_worker::run(c, args, engine, Arc::new(SonaConsolidator::default()), s)
                .await
                .expect("worker");
        });
    }
    // Both pools live for the router before the first job.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let mut results = client.subscribe(RESULTS_SUBJECTS).await.expect("subscribe");
    client
        .flush()
        .await
        .expect("the server holds the subscription");
    let sona = js.get_key_value(SONA_BUCKET).await.expect("bucket");
    let initial = SonaSnapshot::new();
    let mut snapshot = SonaSnapshot::new();
    let mut run = Run::default();
    let mut seen_sum = 0.0;
    let mut seen = 0usize;
    let started = Instant::now();
    for (wave, chunk) in order.chunks(WAVE).enumerate() {
        // What each job was routed with: the learned estimate for its pool, the untrained
        // model's.
        let mut routed: HashMap<String, (Option<f64>, f64)> = HashMap::new();
        for (k, &m) in chunk.iter().enumerate() {
            let module = &modules[m];
            let id = format!("r{:05}", wave * WAVE + k);
            let mut job = JobSpec::python(&module.name, &module.source);
            job.job_id = Some(id.clone());
            job.strategy = Some(strategy);
            let reply = submit(&client, &job, ContentType::MsgPack, Duration::from_secs(10))
                .await
                .expect("submitted");
            let SubmitReply::Accepted {
                route, complexity, ..
            } = reply
            else {
                panic!("rejected: {reply:?}");
            };
            let report = complexity.expect("complexity in the reply");
            // The router's own estimate when it routed by estimates (from its reasons),
            // else what the predictor would have said.
            let estimate = stated_estimate(&route.reasons, route.pool).or_else(|| {
                snapshot.estimate(&report).and_then(|e| match route.pool {
                    Pool::Cloud => e.cloud,
                    _ => e.local,
                })
            });
            let initial_estimate = initial
                .predictor
                .predict(&qefleet_learn::features(&report, route.pool));
            let best_cloud = cloud_q - module.local >= min_gain(strategy);
            run.agrees.push((route.pool == Pool::Cloud) == best_cloud);
            run.cloud.push(route.pool == Pool::Cloud);
            routed.insert(id, (estimate, initial_estimate));
        }
        let mut got = 0;
        while got < chunk.len() {
            let message = tokio::time::timeout(Duration::from_secs(60), results.next())
                .await
                .expect("results keep coming")
                .expect("subscription");
            let Ok((result, _)) = qefleet_shared::messages::decode::<JobResult>(
                message.headers.as_ref(),
                &message.payload,
            ) else {
                continue;
            };
            let Some(&(estimate, initial_estimate)) = routed.get(&result.job_id) else {
                continue;
            };
            let q = result.quality_score.unwrap_or(0.0);
            run.quality.push(q);
            if let Some(e) = estimate {
                run.err_learned.push((e - q).abs());
                run.err_mean.push(
                    (if seen == 0 {
                        0.5
                    } else {
                        seen_sum / seen as f64
                    } - q)
                        .abs(),
                );
                run.err_initial.push((initial_estimate - q).abs());
            }
            seen_sum += q;
            seen += 1;
            got += 1;
        }
        // The consolidation of this wave: wait until it is stored and give the scheduler a
        // moment to swap it in.
        let want = (wave + 1) as u64;
        wait_until("the consolidation", Duration::from_secs(120), || {
            let sona = sona.clone();
            async move {
                match sona.get(QUALITY_PREDICTOR_KEY).await {
                    Ok(Some(v)) => SonaSnapshot::decode(&v).is_ok_and(|s| s.consolidation >= want),
                    _ => false,
                }
            }
        })
        .await;
        let bytes = sona
            .get(QUALITY_PREDICTOR_KEY)
            .await
            .expect("get")
            .expect("snapshot");
        snapshot = SonaSnapshot::decode(&bytes).expect("snapshot");
        run.versions = snapshot.version;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    run.seconds = started.elapsed().as_secs_f64();
    trigger.trigger();
    while tasks.join_next().await.is_some() {}
    drop(server);
    run
}

fn main() {
    let jobs: usize = env_or("REPLAY_JOBS", 1000);
    let cloud_q: f64 = env_or("REPLAY_CLOUD_QUALITY", 0.80);
    let seed: u64 = env_or("REPLAY_SEED", 1);
    let modules = corpus();
    let mut order: Vec<usize> = (0..jobs).map(|i| i % modules.len()).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "{jobs} jobs over {} modules; local quality as measured by the generator, cloud {cloud_q:.2} (assumed), noise ±{:.2}",
        modules.len(),
        env_or("REPLAY_NOISE", 0.05)
    );
    let strategies: String = env_or("REPLAY_STRATEGIES", "balanced,quality".to_string());
    for name in strategies.split(',') {
        let strategy = match name.trim() {
            "balanced" => Strategy::Balanced,
            "quality" => Strategy::Quality,
            other => panic!("REPLAY_STRATEGIES: {other}? (balanced, quality)"),
        };
        strategy_report(&rt, &modules, &order, strategy, cloud_q);
    }
}

/// The three routings under one strategy, and what they reach against each other.
fn strategy_report(
    rt: &tokio::runtime::Runtime,
    modules: &[Module],
    order: &[usize],
    strategy: Strategy,
    cloud_q: f64,
) {
    println!();
    println!("## strategy {strategy:?}");
    let runs = [
        ("complexity rule (no learning)", Routing::Rule),
        ("SONA predictor", Routing::Predictor),
        (
            "SONA predictor + router memory",
            Routing::PredictorAndMemory,
        ),
    ]
    .map(|(name, routing)| {
        (
            name,
            rt.block_on(replay(modules, order, routing, strategy, cloud_q)),
        )
    });
    println!();
    // The balanced strategy's objective: quality, less the min gain for each cloud job
    // (the cloud is worth it when it adds at least that much).
    let value = |r: &Run, from: usize| {
        mean(&r.quality[from..]) - DEFAULT_MIN_GAIN * share(&r.cloud[from.min(r.cloud.len())..])
    };
    let best: f64 = order
        .iter()
        .map(|&m| modules[m].local.max(cloud_q - DEFAULT_MIN_GAIN))
        .sum::<f64>()
        / order.len() as f64;
    println!("| routing | mean quality | 2nd half | cloud share | 2nd half | agrees with best | 2nd half | value | 2nd half | adapter | seconds |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, r) in &runs {
        let half = r.quality.len() / 2;
        let ch = r.cloud.len() / 2;
        println!(
            "| {name} | {:.3} | {:.3} | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.3} | {:.3} | v{} | {:.1} |",
            mean(&r.quality),
            mean(&r.quality[half..]),
            100.0 * share(&r.cloud),
            100.0 * share(&r.cloud[ch..]),
            100.0 * share(&r.agrees),
            100.0 * share(&r.agrees[ch..]),
            value(r, 0),
            value(r, half),
            r.versions,
            r.seconds
        );
    }
    let base = &runs[0].1;
    let half = base.quality.len() / 2;
    let ceiling: f64 = order
        .iter()
        .map(|&m| modules[m].local.max(cloud_q))
        .sum::<f64>()
        / order.len() as f64;
    println!("| best choice by the true means (value: balanced's) | | | | | 100% | 100% | {best:.3} | | | |");
    println!("| highest quality possible (each job on its better pool, cost ignored) | {ceiling:.3} | | | | | | | | | |");
    println!();
    for (name, r) in &runs[1..] {
        println!(
            "{name} against the rule: quality {:+.1}% over all jobs, {:+.1}% over the second half; cloud jobs {:+.1}%; value {:+.1}%, second half {:+.1}%",
            100.0 * (mean(&r.quality) / mean(&base.quality) - 1.0),
            100.0 * (mean(&r.quality[half..]) / mean(&base.quality[half..]) - 1.0),
            100.0 * (share(&r.cloud) / share(&base.cloud).max(1e-9) - 1.0),
            100.0 * (value(r, 0) / value(base, 0) - 1.0),
            100.0 * (value(r, half) / value(base, half) - 1.0),
        );
    }
    println!();
    println!("predicted-quality error (mean |estimate − outcome|) on the jobs routed once the predictor had learned their pool:");
    println!("| run | jobs | SONA predictor | running mean (no learning) | untrained predictor |");
    println!("|---|---:|---:|---:|---:|");
    for (name, r) in &runs {
        println!(
            "| {name} | {} | {:.3} | {:.3} | {:.3} |",
            r.err_learned.len(),
            mean(&r.err_learned),
            mean(&r.err_mean),
            mean(&r.err_initial),
        );
    }
}
