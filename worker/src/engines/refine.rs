//! The recursive refinement loop every engine shares (TRM-style): an engine proposes a
//! suite, the loop runs it in the sandbox, removes failing and flaky tests, measures
//! coverage and mutation score, and feeds what is still missing (uncovered lines,
//! surviving mutants, failing output, removed tests, the best suite so far) back into the
//! next proposal. The best suite seen is kept; the loop stops when a round improves quality
//! by less than the plateau threshold, at the round limit, when the engine has nothing
//! new, or at the time budget (the first, single-pass suite is always measured).
//!
//! Engines differ only in how they propose: the local generator synthesises and probes
//! calls, LLM engines turn the feedback into a prompt (`prompt.rs`).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use qefleet_schemas::{Complexity, RefinementStop, TokenUsage};
use rustpython_ast::{self as ast, Ranged};
use rustpython_parser::Parse;

use super::measure::{measured_output, mutation_in_time_left, MutationSettings, Survivor};
use super::python::{junit_failed_tests, run_suite, SuiteRun, Workspace, PYTEST};
use crate::engine::{EngineError, EngineOutput};
use crate::sandbox::Sandbox;

/// The file each proposal is written to and run as.
pub const TEST_FILE: &str = "test_generated.py";

/// What the engine is told before proposing round `round` (1-based).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoundFeedback {
    pub round: u32,
    /// The best suite so far and its quality (0 before the first).
    pub best_suite: Option<String>,
    pub best_quality: f64,
    /// Of the last measured suite: module lines no test executed, mutants no test killed.
    pub uncovered_lines: Vec<u32>,
    /// Branches no test took: (from line, to line), a negative target leaves the function.
    pub uncovered_branches: Vec<(i64, i64)>,
    pub survivors: Vec<Survivor>,
    /// pytest's output for the tests the loop removed from the last proposal.
    pub failing_output: Option<String>,
    /// Test functions removed from the last proposal: failing, or failing under another
    /// hash seed (flaky).
    pub dropped_tests: Vec<String>,
}

/// A suite proposed by an engine, with what proposing it cost. No suite: the engine has
/// nothing new and the loop ends, but what it spent finding that out still counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Proposal {
    pub test_file: Option<String>,
    /// Test functions the engine knows to kill mutants: minimisation keeps them.
    pub keep_tests: Vec<String>,
    pub tokens: TokenUsage,
    pub cost_usd: f64,
}

pub type ProposalFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Proposal, EngineError>> + Send + 'a>>;

/// An engine's side of the loop.
pub trait Proposer: Send {
    fn propose<'a>(
        &'a mut self,
        feedback: &'a RoundFeedback,
        deadline: Instant,
    ) -> ProposalFuture<'a>;
}

/// Knobs of the loop.
#[derive(Debug, Clone, Copy)]
pub struct RefineSettings {
    /// Stop when a round improves quality by less than this.
    pub plateau: f64,
    pub max_rounds_simple: u32,
    pub max_rounds_complex: u32,
    /// The whole loop's budget (the job's own budget applies when smaller).
    pub budget: Duration,
    /// Mutation testing per round.
    pub mutation_budget: Duration,
    pub max_mutants: u32,
    /// Extra runs of a passing suite, each with another hash seed; a test failing in any
    /// of them is removed as flaky.
    pub reruns: u32,
    /// No new round starts with less time than this left.
    pub min_round_time: Duration,
}

impl Default for RefineSettings {
    fn default() -> Self {
        Self {
            plateau: 0.01,
            max_rounds_simple: 5,
            max_rounds_complex: 7,
            budget: Duration::from_secs(60),
            mutation_budget: Duration::from_secs(15),
            max_mutants: 40,
            reruns: 2,
            min_round_time: Duration::from_secs(3),
        }
    }
}

impl RefineSettings {
    pub fn max_rounds(&self, complexity: Complexity) -> u32 {
        match complexity {
            Complexity::Simple | Complexity::Moderate => self.max_rounds_simple,
            Complexity::Complex | Complexity::VeryComplex => self.max_rounds_complex,
        }
    }
}

