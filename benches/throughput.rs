//! Fleet backbone benchmark: raw async-nats JetStream rates as the baseline, then
//! qefleet's submit->publish and consume->ack rates with a no-op engine, and end-to-end
//! submit->result latency at a steady rate, each against the same nats-server, once with
//! the embedded server's `sync_interval: always` and once with the server's default.
//!
//! The rates are measured in rounds (raw, a bare async-nats fleet, qefleet, back to back)
//! and reported as the median of each round's ratio; the latencies in alternating
//! one-second slices of bare JetStream and qefleet. A stall of the shared machine then
//! lands on both sides of a ratio instead of on one phase. The CPU per message of
//! nats-server and of the bench process says where the time went.
//!
//! Run: `cargo bench --bench throughput` (env BENCH_JOBS per round, BENCH_ROUNDS,
//! BENCH_RATE, BENCH_SECONDS, BENCH_RESULT_BATCHES: the workers' `--result-batches`,
//! default auto; BENCH_CONCURRENCY: the draining worker's, default 64; BENCH_SYNC=always
//! or default: that mode only; BENCH_STAGES=1: where
//! qefleet's latency goes, from when its jobs, events and results pass the server).

mod support;
use support::{env_or, percentile, Cpu};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;
use qefleet_scheduler::SchedulerArgs;
use qefleet_schemas::{codec, ContentType, JobSpec, SubmitBatchReply, SubmitReply};
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
/// Jobs in one batch request (`qe.submit.batch`).
const BATCH: usize = 64;

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

/// Every NATS connection the bench opened (clients, scheduler, workers): what they sent
/// and received is the traffic a phase caused.
static CONNECTIONS: std::sync::Mutex<Vec<Arc<async_nats::Statistics>>> =
    std::sync::Mutex::new(Vec::new());

async fn connect_counted(url: &str, name: &str) -> async_nats::Client {
    let client = connect(&NatsArgs::for_url(url), name)
        .await
        .expect("connect");
    CONNECTIONS.lock().expect("lock").push(client.statistics());
    client
}

/// Messages sent and received so far over every connection of the bench.
fn traffic() -> u64 {
    use std::sync::atomic::Ordering::Relaxed;
    CONNECTIONS
        .lock()
        .expect("lock")
        .iter()
        .map(|s| s.in_messages.load(Relaxed) + s.out_messages.load(Relaxed))
        .sum()
}

/// A durable pull consumer with the server's defaults on `stream`.
async fn durable(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
) -> jetstream::consumer::PullConsumer {
    js.get_stream(stream)
        .await
        .expect("stream")
        .create_consumer(pull::Config {
            durable_name: Some(name.into()),
            ..Default::default()
        })
        .await
        .expect("consumer")
}

/// A subscription the server already holds (subscribed, then a round trip).
async fn subscribed(client: &async_nats::Client, subject: String) -> async_nats::Subscriber {
    let subscriber = client.subscribe(subject).await.expect("subscribe");
    client.flush().await.expect("flush");
    subscriber
}

/// Where a phase began: time, CPU and traffic.
struct Mark {
    at: Instant,
    cpu: Cpu,
    traffic: u64,
}

impl Mark {
    fn now() -> Self {
        Self {
            at: Instant::now(),
            cpu: Cpu::now(),
            traffic: traffic(),
        }
    }
}

/// A rate, the CPU it took and the messages the bench's connections handled for it.
#[derive(Debug, Clone, Copy, Default)]
struct Rate {
    per_second: f64,
    cpu: Cpu,
    messages: u64,
}

impl Rate {
    fn since(n: usize, mark: &Mark) -> Self {
        Self {
            per_second: n as f64 / mark.at.elapsed().as_secs_f64(),
            cpu: mark.cpu.spent(),
            messages: traffic() - mark.traffic,
        }
    }
}

/// One round of the rate phases, measured back to back so that what disturbs the machine
/// disturbs the baselines and qefleet alike.
#[derive(Debug, Clone, Copy, Default)]
struct Round {
    raw_publish: Rate,
    raw_consume: Rate,
    bare_submit: Rate,
    bare_consume: Rate,
    submit: Rate,
    consume: Rate,
    /// Fire-and-forget: submissions published to the submissions stream -> jobs queued.
    queue: Rate,
    /// Batch requests of BATCH jobs -> every job accepted.
    batch: Rate,
}

