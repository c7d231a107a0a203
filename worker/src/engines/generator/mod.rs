//! The local generator: tests synthesised from the module itself, no LLM.
//!
//! Its side of the shared refinement loop (`refine.rs`): each round it synthesises calls,
//! probes them in the sandbox, keeps the deterministic ones that execute new lines or show
//! a new exception, and renders a pytest suite; the loop runs and measures it and feeds
//! back the uncovered lines and surviving mutants, whose literals the next round aims at,
//! and the tests it removed, whose cases are dropped.

pub mod inputs;
pub mod render;
pub mod targets;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::measure::{MUTANTS_FILE, MUTANTS_SCRIPT};
use super::python::{find_python, helper_outcome, run_python, Workspace};
use super::refine::{Proposal, ProposalFuture, Proposer, RefineSettings, Refiner, RoundFeedback};
use crate::engine::{Engine, EngineError, EngineFuture, EngineRequest};
use crate::sandbox::{Ending, Limits, Sandbox};
use inputs::{synthesize, Call};
use render::{render, Case, Outcome};
use targets::{find_targets, Target};

const PROBE_SCRIPT: &str = include_str!("probe.py");
const PROBE_FILE: &str = "qefleet_probe.py";
const REQUEST_FILE: &str = "qefleet_probe_request.json";

/// Knobs of the generator; the refinement loop has its own.
#[derive(Debug, Clone, Copy)]
pub struct GeneratorSettings {
    /// Calls synthesised per target in the first round (more in later rounds).
    pub calls_per_target: usize,
    /// Tests kept per target at most.
    pub cases_per_target: usize,
    /// Seconds one probed call may take.
    pub call_timeout: f64,
    /// Choose calls also by the mutants their tests would kill (the probe runs them
    /// against mutants of the module), not only by the lines they reach.
    pub mutant_selection: bool,
    pub refine: RefineSettings,
}

