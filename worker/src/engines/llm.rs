//! The local LLM engine: a causal LM on ONNX Runtime (`--local-model`, an optimum export)
//! proposes suites inside the shared refinement loop, from prompts built out of the
//! loop's feedback (`prompt.rs`). Nothing is downloaded; the model runs on the device
//! `--device` chose, one generation at a time per process.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use qefleet_inference::causal::{CausalLm, Family, GenerateOptions};
use qefleet_inference::{InferenceError, SessionSettings};
use qefleet_schemas::TokenUsage;

use super::prompt::{self, extract_python};
use super::python::{find_python, Workspace};
use super::refine::{Proposal, ProposalFuture, Proposer, RefineSettings, Refiner, RoundFeedback};
use crate::engine::{Engine, EngineError, EngineFuture, EngineRequest, InferenceUsage};
use crate::sandbox::{Limits, Sandbox};

/// Knobs of the engine; the refinement loop has its own.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    pub generate: GenerateOptions,
    pub refine: RefineSettings,
    /// Prompts are trimmed to this many characters (lowest-priority parts first).
    pub max_prompt_chars: usize,
}

impl Default for LlmSettings {
    fn default() -> Self {
        Self {
            generate: GenerateOptions {
                max_new_tokens: 1024,
                ..GenerateOptions::default()
            },
            refine: RefineSettings::default(),
            max_prompt_chars: 12_000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LocalLlm {
    sandbox: Sandbox,
    model: Arc<Mutex<CausalLm>>,
    family: Family,
    provider: String,
    settings: LlmSettings,
}

impl LocalLlm {
    /// Loads the model (off the async threads) and prepares the sandbox.
    pub async fn open(
        model_dir: &Path,
        session: SessionSettings,
        python: Option<PathBuf>,
        settings: LlmSettings,
    ) -> Result<Self, InferenceError> {
        let dir = model_dir.to_path_buf();
        let model = tokio::task::spawn_blocking(move || CausalLm::open(&dir, &session))
            .await
            .map_err(|e| InferenceError::Runtime(format!("model loading stopped: {e}")))??;
        let sandbox = Sandbox::new(python.unwrap_or_else(find_python), Limits::default()).await;
        tracing::info!(model = %model_dir.display(), family = ?model.family(), provider = %model.provider(), "local LLM ready");
        Ok(Self {
            family: model.family(),
            provider: model.provider().to_string(),
            model: Arc::new(Mutex::new(model)),
            sandbox,
            settings,
        })
    }
}

impl Engine for LocalLlm {
    fn name(&self) -> &str {
        "local-llm"
    }

    fn execution_provider(&self) -> Option<String> {
        Some(self.provider.clone())
    }

    fn generate<'a>(&'a self, request: EngineRequest<'a>) -> EngineFuture<'a> {
        Box::pin(async move {
            let refine = self.settings.refine;
            let deadline = Instant::now() + request.time_budget.min(refine.budget);
            let job = &request.job.job;
            let workspace = Workspace::new(&job.module_name, &job.source)?;
            let mut proposer = Proposing {
                engine: self,
                module_name: &job.module_name,
                source: &job.source,
                target: job.target_function.as_deref(),
                last: None,
                usage: InferenceUsage::default(),
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
            )
            .await?;
            output.inference = Some(proposer.usage);
            Ok(output)
        })
    }
}

/// One job's proposals.
struct Proposing<'a> {
    engine: &'a LocalLlm,
    module_name: &'a str,
    source: &'a str,
    target: Option<&'a str>,
    /// The last suite proposed: the same one again is nothing new.
    last: Option<String>,
    usage: InferenceUsage,
}

impl Proposer for Proposing<'_> {
    fn propose<'a>(
        &'a mut self,
        feedback: &'a RoundFeedback,
        deadline: Instant,
    ) -> ProposalFuture<'a> {
        Box::pin(async move {
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
                    examples: &[],
                },
                self.engine.settings.max_prompt_chars,
            );
            let text = self.engine.family.chat_prompt(&built.system, &built.user);
            let options = GenerateOptions {
                deadline: Some(deadline),
                ..self.engine.settings.generate.clone()
            };
            let model = self.engine.model.clone();
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
            self.usage.seconds += (generation.prefill + generation.decode).as_secs_f64();
            self.usage.tokens += generation.tokens.len() as u64;
            tracing::debug!(
                round = feedback.round,
                prompt_tokens = generation.prompt_tokens,
                tokens = generation.tokens.len(),
                stop = ?generation.stop,
                decode_tps = generation.decode_tokens_per_second(),
                "local LLM proposal"
            );
            let suite = extract_python(&generation.text);
            if self.last.as_deref() == Some(suite.as_str()) {
                return Ok(None);
            }
            self.last = Some(suite.clone());
            Ok(Some(Proposal {
                test_file: suite,
                tokens: TokenUsage {
                    prompt: generation.prompt_tokens as u64,
                    completion: generation.tokens.len() as u64,
                },
                cost_usd: 0.0,
            }))
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

    async fn engine(dir: &Path) -> LocalLlm {
        let session = SessionSettings {
            device: Device::Cpu,
            intra_threads: 1,
            ..SessionSettings::default()
        };
        LocalLlm::open(&dir.join("model"), session, None, LlmSettings::default())
            .await
            .expect("open the local LLM")
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
        assert!(
            usage.seconds > 0.0 && usage.tokens == out.tokens.completion * 2,
            "{usage:?} over two proposals"
        );
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
            })
            .await
            .expect_err("no passing test");
        assert!(
            matches!(&err, EngineError::JobFailed(m) if m.contains("no deterministic, passing test")),
            "{err:?}"
        );
    }
}
