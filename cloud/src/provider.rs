//! One provider: its protocol (Anthropic Messages or OpenAI-compatible chat completions),
//! endpoint, model, key, price, retry policy and circuit breaker.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use qefleet_shared::retry::RetryPolicy;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::breaker::{Breaker, BreakerSettings, BreakerState};
use crate::{ChatRequest, ChatResponse, CloudError, Usage};

/// The wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `POST {base}/v1/messages`, `x-api-key`, `anthropic-version`.
    Anthropic,
    /// `POST {base}/v1/chat/completions`, `Authorization: Bearer` (OpenAI, vLLM, llama.cpp
    /// server, Ollama and others).
    OpenAi,
}

/// An API key. Never printed: `Debug` shows only where it came from.
#[derive(Clone)]
pub struct Secret {
    value: String,
    source: String,
}

impl Secret {
    pub fn new(value: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            source: source.into(),
        }
    }

    /// From an environment variable.
    pub fn from_env(var: &str) -> Result<Self, CloudError> {
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(Self::new(v.trim(), format!("${var}"))),
            _ => Err(CloudError::Config(format!(
                "the API key variable {var} is not set"
            ))),
        }
    }

    /// From a file (its first line).
    pub fn from_file(path: &Path) -> Result<Self, CloudError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CloudError::Config(format!(
                "cannot read the API key file {}: {e}",
                path.display()
            ))
        })?;
        let key = text.lines().next().unwrap_or("").trim().to_string();
        if key.is_empty() {
            return Err(CloudError::Config(format!(
                "the API key file {} is empty",
                path.display()
            )));
        }
        Ok(Self::new(key, path.display().to_string()))
    }

    fn expose(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(from {}, redacted)", self.source)
    }
}

/// Dollars per million tokens of a model, from a dated price table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Price {
    pub input_per_mtok: f64,
    /// Cached prompt tokens (prompt-cache reads); the input price when not set.
    pub cached_input_per_mtok: Option<f64>,
    pub output_per_mtok: f64,
    /// The table entry's effective date (YYYY-MM-DD), reported with costs.
    pub effective: String,
}

impl Price {
    pub fn cost(&self, usage: &Usage) -> f64 {
        let cached = self.cached_input_per_mtok.unwrap_or(self.input_per_mtok);
        (usage.input as f64 * self.input_per_mtok
            + usage.cached as f64 * cached
            + usage.output as f64 * self.output_per_mtok)
            / 1e6
    }
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// A name for logs, metrics and errors (e.g. `anthropic`, `vllm-lab`).
    pub name: String,
    pub protocol: Protocol,
    /// Base URL without the `/v1/...` path.
    pub base_url: String,
    pub model: String,
    pub key: Option<Secret>,
    pub price: Price,
    /// One HTTP exchange at most.
    pub timeout: Duration,
    /// Attempts per call, first included.
    pub attempts: u32,
    pub retry: RetryPolicy,
    pub breaker: BreakerSettings,
}

impl ProviderConfig {
    pub fn new(name: &str, protocol: Protocol, base_url: &str, model: &str) -> Self {
        Self {
            name: name.into(),
            protocol,
            base_url: base_url.trim_end_matches('/').into(),
            model: model.into(),
            key: None,
            price: Price::default(),
            timeout: Duration::from_secs(120),
            attempts: 4,
            retry: RetryPolicy {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(30),
                multiplier: 2.0,
            },
            breaker: BreakerSettings::default(),
        }
    }
}

/// What one HTTP exchange came to.
#[derive(Debug)]
enum Attempt {
    Done(ChatResponse),
    /// Worth another try, after this long (the server's `retry-after`) or the backoff.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// The request itself is wrong (400, 401, 403, 404, 422): no retry, no breaker count.
    Refused(String),
}

#[derive(Debug)]
pub struct Provider {
    config: ProviderConfig,
    client: reqwest::Client,
    breaker: Breaker,
}

