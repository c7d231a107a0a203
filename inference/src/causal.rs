//! A causal-LM runner for optimum-style ONNX exports of llama, mistral, qwen2 and phi-3
//! (inputs `input_ids`, `attention_mask`, `position_ids`, `past_key_values.N.key/value`;
//! outputs `logits`, `present.N.key/value`): prefill, then one token a step with the
//! key/value cache fed back as it came out; greedy or seeded temperature/top-p sampling,
//! stop sequences, a token limit, the family's chat template, and tokens/s.
//!
//! The model directory holds `model.onnx`, `tokenizer.json` and `config.json`
//! (`model_type`, `eos_token_id`), as optimum writes them. Users bring models by path;
//! nothing is downloaded.

use std::path::Path;
use std::time::{Duration, Instant};

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType};
use tokenizers::Tokenizer;

use crate::runtime::{open_session, Provider, SessionSettings};
use crate::InferenceError;

/// Model families whose chat templates and export names this runner knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Phi3,
}

impl Family {
    /// From `config.json`'s `model_type`.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "llama" => Some(Family::Llama),
            "mistral" => Some(Family::Mistral),
            "qwen2" => Some(Family::Qwen2),
            "phi3" => Some(Family::Phi3),
            _ => None,
        }
    }

    /// The prompt for one system and one user message, ending where the assistant's turn
    /// begins (each family's own template, as its tokenizer_config.json writes it).
    pub fn chat_prompt(&self, system: &str, user: &str) -> String {
        match self {
            Family::Llama => format!(
                "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>\
                 <|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>\
                 <|start_header_id|>assistant<|end_header_id|>\n\n"
            ),
            // Mistral's template has no system role: it leads the first user turn.
            Family::Mistral => format!("<s>[INST] {system}\n\n{user} [/INST]"),
            Family::Qwen2 => format!(
                "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
            ),
            Family::Phi3 => {
                format!("<|system|>\n{system}<|end|>\n<|user|>\n{user}<|end|>\n<|assistant|>\n")
            }
        }
    }
}

/// How to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 is greedy (argmax); above 0 samples from the softened distribution.
    pub temperature: f32,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches this.
    pub top_p: f32,
    pub seed: u64,
    /// Generation stops at the first of these in the generated text, which is cut there.
    pub stop: Vec<String>,
    /// Generation stops when this passes (what was generated so far is kept).
    pub deadline: Option<Instant>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
            deadline: None,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndOfSequence,
    StopSequence,
    MaxTokens,
    Deadline,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub stop: StopReason,
    pub prefill: Duration,
    pub decode: Duration,
}