impl Default for GeneratorSettings {
    fn default() -> Self {
        Self {
            calls_per_target: 24,
            cases_per_target: 10,
            call_timeout: 1.0,
            mutant_selection: true,
            refine: RefineSettings::default(),
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
    /// The arcs between lines the call itself took.
    #[serde(default)]
    arcs: Vec<(i32, i32)>,
    /// The call returned an iterator, which the probe ran to its end: its test asserts
    /// `list(call)`.
    #[serde(default)]
    consumed: bool,
    repr: Option<String>,
    #[serde(default)]
    literal: bool,
    #[serde(default)]
    float: bool,
    exception: Option<String>,
    /// A `pytest.raises(match=...)` pattern for the exception's message.
    #[serde(rename = "match")]
    message: Option<String>,
    /// The instance's public attributes after the call: name, repr, is a float.
    #[serde(default)]
    state: Vec<(String, String, bool)>,
    /// The call's inspectors (`obj.draw()`) after it: expression, repr, literal, float.
    #[serde(default)]
    observed: Vec<(String, String, bool, bool)>,
    /// Of an `object` result: its public attributes, as `state`.
    #[serde(default)]
    fields: Vec<(String, String, bool)>,
}

/// The mutants a probed call's test would kill that no call before it kills.
#[derive(Debug, Deserialize)]
struct Kills {
    kills_of: usize,
    sites: Vec<u32>,
}

/// Strings the module's regular expressions match (compiled ones and regex strings in
/// its tables), as Python source.
#[derive(Debug, Deserialize)]
struct Samples {
    samples: Vec<String>,
}

/// What one probe run found: each call's outcome, the mutants some calls kill, and
/// strings the module's patterns match (when asked for).
#[derive(Debug, Default)]
struct ProbeRun {
    probed: Vec<Probed>,
    kills: HashMap<usize, Vec<u32>>,
    samples: Vec<String>,
}

impl Engine for LocalGenerator {
    fn name(&self) -> &str {
        "local-generator"
    }

    fn generate<'a>(&'a self, request: EngineRequest<'a>) -> EngineFuture<'a> {
        Box::pin(async move {
            let started = Instant::now();
            let refine = self.settings.refine;
            let deadline = started + request.time_budget.min(refine.budget);
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
            workspace.write(MUTANTS_FILE, MUTANTS_SCRIPT)?;
            let mut proposer = Proposing {
                generator: self,
                workspace: &workspace,
                module_name: &job.module_name,
                alias,
                targets,
                probed: HashSet::new(),
                cases: Vec::new(),
                observed: Vec::new(),
                samples: None,
                tests: BTreeMap::new(),
                seeded: uses_random(&job.source),
            };
            Refiner {
                sandbox: &self.sandbox,
                workspace: &workspace,
                module_name: &job.module_name,
                settings: refine,
            }
            .refine(
                &mut proposer,
                refine.max_rounds(request.job.complexity.class),
                deadline,
                None,
            )
            .await
        })
    }
}

/// The generator's state across the rounds of one job.
struct Proposing<'a> {
    generator: &'a LocalGenerator,
    workspace: &'a Workspace,
    module_name: &'a str,
    alias: String,
    targets: Vec<Target>,
    /// Calls already probed (by setup and expression).
    probed: HashSet<String>,
    cases: Vec<Case>,
    /// Values the module itself returned.
    observed: Vec<String>,
    /// Strings the module's regular expressions match (the first probe samples them;
    /// later rounds try them as first arguments).
    samples: Option<Vec<String>>,
    /// Test function -> target of the last rendered suite.
    tests: BTreeMap<String, usize>,
    /// The module uses `random`: probe and tests seed it.
    seeded: bool,
}

impl Proposer for Proposing<'_> {
    fn propose<'a>(
        &'a mut self,
        feedback: &'a RoundFeedback,
        deadline: Instant,
    ) -> ProposalFuture<'a> {
        Box::pin(async move {
            let dropped: HashSet<usize> = feedback
                .dropped_tests
                .iter()
                .filter_map(|t| self.tests.get(t).copied())
                .collect();
            self.cases.retain(|c| !dropped.contains(&c.call.target));
            // Mutants survive and branches go untaken on lines the suite does execute: their
            // literals are what the next inputs should sit around.
            let survivor_lines: Vec<u32> = feedback
                .survivors
                .iter()
                .map(|s| s.line)
                .chain(
                    feedback
                        .uncovered_branches
                        .iter()
                        .filter_map(|(from, _)| u32::try_from(*from).ok()),
                )
                .collect();
            let mut focus = if feedback.round > 1 {
                focus_literals(&self.targets, &feedback.uncovered_lines, &survivor_lines)
            } else {
                Vec::new()
            };
            // Values the module itself produced are inputs it understands (a number
            // formatted by one function is what its parser accepts).
            for value in &self.observed {
                if !focus.contains(value) {
                    focus.push(value.clone());
                }
            }
            let settings = self.generator.settings;
            let per_target = settings.calls_per_target * feedback.round as usize;
            let calls: Vec<Call> = synthesize(
                &self.alias,
                &self.targets,
                per_target,
                u64::from(feedback.round),
                &focus,
                self.samples.as_deref().unwrap_or_default(),
            )
            .into_iter()
            .filter(|c| self.probed.insert(c.key()))
            .collect();
            let mut run = self.probe_calls(&calls, deadline).await?;
            self.observed = harvest(&run.probed);
            if self.samples.is_none() {
                self.samples = Some(std::mem::take(&mut run.samples));
            }
            let before = self.cases.len();
            keep_new_cases(&mut self.cases, &calls, run, settings.cases_per_target);
            if feedback.round > 1 && self.cases.len() == before && dropped.is_empty() {
                return Ok(Proposal::default());
            }
            let rendered = render(
                self.module_name,
                &self.alias,
                &self.targets,
                &self.cases,
                self.seeded,
            );
            self.tests = rendered.tests;
            Ok(Proposal {
                test_file: Some(rendered.text),
                keep_tests: rendered.pinned,
                ..Proposal::default()
            })
        })
    }
}