impl Provider {
    pub fn new(config: ProviderConfig) -> Result<Self, CloudError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| CloudError::Config(format!("{}: HTTP client: {e}", config.name)))?;
        Ok(Self {
            breaker: Breaker::new(config.breaker),
            config,
            client,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// One call with retries: exponential backoff with jitter, `retry-after` honoured on
    /// 429 (and 503), backoff on 529/503/5xx, timeouts, cut-off or malformed bodies. Each
    /// attempt takes leave from the breaker; when it is open the call ends at once.
    pub async fn chat(
        &self,
        request: &ChatRequest,
        deadline: Instant,
    ) -> Result<ChatResponse, CloudError> {
        let name = &self.config.name;
        let mut last = String::new();
        for attempt in 1..=self.config.attempts.max(1) {
            let Some(permit) = self.breaker.try_acquire() else {
                return Err(CloudError::BreakerOpen(format!(
                    "{name}: circuit breaker open{}",
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(" (last: {last})")
                    }
                )));
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.breaker.record_success(permit);
                return Err(CloudError::Transient(format!(
                    "{name}: out of time ({last})"
                )));
            }
            let started = Instant::now();
            let outcome = tokio::time::timeout(left, self.exchange(request)).await;
            let outcome = outcome.unwrap_or_else(|_| Attempt::Retry {
                after: None,
                reason: "the job's deadline passed during the request".into(),
            });
            match outcome {
                Attempt::Done(mut response) => {
                    self.breaker.record_success(permit);
                    response.seconds = started.elapsed().as_secs_f64();
                    return Ok(response);
                }
                Attempt::Refused(reason) => {
                    // The provider answered; the request was wrong. Not the provider's health.
                    self.breaker.record_success(permit);
                    return Err(CloudError::Refused(format!("{name}: {reason}")));
                }
                Attempt::Retry { after, reason } => {
                    self.breaker.record_failure(permit);
                    tracing::debug!(provider = %name, attempt, %reason, "cloud call failed");
                    last = reason;
                    if attempt == self.config.attempts.max(1) {
                        break;
                    }
                    let wait = after.unwrap_or_else(|| self.config.retry.delay_jittered(attempt));
                    if Instant::now() + wait >= deadline {
                        return Err(CloudError::Transient(format!(
                            "{name}: {last}; no time left to retry after {wait:?}"
                        )));
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
        Err(CloudError::Transient(format!(
            "{name}: {last} (after {} attempts)",
            self.config.attempts.max(1)
        )))
    }

    /// One HTTP exchange, classified.
    async fn exchange(&self, request: &ChatRequest) -> Attempt {
        let c = &self.config;
        let (url, body) = match c.protocol {
            Protocol::Anthropic => (
                format!("{}/v1/messages", c.base_url),
                json!({
                    "model": c.model,
                    "max_tokens": request.max_tokens,
                    "temperature": request.temperature,
                    "system": request.system,
                    "messages": [{"role": "user", "content": request.user}],
                }),
            ),
            Protocol::OpenAi => (
                format!("{}/v1/chat/completions", c.base_url),
                json!({
                    "model": c.model,
                    "max_tokens": request.max_tokens,
                    "temperature": request.temperature,
                    "messages": [
                        {"role": "system", "content": request.system},
                        {"role": "user", "content": request.user},
                    ],
                }),
            ),
        };
        let mut http = self.client.post(&url).json(&body);
        match (c.protocol, &c.key) {
            (Protocol::Anthropic, Some(key)) => {
                http = http
                    .header("x-api-key", key.expose())
                    .header("anthropic-version", "2023-06-01");
            }
            (Protocol::Anthropic, None) => http = http.header("anthropic-version", "2023-06-01"),
            (Protocol::OpenAi, Some(key)) => http = http.bearer_auth(key.expose()),
            (Protocol::OpenAi, None) => {}
        }
        let response = match http.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Attempt::Retry {
                    after: None,
                    reason: format!("timed out after {:?}", c.timeout),
                }
            }
            Err(e) => {
                return Attempt::Retry {
                    after: None,
                    reason: format!("request failed: {}", without_url(&e)),
                }
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let text = match response.text().await {
            Ok(t) => t,
            Err(e) => {
                return Attempt::Retry {
                    after: None,
                    reason: format!("response cut off ({status}): {}", without_url(&e)),
                }
            }
        };
        classify(
            c.protocol,
            status,
            retry_after,
            &text,
            &c.name,
            &c.model,
            &c.price,
        )
    }
}

/// reqwest's errors name the URL; keep messages short and free of query strings.
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(&format!(" for url ({url})"), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// `retry-after` in seconds (the form providers send); HTTP dates are not used by them.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

fn classify(
    protocol: Protocol,
    status: StatusCode,
    retry_after: Option<Duration>,
    text: &str,
    name: &str,
    model: &str,
    price: &Price,
) -> Attempt {
    let detail = || {
        serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| {
                v["error"]["message"]
                    .as_str()
                    .or_else(|| v["error"].as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| text.chars().take(200).collect())
    };
    match status.as_u16() {
        200..=299 => {}
        429 => {
            return Attempt::Retry {
                after: retry_after,
                reason: format!("rate limited (429): {}", detail()),
            }
        }
        // 529: Anthropic overloaded. Back off (503 may carry retry-after too).
        529 | 503 => {
            return Attempt::Retry {
                after: retry_after,
                reason: format!("overloaded ({}): {}", status.as_u16(), detail()),
            }
        }
        408 | 409 | 500..=599 => {
            return Attempt::Retry {
                after: None,
                reason: format!("server error ({}): {}", status.as_u16(), detail()),
            }
        }
        code => return Attempt::Refused(format!("refused ({code}): {}", detail())),
    }
    let malformed = |what: &str| Attempt::Retry {
        after: None,
        reason: format!("malformed response ({what})"),
    };
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return malformed("not JSON");
    };
    let (text, usage) = match protocol {
        Protocol::Anthropic => {
            let Some(blocks) = v["content"].as_array() else {
                return malformed("no content");
            };
            let text: String = blocks
                .iter()
                .filter(|b| b["type"] == "text")
                .filter_map(|b| b["text"].as_str())
                .collect();
            // input_tokens excludes cache reads and writes; writes bill as input here.
            let u = &v["usage"];
            let count = |k: &str| u[k].as_u64().unwrap_or(0);
            let usage = Usage {
                input: count("input_tokens") + count("cache_creation_input_tokens"),
                cached: count("cache_read_input_tokens"),
                output: count("output_tokens"),
            };
            (text, usage)
        }
        Protocol::OpenAi => {
            let Some(text) = v["choices"][0]["message"]["content"].as_str() else {
                return malformed("no choices[0].message.content");
            };
            // prompt_tokens includes the cached ones (prompt_tokens_details.cached_tokens).
            let u = &v["usage"];
            let prompt = u["prompt_tokens"].as_u64().unwrap_or(0);
            let cached = u["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or(0)
                .min(prompt);
            let usage = Usage {
                input: prompt - cached,
                cached,
                output: u["completion_tokens"].as_u64().unwrap_or(0),
            };
            (text.to_string(), usage)
        }
    };
    Attempt::Done(ChatResponse {
        cost_usd: price.cost(&usage),
        text,
        usage,
        provider: name.to_string(),
        model: model.to_string(),
        seconds: 0.0,
    })
}
