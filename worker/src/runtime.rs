//! The consumer runtime: pull jobs within a concurrency limit, heartbeat long ones, map
//! every outcome to one acknowledgement through [`Disposition`], and drain on shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, AckKind, Message};
use async_nats::Client;
use qefleet_schemas::{
    codec, now_unix_ms, ConsolidationJob, ContentType, EscalateReply, Escalation,
    EscalationOutcome, EventKind, JobPhase, JobResult, JobState, JobStatus, Pool, QueuedJob,
    Timings, SCHEMA_VERSION,
};
use qefleet_shared::messages::{self, emit_event};
use qefleet_shared::metrics::{self, Metrics};
use qefleet_shared::provision::{
    self, bucket, ensure_consumer, pool_consumer_config, DeliverySettings,
};
use qefleet_shared::retry::{Disposition, RetryPolicy};
use qefleet_shared::shutdown::{self, Shutdown};
use qefleet_shared::subjects::*;
use qefleet_shared::trace::{self, TraceContext};

use crate::memory::{Memory, Recall};
use tokio::task::JoinSet;

use crate::args::WorkerArgs;
use crate::consolidator::{ConsolidationContext, Consolidator};
use crate::deadletter::{self, Origin};
use crate::engine::{Engine, EngineError, EngineOutput, EngineRequest};
use crate::outbox::{Outbox, OutboxError, PendingResult};
use crate::registry;
use crate::results::{self, Published, ResultPublisher};
use crate::savings::Reference;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Provision(#[from] provision::ProvisionError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("cannot serve metrics: {0}")]
    Metrics(std::io::Error),
    #[error("savings reference: {0}")]
    Reference(String),
    #[error("cannot read the results stream: {0}")]
    Results(async_nats::Error),
}

/// What every job handler shares.
#[derive(Debug)]
struct Ctx {
    js: jetstream::Context,
    client: Client,
    pool: Pool,
    worker_id: String,
    engine: Arc<dyn Engine>,
    consolidator: Arc<dyn Consolidator>,
    outbox: Outbox,
    /// Publishes results, several in one atomic batch when they finish together.
    results: ResultPublisher,
    metrics: Metrics,
    retry: RetryPolicy,
    max_deliver: i64,
    ack_wait: Duration,
    job_timeout: Duration,
    /// The daily spend ledger.
    spend: kv::Store,
    /// Local results below this quality are escalated (0: never).
    quality_gate: f64,
    compute_usd_per_hour: f64,
    /// The cloud model savings are measured against.
    reference: Option<Reference>,
    /// The ReasoningBank, when the worker has an embedder.
    memory: Option<Memory>,
}

