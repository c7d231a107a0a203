//! A test-generation job as submitted, and as queued after analysis and routing.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{JobResult, SCHEMA_VERSION};

/// Several submissions in one request on `qe.submit.batch`: each job is validated,
/// routed and queued as if submitted alone, and the reply answers them in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBatch {
    /// Must equal the fleet's schema version (1).
    pub schema_version: u32,
    /// 1 to 256 jobs (a NATS message also has the server's `max_payload`, 1 MiB by
    /// default, which bounds the sources a batch can carry).
    pub jobs: Vec<JobSpec>,
}

impl SubmitBatch {
    /// The most jobs one batch may hold.
    pub const MAX_JOBS: usize = 256;

    pub fn new(jobs: Vec<JobSpec>) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            jobs,
        }
    }
}

/// A request to generate unit tests for one Python module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Must equal the fleet's schema version (1).
    pub schema_version: u32,
    /// Idempotency key: submitting the same id twice yields one job. 1-128 characters
    /// from `[A-Za-z0-9_-]`. The scheduler assigns one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Who the job is for; carried on the result, and the unit of the daily cloud budget
    /// (`--tenant-daily-budget-usd`).
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Language of `source`. Only `python` is supported.
    pub language: String,
    /// Importable module name the generated tests use (`import <module_name>`).
    pub module_name: String,
    /// Full text of the module under test (UTF-8, at most the scheduler's size limit).
    pub source: String,
    /// Restrict generation to one function or `Class.method`; it must exist in `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_function: Option<String>,
    /// Line coverage the job aims for, 0.0-1.0; the result says whether it was met.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage_target: Option<f64>,
    /// Spending and time limits for this job.
    #[serde(default)]
    pub budget: Budget,
    /// Privacy flag: the job and its source never leave local workers.
    #[serde(default)]
    pub local_only: bool,
    /// Reserved for fair scheduling; rejected when set until that exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Routing strategy for this job, overriding the deployment's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Insist on a pool: the job is queued there even when no live worker serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Pool>,
    /// Milliseconds since the Unix epoch after which the job must not start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_unix_ms: Option<u64>,
    /// Free-form labels, returned unchanged on the result.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

fn default_tenant() -> String {
    "default".to_string()
}

impl JobSpec {
    /// A minimal Python job with every optional field at its default.
    pub fn python(module_name: &str, source: &str) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            job_id: None,
            tenant: default_tenant(),
            language: "python".to_string(),
            module_name: module_name.to_string(),
            source: source.to_string(),
            target_function: None,
            coverage_target: None,
            budget: Budget::default(),
            local_only: false,
            priority: None,
            strategy: None,
            pool: None,
            deadline_unix_ms: None,
            metadata: BTreeMap::new(),
        }
    }
}

/// Limits on what one job may spend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Most the job may cost in US dollars; 0 keeps it off paid (cloud) pools. An LLM
    /// engine starts no model call once the job has spent it (the call that crosses it
    /// completes, so a job can overshoot by one exchange).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_usd: Option<f64>,
    /// Wall-clock seconds the engine may spend generating and measuring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_seconds: Option<u32>,
}

/// How the router weighs cost against quality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Cheapest pool that can do the job: local.
    Cost,
    /// Strongest engine available: cloud when a cloud worker is live.
    Quality,
    /// Never leave local workers.
    PrivacyFirst,
    /// Local for simple and moderate modules, cloud for complex ones when available.
    Balanced,
}

/// A group of workers consuming one subject family.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Pool {
    Local,
    Cloud,
    Maint,
}

impl Pool {
    pub const ALL: [Pool; 3] = [Pool::Local, Pool::Cloud, Pool::Maint];

    pub fn as_str(self) -> &'static str {
        match self {
            Pool::Local => "local",
            Pool::Cloud => "cloud",
            Pool::Maint => "maint",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl std::fmt::Display for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Complexity class of a module, from static analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Complexity {
    Simple,
    Moderate,
    Complex,
    VeryComplex,
}

impl Complexity {
    pub const ALL: [Complexity; 4] = [
        Complexity::Simple,
        Complexity::Moderate,
        Complexity::Complex,
        Complexity::VeryComplex,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Complexity::Simple => "simple",
            Complexity::Moderate => "moderate",
            Complexity::Complex => "complex",
            Complexity::VeryComplex => "very_complex",
        }
    }
}

impl std::fmt::Display for Complexity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What static analysis found in the module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ComplexityReport {
    pub class: Complexity,
    /// Weighted score the class is cut from (documented in docs/ARCHITECTURE.md).
    pub score: f64,
    /// McCabe complexity summed over the module: 1 per function plus 1 per decision.
    pub cyclomatic: u32,
    /// Highest McCabe complexity of a single function.
    pub max_function_cyclomatic: u32,
    /// Non-blank, non-comment lines.
    pub code_lines: u32,
    pub functions: u32,
    pub async_functions: u32,
    pub classes: u32,
    /// Decision points: if/elif/for/while/except/with/assert/match-case, boolean operators,
    /// conditional expressions and comprehension filters.
    pub branches: u32,
    pub imports: u32,
}

/// Where a job was sent and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteDecision {
    pub pool: Pool,
    /// JetStream subject the job was published to.
    pub subject: String,
    /// Name of the router that decided.
    pub router: String,
    /// Strategy in force for this job.
    pub strategy: Strategy,
    /// Human-readable reasons, in the order they were applied.
    pub reasons: Vec<String>,
}

/// The message on a `qe.jobs.<pool>.<complexity>` subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueuedJob {
    pub schema_version: u32,
    /// The submission, with `job_id` always set.
    pub job: JobSpec,
    pub complexity: ComplexityReport,
    pub route: RouteDecision,
    pub submitted_at_ms: u64,
    /// Set when a local result fell below the quality gate and the job was sent on to
    /// the cloud pool (at most once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<Escalation>,
}

/// Why and from what a job was escalated to the cloud pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Escalation {
    /// For example `quality 0.42 is below the gate 0.60`.
    pub reason: String,
    /// The quality gate the local result missed.
    pub gate: f64,
    /// The local worker's result. Its suite is the cloud engine's starting point, and it
    /// is the job's result when the cloud cannot run the job.
    pub local_result: Box<JobResult>,
    pub escalated_at_ms: u64,
}

impl QueuedJob {
    /// The job id; the scheduler always sets it before queueing.
    pub fn job_id(&self) -> &str {
        self.job.job_id.as_deref().unwrap_or("")
    }
}
