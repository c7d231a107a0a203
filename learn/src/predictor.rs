//! The quality predictor the router can ask: a small network from a job's features to the
//! quality a pool and engine will reach, learning continually without forgetting.
//!
//! `ŷ = σ(w₂ · tanh((W₁ + B_b A_b + B_m A_m) x + b₁) + b₂)`, with W₁ and b₁ a fixed random
//! trunk, `B_m A_m` the MicroLoRA (rank 1-2, one SGD step per completed job), `B_b A_b`
//! the BaseLoRA (rank 4-8) and the head `w₂, b₂`, trained at each consolidation on the
//! recent jobs while EWC++ holds the parameters that mattered for earlier ones:
//! `L = mean ½(ŷ−y)² + λ/2 Σ F_i (θ_i − θ*_i)²`, F the online diagonal Fisher
//! (`F ← γ F + (1−γ) F_batch`, normalised to its largest entry so λ is a relative weight).
//! Loss: squared error on the sigmoid output; every gradient below is analytic and checked
//! against finite differences in the tests.

use std::collections::VecDeque;

use ndarray::{Array1, Array2, Axis};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// One observed job: its features and the quality it reached (0-1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub x: Vec<f64>,
    pub y: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub inputs: usize,
    pub hidden: usize,
    pub micro_rank: usize,
    pub base_rank: usize,
    pub micro_lr: f64,
    /// SGD steps on the MicroLoRA per completed job.
    pub micro_steps: usize,
    pub base_lr: f64,
    pub consolidation_epochs: usize,
    /// EWC++ strength.
    pub ewc_lambda: f64,
    /// Online Fisher decay γ.
    pub fisher_decay: f64,
    /// Recent samples a consolidation trains on.
    pub replay: usize,
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            inputs: 12,
            hidden: 16,
            micro_rank: 2,
            base_rank: 8,
            micro_lr: 2.0,
            micro_steps: 3,
            base_lr: 1.0,
            consolidation_epochs: 300,
            ewc_lambda: 0.5,
            fisher_decay: 0.9,
            replay: 100,
            seed: 7,
        }
    }
}

/// A low-rank update `B A` of an `out × in` matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lora {
    /// `rank × in`
    pub a: Array2<f64>,
    /// `out × rank`
    pub b: Array2<f64>,
}

impl Lora {
    /// LoRA's initialisation: A small and random, B zero (so the update starts at zero).
    fn new(out: usize, inputs: usize, rank: usize, rng: &mut StdRng) -> Self {
        let scale = 1.0 / (inputs as f64).sqrt();
        Self {
            a: Array2::from_shape_fn((rank, inputs), |_| rng.gen_range(-scale..scale)),
            b: Array2::zeros((out, rank)),
        }
    }

    fn delta(&self) -> Array2<f64> {
        self.b.dot(&self.a)
    }

    /// Gradients of both factors from the gradient of the full matrix.
    fn grads(&self, d_w: &Array2<f64>) -> (Array2<f64>, Array2<f64>) {
        (self.b.t().dot(d_w), d_w.dot(&self.a.t()))
    }
}

/// The parameters a consolidation trains (and EWC++ protects).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseParams {
    pub lora: Lora,
    pub w2: Array1<f64>,
    pub b2: f64,
}

impl BaseParams {
    fn flat(&self) -> Vec<f64> {
        self.lora
            .a
            .iter()
            .chain(self.lora.b.iter())
            .chain(self.w2.iter())
            .copied()
            .chain(std::iter::once(self.b2))
            .collect()
    }

    fn apply(&mut self, step: &[f64]) {
        let mut it = step.iter();
        for v in self
            .lora
            .a
            .iter_mut()
            .chain(self.lora.b.iter_mut())
            .chain(self.w2.iter_mut())
        {
            *v -= it.next().copied().unwrap_or(0.0);
        }
        self.b2 -= it.next().copied().unwrap_or(0.0);
    }
}

/// Gradients of one sample's loss.
#[derive(Debug, Clone)]
pub struct Grads {
    pub micro_a: Array2<f64>,
    pub micro_b: Array2<f64>,
    pub base_a: Array2<f64>,
    pub base_b: Array2<f64>,
    pub w2: Array1<f64>,
    pub b2: f64,
}

impl Grads {
    fn base_flat(&self) -> Vec<f64> {
        self.base_a
            .iter()
            .chain(self.base_b.iter())
            .chain(self.w2.iter())
            .copied()
            .chain(std::iter::once(self.b2))
            .collect()
    }
}

