//! Continual learning under a distribution shift: the SONA quality predictor learns from
//! jobs of one group of modules, then of another, consolidating every 100 jobs, with and
//! without EWC++ in the same run. Reports accuracy on each group after each phase
//! (|predicted − actual quality| < 0.1), retention of the first group (accuracy after the
//! second phase / after the first) and backward transfer (BWT, the change on the first
//! group), and the mean absolute error against a no-learning baseline (the predictor as
//! initialised, and the mean quality of what it has seen).
//!
//! Synthetic, seeded groups: group A varies the first six features, group B the last six;
//! each group's quality is its own function of its features, so learning B moves the
//! shared BaseLoRA and head away from what A needed.
//!
//! Run: `cargo bench --bench learning` (env BENCH_JOBS=300 per group, BENCH_SEEDS=5).

mod support;
use support::env_or;

use qefleet_learn::{Predictor, Sample, Settings};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TOLERANCE: f64 = 0.1;

fn group(n: usize, second: bool, seed: u64) -> Vec<Sample> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut x = vec![0.0; 12];
            let offset = if second { 6 } else { 0 };
            for v in &mut x[offset..offset + 6] {
                *v = rng.gen_range(0.0..1.0);
            }
            let f: &[f64] = &x[offset..offset + 6];
            let y = if second {
                0.15 + 0.7 * (f[0] * f[1]).sqrt() * (1.0 - 0.5 * f[2])
            } else {
                0.2 + 0.6 * (0.5 * f[0] + 0.3 * f[1] + 0.2 * (1.0 - f[2]))
            };
            Sample { x, y }
        })
        .collect()
}

fn accuracy(p: &Predictor, set: &[Sample]) -> f64 {
    set.iter()
        .filter(|s| (p.predict(&s.x) - s.y).abs() < TOLERANCE)
        .count() as f64
        / set.len() as f64
}

fn mae(p: &Predictor, set: &[Sample]) -> f64 {
    set.iter()
        .map(|s| (p.predict(&s.x) - s.y).abs())
        .sum::<f64>()
        / set.len() as f64
}

fn learn(p: &mut Predictor, jobs: &[Sample]) {
    for s in jobs {
        p.observe(s.clone());
        if p.since_consolidation >= 100 {
            p.consolidate();
        }
    }
}

#[derive(Debug, Default)]
struct Figures {
    a_after_a: f64,
    a_after_b: f64,
    b_after_b: f64,
    mae_a: f64,
    mae_b: f64,
}

fn run(use_ewc: bool, jobs: usize, seed: u64) -> Figures {
    let mut p = Predictor::new(Settings {
        seed,
        ..Settings::default()
    });
    p.use_ewc = use_ewc;
    let train_a = group(jobs, false, seed * 10 + 1);
    let train_b = group(jobs, true, seed * 10 + 2);
    let test_a = group(500, false, seed * 10 + 3);
    let test_b = group(500, true, seed * 10 + 4);
    learn(&mut p, &train_a);
    p.consolidate();
    let a_after_a = accuracy(&p, &test_a);
    learn(&mut p, &train_b);
    p.consolidate();
    Figures {
        a_after_a,
        a_after_b: accuracy(&p, &test_a),
        b_after_b: accuracy(&p, &test_b),
        mae_a: mae(&p, &test_a),
        mae_b: mae(&p, &test_b),
    }
}

fn main() {
    let jobs: usize = env_or("BENCH_JOBS", 300);
    let seeds: u64 = env_or("BENCH_SEEDS", 5);
    println!(
        "SONA quality predictor: {jobs} jobs of group A, then {jobs} of group B, consolidation every 100; accuracy = |error| < {TOLERANCE}; mean of {seeds} seeds"
    );
    // No learning: the initial predictor, and always predicting the mean quality seen.
    let mut base_mae = (0.0, 0.0);
    let mut mean_mae = (0.0, 0.0);
    for seed in 1..=seeds {
        let p = Predictor::new(Settings {
            seed,
            ..Settings::default()
        });
        let (a, b) = (
            group(500, false, seed * 10 + 3),
            group(500, true, seed * 10 + 4),
        );
        base_mae.0 += mae(&p, &a) / seeds as f64;
        base_mae.1 += mae(&p, &b) / seeds as f64;
        let seen: Vec<Sample> = group(jobs, false, seed * 10 + 1)
            .into_iter()
            .chain(group(jobs, true, seed * 10 + 2))
            .collect();
        let mean = seen.iter().map(|s| s.y).sum::<f64>() / seen.len() as f64;
        mean_mae.0 += a.iter().map(|s| (s.y - mean).abs()).sum::<f64>() / 500.0 / seeds as f64;
        mean_mae.1 += b.iter().map(|s| (s.y - mean).abs()).sum::<f64>() / 500.0 / seeds as f64;
    }
    println!(
        "  no learning (initial model): MAE A {:.4}, B {:.4}; predicting the mean: MAE A {:.4}, B {:.4}",
        base_mae.0, base_mae.1, mean_mae.0, mean_mae.1
    );
    for use_ewc in [true, false] {
        let mut f = Figures::default();
        for seed in 1..=seeds {
            let r = run(use_ewc, jobs, seed);
            let k = seeds as f64;
            f.a_after_a += r.a_after_a / k;
            f.a_after_b += r.a_after_b / k;
            f.b_after_b += r.b_after_b / k;
            f.mae_a += r.mae_a / k;
            f.mae_b += r.mae_b / k;
        }
        println!(
            "  {:<13} A after A {:.3} | after B: A {:.3}, B {:.3} | retention {:.1}% | BWT {:+.3} | MAE A {:.4}, B {:.4}",
            if use_ewc { "with EWC++" } else { "without EWC" },
            f.a_after_a,
            f.a_after_b,
            f.b_after_b,
            100.0 * f.a_after_b / f.a_after_a.max(1e-9),
            f.a_after_b - f.a_after_a,
            f.mae_a,
            f.mae_b,
        );
    }
}