struct Figures {
    jobs: usize,
    rounds: Vec<Round>,
    /// Sorted latencies, ms: JetStream publish -> consume, a bare fleet's submit -> result
    /// and qefleet's submit -> result, gathered in alternating one-second slices.
    raw_latencies: Vec<f64>,
    bare_latencies: Vec<f64>,
    e2e_latencies: Vec<f64>,
    /// p99 latency, ms, of each one-second slice: raw, the bare fleet, qefleet.
    slice_p99: Vec<[f64; 3]>,
    /// Sorted latencies, ms, of the stages of qefleet's jobs at the steady rate.
    stages: Vec<(&'static str, Vec<f64>)>,
    e2e_rate: f64,
    /// How results were stored while draining the queue and at the steady rate.
    consume_commits: Commits,
    e2e_commits: Commits,
}

impl Figures {
    /// The median over rounds of `rate`, and of `rate` / `baseline` with each round's ratio.
    fn ratio(&self, rate: fn(&Round) -> Rate, baseline: fn(&Round) -> Rate) -> Ratio {
        let per_round: Vec<f64> = self
            .rounds
            .iter()
            .map(|r| rate(r).per_second / baseline(r).per_second)
            .collect();
        Ratio {
            rate: median(self.rounds.iter().map(|r| rate(r).per_second).collect()),
            baseline: median(self.rounds.iter().map(|r| baseline(r).per_second).collect()),
            ratio: median(per_round.clone()),
            per_round,
        }
    }

    /// CPU and messages per job of one phase over all rounds.
    fn cost(&self, phase: fn(&Round) -> Rate) -> String {
        let total = self.rounds.iter().fold(Cpu::default(), |sum, r| Cpu {
            server: sum.server + phase(r).cpu.server,
            own: sum.own + phase(r).cpu.own,
        });
        let n = self.jobs * self.rounds.len();
        let messages: u64 = self.rounds.iter().map(|r| phase(r).messages).sum();
        format!(
            "{}, {:>4.1} messages",
            total.per_message(n),
            messages as f64 / n.max(1) as f64
        )
    }
}

struct Ratio {
    rate: f64,
    baseline: f64,
    ratio: f64,
    per_round: Vec<f64>,
}

impl Ratio {
    fn print(&self, label: &str) {
        let rounds: Vec<String> = self
            .per_round
            .iter()
            .map(|r| format!("{:.0}%", 100.0 * r))
            .collect();
        println!(
            "{label:<44} {:>9.0} {:>9.0} {:>7.0}%  ({})",
            self.rate,
            self.baseline,
            100.0 * self.ratio,
            rounds.join(" ")
        );
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(&values, 50.0)
}

async fn raw_rates(js: &jetstream::Context, payload: &[u8], n: usize) -> (Rate, Rate) {
    js.create_stream(stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("bench stream");
    let mark = Mark::now();
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
    let publish = Rate::since(n, &mark);
    let consumer = durable(js, "BENCH_RAW", "raw").await;
    let mark = Mark::now();
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
    let consume = Rate::since(n, &mark);
    let _ = js.delete_stream("BENCH_RAW").await;
    (publish, consume)
}

/// A bare durable fleet in async-nats, the least any fleet that stores jobs and results
/// does per job: streams `<NAME>_JOBS` (work queue, `<prefix>.jobs`) and `<NAME>_RESULTS`
/// (`<prefix>.results.>`), a service that replies to a request on `<prefix>.submit` once
/// the job is stored, and a worker (64 jobs at a time) that stores a result on
/// `<prefix>.results.<id>` (the job's `id` header) before acknowledging the job.
struct Bare {
    js: jetstream::Context,
    name: &'static str,
    prefix: &'static str,
}

impl Bare {
    async fn new(js: &jetstream::Context, name: &'static str, prefix: &'static str) -> Self {
        for (stream, subject, retention) in [
            ("JOBS", "jobs", stream::RetentionPolicy::WorkQueue),
            ("RESULTS", "results.>", stream::RetentionPolicy::Limits),
        ] {
            js.create_stream(stream::Config {
                name: format!("{name}_{stream}"),
                subjects: vec![format!("{prefix}.{subject}")],
                retention,
                ..Default::default()
            })
            .await
            .expect("bare fleet stream");
        }
        Self {
            js: js.clone(),
            name,
            prefix,
        }
    }

    async fn service(&self) -> tokio::task::JoinHandle<()> {
        let client = self.js.client();
        let mut requests = subscribed(&client, format!("{}.submit", self.prefix)).await;
        let (js, jobs) = (self.js.clone(), format!("{}.jobs", self.prefix));
        tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                let (js, client, jobs) = (js.clone(), client.clone(), jobs.clone());
                tokio::spawn(async move {
                    let headers = request.headers.unwrap_or_default();
                    let stored = js
                        .publish_with_headers(jobs, headers, request.payload)
                        .await;
                    if let (Ok(ack), Some(reply)) = (stored, request.reply) {
                        if ack.await.is_ok() {
                            let _ = client.publish(reply, "ok".into()).await;
                        }
                    }
                });
            }
        })
    }