/// One measured proposal.
#[derive(Debug, Clone)]
struct Measured {
    output: EngineOutput,
    quality: f64,
    run: SuiteRun,
    survivors: Vec<Survivor>,
    failing_output: Option<String>,
    dropped: Vec<String>,
    /// Test functions first to fail on some killed mutant.
    killers: Vec<String>,
    /// Test functions the engine asked to keep.
    keep: Vec<String>,
}

/// Runs the loop for one module in one workspace.
#[derive(Debug, Clone, Copy)]
pub struct Refiner<'a> {
    pub sandbox: &'a Sandbox,
    pub workspace: &'a Workspace,
    pub module_name: &'a str,
    pub settings: RefineSettings,
}

impl Refiner<'_> {
    /// Refines until a stop condition; returns the best suite with the rounds run and the
    /// tokens and cost of every proposal. No passing test at all is the job's failure.
    /// A `seed` (an escalated job's local suite) is measured first and is the suite to
    /// beat: the first proposal already sees it and what it misses.
    pub async fn refine(
        &self,
        proposer: &mut dyn Proposer,
        max_rounds: u32,
        deadline: Instant,
        seed: Option<&str>,
    ) -> Result<EngineOutput, EngineError> {
        let mut feedback = RoundFeedback::default();
        let mut best: Option<Measured> = None;
        if let Some(seed) = seed.filter(|s| !s.trim().is_empty()) {
            let measured = self.measure(seed.to_string(), deadline).await?;
            tracing::debug!(quality = measured.quality, "seed suite");
            feedback.uncovered_lines = measured.run.missing_lines.clone();
            feedback.uncovered_branches = measured.run.missing_branches.clone();
            feedback.survivors = measured.survivors.clone();
            if measured.run.passes() && measured.output.tests_passed > 0 {
                feedback.best_quality = measured.quality;
                feedback.best_suite = Some(measured.output.test_file.clone());
                best = Some(measured);
            }
        }
        let mut rounds = 0;
        let mut tokens = TokenUsage::default();
        let mut cost_usd = 0.0;
        let mut stop = RefinementStop::MaxRounds;
        for round in 1..=max_rounds.max(1) {
            if round > 1
                && deadline.saturating_duration_since(Instant::now()) < self.settings.min_round_time
            {
                stop = RefinementStop::TimeBudget;
                break;
            }
            feedback.round = round;
            let proposal = proposer.propose(&feedback, deadline).await?;
            tokens.prompt += proposal.tokens.prompt;
            tokens.completion += proposal.tokens.completion;
            cost_usd += proposal.cost_usd;
            let Some(test_file) = proposal.test_file else {
                stop = RefinementStop::NoProposal;
                break;
            };
            rounds = round;
            let mut measured = self.measure(test_file, deadline).await?;
            measured.keep = proposal.keep_tests;
            let gain = measured.quality - feedback.best_quality;
            tracing::debug!(
                round,
                quality = measured.quality,
                dropped = measured.dropped.len(),
                "refinement round"
            );
            feedback.uncovered_lines = measured.run.missing_lines.clone();
            feedback.uncovered_branches = measured.run.missing_branches.clone();
            feedback.survivors = measured.survivors.clone();
            feedback.failing_output = measured.failing_output.clone();
            feedback.dropped_tests = measured.dropped.clone();
            if best.is_none() || gain > 0.0 {
                feedback.best_quality = measured.quality;
                feedback.best_suite = Some(measured.output.test_file.clone());
                best = Some(measured);
            }
            if round > 1 && gain < self.settings.plateau {
                stop = RefinementStop::Plateau;
                break;
            }
        }
        let mut best =
            best.ok_or_else(|| EngineError::JobFailed("no suite was proposed".into()))?;
        if let Some(smaller) = self.minimise(&best, deadline).await? {
            best = smaller;
        }
        if best.output.tests_passed == 0 || best.output.tests_failed > 0 {
            return Err(EngineError::JobFailed(format!(
                "no deterministic, passing test could be generated for {}",
                self.module_name
            )));
        }
        Ok(EngineOutput {
            refinement_rounds: rounds,
            refinement_stop: Some(stop),
            tokens,
            cost_usd,
            ..best.output
        })
    }

    /// The best suite without the test functions it does not need: a greedy cover of the
    /// lines the suite executes, plus every test that was first to kill a mutant. The
    /// smaller suite is measured like any proposal and taken only when its quality is not
    /// lower, so every reported figure is the kept suite's own. Skipped when there is
    /// nothing to remove or less than a round's time is left.
    async fn minimise(
        &self,
        best: &Measured,
        deadline: Instant,
    ) -> Result<Option<Measured>, EngineError> {
        let text = &best.output.test_file;
        let mut needed = needed_tests(&best.run.lines_by_test, &best.killers);
        needed.extend(best.keep.iter().cloned());
        let remove: Vec<String> = test_functions(text)
            .into_iter()
            .filter(|t| !needed.contains(t))
            .collect();
        if remove.is_empty()
            || !best.run.passes()
            || deadline.saturating_duration_since(Instant::now()) < self.settings.min_round_time
        {
            return Ok(None);
        }
        let smaller = self.measure(prune_tests(text, &remove), deadline).await?;
        let kept = smaller.run.passes() && smaller.quality >= best.quality - 1e-9;
        tracing::debug!(
            removed = remove.len(),
            kept,
            quality = smaller.quality,
            "suite minimisation"
        );
        Ok(kept.then_some(smaller))
    }

    /// Runs a proposal, removes failing tests (then flaky ones) and re-runs, then measures.
    async fn measure(&self, mut text: String, deadline: Instant) -> Result<Measured, EngineError> {
        // A proposal is always measured, even when the budget ran out meanwhile.
        let suite_deadline = deadline.max(Instant::now() + Duration::from_secs(20));
        let mut run = self.run(&text, suite_deadline).await?;
        let mut dropped: Vec<String> = Vec::new();
        let mut failing_output = None;
        if run.failed > 0 && !run.failed_tests.is_empty() {
            failing_output = Some(run.output.clone());
            dropped.extend(run.failed_tests.iter().cloned());
            text = prune_tests(&text, &run.failed_tests);
            run = self.run(&text, suite_deadline).await?;
        }
        if run.passes() {
            let flaky = self.flaky_tests(suite_deadline).await?;
            if !flaky.is_empty() {
                tracing::debug!(?flaky, "removing flaky tests");
                dropped.extend(flaky.iter().cloned());
                text = prune_tests(&text, &flaky);
                run = self.run(&text, suite_deadline).await?;
            }
        } else if failing_output.is_none() {
            failing_output = Some(run.output.clone());
        }
        let mutation = mutation_in_time_left(
            self.sandbox,
            self.workspace,
            self.module_name,
            TEST_FILE,
            &run,
            deadline,
            MutationSettings {
                // At most half of what is left, so later rounds get time too.
                budget: self
                    .settings
                    .mutation_budget
                    .min(deadline.saturating_duration_since(Instant::now()) / 2),
                max_mutants: self.settings.max_mutants,
                seed: 1,
                min_time_left: self.settings.min_round_time,
            },
        )
        .await?;
        let score = mutation.as_ref().and_then(|m| m.score());
        let output = measured_output(text, &run, score);
        let (survivors, killers) = mutation
            .map(|m| (m.survivors, m.killers))
            .unwrap_or_default();
        Ok(Measured {
            quality: output.quality_score.unwrap_or(0.0),
            output,
            run,
            survivors,
            failing_output,
            dropped,
            killers,
            keep: Vec::new(),
        })
    }

    /// Writes `text` as the test file and runs it under coverage.
    async fn run(&self, text: &str, deadline: Instant) -> Result<SuiteRun, EngineError> {
        self.workspace.write(TEST_FILE, text)?;
        run_suite(self.sandbox, self.workspace, TEST_FILE, deadline).await
    }

    /// Test functions that fail in any of the reruns (each with its own hash seed).
    async fn flaky_tests(&self, deadline: Instant) -> Result<Vec<String>, EngineError> {
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
                    self.workspace.path(),
                    &[&PYTEST[..], &["--junitxml=rerun.xml", TEST_FILE]].concat(),
                    &[("PYTHONHASHSEED", &seed)],
                    left,
                )
                .await
                .map_err(|e| EngineError::Transient(e.to_string()))?;
            if finished.success() {
                continue;
            }
            let report = std::fs::read_to_string(self.workspace.path().join("rerun.xml"))
                .unwrap_or_default();
            for name in junit_failed_tests(&report) {
                if !flaky.contains(&name) {
                    flaky.push(name);
                }
            }
        }
        Ok(flaky)
    }
}

