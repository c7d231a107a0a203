//! Running Python for engines: the interpreter, a work dir holding the module under test,
//! and pytest under coverage.py with a wall-clock limit.
//!
//! Every run goes through the [`Sandbox`](crate::sandbox::Sandbox).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qefleet_shared::embedded::venv_python;

use crate::engine::EngineError;
use crate::sandbox::{Ending, Finished, Sandbox};

/// Environment variable naming the Python interpreter (with pytest and coverage).
pub const PYTHON_ENV: &str = "QEFLEET_PYTHON";

/// Finds the interpreter: `$QEFLEET_PYTHON`, then `.venv/bin/python` in this directory or
/// above (or above the executable), then `python3` on PATH.
pub fn find_python() -> PathBuf {
    if let Some(p) = std::env::var_os(PYTHON_ENV) {
        return PathBuf::from(p);
    }
    venv_python().unwrap_or_else(|| PathBuf::from("python3"))
}

/// A temp dir with the module under test written where `import <module_name>` finds it.
#[derive(Debug)]
pub struct Workspace {
    dir: tempfile::TempDir,
    pub module_file: PathBuf,
}

impl Workspace {
    pub fn new(module_name: &str, source: &str) -> Result<Self, EngineError> {
        let io =
            |e: std::io::Error| EngineError::Transient(format!("cannot prepare work dir: {e}"));
        let dir = tempfile::Builder::new()
            .prefix("qefleet-job-")
            .tempdir()
            .map_err(io)?;
        let parts: Vec<&str> = module_name.split('.').collect();
        let mut package = dir.path().to_path_buf();
        for part in &parts[..parts.len().saturating_sub(1)] {
            package.push(part);
            std::fs::create_dir_all(&package).map_err(io)?;
            let init = package.join("__init__.py");
            if !init.exists() {
                std::fs::write(&init, "").map_err(io)?;
            }
        }
        let module_file = package.join(format!("{}.py", parts.last().unwrap_or(&module_name)));
        std::fs::write(&module_file, source).map_err(io)?;
        std::fs::write(
            dir.path().join(format!("{TEST_TIMEOUT_PLUGIN}.py")),
            include_str!("test_timeout.py"),
        )
        .map_err(io)?;
        Ok(Self { dir, module_file })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, text: &str) -> Result<PathBuf, EngineError> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text)
            .map_err(|e| EngineError::Transient(format!("cannot write {name}: {e}")))?;
        Ok(path)
    }
}

/// Runs `python args...` in the workspace inside the sandbox, for at most `limit`.
/// A run killed at the limit or for flooding output is the job's failure; a sandbox that
/// cannot start is the fleet's (transient).
pub async fn run_python(
    sandbox: &Sandbox,
    workspace: &Workspace,
    args: &[&str],
    limit: Duration,
) -> Result<Finished, EngineError> {
    let finished = sandbox
        .run_python(workspace.path(), args, &[], limit)
        .await
        .map_err(|e| {
            EngineError::Transient(format!("{e}: run ./scripts/setup.sh or set {PYTHON_ENV}"))
        })?;
    let what = args.first().copied().unwrap_or("");
    match finished.ending {
        Ending::TimedOut => Err(EngineError::JobFailed(format!(
            "time budget of {:.0}s exhausted while running python {what}",
            limit.as_secs_f64()
        ))),
        Ending::OutputCapped => Err(EngineError::JobFailed(format!(
            "python {what} printed more than {} bytes and was stopped",
            sandbox.limits.output_bytes
        ))),
        Ending::Exited(_) => Ok(finished),
    }
}

/// How a helper script that imports the module ended: exit 0 is success; exit 3 means the
/// module does not import; any other ending is the module crashing the interpreter. The
/// last two are the job's failure, with the end of stderr as the reason.
pub fn helper_outcome(finished: &Finished, what: &str) -> Result<(), EngineError> {
    let reason = tail(finished.stderr.trim(), 1500);
    match finished.ending {
        Ending::Exited(Some(0)) => Ok(()),
        Ending::Exited(Some(3)) => Err(EngineError::JobFailed(reason)),
        _ => Err(EngineError::JobFailed(format!("{what} failed: {reason}"))),
    }
}

/// Figures from one pytest run under coverage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SuiteRun {
    pub total: u32,
    pub failed: u32,
    pub line_coverage: Option<f64>,
    pub branch_coverage: Option<f64>,
    /// Lines of the module no test executed.
    pub missing_lines: Vec<u32>,
    /// Branches (from line, to line; a negative target is an exit from the function
    /// starting there) no test took.
    pub missing_branches: Vec<(i64, i64)>,
    /// Names of failing test functions (parametrize ids stripped).
    pub failed_tests: Vec<String>,
    /// The end of pytest's output (what an engine is shown of failures).
    pub output: String,
    /// Module lines each test function executed (coverage.py's dynamic contexts), by the
    /// function's name.
    pub lines_by_test: BTreeMap<String, Vec<u32>>,
}

