//! `qefleet up` and `qefleet demo`: the whole fleet in one process, on an embedded
//! nats-server unless a URL is given.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use qefleet_inference::InferenceArgs;
use qefleet_scheduler::SchedulerArgs;
use qefleet_schemas::{ContentType, JobSpec, JobStatus, SubmitReply};
use qefleet_shared::client::{submit, wait_for_result};
use qefleet_shared::embedded::{EmbeddedOptions, EmbeddedServer};
use qefleet_shared::nats::NatsArgs;
use qefleet_shared::shutdown::{self, Shutdown};
use qefleet_worker::sona::SonaConsolidator;
use qefleet_worker::{EngineArg, PoolArg, ResultArgs, WorkerArgs};
use tokio::task::JoinSet;

use super::result::print_result;
use super::serve::engine_for;

#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub scheduler: SchedulerArgs,
    /// Where the embedded nats-server keeps its store and workers their outboxes.
    #[arg(long, env = "QEFLEET_DATA_DIR", default_value = ".qefleet")]
    pub data_dir: PathBuf,
    /// Jobs the local worker runs at once.
    #[arg(long, env = "QEFLEET_CONCURRENCY", default_value_t = 2)]
    pub concurrency: u32,
    /// Python interpreter with pytest and coverage.
    #[arg(long, env = "QEFLEET_PYTHON")]
    pub python: Option<PathBuf>,
    /// Engine of the local worker.
    #[arg(long, env = "QEFLEET_ENGINE", value_enum, default_value = "generator")]
    pub engine: EngineArg,
    /// Also run a cloud worker with these providers (JSON, docs/CLOUD.md); its first
    /// priced provider is the reference for savings.
    #[arg(long, env = "QEFLEET_CLOUD_CONFIG")]
    pub cloud_config: Option<PathBuf>,
    #[command(flatten)]
    pub results: ResultArgs,
    #[command(flatten)]
    pub inference: InferenceArgs,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub up: UpArgs,
    /// Module to generate tests for (default: the bundled examples/calc.py).
    #[arg(long)]
    pub module: Option<PathBuf>,
}

const EXAMPLE: &str = include_str!("../../examples/calc.py");

struct Fleet {
    _server: Option<EmbeddedServer>,
    client: async_nats::Client,
    tasks: JoinSet<anyhow::Result<()>>,
}

async fn start(args: &UpArgs, shutdown: Shutdown) -> anyhow::Result<Fleet> {
    let mut nats = args.nats.clone();
    let server = if nats.urls.is_empty() {
        let data_dir = args.data_dir.join("nats");
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let server = EmbeddedServer::start(EmbeddedOptions {
            data_dir: Some(data_dir.clone()),
            ..EmbeddedOptions::default()
        })?;
        tracing::info!(url = %server.url(), store = %data_dir.display(), "embedded nats-server started (sync_interval: always)");
        nats.urls = vec![server.url()];
        Some(server)
    } else {
        None
    };
    let client = super::client(&nats).await?;
    // One embedder for the whole process: the scheduler and the local worker share it.
    let embedder = super::serve::embedder(&args.inference).await?;
    let mut tasks = JoinSet::new();
    let scheduler_client = client.clone();
    // One registry for every component: `--scheduler-metrics-addr` serves the scheduler's
    // and the workers' metrics together.
    let metrics = qefleet_shared::metrics::Metrics::new();
    let mut scheduler_args = args.scheduler.clone();
    scheduler_args.embedder = embedder.clone();
    if scheduler_args.route_memory_dir.is_none() {
        scheduler_args.route_memory_dir = Some(args.data_dir.join("memory").join("scheduler"));
    }
    scheduler_args.metrics = Some(metrics.clone());
    let scheduler_shutdown = shutdown.clone();
    tasks.spawn(async move {
        qefleet_scheduler::run(scheduler_client, scheduler_args, scheduler_shutdown).await?;
        Ok(())
    });
    let mut pools = vec![PoolArg::Local, PoolArg::Maint];
    if args.cloud_config.is_some() {
        pools.push(PoolArg::Cloud);
    }
    for pool in pools {
        let mut worker = WorkerArgs::for_pool(pool);
        worker.metrics = Some(metrics.clone());
        worker.python = args.python.clone();
        worker.engine = args.engine;
        worker.outbox_dir = Some(
            args.data_dir
                .join("outbox")
                .join(format!("{pool:?}").to_lowercase()),
        );
        worker.memory_dir = Some(
            args.data_dir
                .join("memory")
                .join(format!("{pool:?}").to_lowercase()),
        );
        worker.cloud_config = args.cloud_config.clone();
        worker.results = args.results.clone();
        if pool == PoolArg::Local {
            worker.concurrency = args.concurrency;
            worker.inference = args.inference.clone();
            worker.embedder = embedder.clone();
        }
        let engine = engine_for(&worker).await?;
        let worker_client = client.clone();
        let worker_shutdown = shutdown.clone();
        tasks.spawn(async move {
            qefleet_worker::run(
                worker_client,
                worker,
                engine,
                Arc::new(SonaConsolidator::default()),
                worker_shutdown,
            )
            .await?;
            Ok(())
        });
    }
    Ok(Fleet {
        _server: server,
        client,
        tasks,
    })
}