/// The online diagonal Fisher and the anchor it protects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ewc {
    pub fisher: Vec<f64>,
    pub anchor: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Predictor {
    pub settings: Settings,
    w1: Array2<f64>,
    b1: Array1<f64>,
    pub base: BaseParams,
    pub micro: Lora,
    pub ewc: Option<Ewc>,
    /// Recent samples, for the next consolidation.
    pub buffer: VecDeque<Sample>,
    /// Consolidations applied so far: the adapter version.
    pub version: u64,
    /// Jobs learned from since the last consolidation.
    pub since_consolidation: u64,
    /// Use EWC++ at consolidation (off only to measure what it is worth).
    pub use_ewc: bool,
}

fn sigmoid(s: f64) -> f64 {
    1.0 / (1.0 + (-s).exp())
}

impl Predictor {
    pub fn new(settings: Settings) -> Self {
        let mut rng = StdRng::seed_from_u64(settings.seed);
        let (h, d) = (settings.hidden, settings.inputs);
        let scale = (6.0 / (h + d) as f64).sqrt();
        let w1 = Array2::from_shape_fn((h, d), |_| rng.gen_range(-scale..scale));
        let b1 = Array1::from_shape_fn(h, |_| rng.gen_range(-0.1..0.1));
        let w2 = Array1::from_shape_fn(h, |_| rng.gen_range(-1.0..1.0));
        let base = BaseParams {
            lora: Lora::new(h, d, settings.base_rank, &mut rng),
            w2,
            b2: 0.0,
        };
        let micro = Lora::new(h, d, settings.micro_rank, &mut rng);
        Self {
            settings,
            w1,
            b1,
            base,
            micro,
            ewc: None,
            buffer: VecDeque::new(),
            version: 0,
            since_consolidation: 0,
            use_ewc: true,
        }
    }

    fn weights(&self, with_micro: bool) -> Array2<f64> {
        let mut w = &self.w1 + &self.base.lora.delta();
        if with_micro {
            w = w + self.micro.delta();
        }
        w
    }

    fn input(&self, x: &[f64]) -> Array1<f64> {
        let mut v = Array1::zeros(self.settings.inputs);
        for (slot, x) in v.iter_mut().zip(x) {
            *slot = *x;
        }
        v
    }

    /// Predicted quality for features `x` (shorter inputs are zero-padded).
    pub fn predict(&self, x: &[f64]) -> f64 {
        self.forward(&self.weights(true), &self.input(x)).0
    }

    fn forward(&self, w: &Array2<f64>, x: &Array1<f64>) -> (f64, Array1<f64>) {
        let h = (w.dot(x) + &self.b1).mapv(f64::tanh);
        (sigmoid(self.base.w2.dot(&h) + self.base.b2), h)
    }

    /// ½(ŷ−y)² of one sample.
    pub fn loss(&self, sample: &Sample) -> f64 {
        let y_hat = self.predict(&sample.x);
        0.5 * (y_hat - sample.y).powi(2)
    }

    /// Analytic gradients of one sample's loss, with the MicroLoRA active.
    pub fn grads(&self, sample: &Sample) -> Grads {
        self.grads_with(sample, true)
    }

    fn grads_with(&self, sample: &Sample, with_micro: bool) -> Grads {
        let x = self.input(&sample.x);
        let (y_hat, h) = self.forward(&self.weights(with_micro), &x);
        let g_s = (y_hat - sample.y) * y_hat * (1.0 - y_hat);
        let g_z = (&self.base.w2 * g_s) * &h.mapv(|v| 1.0 - v * v);
        let d_w = g_z
            .view()
            .insert_axis(Axis(1))
            .dot(&x.view().insert_axis(Axis(0)));
        let (micro_a, micro_b) = self.micro.grads(&d_w);
        let (base_a, base_b) = self.base.lora.grads(&d_w);
        Grads {
            micro_a,
            micro_b,
            base_a,
            base_b,
            w2: h * g_s,
            b2: g_s,
        }
    }

    /// Learns from one completed job: SGD on both MicroLoRA factors, and the sample is
    /// kept for the next consolidation.
    pub fn observe(&mut self, sample: Sample) {
        for _ in 0..self.settings.micro_steps {
            let g = self.grads(&sample);
            self.micro.a.scaled_add(-self.settings.micro_lr, &g.micro_a);
            self.micro.b.scaled_add(-self.settings.micro_lr, &g.micro_b);
        }
        self.buffer.push_back(sample);
        while self.buffer.len() > self.settings.replay {
            self.buffer.pop_front();
        }
        self.since_consolidation += 1;
    }

