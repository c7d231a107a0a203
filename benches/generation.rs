//! Test-generation eval: qefleet's local generator and Pynguin on the same real modules
//! (benches/eval/corpus.txt, from PyPI) with the same time budget, both measured by the
//! same code (pytest pass rate, coverage.py line and branch coverage, mutation score,
//! quality score) in the same sandbox.
//!
//! Set up once: `benches/eval/setup.sh`. Run: `cargo bench --bench generation`
//! (env EVAL_BUDGET seconds per module and tool, default 60 as in the targets;
//! EVAL_MODULES to pick some; EVAL_TOOLS=qefleet or pynguin to run one tool; EVAL_SUITES=DIR
//! keeps qefleet's suites there; EVAL_MUTANT_SELECTION=0 turns the generator's choice of
//! calls by mutants killed off). Prints each
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
    /// The suite, for the cost report's token counts.
    suite: String,
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
        escalation: None,
    };
    let generator = LocalGenerator::new(
        sandbox.clone(),
        GeneratorSettings {
            refine: RefineSettings {
                budget,
                ..RefineSettings::default()
            },
            // EVAL_MUTANT_SELECTION=0: calls chosen by lines alone, for comparison.
            mutant_selection: std::env::var("EVAL_MUTANT_SELECTION").map_or(true, |v| v != "0"),
            ..GeneratorSettings::default()
        },
    );
    let start = Instant::now();
    let out = generator
        .generate(EngineRequest {
            job: &queued,
            attempt: 1,
            time_budget: budget,
            examples: &[],
        })
        .await;
    let seconds = start.elapsed().as_secs_f64();
    match out {
        Ok(o) => {
            let mut row =
                measured(sandbox, module, source, "test_generated.py", &o.test_file).await;
            row.rounds = o.refinement_rounds;
            row.seconds = seconds;
            row.suite = o.test_file;
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
        suite: String::new(),
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
        let mut ours_rows = Vec::new();
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
            if let (Ok(dir), true) = (std::env::var("EVAL_SUITES"), run_tool("qefleet")) {
                let _ = std::fs::create_dir_all(&dir);
                let _ = std::fs::write(format!("{dir}/test_{flat}.py"), &rows[0].1.suite);
            }
            if run_tool("qefleet") {
                ours_rows.push((module.to_string(), flat.clone(), source.clone(), rows[0].1.clone()));
            }
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
        if !ours_rows.is_empty() {
            cost_report(&root, &ours_rows);
        }
    });
}