    /// Submits `n` jobs numbered from `first`: `window` in flight at once, or paced at
    /// `rate`/s with each one's send time noted in `sent`.
    async fn submit(&self, payload: &[u8], (first, n): (usize, usize), pace: Pace<'_>) {
        let client = self.js.client();
        let subject = format!("{}.submit", self.prefix);
        let slice = Instant::now();
        let mut inflight = JoinSet::new();
        for i in 0..n {
            let id = format!("{}-{}", self.prefix, first + i);
            match pace {
                Pace::Window(window) => {
                    if inflight.len() >= window {
                        inflight.join_next().await;
                    }
                }
                Pace::Rate(rate, sent, origin) => {
                    let pacing = Duration::from_secs_f64(1.0 / rate as f64);
                    tokio::time::sleep_until((slice + pacing * i as u32).into()).await;
                    sent.lock()
                        .expect("lock")
                        .insert(id.clone(), origin.elapsed());
                }
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("id", id.as_str());
            let (client, subject, payload) = (client.clone(), subject.clone(), payload.to_vec());
            inflight.spawn(async move {
                client
                    .request_with_headers(subject, headers, payload.into())
                    .await
                    .expect("bare submission");
            });
            while inflight.try_join_next().is_some() {}
        }
        while inflight.join_next().await.is_some() {}
    }

    /// The worker; `done` counts the jobs it has finished.
    async fn worker(&self, done: Arc<AtomicUsize>) -> tokio::task::JoinHandle<()> {
        let consumer = durable(&self.js, &format!("{}_JOBS", self.name), "bare").await;
        let (js, prefix) = (self.js.clone(), self.prefix);
        tokio::spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(64));
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(64)
                .messages()
                .await
                .expect("messages");
            while let Some(Ok(m)) = messages.next().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let (js, done) = (js.clone(), done.clone());
                tokio::spawn(async move {
                    let id = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("id"))
                        .map(|v| v.as_str().to_string())
                        .unwrap_or_default();
                    let result = format!("{prefix}.results.{id}");
                    if let Ok(ack) = js.publish(result, m.payload.clone()).await {
                        if ack.await.is_ok() && m.ack().await.is_ok() {
                            done.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                    drop(slot);
                });
            }
        })
    }

    async fn remove(self) {
        for stream in ["JOBS", "RESULTS"] {
            let _ = self
                .js
                .delete_stream(format!("{}_{stream}", self.name))
                .await;
        }
    }
}

/// How a bare fleet's jobs are submitted.
#[derive(Clone, Copy)]
enum Pace<'a> {
    Window(usize),
    Rate(u64, &'a Sent, Instant),
}

/// Submit and consume rates of a bare fleet: `n` jobs submitted (WINDOW in flight), then
/// drained by its worker.
async fn bare_fleet(js: &jetstream::Context, payload: &[u8], n: usize) -> (Rate, Rate) {
    let bare = Bare::new(js, "BARE", "bare").await;
    let service = bare.service().await;
    let mark = Mark::now();
    bare.submit(payload, (0, n), Pace::Window(WINDOW)).await;
    let submit = Rate::since(n, &mark);
    service.abort();
    let done = Arc::new(AtomicUsize::new(0));
    let mark = Mark::now();
    let worker = bare.worker(done.clone()).await;
    while done.load(Ordering::Acquire) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let consume = Rate::since(n, &mark);
    worker.abort();
    bare.remove().await;
    (submit, consume)
}

/// Latencies (ms) a reader task collects while slices are published.
type Seen = Arc<std::sync::Mutex<Vec<f64>>>;

