//! Turning a submission into a queued job: decode, validate, analyse, route, de-duplicate
//! by job id, publish with `Nats-Msg-Id` = job id, record the job's state.

use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use async_nats::HeaderMap;
use qefleet_schemas::codec;
use qefleet_schemas::{
    now_unix_ms, ContentType, DecodeError, ErrorCode, ErrorReply, EventKind, JobPhase, JobSpec,
    JobState, Pool, QueuedJob, SubmitBatch, SubmitBatchReply, SubmitReply, SCHEMA_VERSION,
};
use qefleet_shared::commit::{Commit, GroupPublisher};
use qefleet_shared::messages::{self, emit_event};
use qefleet_shared::metrics::Metrics;
use qefleet_shared::subjects::HEADER_MSG_ID;

use qefleet_shared::ledger::{spend_key, spent, utc_day, ALL_TENANTS};

use crate::control::RouteControl;
use crate::liveness::Liveness;
use crate::recall::{Recalled, RouteMemory};
use crate::router::{RouteInput, Router};
use crate::sona::QualityModel;
use crate::validate::{validate, Limits};
use qefleet_learn::PoolEstimates;

/// Shared state of the submission path.
#[derive(Debug, Clone)]
pub struct Submitter {
    pub(crate) js: jetstream::Context,
    /// Queues jobs, in atomic batches when many wait (ADR 0017).
    pub(crate) jobs: GroupPublisher<JobCommit>,
    pub(crate) job_state: kv::Store,
    pub(crate) router: Arc<dyn Router>,
    /// The SONA quality predictor the router consults.
    pub(crate) quality: Arc<QualityModel>,
    /// The router's memory of similar past jobs, with an embedder and learned routing.
    pub(crate) memory: Option<RouteMemory>,
    /// Route by the predictor's estimates when the memory knows nothing similar.
    pub(crate) predictor_alone: bool,
    pub(crate) liveness: Arc<Liveness>,
    pub(crate) limits: Limits,
    pub(crate) metrics: Metrics,
    pub(crate) control: Arc<RouteControl>,
    pub(crate) budgets: DailyBudgets,
    pub(crate) spend: kv::Store,
    /// Recent ledger reads, by key: (when, dollars).
    pub(crate) spend_cache:
        Arc<std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, f64)>>>,
}

/// How long a ledger read stands for the budget check.
const SPEND_CACHE: std::time::Duration = std::time::Duration::from_secs(1);

/// Daily cloud budgets in US dollars; none set means no limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct DailyBudgets {
    pub tenant_usd: Option<f64>,
    pub fleet_usd: Option<f64>,
}

/// The estimates the router gets: per pool, the router's memory of similar past jobs
/// where it has one, the SONA predictor's otherwise; for a job like nothing the memory
/// holds, the predictor's alone only when `predictor_alone` (ADR 0015: on complexity
/// counts alone it routed worse than the rule in the replay).
fn combine(
    sona: Option<PoolEstimates>,
    recalled: Option<&Recalled>,
    predictor_alone: bool,
) -> Option<PoolEstimates> {
    let Some(r) = recalled.filter(|r| r.local.is_some() || r.cloud.is_some()) else {
        return sona.filter(|_| predictor_alone);
    };
    let version = sona.map_or(0, |s| s.version);
    let untried = match (r.local, r.cloud) {
        (Some(_), None) => Some(Pool::Cloud),
        (None, Some(_)) => Some(Pool::Local),
        _ => None,
    };
    Some(PoolEstimates {
        local: r.local.or(sona.and_then(|s| s.local)),
        cloud: r.cloud.or(sona.and_then(|s| s.cloud)),
        version,
        recalled: r.jobs,
        untried,
    })
}

/// A job as the group publisher queues it: with `Nats-Msg-Id`, on its own or in a batch
/// (a batch holding an id the stream has seen is refused whole, and its jobs then go one
/// by one, each learning whether it is a duplicate).
#[derive(Clone, Debug)]
pub(crate) struct JobCommit {
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
}

