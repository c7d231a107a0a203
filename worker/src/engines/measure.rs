//! Measuring a suite beyond pass/fail: mutation score (mutants of the module under test,
//! killed by the suite) and the quality score that combines the figures.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::python::{run_python, SuiteRun, Workspace};
use crate::engine::{EngineError, EngineOutput};
use crate::sandbox::Sandbox;

/// The mutation tool; the local generator's probe imports its operators too.
pub(crate) const MUTANTS_SCRIPT: &str = include_str!("mutants.py");
pub(crate) const MUTANTS_FILE: &str = "qefleet_mutants.py";

/// A mutant the suite did not kill.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Survivor {
    pub line: u32,
    pub operator: String,
    pub description: String,
}

/// What mutation testing found.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MutationRun {
    /// Mutation sites in the module.
    pub sites: u32,
    /// Mutants run (at most the cap, fewer when the budget ran out).
    pub evaluated: u32,
    pub killed: u32,
    pub timeouts: u32,
    pub survivors: Vec<Survivor>,
    /// The unmutated suite passed; without that no mutant is run.
    pub baseline_passed: bool,
    pub baseline_seconds: f64,
    /// Not every site was run (cap or budget).
    pub sampled: bool,
    /// Test functions that were the first to fail on some killed mutant.
    #[serde(default)]
    pub killers: Vec<String>,
    /// Kills no test function is named for (timeouts).
    #[serde(default)]
    pub unattributed: u32,
}

impl MutationRun {
    /// Killed / evaluated, when anything was evaluated.
    pub fn score(&self) -> Option<f64> {
        (self.evaluated > 0).then(|| f64::from(self.killed) / f64::from(self.evaluated))
    }
}

/// Settings of a mutation run.
#[derive(Debug, Clone, Copy)]
pub struct MutationSettings {
    pub budget: Duration,
    pub max_mutants: u32,
    pub seed: u64,
    /// With less time than this left, [`mutation_in_time_left`] does not start a run.
    pub min_time_left: Duration,
}

impl Default for MutationSettings {
    fn default() -> Self {
        Self {
            budget: Duration::from_secs(30),
            max_mutants: 60,
            seed: 1,
            min_time_left: Duration::ZERO,
        }
    }
}

/// Runs mutation testing of `module_name` (in the workspace) against `test_file`.
pub async fn mutation(
    sandbox: &Sandbox,
    workspace: &Workspace,
    module_name: &str,
    test_file: &str,
    settings: MutationSettings,
) -> Result<MutationRun, EngineError> {
    workspace.write(MUTANTS_FILE, MUTANTS_SCRIPT)?;
    let module_file = workspace.module_file.display().to_string();
    let budget = format!("{:.1}", settings.budget.as_secs_f64());
    let max = settings.max_mutants.to_string();
    let seed = settings.seed.to_string();
    // The script stops starting mutants at the budget; allow the last ones to finish.
    let wall = settings.budget + Duration::from_secs(15);
    let finished = run_python(
        sandbox,
        workspace,
        &[
            MUTANTS_FILE,
            &module_file,
            module_name,
            test_file,
            &budget,
            &max,
            &seed,
        ],
        wall,
    )
    .await?;
    serde_json::from_str(finished.stdout.trim()).map_err(|e| {
        EngineError::Transient(format!(
            "mutation testing gave no report ({e}): {}",
            finished.stderr.chars().take(2000).collect::<String>()
        ))
    })
}

/// Mutation-tests a suite when it passes and more than `settings.min_time_left` remains before
/// `deadline` (mutants only mean something against a passing suite); the run gets the
/// time left less a margin, at most `settings.budget`.
pub async fn mutation_in_time_left(
    sandbox: &Sandbox,
    workspace: &Workspace,
    module_name: &str,
    test_file: &str,
    run: &SuiteRun,
    deadline: Instant,
    settings: MutationSettings,
) -> Result<Option<MutationRun>, EngineError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if !run.passes() || left <= settings.min_time_left {
        return Ok(None);
    }
    let settings = MutationSettings {
        budget: settings.budget.min(left - Duration::from_secs(2).min(left)),
        ..settings
    };
    mutation(sandbox, workspace, module_name, test_file, settings)
        .await
        .map(Some)
}