/// Test functions to keep: greedily, the one executing most lines not yet executed until
/// every line is, then every mutant killer.
pub fn needed_tests(
    lines_by_test: &std::collections::BTreeMap<String, Vec<u32>>,
    killers: &[String],
) -> HashSet<String> {
    let mut left: HashSet<u32> = lines_by_test.values().flatten().copied().collect();
    let mut keep: HashSet<String> = killers.iter().cloned().collect();
    for lines in keep.iter().filter_map(|k| lines_by_test.get(k)) {
        for l in lines {
            left.remove(l);
        }
    }
    while !left.is_empty() {
        let Some((name, lines)) = lines_by_test
            .iter()
            .filter(|(name, _)| !keep.contains(*name))
            .max_by_key(|(name, lines)| {
                (
                    lines.iter().filter(|l| left.contains(l)).count(),
                    std::cmp::Reverse(name.as_str()),
                )
            })
        else {
            break;
        };
        if !lines.iter().any(|l| left.contains(l)) {
            break;
        }
        for l in lines {
            left.remove(l);
        }
        keep.insert(name.clone());
    }
    keep
}

/// A function of a pytest file, module level or in a class: its name and byte span, its
/// decorators included.
struct Function<'a> {
    name: &'a str,
    span: (usize, usize),
}