/// The cost report: the hybrid router (every job local first, those below the quality
/// gate escalated once to the cloud with the local suite) against sending every job to
/// the reference cloud model, from the tokens the cloud engine's prompts and answers
/// would take, counted with the model's tokenizer.
fn cost_report(root: &std::path::Path, rows: &[(String, String, String, Row)]) {
    use qefleet_cloud::Price;
    use qefleet_inference::TokenCounter;
    use qefleet_worker::savings::Reference;

    let usd_per_hour: f64 = std::env::var("EVAL_USD_PER_HOUR")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.10);
    let reference = match std::env::var("EVAL_REFERENCE") {
        Ok(path) => {
            Reference::from_cloud_config(std::path::Path::new(&path)).expect("EVAL_REFERENCE")
        }
        Err(_) => {
            let tokenizer = root.join("benches/eval/claude-tokenizer.json");
            Reference {
                model: "anthropic/claude-sonnet-4-5".into(),
                price: Price {
                    input_per_mtok: 3.0,
                    cached_input_per_mtok: Some(0.3),
                    output_per_mtok: 15.0,
                    effective: "2025-09-29".into(),
                },
                counter: TokenCounter::from_file(&tokenizer).unwrap_or(TokenCounter::Estimate),
                max_prompt_chars: qefleet_worker::engines::llm::LlmSettings::default()
                    .max_prompt_chars,
            }
        }
    };
    let estimate = Reference {
        counter: TokenCounter::Estimate,
        ..reference.clone()
    };
    let price = |prompt: u64, completion: u64| {
        reference.price.cost(&qefleet_cloud::Usage {
            input: prompt,
            cached: 0,
            output: completion,
        })
    };
    println!(
        "\ncost report: reference {} (${}/${} per Mtok in/out, effective {}), tokens counted by {}, local compute ${usd_per_hour}/h",
        reference.model, reference.price.input_per_mtok, reference.price.output_per_mtok,
        reference.price.effective, reference.counter.label()
    );
    // A module whose local run failed has no suite: the cloud's answer is taken to be as
    // long as the median suite.
    let mut suite_tokens: Vec<f64> = rows
        .iter()
        .filter(|r| !r.3.suite.is_empty())
        .map(|r| reference.counter.count(&r.3.suite) as f64)
        .collect();
    let proxy = median(&suite_tokens) as u64;
    suite_tokens.clear();
    struct Job {
        quality: f64,
        local_usd: f64,
        first: u64,
        suite: u64,
        rounds: u32,
        estimate_ratio: f64,
    }
    let mut jobs = Vec::new();
    println!(
        "{:<24} {:>6} {:>6} {:>9} {:>7} {:>6} {:>10} {:>10}",
        "module", "qual", "secs", "local $", "prompt", "suite", "cloud 1-rd", "cloud N-rd"
    );
    for (module, flat, source, row) in rows {
        let job = JobSpec::python(flat, source);
        let one = reference.estimate(&job, &row.suite, 1);
        let suite = if row.suite.is_empty() {
            proxy
        } else {
            one.completion_tokens
        };
        let first = one.prompt_tokens;
        let local_usd = row.seconds / 3600.0 * usd_per_hour;
        let by_estimate = estimate.estimate(&job, &row.suite, 1);
        let estimate_ratio = (by_estimate.prompt_tokens + by_estimate.completion_tokens) as f64
            / (first + one.completion_tokens).max(1) as f64;
        let rounds = u64::from(row.rounds.max(1));
        let n_rounds = price(rounds * first + (rounds - 1) * suite, rounds * suite);
        println!(
            "{:<24} {:>6.3} {:>6.1} {:>9.6} {:>7} {:>6} {:>10.5} {:>10.5}",
            module,
            row.quality,
            row.seconds,
            local_usd,
            first,
            suite,
            price(first, suite),
            n_rounds
        );
        jobs.push(Job {
            quality: row.quality,
            local_usd,
            first,
            suite,
            rounds: row.rounds,
            estimate_ratio,
        });
    }
    let ratios: Vec<f64> = jobs.iter().map(|j| j.estimate_ratio).collect();
    println!(
        "(the 4-bytes-a-token estimate counts {:.2}× the tokenizer's tokens, median over modules)",
        median(&ratios)
    );
    let all_cloud_one: f64 = jobs.iter().map(|j| price(j.first, j.suite)).sum();
    let all_cloud_n: f64 = jobs
        .iter()
        .map(|j| {
            let r = u64::from(j.rounds.max(1));
            price(r * j.first + (r - 1) * j.suite, r * j.suite)
        })
        .sum();
    let local: f64 = jobs.iter().map(|j| j.local_usd).sum();
    println!(
        "\n{:>5} {:>12} | {:>10} {:>10} {:>8} | {:>10} {:>10} {:>8}",
        "gate", "met locally", "router", "all-cloud", "saved", "router", "all-cloud", "saved"
    );
    println!(
        "{:>5} {:>12} | {:^30} | {:^30}",
        "", "", "one cloud round per job", "the generator's rounds per job"
    );
    for gate in [0.3, 0.4, 0.5, 0.6] {
        let met = jobs.iter().filter(|j| j.quality >= gate).count();
        // An escalated job's cloud rounds carry the source and the current suite (the
        // local one to start with) and return a suite; its local run is paid already.
        let escalated = |rounds: &dyn Fn(&Job) -> u64| -> f64 {
            jobs.iter()
                .filter(|j| j.quality < gate)
                .map(|j| {
                    let r = rounds(j);
                    price(r * (j.first + j.suite), r * j.suite)
                })
                .sum()
        };
        let router_one = local + escalated(&|_| 1);
        let router_n = local + escalated(&|j| u64::from(j.rounds.max(1)));
        println!(
            "{:>5.1} {:>7}/{:<4} | {:>10.4} {:>10.4} {:>7.1}% | {:>10.4} {:>10.4} {:>7.1}%",
            gate,
            met,
            jobs.len(),
            router_one,
            all_cloud_one,
            100.0 * (1.0 - router_one / all_cloud_one),
            router_n,
            all_cloud_n,
            100.0 * (1.0 - router_n / all_cloud_n)
        );
    }
}
