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

/// Why a refinement loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefinementStop {
    /// A round improved quality by less than the plateau threshold.
    Plateau,
    /// The job's complexity class allows no more rounds.
    MaxRounds,
    /// Too little of the time budget was left for another round (a refinement timeout).
    TimeBudget,
    /// The engine had nothing more to propose.
    NoProposal,
}

impl RefinementStop {
    pub fn as_str(self) -> &'static str {
        match self {
            RefinementStop::Plateau => "plateau",
            RefinementStop::MaxRounds => "max_rounds",
            RefinementStop::TimeBudget => "time_budget",
            RefinementStop::NoProposal => "no_proposal",
        }
    }
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

/// The cost of a job on the reference cloud model: the prompts and completions its cloud
/// engine would exchange for the same rounds, priced from the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudEquivalent {
    /// Provider and model, e.g. `anthropic/claude-sonnet-4-5`.
    pub model: String,
    /// Effective date of the price used.
    pub price_effective: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub usd: f64,
    /// How the tokens were counted: `tokenizer` (the model's own) or `estimate`
    /// (4 bytes a token).
    pub counted_by: String,
}

/// What happened when a job was escalated from the local pool to the cloud.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EscalationOutcome {
    /// Why the local result was escalated.
    pub reason: String,
    pub local_engine: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_quality_score: Option<f64>,
    pub local_run_ms: u64,
    /// Set when the cloud could not run the job and this is the local result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_error: Option<String>,
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
    /// Why the refinement loop stopped; absent for engines without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refinement_stop: Option<RefinementStop>,
    pub engine: String,
    pub pool: Pool,
    pub complexity: Complexity,
    pub tokens: TokenUsage,
    /// What the cloud providers charged for this job, from the tokens they reported and
    /// the configured price table (0 for local engines).
    pub cost_usd: f64,
    /// Local compute: the seconds workers ran the job times their configured $/hour
    /// (`--compute-usd-per-hour`, 0 when not configured).
    #[serde(default)]
    pub compute_usd: f64,
    /// What the same job would have cost on the configured cloud model, when a reference
    /// price is configured; `savings_usd` is this minus `cost_usd + compute_usd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_equivalent: Option<CloudEquivalent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savings_usd: Option<f64>,
    /// Set when a local result below the quality gate was escalated to the cloud pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<EscalationOutcome>,
    pub timings: Timings,
    /// Delivery attempt that produced this result (1 = first).
    pub attempt: u32,
    pub worker_id: String,
    pub completed_at_ms: u64,
    /// The job's metadata, unchanged.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}
