//! Test-generation eval: qefleet's local generator and Pynguin on the same real modules
//! (benches/eval/corpus.txt, from PyPI) with the same time budget, both measured by the
//! same code (pytest pass rate, coverage.py line and branch coverage, mutation score,
//! quality score) in the same sandbox.
//!
//! Set up once: `benches/eval/setup.sh`. Run: `cargo bench --bench generation`
//! (env EVAL_BUDGET seconds per module and tool, default 60 as in the targets;
//! EVAL_MODULES to pick some; EVAL_TOOLS=qefleet or pynguin to run one tool). Prints each
//! module's figures and, per tool, means and the medians the targets are stated in.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use qefleet_schemas::{JobSpec, Pool, QueuedJob, RouteDecision, Strategy, SCHEMA_VERSION};
use qefleet_worker::engine::{Engine, EngineRequest};
use qefleet_worker::engines::generator::{GeneratorSettings, LocalGenerator};
use qefleet_worker::engines::measure::{measured_output, mutation_in_time_left, MutationSettings};
use qefleet_worker::engines::python::{run_suite, Workspace};
use qefleet_worker::engines::refine::RefineSettings;
use qefleet_worker::sandbox::{Limits, Sandbox};

#[derive(Debug, Default, Clone)]
struct Row {
    ok: bool,
    note: String,
    passed: u32,
    total: u32,
    line: Option<f64>,
    branch: Option<f64>,
    mutation: Option<f64>,
    quality: f64,
    rounds: u32,
    seconds: f64,
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:5.1}", v * 100.0))
        .unwrap_or_else(|| "    -".into())
}

async fn ours(sandbox: &Sandbox, module: &str, source: &str, budget: Duration) -> Row {
    let mut job = JobSpec::python(module, source);
    job.job_id = Some("eval".into());
    let complexity = match qefleet_scheduler::complexity::analyze(source) {
        Ok(a) => a.report,
        Err(e) => {
            return Row {
                note: e.to_string(),
                ..Row::default()
            }
        }
    };
    let queued = QueuedJob {
        schema_version: SCHEMA_VERSION,
        route: RouteDecision {
            pool: Pool::Local,
            subject: String::new(),
            router: "eval".into(),
            strategy: Strategy::Balanced,
            reasons: vec![],
        },
        complexity,
        job,
        submitted_at_ms: 0,
    };
    let generator = LocalGenerator::new(
        sandbox.clone(),
        GeneratorSettings {
            refine: RefineSettings {
                budget,
                ..RefineSettings::default()
            },
            ..GeneratorSettings::default()
        },
    );
    let start = Instant::now();
    let out = generator
        .generate(EngineRequest {
            job: &queued,
            attempt: 1,
            time_budget: budget,
        })
        .await;
    let seconds = start.elapsed().as_secs_f64();
    match out {
        Ok(o) => {
            let mut row =
                measured(sandbox, module, source, "test_generated.py", &o.test_file).await;
            row.rounds = o.refinement_rounds;
            row.seconds = seconds;
            row
        }
        Err(e) => Row {
            note: e.to_string(),
            seconds,
            ..Row::default()
        },
    }
}

