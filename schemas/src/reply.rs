//! Replies to submissions: accepted with the route, or rejected with a clear error.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ComplexityReport, RouteDecision};

/// Machine-readable rejection reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The payload could not be decoded (encoding, unknown field, wrong type).
    Malformed,
    UnknownSchemaVersion,
    UnsupportedContentType,
    InvalidUtf8,
    EmptySource,
    SourceTooLarge,
    UnsupportedLanguage,
    InvalidField,
    /// A field the fleet does not honour yet was set.
    ReservedField,
    /// No pool can take the job (for example `local_only` with `pool = cloud`).
    Unroutable,
    /// NATS or JetStream failed; the job was not queued, retry later.
    Unavailable,
    /// The job needs the cloud, and the tenant's or the fleet's daily cloud budget is
    /// spent (it resets at 00:00 UTC). Nothing was queued.
    BudgetExhausted,
}

/// A rejected submission. Nothing was queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

/// The reply to a request on `qe.submit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
pub enum SubmitReply {
    /// The job is queued (or was already).
    Accepted {
        schema_version: u32,
        job_id: String,
        /// True when this job id was already submitted: nothing new was queued and the
        /// route is the original one.
        duplicate: bool,
        route: RouteDecision,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        complexity: Option<ComplexityReport>,
    },
    /// Nothing was queued.
    Rejected {
        schema_version: u32,
        error: ErrorReply,
    },
}

/// The reply to a request on `qe.submit.batch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
pub enum SubmitBatchReply {
    /// Each job's reply, in the order of the batch: every job is accepted or rejected on
    /// its own, as if submitted alone.
    Answered {
        schema_version: u32,
        replies: Vec<SubmitReply>,
    },
    /// The batch itself could not be taken (malformed, empty, too many jobs): nothing was
    /// queued.
    Rejected {
        schema_version: u32,
        error: ErrorReply,
    },
}

/// The scheduler's answer to a worker asking, on `qe.escalate`, to send a local result
/// below the quality gate on to the cloud pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
pub enum EscalateReply {
    /// The job is queued on the cloud pool (or already was); the local worker publishes
    /// no result.
    Escalated {
        schema_version: u32,
        route: RouteDecision,
    },
    /// The job stays local: the local worker publishes its result.
    Declined { schema_version: u32, reason: String },
}
