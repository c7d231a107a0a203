//! LLM engines: a chat model proposes suites inside the shared refinement loop, from
//! prompts built out of the loop's feedback (`prompt.rs`). Two models:
//!
//! - [`LocalModel`]: a causal LM on ONNX Runtime (`--engine local-llm --local-model`, an
//!   optimum export), on the device `--device` chose, one generation at a time per
//!   process. Nothing is downloaded.
//! - [`CloudModel`]: Anthropic or OpenAI-compatible providers behind a fallback chain with
//!   retries and circuit breakers (`qefleet-cloud`), for the cloud pool.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use qefleet_cloud::{BreakerState, ChatRequest, CloudError, FallbackChain};
use qefleet_inference::causal::{CausalLm, Family, GenerateOptions};
use qefleet_inference::{InferenceError, SessionSettings};
use qefleet_schemas::TokenUsage;

use super::prompt::{self, extract_python};
use super::python::{find_python, Workspace};
use super::refine::{Proposal, ProposalFuture, Proposer, RefineSettings, Refiner, RoundFeedback};
use crate::engine::{Engine, EngineError, EngineFuture, EngineRequest, InferenceUsage};
use crate::sandbox::{Limits, Sandbox};

/// What a chat model answered, with what it cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    pub text: String,
    pub tokens: TokenUsage,
    pub cost_usd: f64,
    /// Seconds on a local model (none for a remote one).
    pub local_seconds: Option<f64>,
}

pub type CompletionFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Completion, EngineError>> + Send + 'a>>;

/// A model an LLM engine proposes with.
pub trait ChatModel: Send + Sync + std::fmt::Debug {
    /// The engine name on results and metrics.
    fn engine_name(&self) -> &str;
    /// The ONNX Runtime execution provider of a local model.
    fn execution_provider(&self) -> Option<String> {
        None
    }
    /// Circuit-breaker states of a remote model's providers.
    fn breakers(&self) -> Vec<(String, BreakerState)> {
        Vec::new()
    }
    fn complete<'a>(
        &'a self,
        system: &'a str,
        user: &'a str,
        deadline: Instant,
    ) -> CompletionFuture<'a>;
}

/// Knobs of an LLM engine; the refinement loop has its own.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    pub refine: RefineSettings,
    /// Prompts are trimmed to this many characters (lowest-priority parts first).
    pub max_prompt_chars: usize,
}

impl Default for LlmSettings {
    fn default() -> Self {
        Self {
            refine: RefineSettings::default(),
            max_prompt_chars: 12_000,
        }
    }
}

/// An engine whose proposals come from a chat model.
#[derive(Debug, Clone)]
pub struct LlmEngine<M> {
    sandbox: Sandbox,
    model: Arc<M>,
    settings: LlmSettings,
}

impl<M: ChatModel> LlmEngine<M> {
    pub async fn new(model: M, python: Option<PathBuf>, settings: LlmSettings) -> Self {
        let sandbox = Sandbox::new(python.unwrap_or_else(find_python), Limits::default()).await;
        Self {
            sandbox,
            model: Arc::new(model),
            settings,
        }
    }
}

impl<M: ChatModel + 'static> Engine for LlmEngine<M> {
    fn name(&self) -> &str {
        self.model.engine_name()
    }

    fn execution_provider(&self) -> Option<String> {
        self.model.execution_provider()
    }

    fn breakers(&self) -> Vec<(String, BreakerState)> {
        self.model.breakers()
    }

    fn generate<'a>(&'a self, request: EngineRequest<'a>) -> EngineFuture<'a> {
        Box::pin(async move {
            let refine = self.settings.refine;
            let deadline = Instant::now() + request.time_budget.min(refine.budget);
            let job = &request.job.job;
            let workspace = Workspace::new(&job.module_name, &job.source)?;
            // An escalated job starts from the local worker's suite.
            let seed = request
                .job
                .escalation
                .as_ref()
                .and_then(|e| e.local_result.test_file.as_deref());
            let mut proposer = Proposing {
                model: self.model.as_ref(),
                max_prompt_chars: self.settings.max_prompt_chars,
                module_name: &job.module_name,
                source: &job.source,
                target: job.target_function.as_deref(),
                last: None,
                usage: None,
                max_usd: job.budget.max_usd,
                spent_usd: 0.0,
                examples: request.examples,
            };
            let mut output = Refiner {
                sandbox: &self.sandbox,
                workspace: &workspace,
                module_name: &job.module_name,
                settings: refine,
            }
            .refine(
                &mut proposer,
                refine.max_rounds(request.job.complexity.class),
                deadline,
                seed,
            )
            .await?;
            output.inference = proposer.usage;
            Ok(output)
        })
    }
}

