//! The local generator: tests synthesised from the module itself, no LLM.
//!
//! Round by round (TRM-style recursive refinement): synthesise calls, probe them in the
//! sandbox, keep the deterministic ones that execute new lines or show a new exception,
//! render a pytest suite, run it (dropping tests that fail), measure coverage and mutation
//! score, and feed the uncovered lines and surviving mutants back as the literals the next
//! round aims at. The best suite seen is kept; the loop stops on a plateau (quality gains
//! below `plateau`), at the round limit, or at the time budget.

pub mod inputs;
pub mod render;
pub mod targets;

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use qefleet_schemas::Complexity;
use serde::Deserialize;

use super::measure::{measured_output, mutation_in_time_left, MutationRun, MutationSettings};
use super::python::{find_python, helper_outcome, run_python, run_suite, Workspace};
use crate::engine::{Engine, EngineError, EngineFuture, EngineOutput, EngineRequest};
use crate::sandbox::{Limits, Sandbox};
use inputs::{synthesize, Call};
use render::{render, Case, Outcome};
use targets::{find_targets, Target};

const PROBE_SCRIPT: &str = include_str!("probe.py");
const PROBE_FILE: &str = "qefleet_probe.py";
const REQUEST_FILE: &str = "qefleet_probe_request.json";

/// Knobs of the generator and its refinement loop.
#[derive(Debug, Clone, Copy)]
pub struct GeneratorSettings {
    /// Calls synthesised per target in the first round (more in later rounds).
    pub calls_per_target: usize,
    /// Tests kept per target at most.
    pub cases_per_target: usize,
    /// Seconds one probed call may take.
    pub call_timeout: f64,
    /// Stop when a round improves quality by less than this.
    pub plateau: f64,
    pub max_rounds_simple: u32,
    pub max_rounds_complex: u32,
    /// The whole loop's budget (the job's own budget applies when smaller).
    pub refine_budget: Duration,
    /// Mutation testing per round.
    pub mutation_budget: Duration,
    pub max_mutants: u32,
    /// Extra runs of a passing suite, each with another hash seed; a test failing in any
    /// of them is dropped as flaky.
    pub reruns: u32,
}

impl Default for GeneratorSettings {
    fn default() -> Self {
        Self {
            calls_per_target: 24,
            cases_per_target: 10,
            call_timeout: 1.0,
            plateau: 0.01,
            max_rounds_simple: 5,
            max_rounds_complex: 7,
            refine_budget: Duration::from_secs(60),
            mutation_budget: Duration::from_secs(15),
            max_mutants: 40,
            reruns: 2,
        }
    }
}

/// Tests from the module's own structure, measured, refined.
#[derive(Debug, Clone)]
pub struct LocalGenerator {
    sandbox: Sandbox,
    settings: GeneratorSettings,
}

impl LocalGenerator {
    pub fn new(sandbox: Sandbox, settings: GeneratorSettings) -> Self {
        Self { sandbox, settings }
    }

    /// A generator on the given (or default) interpreter with default settings.
    pub async fn probe(python: Option<PathBuf>) -> Self {
        let sandbox = Sandbox::new(python.unwrap_or_else(find_python), Limits::default()).await;
        Self::new(sandbox, GeneratorSettings::default())
    }
}

#[derive(Debug, Deserialize)]
struct Probed {
    id: usize,
    kind: String,
    #[serde(default)]
    lines: Vec<u32>,
    /// The lines of the call itself, without its setup.
    #[serde(default)]
    call_lines: Vec<u32>,
    repr: Option<String>,
    #[serde(default)]
    literal: bool,
    #[serde(default)]
    float: bool,
    exception: Option<String>,
    /// The instance's public attributes after the call: name, repr, is a float.
    #[serde(default)]
    state: Vec<(String, String, bool)>,
}

/// One measured suite.
#[derive(Debug, Clone)]
struct Measured {
    output: EngineOutput,
    quality: f64,
    missing: Vec<u32>,
    survivor_lines: Vec<u32>,
}

impl Engine for LocalGenerator {
    fn name(&self) -> &str {
        "local-generator"
    }

