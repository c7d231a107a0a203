//! Every stream, subject, consumer, bucket and header name of the fleet, defined once.

use qefleet_schemas::{Complexity, EventKind, Pool};

/// Work-queue stream of jobs, `qe.jobs.<pool>.<complexity>`.
pub const JOBS_STREAM: &str = "QE_JOBS";
pub const JOBS_SUBJECTS: &str = "qe.jobs.>";
/// Fire-and-forget submissions from batch producers, validated by the scheduler.
pub const SUBMISSIONS_STREAM: &str = "QE_SUBMISSIONS";
pub const SUBMIT_QUEUE_SUBJECT: &str = "qe.submit.queue";
/// Request/reply submission subject (core NATS, served by scheduler replicas).
pub const SUBMIT_SUBJECT: &str = "qe.submit";
/// Request/reply subject for several submissions in one request (`SubmitBatch`).
pub const SUBMIT_BATCH_SUBJECT: &str = "qe.submit.batch";
/// Request/reply subject on which local workers ask to escalate a job to the cloud pool.
pub const ESCALATE_SUBJECT: &str = "qe.escalate";
/// Queue group the scheduler replicas share on [`SUBMIT_SUBJECT`], [`SUBMIT_BATCH_SUBJECT`]
/// and [`ESCALATE_SUBJECT`].
pub const SCHEDULER_QUEUE_GROUP: &str = "qe-scheduler";
/// Results, one message per job id, `qe.results.<job_id>`.
pub const RESULTS_STREAM: &str = "QE_RESULTS";
pub const RESULTS_SUBJECTS: &str = "qe.results.>";
/// Lifecycle events, `qe.events.<kind>.<job_id>`.
pub const EVENTS_STREAM: &str = "QE_EVENTS";
pub const EVENTS_SUBJECTS: &str = "qe.events.>";
/// Dead letters, `qe.dlq.<pool>` (and `qe.dlq.submit` for bad batch submissions).
pub const DLQ_STREAM: &str = "QE_DLQ";
pub const DLQ_SUBJECTS: &str = "qe.dlq.>";
/// Captured max-deliveries advisories for [`JOBS_STREAM`], so none is missed while no
/// process listens.
pub const ADVISORIES_STREAM: &str = "QE_ADVISORIES";
pub const MAX_DELIVERIES_ADVISORIES: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.QE_JOBS.*";

/// Key-value bucket of job states, keyed by job id.
pub const JOB_STATE_BUCKET: &str = "qe_job_state";
/// Key-value bucket of live workers, `<pool>.<worker_id>`, entries expire unless renewed.
pub const WORKERS_BUCKET: &str = "qe_workers";
/// Key-value bucket of consolidation markers, keyed by consolidation number.
pub const CONSOLIDATIONS_BUCKET: &str = "qe_consolidations";
/// The highest consolidation number known to be published, in [`CONSOLIDATIONS_BUCKET`].
pub const CONSOLIDATION_WATERMARK_KEY: &str = "watermark";
/// Key-value bucket of the fleet's learned models (SONA), one key per model, with history
/// so an earlier snapshot can be restored.
pub const SONA_BUCKET: &str = "qe_sona";
/// The quality predictor's snapshot in [`SONA_BUCKET`].
pub const QUALITY_PREDICTOR_KEY: &str = "quality_predictor";
/// Key-value bucket of operator switches the fleet watches at run time.
pub const CONTROL_BUCKET: &str = "qe_control";
/// Key-value bucket of the daily spend ledger (`<YYYY-MM-DD>.<tenant>`, `<day>._all`).
pub const SPEND_BUCKET: &str = "qe_spend";
/// The routing switch in [`CONTROL_BUCKET`]: `auto`, `force-local` or `force-cloud`.
pub const ROUTE_MODE_KEY: &str = "route_mode";

/// Durable consumer on [`RESULTS_STREAM`] with which scheduler replicas counted completions
/// before stop 21; a scheduler deletes it at start-up after taking over its count.
pub const COMPLETION_COUNTER_CONSUMER: &str = "completion-counter";
/// Durable consumer of the scheduler replicas reading [`SUBMISSIONS_STREAM`].
pub const SUBMISSIONS_CONSUMER: &str = "submissions";
/// Durable consumer shared by workers turning advisories into dead letters.
pub const ADVISORY_CONSUMER: &str = "dead-letter-sweeper";

pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
pub const HEADER_DLQ_REASON: &str = "Qefleet-Dlq-Reason";
pub const HEADER_DLQ_SUBJECT: &str = "Qefleet-Dlq-Original-Subject";
pub const HEADER_DLQ_DELIVERIES: &str = "Qefleet-Dlq-Deliveries";
pub const HEADER_DLQ_STREAM_SEQ: &str = "Qefleet-Dlq-Stream-Seq";
pub const HEADER_DLQ_AT: &str = "Qefleet-Dlq-At-Ms";

/// The subject a job of this pool and complexity is queued on.
pub fn job_subject(pool: Pool, complexity: Complexity) -> String {
    format!("qe.jobs.{pool}.{complexity}")
}

/// The consolidation job subject (maint pool).
pub const CONSOLIDATE_SUBJECT: &str = "qe.jobs.maint.consolidate";

/// Filter of the durable consumer serving a pool.
pub fn pool_filter(pool: Pool) -> String {
    format!("qe.jobs.{pool}.>")
}

/// Durable consumer name of a pool: the pool's name.
pub fn pool_consumer(pool: Pool) -> &'static str {
    pool.as_str()
}

pub fn result_subject(job_id: &str) -> String {
    format!("qe.results.{job_id}")
}

/// The subject a key-value bucket stores `key` under (what `kv.put` publishes to).
pub fn kv_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

/// Where an event of one job is published: per job, so "the last event of job X" is one
/// direct get, and per kind, so `qe.events.completed.>` follows one kind.
pub fn event_subject(kind: EventKind, job_id: &str) -> String {
    format!("qe.events.{}.{job_id}", kind.as_str())
}

/// All events of one kind.
pub fn event_filter(kind: EventKind) -> String {
    format!("qe.events.{}.>", kind.as_str())
}

pub fn dlq_subject(origin: &str) -> String {
    format!("qe.dlq.{origin}")
}

/// The pool a job subject belongs to, if it is one.
pub fn pool_of_subject(subject: &str) -> Option<Pool> {
    let mut parts = subject.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("qe"), Some("jobs"), Some(pool)) => Pool::parse(pool),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_subjects_round_trip_to_pools() {
        for pool in Pool::ALL {
            for c in Complexity::ALL {
                let s = job_subject(pool, c);
                assert_eq!(pool_of_subject(&s), Some(pool), "{s}");
            }
        }
        assert_eq!(pool_of_subject("qe.results.x"), None);
    }
}