/// One job's proposals.
struct Proposing<'a, M> {
    model: &'a M,
    max_prompt_chars: usize,
    module_name: &'a str,
    source: &'a str,
    target: Option<&'a str>,
    /// The last suite proposed: the same one again is nothing new.
    last: Option<String>,
    /// Local model time and tokens, every proposal counted.
    usage: Option<InferenceUsage>,
    /// The job's `budget.max_usd`: no call starts once the job has spent it (the call
    /// that crosses it completes, so a job may overshoot by one exchange).
    max_usd: Option<f64>,
    spent_usd: f64,
    /// Suites of similar past jobs (ReasoningBank), in every prompt while they fit.
    examples: &'a [String],
}

impl<M: ChatModel> Proposer for Proposing<'_, M> {
    fn propose<'a>(
        &'a mut self,
        feedback: &'a RoundFeedback,
        deadline: Instant,
    ) -> ProposalFuture<'a> {
        Box::pin(async move {
            if let Some(cap) = self.max_usd.filter(|cap| self.spent_usd >= *cap) {
                tracing::info!(
                    spent_usd = self.spent_usd,
                    cap,
                    "the job's budget.max_usd is spent: no further model call"
                );
                return Ok(Proposal::default());
            }
            let built = prompt::build(
                &prompt::Feedback {
                    module_name: self.module_name,
                    source: self.source,
                    target_function: self.target,
                    round: feedback.round.saturating_sub(1),
                    uncovered_lines: &feedback.uncovered_lines,
                    uncovered_branches: &feedback.uncovered_branches,
                    survivors: &feedback.survivors,
                    failing_output: feedback.failing_output.as_deref(),
                    current_suite: feedback.best_suite.as_deref(),
                    examples: self.examples,
                },
                self.max_prompt_chars,
            );
            let completion = self
                .model
                .complete(&built.system, &built.user, deadline)
                .await?;
            self.spent_usd += completion.cost_usd;
            if let Some(seconds) = completion.local_seconds {
                let usage = self.usage.get_or_insert_with(InferenceUsage::default);
                usage.seconds += seconds;
                usage.tokens += completion.tokens.completion;
            }
            tracing::debug!(
                round = feedback.round,
                engine = self.model.engine_name(),
                prompt_tokens = completion.tokens.prompt,
                completion_tokens = completion.tokens.completion,
                "LLM proposal"
            );
            // The same suite again is nothing new (its tokens and cost still count).
            let suite = extract_python(&completion.text);
            let test_file = (self.last.as_deref() != Some(suite.as_str())).then_some(suite);
            if let Some(new) = &test_file {
                self.last = Some(new.clone());
            }
            Ok(Proposal {
                test_file,
                tokens: completion.tokens,
                cost_usd: completion.cost_usd,
                ..Proposal::default()
            })
        })
    }
}

/// A causal LM on ONNX Runtime.
#[derive(Debug)]
pub struct LocalModel {
    model: Arc<Mutex<CausalLm>>,
    family: Family,
    provider: String,
    options: GenerateOptions,
}

impl LocalModel {
    /// Loads the model off the async threads.
    pub async fn open(
        model_dir: &Path,
        session: SessionSettings,
        options: GenerateOptions,
    ) -> Result<Self, InferenceError> {
        let dir = model_dir.to_path_buf();
        let model = tokio::task::spawn_blocking(move || CausalLm::open(&dir, &session))
            .await
            .map_err(|e| InferenceError::Runtime(format!("model loading stopped: {e}")))??;
        tracing::info!(model = %model_dir.display(), family = ?model.family(), provider = %model.provider(), "local LLM ready");
        Ok(Self {
            family: model.family(),
            provider: model.provider().to_string(),
            model: Arc::new(Mutex::new(model)),
            options,
        })
    }
}

impl ChatModel for LocalModel {
    fn engine_name(&self) -> &str {
        "local-llm"
    }