    fn generate<'a>(&'a self, request: EngineRequest<'a>) -> EngineFuture<'a> {
        Box::pin(async move {
            let started = Instant::now();
            let budget = request.time_budget.min(self.settings.refine_budget);
            let deadline = started + budget;
            let job = &request.job.job;
            let mut targets =
                find_targets(&job.source).map_err(|e| EngineError::JobFailed(e.to_string()))?;
            if let Some(only) = &job.target_function {
                targets.retain(|t| &t.qualname() == only);
            }
            if targets.is_empty() {
                return Err(EngineError::JobFailed(format!(
                    "no public function or method to test in {}",
                    job.module_name
                )));
            }
            let alias = job
                .module_name
                .rsplit('.')
                .next()
                .unwrap_or(&job.module_name)
                .to_string();
            let workspace = Workspace::new(&job.module_name, &job.source)?;
            workspace.write(PROBE_FILE, PROBE_SCRIPT)?;
            let max_rounds = match request.job.complexity.class {
                Complexity::Simple | Complexity::Moderate => self.settings.max_rounds_simple,
                Complexity::Complex | Complexity::VeryComplex => self.settings.max_rounds_complex,
            };
            let mut probed: HashSet<String> = HashSet::new();
            let mut cases: Vec<Case> = Vec::new();
            let mut focus: Vec<String> = Vec::new();
            let mut best: Option<Measured> = None;
            let mut previous = 0.0;
            let mut rounds = 0;
            for round in 1..=max_rounds {
                if round > 1
                    && deadline.saturating_duration_since(Instant::now()) < Duration::from_secs(3)
                {
                    break;
                }
                rounds = round;
                let per_target = self.settings.calls_per_target * round as usize;
                let calls: Vec<Call> =
                    synthesize(&alias, &targets, per_target, u64::from(round), &focus)
                        .into_iter()
                        .filter(|c| probed.insert(c.key()))
                        .collect();
                let outcomes = self
                    .probe_calls(&workspace, &job.module_name, &alias, &calls, deadline)
                    .await?;
                let observed = harvest(&outcomes);
                keep_new_cases(&mut cases, &calls, outcomes, self.settings.cases_per_target);
                let measured = self
                    .measure(
                        &workspace,
                        &job.module_name,
                        &alias,
                        &targets,
                        &mut cases,
                        deadline,
                    )
                    .await?;
                tracing::debug!(
                    round,
                    quality = measured.quality,
                    cases = cases.len(),
                    "refinement round"
                );
                let gain = measured.quality - previous;
                previous = previous.max(measured.quality);
                focus = focus_literals(&targets, &measured.missing, &measured.survivor_lines);
                // Values the module itself produced are inputs it understands (a number
                // formatted by one function is what its parser accepts).
                for value in observed {
                    if !focus.contains(&value) {
                        focus.push(value);
                    }
                }
                if best.as_ref().is_none_or(|b| measured.quality > b.quality) {
                    best = Some(measured);
                }
                if round > 1 && gain < self.settings.plateau {
                    break;
                }
            }
            let mut best =
                best.ok_or_else(|| EngineError::JobFailed("no test could be generated".into()))?;
            if best.output.tests_total == 0 {
                return Err(EngineError::JobFailed(format!(
                    "no deterministic, passing test could be generated for {}",
                    job.module_name
                )));
            }
            best.output.refinement_rounds = rounds;
            Ok(best.output)
        })
    }
}

