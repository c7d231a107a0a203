//! The scheduler process: `run(client, args, shutdown)` serves request/reply submissions,
//! drains the fire-and-forget submission stream and counts completions, until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_nats::{Client, HeaderMap};
use futures_util::StreamExt;
use qefleet_schemas::{codec, Strategy, SubmitReply};
use qefleet_shared::commit::{Batching, Counts, GroupPublisher};
use qefleet_shared::messages::headers_for;
use qefleet_shared::metrics::{self, Metrics};
use qefleet_shared::provision::{self, bucket, ensure_consumer};
use qefleet_shared::pull::pull_concurrently;
use qefleet_shared::shutdown::Shutdown;
use qefleet_shared::subjects::*;
use qefleet_shared::trace::{self, TraceContext};
use tokio::task::JoinSet;

use qefleet_inference::Embedder;

use crate::control::{sample_lag, watch_mode, RouteControl};
use crate::liveness::Liveness;
use crate::recall::RouteMemory;
use crate::router::{HybridRouter, RouteMode, DEFAULT_EXPLORE, DEFAULT_MIN_GAIN};
use crate::sona::QualityModel;
use crate::submit::{DailyBudgets, Submitter};
use crate::validate::Limits;

/// Scheduler settings; every flag is also an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct SchedulerArgs {
    /// Routing strategy when a job names none.
    #[arg(long, env = "QEFLEET_STRATEGY", value_enum, default_value = "balanced")]
    pub strategy: StrategyArg,
    /// Largest module source accepted, in bytes.
    #[arg(long, env = "QEFLEET_MAX_SOURCE_BYTES", default_value_t = 512 * 1024)]
    pub max_source_bytes: usize,
    /// Publish one consolidation job every this many completions.
    #[arg(long, env = "QEFLEET_CONSOLIDATE_EVERY", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub consolidate_every: u64,
    /// Address of the /metrics endpoint (e.g. 0.0.0.0:9464); none when absent.
    #[arg(
        long = "scheduler-metrics-addr",
        env = "QEFLEET_SCHEDULER_METRICS_ADDR"
    )]
    pub metrics_addr: Option<SocketAddr>,
    /// Routing switch at start: auto, force-local, force-cloud (a rollback); changed at run
    /// time with `qefleet route-mode`, which every scheduler follows.
    #[arg(long, env = "QEFLEET_ROUTE_MODE", value_enum, default_value = "auto")]
    pub route_mode: RouteMode,
    /// Queue lag (pending + unacknowledged jobs) at which a pool spills new jobs over to
    /// the other one (balanced and quality strategies; never local_only jobs).
    #[arg(long, env = "QEFLEET_SPILL_LAG", default_value_t = 200)]
    pub spill_lag: u64,
    /// Route by the SONA quality predictor's estimates (balanced and quality strategies)
    /// once it has learned from enough jobs of both pools; false keeps the complexity
    /// rule.
    #[arg(long, env = "QEFLEET_LEARNED_ROUTING", default_value_t = true, action = clap::ArgAction::Set)]
    pub learned_routing: bool,
    /// Quality the cloud must be predicted to add over local before the balanced strategy
    /// sends a job there.
    #[arg(long, env = "QEFLEET_MIN_CLOUD_GAIN", default_value_t = DEFAULT_MIN_GAIN)]
    pub min_cloud_gain: f64,
    /// Also route by the SONA predictor's estimates for jobs the router's memory knows
    /// nothing similar to (or without --embeddings). Off by default: on complexity counts
    /// alone it routed worse than the complexity rule in `cargo bench --bench replay`.
    #[arg(long, env = "QEFLEET_PREDICTOR_ROUTING", default_value_t = false, action = clap::ArgAction::Set)]
    pub predictor_routing: bool,
    /// Where the router's memory of similar past jobs is kept (with --embeddings and
    /// learned routing); one per replica. Default `.qefleet/memory/scheduler`.
    #[arg(long, env = "QEFLEET_ROUTE_MEMORY_DIR")]
    pub route_memory_dir: Option<std::path::PathBuf>,
    /// Share of balanced and quality jobs routed to the other pool than chosen, so the
    /// estimates keep learning both; with it, a job whose similar past jobs the router's
    /// memory knows on one pool only is tried on the other (only with learned routing; 0
    /// turns both off).
    #[arg(long, env = "QEFLEET_ROUTE_EXPLORE", default_value_t = DEFAULT_EXPLORE)]
    pub route_explore: f64,
    /// Daily cloud budget per tenant, US dollars (UTC day). When a tenant's spend reaches
    /// it, its jobs stay local and jobs that insist on the cloud are refused.
    #[arg(long, env = "QEFLEET_TENANT_DAILY_BUDGET_USD")]
    pub tenant_daily_budget_usd: Option<f64>,
    /// Daily cloud budget of the whole fleet, US dollars (UTC day).
    #[arg(long, env = "QEFLEET_DAILY_BUDGET_USD")]
    pub daily_budget_usd: Option<f64>,
    /// When jobs submitted together, while JetStream is slow to store them, are queued
    /// as one atomic batch (one fsync) instead of one by one (ADR 0017; servers >= 2.12).
    #[arg(long, env = "QEFLEET_JOB_BATCHES", value_enum, default_value_t = Batching::Auto)]
    pub job_batches: Batching,
    /// The process's embedder, when started (`--embeddings`); shared with workers in the
    /// same process.
    #[arg(skip)]
    pub embedder: Option<Embedder>,
    /// A registry shared with other components of the process (`qefleet up`); a new one
    /// when absent.
    #[arg(skip)]
    pub metrics: Option<Metrics>,
}