    fn execution_provider(&self) -> Option<String> {
        Some(self.provider.clone())
    }

    fn complete<'a>(
        &'a self,
        system: &'a str,
        user: &'a str,
        deadline: Instant,
    ) -> CompletionFuture<'a> {
        Box::pin(async move {
            let text = self.family.chat_prompt(system, user);
            let options = GenerateOptions {
                deadline: Some(deadline),
                ..self.options.clone()
            };
            let model = self.model.clone();
            let generation = tokio::task::spawn_blocking(move || {
                let mut model = model
                    .lock()
                    .map_err(|_| InferenceError::Runtime("the model lock is poisoned".into()))?;
                model.generate(&text, &options)
            })
            .await
            .map_err(|e| EngineError::Transient(format!("generation stopped: {e}")))?
            .map_err(|e| match e {
                InferenceError::Inference(m) => EngineError::JobFailed(format!("local LLM: {m}")),
                other => EngineError::Transient(other.to_string()),
            })?;
            tracing::debug!(
                tokens = generation.tokens.len(),
                stop = ?generation.stop,
                decode_tps = generation.decode_tokens_per_second(),
                "local LLM generation"
            );
            Ok(Completion {
                local_seconds: Some((generation.prefill + generation.decode).as_secs_f64()),
                tokens: TokenUsage {
                    prompt: generation.prompt_tokens as u64,
                    completion: generation.tokens.len() as u64,
                },
                text: generation.text,
                cost_usd: 0.0,
            })
        })
    }
}

/// Cloud providers behind a fallback chain.
#[derive(Debug)]
pub struct CloudModel {
    pub chain: FallbackChain,
    pub max_tokens: u32,
    pub temperature: f32,
}

impl ChatModel for CloudModel {
    fn engine_name(&self) -> &str {
        "cloud"
    }

    fn breakers(&self) -> Vec<(String, BreakerState)> {
        self.chain
            .providers()
            .iter()
            .map(|p| (p.name().to_string(), p.breaker_state()))
            .collect()
    }

