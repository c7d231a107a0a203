//! The test harness: a real nats-server per test (free port, temp store, killed on drop),
//! fleet components started in-process or as real child processes, and small engines
//! whose behaviour a test controls.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::StreamMessage};
use async_nats::Client;
use futures_util::StreamExt;
use qefleet_scheduler::SchedulerArgs;
use qefleet_schemas::{ContentType, JobResult, JobSpec, SubmitReply};
use qefleet_shared::client::{submit, wait_for_result};
use qefleet_shared::embedded::{EmbeddedOptions, EmbeddedServer};
use qefleet_shared::nats::{connect, NatsArgs};
use qefleet_shared::provision;
use qefleet_shared::shutdown::{self, ShutdownTrigger};
use qefleet_shared::subjects::{DLQ_STREAM, WORKERS_BUCKET};
use qefleet_worker::consolidator::{Consolidator, RecordOnly};
use qefleet_worker::engine::{Engine, EngineError, EngineFuture, EngineOutput, EngineRequest};
use qefleet_worker::{PoolArg, WorkerArgs};
use tokio::task::JoinSet;

pub const BIN: &str = env!("CARGO_BIN_EXE_qefleet");

/// A doctest whose example sleeps, for tests that need a job in flight.
pub fn slow_module(seconds: f64) -> String {
    format!(
        "def slow():\n    \"\"\"\n    >>> slow()\n    42\n    \"\"\"\n    import time\n    time.sleep({seconds})\n    return 42\n"
    )
}

pub const CALC: &str = "def add(a, b):\n    \"\"\"\n    >>> add(2, 3)\n    5\n    >>> add('a', 'b')\n    'ab'\n    \"\"\"\n    return a + b\n\n\ndef half(x):\n    \"\"\"\n    >>> half(4)\n    2.0\n    \"\"\"\n    if x is None:\n        raise TypeError('x is None')\n    return x / 2\n";

/// One test's fleet: its own nats-server and the components the test starts.
pub struct Fleet {
    pub server: EmbeddedServer,
    pub client: Client,
    pub js: jetstream::Context,
    pub dir: tempfile::TempDir,
    stop_all: ShutdownTrigger,
    tasks: JoinSet<()>,
    workers: u32,
    children: Vec<Child>,
}

impl Fleet {
    pub async fn start() -> Self {
        Self::start_with(EmbeddedOptions::default()).await
    }

    pub async fn start_with(options: EmbeddedOptions) -> Self {
        let server =
            EmbeddedServer::start(options).expect("nats-server starts (run ./scripts/setup.sh)");
        let client = connect(&NatsArgs::for_url(server.url()), "qefleet-test")
            .await
            .expect("connects");
        let js = jetstream::new(client.clone());
        provision::ensure_all(&js).await.expect("provisions");
        let (stop_all, _) = shutdown::channel();
        Self {
            server,
            client,
            js,
            dir: tempfile::tempdir().expect("tempdir"),
            stop_all,
            tasks: JoinSet::new(),
            workers: 0,
            children: Vec::new(),
        }
    }

    pub fn nats(&self) -> NatsArgs {
        NatsArgs::for_url(self.server.url())
    }

    async fn own_client(&self) -> Client {
        connect(&self.nats(), "qefleet-test-component")
            .await
            .expect("connects")
    }

    /// Starts a scheduler replica with its own connection.
    pub async fn scheduler(&mut self, args: SchedulerArgs) {
        let client = self.own_client().await;
        let shutdown = self.stop_all.subscribe();
        self.tasks.spawn(async move {
            qefleet_scheduler::run(client, args, shutdown)
                .await
                .expect("scheduler runs");
        });
    }

    /// Starts a scheduler replica serving `/metrics` on a free port, returned.
    pub async fn scheduler_with_metrics(&mut self, args: SchedulerArgs) -> u16 {
        let port = qefleet_shared::embedded::free_port();
        self.scheduler(SchedulerArgs {
            metrics_addr: Some(([127, 0, 0, 1], port).into()),
            ..args
        })
        .await;
        port
    }

    /// Keys of the live workers (`<pool>.<worker_id>`). A worker's key goes when it has
    /// stopped pulling and drained, so an absent key means it takes no more jobs.
    pub async fn live_workers(&self) -> Vec<String> {
        let Ok(bucket) = self.js.get_key_value(WORKERS_BUCKET).await else {
            return Vec::new();
        };
        let Ok(keys) = bucket.keys().await else {
            return Vec::new();
        };
        keys.filter_map(|k| async { k.ok() }).collect().await
    }

    /// Waits until no worker is live: every stopped worker has ended its last fetch.
    pub async fn until_no_live_worker(&self) {
        eventually(Duration::from_secs(30), "no live worker", || async {
            self.live_workers().await.is_empty()
        })
        .await;
    }