/// Runs a worker until `shutdown` fires, then stops pulling (a job delivered after that is
/// handed back unstarted), waits up to the drain timeout for in-flight jobs, flushes the
/// outbox and leaves the live-workers bucket.
pub async fn run(
    client: Client,
    args: WorkerArgs,
    engine: Arc<dyn Engine>,
    consolidator: Arc<dyn Consolidator>,
    shutdown: Shutdown,
) -> Result<(), WorkerError> {
    let js = jetstream::new(client.clone());
    provision::ensure_all(&js).await?;
    let pool: Pool = args.pool.into();
    let worker_id = args.worker_id.clone().unwrap_or_else(|| {
        // nuid's first 12 characters are a per-process prefix; the tail is unique.
        let id = nuid::next().to_string();
        format!("{pool}-{}", &id[id.len() - 10..])
    });
    let outbox_dir = args
        .outbox_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(".qefleet/outbox").join(pool.as_str()));
    // Opening may wait for a lock a closing handle still holds (`store::open_db`): off the
    // runtime, whose tasks may be the ones letting go of it.
    let outbox = tokio::task::spawn_blocking(move || Outbox::open(&outbox_dir))
        .await
        .expect("opening the outbox panicked")?;
    // An explicit reference must work; one implied by --cloud-config is optional (a
    // configuration without prices has nothing to measure savings against).
    let reference = match (&args.savings_reference, &args.cloud_config) {
        (Some(path), _) => {
            Some(Reference::from_cloud_config(path).map_err(WorkerError::Reference)?)
        }
        (None, Some(path)) => match Reference::from_cloud_config(path) {
            Ok(reference) => Some(reference),
            Err(e) => {
                tracing::info!(reason = %e, "results carry no savings");
                None
            }
        },
        (None, None) => None,
    };
    // `qefleet up` hands every component one registry, served on one address.
    let metrics = args.metrics.clone().unwrap_or_default();
    if let Some(addr) = args.metrics_addr {
        let bound = metrics::serve(addr, metrics.clone(), shutdown.clone())
            .await
            .map_err(WorkerError::Metrics)?;
        tracing::info!(%bound, "worker metrics at /metrics");
    }
    if let Some(embedder) = &args.embedder {
        metrics.report_inference_provider("embed", embedder.provider().label());
    }
    let memory = match (&args.embedder, args.no_memory) {
        (Some(embedder), false) => {
            let dir = args
                .memory_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(".qefleet/memory").join(pool.as_str()));
            let (embedder, metrics) = (embedder.clone(), metrics.clone());
            tokio::task::spawn_blocking(move || {
                Memory::open(&dir, embedder, metrics, pool.as_str())
            })
            .await
            .expect("opening the ReasoningBank panicked")
        }
        _ => None,
    };
    if let Some(provider) = engine.execution_provider() {
        metrics.report_inference_provider("generate", provider_label(&provider));
    }
    let settings = DeliverySettings {
        ack_wait: args.ack_wait,
        max_deliver: args.max_deliver,
        ..DeliverySettings::default()
    };
    let consumer = ensure_consumer(&js, JOBS_STREAM, pool_consumer_config(pool, settings)).await?;
    let ctx = Arc::new(Ctx {
        js: js.clone(),
        client: client.clone(),
        pool,
        worker_id: worker_id.clone(),
        engine,
        consolidator,
        outbox,
        results: ResultPublisher::new(&js, args.result_batches, metrics.clone(), pool)
            .await
            .map_err(WorkerError::Results)?,
        metrics,
        retry: RetryPolicy {
            initial: args.retry_initial,
            max: args.retry_max,
            multiplier: 2.0,
        },
        max_deliver: args.max_deliver,
        ack_wait: args.ack_wait,
        job_timeout: args.job_timeout,
        spend: bucket(&js, SPEND_BUCKET).await?,
        quality_gate: args.results.quality_gate,
        compute_usd_per_hour: args.results.compute_usd_per_hour.max(0.0),
        reference,
        memory,
    });

    // Background tasks stop on their own signal, fired after the drain, so the outbox
    // flusher and liveness keep working while in-flight jobs finish.
    let (stop_background, background_shutdown) = shutdown::channel();
    let mut background = JoinSet::new();
    let live_key = registry::key(pool, &worker_id);
    let info_ctx = ctx.clone();
    let embedding_provider = args.embedder.as_ref().map(|e| e.provider().to_string());
    let concurrency = args.concurrency;
    let started_at_ms = now_unix_ms();
    let live_info = Box::new(move || {
        let breakers = info_ctx.engine.breakers();
        let mut states = serde_json::Map::new();
        for (provider, state) in &breakers {
            info_ctx
                .metrics
                .circuit_breaker_state
                .with_label_values(&[provider.as_str()])
                .set(state.gauge());
            states.insert(provider.clone(), state.as_str().into());
        }
        // A remote engine whose every provider's breaker is open takes no new work: the
        // schedulers stop counting it as live until a probe may go out again.
        let accepting = breakers.is_empty()
            || breakers
                .iter()
                .any(|(_, s)| *s != qefleet_cloud::BreakerState::Open);
        serde_json::json!({
            "worker_id": info_ctx.worker_id,
            "pool": info_ctx.pool,
            "engine": info_ctx.engine.name(),
            "inference_provider": info_ctx.engine.execution_provider(),
            "embedding_provider": embedding_provider,
            "breakers": states,
            "accepting": accepting,
            "concurrency": concurrency,
            "started_at_ms": started_at_ms,
        })
        .to_string()
    });
    background.spawn(registry::heartbeat(
        bucket(&js, WORKERS_BUCKET).await?,
        live_key,
        live_info,
        background_shutdown.clone(),
    ));
    background.spawn(flush_outbox_forever(
        ctx.clone(),
        background_shutdown.clone(),
    ));
    background.spawn(deadletter::sweep_advisories(
        js.clone(),
        background_shutdown,
    ));

    tracing::info!(worker_id, %pool, engine = ctx.engine.name(), "worker ready");
    let mut in_flight = {
        let ctx = ctx.clone();
        qefleet_shared::pull::pull_concurrently(
            consumer,
            args.concurrency as usize,
            shutdown,
            move |message| {
                let ctx = ctx.clone();
                async move { handle(&ctx, message).await }
            },
        )
        .await
    };
    tracing::info!(in_flight = in_flight.len(), "draining");
    let drained = tokio::time::timeout(args.drain_timeout, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = in_flight.len(),
            "drain timeout: unfinished jobs will be redelivered to another worker"
        );
        in_flight.abort_all();
    }
    flush_outbox(&ctx).await;
    stop_background.trigger();
    while background.join_next().await.is_some() {}
    let _ = client.flush().await;
    tracing::info!(worker_id, "worker stopped");
    Ok(())
}

