//! Cloud LLM providers: the Anthropic Messages API and OpenAI-compatible chat
//! completions (OpenAI, vLLM, llama.cpp server, Ollama), each with timeouts, retries
//! (exponential backoff with jitter, `retry-after` honoured), a circuit breaker, and a
//! fallback chain across providers. Keys come from the environment or a file and are
//! never logged. Costs come from the tokens the provider reports and a dated price.

pub mod breaker;
pub mod config;
pub mod provider;
pub mod stub;

use std::time::Instant;

pub use breaker::{BreakerSettings, BreakerState};
pub use config::CloudConfig;
pub use provider::{Price, Protocol, Provider, ProviderConfig, Secret};

/// One chat exchange: system instructions and one user message.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub system: String,
    pub user: String,
    pub max_tokens: u32,
    pub temperature: f32,
}

/// Tokens as the provider counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens billed at the input price (cache writes included).
    pub input: u64,
    /// Prompt tokens read from the provider's prompt cache, billed at the cached price.
    pub cached: u64,
    pub output: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    pub text: String,
    pub usage: Usage,
    pub cost_usd: f64,
    /// Which provider and model answered.
    pub provider: String,
    pub model: String,
    /// Seconds of the successful exchange.
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CloudError {
    /// Settings are wrong (missing key, unreadable key file): fix the configuration.
    #[error("cloud configuration: {0}")]
    Config(String),
    /// The provider refused the request (400, 401, 403, 404, 422): retrying will not help.
    #[error("{0}")]
    Refused(String),
    /// Failed after retries or ran out of time: worth trying later.
    #[error("{0}")]
    Transient(String),
    /// The provider's breaker is open.
    #[error("{0}")]
    BreakerOpen(String),
    /// Every provider of the chain failed; each one's reason.
    #[error("no cloud provider answered: {}", .0.join("; "))]
    Exhausted(Vec<String>),
}

/// Providers in order of preference: a call goes to the first whose breaker lets it
/// through and falls back to the next on any failure.
#[derive(Debug)]
pub struct FallbackChain {
    providers: Vec<Provider>,
}

impl FallbackChain {
    pub fn new(providers: Vec<Provider>) -> Result<Self, CloudError> {
        if providers.is_empty() {
            return Err(CloudError::Config("no cloud provider configured".into()));
        }
        Ok(Self { providers })
    }

    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    pub async fn chat(
        &self,
        request: &ChatRequest,
        deadline: Instant,
    ) -> Result<ChatResponse, CloudError> {
        let mut reasons = Vec::new();
        for provider in &self.providers {
            match provider.chat(request, deadline).await {
                Ok(response) => return Ok(response),
                Err(e) => {
                    tracing::warn!(provider = provider.name(), error = %e, "falling back");
                    reasons.push(e.to_string());
                }
            }
        }
        Err(CloudError::Exhausted(reasons))
    }
}

#[cfg(test)]
mod protocol_tests;
