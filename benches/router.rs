//! Routing decision latency: the hybrid router over the jobs of the bundled examples with
//! varied strategies, flags, liveness, lag and switches (the complexity analysis, which
//! runs once per job before routing, is measured beside it for scale).
//!
//! Half the decisions first ask the SONA quality predictor for both pools' estimates, as
//! the scheduler does once it has learned (the time includes it).
//!
//! Run: `cargo bench --bench router` (env BENCH_DECISIONS=200000). Target (issue 6):
//! decision p99 < 50 µs, excluding the embedding.

mod support;

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use qefleet_scheduler::complexity::analyze;
use qefleet_scheduler::router::{HybridRouter, LivePools, PoolLag, RouteInput, RouteMode, Router};
use qefleet_schemas::{JobSpec, Pool, Strategy};
use support::{env_or, percentile};

const MODULES: &[&str] = &[include_str!("../examples/calc.py")];

fn main() {
    let decisions: usize = env_or("BENCH_DECISIONS", 200_000);
    let router = HybridRouter::default();
    let strategies = [
        None,
        Some(Strategy::Cost),
        Some(Strategy::Quality),
        Some(Strategy::PrivacyFirst),
        Some(Strategy::Balanced),
    ];
    let modes = [
        RouteMode::Auto,
        RouteMode::Auto,
        RouteMode::Auto,
        RouteMode::ForceLocal,
        RouteMode::ForceCloud,
    ];
    let mut jobs = Vec::new();
    let mut analysis_us = Vec::new();
    for (i, source) in MODULES.iter().cycle().take(50).enumerate() {
        let started = Instant::now();
        let report = analyze(source).expect("example parses").report;
        analysis_us.push(started.elapsed().as_secs_f64() * 1e6);
        let mut job = JobSpec::python("m", source);
        job.strategy = strategies[i % strategies.len()];
        job.local_only = i % 7 == 0;
        if i % 11 == 0 {
            job.budget.max_usd = Some(0.0);
        }
        jobs.push((job, report));
    }
    let lives: Vec<LivePools> = [(1, 1), (2, 0), (0, 1), (3, 2)]
        .iter()
        .map(|&(l, c)| LivePools(HashMap::from([(Pool::Local, l), (Pool::Cloud, c)])))
        .collect();
    let lags: Vec<PoolLag> = [(0, 0), (250, 3), (5, 400), (300, 300)]
        .iter()
        .map(|&(l, c)| PoolLag(HashMap::from([(Pool::Local, l), (Pool::Cloud, c)])))
        .collect();
    // A predictor that has learned both pools: half the decisions ask it first (the
    // scheduler's submission path does so whenever learned routing is on).
    let mut sona = qefleet_learn::SonaSnapshot::new();
    for (i, (_, report)) in jobs.iter().enumerate() {
        for pool in [Pool::Local, Pool::Cloud] {
            sona.predictor.observe(qefleet_learn::Sample {
                x: qefleet_learn::features(report, pool),
                y: if pool == Pool::Cloud {
                    0.8
                } else {
                    0.5 + (i % 5) as f64 * 0.1
                },
            });
        }
    }
    sona.predictor.consolidate();
    sona.version = 1;
    sona.jobs_by_pool = [("local".to_string(), 50), ("cloud".to_string(), 50)].into();
    let mut latencies = Vec::with_capacity(decisions);
    let mut cloud = 0usize;
    for i in 0..decisions {
        let (job, report) = &jobs[i % jobs.len()];
        let started = Instant::now();
        let predicted = if i % 2 == 0 {
            black_box(sona.estimate(report))
        } else {
            None
        };
        let input = RouteInput {
            job,
            complexity: report,
            live: &lives[i % lives.len()],
            lag: &lags[(i / 3) % lags.len()],
            mode: modes[(i / 7) % modes.len()],
            budget_exhausted: None,
            predicted: predicted.as_ref(),
        };
        let decision = black_box(router.route(black_box(input)));
        latencies.push(started.elapsed().as_secs_f64() * 1e6);
        if matches!(decision, Ok(d) if d.pool == Pool::Cloud) {
            cloud += 1;
        }
    }
    latencies.sort_by(f64::total_cmp);
    analysis_us.sort_by(f64::total_cmp);
    println!(
        "hybrid router, {decisions} decisions over {} jobs ({:.0}% to the cloud)",
        jobs.len(),
        100.0 * cloud as f64 / decisions as f64
    );
    println!();
    println!("| measure | p50, µs | p99, µs | max, µs |");
    println!("|---|---:|---:|---:|");
    println!(
        "| routing decision | {:.2} | {:.2} | {:.1} |",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "| complexity analysis of examples/calc.py (for scale) | {:.1} | {:.1} | {:.1} |",
        percentile(&analysis_us, 50.0),
        percentile(&analysis_us, 99.0),
        analysis_us.last().copied().unwrap_or(f64::NAN)
    );
    println!();
    println!(
        "target: decision p99 < 50 µs → {}",
        if percentile(&latencies, 99.0) < 50.0 {
            "met"
        } else {
            "not met"
        }
    );
}
