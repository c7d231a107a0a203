//! The engine seam: anything that turns a queued job into a measured test suite.
//! Engines say whether a failure is the job's (a terminal failed result) or the
//! infrastructure's (retry later); the runtime maps that to acknowledgements.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use qefleet_cloud::BreakerState;
use qefleet_schemas::{QueuedJob, RefinementStop, TokenUsage};

/// What an engine is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct EngineRequest<'a> {
    pub job: &'a QueuedJob,
    /// Delivery attempt, 1-based.
    pub attempt: u32,
    /// Wall-clock time the engine may spend.
    pub time_budget: Duration,
    /// Suites of similar past jobs that went well (ReasoningBank), for prompts.
    pub examples: &'a [String],
}

/// A generated, executed suite and its figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineOutput {
    pub test_file: String,
    pub tests_total: u32,
    pub tests_passed: u32,
    pub tests_failed: u32,
    pub line_coverage: Option<f64>,
    pub branch_coverage: Option<f64>,
    pub mutation_score: Option<f64>,
    pub quality_score: Option<f64>,
    pub refinement_rounds: u32,
    /// Why the refinement loop stopped, for engines that refine.
    pub refinement_stop: Option<RefinementStop>,
    pub tokens: TokenUsage,
    pub cost_usd: f64,
    /// Local model time spent on the job, for the inference metrics.
    pub inference: Option<InferenceUsage>,
}

/// What a job cost on a local model.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct InferenceUsage {
    /// Seconds in model runs (prefill and decode).
    pub seconds: f64,
    /// Tokens generated.
    pub tokens: u64,
}

/// Why an engine produced no suite.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The job itself cannot yield tests (module does not import, nothing to test).
    /// Becomes a `failed` result; retrying would not help.
    #[error("{0}")]
    JobFailed(String),
    /// Something around the job broke (interpreter missing, disk full, provider down).
    /// Retried with backoff, dead-lettered when deliveries run out.
    #[error("{0}")]
    Transient(String),
}

pub type EngineFuture<'a> =
    Pin<Box<dyn Future<Output = Result<EngineOutput, EngineError>> + Send + 'a>>;

/// A test generator.
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// Name recorded on results and metrics.
    fn name(&self) -> &str;
    /// The ONNX Runtime execution provider of an engine that runs a local model
    /// (`cpu`, `cuda:0`), shown in `qefleet status` and as a metric label.
    fn execution_provider(&self) -> Option<String> {
        None
    }
    /// Circuit-breaker states of the providers a remote engine calls, by provider name.
    fn breakers(&self) -> Vec<(String, BreakerState)> {
        Vec::new()
    }
    fn generate<'a>(&'a self, request: EngineRequest<'a>) -> EngineFuture<'a>;
}