    /// Worker settings for tests: fast redelivery and retries, own outbox.
    pub fn worker_args(&mut self, pool: PoolArg) -> WorkerArgs {
        self.workers += 1;
        let mut args = WorkerArgs::for_pool(pool);
        args.outbox_dir = Some(self.dir.path().join(format!("outbox-{}", self.workers)));
        args.memory_dir = Some(self.dir.path().join(format!("memory-{}", self.workers)));
        args.ack_wait = Duration::from_secs(2);
        args.retry_initial = Duration::from_millis(300);
        args.retry_max = Duration::from_secs(2);
        args.drain_timeout = Duration::from_secs(20);
        args
    }

    /// Starts an in-process worker; the returned trigger stops it alone.
    pub async fn worker(&mut self, args: WorkerArgs, engine: Arc<dyn Engine>) -> ShutdownTrigger {
        self.worker_consolidating(args, engine, Arc::new(RecordOnly))
            .await
    }

    /// [`Self::worker`] with the maint pool's consolidator chosen by the test.
    pub async fn worker_consolidating(
        &mut self,
        args: WorkerArgs,
        engine: Arc<dyn Engine>,
        consolidator: Arc<dyn Consolidator>,
    ) -> ShutdownTrigger {
        let client = self.own_client().await;
        let (trigger, shutdown) = shutdown::channel();
        let all = self.stop_all.subscribe();
        let stop = trigger.clone();
        tokio::spawn(async move {
            let mut all = all;
            all.wait().await;
            stop.trigger();
        });
        self.tasks.spawn(async move {
            qefleet_worker::run(client, args, engine, consolidator, shutdown)
                .await
                .expect("worker runs");
        });
        trigger
    }

    /// Starts `qefleet worker` as a child process with fast redelivery.
    pub fn worker_process(&mut self, extra: &[&str]) -> &mut Child {
        self.workers += 1;
        let log =
            std::fs::File::create(self.dir.path().join(format!("worker-{}.log", self.workers)))
                .expect("log file");
        let outbox = self.dir.path().join(format!("outbox-{}", self.workers));
        let memory = self.dir.path().join(format!("memory-{}", self.workers));
        let child = Command::new(BIN)
            .args([
                "worker",
                "--nats-url",
                &self.server.url(),
                "--ack-wait",
                "2s",
            ])
            .arg("--outbox-dir")
            .arg(outbox)
            .arg("--memory-dir")
            .arg(memory)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("qefleet worker starts");
        self.children.push(child);
        self.children.last_mut().expect("just pushed")
    }

    /// Starts a `qefleet worker` process with `extra` arguments and a /metrics endpoint;
    /// returns the endpoint's port.
    pub fn worker_process_with_metrics(&mut self, extra: &[&str]) -> u16 {
        let port = qefleet_shared::embedded::free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut args = extra.to_vec();
        args.extend(["--worker-metrics-addr", addr.as_str()]);
        self.worker_process(&args);
        port
    }