impl Default for SchedulerArgs {
    fn default() -> Self {
        Self {
            strategy: StrategyArg::Balanced,
            max_source_bytes: Limits::default().max_source_bytes,
            consolidate_every: 100,
            metrics_addr: None,
            route_mode: RouteMode::Auto,
            spill_lag: 200,
            learned_routing: true,
            min_cloud_gain: DEFAULT_MIN_GAIN,
            route_explore: DEFAULT_EXPLORE,
            route_memory_dir: None,
            predictor_routing: false,
            tenant_daily_budget_usd: None,
            daily_budget_usd: None,
            job_batches: Batching::Auto,
            embedder: None,
            metrics: None,
        }
    }
}

/// Routing strategies as command-line values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StrategyArg {
    Cost,
    Quality,
    PrivacyFirst,
    Balanced,
}

impl From<StrategyArg> for Strategy {
    fn from(s: StrategyArg) -> Self {
        match s {
            StrategyArg::Cost => Strategy::Cost,
            StrategyArg::Quality => Strategy::Quality,
            StrategyArg::PrivacyFirst => Strategy::PrivacyFirst,
            StrategyArg::Balanced => Strategy::Balanced,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Provision(#[from] provision::ProvisionError),
    #[error("cannot subscribe to {SUBMIT_SUBJECT} or {ESCALATE_SUBJECT}: {0}")]
    Subscribe(String),
    #[error("cannot serve metrics: {0}")]
    Metrics(std::io::Error),
    #[error("cannot read the jobs stream: {0}")]
    Jobs(String),
}

/// Runs a scheduler replica until `shutdown` fires, then drains in-flight submissions.
pub async fn run(
    client: Client,
    args: SchedulerArgs,
    shutdown: Shutdown,
) -> Result<(), SchedulerError> {
    let js = jetstream::new(client.clone());
    provision::ensure_all(&js).await?;
    // `qefleet up` hands every component one registry, served on one address.
    let metrics = args.metrics.clone().unwrap_or_default();
    if let Some(addr) = args.metrics_addr {
        let bound = metrics::serve(addr, metrics.clone(), shutdown.clone())
            .await
            .map_err(SchedulerError::Metrics)?;
        tracing::info!(%bound, "scheduler metrics at /metrics");
    }
    if let Some(embedder) = &args.embedder {
        metrics.report_inference_provider("embed", embedder.provider().label());
    }
    let control = Arc::new(RouteControl::new(args.route_mode));
    let quality = Arc::new(QualityModel::new(args.learned_routing));
    let memory = match (&args.embedder, args.learned_routing) {
        (Some(embedder), true) => {
            let dir = args
                .route_memory_dir
                .clone()
                .unwrap_or_else(|| std::path::PathBuf::from(".qefleet/memory/scheduler"));
            // Off the runtime: opening reads the whole bank and may wait for its lock.
            let (embedder, metrics) = (embedder.clone(), metrics.clone());
            tokio::task::spawn_blocking(move || RouteMemory::open(&dir, embedder, metrics))
                .await
                .expect("opening the router memory panicked")
        }
        _ => None,
    };
    let job_commits = metrics.job_commit_size.clone();
    let jobs = GroupPublisher::for_stream(
        &js,
        JOBS_STREAM,
        args.job_batches,
        Counts::new(move |kind, n| {
            job_commits.with_label_values(&[kind]).observe(n as f64);
        }),
    )
    .await
    .map_err(|e| SchedulerError::Jobs(e.to_string()))?;
    let submitter = Submitter {
        js: js.clone(),
        jobs,
        job_state: bucket(&js, JOB_STATE_BUCKET).await?,
        router: Arc::new(HybridRouter {
            default_strategy: args.strategy.into(),
            spill_lag: args.spill_lag,
            min_gain: args.min_cloud_gain,
            explore: if args.learned_routing {
                args.route_explore
            } else {
                0.0
            },
        }),
        quality: quality.clone(),
        memory: memory.clone(),
        predictor_alone: args.predictor_routing,
        liveness: Arc::new(Liveness::new(
            bucket(&js, WORKERS_BUCKET).await?,
            Duration::from_secs(1),
        )),
        limits: Limits {
            max_source_bytes: args.max_source_bytes,
            ..Limits::default()
        },
        metrics: metrics.clone(),
        control: control.clone(),
        budgets: DailyBudgets {
            tenant_usd: args.tenant_daily_budget_usd,
            fleet_usd: args.daily_budget_usd,
        },
        spend: bucket(&js, SPEND_BUCKET).await?,
        spend_cache: Arc::default(),
    };
    let mut tasks = JoinSet::new();
    tasks.spawn(sample_lag(
        js.clone(),
        control.clone(),
        metrics.clone(),
        Duration::from_secs(1),
        shutdown.clone(),
    ));
    tasks.spawn(watch_mode(
        bucket(&js, CONTROL_BUCKET).await?,
        control,
        shutdown.clone(),
    ));
    tasks.spawn(crate::sona::watch_adapter(
        bucket(&js, SONA_BUCKET).await?,
        quality,
        metrics.clone(),
        shutdown.clone(),
    ));
    if let Some(memory) = memory {
        tasks.spawn(crate::recall::follow_results(
            client.clone(),
            memory,
            shutdown.clone(),
        ));
    }
    let requests = client
        .queue_subscribe(SUBMIT_SUBJECT, SCHEDULER_QUEUE_GROUP.to_string())
        .await
        .map_err(|e| SchedulerError::Subscribe(e.to_string()))?;
    tasks.spawn(serve_requests(
        client.clone(),
        requests,
        Served::Submit,
        submitter.clone(),
        shutdown.clone(),
    ));
    let batches = client
        .queue_subscribe(SUBMIT_BATCH_SUBJECT, SCHEDULER_QUEUE_GROUP.to_string())
        .await
        .map_err(|e| SchedulerError::Subscribe(e.to_string()))?;
    tasks.spawn(serve_requests(
        client.clone(),
        batches,
        Served::SubmitBatch,
        submitter.clone(),
        shutdown.clone(),
    ));
    let escalations = client
        .queue_subscribe(ESCALATE_SUBJECT, SCHEDULER_QUEUE_GROUP.to_string())
        .await
        .map_err(|e| SchedulerError::Subscribe(e.to_string()))?;
    tasks.spawn(serve_requests(
        client.clone(),
        escalations,
        Served::Escalate,
        submitter.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(drain_submission_stream(
        js.clone(),
        submitter.clone(),
        shutdown.clone(),
    ));
    let markers = bucket(&js, CONSOLIDATIONS_BUCKET).await?;
    let counter_shutdown = shutdown.clone();
    let every = args.consolidate_every;
    tasks.spawn(async move {
        if let Err(e) =
            crate::consolidation::run_counter(js, markers, every, metrics, counter_shutdown).await
        {
            tracing::error!(error = %e, "completion counter stopped");
        }
    });
    tracing::info!(subject = SUBMIT_SUBJECT, "scheduler ready");
    while tasks.join_next().await.is_some() {}
    let _ = client.flush().await;
    tracing::info!("scheduler stopped");
    Ok(())
}

/// What a request subscription serves.
#[derive(Debug, Clone, Copy)]
enum Served {
    Submit,
    SubmitBatch,
    Escalate,
}

async fn serve_requests(
    client: Client,
    mut requests: async_nats::Subscriber,
    served: Served,
    submitter: Submitter,
    mut shutdown: Shutdown,
) {
    let mut in_flight = JoinSet::new();
    loop {
        let request = tokio::select! {
            _ = shutdown.wait() => break,
            request = requests.next() => request,
        };
        let Some(request) = request else { break };
        let Some(reply_to) = request.reply.clone() else {
            tracing::warn!(subject = %request.subject, "request without reply subject: use a request, or publish to {SUBMIT_QUEUE_SUBJECT} for fire-and-forget");
            continue;
        };
        let submitter = submitter.clone();
        let client = client.clone();
        in_flight.spawn(traced(request.headers.clone(), async move {
            let headers = request.headers.as_ref();
            let (bytes, ct) = match served {
                Served::Submit => {
                    let (reply, ct) = submitter.submit_raw(headers, &request.payload).await;
                    (codec::encode(&reply, ct), ct)
                }
                Served::SubmitBatch => {
                    let (reply, ct) = submitter.submit_batch_raw(headers, &request.payload).await;
                    (codec::encode(&reply, ct), ct)
                }
                Served::Escalate => {
                    let (reply, ct) = submitter.escalate_raw(headers, &request.payload).await;
                    (codec::encode(&reply, ct), ct)
                }
            };
            let _ = client
                .publish_with_headers(reply_to, headers_for(ct), bytes.into())
                .await;
        }));
        while in_flight.try_join_next().is_some() {}
    }
    let _ = requests.unsubscribe().await;
    while in_flight.join_next().await.is_some() {}
}

/// Fire-and-forget submissions a scheduler replica handles at once. One at a time, each
/// waited for its job's stored acknowledgement and record before the next began: a
/// replica queued a few hundred a second under `sync_interval: always`.
const SUBMISSIONS_IN_FLIGHT: usize = 256;

/// Fire-and-forget submissions: accepted ones are queued, rejected ones dead-lettered with
/// the reason (nothing is dropped), and an unavailable JetStream means retry later. Up to
/// [`SUBMISSIONS_IN_FLIGHT`] at once, so they are queued in the order they finish, not
/// strictly the order they were published.
async fn drain_submission_stream(js: jetstream::Context, submitter: Submitter, shutdown: Shutdown) {
    let consumer = match ensure_consumer(
        &js,
        SUBMISSIONS_STREAM,
        pull::Config {
            durable_name: Some(SUBMISSIONS_CONSUMER.to_string()),
            filter_subject: SUBMIT_QUEUE_SUBJECT.to_string(),
            ack_wait: Duration::from_secs(30),
            max_deliver: -1,
            ..Default::default()
        },
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "fire-and-forget submissions are not served");
            return;
        }
    };
    let mut in_flight =
        pull_concurrently(consumer, SUBMISSIONS_IN_FLIGHT, shutdown, move |message| {
            let js = js.clone();
            let submitter = submitter.clone();
            traced(message.headers.clone(), async move {
                let default_id = message.info().ok().map(|info| crate::submit::DefaultId {
                    id: crate::submit::queued_submission_id(
                        info.published.unix_timestamp_nanos(),
                        info.stream_sequence,
                    ),
                    first_delivery: info.delivered == 1,
                });
                let (reply, _) = submitter
                    .submit_raw_as(message.headers.as_ref(), &message.payload, default_id)
                    .await;
                match reply {
                    SubmitReply::Accepted { .. } => {
                        let _ = message.ack().await;
                    }
                    SubmitReply::Rejected { error, .. }
                        if error.code == qefleet_schemas::ErrorCode::Unavailable =>
                    {
                        let _ = message
                            .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                            .await;
                    }
                    SubmitReply::Rejected { error, .. } => {
                        let mut headers = message.headers.clone().unwrap_or_else(HeaderMap::new);
                        headers.insert(HEADER_DLQ_REASON, error.message.as_str());
                        headers.insert(HEADER_DLQ_SUBJECT, message.subject.as_str());
                        let stored = match js
                            .publish_with_headers(
                                dlq_subject("submit"),
                                headers,
                                message.payload.clone(),
                            )
                            .await
                        {
                            Ok(ack) => ack.await.is_ok(),
                            Err(_) => false,
                        };
                        if stored {
                            let _ = message.ack().await;
                        } else {
                            let _ = message
                                .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                                .await;
                        }
                    }
                }
            })
        })
        .await;
    while in_flight.join_next().await.is_some() {}
}

/// Runs `work` in the trace its request carries (or a new one) and in its `job` span, so
/// everything published inside carries the trace and every log line the trace id.
pub(crate) fn traced<F: std::future::Future>(
    headers: Option<HeaderMap>,
    work: F,
) -> impl std::future::Future<Output = F::Output> {
    let trace = TraceContext::continue_or_start(headers.as_ref());
    let span = qefleet_shared::job_span!(trace);
    trace::scope(trace, span, work)
}