impl Commit for JobCommit {
    /// Whether the stream recognised the job id as a duplicate.
    type Stored = bool;

    fn subject(&self) -> String {
        self.subject.clone()
    }

    fn batch_headers(&self) -> HeaderMap {
        self.headers.clone()
    }

    fn payload(&self) -> bytes::Bytes {
        self.payload.clone()
    }

    async fn publish_single(&self, js: &jetstream::Context) -> Result<bool, async_nats::Error> {
        let ack = js
            .publish_with_headers(
                self.subject.clone(),
                self.headers.clone(),
                self.payload.clone(),
            )
            .await?
            .await?;
        Ok(ack.duplicate)
    }

    fn stored_now(duplicate: &bool) -> bool {
        !duplicate
    }

    fn stored_in_batch() -> bool {
        false
    }
}

fn rejected(code: ErrorCode, message: impl Into<String>) -> SubmitReply {
    SubmitReply::Rejected {
        schema_version: SCHEMA_VERSION,
        error: ErrorReply {
            code,
            message: message.into(),
        },
    }
}

fn decode_error_code(e: &DecodeError) -> ErrorCode {
    match e {
        DecodeError::UnsupportedContentType(_) => ErrorCode::UnsupportedContentType,
        DecodeError::MissingSchemaVersion | DecodeError::UnknownSchemaVersion(_) => {
            ErrorCode::UnknownSchemaVersion
        }
        DecodeError::InvalidUtf8(_) => ErrorCode::InvalidUtf8,
        DecodeError::Malformed { .. } => ErrorCode::Malformed,
    }
}

impl Submitter {
    /// Handles one raw submission. Returns the reply and the encoding it should use. Called
    /// inside the submission's trace scope (`service::traced`), so the queued job and the
    /// events carry its trace and the log lines its `job` span.
    pub async fn submit_raw(
        &self,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> (SubmitReply, ContentType) {
        self.submit_raw_as(headers, payload, None).await
    }

    /// As [`Self::submit_raw`], with `default_id` for a job that brings no id: a
    /// fire-and-forget submission's id comes from its place in the submissions stream, so
    /// that a redelivery (the scheduler died before acknowledging it) is the same job.
    pub async fn submit_raw_as(
        &self,
        headers: Option<&HeaderMap>,
        payload: &[u8],
        default_id: Option<DefaultId>,
    ) -> (SubmitReply, ContentType) {
        let (mut job, ct) = match messages::decode::<JobSpec>(headers, payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                let ct = messages::content_type(headers).unwrap_or_default();
                return (
                    self.count(rejected(decode_error_code(&e), e.to_string())),
                    ct,
                );
            }
        };
        // Only an id the submitter chose, or one a previous delivery of the same message
        // was given, can have been queued before.
        let mut may_be_known = job.job_id.is_some();
        if job.job_id.is_none() {
            if let Some(default) = default_id {
                may_be_known = !default.first_delivery;
                job.job_id = Some(default.id);
            }
        }
        (self.count(self.submit_as(job, ct, may_be_known).await), ct)
    }

