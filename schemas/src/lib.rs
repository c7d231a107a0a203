//! Wire types of qefleet: what crosses NATS between agents, the scheduler and workers.
//!
//! Every message carries `schema_version`. MessagePack (named fields) is the default
//! encoding, JSON is accepted when the `Content-Type` header says so; see [`codec`].
//! The JSON Schema files under `schemas/json/` are generated from these types.

pub mod codec;
mod event;
mod job;
mod reply;
mod result;
mod state;

pub use codec::{ContentType, DecodeError};
pub use event::{EventKind, JobEvent};
pub use job::{
    Budget, Complexity, ComplexityReport, Escalation, JobSpec, Pool, QueuedJob, RouteDecision,
    Strategy, SubmitBatch,
};
pub use reply::{ErrorCode, ErrorReply, EscalateReply, SubmitBatchReply, SubmitReply};
pub use result::{
    CloudEquivalent, EscalationOutcome, JobResult, JobStatus, RefinementStop, Timings, TokenUsage,
};
pub use state::{ConsolidationJob, JobPhase, JobState};

/// The wire schema version this build writes and accepts.
pub const SCHEMA_VERSION: u32 = 1;

/// Milliseconds since the Unix epoch, the one clock representation on the wire.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// JSON Schema documents for every top-level message, keyed by file name.
pub fn json_schemas() -> Vec<(&'static str, serde_json::Value)> {
    fn doc<T: schemars::JsonSchema>() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default()
    }
    vec![
        ("job_spec.json", doc::<JobSpec>()),
        ("queued_job.json", doc::<QueuedJob>()),
        ("job_result.json", doc::<JobResult>()),
        ("job_event.json", doc::<JobEvent>()),
        ("submit_reply.json", doc::<SubmitReply>()),
        ("submit_batch.json", doc::<SubmitBatch>()),
        ("submit_batch_reply.json", doc::<SubmitBatchReply>()),
        ("escalate_reply.json", doc::<EscalateReply>()),
        ("job_state.json", doc::<JobState>()),
        ("consolidation_job.json", doc::<ConsolidationJob>()),
    ]
}