impl LocalGenerator {
    async fn probe_calls(
        &self,
        workspace: &Workspace,
        module_name: &str,
        alias: &str,
        calls: &[Call],
        deadline: Instant,
    ) -> Result<Vec<Probed>, EngineError> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let request = serde_json::json!({
            "module": module_name,
            "alias": alias,
            "module_file": workspace.module_file.display().to_string(),
            "timeout": self.settings.call_timeout,
            "calls": calls.iter().enumerate().map(|(i, c)| serde_json::json!({"id": i, "expr": c.expr, "setup": c.setup.join("\n")})).collect::<Vec<_>>(),
        });
        workspace.write(REQUEST_FILE, &request.to_string())?;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(5));
        let finished =
            run_python(&self.sandbox, workspace, &[PROBE_FILE, REQUEST_FILE], left).await?;
        helper_outcome(&finished, "probing the module")?;
        serde_json::from_str(finished.stdout.trim())
            .map_err(|e| EngineError::Transient(format!("unreadable probe output: {e}")))
    }

    /// Renders, runs (dropping failing tests once), and measures the current cases.
    async fn measure(
        &self,
        workspace: &Workspace,
        module_name: &str,
        alias: &str,
        targets: &[Target],
        cases: &mut Vec<Case>,
        deadline: Instant,
    ) -> Result<Measured, EngineError> {
        const TEST_FILE: &str = "test_generated.py";
        let mut rendered = render(module_name, alias, targets, cases);
        workspace.write(TEST_FILE, &rendered.text)?;
        let suite_deadline = deadline.max(Instant::now() + Duration::from_secs(20));
        let mut run = run_suite(&self.sandbox, workspace, TEST_FILE, suite_deadline).await?;
        if run.failed > 0 {
            let failing: HashSet<usize> = run
                .failed_tests
                .iter()
                .filter_map(|t| rendered.tests.get(t).copied())
                .collect();
            cases.retain(|c| !failing.contains(&c.call.target));
            rendered = render(module_name, alias, targets, cases);
            workspace.write(TEST_FILE, &rendered.text)?;
            run = run_suite(&self.sandbox, workspace, TEST_FILE, suite_deadline).await?;
        }
        if run.failed == 0 && run.total > 0 {
            let flaky = self
                .flaky_tests(workspace, TEST_FILE, suite_deadline)
                .await?;
            if !flaky.is_empty() {
                let drop: HashSet<usize> = flaky
                    .iter()
                    .filter_map(|t| rendered.tests.get(t).copied())
                    .collect();
                tracing::debug!(?flaky, "dropping flaky tests");
                cases.retain(|c| !drop.contains(&c.call.target));
                rendered = render(module_name, alias, targets, cases);
                workspace.write(TEST_FILE, &rendered.text)?;
                run = run_suite(&self.sandbox, workspace, TEST_FILE, suite_deadline).await?;
            }
        }
        let mutation = mutation_in_time_left(
            &self.sandbox,
            workspace,
            module_name,
            TEST_FILE,
            &run,
            deadline,
            MutationSettings {
                budget: self.settings.mutation_budget,
                max_mutants: self.settings.max_mutants,
                seed: 1,
                min_time_left: Duration::from_secs(3),
            },
        )
        .await?;
        let mutation_score = mutation.as_ref().and_then(MutationRun::score);
        let survivor_lines = mutation
            .map(|m| m.survivors.iter().map(|s| s.line).collect())
            .unwrap_or_default();
        let output = measured_output(rendered.text, &run, mutation_score);
        Ok(Measured {
            quality: output.quality_score.unwrap_or(0.0),
            output,
            missing: run.missing_lines,
            survivor_lines,
        })
    }
}

impl LocalGenerator {
    /// Test functions that fail in any of the reruns (each with its own hash seed).
    async fn flaky_tests(
        &self,
        workspace: &Workspace,
        test_file: &str,
        deadline: Instant,
    ) -> Result<Vec<String>, EngineError> {
        let mut flaky: Vec<String> = Vec::new();
        for rerun in 1..=self.settings.reruns {
            let seed = rerun.to_string();
            let left = deadline.saturating_duration_since(Instant::now());
            if left < Duration::from_secs(1) {
                break;
            }
            let finished = self
                .sandbox
                .run_python(
                    workspace.path(),
                    &[
                        "-m",
                        "pytest",
                        "-q",
                        "-p",
                        "no:cacheprovider",
                        "--junitxml=rerun.xml",
                        test_file,
                    ],
                    &[("PYTHONHASHSEED", &seed)],
                    left,
                )
                .await
                .map_err(|e| EngineError::Transient(e.to_string()))?;
            if finished.success() {
                continue;
            }
            let report =
                std::fs::read_to_string(workspace.path().join("rerun.xml")).unwrap_or_default();
            for name in super::python::junit_failed_tests(&report) {
                if !flaky.contains(&name) {
                    flaky.push(name);
                }
            }
        }
        Ok(flaky)
    }
}

