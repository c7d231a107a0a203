//! Worker settings; every flag is also an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use qefleet_inference::{Embedder, InferenceArgs};
use qefleet_shared::config::parse_duration;

use crate::results::Batching;

/// Pools a worker can serve, as command-line values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolArg {
    Local,
    Cloud,
    Maint,
}

impl From<PoolArg> for qefleet_schemas::Pool {
    fn from(p: PoolArg) -> Self {
        match p {
            PoolArg::Local => Self::Local,
            PoolArg::Cloud => Self::Cloud,
            PoolArg::Maint => Self::Maint,
        }
    }
}

/// Engines a local worker can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    /// Tests synthesised from the module, measured and refined (no LLM).
    Generator,
    /// Only the module's doctest examples, as pytest tests: the floor.
    Doctest,
    /// A local causal LM (`--local-model`, on ONNX Runtime) proposing suites inside the
    /// refinement loop.
    LocalLlm,
}

/// How a worker weighs its results: the quality gate for escalation and what its
/// compute costs. Shared by `qefleet worker` and `qefleet up`.
#[derive(Debug, Clone, clap::Args)]
pub struct ResultArgs {
    /// A local result whose quality score is below this (or that failed) is escalated
    /// once to the cloud pool, with its suite as the starting point, unless the job is
    /// local_only, privacy or budgets say no, or no cloud worker is live. 0 turns
    /// escalation off.
    #[arg(long, env = "QEFLEET_QUALITY_GATE", default_value_t = 0.4)]
    pub quality_gate: f64,
    /// What an hour of this worker's machine costs, US dollars: results carry their
    /// compute cost (run seconds × this) in `compute_usd`. 0 counts compute as free.
    #[arg(long, env = "QEFLEET_COMPUTE_USD_PER_HOUR", default_value_t = 0.0)]
    pub compute_usd_per_hour: f64,
}

impl Default for ResultArgs {
    fn default() -> Self {
        Self {
            quality_gate: 0.4,
            compute_usd_per_hour: 0.0,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Pool this worker serves.
    #[arg(long, env = "QEFLEET_POOL", value_enum, default_value = "local")]
    pub pool: PoolArg,
    /// Engine of a local worker.
    #[arg(long, env = "QEFLEET_ENGINE", value_enum, default_value = "generator")]
    pub engine: EngineArg,
    /// Jobs run at once by this worker.
    #[arg(long, env = "QEFLEET_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,
    /// A delivered job not acknowledged (or heartbeated) within this is redelivered.
    #[arg(long, env = "QEFLEET_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// Deliveries of a job before it is dead-lettered.
    #[arg(long, env = "QEFLEET_MAX_DELIVER", default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..=100))]
    pub max_deliver: i64,
    /// First retry delay after a transient failure; doubles per attempt.
    #[arg(long, env = "QEFLEET_RETRY_INITIAL", default_value = "1s", value_parser = parse_duration)]
    pub retry_initial: Duration,
    /// Longest retry delay.
    #[arg(long, env = "QEFLEET_RETRY_MAX", default_value = "60s", value_parser = parse_duration)]
    pub retry_max: Duration,
    /// Time budget of a job that sets no budget.max_seconds.
    #[arg(long, env = "QEFLEET_JOB_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub job_timeout: Duration,
    /// How long a shutdown waits for in-flight jobs before leaving them to redelivery.
    #[arg(long, env = "QEFLEET_DRAIN_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Directory of this worker's durable result outbox (one per worker).
    #[arg(long, env = "QEFLEET_OUTBOX_DIR")]
    pub outbox_dir: Option<PathBuf>,
    /// How results that finish together are stored (ADR 0017): `auto` commits them as
    /// one atomic batch when the worker is saturated and batches have been storing
    /// results faster than single publishes; `never` publishes each on its own.
    #[arg(long, env = "QEFLEET_RESULT_BATCHES", value_enum, default_value_t = Batching::Auto)]
    pub result_batches: Batching,
    /// Identity in the live-workers bucket; random when absent.
    #[arg(long, env = "QEFLEET_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Python interpreter with pytest and coverage (default: .venv/bin/python, then python3).
    #[arg(long, env = "QEFLEET_PYTHON")]
    pub python: Option<PathBuf>,
    /// Address of the /metrics endpoint (e.g. 0.0.0.0:9465); none when absent.
    #[arg(long = "worker-metrics-addr", env = "QEFLEET_WORKER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// The cloud pool's providers, models, keys and prices (JSON; docs/CLOUD.md).
    #[arg(long, env = "QEFLEET_CLOUD_CONFIG")]
    pub cloud_config: Option<PathBuf>,
    #[command(flatten)]
    pub results: ResultArgs,
    /// Cloud configuration whose first priced provider is the model savings are measured
    /// against (default: --cloud-config when given). Results then carry
    /// `cloud_equivalent` and `savings_usd`.
    #[arg(long, env = "QEFLEET_SAVINGS_REFERENCE")]
    pub savings_reference: Option<PathBuf>,
    #[command(flatten)]
    pub inference: InferenceArgs,
    /// Directory of this worker's ReasoningBank (one per worker; default
    /// .qefleet/memory/<pool>). The bank is used when the worker has an embedder
    /// (`--embeddings`).
    #[arg(long, env = "QEFLEET_MEMORY_DIR")]
    pub memory_dir: Option<PathBuf>,
    /// Run without the ReasoningBank even with an embedder.
    #[arg(long, env = "QEFLEET_NO_MEMORY")]
    pub no_memory: bool,
    /// The process's embedder, when started (`--embeddings`).
    #[arg(skip)]
    pub embedder: Option<Embedder>,
    /// A registry shared with other components of the process (`qefleet up`); a new one
    /// when absent.
    #[arg(skip)]
    pub metrics: Option<qefleet_shared::metrics::Metrics>,
}

impl WorkerArgs {
    /// Defaults for a pool, as the command line would give them.
    pub fn for_pool(pool: PoolArg) -> Self {
        Self {
            pool,
            engine: EngineArg::Generator,
            concurrency: 2,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            job_timeout: Duration::from_secs(120),
            drain_timeout: Duration::from_secs(60),
            outbox_dir: None,
            result_batches: Batching::Auto,
            worker_id: None,
            python: None,
            metrics_addr: None,
            cloud_config: None,
            results: ResultArgs::default(),
            savings_reference: None,
            inference: InferenceArgs::default(),
            memory_dir: None,
            no_memory: false,
            embedder: None,
            metrics: None,
        }
    }
}