    /// Handles a batch of submissions (`qe.submit.batch`): every job as if submitted
    /// alone, all at once (jobs that wait for a commit slot together go in one atomic
    /// batch), answered in order. Each job runs in a trace scope of its own under the
    /// request's trace. A batch that cannot be read, or is empty or too large, is
    /// rejected whole and nothing is queued.
    pub async fn submit_batch_raw(
        &self,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> (SubmitBatchReply, ContentType) {
        let whole = |code: ErrorCode, message: String| {
            self.count(rejected(code, message.clone()));
            SubmitBatchReply::Rejected {
                schema_version: SCHEMA_VERSION,
                error: ErrorReply { code, message },
            }
        };
        let (batch, ct) = match messages::decode::<SubmitBatch>(headers, payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                let ct = messages::content_type(headers).unwrap_or_default();
                return (whole(decode_error_code(&e), e.to_string()), ct);
            }
        };
        let n = batch.jobs.len();
        if n == 0 || n > SubmitBatch::MAX_JOBS {
            let message = format!(
                "a batch holds 1 to {} jobs, this one {n}: {}",
                SubmitBatch::MAX_JOBS,
                if n == 0 {
                    "send at least one"
                } else {
                    "split it"
                }
            );
            return (whole(ErrorCode::InvalidField, message), ct);
        }
        let replies = futures_util::future::join_all(batch.jobs.into_iter().map(|job| {
            crate::service::traced(headers.cloned(), async move {
                self.count(self.submit(job, ct).await)
            })
        }))
        .await;
        (
            SubmitBatchReply::Answered {
                schema_version: SCHEMA_VERSION,
                replies,
            },
            ct,
        )
    }