/// Adds probed calls that are deterministic and assertable and execute new lines, are
/// the first value for their target, or show a new exception for it.
fn keep_new_cases(cases: &mut Vec<Case>, calls: &[Call], probed: Vec<Probed>, per_target: usize) {
    let mut covered: BTreeSet<u32> = cases.iter().flat_map(|c| c.lines.iter().copied()).collect();
    for p in probed {
        let Some(call) = calls.get(p.id) else {
            continue;
        };
        let outcome = match (p.kind.as_str(), p.repr, p.exception) {
            ("value", Some(repr), _) => Outcome::Value {
                repr,
                literal: p.literal,
                float: p.float,
            },
            ("raises", _, Some(exc)) => Outcome::Raises(exc),
            _ => continue,
        };
        let mine: Vec<&Case> = cases
            .iter()
            .filter(|c| c.call.target == call.target)
            .collect();
        if mine.len() >= per_target {
            continue;
        }
        let new_lines = p.call_lines.iter().any(|l| !covered.contains(l));
        let first_value = matches!(outcome, Outcome::Value { .. })
            && !mine
                .iter()
                .any(|c| matches!(c.outcome, Outcome::Value { .. }));
        let new_exception = match &outcome {
            Outcome::Raises(e) => !mine.iter().any(|c| c.outcome == Outcome::Raises(e.clone())),
            Outcome::Value { .. } => false,
        };
        if new_lines || first_value || new_exception {
            covered.extend(p.call_lines.iter().copied());
            cases.push(Case {
                call: call.clone(),
                outcome,
                lines: p.lines,
                state: p.state,
            });
        }
    }
}

/// Small literal values returned by probed calls, as Python source, at most 24.
fn harvest(probed: &[Probed]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in probed {
        let (Some(repr), true) = (&p.repr, p.literal) else {
            continue;
        };
        let scalar = repr.parse::<f64>().is_ok() || repr.starts_with(['\'', '"']);
        if scalar && repr.len() <= 40 && !out.contains(repr) {
            out.push(repr.clone());
        }
        if out.len() >= 24 {
            break;
        }
    }
    out
}