/// Queue wait (first deliveries) and redeliveries, by the subject's pool and class.
fn observe_delivery(ctx: &Ctx, subject: &str, delivered: i64, queued_ms: u64) {
    let pool = ctx.pool.as_str();
    if delivered > 1 {
        ctx.metrics
            .job_redeliveries
            .with_label_values(&[pool])
            .inc();
        return;
    }
    let class = subject.rsplit('.').next().unwrap_or("");
    let waited = now_unix_ms().saturating_sub(queued_ms) as f64 / 1000.0;
    ctx.metrics
        .queue_wait
        .with_label_values(&[pool, class])
        .observe(waited);
}

/// Handles one delivery from start to acknowledgement.
async fn handle(ctx: &Ctx, message: Message) {
    // Jobs queued by a scheduler carry its trace; anything else starts one here.
    let trace = TraceContext::continue_or_start(message.headers.as_ref());
    let span = qefleet_shared::job_span!(trace);
    trace::scope(trace, span, handle_traced(ctx, message)).await
}

async fn handle_traced(ctx: &Ctx, message: Message) {
    let (subject, stream_sequence, deliveries) = match message.info() {
        Ok(info) => {
            let queued_ms = (info.published.unix_timestamp_nanos() / 1_000_000) as u64;
            observe_delivery(ctx, &message.subject, info.delivered, queued_ms);
            (
                message.subject.to_string(),
                info.stream_sequence,
                info.delivered,
            )
        }
        Err(_) => (message.subject.to_string(), 0, 1),
    };
    let message = Arc::new(message);
    let disposition = if ctx.pool == Pool::Maint {
        consolidate(ctx, &message).await
    } else {
        run_job(ctx, &message, deliveries).await
    };
    let ack = match disposition {
        Disposition::Ack => AckKind::Ack,
        Disposition::Retry { after, reason } => {
            tracing::info!(%subject, deliveries, ?after, %reason, "retrying later");
            ctx.metrics
                .jobs_retried
                .with_label_values(&[ctx.pool.as_str()])
                .inc();
            AckKind::Nak(Some(after))
        }
        Disposition::DeadLetter { reason } => {
            let origin = Origin {
                subject: &subject,
                stream_sequence,
                deliveries,
            };
            match deadletter::dead_letter(
                &ctx.js,
                origin,
                message.headers.as_ref(),
                message.payload.clone(),
                &reason,
            )
            .await
            {
                Ok(()) => {
                    tracing::warn!(%subject, stream_sequence, %reason, "dead-lettered");
                    let kind = if reason.starts_with("malformed") {
                        "malformed"
                    } else {
                        "retries_exhausted"
                    };
                    ctx.metrics
                        .jobs_dead_lettered
                        .with_label_values(&[ctx.pool.as_str(), kind])
                        .inc();
                    AckKind::Term
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot dead-letter; retrying the delivery");
                    AckKind::Nak(Some(Duration::from_secs(2)))
                }
            }
        }
    };
    if let Err(e) = message.ack_with(ack).await {
        tracing::warn!(%subject, error = %e, "acknowledgement not sent; the job will be redelivered and de-duplicated");
    }
}

async fn consolidate(ctx: &Ctx, message: &Message) -> Disposition {
    let job: ConsolidationJob = match messages::decode(message.headers.as_ref(), &message.payload) {
        Ok((job, _)) => job,
        Err(e) => {
            return Disposition::DeadLetter {
                reason: format!("malformed consolidation job: {e}"),
            }
        }
    };
    let context = ConsolidationContext {
        js: ctx.js.clone(),
        metrics: ctx.metrics.clone(),
    };
    match ctx.consolidator.consolidate(&job, &context).await {
        Ok(summary) => {
            emit_event(
                &ctx.client,
                &format!("consolidation-{}", job.number),
                EventKind::Consolidated,
                Some(Pool::Maint),
                Some(summary),
            )
            .await;
            Disposition::Ack
        }
        Err(e) => Disposition::Retry {
            after: ctx.retry.delay_jittered(1),
            reason: e,
        },
    }
}