impl Generation {
    /// Prompt tokens per second of the prefill.
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }

    /// Generated tokens per second after the first (each one model step).
    pub fn decode_tokens_per_second(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// A loaded causal LM. Runs take `&mut self` (one session, one sequence at a time).
#[derive(Debug)]
pub struct CausalLm {
    session: Session,
    tokenizer: Tokenizer,
    family: Family,
    provider: Provider,
    layers: usize,
    kv_heads: i64,
    head_dim: i64,
    position_ids: bool,
    eos: Vec<u32>,
}

impl CausalLm {
    pub fn open(dir: &Path, settings: &SessionSettings) -> Result<Self, InferenceError> {
        let model_err = |m: String| InferenceError::Model(format!("{}: {m}", dir.display()));
        let config_text = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| model_err(format!("config.json: {e}")))?;
        let config: serde_json::Value = serde_json::from_str(&config_text)
            .map_err(|e| model_err(format!("config.json: {e}")))?;
        let model_type = config["model_type"].as_str().unwrap_or("");
        let family = Family::from_model_type(model_type).ok_or_else(|| {
            model_err(format!(
                "model_type {model_type:?} is not one of llama, mistral, qwen2, phi3"
            ))
        })?;
        let eos: Vec<u32> = match &config["eos_token_id"] {
            serde_json::Value::Number(n) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|n| n as u32)
                .collect(),
            _ => Vec::new(),
        };
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| model_err(format!("tokenizer.json: {e}")))?;
        let (session, provider) = open_session(&dir.join("model.onnx"), settings)?;

        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for needed in ["input_ids", "attention_mask"] {
            if !names.contains(&needed) {
                return Err(model_err(format!("model inputs {names:?} lack {needed}")));
            }
        }
        let layers = (0..)
            .take_while(|i| names.contains(&format!("past_key_values.{i}.key").as_str()))
            .count();
        if layers == 0 {
            return Err(model_err(
                "no past_key_values.N.key inputs: export the model with its KV cache \
                 (optimum-cli export onnx --task text-generation-with-past)"
                    .into(),
            ));
        }
        let past = session
            .inputs()
            .iter()
            .find(|i| i.name() == "past_key_values.0.key")
            .map(|i| i.dtype().clone())
            .ok_or_else(|| model_err("no past_key_values.0.key".into()))?;
        if past.tensor_type() != Some(TensorElementType::Float32) {
            return Err(model_err(format!(
                "the KV cache is {:?}; this runner takes float32 exports",
                past.tensor_type()
            )));
        }
        let shape = past
            .tensor_shape()
            .map(|s| s.to_vec())
            .filter(|s| s.len() == 4 && s[1] > 0 && s[3] > 0)
            .ok_or_else(|| {
                model_err("past_key_values.0.key is not [batch, kv_heads, past, head_dim]".into())
            })?;
        Ok(Self {
            position_ids: names.contains(&"position_ids"),
            session,
            tokenizer,
            family,
            provider,
            layers,
            kv_heads: shape[1],
            head_dim: shape[3],
            eos,
        })
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// The token ids of a text, special tokens in it recognised (as chat templates need).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, InferenceError> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| InferenceError::Inference(format!("tokenisation: {e}")))
    }

    /// One model run over `ids` after `past_len` cached positions: the logits of every
    /// position (row-major, `ids.len()` × vocab) and the cache to feed next.
    pub fn forward(
        &mut self,
        ids: &[u32],
        past: Option<Vec<DynValue>>,
        past_len: usize,
    ) -> Result<(Vec<f32>, usize, Vec<DynValue>), InferenceError> {
        let err = |e: ort::Error| InferenceError::Inference(e.to_string());
        let n = ids.len();
        let total = past_len + n;
        let mut inputs: Vec<(String, SessionInputValue<'static>)> =
            Vec::with_capacity(3 + 2 * self.layers);
        let input_ids: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
        inputs.push((
            "input_ids".into(),
            Tensor::from_array(([1usize, n], input_ids))
                .map_err(err)?
                .into(),
        ));
        inputs.push((
            "attention_mask".into(),
            Tensor::from_array(([1usize, total], vec![1i64; total]))
                .map_err(err)?
                .into(),
        ));
        if self.position_ids {
            let positions: Vec<i64> = (past_len as i64..total as i64).collect();
            inputs.push((
                "position_ids".into(),
                Tensor::from_array(([1usize, n], positions))
                    .map_err(err)?
                    .into(),
            ));
        }
        let past = match past {
            Some(p) if p.len() == 2 * self.layers => p,
            _ => {
                let empty = || {
                    Tensor::from_array((
                        [1usize, self.kv_heads as usize, 0, self.head_dim as usize],
                        Vec::<f32>::new(),
                    ))
                    .map(|t| t.into_dyn())
                };
                (0..2 * self.layers)
                    .map(|_| empty())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(err)?
            }
        };
        for (i, value) in past.into_iter().enumerate() {
            let kind = if i % 2 == 0 { "key" } else { "value" };
            inputs.push((format!("past_key_values.{}.{kind}", i / 2), value.into()));
        }
        let mut outputs = self.session.run(inputs).map_err(err)?;
        let (shape, logits) = outputs["logits"].try_extract_tensor::<f32>().map_err(err)?;
        let vocab = shape.last().copied().unwrap_or(0).max(0) as usize;
        let logits = logits.to_vec();
        let mut present = Vec::with_capacity(2 * self.layers);
        for layer in 0..self.layers {
            for kind in ["key", "value"] {
                let name = format!("present.{layer}.{kind}");
                present.push(outputs.remove(&name).ok_or_else(|| {
                    InferenceError::Model(format!("the model has no output {name}"))
                })?);
            }
        }
        Ok((logits, vocab, present))
    }

    /// Generates a continuation of `prompt` (already templated, see
    /// [`Family::chat_prompt`]).
    pub fn generate(
        &mut self,
        prompt: &str,
        options: &GenerateOptions,
    ) -> Result<Generation, InferenceError> {
        let prompt_ids = self.encode(prompt)?;
        if prompt_ids.is_empty() {
            return Err(InferenceError::Inference("empty prompt".into()));
        }
        let mut rng = SplitMix64(options.seed);
        let started = Instant::now();
        let (logits, vocab, mut cache) = self.forward(&prompt_ids, None, 0)?;
        let prefill = started.elapsed();
        let mut next_logits = logits[logits.len() - vocab..].to_vec();
        let mut position = prompt_ids.len();
        let mut tokens: Vec<u32> = Vec::new();
        let mut text = String::new();
        let mut stop = StopReason::MaxTokens;
        let decode_started = Instant::now();
        while tokens.len() < options.max_new_tokens {
            let token = sample(&next_logits, options, &mut rng);
            if self.eos.contains(&token) {
                stop = StopReason::EndOfSequence;
                break;
            }
            tokens.push(token);
            text = self
                .tokenizer
                .decode(&tokens, true)
                .map_err(|e| InferenceError::Inference(format!("decoding: {e}")))?;
            if let Some(at) = options
                .stop
                .iter()
                .filter_map(|s| text.find(s.as_str()))
                .min()
            {
                text.truncate(at);
                stop = StopReason::StopSequence;
                break;
            }
            if tokens.len() == options.max_new_tokens {
                break;
            }
            if options.deadline.is_some_and(|d| Instant::now() >= d) {
                stop = StopReason::Deadline;
                break;
            }
            let (logits, _, present) = self.forward(&[token], Some(cache), position)?;
            cache = present;
            position += 1;
            next_logits = logits;
        }
        Ok(Generation {
            text,
            tokens,
            prompt_tokens: prompt_ids.len(),
            stop,
            prefill,
            decode: decode_started.elapsed(),
        })
    }
}