    /// `qefleet status --json`, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        let status = self.cli(&["status", "--json"]);
        serde_json::from_slice(&status.stdout).expect("json status")
    }

    /// The `n`th child process started by this fleet.
    pub fn child(&mut self, n: usize) -> &mut Child {
        &mut self.children[n]
    }

    pub fn worker_log(&self, n: u32) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("worker-{n}.log"))).unwrap_or_default()
    }

    pub async fn submit(&self, job: &JobSpec, ct: ContentType) -> SubmitReply {
        submit(&self.client, job, ct, Duration::from_secs(20))
            .await
            .expect("a scheduler answers")
    }

    /// Submits and returns the job id, failing the test on rejection.
    pub async fn submit_ok(&self, job: &JobSpec) -> String {
        match self.submit(job, ContentType::MsgPack).await {
            SubmitReply::Accepted { job_id, .. } => job_id,
            SubmitReply::Rejected { error, .. } => panic!("rejected: {error:?}"),
        }
    }

    pub async fn result(&self, job_id: &str, within: Duration) -> (JobResult, ContentType) {
        wait_for_result(&self.js, job_id, within)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn stream_messages(&self, stream: &str) -> u64 {
        let mut s = self.js.get_stream(stream).await.expect("stream");
        s.info().await.expect("info").state.messages
    }

    /// Every message in a stream, oldest first.
    pub async fn messages(&self, stream: &str) -> Vec<StreamMessage> {
        let mut s = self.js.get_stream(stream).await.expect("stream");
        let state = s.info().await.expect("info").state.clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return out;
        }
        for seq in state.first_sequence..=state.last_sequence {
            if let Ok(m) = s.get_raw_message(seq).await {
                out.push(m);
            }
        }
        out
    }

    /// Waits until the dead-letter stream holds exactly one message, and returns it.
    pub async fn only_dead_letter(&self, within: Duration, what: &str) -> StreamMessage {
        eventually(within, what, || async {
            self.stream_messages(DLQ_STREAM).await == 1
        })
        .await;
        self.messages(DLQ_STREAM).await.remove(0)
    }

    /// Runs the qefleet binary against this fleet's server.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut full: Vec<String> = Vec::new();
        full.push(args[0].to_string());
        if matches!(args[0], "dlq" | "sona") {
            full.push(args[1].to_string());
            full.insert(1, "--nats-url".into());
            full.insert(2, self.server.url());
            full.extend(args[2..].iter().map(|s| s.to_string()));
        } else {
            full.extend(["--nats-url".to_string(), self.server.url()]);
            full.extend(args[1..].iter().map(|s| s.to_string()));
        }
        Command::new(BIN)
            .args(&full)
            .output()
            .expect("qefleet runs")
    }

    /// Stops every component (draining) and waits for them.
    pub async fn stop(mut self) {
        self.stop_all.trigger();
        while let Some(done) = self.tasks.join_next().await {
            if let Err(e) = done {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within {within:?}: {what}");
}

pub fn job(source: &str) -> JobSpec {
    JobSpec::python("calc", source)
}

/// An engine whose behaviour per attempt the test decides; counts its runs.
#[derive(Debug, Clone)]
pub struct ScriptedEngine {
    pub runs: Arc<AtomicU32>,
    /// The examples (ReasoningBank suites) each run was given, in run order.
    pub examples: Arc<std::sync::Mutex<Vec<Vec<String>>>>,
    pub delay: Duration,
    /// Attempts that fail with a transient error (1-based); `u32::MAX` for all.
    pub fail_until_attempt: u32,
}

impl ScriptedEngine {
    pub fn succeeding(delay: Duration) -> Self {
        Self {
            runs: Arc::new(AtomicU32::new(0)),
            examples: Arc::default(),
            delay,
            fail_until_attempt: 0,
        }
    }

    pub fn runs(&self) -> u32 {
        self.runs.load(Ordering::SeqCst)
    }
}

impl Engine for ScriptedEngine {
    fn name(&self) -> &str {
        "scripted"
    }

    fn generate<'a>(&'a self, request: EngineRequest<'a>) -> EngineFuture<'a> {
        Box::pin(async move {
            self.runs.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut seen) = self.examples.lock() {
                seen.push(request.examples.to_vec());
            }
            tokio::time::sleep(self.delay).await;
            if request.attempt <= self.fail_until_attempt {
                return Err(EngineError::Transient(format!(
                    "scripted transient failure on attempt {}",
                    request.attempt
                )));
            }
            Ok(EngineOutput {
                test_file: "def test_ok():\n    assert True\n".into(),
                tests_total: 1,
                tests_passed: 1,
                refinement_rounds: 1,
                refinement_stop: Some(qefleet_schemas::RefinementStop::Plateau),
                quality_score: Some(0.95),
                ..EngineOutput::default()
            })
        })
    }
}

pub fn header(m: &StreamMessage, name: &str) -> String {
    m.headers
        .get(name)
        .map(|v| v.as_str().to_string())
        .unwrap_or_default()
}

/// Waits until the /metrics page on `port` shows every one of `expected` (metric lines
/// or their beginnings).
pub async fn metrics_show(port: u16, expected: &[&str], what: &str) {
    let start = Instant::now();
    loop {
        let body = try_http_get(port, "/metrics").await.unwrap_or_default();
        let missing: Vec<&&str> = expected.iter().filter(|e| !body.contains(**e)).collect();
        if missing.is_empty() {
            return;
        }
        if start.elapsed() > Duration::from_secs(10) {
            // What the page has of each missing metric, to see how it differs.
            let related: Vec<&str> = body
                .lines()
                .filter(|l| {
                    missing
                        .iter()
                        .any(|m| l.starts_with(m.split(['{', ' ']).next().unwrap_or(m)))
                })
                .collect();
            panic!(
                "{what}: /metrics lacks {missing:?}; it has:\n{}",
                related.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The body of a plain HTTP GET on localhost (for /metrics).
pub async fn http_get(port: u16, path: &str) -> String {
    try_http_get(port, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"))
}

/// [`http_get`], with the error instead of a panic (a server still starting).
pub async fn try_http_get(port: u16, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    socket.read_to_string(&mut body).await?;
    Ok(body)
}

/// How many messages `subscription` receives until 200 ms pass without one.
pub async fn arrivals(subscription: &mut async_nats::Subscriber) -> usize {
    use futures_util::StreamExt;
    let mut n = 0;
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(200), subscription.next()).await
    {
        n += 1;
    }
    n
}
