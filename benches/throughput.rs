//! Fleet backbone benchmark: raw async-nats JetStream rates as the baseline, then
//! qefleet's submit->publish and consume->ack rates with a no-op engine, and end-to-end
//! submit->result latency at a steady rate, each against the same nats-server, once with
//! the embedded server's `sync_interval: always` and once with the server's default.
//!
//! Run: `cargo bench --bench throughput` (env BENCH_JOBS, BENCH_RATE, BENCH_SECONDS,
//! BENCH_RESULT_BATCHES: the workers' `--result-batches`, default auto).

mod support;
use support::{env_or, percentile};

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;
use qefleet_scheduler::SchedulerArgs;
use qefleet_schemas::{codec, ContentType, JobSpec, SubmitReply};
use qefleet_shared::client::submit;
use qefleet_shared::embedded::{EmbeddedOptions, EmbeddedServer};
use qefleet_shared::nats::{connect, NatsArgs};
use qefleet_shared::shutdown::{self, ShutdownTrigger};
use qefleet_shared::subjects::*;
use qefleet_worker::consolidator::RecordOnly;
use qefleet_worker::engine::{Engine, EngineFuture, EngineOutput, EngineRequest};
use qefleet_worker::{PoolArg, WorkerArgs};
use tokio::task::JoinSet;

const MODULE: &str = include_str!("../examples/calc.py");
const WINDOW: usize = 256;

#[derive(Debug)]
struct NoopEngine;

impl Engine for NoopEngine {
    fn name(&self) -> &str {
        "noop"
    }
    fn generate<'a>(&'a self, _: EngineRequest<'a>) -> EngineFuture<'a> {
        Box::pin(async {
            // Quality above the worker's gate: no result is escalated (an escalation is a
            // request to the scheduler per job, the cascade's cost, not the backbone's).
            Ok(EngineOutput {
                tests_total: 1,
                tests_passed: 1,
                quality_score: Some(1.0),
                ..EngineOutput::default()
            })
        })
    }
}

struct Figures {
    raw_publish: f64,
    raw_consume: f64,
    submit: f64,
    consume: f64,
    raw_p50: f64,
    raw_p99: f64,
    e2e_p50: f64,
    e2e_p99: f64,
    e2e_rate: f64,
    /// How results were stored while draining the queue and at the steady rate.
    consume_commits: Commits,
    e2e_commits: Commits,
}

async fn raw_rates(js: &jetstream::Context, payload: &[u8], n: usize) -> (f64, f64) {
    js.create_stream(stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("bench stream");
    let start = Instant::now();
    let mut acks = Vec::with_capacity(WINDOW);
    for _ in 0..n {
        acks.push(
            js.publish("bench.raw", payload.to_vec().into())
                .await
                .expect("publish"),
        );
        if acks.len() == WINDOW {
            for ack in acks.drain(..) {
                ack.await.expect("ack");
            }
        }
    }
    for ack in acks.drain(..) {
        ack.await.expect("ack");
    }
    let publish = n as f64 / start.elapsed().as_secs_f64();
    let stream = js.get_stream("BENCH_RAW").await.expect("stream");
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let mut batch = consumer
            .fetch()
            .max_messages(WINDOW)
            .messages()
            .await
            .expect("fetch");
        while let Some(Ok(m)) = batch.next().await {
            m.ack().await.expect("ack");
            done += 1;
        }
    }
    let _ = js.client().flush().await;
    let consume = n as f64 / start.elapsed().as_secs_f64();
    (publish, consume)
}