    /// The EWC++ penalty of the current base parameters.
    pub fn ewc_penalty(&self) -> f64 {
        let Some(ewc) = self.ewc.as_ref().filter(|_| self.use_ewc) else {
            return 0.0;
        };
        let theta = self.base.flat();
        0.5 * self.settings.ewc_lambda
            * ewc
                .fisher
                .iter()
                .zip(theta.iter().zip(&ewc.anchor))
                .map(|(f, (t, a))| f * (t - a).powi(2))
                .sum::<f64>()
    }

    /// Mean loss over `samples` (micro excluded: what consolidation trains) plus the
    /// EWC++ penalty.
    pub fn consolidation_objective(&self, samples: &[Sample]) -> f64 {
        let w = self.weights(false);
        let mean = samples
            .iter()
            .map(|s| {
                let (y_hat, _) = self.forward(&w, &self.input(&s.x));
                0.5 * (y_hat - s.y).powi(2)
            })
            .sum::<f64>()
            / samples.len().max(1) as f64;
        mean + self.ewc_penalty()
    }

    /// Gradient of [`Self::consolidation_objective`] with respect to the base
    /// parameters, flattened as [`BaseParams`] orders them.
    pub fn consolidation_gradient(&self, samples: &[Sample]) -> Vec<f64> {
        let n = samples.len().max(1) as f64;
        let mut total = vec![0.0; self.base.flat().len()];
        for s in samples {
            for (t, g) in total.iter_mut().zip(self.grads_with(s, false).base_flat()) {
                *t += g / n;
            }
        }
        if let Some(ewc) = self.ewc.as_ref().filter(|_| self.use_ewc) {
            let theta = self.base.flat();
            for (i, t) in total.iter_mut().enumerate() {
                *t += self.settings.ewc_lambda * ewc.fisher[i] * (theta[i] - ewc.anchor[i]);
            }
        }
        total
    }

    /// The consolidation job: trains the BaseLoRA and head on the recent jobs (full-batch
    /// gradient descent on loss + EWC++), resets the MicroLoRA, updates the online Fisher
    /// and its anchor, and bumps the version. Returns the objective before and after.
    pub fn consolidate(&mut self) -> (f64, f64) {
        let samples: Vec<Sample> = self.buffer.iter().cloned().collect();
        if samples.is_empty() {
            return (0.0, 0.0);
        }
        let before = self.consolidation_objective(&samples);
        for _ in 0..self.settings.consolidation_epochs {
            let g = self.consolidation_gradient(&samples);
            let step: Vec<f64> = g.iter().map(|v| v * self.settings.base_lr).collect();
            self.base.apply(&step);
        }
        let after = self.consolidation_objective(&samples);
        // Online diagonal Fisher from these jobs' per-sample gradients at the new point.
        let n = samples.len() as f64;
        let mut batch = vec![0.0; self.base.flat().len()];
        for s in &samples {
            for (f, g) in batch.iter_mut().zip(self.grads_with(s, false).base_flat()) {
                *f += g * g / n;
            }
        }
        let max = batch.iter().fold(0f64, |m, v| m.max(*v));
        if max > 0.0 {
            batch.iter_mut().for_each(|v| *v /= max);
        }
        let gamma = self.settings.fisher_decay;
        let fisher = match &self.ewc {
            Some(old) => old
                .fisher
                .iter()
                .zip(&batch)
                .map(|(o, b)| gamma * o + (1.0 - gamma) * b)
                .collect(),
            None => batch,
        };
        self.ewc = Some(Ewc {
            fisher,
            anchor: self.base.flat(),
        });
        let mut rng = StdRng::seed_from_u64(self.settings.seed ^ (self.version + 1));
        self.micro = Lora::new(
            self.settings.hidden,
            self.settings.inputs,
            self.settings.micro_rank,
            &mut rng,
        );
        self.buffer.clear();
        self.since_consolidation = 0;
        self.version += 1;
        (before, after)
    }

    /// A snapshot (MessagePack, so every f64 comes back exactly) of everything, for the
    /// object store and rollback.
    pub fn snapshot(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        rmp_serde::to_vec_named(self)
    }

