//! k-means with k-means++ seeding (Arthur and Vassilvitskii 2007): the first centre
//! uniformly, each next one with probability proportional to its squared distance to the
//! nearest centre chosen so far (D² sampling), from a seeded generator so a distillation
//! is reproducible. Then Lloyd iterations until no assignment changes.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::vector::distance2;

/// The outcome: one centre per cluster and each point's cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Clustering {
    pub centres: Vec<Vec<f32>>,
    pub assignment: Vec<usize>,
    /// Sum of squared distances of points to their centres.
    pub inertia: f64,
    pub iterations: usize,
}

fn nearest(point: &[f32], centres: &[Vec<f32>]) -> (usize, f32) {
    centres
        .iter()
        .enumerate()
        .map(|(i, c)| (i, distance2(point, c)))
        .fold(
            (0, f32::INFINITY),
            |best, cur| if cur.1 < best.1 { cur } else { best },
        )
}

/// k-means++ seeding: `k` distinct points of `points` (fewer when there are fewer
/// distinct points).
pub fn seed(points: &[Vec<f32>], k: usize, rng: &mut StdRng) -> Vec<Vec<f32>> {
    let mut centres: Vec<Vec<f32>> = Vec::with_capacity(k);
    if points.is_empty() || k == 0 {
        return centres;
    }
    centres.push(points[rng.gen_range(0..points.len())].clone());
    let mut d2: Vec<f64> = points
        .iter()
        .map(|p| f64::from(distance2(p, &centres[0])))
        .collect();
    while centres.len() < k {
        let total: f64 = d2.iter().sum();
        if total <= 0.0 {
            break; // every point coincides with a centre
        }
        let mut target = rng.gen::<f64>() * total;
        let mut chosen = d2.len() - 1;
        for (i, w) in d2.iter().enumerate() {
            if target < *w {
                chosen = i;
                break;
            }
            target -= w;
        }
        let centre = points[chosen].clone();
        for (p, d) in points.iter().zip(d2.iter_mut()) {
            *d = d.min(f64::from(distance2(p, &centre)));
        }
        centres.push(centre);
    }
    centres
}

/// Clusters `points` into at most `k` groups.
pub fn kmeans(points: &[Vec<f32>], k: usize, seed_value: u64, max_iterations: usize) -> Clustering {
    let mut rng = StdRng::seed_from_u64(seed_value);
    let mut centres = seed(points, k, &mut rng);
    let mut assignment = vec![usize::MAX; points.len()];
    let mut iterations = 0;
    if centres.is_empty() {
        return Clustering {
            centres,
            assignment: Vec::new(),
            inertia: 0.0,
            iterations,
        };
    }
    let dim = points[0].len();
    while iterations < max_iterations.max(1) {
        iterations += 1;
        let mut changed = false;
        for (p, a) in points.iter().zip(assignment.iter_mut()) {
            let (c, _) = nearest(p, &centres);
            if *a != c {
                *a = c;
                changed = true;
            }
        }
        if !changed {
            break;
        }
        let mut sums = vec![vec![0f64; dim]; centres.len()];
        let mut counts = vec![0usize; centres.len()];
        for (p, a) in points.iter().zip(&assignment) {
            counts[*a] += 1;
            for (s, x) in sums[*a].iter_mut().zip(p) {
                *s += f64::from(*x);
            }
        }
        for ((centre, sum), n) in centres.iter_mut().zip(sums).zip(&counts) {
            if *n > 0 {
                *centre = sum.iter().map(|s| (s / *n as f64) as f32).collect();
            }
        }
    }
    let inertia = points
        .iter()
        .zip(&assignment)
        .map(|(p, a)| f64::from(distance2(p, &centres[*a])))
        .sum();
    Clustering {
        centres,
        assignment,
        inertia,
        iterations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three well-separated blobs in 8 dimensions.
    fn blobs(per: usize, rng: &mut StdRng) -> (Vec<Vec<f32>>, Vec<usize>) {
        let mut points = Vec::new();
        let mut truth = Vec::new();
        for blob in 0..3 {
            for _ in 0..per {
                let mut p: Vec<f32> = (0..8).map(|_| rng.gen_range(-0.1..0.1)).collect();
                p[blob] += 5.0;
                points.push(p);
                truth.push(blob);
            }
        }
        (points, truth)
    }

    #[test]
    fn finds_planted_clusters_reproducibly() {
        let mut rng = StdRng::seed_from_u64(7);
        let (points, truth) = blobs(50, &mut rng);
        let a = kmeans(&points, 3, 42, 50);
        let b = kmeans(&points, 3, 42, 50);
        assert_eq!(a, b, "same seed, same clustering");
        // Every planted blob maps to exactly one cluster.
        for blob in 0..3 {
            let labels: std::collections::HashSet<usize> = truth
                .iter()
                .zip(&a.assignment)
                .filter(|(t, _)| **t == blob)
                .map(|(_, l)| *l)
                .collect();
            assert_eq!(labels.len(), 1, "blob {blob} split: {labels:?}");
        }
        assert!(a.inertia < 150.0 * 8.0 * 0.01, "{}", a.inertia);
    }

    #[test]
    fn d2_seeding_spreads_the_centres() {
        // With D² sampling, three seeds from three far blobs land in three blobs nearly
        // always; uniform sampling would put two in one blob about 78% of the time.
        let mut rng = StdRng::seed_from_u64(1);
        let (points, _) = blobs(100, &mut rng);
        let mut spread = 0;
        for s in 0..50 {
            let mut rng = StdRng::seed_from_u64(s);
            let centres = seed(&points, 3, &mut rng);
            let blobs: std::collections::HashSet<usize> = centres
                .iter()
                .map(|c| (0..3).max_by(|a, b| c[*a].total_cmp(&c[*b])).unwrap_or(0))
                .collect();
            if blobs.len() == 3 {
                spread += 1;
            }
        }
        assert!(spread >= 48, "{spread}/50 seedings covered every blob");
    }

    #[test]
    fn fewer_distinct_points_than_k_gives_fewer_centres() {
        let points = vec![vec![1.0, 0.0]; 5];
        let c = kmeans(&points, 3, 0, 10);
        assert_eq!(c.centres.len(), 1);
        assert_eq!(c.assignment, vec![0; 5]);
        assert!(kmeans(&[], 3, 0, 10).centres.is_empty());
    }
}
