//! Local inference settings shared by every process; each flag is also an environment
//! variable.

use std::path::PathBuf;

use crate::causal::GenerateOptions;
use crate::embed::{find_default_model, shared, Embedder, EmbedderSettings, DEFAULT_MODEL_DIR};
use crate::runtime::{Device, SessionSettings};
use crate::InferenceError;

#[derive(Debug, Clone, clap::Args)]
pub struct InferenceArgs {
    /// Where local models run: auto (CUDA when available, else CPU with a warning), cpu,
    /// cuda or cuda:N (fails when CUDA is unavailable).
    #[arg(long, env = "QEFLEET_DEVICE", default_value = "auto", value_parser = parse_device)]
    pub device: Device,
    /// ONNX Runtime threads within an operator (0: one per core).
    #[arg(long, env = "QEFLEET_INFERENCE_THREADS", default_value_t = 0)]
    pub inference_threads: usize,
    /// Disable ONNX Runtime's memory-pattern planning (less resident memory, slower
    /// repeated runs).
    #[arg(long, env = "QEFLEET_INFERENCE_LOW_MEMORY")]
    pub inference_low_memory: bool,
    /// Start the process's embedder (sentence embeddings for routing and retrieval):
    /// one per process, shared by the scheduler and workers in it.
    #[arg(long, env = "QEFLEET_EMBEDDINGS")]
    pub embeddings: bool,
    /// Embedding model directory (model.onnx, tokenizer.json); default: the bundled
    /// onnx-models/all-MiniLM-L6-v2 that ./scripts/setup.sh converts.
    #[arg(long, env = "QEFLEET_EMBEDDING_MODEL")]
    pub embedding_model: Option<PathBuf>,
    /// Most texts the embedder runs in one batch.
    #[arg(long, env = "QEFLEET_EMBED_BATCH", default_value_t = 32)]
    pub embed_batch: usize,
    /// A causal LM exported with optimum (model.onnx with its KV cache, tokenizer.json,
    /// config.json; llama, mistral, qwen2 or phi-3) for `--engine local-llm`.
    #[arg(long, env = "QEFLEET_LOCAL_MODEL")]
    pub local_model: Option<PathBuf>,
    /// Most tokens the local LLM generates per proposal.
    #[arg(long, env = "QEFLEET_LLM_MAX_NEW_TOKENS", default_value_t = 1024)]
    pub llm_max_new_tokens: usize,
    /// Sampling temperature of the local LLM (0: greedy).
    #[arg(long, env = "QEFLEET_LLM_TEMPERATURE", default_value_t = 0.0)]
    pub llm_temperature: f32,
    /// Nucleus (top-p) of the local LLM's sampling.
    #[arg(long, env = "QEFLEET_LLM_TOP_P", default_value_t = 0.95)]
    pub llm_top_p: f32,
    /// Seed of the local LLM's sampling.
    #[arg(long, env = "QEFLEET_LLM_SEED", default_value_t = 0)]
    pub llm_seed: u64,
}

fn parse_device(s: &str) -> Result<Device, String> {
    s.parse()
}

impl Default for InferenceArgs {
    fn default() -> Self {
        Self {
            device: Device::Auto,
            inference_threads: 0,
            inference_low_memory: false,
            embeddings: false,
            embedding_model: None,
            embed_batch: 32,
            local_model: None,
            llm_max_new_tokens: 1024,
            llm_temperature: 0.0,
            llm_top_p: 0.95,
            llm_seed: 0,
        }
    }
}

impl InferenceArgs {
    pub fn session(&self) -> SessionSettings {
        SessionSettings {
            device: self.device,
            intra_threads: self.inference_threads,
            inter_threads: 1,
            memory_arena: !self.inference_low_memory,
        }
    }

    /// The process's embedder when `--embeddings` is on (the same one for every caller
    /// with the same model). Loading blocks: call it from a blocking context.
    pub fn embedder(&self) -> Result<Option<Embedder>, InferenceError> {
        if !self.embeddings {
            return Ok(None);
        }
        let dir = match &self.embedding_model {
            Some(dir) => dir.clone(),
            None => find_default_model().ok_or_else(|| {
                InferenceError::Model(format!(
                    "no {DEFAULT_MODEL_DIR} here or above: run ./scripts/setup.sh, or pass --embedding-model DIR"
                ))
            })?,
        };
        let settings = EmbedderSettings {
            session: self.session(),
            max_batch: self.embed_batch.max(1),
            ..EmbedderSettings::default()
        };
        shared(&dir, settings).map(Some)
    }

    pub fn generate_options(&self) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: self.llm_max_new_tokens,
            temperature: self.llm_temperature,
            top_p: self.llm_top_p,
            seed: self.llm_seed,
            ..GenerateOptions::default()
        }
    }
}
