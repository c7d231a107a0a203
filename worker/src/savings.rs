//! Cost and savings of a result. Local compute is priced from the seconds a worker ran
//! the job and its configured $/hour. Savings are measured against a reference cloud model
//! (the first priced provider of a cloud configuration): what the cloud engine would have
//! exchanged with it for the same job and rounds, counted with the model's tokenizer when
//! the configuration names one (4 bytes a token otherwise), priced from the dated table.
//!
//! The estimate of a local job's cloud cost is deliberately low, so savings are not
//! flattered: each of the result's rounds sends the first prompt (instructions and the
//! numbered source) plus, after the first, the current suite; each returns the suite.
//! The feedback lists a real later prompt carries (uncovered lines, survivors, failures)
//! are not counted.

use std::path::Path;

use qefleet_cloud::{CloudConfig, Price, Usage};
use qefleet_inference::TokenCounter;
use qefleet_schemas::{CloudEquivalent, JobSpec, TokenUsage};

use crate::engines::llm::LlmSettings;
use crate::engines::prompt;

/// The cloud model savings are measured against.
#[derive(Debug, Clone)]
pub struct Reference {
    /// `provider/model`.
    pub model: String,
    pub price: Price,
    pub counter: TokenCounter,
    pub max_prompt_chars: usize,
}

impl Reference {
    /// The first provider of `path` (a cloud configuration) that has a price.
    pub fn from_cloud_config(path: &Path) -> Result<Self, String> {
        let config = CloudConfig::from_file(path).map_err(|e| e.to_string())?;
        let Some((entry, price)) = config
            .providers
            .iter()
            .find_map(|p| p.price.as_ref().map(|price| (p, price.price())))
        else {
            return Err(format!(
                "{}: no provider has a price, so savings have no reference; add \"price\" to the model you would otherwise use",
                path.display()
            ));
        };
        let counter = match &entry.tokenizer {
            Some(file) => TokenCounter::from_file(file)?,
            None => TokenCounter::Estimate,
        };
        Ok(Self {
            model: format!("{}/{}", entry.name, entry.model),
            price,
            counter,
            max_prompt_chars: LlmSettings::default().max_prompt_chars,
        })
    }

    /// The tokens the cloud engine would exchange for `job` over `rounds` rounds ending
    /// with `suite`, and their price.
    pub fn estimate(&self, job: &JobSpec, suite: &str, rounds: u32) -> CloudEquivalent {
        let first = prompt::build(
            &prompt::Feedback {
                module_name: &job.module_name,
                source: &job.source,
                target_function: job.target_function.as_deref(),
                ..prompt::Feedback::default()
            },
            self.max_prompt_chars,
        );
        let first = self.counter.count(&first.system) + self.counter.count(&first.user);
        let suite = self.counter.count(suite);
        let rounds = u64::from(rounds.max(1));
        let tokens = TokenUsage {
            prompt: rounds * first + (rounds - 1) * suite,
            completion: rounds * suite,
        };
        self.priced(&tokens, self.counter.label())
    }

    /// `tokens` at the reference price.
    pub fn priced(&self, tokens: &TokenUsage, counted_by: &str) -> CloudEquivalent {
        let usd = self.price.cost(&Usage {
            input: tokens.prompt,
            cached: 0,
            output: tokens.completion,
        });
        CloudEquivalent {
            model: self.model.clone(),
            price_effective: self.price.effective.clone(),
            prompt_tokens: tokens.prompt,
            completion_tokens: tokens.completion,
            usd,
            counted_by: counted_by.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> Reference {
        Reference {
            model: "anthropic/claude".into(),
            price: Price {
                input_per_mtok: 3.0,
                cached_input_per_mtok: None,
                output_per_mtok: 15.0,
                effective: "2026-11-01".into(),
            },
            counter: TokenCounter::Estimate,
            max_prompt_chars: 12_000,
        }
    }

    #[test]
    fn later_rounds_resend_the_suite_and_every_round_returns_it() {
        let job = JobSpec::python("m", "def f(x):\n    return x + 1\n");
        let suite = "import m\n\n\ndef test_f():\n    assert m.f(1) == 2\n"; // 48 bytes
        let one = reference().estimate(&job, suite, 1);
        let three = reference().estimate(&job, suite, 3);
        assert_eq!(one.completion_tokens, 12);
        assert!(one.prompt_tokens > 100, "instructions and source: {one:?}");
        assert_eq!(three.completion_tokens, 36);
        assert_eq!(three.prompt_tokens, 3 * one.prompt_tokens + 2 * 12);
        let usd = (three.prompt_tokens as f64 * 3.0 + 36.0 * 15.0) / 1e6;
        assert!((three.usd - usd).abs() < 1e-12);
        assert_eq!(
            (three.counted_by.as_str(), three.price_effective.as_str()),
            ("estimate", "2026-11-01")
        );
        // No result rounds (a suite found without refining) still costs one exchange.
        assert_eq!(reference().estimate(&job, suite, 0), one);
    }

    #[test]
    fn the_reference_is_the_first_priced_provider_and_its_tokenizer_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cloud.json");
        let tokenizer = qefleet_inference::embed::find_default_model()
            .expect("run ./scripts/setup.sh")
            .join("tokenizer.json");
        std::fs::write(
            &path,
            serde_json::json!({"providers": [
                {"name": "lab", "protocol": "openai", "base_url": "http://127.0.0.1:1", "model": "free"},
                {"name": "anthropic", "protocol": "anthropic", "base_url": "http://127.0.0.1:2", "model": "claude",
                 "tokenizer": tokenizer,
                 "price": {"input_per_mtok": 3.0, "output_per_mtok": 15.0, "effective": "2026-11-01"}}
            ]})
            .to_string(),
        )
        .expect("write");
        let r = Reference::from_cloud_config(&path).expect("reference");
        assert_eq!(r.model, "anthropic/claude");
        assert_eq!(r.counter.label(), "tokenizer");
        std::fs::write(
            &path,
            serde_json::json!({"providers": [
                {"name": "lab", "protocol": "openai", "base_url": "http://127.0.0.1:1", "model": "free"}]})
            .to_string(),
        )
        .expect("write");
        let e = Reference::from_cloud_config(&path).expect_err("no price");
        assert!(e.contains("no provider has a price"), "{e}");
    }
}
