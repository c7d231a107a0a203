//! Local inference on ONNX Runtime: the runtime library found and loaded once per process,
//! the execution provider chosen per session (`--device auto|cpu|cuda[:N]`), and sentence
//! embeddings served by a batching inference thread.

pub mod args;
pub mod causal;
pub mod embed;
pub mod runtime;
pub mod tokens;

pub use args::InferenceArgs;
pub use embed::{Embedder, EmbedderSettings, EmbeddingModel};
pub use runtime::{Device, Provider, SessionSettings};
pub use tokens::TokenCounter;

/// What can go wrong with local inference. Every message says what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InferenceError {
    /// The runtime library is missing, cannot be loaded, or a provider is unavailable.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// The model files are missing or not of the expected shape.
    #[error("model: {0}")]
    Model(String),
    /// A run failed.
    #[error("inference: {0}")]
    Inference(String),
    /// Too many requests are waiting.
    #[error("overloaded: {0}")]
    Overloaded(String),
}

#[cfg(test)]
mod parity_tests;

#[cfg(test)]
mod causal_tests;