/// Picks the next token: argmax at temperature 0, else a draw from the top-p nucleus of
/// the softmax at that temperature.
fn sample(logits: &[f32], options: &GenerateOptions, rng: &mut SplitMix64) -> u32 {
    if options.temperature <= 0.0 {
        return argmax(logits);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, f64::from((l - max) / options.temperature).exp()))
        .collect();
    let sum: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top_p = f64::from(options.top_p.clamp(0.0, 1.0)) * sum;
    let mut kept = 0.0;
    let mut cut = probs.len();
    for (i, p) in probs.iter().enumerate() {
        kept += p.1;
        if kept >= top_p {
            cut = i + 1;
            break;
        }
    }
    probs.truncate(cut.max(1));
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut draw = rng.next_f64() * total;
    for (token, p) in &probs {
        if draw < *p {
            return *token;
        }
        draw -= p;
    }
    probs.last().map(|p| p.0).unwrap_or_else(|| argmax(logits))
}

/// The index of the largest logit (greedy decoding's choice).
pub fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32)
        .unwrap_or(0)
}

/// A small seeded generator (SplitMix64): reproducible draws without another dependency.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax_and_top_p_keeps_the_nucleus() {
        let logits = [0.0, 5.0, 1.0, 4.9];
        let greedy = GenerateOptions::default();
        let mut rng = SplitMix64(1);
        assert_eq!(sample(&logits, &greedy, &mut rng), 1);
        // Tokens 1 and 3 hold ~97% of the mass at temperature 1: top_p 0.9 never draws 0 or 2.
        let nucleus = GenerateOptions {
            temperature: 1.0,
            top_p: 0.9,
            ..GenerateOptions::default()
        };
        let draws: Vec<u32> = (0..500)
            .map(|_| sample(&logits, &nucleus, &mut rng))
            .collect();
        assert!(draws.iter().all(|t| *t == 1 || *t == 3), "{draws:?}");
        assert!(draws.contains(&1) && draws.contains(&3));
        // Without a nucleus, every token turns up eventually.
        let hot = GenerateOptions {
            temperature: 5.0,
            top_p: 1.0,
            ..GenerateOptions::default()
        };
        let draws: Vec<u32> = (0..2000).map(|_| sample(&logits, &hot, &mut rng)).collect();
        assert!((0..4).all(|t| draws.contains(&t)));
    }

    #[test]
    fn the_seed_decides_the_draws() {
        let a: Vec<u64> = (0..4)
            .scan(SplitMix64(42), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..4)
            .scan(SplitMix64(42), |r, _| Some(r.next_u64()))
            .collect();
        let c: Vec<u64> = (0..4)
            .scan(SplitMix64(43), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn chat_templates_put_the_messages_in_each_familys_markers() {
        let q = Family::Qwen2.chat_prompt("S", "U");
        assert_eq!(q, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
        assert!(Family::Llama
            .chat_prompt("S", "U")
            .ends_with("<|start_header_id|>assistant<|end_header_id|>\n\n"));
        assert_eq!(
            Family::Mistral.chat_prompt("S", "U"),
            "<s>[INST] S\n\nU [/INST]"
        );
        assert!(Family::Phi3
            .chat_prompt("S", "U")
            .starts_with("<|system|>\nS<|end|>\n<|user|>\nU<|end|>"));
        assert_eq!(Family::from_model_type("qwen2"), Some(Family::Qwen2));
        assert_eq!(Family::from_model_type("gpt2"), None);
    }
}