/// Waits until `seen` holds `n` latencies, or 10 s (what never arrived is reported).
async fn settle(seen: &Seen, n: usize) {
    let until = Instant::now() + Duration::from_secs(10);
    while seen.lock().expect("lock").len() < n && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The p99 of the latencies `seen` gained since `from`, which moves past them.
fn p99_since(seen: &Seen, from: &mut usize) -> f64 {
    let all = seen.lock().expect("lock");
    let mut slice = all[(*from).min(all.len())..].to_vec();
    *from = all.len();
    slice.sort_by(f64::total_cmp);
    percentile(&slice, 99.0)
}

/// Publishes `n` messages at `rate`/s, each stamped with its send time, and returns when
/// every publish was acknowledged.
async fn raw_slice(js: &jetstream::Context, payload: &[u8], rate: u64, n: usize, origin: Instant) {
    let pacing = Duration::from_secs_f64(1.0 / rate as f64);
    let slice = Instant::now();
    let mut pending = JoinSet::new();
    for i in 0..n {
        tokio::time::sleep_until((slice + pacing * i as u32).into()).await;
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
}

/// A reader of bare publish -> pull consume latencies on `bench.lat`.
async fn raw_reader(
    js: &jetstream::Context,
    origin: Instant,
) -> (Seen, tokio::task::JoinHandle<()>) {
    js.create_stream(stream::Config {
        name: "BENCH_LAT".into(),
        subjects: vec!["bench.lat".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .expect("latency stream");
    let consumer = durable(js, "BENCH_LAT", "lat").await;
    let seen: Seen = Arc::default();
    let into = seen.clone();
    let reader = tokio::spawn(async move {
        let mut messages = consumer.messages().await.expect("messages");
        while let Some(Ok(m)) = messages.next().await {
            let sent: u64 = m
                .headers
                .as_ref()
                .and_then(|h| h.get("t"))
                .and_then(|v| v.as_str().parse().ok())
                .unwrap_or(0);
            let now = origin.elapsed().as_micros() as u64;
            into.lock()
                .expect("lock")
                .push(now.saturating_sub(sent) as f64 / 1000.0);
            let _ = m.ack().await;
        }
    });
    (seen, reader)
}

/// When each end-to-end job was submitted, by job id.
type Sent = Arc<std::sync::Mutex<std::collections::HashMap<String, Duration>>>;

/// A reader of submit -> result latencies: results as they appear under `prefix`.
async fn e2e_reader(
    client: &async_nats::Client,
    prefix: &'static str,
    sent: Sent,
    origin: Instant,
) -> (Seen, tokio::task::JoinHandle<()>) {
    let mut results = subscribed(client, format!("{prefix}>")).await;
    let seen: Seen = Arc::default();
    let into = seen.clone();
    let reader = tokio::spawn(async move {
        while let Some(m) = results.next().await {
            let job_id = m.subject.as_str().trim_start_matches(prefix);
            let now = origin.elapsed();
            let at = sent.lock().expect("lock").get(job_id).copied();
            if let Some(at) = at {
                into.lock()
                    .expect("lock")
                    .push((now - at).as_secs_f64() * 1000.0);
            }
        }
    });
    (seen, reader)
}

/// When each job's message arrived on a subject under `prefix`, by job id: where the
/// end-to-end latency goes (the `submitted` and `started` events are published as they
/// happen, like the result).
async fn arrivals(
    client: &async_nats::Client,
    prefix: &'static str,
    origin: Instant,
) -> (Sent, tokio::task::JoinHandle<()>) {
    let mut messages = subscribed(client, format!("{prefix}>")).await;
    let seen: Sent = Arc::default();
    let into = seen.clone();
    let reader = tokio::spawn(async move {
        while let Some(m) = messages.next().await {
            let at = origin.elapsed();
            // A job's id is its message id; an event's and a result's end their subject.
            let job_id = match m.headers.as_ref().and_then(|h| h.get(HEADER_MSG_ID)) {
                Some(id) if prefix == "qe.jobs." => id.as_str().to_string(),
                _ => m.subject.as_str().trim_start_matches(prefix).to_string(),
            };
            into.lock().expect("lock").insert(job_id, at);
        }
    });
    (seen, reader)
}

/// Sorted latencies, ms, from `from` to `to` of the jobs both saw.
fn between(from: &Sent, to: &Sent) -> Vec<f64> {
    let (from, to) = (from.lock().expect("lock"), to.lock().expect("lock"));
    let mut v: Vec<f64> = from
        .iter()
        .filter_map(|(id, a)| {
            to.get(id)
                .map(|b| b.as_secs_f64() * 1000.0 - a.as_secs_f64() * 1000.0)
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// What `BENCH_STAGES` follows: jobs as the scheduler publishes them, the `started` and
/// `submitted` events, results.
const STAGE_SUBJECTS: [&str; 4] = [
    "qe.jobs.",
    "qe.events.started.",
    "qe.events.submitted.",
    "qe.results.",
];

/// The stages of qefleet's latency from the arrivals on [`STAGE_SUBJECTS`] (none unless
/// followed).
fn stages(sent: &Sent, arrivals: &[Sent]) -> Vec<(&'static str, Vec<f64>)> {
    let [published, started, submitted, stored] = arrivals else {
        return Vec::new();
    };
    vec![
        (
            "submit -> job published by the scheduler",
            between(sent, published),
        ),
        (
            "job published -> started by the worker",
            between(published, started),
        ),
        ("job started -> result published", between(started, stored)),
        (
            "submit -> job queued and recorded",
            between(sent, submitted),
        ),
    ]
}

/// Submits `n` jobs numbered from `first` at `rate`/s, each noted in `sent`.
async fn e2e_slice(
    client: &async_nats::Client,
    spec: &JobSpec,
    sent: &Sent,
    (first, n): (usize, usize),
    rate: u64,
    origin: Instant,
) {
    let pacing = Duration::from_secs_f64(1.0 / rate as f64);
    let slice = Instant::now();
    let mut inflight = JoinSet::new();
    for i in 0..n {
        tokio::time::sleep_until((slice + pacing * i as u32).into()).await;
        let mut job = spec.clone();
        let id = format!("e2e-{}", first + i);
        job.job_id = Some(id.clone());
        sent.lock().expect("lock").insert(id, origin.elapsed());
        let client = client.clone();
        inflight.spawn(async move {
            let _ = submit(&client, &job, ContentType::MsgPack, Duration::from_secs(20)).await;
        });
        while inflight.try_join_next().is_some() {}
    }
    while inflight.join_next().await.is_some() {}
}

/// Submits `spec` over request/reply (MessagePack) and insists it is accepted.
async fn accepted(client: &async_nats::Client, spec: &JobSpec) {
    let reply = submit(client, spec, ContentType::MsgPack, Duration::from_secs(20))
        .await
        .expect("submit");
    assert!(matches!(reply, SubmitReply::Accepted { .. }), "{reply:?}");
}

/// A scheduler alone, serving (it has accepted one job) on an empty `QE_JOBS`.
struct Serving {
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<()>,
    jobs: jetstream::stream::Stream,
}

impl Serving {
    async fn start(url: &str, js: &jetstream::Context) -> Self {
        let jobs = js.get_stream(JOBS_STREAM).await.expect("jobs stream");
        jobs.purge().await.expect("purge");
        let (trigger, shutdown) = shutdown::channel();
        let scheduler_client = connect_counted(url, "bench-scheduler").await;
        let task = tokio::spawn(async move {
            qefleet_scheduler::run(scheduler_client, scheduler_args(), shutdown)
                .await
                .expect("scheduler");
        });
        accepted(&js.client(), &JobSpec::python("calc", MODULE)).await;
        jobs.purge().await.expect("purge");
        Self {
            trigger,
            task,
            jobs,
        }
    }

    /// Waits until `n` jobs are queued.
    async fn queued(&mut self, n: usize) {
        let until = Instant::now() + Duration::from_secs(120);
        while self.jobs.info().await.map_or(0, |i| i.state.messages) < n as u64
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) {
        self.trigger.trigger();
        let _ = self.task.await;
        self.jobs.purge().await.expect("purge");
    }
}

/// Publishes `n` submissions to the submissions stream and waits until a scheduler has
/// queued them all; the jobs are then purged (they are not the consume phase's).
async fn fire_and_forget(url: &str, js: &jetstream::Context, payload: &[u8], n: usize) -> Rate {
    let mut serving = Serving::start(url, js).await;
    let headers = qefleet_shared::messages::headers_for(ContentType::MsgPack);
    let payload = bytes::Bytes::copy_from_slice(payload);
    let mark = Mark::now();
    let mut acks = Vec::with_capacity(WINDOW);
    for _ in 0..n {
        let ack = js
            .publish_with_headers(SUBMIT_QUEUE_SUBJECT, headers.clone(), payload.clone())
            .await
            .expect("publish");
        acks.push(ack);
        if acks.len() == WINDOW {
            for ack in acks.drain(..) {
                ack.await.expect("ack");
            }
        }
    }
    for ack in acks.drain(..) {
        ack.await.expect("ack");
    }
    serving.queued(n).await;
    let rate = Rate::since(n, &mark);
    serving.stop().await;
    rate
}

/// `n` jobs submitted in batch requests of [`BATCH`] jobs, WINDOW jobs in flight; the
/// jobs are then purged.
async fn batch_submit(url: &str, js: &jetstream::Context, n: usize) -> Rate {
    let serving = Serving::start(url, js).await;
    let client = js.client();
    let spec = JobSpec::python("calc", MODULE);
    let mark = Mark::now();
    let mut inflight = JoinSet::new();
    for first in (0..n).step_by(BATCH) {
        if inflight.len() >= WINDOW / BATCH {
            inflight.join_next().await;
        }
        let (client, jobs) = (client.clone(), vec![spec.clone(); BATCH.min(n - first)]);
        inflight.spawn(async move {
            let reply = qefleet_shared::client::submit_batch(
                &client,
                jobs,
                ContentType::MsgPack,
                Duration::from_secs(20),
            )
            .await
            .expect("batch submit");
            let SubmitBatchReply::Answered { replies, .. } = reply else {
                panic!("batch rejected: {reply:?}")
            };
            for reply in replies {
                assert!(matches!(reply, SubmitReply::Accepted { .. }), "{reply:?}");
            }
        });
    }
    while inflight.join_next().await.is_some() {}
    let rate = Rate::since(n, &mark);
    serving.stop().await;
    rate
}

fn scheduler_args() -> SchedulerArgs {
    let mut args = SchedulerArgs {
        consolidate_every: 1_000_000,
        ..SchedulerArgs::default()
    };
    if let Ok(batches) = std::env::var("BENCH_JOB_BATCHES") {
        args.job_batches = clap::ValueEnum::from_str(&batches, true)
            .expect("BENCH_JOB_BATCHES: auto, never or always");
    }
    args
}

async fn start_fleet(
    url: &str,
    outbox: std::path::PathBuf,
    concurrency: u32,
    metrics: Option<std::net::SocketAddr>,
) -> (ShutdownTrigger, JoinSet<()>) {
    let (trigger, shutdown) = shutdown::channel();
    let mut tasks = JoinSet::new();
    let client = connect_counted(url, "bench-scheduler").await;
    let s = shutdown.clone();
    tasks.spawn(async move {
        qefleet_scheduler::run(client, scheduler_args(), s)
            .await
            .expect("scheduler");
    });
    let client = connect_counted(url, "bench-worker").await;
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
    let rounds = env_or::<usize>("BENCH_ROUNDS", 3);
    let server = EmbeddedServer::start(EmbeddedOptions {
        default_sync,
        ..Default::default()
    })
    .expect("nats-server");
    let url = server.url();
    let client = connect_counted(&url, "bench").await;
    let js = jetstream::new(client.clone());
    qefleet_shared::provision::ensure_all(&js)
        .await
        .expect("provision");
    let spec = JobSpec::python("calc", MODULE);
    let payload = codec::encode(&spec, ContentType::MsgPack);
    let dir = tempfile::tempdir().expect("tempdir");

    // One submission through a whole fleet first: streams, consumers and buckets exist.
    let (trigger, mut tasks) = start_fleet(&url, dir.path().join("warm-up"), 64, None).await;
    accepted(&client, &spec).await;
    trigger.trigger();
    while tasks.join_next().await.is_some() {}

    let mut all = Vec::with_capacity(rounds);
    let mut consume_commits = Commits::default();
    for round in 0..rounds {
        eprintln!(
            "round {}: raw, bare, qefleet submit, consume, fire-and-forget, batches",
            round + 1
        );
        let (raw_publish, raw_consume) = raw_rates(&js, &payload, jobs).await;
        let (bare_submit, bare_consume) = bare_fleet(&js, &payload, jobs).await;

        // submit -> publish: request/reply through a scheduler alone, WINDOW submissions in
        // flight; the jobs stay queued for the consume phase.
        let (trigger, shutdown) = shutdown::channel();
        let scheduler_client = connect_counted(&url, "bench-scheduler").await;
        let scheduler = tokio::spawn(async move {
            qefleet_scheduler::run(scheduler_client, scheduler_args(), shutdown)
                .await
                .expect("scheduler");
        });
        // The first submission waits for the scheduler to serve; the rate is the others'.
        accepted(&client, &spec).await;
        let mark = Mark::now();
        let mut inflight = JoinSet::new();
        for _ in 1..jobs {
            if inflight.len() >= WINDOW {
                inflight.join_next().await;
            }
            let client = client.clone();
            let spec = spec.clone();
            inflight.spawn(async move { accepted(&client, &spec).await });
        }
        while inflight.join_next().await.is_some() {}
        let submitted = Rate::since(jobs - 1, &mark);
        trigger.trigger();
        let _ = scheduler.await;

        // consume -> ack: a worker with the no-op engine drains the queued jobs.
        // Measured from the first result, when the worker is up (as raw's from its first
        // pull), over the jobs not yet done then.
        let before = results_count(&js).await;
        let metrics_addr = free_addr();
        let (trigger, mut tasks) = start_fleet(
            &url,
            dir.path().join(format!("consume-{round}")),
            env_or::<u32>("BENCH_CONCURRENCY", 64),
            Some(metrics_addr),
        )
        .await;
        let mut done = results_count(&js).await;
        while done == before {
            tokio::time::sleep(Duration::from_millis(1)).await;
            done = results_count(&js).await;
        }
        let mark = Mark::now();
        let remaining = (before + jobs as u64 - done) as usize;
        while results_count(&js).await < before + jobs as u64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let consumed = Rate::since(remaining, &mark);
        consume_commits = consume_commits.plus(&Commits::scrape(metrics_addr).await);
        trigger.trigger();
        while tasks.join_next().await.is_some() {}

        // Fire-and-forget: what a batch producer sees, submissions published to the
        // submissions stream (WINDOW acks in flight) until a scheduler has queued them all.
        let queued = fire_and_forget(&url, &js, &payload, jobs).await;
        let batched = batch_submit(&url, &js, jobs).await;
        all.push(Round {
            raw_publish,
            raw_consume,
            bare_submit,
            bare_consume,
            submit: submitted,
            consume: consumed,
            queue: queued,
            batch: batched,
        });
    }

    // Latency at a steady rate: one-second slices of raw JetStream, the bare fleet and
    // qefleet in turn, each slice settled before the next begins.
    eprintln!("latency: {seconds} slices of raw, bare and qefleet at {rate}/s");
    let metrics_addr = free_addr();
    let (trigger, mut tasks) =
        start_fleet(&url, dir.path().join("latency"), 64, Some(metrics_addr)).await;
    let origin = Instant::now();
    let sent: Sent = Arc::default();
    let (raw_seen, raw_task) = raw_reader(&js, origin).await;
    let (e2e_seen, e2e_task) = e2e_reader(&client, "qe.results.", sent.clone(), origin).await;
    // Where the latency goes, when asked: four more subscriptions on the bench's
    // connection, so off by default.
    let mut stage_arrivals = Vec::new();
    let mut stage_tasks = Vec::new();
    if std::env::var_os("BENCH_STAGES").is_some() {
        for prefix in STAGE_SUBJECTS {
            let (seen, task) = arrivals(&client, prefix, origin).await;
            stage_arrivals.push(seen);
            stage_tasks.push(task);
        }
    }
    let bare_sent: Sent = Arc::default();
    let (bare_seen, bare_task) =
        e2e_reader(&client, "bare-lat.results.", bare_sent.clone(), origin).await;
    let bare = Bare::new(&js, "BARE_LAT", "bare-lat").await;
    let bare_tasks = [bare.service().await, bare.worker(Arc::default()).await];
    let per_slice = rate as usize;
    let mut submitting = Duration::ZERO;
    let mut slice_p99 = Vec::with_capacity(seconds as usize);
    let mut from = [0; 3];
    for slice in 0..seconds as usize {
        raw_slice(&js, &payload, rate, per_slice, origin).await;
        settle(&raw_seen, (slice + 1) * per_slice).await;
        let raw_p99 = p99_since(&raw_seen, &mut from[0]);
        let range = (slice * per_slice, per_slice);
        let pace = Pace::Rate(rate, &bare_sent, origin);
        bare.submit(&payload, range, pace).await;
        settle(&bare_seen, (slice + 1) * per_slice).await;
        let bare_p99 = p99_since(&bare_seen, &mut from[1]);
        let started = Instant::now();
        e2e_slice(
            &client,
            &spec,
            &sent,
            (slice * per_slice, per_slice),
            rate,
            origin,
        )
        .await;
        submitting += started.elapsed();
        settle(&e2e_seen, (slice + 1) * per_slice).await;
        slice_p99.push([raw_p99, bare_p99, p99_since(&e2e_seen, &mut from[2])]);
    }
    for task in bare_tasks
        .iter()
        .chain([&raw_task, &e2e_task, &bare_task])
        .chain(&stage_tasks)
    {
        task.abort();
    }
    let e2e_commits = Commits::scrape(metrics_addr).await;
    trigger.trigger();
    while tasks.join_next().await.is_some() {}
    let n = per_slice * seconds as usize;
    let sorted = |seen: &Seen, what: &str| {
        let mut v = seen.lock().expect("lock").clone();
        if v.len() < n {
            eprintln!("warning: only {} of {n} {what} latencies observed", v.len());
        }
        v.sort_by(f64::total_cmp);
        v
    };
    Figures {
        jobs,
        rounds: all,
        raw_latencies: sorted(&raw_seen, "raw"),
        bare_latencies: sorted(&bare_seen, "bare"),
        e2e_latencies: sorted(&e2e_seen, "end-to-end"),
        slice_p99,
        stages: stages(&sent, &stage_arrivals),
        e2e_rate: n as f64 / submitting.as_secs_f64(),
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
            qefleet_shared::metrics::sample_sum(&text, series, &[("kind", kind)]).unwrap_or(0.0)
        };
        Self {
            batches: value("qefleet_result_commit_results_count", "batch"),
            batched: value("qefleet_result_commit_results_sum", "batch"),
            singles: value("qefleet_result_commit_results_count", "single"),
        }
    }

    fn plus(&self, other: &Self) -> Self {
        Self {
            batches: self.batches + other.batches,
            batched: self.batched + other.batched,
            singles: self.singles + other.singles,
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
        "qefleet backbone benchmark ({} cores, jobs={}, rounds={}, steady rate={}/s for {}s)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        env_or::<u64>("BENCH_JOBS", 3000),
        env_or::<usize>("BENCH_ROUNDS", 3),
        env_or::<u64>("BENCH_RATE", 1000),
        env_or::<u64>("BENCH_SECONDS", 5)
    );
    let modes = std::env::var("BENCH_SYNC").unwrap_or_default();
    for (label, default_sync) in [
        ("sync_interval: always", false),
        ("server default sync", true),
    ] {
        let wanted = if default_sync { "default" } else { "always" };
        if !modes.is_empty() && modes != wanted {
            continue;
        }
        let f = runtime.block_on(measure(default_sync));
        println!("\n== {label} ==");
        println!(
            "{:<44} {:>9} {:>9} {:>8}  (each round)",
            "median of rounds", "qefleet", "baseline", "ratio"
        );
        f.ratio(|r| r.submit, |r| r.raw_publish)
            .print("publish rate (msg/s): submit->publish vs raw");
        f.ratio(|r| r.consume, |r| r.raw_consume)
            .print("consume rate (msg/s): consume->ack vs raw");
        f.ratio(|r| r.submit, |r| r.bare_submit)
            .print("submit vs a bare request->store->reply");
        f.ratio(|r| r.consume, |r| r.bare_consume)
            .print("consume vs a bare consume->store result->ack");
        f.ratio(|r| r.queue, |r| r.raw_publish)
            .print("fire-and-forget: submitted->queued vs raw");
        f.ratio(|r| r.batch, |r| r.raw_publish)
            .print(&format!("batch requests of {BATCH}: submit vs raw"));
        for (baseline, latencies) in [
            ("submit->result vs raw", &f.raw_latencies),
            ("vs a bare fleet's", &f.bare_latencies),
        ] {
            for (what, p) in [("p50", 50.0), ("p99", 99.0)] {
                let (ours, theirs) = (percentile(&f.e2e_latencies, p), percentile(latencies, p));
                println!(
                    "{:<44} {:>9.2} {:>9.2} {:>+8.2}",
                    format!("latency {what} (ms): {baseline}"),
                    ours,
                    theirs,
                    ours - theirs
                );
            }
        }
        // A stall of the machine in one slice decides a p99 over all of them; the
        // median over slices of each slice's p99, next to its baseline's, does not.
        for (baseline, index) in [("vs raw", 0), ("vs bare", 1)] {
            let ours = median(f.slice_p99.iter().map(|s| s[2]).collect());
            let theirs = median(f.slice_p99.iter().map(|s| s[index]).collect());
            let each: Vec<String> = f
                .slice_p99
                .iter()
                .map(|s| format!("{:+.1}", s[2] - s[index]))
                .collect();
            println!(
                "{:<44} {:>9.2} {:>9.2} {:>+8.2}  ({})",
                format!("slice p99, median of 1-s slices: {baseline}"),
                ours,
                theirs,
                median(f.slice_p99.iter().map(|s| s[2] - s[index]).collect()),
                each.join(" ")
            );
        }
        println!(
            "{:<44} {:>9.0}",
            "steady submission rate achieved (jobs/s)", f.e2e_rate
        );
        if !f.stages.is_empty() {
            println!("where qefleet's latency goes, p50 / p99 (ms):");
        }
        for (stage, latencies) in &f.stages {
            println!(
                "  {stage:<42} {:>9.2} {:>9.2}",
                percentile(latencies, 50.0),
                percentile(latencies, 99.0)
            );
        }
        if !default_sync {
            // Raw publish stores one message per fsync, one after another. A durable job
            // takes three (the job, its result, the job's removal when acknowledged) on
            // the same disk: a steady rate near a third of raw publish queues on it.
            let fsyncs = median(f.rounds.iter().map(|r| r.raw_publish.per_second).collect());
            let rate = env_or::<u64>("BENCH_RATE", 1000) as f64;
            println!(
                "fsynced writes a second (raw publish): {fsyncs:.0}; at 3 a job, about {:.0} jobs/s for any durable fleet{}",
                fsyncs / 3.0,
                if rate > fsyncs / 3.0 {
                    "\nwarning: the steady rate is beyond that: the latency rows above measure the disk's queue, not the fleets"
                } else {
                    ""
                }
            );
        }
        println!("Per job: CPU and messages sent or received by the bench's connections (the bench process holds the clients, scheduler and worker):");
        for (what, phase) in [
            ("raw publish", (|r| r.raw_publish) as fn(&Round) -> Rate),
            ("bare request->store->reply", |r| r.bare_submit),
            ("qefleet submit->publish", |r| r.submit),
            ("qefleet fire-and-forget", |r| r.queue),
            ("qefleet batch requests", |r| r.batch),
            ("raw consume", |r| r.raw_consume),
            ("bare consume->store->ack", |r| r.bare_consume),
            ("qefleet consume->ack", |r| r.consume),
        ] {
            println!("  {what:<28} {}", f.cost(phase));
        }
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