/// Latency of a bare JetStream publish -> pull consume at `rate`/s: the floor under
/// qefleet's end-to-end figure.
async fn raw_latency(
    js: &jetstream::Context,
    payload: &[u8],
    rate: u64,
    seconds: u64,
) -> (f64, f64) {
    js.create_stream(stream::Config {
        name: "BENCH_LAT".into(),
        subjects: vec!["bench.lat".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .expect("latency stream");
    let consumer = js
        .get_stream("BENCH_LAT")
        .await
        .expect("stream")
        .create_consumer(pull::Config {
            durable_name: Some("lat".into()),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let n = (rate * seconds) as usize;
    let origin = Instant::now();
    let reader = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(n);
        let mut messages = consumer.messages().await.expect("messages");
        while latencies.len() < n {
            let Some(Ok(m)) = messages.next().await else {
                break;
            };
            let sent: u64 = m
                .headers
                .as_ref()
                .and_then(|h| h.get("t"))
                .and_then(|v| v.as_str().parse().ok())
                .unwrap_or(0);
            let now = origin.elapsed().as_micros() as u64;
            latencies.push((now - sent) as f64 / 1000.0);
            let _ = m.ack().await;
        }
        latencies
    });
    let pacing = Duration::from_secs_f64(1.0 / rate as f64);
    let mut pending = JoinSet::new();
    for i in 0..n {
        tokio::time::sleep_until((origin + pacing * i as u32).into()).await;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("t", origin.elapsed().as_micros().to_string().as_str());
        let ack = js
            .publish_with_headers("bench.lat", headers, payload.to_vec().into())
            .await
            .expect("publish");
        pending.spawn(async move { ack.await.map(|_| ()) });
        while pending.try_join_next().is_some() {}
    }
    while pending.join_next().await.is_some() {}
    let mut latencies = reader.await.expect("reader");
    latencies.sort_by(f64::total_cmp);
    (percentile(&latencies, 50.0), percentile(&latencies, 99.0))
}

async fn start_fleet(
    url: &str,
    outbox: std::path::PathBuf,
    concurrency: u32,
    metrics: Option<std::net::SocketAddr>,
) -> (ShutdownTrigger, JoinSet<()>) {
    let (trigger, shutdown) = shutdown::channel();
    let mut tasks = JoinSet::new();
    let client = connect(&NatsArgs::for_url(url), "bench-scheduler")
        .await
        .expect("connect");
    let s = shutdown.clone();
    tasks.spawn(async move {
        qefleet_scheduler::run(
            client,
            SchedulerArgs {
                consolidate_every: 1_000_000,
                ..SchedulerArgs::default()
            },
            s,
        )
        .await
        .expect("scheduler");
    });
    let client = connect(&NatsArgs::for_url(url), "bench-worker")
        .await
        .expect("connect");
    let mut args = WorkerArgs::for_pool(PoolArg::Local);
    args.concurrency = concurrency;
    args.outbox_dir = Some(outbox);
    args.metrics_addr = metrics;
    if let Ok(batches) = std::env::var("BENCH_RESULT_BATCHES") {
        args.result_batches = clap::ValueEnum::from_str(&batches, true)
            .expect("BENCH_RESULT_BATCHES: auto, never or always");
    }
    tasks.spawn(async move {
        qefleet_worker::run(
            client,
            args,
            Arc::new(NoopEngine),
            Arc::new(RecordOnly),
            shutdown,
        )
        .await
        .expect("worker");
    });
    (trigger, tasks)
}

async fn measure(default_sync: bool) -> Figures {
    let jobs = env_or::<u64>("BENCH_JOBS", 3000) as usize;
    let rate = env_or::<u64>("BENCH_RATE", 1000);
    let seconds = env_or::<u64>("BENCH_SECONDS", 5);
    let server = EmbeddedServer::start(EmbeddedOptions {
        default_sync,
        ..Default::default()
    })
    .expect("nats-server");
    let url = server.url();
    let client = connect(&NatsArgs::for_url(&url), "bench")
        .await
        .expect("connect");
    let js = jetstream::new(client.clone());
    qefleet_shared::provision::ensure_all(&js)
        .await
        .expect("provision");
    let spec = JobSpec::python("calc", MODULE);
    let payload = codec::encode(&spec, ContentType::MsgPack);
    eprintln!("phase: raw publish and consume");
    let (raw_publish, raw_consume) = raw_rates(&js, &payload, jobs).await;
    eprintln!("phase: raw latency");
    let (raw_p50, raw_p99) = raw_latency(&js, &payload, rate, seconds).await;

    // submit -> publish: request/reply through a scheduler, WINDOW submissions in flight;
    // no worker yet, so the jobs stay queued for the consume phase.
    eprintln!("phase: qefleet submit");
    let dir = tempfile::tempdir().expect("tempdir");
    let (trigger, mut tasks) = start_fleet(&url, dir.path().join("warm-up"), 64, None).await;
    // The worker must not drain while submissions are measured: pause it by stopping the
    // whole fleet after submission and restarting it for the consume phase.
    let warm = submit(
        &client,
        &spec,
        ContentType::MsgPack,
        Duration::from_secs(20),
    )
    .await
    .expect("warm-up");
    assert!(matches!(warm, SubmitReply::Accepted { .. }));
    trigger.trigger();
    while tasks.join_next().await.is_some() {}
    let scheduler_only = {
        let (trigger, shutdown) = shutdown::channel();
        let client = connect(&NatsArgs::for_url(&url), "bench-scheduler")
            .await
            .expect("connect");
        let task = tokio::spawn(async move {
            qefleet_scheduler::run(client, SchedulerArgs::default(), shutdown)
                .await
                .expect("scheduler");
        });
        (trigger, task)
    };
    let start = Instant::now();
    let mut inflight = JoinSet::new();
    for _ in 0..jobs {
        if inflight.len() >= WINDOW {
            inflight.join_next().await;
        }
        let client = client.clone();
        let spec = spec.clone();
        inflight.spawn(async move {
            let reply = submit(
                &client,
                &spec,
                ContentType::MsgPack,
                Duration::from_secs(20),
            )
            .await
            .expect("submit");
            assert!(matches!(reply, SubmitReply::Accepted { .. }), "{reply:?}");
        });
    }
    while inflight.join_next().await.is_some() {}
    let submit_rate = jobs as f64 / start.elapsed().as_secs_f64();
    scheduler_only.0.trigger();
    let _ = scheduler_only.1.await;

    eprintln!("phase: qefleet consume");
    // consume -> ack: a worker with the no-op engine drains the queued jobs.
    let before = results_count(&js).await;
    let start = Instant::now();
    let metrics_addr = free_addr();
    let (trigger, mut tasks) =
        start_fleet(&url, dir.path().join("consume"), 64, Some(metrics_addr)).await;
    while results_count(&js).await < before + jobs as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let consume_rate = jobs as f64 / start.elapsed().as_secs_f64();
    let consume_commits = Commits::scrape(metrics_addr).await;

    eprintln!("phase: qefleet end to end");
    // End to end at a steady rate: submit -> result observed on qe.results.>.
    let mut results = client.subscribe("qe.results.>").await.expect("subscribe");
    let n = (rate * seconds) as usize;
    let origin = Instant::now();
    let sent_at: Arc<std::sync::Mutex<std::collections::HashMap<String, Duration>>> =
        Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let reader_sent = sent_at.clone();
    let reader = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(n);
        while latencies.len() < n {
            let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(30), results.next()).await
            else {
                break;
            };
            let job_id = m
                .subject
                .as_str()
                .trim_start_matches("qe.results.")
                .to_string();
            let now = origin.elapsed();
            if let Some(sent) = reader_sent.lock().expect("lock").remove(&job_id) {
                latencies.push((now - sent).as_secs_f64() * 1000.0);
            }
        }
        latencies
    });
    let pacing = Duration::from_secs_f64(1.0 / rate as f64);
    let mut inflight = JoinSet::new();
    for i in 0..n {
        tokio::time::sleep_until((origin + pacing * i as u32).into()).await;
        let mut job = spec.clone();
        let id = format!("e2e-{i}");
        job.job_id = Some(id.clone());
        sent_at.lock().expect("lock").insert(id, origin.elapsed());
        let client = client.clone();
        inflight.spawn(async move {
            let _ = submit(&client, &job, ContentType::MsgPack, Duration::from_secs(20)).await;
        });
        while inflight.try_join_next().is_some() {}
    }
    while inflight.join_next().await.is_some() {}
    let achieved = n as f64 / origin.elapsed().as_secs_f64();
    let mut latencies = reader.await.expect("reader");
    latencies.sort_by(f64::total_cmp);
    if latencies.len() < n {
        eprintln!("warning: only {} of {n} results observed", latencies.len());
    }
    let e2e_commits = Commits::scrape(metrics_addr).await.since(&consume_commits);
    trigger.trigger();
    while tasks.join_next().await.is_some() {}
    Figures {
        raw_publish,
        raw_consume,
        submit: submit_rate,
        consume: consume_rate,
        raw_p50,
        raw_p99,
        e2e_p50: percentile(&latencies, 50.0),
        e2e_p99: percentile(&latencies, 99.0),
        e2e_rate: achieved,
        consume_commits,
        e2e_commits,
    }
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// How the worker stored its results (`qefleet_result_commit_results`): commits and results
/// by kind.
#[derive(Debug, Default, Clone, Copy)]
struct Commits {
    batches: f64,
    batched: f64,
    singles: f64,
}

impl Commits {
    async fn scrape(addr: std::net::SocketAddr) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut text = String::new();
        if let Ok(mut conn) = tokio::net::TcpStream::connect(addr).await {
            let _ = conn
                .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
                .await;
            let _ = conn.read_to_string(&mut text).await;
        }
        let value = |series: &str, kind: &str| {
            text.lines()
                .find(|l| l.starts_with(series) && l.contains(&format!("kind=\"{kind}\"")))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Self {
            batches: value("qefleet_result_commit_results_count", "batch"),
            batched: value("qefleet_result_commit_results_sum", "batch"),
            singles: value("qefleet_result_commit_results_count", "single"),
        }
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            batches: self.batches - before.batches,
            batched: self.batched - before.batched,
            singles: self.singles - before.singles,
        }
    }

    fn describe(&self) -> String {
        let all = self.batched + self.singles;
        if all == 0.0 {
            return "no results counted".into();
        }
        format!(
            "{:.0}% in {:.0} atomic batches (mean {:.1}), {:.0} single",
            100.0 * self.batched / all,
            self.batches,
            if self.batches > 0.0 {
                self.batched / self.batches
            } else {
                0.0
            },
            self.singles
        )
    }
}