/// Literals on lines still uncovered or where mutants survived: what the next round
/// should aim at.
fn focus_literals(targets: &[Target], missing: &[u32], survivors: &[u32]) -> Vec<String> {
    let lines: HashSet<u32> = missing.iter().chain(survivors).copied().collect();
    let mut out: Vec<String> = Vec::new();
    for t in targets {
        for (line, lit) in &t.literals {
            if lines.contains(line) && !out.contains(lit) {
                out.push(lit.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use qefleet_schemas::{ComplexityReport, JobSpec, Pool, QueuedJob, RouteDecision, Strategy};

    const MODULE: &str = r#"
class InsufficientFunds(Exception):
    pass


def classify(n: int) -> str:
    if n < 0:
        return "negative"
    if n == 0:
        return "zero"
    if n > 100:
        return "large"
    return "small"


def withdraw(balance: float, amount: float) -> float:
    if amount <= 0:
        raise ValueError("amount must be positive")
    if amount > balance:
        raise InsufficientFunds("not enough")
    return balance - amount


class Counter:
    def __init__(self, start: int = 0):
        self.value = start

    def bump(self, by: int = 1) -> int:
        self.value += by
        return self.value
"#;

    fn queued(source: &str) -> QueuedJob {
        let mut job = JobSpec::python("bank", source);
        job.job_id = Some("gen-test".into());
        QueuedJob {
            schema_version: qefleet_schemas::SCHEMA_VERSION,
            job,
            complexity: ComplexityReport {
                class: Complexity::Simple,
                score: 5.0,
                cyclomatic: 9,
                max_function_cyclomatic: 4,
                code_lines: 25,
                functions: 4,
                async_functions: 0,
                classes: 2,
                branches: 5,
                imports: 0,
            },
            route: RouteDecision {
                pool: Pool::Local,
                subject: "qe.jobs.local.simple".into(),
                router: "test".into(),
                strategy: Strategy::Balanced,
                reasons: vec![],
            },
            submitted_at_ms: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn generates_a_passing_suite_that_covers_and_kills_mutants() {
        let generator = LocalGenerator::probe(None).await;
        let job = queued(MODULE);
        let out = generator
            .generate(EngineRequest {
                job: &job,
                attempt: 1,
                time_budget: Duration::from_secs(90),
            })
            .await
            .expect("generates");
        assert!(out.tests_total >= 5, "{out:?}");
        assert_eq!(out.tests_failed, 0);
        let file = &out.test_file;
        assert!(file.contains("import bank\n"), "{file}");
        assert!(
            file.contains("'negative'") && file.contains("((101,), 'large')"),
            "the literal 100 led to a large input:\n{file}"
        );
        assert!(
            file.contains("pytest.raises(bank.InsufficientFunds)"),
            "{file}"
        );
        assert!(file.contains("pytest.raises(ValueError)"), "{file}");
        assert!(
            file.contains("    obj = bank.Counter(0)\n    assert obj.bump(1) == 1\n    assert obj.value == 1\n"),
            "the instance's state after the call is asserted:\n{file}"
        );
        let line = out.line_coverage.expect("line coverage");
        assert!(line >= 0.95, "line coverage {line}\n{file}");
        let mutation = out.mutation_score.expect("mutation score");
        assert!(mutation >= 0.6, "mutation score {mutation}\n{file}");
        assert!(
            out.refinement_rounds >= 2,
            "stops on a plateau only after a second round"
        );
        assert!(out.quality_score.expect("quality") > 0.7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn methods_are_reached_through_call_sequences_on_instances() {
        // `pop` and `peek` return an item only after a `push`: no single call covers them.
        let source = "class Stack:\n    def __init__(self, capacity: int = 3):\n        self.capacity = capacity\n        self.items = []\n\n    def push(self, x):\n        if len(self.items) >= self.capacity:\n            raise OverflowError(\"full\")\n        self.items.append(x)\n\n    def pop(self):\n        if not self.items:\n            raise IndexError(\"empty\")\n        return self.items.pop()\n\n    def peek(self):\n        if self.items:\n            return self.items[-1]\n        return None\n";
        let generator = LocalGenerator::probe(None).await;
        let out = generator
            .generate(EngineRequest {
                job: &queued(source),
                attempt: 1,
                time_budget: Duration::from_secs(60),
            })
            .await
            .expect("generates");
        let file = &out.test_file;
        assert_eq!(out.tests_failed, 0, "{file}");
        assert_eq!(out.line_coverage, Some(1.0), "{file}");
        assert!(
            file.contains("    obj.push(") && file.contains("    assert obj.pop() == "),
            "{file}"
        );
        assert!(file.contains("    assert obj.items == ["), "{file}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tests_that_fail_under_another_hash_seed_are_dropped() {
        // Eight distinct strings: their set order differs between hash seeds.
        let source = "def order(words: list[str]) -> str:\n    return ','.join(set(words + list('stuvwxyz')))\n\n\ndef total(xs: list) -> int:\n    return len(xs)\n";
        let generator = LocalGenerator::probe(None).await;
        let job = queued(source);
        let out = generator
            .generate(EngineRequest {
                job: &job,
                attempt: 1,
                time_budget: Duration::from_secs(60),
            })
            .await
            .expect("generates");
        assert!(
            out.test_file.contains("def test_total"),
            "{}",
            out.test_file
        );
        assert!(
            !out.test_file.contains("def test_order"),
            "set order depends on the hash seed:\n{}",
            out.test_file
        );
        assert_eq!(out.tests_failed, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_module_without_public_functions_fails_clearly() {
        let generator = LocalGenerator::probe(None).await;
        let job = queued("X = 1\n\ndef _hidden():\n    return 2\n");
        let err = generator
            .generate(EngineRequest {
                job: &job,
                attempt: 1,
                time_budget: Duration::from_secs(30),
            })
            .await
            .expect_err("nothing to test");
        assert!(
            matches!(err, EngineError::JobFailed(ref m) if m.contains("no public function")),
            "{err:?}"
        );
    }
}