async fn run_job(ctx: &Ctx, message: &Arc<Message>, deliveries: i64) -> Disposition {
    let attempt = u32::try_from(deliveries.max(1)).unwrap_or(u32::MAX);
    let (queued, ct) =
        match messages::decode::<QueuedJob>(message.headers.as_ref(), &message.payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                return Disposition::DeadLetter {
                    reason: format!("malformed job message: {e}"),
                }
            }
        };
    let job_id = queued.job_id().to_string();
    qefleet_shared::trace::record_job_id(&tracing::Span::current(), job_id.as_str());
    if job_id.is_empty() {
        return Disposition::DeadLetter {
            reason: "malformed job message: job.job_id is missing (submit through qe.submit)"
                .into(),
        };
    }
    // Idempotency: a redelivered job whose result exists (or waits in our outbox) is done.
    if let Some(pending) = ctx.outbox.get(&job_id) {
        return match publish_pending(ctx, &job_id, &pending).await {
            Ok(()) => Disposition::Ack,
            Err(e) => Disposition::Retry {
                after: ctx.retry.delay_jittered(attempt),
                reason: format!("result still unpublished: {e}"),
            },
        };
    }
    // Only a redelivery can find its result already stored (the first run published it
    // but died before the ack); the results stream refuses a second result regardless.
    if deliveries > 1 {
        match results::exists(&ctx.js, &job_id).await {
            Ok(true) => {
                tracing::info!(job_id, "result already published; acknowledging redelivery");
                return Disposition::Ack;
            }
            Ok(false) => {}
            Err(e) => {
                return Disposition::Retry {
                    after: ctx.retry.delay_jittered(attempt),
                    reason: format!("cannot check for an existing result: {e}"),
                }
            }
        }
    }
    let started = now_unix_ms();
    let labels = [ctx.pool.as_str(), queued.complexity.class.as_str()];
    // Similar past jobs (when the worker has a ReasoningBank), kept to store this one.
    let mut recall: Option<Recall> = None;
    let (status, output, error) = match queued.job.deadline_unix_ms {
        Some(deadline) if deadline <= started => {
            let reason =
                format!("deadline {deadline} passed before the job could start; it was not run");
            if let Some(local) = local_fallback(ctx, &queued, &reason) {
                return finish(ctx, &local, ct).await;
            }
            (JobStatus::Expired, EngineOutput::default(), Some(reason))
        }
        _ => {
            emit_event(
                &ctx.client,
                &job_id,
                EventKind::Started,
                Some(ctx.pool),
                Some(format!("attempt {attempt} on {}", ctx.worker_id)),
            )
            .await;
            ctx.metrics.jobs_in_flight.inc();
            if let Some(memory) = &ctx.memory {
                recall = memory.recall(&queued).await;
            }
            let examples = recall.as_ref().map(Recall::examples).unwrap_or_default();
            let timer = ctx
                .metrics
                .job_duration
                .with_label_values(&labels)
                .start_timer();
            let outcome =
                run_engine_with_heartbeat(ctx, message, &queued, attempt, &examples).await;
            timer.observe_duration();
            ctx.metrics.jobs_in_flight.dec();
            match outcome {
                Ok(output) => (JobStatus::Succeeded, output, None),
                Err(EngineError::JobFailed(reason)) => {
                    ctx.metrics
                        .jobs_failed
                        .with_label_values(&[labels[0], labels[1], "job"])
                        .inc();
                    if let Some(local) = local_fallback(ctx, &queued, &reason) {
                        return finish(ctx, &local, ct).await;
                    }
                    (JobStatus::Failed, EngineOutput::default(), Some(reason))
                }
                Err(EngineError::Transient(reason)) => {
                    if deliveries >= ctx.max_deliver {
                        if let Some(local) = local_fallback(ctx, &queued, &reason) {
                            return finish(ctx, &local, ct).await;
                        }
                    }
                    return transient_failure(ctx, &queued, deliveries, reason).await;
                }
            }
        }
    };
    let run_ms = now_unix_ms().saturating_sub(started);
    if let (Some(usage), Some(provider)) = (output.inference, ctx.engine.execution_provider()) {
        ctx.metrics
            .inference_seconds
            .with_label_values(&["generate", provider_label(&provider)])
            .observe(usage.seconds);
        ctx.metrics
            .inference_tokens
            .with_label_values(&[provider_label(&provider)])
            .inc_by(usage.tokens);
    }
    let mut result = JobResult {
        schema_version: SCHEMA_VERSION,
        job_id: job_id.clone(),
        tenant: queued.job.tenant.clone(),
        module_name: queued.job.module_name.clone(),
        status,
        error,
        test_file: (!output.test_file.is_empty()).then(|| output.test_file.clone()),
        tests_total: output.tests_total,
        tests_passed: output.tests_passed,
        tests_failed: output.tests_failed,
        line_coverage: output.line_coverage,
        branch_coverage: output.branch_coverage,
        mutation_score: output.mutation_score,
        quality_score: output.quality_score,
        coverage_target_met: queued
            .job
            .coverage_target
            .zip(output.line_coverage)
            .map(|(target, got)| got >= target),
        refinement_rounds: output.refinement_rounds,
        refinement_stop: output.refinement_stop,
        engine: ctx.engine.name().to_string(),
        pool: ctx.pool,
        complexity: queued.complexity.class,
        tokens: output.tokens,
        cost_usd: output.cost_usd,
        compute_usd: 0.0,
        cloud_equivalent: None,
        savings_usd: None,
        escalation: None,
        timings: Timings {
            queued_ms: started.saturating_sub(queued.submitted_at_ms),
            run_ms,
            total_ms: now_unix_ms().saturating_sub(queued.submitted_at_ms),
        },
        attempt,
        worker_id: ctx.worker_id.clone(),
        completed_at_ms: now_unix_ms(),
        metadata: queued.job.metadata.clone(),
    };
    if let Some(escalation) = &queued.escalation {
        let local = escalation.local_result.quality_score.unwrap_or(0.0);
        let improved = result.quality_score.unwrap_or(0.0) > local;
        ctx.metrics
            .escalations
            .with_label_values(&[if improved { "improved" } else { "not_improved" }])
            .inc();
        result.escalation = Some(outcome_of(escalation, None));
    }
    price(ctx, &queued, &mut result);
    if let (Some(memory), Some(recall)) = (&ctx.memory, &recall) {
        memory.remember(recall, &queued, &result).await;
    }
    if escalated(ctx, &queued, &result, ct).await {
        return Disposition::Ack;
    }
    finish(ctx, &result, ct).await
}

