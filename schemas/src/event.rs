//! Lifecycle events, published on `qe.events.<kind>` and kept in the QE_EVENTS stream.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Pool;

/// What happened to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Submitted,
    Routed,
    Started,
    Progress,
    Retrying,
    Completed,
    Failed,
    Expired,
    Escalated,
    DeadLettered,
    Consolidated,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Submitted => "submitted",
            EventKind::Routed => "routed",
            EventKind::Started => "started",
            EventKind::Progress => "progress",
            EventKind::Retrying => "retrying",
            EventKind::Completed => "completed",
            EventKind::Failed => "failed",
            EventKind::Expired => "expired",
            EventKind::Escalated => "escalated",
            EventKind::DeadLettered => "dead_lettered",
            EventKind::Consolidated => "consolidated",
        }
    }
}

/// One lifecycle event of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobEvent {
    pub schema_version: u32,
    pub job_id: String,
    pub kind: EventKind,
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Pool>,
    /// Human-readable detail: route reasons, error text, attempt number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