async fn join(mut fleet: Fleet) -> anyhow::Result<()> {
    while let Some(done) = fleet.tasks.join_next().await {
        done??;
    }
    // Close the connection before the embedded server goes, so nothing reports it lost.
    let _ = fleet.client.drain().await;
    Ok(())
}

pub async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let fleet = start(&args, shutdown::on_signals()).await?;
    tracing::info!(
        "fleet up: submit with `qefleet submit FILE.py --nats-url ...`; Ctrl-C drains and stops"
    );
    join(fleet).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let (trigger, shutdown) = shutdown::channel();
    let fleet = start(&args.up, shutdown).await?;
    let (module_name, source) = match &args.module {
        Some(path) => (
            path.file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("module")
                .to_string(),
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => ("calc".to_string(), EXAMPLE.to_string()),
    };
    let mut job = JobSpec::python(&module_name, &source);
    job.coverage_target = Some(0.8);
    let mut fleet = fleet;
    wait_for_local_worker(&fleet.client).await;
    // A fleet task that fails at start (say, a conflicting stream) ends the demo at once.
    let reply = tokio::select! {
        reply = submit(&fleet.client, &job, ContentType::MsgPack, Duration::from_secs(30)) => reply?,
        Some(failed) = fleet.tasks.join_next() => {
            failed??;
            anyhow::bail!("a fleet task stopped before the demo job was submitted");
        }
    };
    let job_id = match reply {
        SubmitReply::Accepted {
            job_id,
            route,
            complexity,
            ..
        } => {
            println!("submitted {module_name}: job {job_id}");
            if let Some(c) = complexity {
                println!(
                    "  complexity: {} (score {}, cyclomatic {}, {} functions)",
                    c.class, c.score, c.cyclomatic, c.functions
                );
            }
            println!(
                "  route: {} pool via {} ({})",
                route.pool,
                route.subject,
                route.reasons.join("; ")
            );
            job_id
        }
        SubmitReply::Rejected { error, .. } => {
            anyhow::bail!("submission rejected: {}", error.message)
        }
    };
    let js = async_nats::jetstream::new(fleet.client.clone());
    let outcome = wait_for_result(&js, &job_id, Duration::from_secs(300)).await;
    trigger.trigger();
    let (result, _) = outcome?;
    print_result(&result, true);
    join(fleet).await?;
    Ok(if result.status == JobStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Waits (up to 20 s) until a local worker has registered, so the demo's route is the
/// one a running fleet gives.
async fn wait_for_local_worker(client: &async_nats::Client) {
    let js = async_nats::jetstream::new(client.clone());
    for _ in 0..200 {
        if let Ok(bucket) = js
            .get_key_value(qefleet_shared::subjects::WORKERS_BUCKET)
            .await
        {
            if let Ok(live) = qefleet_scheduler::liveness::count_live(&bucket).await {
                if live.count(qefleet_schemas::Pool::Local) > 0 {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
