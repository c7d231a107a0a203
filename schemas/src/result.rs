//! The outcome of a job, published once per job id on `qe.results.<job_id>`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Complexity, Pool};

/// Terminal state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Tests were generated and executed; figures are filled in.
    Succeeded,
    /// The job ran but could not produce tests (see `error`).
    Failed,
    /// The deadline passed before the job started; it was not run.
    Expired,
}

/// Token counts reported by a model, zero for engines without one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenUsage {
    pub prompt: u64,
    pub completion: u64,
}

/// Where the time went, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    /// Submission to the start of the run that produced this result.
    pub queued_ms: u64,
    /// The engine's run.
    pub run_ms: u64,
    /// Submission to result.
    pub total_ms: u64,
}

/// Everything the fleet knows about a finished job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobResult {
    pub schema_version: u32,
    pub job_id: String,
    pub tenant: String,
    pub module_name: String,
    pub status: JobStatus,
    /// Why the job failed or expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The generated pytest file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_file: Option<String>,
    pub tests_total: u32,
    pub tests_passed: u32,
    pub tests_failed: u32,
    /// Fraction of the module's lines executed by the suite (coverage.py), when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line_coverage: Option<f64>,
    /// Fraction of the module's branches taken by the suite, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch_coverage: Option<f64>,
    /// Fraction of mutants killed, when measured (engines without mutation testing omit it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutation_score: Option<f64>,
    /// Combined quality figure, when the engine computes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_score: Option<f64>,
    /// Whether `line_coverage` reached the job's `coverage_target`, when both exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage_target_met: Option<bool>,
    pub refinement_rounds: u32,
    pub engine: String,
    pub pool: Pool,
    pub complexity: Complexity,
    pub tokens: TokenUsage,
    pub cost_usd: f64,
    pub timings: Timings,
    /// Delivery attempt that produced this result (1 = first).
    pub attempt: u32,
    pub worker_id: String,
    pub completed_at_ms: u64,
    /// The job's metadata, unchanged.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}