/// Where a definition starts: its first decorator, or the statement itself.
fn decorated_start(stmt: &ast::Stmt, decorators: &[ast::Expr]) -> usize {
    decorators
        .iter()
        .map(|d| usize::from(d.range().start()))
        .chain([usize::from(stmt.range().start())])
        .min()
        .unwrap_or(0)
}

/// The functions among `stmts`.
fn functions(stmts: &[ast::Stmt]) -> Vec<Function<'_>> {
    stmts
        .iter()
        .filter_map(|stmt| {
            let (name, decorators) = match stmt {
                ast::Stmt::FunctionDef(f) => (f.name.as_str(), &f.decorator_list),
                ast::Stmt::AsyncFunctionDef(f) => (f.name.as_str(), &f.decorator_list),
                _ => return None,
            };
            Some(Function {
                name,
                span: (
                    decorated_start(stmt, decorators),
                    usize::from(stmt.range().end()),
                ),
            })
        })
        .collect()
}

/// The classes of a module with their statement and body.
fn classes(suite: &[ast::Stmt]) -> impl Iterator<Item = (&ast::Stmt, &ast::StmtClassDef)> {
    suite.iter().filter_map(|stmt| match stmt {
        ast::Stmt::ClassDef(c) => Some((stmt, c)),
        _ => None,
    })
}

/// Names of the test functions of a pytest file (module level and in test classes).
pub fn test_functions(text: &str) -> Vec<String> {
    let Ok(suite) = ast::Suite::parse(text, "<tests>") else {
        return Vec::new();
    };
    functions(&suite)
        .into_iter()
        .chain(classes(&suite).flat_map(|(_, c)| functions(&c.body)))
        .filter(|f| f.name.starts_with("test"))
        .map(|f| f.name.to_string())
        .collect()
}