fn outcome_of(escalation: &Escalation, cloud_error: Option<String>) -> EscalationOutcome {
    let local = &escalation.local_result;
    EscalationOutcome {
        reason: escalation.reason.clone(),
        local_engine: local.engine.clone(),
        local_quality_score: local.quality_score,
        local_run_ms: local.timings.run_ms,
        cloud_error,
    }
}

/// When an escalated job cannot run on the cloud (failed, or out of deliveries) and its
/// local result had tests, that result is the job's: the escalation never loses it.
fn local_fallback(ctx: &Ctx, queued: &QueuedJob, reason: &str) -> Option<JobResult> {
    let escalation = queued.escalation.as_ref()?;
    if ctx.pool != Pool::Cloud || escalation.local_result.status != JobStatus::Succeeded {
        return None;
    }
    ctx.metrics
        .escalations
        .with_label_values(&["fell_back"])
        .inc();
    tracing::warn!(
        job_id = queued.job_id(),
        reason,
        "the cloud could not improve the escalated job; publishing its local result"
    );
    let mut local = (*escalation.local_result).clone();
    local.escalation = Some(outcome_of(escalation, Some(reason.to_string())));
    local.timings.total_ms = now_unix_ms().saturating_sub(queued.submitted_at_ms);
    local.completed_at_ms = now_unix_ms();
    Some(local)
}

/// Fills in the result's compute cost, and its cloud equivalent and savings when a
/// reference model is configured.
fn price(ctx: &Ctx, queued: &QueuedJob, result: &mut JobResult) {
    let earlier = queued
        .escalation
        .as_ref()
        .map_or(0.0, |e| e.local_result.compute_usd);
    result.compute_usd =
        result.timings.run_ms as f64 / 3_600_000.0 * ctx.compute_usd_per_hour + earlier;
    let Some(reference) = &ctx.reference else {
        return;
    };
    let equivalent = if result.tokens.prompt + result.tokens.completion > 0 {
        // The engine talked to a model: the same exchanges at the reference price.
        Some(reference.priced(&result.tokens, "reported"))
    } else {
        result
            .test_file
            .as_deref()
            .filter(|_| result.status == JobStatus::Succeeded)
            .map(|suite| reference.estimate(&queued.job, suite, result.refinement_rounds))
    };
    if let Some(equivalent) = equivalent {
        result.savings_usd = Some(equivalent.usd - result.cost_usd - result.compute_usd);
        result.cloud_equivalent = Some(equivalent);
    }
}

