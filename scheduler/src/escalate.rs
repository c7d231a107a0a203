//! The escalation cascade's scheduler side: a local worker whose result missed the
//! quality gate asks on `qe.escalate` whether the job may go on to the cloud pool. The
//! router decides (privacy, switches, budgets, liveness); an accepted escalation is
//! queued once on the cloud subject (`Nats-Msg-Id` = `<job id>.escalated`), recorded in
//! the job's state and events, and the local worker then publishes no result of its own.

use async_nats::HeaderMap;
use qefleet_schemas::{
    codec, now_unix_ms, ContentType, EscalateReply, EventKind, JobPhase, JobState, Pool, QueuedJob,
    SCHEMA_VERSION,
};
use qefleet_shared::messages::{self, emit_event};

use crate::router::RouteInput;
use crate::submit::Submitter;

fn declined(reason: impl Into<String>) -> EscalateReply {
    EscalateReply::Declined {
        schema_version: SCHEMA_VERSION,
        reason: reason.into(),
    }
}

impl Submitter {
    /// Handles one raw escalation request; returns the reply and its encoding.
    pub async fn escalate_raw(
        &self,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> (EscalateReply, ContentType) {
        let ct = messages::content_type(headers).unwrap_or_default();
        let reply = match messages::decode::<QueuedJob>(headers, payload) {
            Ok((queued, ct)) => {
                qefleet_shared::trace::record_job_id(&tracing::Span::current(), queued.job_id());
                self.escalate(queued, ct).await
            }
            Err(e) => declined(format!("malformed escalation request: {e}")),
        };
        (reply, ct)
    }

    async fn escalate(&self, mut queued: QueuedJob, ct: ContentType) -> EscalateReply {
        let job_id = queued.job_id().to_string();
        if job_id.is_empty() || queued.escalation.is_none() {
            return declined("an escalation carries the job id and the local result");
        }
        if queued.route.pool != Pool::Local {
            return declined(format!(
                "only local results are escalated (this one ran on {}), and only once",
                queued.route.pool
            ));
        }
        let now = now_unix_ms();
        let live = self.liveness.live_pools().await;
        let exhausted = self.budget_exhausted(&queued.job.tenant, now).await;
        let lag = self.control.lag();
        let route = match self.router.escalate(RouteInput {
            job: &queued.job,
            complexity: &queued.complexity,
            live: &live,
            lag: &lag,
            mode: self.control.mode(),
            budget_exhausted: exhausted.as_deref(),
            predicted: None,
        }) {
            Ok(route) => route,
            Err(why) => return declined(why),
        };
        let mut reasons = route.reasons.clone();
        if let Some(escalation) = &queued.escalation {
            reasons.insert(1, escalation.reason.clone());
        }
        let route = qefleet_schemas::RouteDecision { reasons, ..route };
        queued.route = route.clone();
        match self
            .queue(&queued, &format!("{job_id}.escalated"), ct)
            .await
        {
            Ok(true) => {
                return EscalateReply::Escalated {
                    schema_version: SCHEMA_VERSION,
                    route,
                }
            }
            Ok(false) => {}
            Err(e) => {
                return declined(format!(
                    "JetStream did not store the escalation ({e}); the local result stands"
                ))
            }
        }
        let state = JobState {
            schema_version: SCHEMA_VERSION,
            job_id: job_id.clone(),
            phase: JobPhase::Queued,
            route: route.clone(),
            complexity: queued.complexity.clone(),
            updated_at_ms: now,
        };
        if let Err(e) = self
            .job_state
            .put(&job_id, codec::encode(&state, ContentType::Json).into())
            .await
        {
            tracing::warn!(job_id, error = %e, "job escalated but its state was not recorded");
        }
        emit_event(
            &self.js.client(),
            &job_id,
            EventKind::Escalated,
            Some(Pool::Cloud),
            Some(route.reasons.join("; ")),
        )
        .await;
        tracing::info!(job_id, subject = %route.subject, "job escalated to the cloud pool");
        EscalateReply::Escalated {
            schema_version: SCHEMA_VERSION,
            route,
        }
    }
}