/// Removes the named test functions (module level or in test classes, with their
/// decorators) from a pytest file. A file that does not parse is returned unchanged.
pub fn prune_tests(text: &str, names: &[String]) -> String {
    let names: HashSet<&str> = names.iter().map(String::as_str).collect();
    let Ok(suite) = ast::Suite::parse(text, "<tests>") else {
        return text.to_string();
    };
    let named = |fs: Vec<Function<'_>>| -> Vec<(usize, usize)> {
        fs.into_iter()
            .filter(|f| names.contains(f.name))
            .map(|f| f.span)
            .collect()
    };
    let mut cut = named(functions(&suite));
    for (stmt, c) in classes(&suite) {
        let methods = functions(&c.body);
        let total = methods.len();
        let inside = named(methods);
        if !inside.is_empty() && inside.len() == total {
            // Every method goes: the class would be left without a body.
            cut.push((
                decorated_start(stmt, &c.decorator_list),
                usize::from(c.range.end()),
            ));
        } else {
            cut.extend(inside);
        }
    }
    cut.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end) in cut {
        // Whole lines: from the start of the first line to the end of the last.
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let mut line_end = text[end..].find('\n').map_or(text.len(), |i| end + i + 1);
        // The blank lines after a removed function go with it; those before it stay and
        // separate what preceded from what follows.
        while let Some(next) = text[line_end..].find('\n') {
            if !text[line_end..line_end + next].trim().is_empty() {
                break;
            }
            line_end += next + 1;
        }
        if line_start < at {
            continue;
        }
        out.push_str(&text[at..line_start]);
        at = line_end;
    }
    out.push_str(&text[at..]);
    // Nothing may follow the last definition but one newline.
    let kept = out.trim_end_matches(['\n', ' ']).len();
    out.truncate(kept);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::python::find_python;
    use crate::sandbox::Limits;

    #[test]
    fn failing_tests_are_pruned_with_their_decorators() {
        let text = "import pytest\n\n\n@pytest.mark.parametrize(\"x\", [1, 2])\ndef test_a(x):\n    assert x\n\n\ndef test_b():\n    assert False\n\n\nclass TestBox:\n    def test_c(self):\n        assert 1\n\n    def test_d(self):\n        assert 0\n";
        let pruned = prune_tests(text, &["test_a".into(), "test_d".into()]);
        assert_eq!(
            pruned,
            "import pytest\n\n\ndef test_b():\n    assert False\n\n\nclass TestBox:\n    def test_c(self):\n        assert 1\n"
        );
        assert_eq!(prune_tests("def (:\n", &["x".into()]), "def (:\n");
        assert_eq!(
            prune_tests(text, &["test_c".into(), "test_d".into(), "test_b".into()]),
            "import pytest\n\n\n@pytest.mark.parametrize(\"x\", [1, 2])\ndef test_a(x):\n    assert x\n",
            "a test class losing every method goes as a whole"
        );
    }

    #[test]
    fn the_needed_tests_cover_every_line_and_keep_every_killer() {
        let map = |entries: &[(&str, &[u32])]| -> std::collections::BTreeMap<String, Vec<u32>> {
            entries
                .iter()
                .map(|(n, l)| (n.to_string(), l.to_vec()))
                .collect()
        };
        let keep = needed_tests(&map(&[("a", &[1, 2, 3]), ("b", &[2]), ("c", &[3])]), &[]);
        assert_eq!(keep, HashSet::from(["a".to_string()]));
        let keep = needed_tests(
            &map(&[("a", &[1, 2]), ("b", &[2]), ("c", &[3]), ("d", &[3])]),
            &["b".into()],
        );
        assert_eq!(
            keep,
            HashSet::from(["a".to_string(), "b".to_string(), "c".to_string()]),
            "the killer b stays, a covers 1, c (before d) covers 3"
        );
        assert_eq!(
            test_functions("import x\n\ndef test_a():\n    pass\n\ndef helper():\n    pass\n\nclass TestB:\n    def test_c(self):\n        pass\n"),
            vec!["test_a".to_string(), "test_c".to_string()]
        );
    }

    const MODULE: &str = "def sign(n):\n    if n < 0:\n        return -1\n    if n == 0:\n        return 0\n    return 1\n";

    /// An engine that proposes scripted suites and records what it was told.
    struct Scripted {
        suites: Vec<&'static str>,
        seen: Vec<RoundFeedback>,
    }

    impl Proposer for Scripted {
        fn propose<'a>(
            &'a mut self,
            feedback: &'a RoundFeedback,
            _: Instant,
        ) -> ProposalFuture<'a> {
            self.seen.push(feedback.clone());
            let next = self
                .suites
                .get(feedback.round as usize - 1)
                .map(|s| Proposal {
                    test_file: Some(s.to_string()),
                    tokens: TokenUsage {
                        prompt: 100,
                        completion: 10,
                    },
                    cost_usd: 0.5,
                    ..Proposal::default()
                });
            Box::pin(async move { Ok(next.unwrap_or_default()) })
        }
    }

    /// Refines the `signs` module with a scripted engine proposing `suites`; returns the
    /// outcome and the feedback the engine was given each round.
    async fn refine_scripted(
        suites: Vec<&'static str>,
        seconds: u64,
    ) -> (Result<EngineOutput, EngineError>, Vec<RoundFeedback>) {
        refine_seeded(suites, seconds, None).await
    }

    async fn refine_seeded(
        suites: Vec<&'static str>,
        seconds: u64,
        seed: Option<&str>,
    ) -> (Result<EngineOutput, EngineError>, Vec<RoundFeedback>) {
        let sandbox = Sandbox::new(find_python(), Limits::default()).await;
        let workspace = Workspace::new("signs", MODULE).expect("workspace");
        let refiner = Refiner {
            sandbox: &sandbox,
            workspace: &workspace,
            module_name: "signs",
            settings: RefineSettings::default(),
        };
        let mut engine = Scripted {
            suites,
            seen: Vec::new(),
        };
        let out = refiner
            .refine(
                &mut engine,
                5,
                Instant::now() + Duration::from_secs(seconds),
                seed,
            )
            .await;
        (out, engine.seen)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_loop_feeds_back_what_is_missing_keeps_the_best_and_stops_on_a_plateau() {
        let first = "import signs\n\n\ndef test_positive():\n    assert signs.sign(5) == 1\n\n\ndef test_wrong():\n    assert signs.sign(-5) == 7\n";
        let second = "import signs\n\n\ndef test_positive():\n    assert signs.sign(5) == 1\n\n\ndef test_negative():\n    assert signs.sign(-5) == -1\n\n\ndef test_zero():\n    assert signs.sign(0) == 0\n";
        let (out, seen) = refine_scripted(vec![first, second, second, first], 120).await;
        let out = out.expect("refines");
        assert_eq!(out.test_file, second, "the best suite is kept");
        assert_eq!(out.refinement_rounds, 3, "round 3 gained nothing: plateau");
        assert_eq!(out.refinement_stop, Some(RefinementStop::Plateau));
        assert_eq!((out.tests_passed, out.tests_failed), (3, 0));
        assert_eq!(out.line_coverage, Some(1.0));
        assert_eq!(out.tokens.prompt, 300);
        assert!((out.cost_usd - 1.5).abs() < 1e-9);
        let after_first = &seen[1];
        assert_eq!(after_first.dropped_tests, vec!["test_wrong".to_string()]);
        assert!(
            after_first
                .failing_output
                .as_deref()
                .is_some_and(|o| o.contains("test_wrong")),
            "{after_first:?}"
        );
        assert_eq!(
            after_first.uncovered_lines,
            vec![3, 5],
            "the lines the pruned suite misses"
        );
        assert_eq!(
            after_first.uncovered_branches,
            vec![(2, 3), (4, 5)],
            "the branches it never takes"
        );
        assert!(after_first
            .best_suite
            .as_deref()
            .is_some_and(|s| !s.contains("test_wrong")));
        assert!(!after_first.survivors.is_empty(), "{after_first:?}");
        assert!(seen[2].dropped_tests.is_empty());
        assert!(seen[2].best_quality > after_first.best_quality);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tests_that_add_no_line_and_kill_no_mutant_first_are_removed() {
        let suite = "import signs\n\n\ndef test_negative():\n    assert signs.sign(-5) == -1\n\n\ndef test_negative_again():\n    assert signs.sign(-7) == -1\n\n\ndef test_zero():\n    assert signs.sign(0) == 0\n\n\ndef test_positive():\n    assert signs.sign(5) == 1\n";
        let out = refine_scripted(vec![suite], 120).await.0.expect("refines");
        assert!(
            !out.test_file.contains("def test_negative_again")
                && out.test_file.contains("def test_negative()")
                && out.test_file.contains("def test_zero()")
                && out.test_file.contains("def test_positive()"),
            "{}",
            out.test_file
        );
        assert_eq!((out.tests_passed, out.tests_failed), (3, 0));
        assert_eq!(out.line_coverage, Some(1.0));
        assert_eq!(
            out.refinement_stop,
            Some(RefinementStop::NoProposal),
            "the engine had nothing for round 2"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spent_time_budget_stops_the_loop_and_says_so() {
        let suite = "import signs


def test_positive():
    assert signs.sign(5) == 1
";
        let (out, seen) = refine_scripted(vec![suite, suite, suite], 1).await;
        let out = out.expect("the first round is always measured");
        assert_eq!(out.refinement_rounds, 1);
        assert_eq!(seen.len(), 1, "no second proposal was asked for");
        assert_eq!(out.refinement_stop, Some(RefinementStop::TimeBudget));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_suite_with_no_passing_test_fails_the_job() {
        let (out, seen) = refine_scripted(
            vec!["import signs\n\n\ndef test_wrong():\n    assert signs.sign(1) == 2\n"],
            60,
        )
        .await;
        let err = out.expect_err("nothing passes");
        assert!(
            matches!(err, EngineError::JobFailed(ref m) if m.contains("no deterministic, passing test")),
            "{err:?}"
        );
        assert_eq!(seen.len(), 2, "asked again after the failure");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_seed_is_the_suite_to_beat_and_the_first_proposal_sees_it() {
        let seed = "import signs\n\n\ndef test_negative():\n    assert signs.sign(-5) == -1\n\n\ndef test_zero():\n    assert signs.sign(0) == 0\n";
        let worse = "import signs\n\n\ndef test_positive():\n    assert signs.sign(5) == 1\n";
        let (out, seen) = refine_seeded(vec![worse, worse], 120, Some(seed)).await;
        let out = out.expect("refines");
        assert_eq!(
            out.test_file, seed,
            "a worse proposal does not replace the seed"
        );
        let first = &seen[0];
        assert_eq!(first.best_suite.as_deref(), Some(seed));
        assert!(first.best_quality > 0.0);
        assert_eq!(first.uncovered_lines, vec![6], "what the seed misses");
        assert_eq!(out.tokens.prompt, 200, "both proposals are counted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hanging_test_fails_alone_and_the_rest_of_the_suite_is_kept() {
        let suite = "import signs\n\n\ndef test_hangs():\n    while True:\n        pass\n\n\ndef test_negative():\n    assert signs.sign(-5) == -1\n";
        let (out, seen) = refine_scripted(vec![suite], 120).await;
        let out = out.expect("refines");
        assert!(!out.test_file.contains("test_hangs"), "{}", out.test_file);
        assert_eq!((out.tests_passed, out.tests_failed), (1, 0));
        let told = seen
            .get(1)
            .map(|f| f.dropped_tests.clone())
            .unwrap_or_default();
        assert_eq!(told, vec!["test_hangs".to_string()]);
    }
}
