//! Job state kept in the `qe_job_state` bucket, and the consolidation job message.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ComplexityReport, RouteDecision};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    Queued,
    Running,
    Done,
    DeadLettered,
}

/// The value under a job id in the `qe_job_state` bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobState {
    pub schema_version: u32,
    pub job_id: String,
    pub phase: JobPhase,
    pub route: RouteDecision,
    pub complexity: ComplexityReport,
    pub updated_at_ms: u64,
}

/// The message on `qe.jobs.maint.consolidate`: consolidate what the last `every`
/// completions taught the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsolidationJob {
    pub schema_version: u32,
    /// 1 for the first consolidation, 2 for the second, ...
    pub number: u64,
    /// Completions counted when it was triggered (`number * every`).
    pub completions: u64,
    pub triggered_at_ms: u64,
}
