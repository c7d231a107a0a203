//! Job state kept in the `qe_job_state` bucket, and the consolidation job message.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ComplexityReport, RouteDecision};

/// What the fleet recorded about a job outside its events and result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    /// Accepted and queued by the scheduler.
    Queued,
    /// Moved to the dead-letter stream.
    DeadLettered,
}

/// The value under a job id in the `qe_job_state` bucket: the scheduler's record of the
/// submission (it de-duplicates job ids). Running and finished jobs are told by their
/// `started` event and their result.
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