/// Asks the schedulers to send a local result below the quality gate on to the cloud
/// pool. True when they did: the cloud worker publishes the job's result, so this worker
/// publishes none. Declined or unanswered, the local result stands.
async fn escalated(ctx: &Ctx, queued: &QueuedJob, result: &JobResult, ct: ContentType) -> bool {
    let job = &queued.job;
    if ctx.pool != Pool::Local
        || ctx.quality_gate <= 0.0
        || queued.escalation.is_some()
        || job.local_only
        || job.pool == Some(Pool::Local)
    {
        return false;
    }
    let reason = match result.status {
        JobStatus::Succeeded => match result.quality_score {
            Some(q) if q >= ctx.quality_gate => return false,
            q => format!(
                "local quality {:.2} is below the gate {:.2}",
                q.unwrap_or(0.0),
                ctx.quality_gate
            ),
        },
        // A module that does not import fails on every engine: no money after it.
        JobStatus::Failed
            if result
                .error
                .as_deref()
                .is_some_and(|e| e.contains("does not import")) =>
        {
            return false
        }
        JobStatus::Failed => format!(
            "the local engine produced no passing suite ({})",
            result.error.as_deref().unwrap_or("no reason given")
        ),
        JobStatus::Expired => return false,
    };
    let mut escalation = queued.clone();
    escalation.escalation = Some(Escalation {
        reason,
        gate: ctx.quality_gate,
        local_result: Box::new(result.clone()),
        escalated_at_ms: now_unix_ms(),
    });
    let request = ctx.client.request_with_headers(
        ESCALATE_SUBJECT,
        messages::headers_for(ct),
        codec::encode(&escalation, ct).into(),
    );
    let job_id = queued.job_id();
    let outcome = match tokio::time::timeout(Duration::from_secs(10), request).await {
        Ok(Ok(reply)) => {
            match messages::decode::<EscalateReply>(reply.headers.as_ref(), &reply.payload) {
                Ok((EscalateReply::Escalated { route, .. }, _)) => {
                    tracing::info!(job_id, subject = %route.subject, "escalated to the cloud pool");
                    "escalated"
                }
                Ok((EscalateReply::Declined { reason, .. }, _)) => {
                    tracing::debug!(
                        job_id,
                        reason,
                        "escalation declined; the local result stands"
                    );
                    "declined"
                }
                Err(e) => {
                    tracing::warn!(job_id, error = %e, "unreadable escalation reply; the local result stands");
                    "unanswered"
                }
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(job_id, error = %e, "no scheduler answered the escalation; the local result stands");
            "unanswered"
        }
        Err(_) => {
            tracing::warn!(
                job_id,
                "escalation request timed out; the local result stands"
            );
            "unanswered"
        }
    };
    ctx.metrics.escalations.with_label_values(&[outcome]).inc();
    outcome == "escalated"
}

/// A transient engine failure: retry later, or dead-letter on the last delivery.
async fn transient_failure(
    ctx: &Ctx,
    queued: &QueuedJob,
    deliveries: i64,
    reason: String,
) -> Disposition {
    let job_id = queued.job_id();
    ctx.metrics
        .jobs_failed
        .with_label_values(&[
            ctx.pool.as_str(),
            queued.complexity.class.as_str(),
            "transient",
        ])
        .inc();
    emit_event(
        &ctx.client,
        job_id,
        EventKind::Retrying,
        Some(ctx.pool),
        Some(reason.clone()),
    )
    .await;
    if deliveries >= ctx.max_deliver {
        set_phase(ctx, queued, JobPhase::DeadLettered).await;
        emit_event(
            &ctx.client,
            job_id,
            EventKind::DeadLettered,
            Some(ctx.pool),
            Some(reason.clone()),
        )
        .await;
        return Disposition::DeadLetter {
            reason: format!("gave up after {deliveries} attempts: {reason}"),
        };
    }
    let attempt = u32::try_from(deliveries.max(1)).unwrap_or(u32::MAX);
    Disposition::Retry {
        after: ctx.retry.delay_jittered(attempt),
        reason,
    }
}

async fn run_engine_with_heartbeat(
    ctx: &Ctx,
    message: &Arc<Message>,
    queued: &QueuedJob,
    attempt: u32,
    examples: &[String],
) -> Result<EngineOutput, EngineError> {
    let budget = queued
        .job
        .budget
        .max_seconds
        .map(|s| Duration::from_secs(u64::from(s)))
        .unwrap_or(ctx.job_timeout);
    let heartbeat_message = message.clone();
    let every = (ctx.ack_wait / 3).max(Duration::from_millis(100));
    let heartbeat = tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if heartbeat_message.ack_with(AckKind::Progress).await.is_err() {
                tracing::debug!("heartbeat not sent");
            }
        }
    });
    let started = Instant::now();
    let result = ctx
        .engine
        .generate(EngineRequest {
            job: queued,
            attempt,
            time_budget: budget,
            examples,
        })
        .await;
    heartbeat.abort();
    tracing::debug!(job_id = queued.job_id(), elapsed = ?started.elapsed(), "engine finished");
    result
}

