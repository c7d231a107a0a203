//! `qefleet scheduler` and `qefleet worker`: long-running processes.

use std::process::ExitCode;
use std::sync::Arc;

use clap::ValueEnum;

use qefleet_cloud::CloudConfig;
use qefleet_inference::{Embedder, InferenceArgs};
use qefleet_scheduler::SchedulerArgs;
use qefleet_shared::nats::NatsArgs;
use qefleet_shared::shutdown;
use qefleet_worker::engine::Engine;
use qefleet_worker::engines::generator::LocalGenerator;
use qefleet_worker::engines::llm::{CloudModel, LlmEngine, LlmSettings, LocalModel};
use qefleet_worker::engines::DoctestEngine;
use qefleet_worker::sona::SonaConsolidator;
use qefleet_worker::{EngineArg, PoolArg, WorkerArgs};

#[derive(Debug, clap::Args)]
pub struct SchedulerCmd {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub scheduler: SchedulerArgs,
    #[command(flatten)]
    pub inference: InferenceArgs,
}

/// The process's embedder when `--embeddings` is on, loaded off the async threads.
pub async fn embedder(inference: &InferenceArgs) -> anyhow::Result<Option<Embedder>> {
    let inference = inference.clone();
    Ok(tokio::task::spawn_blocking(move || inference.embedder()).await??)
}

#[derive(Debug, clap::Args)]
pub struct WorkerCmd {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
}

pub async fn scheduler(mut args: SchedulerCmd) -> anyhow::Result<ExitCode> {
    args.scheduler.embedder = embedder(&args.inference).await?;
    let client = super::client(&args.nats).await?;
    qefleet_scheduler::run(client, args.scheduler, shutdown::on_signals()).await?;
    Ok(ExitCode::SUCCESS)
}

/// The engine a pool runs. Cloud engines arrive with the hybrid-routing issue.
pub async fn engine_for(worker: &WorkerArgs) -> anyhow::Result<Arc<dyn Engine>> {
    match worker.pool {
        // Maint workers run the Consolidator, never an engine: they load no model.
        PoolArg::Maint => Ok(Arc::new(DoctestEngine::probe(worker.python.clone()).await)),
        PoolArg::Local => {
            let inference = &worker.inference;
            if worker.engine != EngineArg::LocalLlm {
                if let Some(model) = &inference.local_model {
                    anyhow::bail!(
                        "--local-model {} is for --engine local-llm (this worker runs --engine {})",
                        model.display(),
                        worker
                            .engine
                            .to_possible_value()
                            .map(|v| v.get_name().to_string())
                            .unwrap_or_default()
                    );
                }
            }
            Ok(match worker.engine {
                EngineArg::Generator => {
                    Arc::new(LocalGenerator::probe(worker.python.clone()).await)
                }
                EngineArg::Doctest => Arc::new(DoctestEngine::probe(worker.python.clone()).await),
                EngineArg::LocalLlm => {
                    let Some(model) = &inference.local_model else {
                        anyhow::bail!(
                            "--engine local-llm needs --local-model PATH: a directory with an optimum ONNX export \
                             (model.onnx with past_key_values, tokenizer.json, config.json) of a llama, mistral, qwen2 or phi-3 model"
                        );
                    };
                    let model =
                        LocalModel::open(model, inference.session(), inference.generate_options())
                            .await?;
                    Arc::new(
                        LlmEngine::new(model, worker.python.clone(), LlmSettings::default()).await,
                    )
                }
            })
        }
        PoolArg::Cloud => {
            let Some(path) = &worker.cloud_config else {
                anyhow::bail!(
                    "the cloud pool needs --cloud-config FILE: its providers (anthropic or openai-compatible), \
                     models, API key sources and prices (docs/CLOUD.md); jobs that would go to the cloud \
                     stay local while no cloud worker is live"
                );
            };
            let config = CloudConfig::from_file(path)?;
            let model = CloudModel {
                chain: config.chain()?,
                max_tokens: config.max_tokens,
                temperature: config.temperature,
            };
            Ok(Arc::new(
                LlmEngine::new(model, worker.python.clone(), LlmSettings::default()).await,
            ))
        }
    }
}

pub async fn worker(mut args: WorkerCmd) -> anyhow::Result<ExitCode> {
    args.worker.embedder = embedder(&args.worker.inference).await?;
    let engine = engine_for(&args.worker).await?;
    let client = super::client(&args.nats).await?;
    qefleet_worker::run(
        client,
        args.worker,
        engine,
        Arc::new(SonaConsolidator::default()),
        shutdown::on_signals(),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}