    pub fn restore(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Settings {
        Settings {
            inputs: 4,
            hidden: 5,
            micro_rank: 2,
            base_rank: 3,
            ..Settings::default()
        }
    }

    /// A predictor whose factors are all non-zero (B starts at zero, which would make
    /// A's gradient trivially zero).
    fn perturbed() -> Predictor {
        let mut p = Predictor::new(small());
        let mut rng = StdRng::seed_from_u64(3);
        for v in p
            .micro
            .b
            .iter_mut()
            .chain(p.base.lora.b.iter_mut())
            .chain(p.base.w2.iter_mut())
        {
            *v = rng.gen_range(-0.5..0.5);
        }
        p.base.b2 = 0.2;
        p
    }

    fn numeric(p: &Predictor, s: &Sample, get: impl Fn(&mut Predictor) -> &mut f64) -> f64 {
        let eps = 1e-6;
        let mut plus = p.clone();
        *get(&mut plus) += eps;
        let mut minus = p.clone();
        *get(&mut minus) -= eps;
        (plus.loss(s) - minus.loss(s)) / (2.0 * eps)
    }

    #[test]
    fn gradients_of_every_factor_match_finite_differences() {
        let p = perturbed();
        let s = Sample {
            x: vec![0.3, -0.7, 1.1, 0.05],
            y: 0.9,
        };
        let g = p.grads(&s);
        let close = |a: f64, b: f64, what: &str| {
            assert!(
                (a - b).abs() <= 1e-6 + 1e-4 * b.abs(),
                "{what}: analytic {a} vs numeric {b}"
            );
        };
        for ((i, j), v) in g.micro_a.indexed_iter() {
            close(*v, numeric(&p, &s, |p| &mut p.micro.a[[i, j]]), "micro A");
        }
        for ((i, j), v) in g.micro_b.indexed_iter() {
            close(*v, numeric(&p, &s, |p| &mut p.micro.b[[i, j]]), "micro B");
        }
        for ((i, j), v) in g.base_a.indexed_iter() {
            close(
                *v,
                numeric(&p, &s, |p| &mut p.base.lora.a[[i, j]]),
                "base A",
            );
        }
        for ((i, j), v) in g.base_b.indexed_iter() {
            close(
                *v,
                numeric(&p, &s, |p| &mut p.base.lora.b[[i, j]]),
                "base B",
            );
        }
        for (i, v) in g.w2.indexed_iter() {
            close(*v, numeric(&p, &s, |p| &mut p.base.w2[i]), "w2");
        }
        close(g.b2, numeric(&p, &s, |p| &mut p.base.b2), "b2");
        assert!(
            g.micro_a.iter().any(|v| v.abs() > 1e-6),
            "A's gradient is real"
        );
    }

    #[test]
    fn the_consolidation_gradient_with_ewc_matches_finite_differences() {
        let mut p = perturbed();
        let samples: Vec<Sample> = (0..6)
            .map(|i| Sample {
                x: vec![i as f64 * 0.2, 1.0 - i as f64 * 0.1, 0.5, -0.3],
                y: (i % 3) as f64 / 2.0,
            })
            .collect();
        let n = p.base.flat().len();
        p.ewc = Some(Ewc {
            fisher: (0..n).map(|i| (i % 5) as f64 / 4.0).collect(),
            anchor: p.base.flat().iter().map(|v| v + 0.1).collect(),
        });
        let g = p.consolidation_gradient(&samples);
        let eps = 1e-6;
        for i in 0..n {
            let mut step = vec![0.0; n];
            step[i] = -eps; // apply subtracts
            let mut plus = p.clone();
            plus.base.apply(&step);
            step[i] = eps;
            let mut minus = p.clone();
            minus.base.apply(&step);
            let numeric = (plus.consolidation_objective(&samples)
                - minus.consolidation_objective(&samples))
                / (2.0 * eps);
            assert!(
                (g[i] - numeric).abs() <= 1e-6 + 1e-4 * numeric.abs(),
                "parameter {i}: analytic {} vs numeric {numeric}",
                g[i]
            );
        }
    }

    #[test]
    fn micro_steps_learn_and_consolidation_keeps_what_they_learned() {
        let mut p = Predictor::new(small());
        let samples: Vec<Sample> = (0..40)
            .map(|i| {
                let a = (i % 7) as f64 / 7.0;
                Sample {
                    x: vec![a, 1.0 - a, 0.5, 0.0],
                    y: 0.2 + 0.6 * a,
                }
            })
            .collect();
        let error = |p: &Predictor| {
            samples
                .iter()
                .map(|s| (p.predict(&s.x) - s.y).abs())
                .sum::<f64>()
                / samples.len() as f64
        };
        let initial = error(&p);
        for s in samples.iter().cycle().take(200) {
            p.observe(s.clone());
        }
        let adapted = error(&p);
        assert!(adapted < initial * 0.7, "micro: {initial} -> {adapted}");
        let (before, after) = p.consolidate();
        assert!(
            after < before,
            "consolidation objective {before} -> {after}"
        );
        assert_eq!(p.version, 1);
        assert_eq!(p.micro.b, Array2::<f64>::zeros((5, 2)), "micro reset");
        let consolidated = error(&p);
        assert!(
            consolidated < initial * 0.7,
            "base: {initial} -> {consolidated}"
        );
        let restored = Predictor::restore(&p.snapshot().expect("snapshot")).expect("restore");
        assert_eq!(restored, p);
    }
}