impl Proposing<'_> {
    async fn probe_calls(
        &self,
        calls: &[Call],
        deadline: Instant,
    ) -> Result<ProbeRun, EngineError> {
        if calls.is_empty() {
            return Ok(ProbeRun::default());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        // Mutants the kept cases already kill need no other call.
        let mutants = self.generator.settings.mutant_selection.then(|| {
            let killed: BTreeSet<u32> = self
                .cases
                .iter()
                .flat_map(|c| c.kills.iter().copied())
                .collect();
            serde_json::json!({
                "file": self.workspace.path().join(MUTANTS_FILE).display().to_string(),
                "killed": killed,
                "budget": (left.as_secs_f64() / 4.0).min(MUTANT_PROBE_SECONDS),
            })
        });
        let request = serde_json::json!({
            "mutants": mutants,
            "samples": self.samples.is_none(),
            "module": self.module_name,
            "alias": self.alias,
            "module_file": self.workspace.module_file.display().to_string(),
            "timeout": self.generator.settings.call_timeout,
            // Half the time left: measuring what was found needs the rest.
            "budget": left.as_secs_f64() / 2.0,
            "calls": calls.iter().enumerate().map(|(i, c)| serde_json::json!({"id": i, "target": c.target, "expr": c.expr, "setup": c.setup.join("\n"), "observers": c.observers})).collect::<Vec<_>>(),
            // The lines of the tables each target reads, once per target (not per call).
            "tables": self.targets.iter().enumerate().filter(|(_, t)| !t.tables.lines.is_empty()).map(|(i, t)| (i.to_string(), &t.tables.lines)).collect::<HashMap<_, _>>(),
        });
        self.workspace.write(REQUEST_FILE, &request.to_string())?;
        let finished = run_python(
            &self.generator.sandbox,
            self.workspace,
            &[PROBE_FILE, REQUEST_FILE],
            left.max(Duration::from_secs(5)),
        )
        .await?;
        // One line per probed call, then one per call that kills mutants; a run cut off
        // (a call hanging in C code) keeps the calls it finished. A module that does not
        // import fails the job as before.
        let mut run = ProbeRun::default();
        for line in finished.stdout.lines() {
            if let Ok(k) = serde_json::from_str::<Kills>(line) {
                run.kills.insert(k.kills_of, k.sites);
            } else if let Ok(s) = serde_json::from_str::<Samples>(line) {
                run.samples = s.samples;
            } else if let Ok(p) = serde_json::from_str::<Probed>(line) {
                run.probed.push(p);
            }
        }
        match helper_outcome(&finished, "probing the module") {
            Ok(()) => Ok(run),
            Err(e) if !run.probed.is_empty() && finished.ending != Ending::Exited(Some(3)) => {
                tracing::debug!(kept = run.probed.len(), error = %e, "probe cut off; keeping the calls it finished");
                Ok(run)
            }
            Err(e) => Err(e),
        }
    }
}

/// Seconds a probe spends at most running calls against mutants.
const MUTANT_PROBE_SECONDS: f64 = 12.0;

/// Whether the module imports `random` (its draws are only reproducible when seeded).
fn uses_random(source: &str) -> bool {
    source.lines().map(str::trim_start).any(|l| {
        l.starts_with("from random import")
            || l.strip_prefix("import ").is_some_and(|names| {
                names
                    .split(',')
                    .any(|n| n.split_whitespace().next() == Some("random"))
            })
    })
}