impl SuiteRun {
    pub fn passed(&self) -> u32 {
        self.total.saturating_sub(self.failed)
    }

    /// Some tests ran and none failed: the suite can be mutation-tested.
    pub fn passes(&self) -> bool {
        self.failed == 0 && self.total > 0
    }
}

/// coverage.py settings of a suite run: which test executed which line.
const COVERAGE_RC: &str = ".qefleet_coveragerc";
/// The pytest plugin (`test_timeout.py`) that fails a test running past its limit, in
/// every work directory; suites run with `-p` this.
pub const TEST_TIMEOUT_PLUGIN: &str = "_qefleet_test_timeout";
/// How every suite run calls pytest: quiet, no cache, the per-test limit.
pub const PYTEST: [&str; 7] = [
    "-m",
    "pytest",
    "-q",
    "-p",
    "no:cacheprovider",
    "-p",
    TEST_TIMEOUT_PLUGIN,
];

/// How much of pytest's output a [`SuiteRun`] keeps.
const OUTPUT_TAIL: usize = 4000;

/// The last `n` characters of `text`.
fn tail(text: &str, n: usize) -> String {
    let skip = text.chars().count().saturating_sub(n);
    text.chars().skip(skip).collect()
}

/// Runs a pytest file under coverage.py (branch mode) restricted to the module file.
pub async fn run_suite(
    sandbox: &Sandbox,
    workspace: &Workspace,
    test_file: &str,
    deadline: Instant,
) -> Result<SuiteRun, EngineError> {
    let remaining = || deadline.saturating_duration_since(Instant::now());
    let include = format!("--include={}", workspace.module_file.display());
    workspace.write(COVERAGE_RC, "[run]\ndynamic_context = test_function\n")?;
    let rcfile = format!("--rcfile={COVERAGE_RC}");
    let mut args = vec!["-m", "coverage", "run", &rcfile, "--branch", &include];
    args.extend(PYTEST);
    args.extend(["--junitxml=report.xml", test_file]);
    let finished = run_python(sandbox, workspace, &args, remaining()).await?;
    let report = std::fs::read_to_string(workspace.path().join("report.xml")).map_err(|_| {
        let tail = tail(&finished.stdout, 2000);
        EngineError::Transient(format!(
            "pytest produced no report ({:?}); is pytest installed for {}? {tail}{}",
            finished.ending,
            sandbox.python.display(),
            finished.stderr
        ))
    })?;
    let (total, failed) = junit_counts(&report);
    let coverage = run_python(
        sandbox,
        workspace,
        &[
            "-m",
            "coverage",
            "json",
            &rcfile,
            "--show-contexts",
            "-q",
            "-o",
            "coverage.json",
        ],
        remaining(),
    )
    .await?;
    let json = if coverage.success() {
        std::fs::read_to_string(workspace.path().join("coverage.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
    } else {
        None
    };
    let (line_coverage, branch_coverage) = json
        .as_ref()
        .map(coverage_fractions)
        .unwrap_or((None, None));
    // The report covers the module file only (`--include`): its one entry.
    let file = json
        .as_ref()
        .and_then(|j| j["files"].as_object())
        .and_then(|files| files.values().next());
    let missing_lines = file
        .and_then(|f| f["missing_lines"].as_array())
        .map(|lines| {
            lines
                .iter()
                .filter_map(|l| l.as_u64().map(|l| l as u32))
                .collect()
        })
        .unwrap_or_default();
    let missing_branches = file
        .and_then(|f| f["missing_branches"].as_array())
        .map(|arcs| {
            arcs.iter()
                .filter_map(|a| Some((a[0].as_i64()?, a[1].as_i64()?)))
                .collect()
        })
        .unwrap_or_default();
    Ok(SuiteRun {
        total,
        failed,
        line_coverage,
        branch_coverage,
        missing_lines,
        missing_branches,
        failed_tests: junit_failed_tests(&report),
        output: tail(&finished.stdout, OUTPUT_TAIL),
        lines_by_test: file.map(lines_by_test).unwrap_or_default(),
    })
}

/// `(tests, failures + errors)` from a JUnit XML report's first `<testsuite>`.
pub fn junit_counts(xml: &str) -> (u32, u32) {
    let Some(start) = xml.find("<testsuite ") else {
        return (0, 0);
    };
    let tag = &xml[start..xml[start..].find('>').map_or(xml.len(), |e| start + e)];
    let attr = |name: &str| -> u32 {
        let key = format!(" {name}=\"");
        tag.find(&key)
            .and_then(|at| {
                let rest = &tag[at + key.len()..];
                rest[..rest.find('"')?].parse().ok()
            })
            .unwrap_or(0)
    };
    let total = attr("tests").saturating_sub(attr("skipped"));
    (total, attr("failures") + attr("errors"))
}

/// Failing test functions in a JUnit XML report (`test_f[case]` reported as `test_f`).
pub fn junit_failed_tests(xml: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for case in xml.split("<testcase ").skip(1) {
        let body = case.split("</testcase>").next().unwrap_or("");
        if !(body.contains("<failure") || body.contains("<error")) {
            continue;
        }
        let Some(at) = case.find(" name=\"").or_else(|| case.find("name=\"")) else {
            continue;
        };
        let rest = &case[at..];
        let rest = &rest[rest.find('"').map_or(0, |q| q + 1)..];
        let name = rest.split('"').next().unwrap_or("");
        let name = name.split('[').next().unwrap_or(name).to_string();
        if !name.is_empty() && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// Module lines per test function from the module file's entry of `coverage json
/// --show-contexts` (contexts are `test_file.test_f` or `test_file.TestClass.test_f`; the
/// import-time context is `""`).
pub fn lines_by_test(file: &serde_json::Value) -> BTreeMap<String, Vec<u32>> {
    let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let Some(contexts) = file["contexts"].as_object() else {
        return out;
    };
    for (line, names) in contexts {
        let Ok(line) = line.parse::<u32>() else {
            continue;
        };
        for name in names
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str())
        {
            if let Some(test) = name.rsplit('.').next().filter(|t| !t.is_empty()) {
                out.entry(test.to_string()).or_default().push(line);
            }
        }
    }
    for lines in out.values_mut() {
        lines.sort_unstable();
    }
    out
}

/// Line and branch coverage fractions from `coverage json` totals.
pub fn coverage_fractions(json: &serde_json::Value) -> (Option<f64>, Option<f64>) {
    let totals = &json["totals"];
    let ratio = |covered: &str, all: &str| {
        let all = totals[all].as_f64()?;
        let covered = totals[covered].as_f64()?;
        Some(if all == 0.0 { 1.0 } else { covered / all })
    };
    (
        ratio("covered_lines", "num_statements"),
        ratio("covered_branches", "num_branches"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_counts_subtract_skips_and_add_errors() {
        let xml = r#"<?xml version="1.0"?><testsuites><testsuite name="pytest" errors="1" failures="2" skipped="1" tests="7" time="0.1"></testsuite></testsuites>"#;
        assert_eq!(junit_counts(xml), (6, 3));
        assert_eq!(junit_counts("garbage"), (0, 0));
    }

    #[test]
    fn failing_tests_are_named_once() {
        let xml = r#"<testsuite tests="3"><testcase classname="t" name="test_a[args0-1]" time="0"><failure message="x"/></testcase><testcase classname="t" name="test_a[args1-2]" time="0"><failure/></testcase><testcase classname="t" name="test_b" time="0"></testcase><testcase classname="t" name="test_c" time="0"><error/></testcase></testsuite>"#;
        assert_eq!(junit_failed_tests(xml), vec!["test_a", "test_c"]);
    }

    #[test]
    fn lines_are_attributed_to_test_functions() {
        let json = serde_json::json!({"contexts": {
            "1": [""],
            "2": ["test_g.TestC.test_c", "test_g.test_a"],
            "4": ["test_g.test_b"],
        }});
        let by_test = lines_by_test(&json);
        assert_eq!(by_test.get("test_a"), Some(&vec![2]));
        assert_eq!(by_test.get("test_c"), Some(&vec![2]));
        assert_eq!(by_test.get("test_b"), Some(&vec![4]));
        assert_eq!(by_test.len(), 3);
    }

    #[test]
    fn coverage_totals_become_fractions() {
        let json = serde_json::json!({"totals": {"covered_lines": 3, "num_statements": 4, "covered_branches": 1, "num_branches": 2}});
        assert_eq!(coverage_fractions(&json), (Some(0.75), Some(0.5)));
        let none = serde_json::json!({"totals": {"covered_lines": 0, "num_statements": 0, "covered_branches": 0, "num_branches": 0}});
        assert_eq!(coverage_fractions(&none), (Some(1.0), Some(1.0)));
    }
}