/// Publish, then acknowledge. A result that cannot be published (NATS unreachable) goes
/// to the durable outbox first and is published from there; the job is acknowledged only
/// once its result is stored in JetStream.
async fn finish(ctx: &Ctx, result: &JobResult, ct: ContentType) -> Disposition {
    let job_id = result.job_id.as_str();
    let pending = PendingResult {
        content_type: ct,
        payload: codec::encode(result, ct).into(),
        traceparent: trace::current().map(|t| t.child().header_value()),
    };
    let published = match ctx.results.publish(job_id, &pending).await {
        Ok(published) => published,
        Err(e) => {
            let kept = ctx.outbox.put(job_id, &pending).await;
            ctx.metrics
                .outbox_pending
                .with_label_values(&[ctx.pool.as_str()])
                .set(ctx.outbox.len() as i64);
            return match kept {
                Ok(()) => {
                    tracing::warn!(job_id, error = %e, "result kept in the outbox until NATS takes it");
                    Disposition::Retry {
                        after: ctx.retry.delay_jittered(result.attempt),
                        reason: format!("result not yet published: {e}"),
                    }
                }
                // Neither NATS nor disk took it: the job is redelivered and run again.
                Err(outbox) => Disposition::Retry {
                    after: ctx.retry.delay_jittered(result.attempt),
                    reason: format!("result lost before publishing ({e}; {outbox})"),
                },
            };
        }
    };
    if published == Published::New {
        account(ctx, result).await;
    }
    Disposition::Ack
}

/// Everything that follows a result's first publication: the spend ledger, metrics, the
/// lifecycle event. Also for results published from the outbox after an outage.
async fn account(ctx: &Ctx, result: &JobResult) {
    let job_id = result.job_id.as_str();
    if result.cost_usd > 0.0 {
        record_spend(ctx, result).await;
    }
    let outcome = match result.status {
        JobStatus::Succeeded => "succeeded",
        JobStatus::Failed => "failed",
        JobStatus::Expired => "expired",
    };
    ctx.metrics
        .jobs_completed
        .with_label_values(&[ctx.pool.as_str(), result.complexity.as_str(), outcome])
        .inc();
    tracing::info!(
        outcome,
        engine = %result.engine,
        quality = result.quality_score.unwrap_or(0.0),
        rounds = result.refinement_rounds,
        run_ms = result.timings.run_ms,
        "result published"
    );
    if result.status == JobStatus::Succeeded {
        let labels = [ctx.pool.as_str(), result.engine.as_str()];
        ctx.metrics
            .refinement_rounds
            .with_label_values(&labels)
            .observe(f64::from(result.refinement_rounds));
        if let Some(stop) = result.refinement_stop {
            ctx.metrics
                .refinement_stops
                .with_label_values(&[labels[0], labels[1], stop.as_str()])
                .inc();
        }
        if result.cost_usd > 0.0 {
            ctx.metrics
                .cost_usd
                .with_label_values(&labels)
                .inc_by(result.cost_usd);
        }
        if result.compute_usd > 0.0 {
            ctx.metrics
                .compute_usd
                .with_label_values(&[labels[0]])
                .inc_by(result.compute_usd);
        }
        if let Some(equivalent) = &result.cloud_equivalent {
            ctx.metrics
                .cloud_equivalent_usd
                .with_label_values(&[labels[0]])
                .inc_by(equivalent.usd.max(0.0));
        }
        for (kind, n) in [
            ("prompt", result.tokens.prompt),
            ("completion", result.tokens.completion),
        ] {
            if n > 0 {
                ctx.metrics
                    .tokens
                    .with_label_values(&[labels[0], labels[1], kind])
                    .inc_by(n);
            }
        }
        if let Some(q) = result.quality_score {
            ctx.metrics
                .quality_score
                .with_label_values(&labels)
                .observe(q);
        }
    }
    let kind = match result.status {
        JobStatus::Succeeded => EventKind::Completed,
        JobStatus::Failed => EventKind::Failed,
        JobStatus::Expired => EventKind::Expired,
    };
    emit_event(
        &ctx.client,
        job_id,
        kind,
        Some(ctx.pool),
        result.error.clone(),
    )
    .await;
    tracing::debug!(job_id, status = ?result.status, passed = result.tests_passed, total = result.tests_total, "result published");
}

