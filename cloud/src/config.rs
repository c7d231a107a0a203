//! The cloud pool's configuration file (JSON): providers in fallback order with their
//! protocol, endpoint, model, key source, dated price and limits; breaker settings.
//!
//! ```json
//! {
//!   "max_tokens": 4096,
//!   "temperature": 0.0,
//!   "breaker": {"failures": 5, "window_s": 60, "cool_down_s": 30},
//!   "providers": [
//!     {"name": "anthropic", "protocol": "anthropic", "base_url": "https://api.anthropic.com",
//!      "model": "claude-sonnet-4-5", "api_key_env": "ANTHROPIC_API_KEY",
//!      "price": {"input_per_mtok": 3.0, "output_per_mtok": 15.0, "effective": "2026-11-01"}},
//!     {"name": "lab-vllm", "protocol": "openai", "base_url": "http://vllm.lab:8000",
//!      "model": "qwen2.5-coder-32b", "api_key_file": "/run/secrets/vllm", "timeout_s": 300}
//!   ]
//! }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::breaker::BreakerSettings;
use crate::provider::{Price, Protocol, Provider, ProviderConfig, Secret};
use crate::{CloudError, FallbackChain};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    #[serde(default)]
    pub temperature: f32,
    #[serde(default)]
    pub breaker: Option<BreakerConfig>,
    pub providers: Vec<ProviderEntry>,
}

fn default_max_tokens() -> u32 {
    4096
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    pub failures: u32,
    pub window_s: f64,
    pub cool_down_s: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderEntry {
    pub name: String,
    /// `anthropic` or `openai` (any OpenAI-compatible server).
    pub protocol: String,
    pub base_url: String,
    pub model: String,
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    #[serde(default)]
    pub price: Option<PriceEntry>,
    #[serde(default)]
    pub timeout_s: Option<f64>,
    #[serde(default)]
    pub attempts: Option<u32>,
    /// The model's tokenizer (a Hugging Face `tokenizer.json`), to count the tokens of
    /// what a job would have sent when estimating savings; 4 bytes a token without it.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    pub input_per_mtok: f64,
    /// Prompt-cache reads; the input price when absent.
    #[serde(default)]
    pub cached_input_per_mtok: Option<f64>,
    pub output_per_mtok: f64,
    pub effective: String,
}

impl PriceEntry {
    /// The entry as the price providers bill with.
    pub fn price(&self) -> Price {
        Price {
            input_per_mtok: self.input_per_mtok,
            cached_input_per_mtok: self.cached_input_per_mtok,
            output_per_mtok: self.output_per_mtok,
            effective: self.effective.clone(),
        }
    }
}

impl CloudConfig {
    pub fn from_file(path: &Path) -> Result<Self, CloudError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CloudError::Config(format!("cannot read {}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| CloudError::Config(format!("{}: {e}", path.display())))
    }

    /// The providers, keys resolved, in a fallback chain.
    pub fn chain(&self) -> Result<FallbackChain, CloudError> {
        let breaker = self
            .breaker
            .as_ref()
            .map(|b| BreakerSettings {
                failures: b.failures,
                window: Duration::from_secs_f64(b.window_s.max(0.0)),
                cool_down: Duration::from_secs_f64(b.cool_down_s.max(0.0)),
            })
            .unwrap_or_default();
        let providers = self
            .providers
            .iter()
            .map(|entry| {
                let protocol = match entry.protocol.as_str() {
                    "anthropic" => Protocol::Anthropic,
                    "openai" => Protocol::OpenAi,
                    other => {
                        return Err(CloudError::Config(format!(
                            "provider {}: protocol {other:?} is not anthropic or openai",
                            entry.name
                        )))
                    }
                };
                let mut config =
                    ProviderConfig::new(&entry.name, protocol, &entry.base_url, &entry.model);
                config.key = match (&entry.api_key_env, &entry.api_key_file) {
                    (Some(_), Some(_)) => {
                        return Err(CloudError::Config(format!(
                            "provider {}: give api_key_env or api_key_file, not both",
                            entry.name
                        )))
                    }
                    (Some(var), None) => Some(Secret::from_env(var).map_err(|e| {
                        CloudError::Config(format!("provider {}: {e}", entry.name))
                    })?),
                    (None, Some(file)) => Some(Secret::from_file(file)?),
                    (None, None) => None,
                };
                if let Some(p) = &entry.price {
                    config.price = p.price();
                }
                if let Some(t) = entry.timeout_s {
                    config.timeout = Duration::from_secs_f64(t.max(0.001));
                }
                if let Some(a) = entry.attempts {
                    config.attempts = a.max(1);
                }
                config.breaker = breaker;
                Provider::new(config)
            })
            .collect::<Result<Vec<_>, _>>()?;
        FallbackChain::new(providers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_builds_its_chain_and_says_what_is_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key");
        std::fs::write(&key, "sk-1\n").expect("write");
        let path = dir.path().join("cloud.json");
        std::fs::write(
            &path,
            serde_json::json!({
                "providers": [
                    {"name": "a", "protocol": "anthropic", "base_url": "http://127.0.0.1:1/", "model": "m",
                     "api_key_file": key, "price": {"input_per_mtok": 3.0, "output_per_mtok": 15.0, "effective": "2026-11-01"}},
                    {"name": "b", "protocol": "openai", "base_url": "http://127.0.0.1:2", "model": "n", "timeout_s": 5, "attempts": 2}
                ],
                "breaker": {"failures": 2, "window_s": 10, "cool_down_s": 1}
            })
            .to_string(),
        )
        .expect("write");
        let config = CloudConfig::from_file(&path).expect("parses");
        assert_eq!(config.max_tokens, 4096);
        let chain = config.chain().expect("chain");
        let names: Vec<&str> = chain.providers().iter().map(|p| p.name()).collect();
        assert_eq!(names, ["a", "b"]);
        let a = chain.providers()[0].config();
        assert_eq!(
            (a.base_url.as_str(), a.price.output_per_mtok),
            ("http://127.0.0.1:1", 15.0)
        );
        assert_eq!(chain.providers()[1].config().attempts, 2);

        let bad = |json: serde_json::Value| {
            std::fs::write(&path, json.to_string()).expect("write");
            CloudConfig::from_file(&path)
                .and_then(|c| c.chain())
                .expect_err("bad config")
                .to_string()
        };
        let e = bad(
            serde_json::json!({"providers": [{"name": "x", "protocol": "grpc", "base_url": "u", "model": "m"}]}),
        );
        assert!(
            e.contains("protocol \"grpc\" is not anthropic or openai"),
            "{e}"
        );
        let e = bad(
            serde_json::json!({"providers": [{"name": "x", "protocol": "openai", "base_url": "u", "model": "m", "api_key_env": "QEFLEET_TEST_UNSET_KEY"}]}),
        );
        assert!(e.contains("provider x: cloud configuration: the API key variable QEFLEET_TEST_UNSET_KEY is not set"), "{e}");
        let e = bad(serde_json::json!({"providers": []}));
        assert!(e.contains("no cloud provider configured"), "{e}");
        let e = bad(serde_json::json!({"providers": [], "prices": {}}));
        assert!(e.contains("unknown field `prices`"), "{e}");
    }
}