/// Adds probed calls that are deterministic and assertable and execute new lines or take
/// new branches (arcs), are the first value for their target, or show a new exception
/// for it (at most `per_target` cases a target), or kill mutants no kept case kills (up
/// to three times as many).
fn keep_new_cases(cases: &mut Vec<Case>, calls: &[Call], run: ProbeRun, per_target: usize) {
    let mut covered: BTreeSet<u32> = cases.iter().flat_map(|c| c.lines.iter().copied()).collect();
    let mut taken: BTreeSet<(i32, i32)> =
        cases.iter().flat_map(|c| c.arcs.iter().copied()).collect();
    let mut killed: BTreeSet<u32> = cases.iter().flat_map(|c| c.kills.iter().copied()).collect();
    let ProbeRun {
        probed, mut kills, ..
    } = run;
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
            ("object", _, _) if !p.fields.is_empty() => Outcome::Object { fields: p.fields },
            ("self", _, _) => Outcome::ReturnsSelf,
            ("raises", _, Some(exception)) => Outcome::Raises {
                exception,
                message: p.message,
            },
            _ => continue,
        };
        let mine: Vec<&Case> = cases
            .iter()
            .filter(|c| c.call.target == call.target)
            .collect();
        let kills = kills.remove(&p.id).unwrap_or_default();
        let new_kills = kills.iter().any(|k| !killed.contains(k));
        if mine.len() >= per_target && !(new_kills && mine.len() < 3 * per_target) {
            continue;
        }
        let new_lines = p.call_lines.iter().any(|l| !covered.contains(l));
        let new_arcs = p.arcs.iter().any(|a| !taken.contains(a));
        let returns = |o: &Outcome| !matches!(o, Outcome::Raises { .. });
        let first_value = returns(&outcome) && !mine.iter().any(|c| returns(&c.outcome));
        let new_exception = match &outcome {
            Outcome::Raises { exception, .. } => !mine.iter().any(
                |c| matches!(&c.outcome, Outcome::Raises { exception: e, .. } if e == exception),
            ),
            Outcome::Value { .. } | Outcome::Object { .. } | Outcome::ReturnsSelf => false,
        };
        if new_lines || new_arcs || first_value || new_exception || new_kills {
            covered.extend(p.call_lines.iter().copied());
            taken.extend(p.arcs.iter().copied());
            killed.extend(kills.iter().copied());
            let mut call = call.clone();
            if p.consumed {
                call.expr = format!("list({})", call.expr);
            }
            cases.push(Case {
                call,
                outcome,
                lines: p.lines,
                state: p.state,
                observed: p.observed,
                pinned: new_kills || (new_arcs && !new_lines),
                kills,
                arcs: p.arcs,
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
    use crate::engines::test_support::queued;

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

    /// Runs a default generator on `source` with a time budget.
    async fn generate(
        source: &str,
        seconds: u64,
    ) -> Result<crate::engine::EngineOutput, EngineError> {
        generate_with(GeneratorSettings::default(), source, seconds).await
    }

    /// The generator's output on `source` at 60 s, every kept test passing.
    async fn passing(source: &str) -> crate::engine::EngineOutput {
        let out = generate(source, 60).await.expect("generates");
        assert_eq!(out.tests_failed, 0, "{}", out.test_file);
        out
    }

    async fn generate_with(
        settings: GeneratorSettings,
        source: &str,
        seconds: u64,
    ) -> Result<crate::engine::EngineOutput, EngineError> {
        let sandbox = Sandbox::new(find_python(), Limits::default()).await;
        LocalGenerator::new(sandbox, settings)
            .generate(EngineRequest {
                job: &queued("bank", source),
                attempt: 1,
                time_budget: Duration::from_secs(seconds),
                examples: &[],
            })
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn generates_a_passing_suite_that_covers_and_kills_mutants() {
        let out = generate(MODULE, 90).await.expect("generates");
        assert!(out.tests_total >= 5, "{out:?}");
        assert_eq!(out.tests_failed, 0);
        let file = &out.test_file;
        assert!(file.contains("import bank\n"), "{file}");
        assert!(
            file.contains("'negative'") && file.contains("((101,), 'large')"),
            "the literal 100 led to a large input:\n{file}"
        );
        assert!(
            file.contains("pytest.raises(bank.InsufficientFunds, match=r'not enough')"),
            "the message is asserted too:\n{file}"
        );
        assert!(
            file.contains("pytest.raises(ValueError, match=r'amount must be positive')"),
            "{file}"
        );
        assert!(
            file.contains(
                "    obj = bank.Counter()\n    assert obj.bump() == 1\n    assert obj.value == 1\n"
            ),
            "the instance's state after the call is asserted:\n{file}"
        );
        let line = out.line_coverage.expect("line coverage");
        assert!(line >= 0.95, "line coverage {line}\n{file}");
        let mutation = out.mutation_score.expect("mutation score");
        assert!(mutation >= 0.6, "mutation score {mutation}\n{file}");
        assert!(
            (1..=5).contains(&out.refinement_rounds),
            "rounds are counted, at most 5 for a simple module (stop rules: refine.rs tests)"
        );
        assert!(out.quality_score.expect("quality") > 0.7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_are_kept_for_the_mutants_they_kill() {
        // 1 and 100 reach every line; only 10 tells `n < 10` from `n <= 10` (and from the
        // constant 10 -> 11), and only the message tells the error from its mutant.
        let source = "def level(n: int) -> str:\n    if n < 0:\n        raise ValueError('negative level')\n    if n < 10:\n        return 'low'\n    return 'high'\n";
        let off = GeneratorSettings {
            mutant_selection: false,
            ..GeneratorSettings::default()
        };
        let by_lines = generate_with(off, source, 60).await.expect("generates");
        let by_mutants = generate(source, 60).await.expect("generates");
        let file = &by_mutants.test_file;
        assert_eq!(by_mutants.tests_failed, 0, "{file}");
        assert!(file.contains("((10,), 'high')"), "{file}");
        assert!(
            !by_lines.test_file.contains("((10,), 'high')"),
            "no new line for 10: kept only for the mutants it kills\n{}",
            by_lines.test_file
        );
        assert!(
            file.contains("pytest.raises(ValueError, match=r'negative level')"),
            "{file}"
        );
        assert_eq!(by_mutants.mutation_score, Some(1.0), "{file}");
        assert!(
            by_lines.mutation_score < by_mutants.mutation_score,
            "{:?}",
            by_lines.mutation_score
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_taking_branches_no_other_call_took_are_kept() {
        // [1, 2, 3] runs every line; only a list with a value <= 0 takes the `if`'s false
        // branch. Mutant selection is off: the call is kept for its branch alone.
        let source = "def positives(xs: list) -> list:\n    out = []\n    for x in xs:\n        if x > 0:\n            out.append(x)\n    return out\n";
        let settings = GeneratorSettings {
            mutant_selection: false,
            ..GeneratorSettings::default()
        };
        let out = generate_with(settings, source, 60)
            .await
            .expect("generates");
        let file = &out.test_file;
        assert_eq!(out.tests_failed, 0, "{file}");
        assert_eq!(out.branch_coverage, Some(1.0), "{file}");
        assert!(file.contains("[-1, 0]"), "{file}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_of_a_table_the_function_reads_are_its_inputs() {
        // Every line runs with any word; only the table's own words tell its entries from
        // their mutants (`'goose'` -> `''`), which ran at import, not in the call.
        let source = "_IRREGULAR = {'child': 'children', 'person': 'people', 'mouse': 'mice',\n              'goose': 'geese', 'ox': 'oxen'}\n\n\ndef plural(word: str) -> str:\n    if word in _IRREGULAR:\n        return _IRREGULAR[word]\n    return word + 's'\n";
        let out = passing(source).await;
        let file = &out.test_file;
        for word in ["'child'", "'person'", "'mouse'", "'goose'", "'ox'"] {
            assert!(file.contains(word), "{word}:\n{file}");
        }
        assert_eq!(out.mutation_score, Some(1.0), "{file}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn strings_the_modules_patterns_match_are_inputs() {
        // No literal of the body is a duration: the pattern's own samples reach the units.
        let source = "import re\n\n_DURATION = re.compile(r'(?P<n>[0-9]+) *(?P<unit>weeks?|days?)$')\n\n\ndef seconds(text: str) -> int:\n    m = _DURATION.match(text)\n    if not m:\n        raise ValueError('not a duration')\n    n = int(m.group('n'))\n    if m.group('unit').startswith('week'):\n        return n * 604800\n    return n * 86400\n";
        let out = passing(source).await;
        let file = &out.test_file;
        assert_eq!(out.line_coverage, Some(1.0), "{file}");
        assert_eq!(out.branch_coverage, Some(1.0), "{file}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn returned_iterators_are_asserted_as_lists() {
        // `filter` objects show only an address; their items, and the lambda's line, come
        // out when the iterator is run.
        let source = "def evens(xs: list):\n    return filter(lambda x: x % 2 == 0, xs)\n";
        let out = passing(source).await;
        let file = &out.test_file;
        assert!(file.contains("list(bank.evens("), "{file}");
        assert_eq!(out.line_coverage, Some(1.0), "{file}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn methods_are_reached_through_call_sequences_on_instances() {
        // `pop` and `peek` return an item only after a `push`: no single call covers them.
        let source = "class Stack:\n    def __init__(self, capacity: int = 3):\n        self.capacity = capacity\n        self.items = []\n\n    def push(self, x):\n        if len(self.items) >= self.capacity:\n            raise OverflowError(\"full\")\n        self.items.append(x)\n\n    def pop(self):\n        if not self.items:\n            raise IndexError(\"empty\")\n        return self.items.pop()\n\n    def peek(self):\n        if self.items:\n            return self.items[-1]\n        return None\n";
        let out = passing(source).await;
        let file = &out.test_file;
        assert_eq!(out.line_coverage, Some(1.0), "{file}");
        assert!(
            file.contains("    obj.push(") && file.contains("    assert obj.pop() == "),
            "{file}"
        );
        assert!(file.contains("    assert obj.items == ["), "{file}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn special_methods_are_tested_through_their_syntax() {
        let source = "class Bag:\n    def __init__(self, items=None):\n        self.items = list(items or [])\n\n    def __len__(self):\n        return len(self.items)\n\n    def __contains__(self, x):\n        return x in self.items\n\n    def __getitem__(self, i):\n        return self.items[i]\n\n    def __eq__(self, other):\n        if not isinstance(other, Bag):\n            return NotImplemented\n        return self.items == other.items\n\n    def __or__(self, other):\n        return Bag(self.items + [x for x in other.items if x not in self.items])\n\n    def __radd__(self, other):\n        return len(self.items) + other\n\n    def __format__(self, spec):\n        return format(len(self.items), spec)\n\n    def __call__(self, n, scale=1):\n        return self.items[:n] * scale\n";
        let out = passing(source).await;
        let file = &out.test_file;
        for syntax in [
            "len(obj)",
            " in obj)",
            "obj[",
            "(obj == bank.Bag(",
            "(obj | bank.Bag(",
            " + obj)",
            "format(obj, ",
            "obj(",
        ] {
            assert!(file.contains(syntax), "{syntax}:\n{file}");
        }
        assert!(
            !file.contains("__"),
            "no special method is called by name:\n{file}"
        );
        assert!(
            file.contains("with pytest.raises(IndexError):"),
            "the interpreter's messages change between Python versions: not asserted\n{file}"
        );
        assert!(
            file.contains("    result = (obj | bank.Bag(")
                && file.contains("    assert result.items == ["),
            "a result that shows no value in its repr is checked by its attributes\n{file}"
        );
        assert_eq!(out.line_coverage, Some(1.0), "{file}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_method_returning_nothing_did_is_read_through_inspectors() {
        // add_row returns None and keeps its rows private: only draw() shows them.
        let source = "class Table:\n    def __init__(self):\n        self._rows = []\n\n    def add_row(self, row: list):\n        if len(row) > 3:\n            raise ValueError('too wide')\n        self._rows.append(list(row))\n\n    def clear(self):\n        self._rows = []\n        return self\n\n    def draw(self) -> str:\n        return '\\n'.join(','.join(str(c) for c in r) for r in self._rows)\n";
        let out = passing(source).await;
        let file = &out.test_file;
        assert!(
            file.contains("    obj.add_row([1, 2, 3])\n    assert obj.draw() == '1,2,3'\n"),
            "{file}"
        );
        assert!(
            file.contains("    assert obj.clear() is obj\n"),
            "a fluent method returns its instance:\n{file}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_command_line_entry_point_is_run_with_command_lines() {
        let source = "import argparse\n\n\ndef parse_args():\n    parser = argparse.ArgumentParser(prog='tool')\n    parser.add_argument('number')\n    parser.add_argument('-d', '--double', action='store_true')\n    return parser.parse_args()\n\n\ndef main() -> int:\n    args = parse_args()\n    n = int(args.number)\n    if args.double:\n        n *= 2\n    print(n)\n    return n\n";
        let out = passing(source).await;
        let file = &out.test_file;
        assert!(file.contains("import sys\n"), "{file}");
        assert!(
            file.contains("(monkeypatch):\n    monkeypatch.setattr(sys, \"argv\", ['bank', '-d', '1'])\n    assert bank.main() == 2\n"),
            "{file}"
        );
        assert!(
            file.contains("pytest.raises(SystemExit)"),
            "a usage error exits: {file}"
        );
        assert_eq!(out.line_coverage, Some(1.0), "{file}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_objects_and_dates_are_built_from_the_standard_library() {
        let source = "def count_lines(file_obj):\n    n = 0\n    for line in file_obj:\n        n += 1\n    return n\n\n\ndef weekday(dt):\n    if dt.weekday() >= 5:\n        return 'weekend'\n    return 'weekday'\n";
        let out = passing(source).await;
        let file = &out.test_file;
        assert!(
            file.contains("import datetime\nimport io\n\nimport pytest\n"),
            "{file}"
        );
        assert!(file.contains("io.StringIO("), "{file}");
        assert_eq!(out.line_coverage, Some(1.0), "{file}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_module_drawing_random_numbers_is_tested_from_a_seed() {
        assert!(uses_random("import os, random\n") && !uses_random("import randomx\n"));
        // Unseeded, two draws of random() never agree: no value could be asserted.
        let source =
            "import random\n\n\ndef noisy(n: int) -> float:\n    return n + random.random()\n";
        let out = generate(source, 60)
            .await
            .expect("a seeded draw is reproducible");
        let file = &out.test_file;
        assert!(file.contains("    random.seed(0)\n"), "{file}");
        assert!(file.contains("def test_noisy("), "{file}");
        assert_eq!(out.tests_failed, 0, "{file}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tests_that_fail_under_another_hash_seed_are_dropped() {
        // Eight distinct strings: their set order differs between hash seeds.
        let source = "def order(words: list[str]) -> str:\n    return ','.join(set(words + list('stuvwxyz')))\n\n\ndef total(xs: list) -> int:\n    return len(xs)\n";
        let out = generate(source, 60).await.expect("generates");
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
        let err = generate("X = 1\n\ndef _hidden():\n    return 2\n", 30)
            .await
            .expect_err("nothing to test");
        assert!(
            matches!(err, EngineError::JobFailed(ref m) if m.contains("no public function")),
            "{err:?}"
        );
    }
}