/// Both tools' suites are measured here, the same way: a fresh work dir, pytest under
/// coverage, then mutation testing with the same budget, cap and seed.
async fn measured(
    sandbox: &Sandbox,
    module: &str,
    source: &str,
    test_name: &str,
    tests: &str,
) -> Row {
    let failed = |note: String| Row {
        note,
        ..Row::default()
    };
    let workspace = match Workspace::new(module, source) {
        Ok(w) => w,
        Err(e) => return failed(e.to_string()),
    };
    if let Err(e) = workspace.write(test_name, tests) {
        return failed(e.to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let suite = match run_suite(sandbox, &workspace, test_name, deadline).await {
        Ok(s) => s,
        Err(e) => return failed(e.to_string()),
    };
    let settings = MutationSettings {
        budget: Duration::from_secs(20),
        max_mutants: 40,
        seed: 1,
        min_time_left: Duration::ZERO,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mutation_score = mutation_in_time_left(
        sandbox, &workspace, module, test_name, &suite, deadline, settings,
    )
    .await
    .ok()
    .flatten()
    .and_then(|m| m.score());
    let out = measured_output(String::new(), &suite, mutation_score);
    let note = if suite.failed_tests.is_empty() {
        String::new()
    } else {
        let tail: String = suite
            .output
            .lines()
            .rev()
            .take(6)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" | ");
        format!("failing: {} ({tail})", suite.failed_tests.join(", "))
    };
    Row {
        ok: true,
        note,
        passed: out.tests_passed,
        total: out.tests_total,
        line: out.line_coverage,
        branch: out.branch_coverage,
        mutation: out.mutation_score,
        quality: out.quality_score.unwrap_or(0.0),
        rounds: 1,
        seconds: 0.0,
    }
}

async fn pynguin(sandbox: &Sandbox, module: &str, source: &str, budget: Duration) -> Row {
    let start = Instant::now();
    let workspace = match Workspace::new(module, source) {
        Ok(w) => w,
        Err(e) => {
            return Row {
                note: e.to_string(),
                ..Row::default()
            }
        }
    };
    let dir = workspace.path().display().to_string();
    let out_dir = format!("{dir}/pynguin_out");
    let secs = budget.as_secs().to_string();
    // Pynguin refuses to run (it executes the module's code) unless told the risk is known;
    // here the sandbox contains it.
    let run = sandbox
        .run_python(
            workspace.path(),
            &[
                "-m",
                "pynguin",
                "--project-path",
                &dir,
                "--module-name",
                module,
                "--output-path",
                &out_dir,
                "--maximum-search-time",
                &secs,
                "--assertion-generation",
                "SIMPLE",
            ],
            &[("PYNGUIN_DANGER_AWARE", "1")],
            budget * 3 + Duration::from_secs(60),
        )
        .await;
    let test_name = format!("test_{}.py", module.replace('.', "_"));
    let produced = std::fs::read_to_string(format!("{out_dir}/{test_name}"));
    let Ok(tests) = produced else {
        let why = match run {
            Ok(f) => f
                .stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output")
                .to_string(),
            Err(e) => e.to_string(),
        };
        return Row {
            note: format!("pynguin wrote no tests: {why}"),
            seconds: start.elapsed().as_secs_f64(),
            ..Row::default()
        };
    };
    let generation_seconds = start.elapsed().as_secs_f64();
    let mut row = measured(sandbox, module, source, &test_name, &tests).await;
    row.seconds = generation_seconds;
    row
}

/// The median of some figures (0 for none).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Whether `tool` runs: all do unless EVAL_TOOLS names some (e.g. `EVAL_TOOLS=qefleet`
/// while working on the generator; reported figures come from a run of both).
fn run_tool(tool: &str) -> bool {
    std::env::var("EVAL_TOOLS").map_or(true, |v| v.split(',').any(|t| t.trim() == tool))
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv-eval/bin/python");
    if !python.exists() {
        eprintln!("no .venv-eval: run benches/eval/setup.sh first");
        std::process::exit(2);
    }
    let budget = Duration::from_secs(
        std::env::var("EVAL_BUDGET")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    let only: Option<Vec<String>> = std::env::var("EVAL_MODULES")
        .ok()
        .map(|v| v.split(',').map(str::to_string).collect());
    let corpus = std::fs::read_to_string(root.join("benches/eval/corpus.txt")).expect("corpus");
    let modules: Vec<&str> = corpus
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|m| only.as_ref().is_none_or(|o| o.iter().any(|x| x == m)))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let sandbox = Sandbox::new(python.clone(), Limits { memory_mb: 4096, ..Limits::default() }).await;
        println!("generation eval: {} modules, {}s budget per module and tool, sandbox network {:?}", modules.len(), budget.as_secs(), sandbox.network);
        println!("{:<24} {:<9} {:>4} {:>4} {:>6} {:>6} {:>6} {:>6} {:>3} {:>6}", "module", "tool", "pass", "tot", "line%", "brch%", "mut%", "qual", "rnd", "secs");
        let mut sums = [(0.0, 0u32, 0.0, 0.0, 0.0), (0.0, 0u32, 0.0, 0.0, 0.0)];
        // Per tool: line, branch and mutation figures of every module, for the medians the
        // issue's targets are stated in.
        let mut figures: [[Vec<f64>; 3]; 2] = Default::default();
        for module in &modules {
            let source = std::process::Command::new(&python)
                .args(["-c", &format!("import {module} as m; print(open(m.__file__).read(), end='')")])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            // Both tools see the module under a flat name (`boltons_strutils`): the corpus
            // modules import no sibling, and Pynguin finds nothing to test in a dotted
            // module of a stub package.
            let flat = module.replace('.', "_");
            let rows = [
                ("qefleet", if run_tool("qefleet") { ours(&sandbox, &flat, &source, budget).await } else { Row::default() }),
                ("pynguin", if run_tool("pynguin") { pynguin(&sandbox, &flat, &source, budget).await } else { Row::default() }),
            ];
            for (i, (tool, r)) in rows.iter().enumerate() {
                if !run_tool(tool) {
                    continue;
                }
                println!(
                    "{:<24} {:<9} {:>4} {:>4} {:>6} {:>6} {:>6} {:>6.3} {:>3} {:>6.1} {}",
                    module, tool, r.passed, r.total, pct(r.line), pct(r.branch), pct(r.mutation), r.quality, r.rounds, r.seconds,
                    if r.ok { r.note.chars().take(300).collect::<String>() } else { format!("FAILED: {}", r.note.chars().take(90).collect::<String>()) }
                );
                let s = &mut sums[i];
                figures[i][0].push(r.line.unwrap_or(0.0));
                figures[i][1].push(r.branch.unwrap_or(0.0));
                figures[i][2].push(r.mutation.unwrap_or(0.0));
                s.0 += r.quality;
                s.1 += u32::from(r.ok && r.total > 0 && r.passed == r.total);
                s.2 += r.line.unwrap_or(0.0);
                s.3 += r.mutation.unwrap_or(0.0);
                s.4 += r.seconds;
            }
        }
        let n = modules.len().max(1) as f64;
        println!("\naggregate over {} modules (missing figures count as 0):", modules.len());
        for (i, tool) in ["qefleet", "pynguin"].iter().enumerate() {
            if !run_tool(tool) {
                continue;
            }
            let s = sums[i];
            println!(
                "  {tool:<8} mean quality {:.3}  all-passing suites {}/{}  mean line {:.1}%  mean mutation {:.1}%  mean seconds {:.1}",
                s.0 / n, s.1, modules.len(), 100.0 * s.2 / n, 100.0 * s.3 / n, s.4 / n
            );
            let [line, branch, mutation] = &figures[i];
            println!(
                "  {tool:<8} median line {:.1}%  median branch {:.1}%  median mutation {:.1}%",
                100.0 * median(line), 100.0 * median(branch), 100.0 * median(mutation)
            );
        }
    });
}