    fn complete<'a>(
        &'a self,
        system: &'a str,
        user: &'a str,
        deadline: Instant,
    ) -> CompletionFuture<'a> {
        Box::pin(async move {
            let request = ChatRequest {
                system: system.to_string(),
                user: user.to_string(),
                max_tokens: self.max_tokens,
                temperature: self.temperature,
            };
            // Every cloud failure is the infrastructure's (keys, quotas, outages, a prompt
            // the provider refuses): retried later, dead-lettered with the reason when
            // deliveries run out, never a failed result for the job.
            let response = self
                .chain
                .chat(&request, deadline)
                .await
                .map_err(|e: CloudError| EngineError::Transient(format!("cloud: {e}")))?;
            tracing::debug!(provider = %response.provider, model = %response.model, cost_usd = response.cost_usd, "cloud completion");
            Ok(Completion {
                text: response.text,
                tokens: TokenUsage {
                    prompt: response.usage.input + response.usage.cached,
                    completion: response.usage.output,
                },
                cost_usd: response.cost_usd,
                local_seconds: None,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use qefleet_inference::Device;

    use super::*;
    use crate::engines::test_support::queued;

    const MODULE: &str = "def add(a, b):\n    return a + b\n\n\ndef sign(x):\n    if x < 0:\n        return -1\n    return 1\n";

    /// A tiny generated model (onnx-models/tiny_llm.py) that answers `answer` by heart.
    fn tiny_model(answer: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let answer_file = dir.path().join("answer.txt");
        std::fs::write(&answer_file, answer).expect("write answer");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../onnx-models/tiny_llm.py");
        let status = std::process::Command::new(find_python())
            .arg(script)
            .arg(dir.path().join("model"))
            .arg("--answer")
            .arg(&answer_file)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run tiny_llm.py");
        assert!(status.success());
        dir
    }

    async fn engine(dir: &Path) -> LlmEngine<LocalModel> {
        let session = SessionSettings {
            device: Device::Cpu,
            intra_threads: 1,
            ..SessionSettings::default()
        };
        let model = LocalModel::open(&dir.join("model"), session, GenerateOptions::default())
            .await
            .expect("open the local LLM");
        LlmEngine::new(model, None, LlmSettings::default()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_models_suite_is_run_measured_and_refined() {
        // One failing test among passing ones: the loop drops it and keeps the rest.
        let answer = "```python\nimport calc\n\n\ndef test_add():\n    assert calc.add(2, 3) == 5\n\n\ndef test_sign_negative():\n    assert calc.sign(-4) == -1\n\n\ndef test_wrong():\n    assert calc.add(1, 1) == 3\n```\n";
        let dir = tiny_model(answer);
        let llm = engine(dir.path()).await;
        assert_eq!(llm.execution_provider().as_deref(), Some("cpu"));
        let out = llm
            .generate(EngineRequest {
                job: &queued("calc", MODULE),
                attempt: 1,
                time_budget: Duration::from_secs(60),
                examples: &[],
            })
            .await
            .expect("a suite");
        assert!(out.test_file.contains("def test_add"), "{}", out.test_file);
        assert!(
            !out.test_file.contains("test_wrong"),
            "the failing test stays: {}",
            out.test_file
        );
        assert_eq!((out.tests_passed, out.tests_failed), (2, 0));
        // sign(x) for x >= 0 is never run: not all lines are covered.
        let lines = out.line_coverage.expect("coverage");
        assert!(lines > 0.5 && lines < 1.0, "{lines}");
        // The model repeats itself in round 2: nothing new, the loop ends.
        assert_eq!(out.refinement_rounds, 1);
        assert!(
            out.tokens.prompt > 100 && out.tokens.completion > 0,
            "{:?}",
            out.tokens
        );
        let usage = out.inference.expect("inference usage");
        // Both proposals are counted, the repeated one too (it was generated).
        assert!(
            usage.seconds > 0.0 && usage.tokens == out.tokens.completion,
            "{usage:?} {:?}",
            out.tokens
        );
        assert_eq!(out.tokens.completion % 2, 0, "two identical answers");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_model_with_no_working_test_fails_the_job_clearly() {
        let dir = tiny_model(
            "```python\nimport calc\n\n\ndef test_wrong():\n    assert calc.add(1, 1) == 3\n```\n",
        );
        let err = engine(dir.path())
            .await
            .generate(EngineRequest {
                job: &queued("calc", MODULE),
                attempt: 1,
                time_budget: Duration::from_secs(60),
                examples: &[],
            })
            .await
            .expect_err("no passing test");
        assert!(
            matches!(&err, EngineError::JobFailed(m) if m.contains("no deterministic, passing test")),
            "{err:?}"
        );
    }

    /// A remote-style model: each answer costs $0.01 and extends the suite by one test.
    #[derive(Debug, Default)]
    struct Priced {
        calls: std::sync::atomic::AtomicU32,
    }

    impl ChatModel for Priced {
        fn engine_name(&self) -> &str {
            "priced"
        }

        fn complete<'a>(&'a self, _: &'a str, _: &'a str, _: Instant) -> CompletionFuture<'a> {
            let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let mut suite = "import calc\n".to_string();
            for x in 1..=i64::from(n) {
                let (arg, want) = if x % 2 == 0 { (x, 1) } else { (-x, -1) };
                suite.push_str(&format!(
                    "\n\ndef test_sign_{x}():\n    assert calc.sign({arg}) == {want}\n"
                ));
            }
            Box::pin(async move {
                Ok(Completion {
                    text: suite,
                    cost_usd: 0.01,
                    ..Completion::default()
                })
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_model_call_starts_once_the_jobs_budget_is_spent() {
        for cap in [None, Some(0.005)] {
            let llm = LlmEngine::new(Priced::default(), None, LlmSettings::default()).await;
            let mut job = queued("calc", MODULE);
            job.job.budget.max_usd = cap;
            let out = llm
                .generate(EngineRequest {
                    job: &job,
                    attempt: 1,
                    time_budget: Duration::from_secs(60),
                    examples: &[],
                })
                .await
                .expect("a suite");
            let calls = llm.model.calls.load(std::sync::atomic::Ordering::SeqCst);
            if cap.is_some() {
                assert_eq!(calls, 1, "the first answer spent the budget");
            } else {
                assert!(calls >= 2, "without a cap the loop asks again: {calls}");
            }
            assert!((out.cost_usd - 0.01 * f64::from(calls)).abs() < 1e-12);
            assert!(out.tests_passed >= 1);
        }
    }
}