    fn count(&self, reply: SubmitReply) -> SubmitReply {
        if let SubmitReply::Rejected { error, .. } = &reply {
            let code = serde_json::to_value(error.code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            self.metrics
                .submissions_rejected
                .with_label_values(&[code.as_str()])
                .inc();
        }
        reply
    }

    /// Validates, routes and queues a decoded job; `ct` is the encoding the job (and so its
    /// result) travels in.
    pub async fn submit(&self, job: JobSpec, ct: ContentType) -> SubmitReply {
        let chosen = job.job_id.is_some();
        self.submit_as(job, ct, chosen).await
    }

    /// As [`Self::submit`]; the job's record is looked up first only when `may_be_known`:
    /// an id made here, or given to a message on its first delivery, is new, and looking
    /// it up would cost the server a read per submission.
    async fn submit_as(
        &self,
        mut job: JobSpec,
        ct: ContentType,
        may_be_known: bool,
    ) -> SubmitReply {
        let now = now_unix_ms();
        let analysis = match validate(&job, &self.limits, now) {
            Ok(a) => a,
            Err(e) => return rejected(e.code, e.message),
        };
        let job_id = job
            .job_id
            .clone()
            .unwrap_or_else(|| nuid::next().to_string());
        job.job_id = Some(job_id.clone());
        qefleet_shared::trace::record_job_id(&tracing::Span::current(), job_id.as_str());
        if may_be_known {
            match self.existing(&job_id).await {
                Ok(Some(state)) => return duplicate(state),
                Ok(None) => {}
                Err(reply) => return reply,
            }
        }
        let live = self.liveness.live_pools().await;
        let exhausted = self.budget_exhausted(&job.tenant, now).await;
        let lag = self.control.lag();
        let recalled = match &self.memory {
            Some(memory) => memory.recall(&job.source).await,
            None => None,
        };
        let predicted = combine(
            self.quality.estimate(&analysis.report),
            recalled.as_ref(),
            self.predictor_alone,
        );
        let source = match predicted {
            None => "none",
            Some(p) if p.recalled > 0 => "memory",
            Some(_) => "predictor",
        };
        self.metrics
            .route_estimates
            .with_label_values(&[source])
            .inc();
        let route = match self.router.route(RouteInput {
            job: &job,
            complexity: &analysis.report,
            live: &live,
            lag: &lag,
            mode: self.control.mode(),
            budget_exhausted: exhausted.as_deref(),
            predicted: predicted.as_ref(),
        }) {
            Ok(route) => route,
            Err(e) => return rejected(e.code, e.message),
        };
        // Before the job is queued: its result may come back before `queue` returns.
        if let (Some(memory), Some(recalled)) = (&self.memory, recalled) {
            memory.expect(&job_id, recalled.embedding);
        }
        let queued = QueuedJob {
            schema_version: SCHEMA_VERSION,
            job,
            complexity: analysis.report.clone(),
            route: route.clone(),
            submitted_at_ms: now,
            escalation: None,
        };
        let published = self.queue(&queued, &job_id, ct).await;
        let seen_before = match published {
            Ok(seen_before) => seen_before,
            Err(e) => {
                return rejected(
                    ErrorCode::Unavailable,
                    format!(
                        "JetStream did not store the job ({e}); nothing was queued, submit again"
                    ),
                )
            }
        };
        let state = JobState {
            schema_version: SCHEMA_VERSION,
            job_id: job_id.clone(),
            phase: JobPhase::Queued,
            route: route.clone(),
            complexity: analysis.report.clone(),
            updated_at_ms: now,
        };
        if seen_before {
            // A concurrent submission of the same id won the race inside the duplicate window.
            return duplicate(state);
        }
        if let Err(e) = self
            .job_state
            .put(&job_id, codec::encode(&state, ContentType::Json).into())
            .await
        {
            tracing::warn!(job_id, error = %e, "job queued but its state was not recorded");
        }
        self.metrics
            .jobs_submitted
            .with_label_values(&[route.pool.as_str(), analysis.report.class.as_str()])
            .inc();
        let client = self.js.client();
        // One event for submission and routing: they happen together here. `routed` is
        // for later re-routing (spill-over, escalation).
        emit_event(
            &client,
            &job_id,
            EventKind::Submitted,
            Some(route.pool),
            Some(route.reasons.join("; ")),
        )
        .await;
        tracing::debug!(pool = %route.pool, subject = %route.subject, "job queued");
        SubmitReply::Accepted {
            schema_version: SCHEMA_VERSION,
            job_id,
            duplicate: false,
            route,
            complexity: Some(analysis.report),
        }
    }

    /// Publishes a queued job to its route's subject with `Nats-Msg-Id` = `msg_id` and
    /// waits until JetStream has stored it; true when it recognised the id as a
    /// duplicate.
    pub(crate) async fn queue(
        &self,
        queued: &QueuedJob,
        msg_id: &str,
        ct: ContentType,
    ) -> Result<bool, async_nats::Error> {
        let mut headers = messages::headers_for(ct);
        headers.insert(HEADER_MSG_ID, msg_id);
        self.jobs
            .publish(&JobCommit {
                subject: queued.route.subject.clone(),
                headers,
                payload: codec::encode(queued, ct).into(),
            })
            .await
    }

    /// Why the job may not spend on the cloud today, when a daily budget is configured and
    /// spent. A ledger that cannot be read counts as spent: the stop must hold.
    pub(crate) async fn budget_exhausted(&self, tenant: &str, now: u64) -> Option<String> {
        if self.budgets.tenant_usd.is_none() && self.budgets.fleet_usd.is_none() {
            return None;
        }
        let day = utc_day(now);
        let checks = [
            (
                self.budgets.fleet_usd,
                ALL_TENANTS,
                "the fleet".to_string(),
                "fleet",
            ),
            (
                self.budgets.tenant_usd,
                tenant,
                format!("tenant {tenant}"),
                "tenant",
            ),
        ];
        for (limit, key_tenant, who, scope) in checks {
            let Some(limit) = limit else { continue };
            let spent = self.spent_recently(&spend_key(&day, key_tenant)).await;
            if scope == "fleet" {
                if let Ok(s) = spent {
                    self.metrics
                        .fleet_budget_remaining_usd
                        .set((limit - s).max(0.0));
                }
            }
            let why = match spent {
                Ok(s) if s >= limit => format!(
                    "{who} spent ${s:.4} of its ${limit:.2} daily cloud budget (resets at 00:00 UTC)"
                ),
                Ok(_) => continue,
                Err(e) => format!(
                    "the spend ledger cannot be read ({e}), so {who}'s daily cloud budget cannot be checked"
                ),
            };
            self.metrics
                .budget_exhausted
                .with_label_values(&[scope])
                .inc();
            return Some(why);
        }
        None
    }

    /// A ledger entry, read at most once per [`SPEND_CACHE`] per scheduler: submissions
    /// in a burst share one read (a day can overshoot by what a second admits).
    async fn spent_recently(&self, key: &str) -> Result<f64, String> {
        let now = std::time::Instant::now();
        if let Some((at, value)) = self
            .spend_cache
            .lock()
            .ok()
            .and_then(|c| c.get(key).copied())
        {
            if now.duration_since(at) < SPEND_CACHE {
                return Ok(value);
            }
        }
        let value = spent(&self.spend, key).await.map_err(|e| e.to_string())?;
        if let Ok(mut cache) = self.spend_cache.lock() {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(key.to_string(), (now, value));
        }
        Ok(value)
    }

    async fn existing(&self, job_id: &str) -> Result<Option<JobState>, SubmitReply> {
        match self.job_state.get(job_id).await {
            Ok(Some(bytes)) => Ok(codec::decode::<JobState>(&bytes, ContentType::Json).ok()),
            Ok(None) => Ok(None),
            Err(e) => Err(rejected(
                ErrorCode::Unavailable,
                format!("cannot read job state ({e}); nothing was queued, submit again"),
            )),
        }
    }
}

/// The id a fire-and-forget submission that brings none is given, and whether this is the
/// message's first delivery (then no job can have that id yet).
#[derive(Debug, Clone)]
pub struct DefaultId {
    pub id: String,
    pub first_delivery: bool,
}

/// The id of a fire-and-forget submission that brings none: `q<published, ns>-<stream
/// sequence>`, the same on every delivery of the message and never reused by a later
/// stream of the same name (its messages are published later).
pub fn queued_submission_id(published_unix_ns: i128, stream_sequence: u64) -> String {
    format!("q{published_unix_ns}-{stream_sequence}")
}

fn duplicate(state: JobState) -> SubmitReply {
    SubmitReply::Accepted {
        schema_version: SCHEMA_VERSION,
        job_id: state.job_id,
        duplicate: true,
        route: state.route,
        complexity: Some(state.complexity),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queued_submission_keeps_its_id_across_deliveries_and_the_id_is_valid() {
        let published = 1_796_286_511_615_301_000_i128;
        let id = queued_submission_id(published, 42);
        assert_eq!(id, queued_submission_id(published, 42));
        assert_ne!(id, queued_submission_id(published, 43));
        assert_ne!(id, queued_submission_id(published + 1, 42));
        let mut job = JobSpec::python("calc", "def f():\n    return 1\n");
        job.job_id = Some(id);
        assert!(validate(&job, &Limits::default(), now_unix_ms()).is_ok());
    }

    fn sona() -> Option<PoolEstimates> {
        Some(PoolEstimates {
            local: Some(0.6),
            cloud: Some(0.8),
            version: 4,
            recalled: 0,
            untried: None,
        })
    }

    fn recalled(local: Option<f64>, cloud: Option<f64>) -> Recalled {
        Recalled {
            embedding: Vec::new(),
            local,
            cloud,
            jobs: 3,
        }
    }

    #[test]
    fn memory_first_predictor_fills_in_and_alone_only_when_asked() {
        let r = recalled(Some(0.2), None);
        let both = combine(sona(), Some(&r), false).expect("estimates");
        assert_eq!(
            (both.local, both.cloud, both.version, both.recalled),
            (Some(0.2), Some(0.8), 4, 3)
        );
        // The cloud's figure is the predictor's guess: the router is told to try it.
        assert_eq!(both.untried, Some(Pool::Cloud));
        // Nothing similar remembered: the predictor alone only when trusted alone.
        let none = recalled(None, None);
        assert_eq!(combine(sona(), Some(&none), false), None);
        assert_eq!(combine(sona(), None, false), None);
        assert_eq!(combine(sona(), None, true), sona());
        // Memory without a predictor yet.
        let only = combine(None, Some(&recalled(Some(0.3), Some(0.9))), false).expect("memory");
        assert_eq!(
            (only.local, only.cloud, only.version, only.untried),
            (Some(0.3), Some(0.9), 0, None)
        );
    }
}