async fn results_count(js: &jetstream::Context) -> u64 {
    match js.get_stream(RESULTS_STREAM).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

fn main() {
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn");
    }
    qefleet_shared::logging::init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "qefleet backbone benchmark ({} cores, jobs={}, steady rate={}/s for {}s)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        env_or::<u64>("BENCH_JOBS", 3000),
        env_or::<u64>("BENCH_RATE", 1000),
        env_or::<u64>("BENCH_SECONDS", 5)
    );
    for (label, default_sync) in [
        ("sync_interval: always", false),
        ("server default sync", true),
    ] {
        let f = runtime.block_on(measure(default_sync));
        println!("\n== {label} ==");
        println!("{:<44} {:>12} {:>12} {:>8}", "", "qefleet", "raw", "ratio");
        println!(
            "{:<44} {:>12.0} {:>12.0} {:>7.0}%",
            "publish rate (msg/s): submit->publish vs raw",
            f.submit,
            f.raw_publish,
            100.0 * f.submit / f.raw_publish
        );
        println!(
            "{:<44} {:>12.0} {:>12.0} {:>7.0}%",
            "consume rate (msg/s): consume->ack vs raw",
            f.consume,
            f.raw_consume,
            100.0 * f.consume / f.raw_consume
        );
        println!(
            "{:<44} {:>12.2} {:>12.2} {:>+8.2}",
            "latency p50 (ms): submit->result vs raw",
            f.e2e_p50,
            f.raw_p50,
            f.e2e_p50 - f.raw_p50
        );
        println!(
            "{:<44} {:>12.2} {:>12.2} {:>+8.2}",
            "latency p99 (ms): submit->result vs raw",
            f.e2e_p99,
            f.raw_p99,
            f.e2e_p99 - f.raw_p99
        );
        println!(
            "{:<44} {:>12.0}",
            "steady submission rate achieved (jobs/s)", f.e2e_rate
        );
        println!(
            "results stored while draining: {}",
            f.consume_commits.describe()
        );
        println!(
            "results stored at the steady rate: {}",
            f.e2e_commits.describe()
        );
    }
}