/// An engine's output for a measured suite, with the quality score computed from its
/// figures (`refinement_rounds` is the caller's to set).
pub fn measured_output(
    test_file: String,
    run: &SuiteRun,
    mutation_score: Option<f64>,
) -> EngineOutput {
    EngineOutput {
        test_file,
        tests_total: run.total,
        tests_passed: run.passed(),
        tests_failed: run.failed,
        line_coverage: run.line_coverage,
        branch_coverage: run.branch_coverage,
        mutation_score,
        quality_score: Some(quality_score(
            run.passed(),
            run.total,
            run.line_coverage,
            run.branch_coverage,
            mutation_score,
        )),
        ..EngineOutput::default()
    }
}

/// The documented quality score, 0-1: the pass rate times the weighted mean of the
/// measured figures (line coverage 0.4, branch coverage 0.2, mutation score 0.4; a figure
/// not measured drops out and the others are re-weighted). No passing test: 0.
pub fn quality_score(
    passed: u32,
    total: u32,
    line: Option<f64>,
    branch: Option<f64>,
    mutation: Option<f64>,
) -> f64 {
    if passed == 0 || total == 0 {
        return 0.0;
    }
    let parts = [(line, 0.4), (branch, 0.2), (mutation, 0.4)];
    let weight: f64 = parts
        .iter()
        .filter(|(v, _)| v.is_some())
        .map(|(_, w)| w)
        .sum();
    if weight == 0.0 {
        return 0.0;
    }
    let mean: f64 = parts
        .iter()
        .filter_map(|(v, w)| v.map(|v| v.clamp(0.0, 1.0) * w))
        .sum::<f64>()
        / weight;
    let score = f64::from(passed) / f64::from(total) * mean;
    (score * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::python::find_python;
    use crate::sandbox::Limits;

    #[test]
    fn quality_weights_and_missing_figures() {
        assert_eq!(quality_score(0, 3, Some(1.0), Some(1.0), Some(1.0)), 0.0);
        assert_eq!(quality_score(2, 2, Some(1.0), Some(0.5), Some(0.5)), 0.7);
        assert_eq!(quality_score(1, 2, Some(1.0), Some(0.5), Some(0.5)), 0.35);
        // Mutation not measured: line and branch re-weighted 2:1.
        assert_eq!(quality_score(4, 4, Some(0.9), Some(0.6), None), 0.8);
    }

    #[tokio::test]
    async fn mutants_are_counted_killed_and_survivors_named() {
        let module =
            "def add(a, b):\n    return a + b\n\n\ndef is_positive(x):\n    return x > 0\n";
        let suite = "from m import add, is_positive\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\ndef test_positive():\n    assert is_positive(5)\n";
        let workspace = Workspace::new("m", module).expect("workspace");
        workspace.write("test_m.py", suite).expect("suite");
        let sandbox = Sandbox::new(find_python(), Limits::default()).await;
        let run = mutation(
            &sandbox,
            &workspace,
            "m",
            "test_m.py",
            MutationSettings::default(),
        )
        .await
        .expect("mutation run");
        assert!(run.baseline_passed);
        // Sites: a + b, return a + b, x > 0, the constant 0, return x > 0.
        assert_eq!((run.sites, run.evaluated, run.killed), (5, 5, 3), "{run:?}");
        assert_eq!(run.score(), Some(0.6));
        let survived: Vec<&str> = run
            .survivors
            .iter()
            .map(|s| s.description.as_str())
            .collect();
        assert_eq!(survived.len(), 2);
        assert!(
            survived.contains(&"Gt -> GtE") && survived.contains(&"0 -> 1"),
            "{survived:?}"
        );
        assert!(run.survivors.iter().all(|s| s.line == 6));
    }

    #[tokio::test]
    async fn a_failing_baseline_runs_no_mutant() {
        let workspace = Workspace::new("m", "def f():\n    return 1\n").expect("workspace");
        workspace
            .write(
                "test_m.py",
                "from m import f\n\n\ndef test_f():\n    assert f() == 2\n",
            )
            .expect("suite");
        let sandbox = Sandbox::new(find_python(), Limits::default()).await;
        let run = mutation(
            &sandbox,
            &workspace,
            "m",
            "test_m.py",
            MutationSettings::default(),
        )
        .await
        .expect("mutation run");
        assert!(!run.baseline_passed);
        assert_eq!((run.evaluated, run.score()), (0, None));
    }
}