/// Publishes a result kept in the outbox; accounts for it when it is stored now.
async fn publish_pending(
    ctx: &Ctx,
    job_id: &str,
    pending: &PendingResult,
) -> Result<(), async_nats::Error> {
    let published = results::publish(&ctx.js, job_id, pending).await?;
    // The flusher and a redelivery may publish the same pending result at once: only
    // the one that takes it out of the outbox accounts for it.
    if !ctx.outbox.remove(job_id) {
        return Ok(());
    }
    // Already there is usually this very result: published while the connection was
    // down, its acknowledgement lost, and stored when the client reconnected.
    let ours = published == Published::New
        || results::stored(&ctx.js, job_id)
            .await
            .is_ok_and(|stored| stored.as_deref() == Some(&pending.payload[..]));
    if ours {
        match codec::decode::<JobResult>(&pending.payload, pending.content_type) {
            Ok(result) => account(ctx, &result).await,
            Err(e) => {
                tracing::warn!(job_id, error = %e, "outbox result published but not accounted")
            }
        }
    }
    Ok(())
}

/// Records the job's phase in the job-state bucket. Observability, not coordination:
/// published without waiting for JetStream's acknowledgement, in order on this connection.
async fn set_phase(ctx: &Ctx, queued: &QueuedJob, phase: JobPhase) {
    let state = JobState {
        schema_version: SCHEMA_VERSION,
        job_id: queued.job_id().to_string(),
        phase,
        route: queued.route.clone(),
        complexity: queued.complexity.clone(),
        updated_at_ms: now_unix_ms(),
    };
    let bytes = codec::encode(&state, ContentType::Json);
    if let Err(e) = ctx
        .client
        .publish(kv_subject(JOB_STATE_BUCKET, queued.job_id()), bytes.into())
        .await
    {
        tracing::debug!(job_id = queued.job_id(), error = %e, "job state not updated");
    }
}

async fn flush_outbox(ctx: &Ctx) {
    for (job_id, pending) in ctx.outbox.pending() {
        // Back in the job's trace, so these lines are found with the job's others.
        let trace = pending
            .traceparent
            .as_deref()
            .and_then(TraceContext::parse)
            .unwrap_or_else(TraceContext::new_root);
        let span = qefleet_shared::job_span!(trace);
        trace::record_job_id(&span, job_id.as_str());
        let published = trace::scope(trace, span, async {
            match publish_pending(ctx, &job_id, &pending).await {
                Ok(()) => {
                    tracing::info!("outbox result published");
                    true
                }
                Err(e) => {
                    tracing::debug!(error = %e, "outbox result still unpublished");
                    false
                }
            }
        })
        .await;
        if !published {
            break;
        }
    }
    ctx.metrics
        .outbox_pending
        .with_label_values(&[ctx.pool.as_str()])
        .set(ctx.outbox.len() as i64);
}

async fn flush_outbox_forever(ctx: Arc<Ctx>, mut shutdown: Shutdown) {
    loop {
        flush_outbox(&ctx).await;
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The metric label of an execution provider: `cuda:1` is `cuda` (no device ids as labels).
fn provider_label(provider: &str) -> &str {
    provider.split(':').next().unwrap_or(provider)
}

/// Adds a result's cost to today's spend of its tenant and of the fleet. A failure costs
/// accuracy of the budget check, not the result: it is logged, not retried.
async fn record_spend(ctx: &Ctx, result: &JobResult) {
    let day = qefleet_shared::ledger::utc_day(now_unix_ms());
    for tenant in [result.tenant.as_str(), qefleet_shared::ledger::ALL_TENANTS] {
        let key = qefleet_shared::ledger::spend_key(&day, tenant);
        if let Err(e) = qefleet_shared::ledger::add(&ctx.spend, &key, result.cost_usd).await {
            tracing::warn!(job_id = %result.job_id, key, error = %e, "spend not recorded");
        }
    }
}
