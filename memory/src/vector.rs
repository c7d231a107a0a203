//! Vectors as the bank keeps them: L2-normalised f32 (squared Euclidean distance on unit
//! vectors orders exactly like cosine), and an optional int8 form for storage.

use serde::{Deserialize, Serialize};

/// Scales `v` to unit length in place; a zero vector stays zero.
pub fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Squared Euclidean distance (what the index ranks by): the index's vectorised one.
pub fn distance2(a: &[f32], b: &[f32]) -> f32 {
    crate::hnsw::l2(a, b)
}

/// Symmetric int8 with one max-abs scale: `(scale, values)`, `value × scale ≈ x`.
pub fn quantise(v: &[f32]) -> (f32, Vec<i8>) {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    let data = v
        .iter()
        .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (scale, data)
}

/// Positions of the `k` vectors of `data` nearest to `q`, by exhaustive search (the
/// ground truth recall is measured against).
pub fn exact_nearest(data: &[Vec<f32>], q: &[f32], k: usize) -> Vec<usize> {
    let mut all: Vec<(usize, f32)> = data
        .iter()
        .enumerate()
        .map(|(i, v)| (i, distance2(q, v)))
        .collect();
    all.sort_by(|a, b| a.1.total_cmp(&b.1));
    all.into_iter().take(k).map(|(i, _)| i).collect()
}

/// Cosine similarity of two unit vectors from their squared distance.
pub fn cosine_from_distance2(d2: f32) -> f32 {
    1.0 - d2 / 2.0
}

/// A stored vector: f32, or int8 with one scale per vector (symmetric, max-abs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Stored {
    F32(Vec<f32>),
    I8 { scale: f32, data: Vec<i8> },
}

impl Stored {
    pub fn new(v: Vec<f32>, int8: bool) -> Self {
        if !int8 {
            return Stored::F32(v);
        }
        let (scale, data) = quantise(&v);
        Stored::I8 { scale, data }
    }

    /// The vector as f32, re-normalised after int8 rounding.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Stored::F32(v) => v.clone(),
            Stored::I8 { scale, data } => {
                let mut v: Vec<f32> = data.iter().map(|q| f32::from(*q) * scale).collect();
                normalise(&mut v);
                v
            }
        }
    }

    /// Squared distance from `q` (for int8, to the decoded, re-normalised vector).
    pub fn distance2(&self, q: &[f32]) -> f32 {
        match self {
            Stored::F32(v) => distance2(q, v),
            Stored::I8 { .. } => distance2(q, &self.to_f32()),
        }
    }

    /// Bytes of vector data this form keeps.
    pub fn bytes(&self) -> usize {
        match self {
            Stored::F32(v) => v.len() * 4,
            Stored::I8 { data, .. } => data.len() + 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_vectors_order_by_distance_as_by_cosine() {
        let mut a = vec![1.0, 2.0, 3.0];
        let mut b = vec![1.0, 2.5, 2.0];
        normalise(&mut a);
        normalise(&mut b);
        let cos: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((cosine_from_distance2(distance2(&a, &b)) - cos).abs() < 1e-6);
        let mut zero = vec![0.0; 3];
        normalise(&mut zero);
        assert_eq!(zero, vec![0.0; 3]);
    }

    #[test]
    fn int8_keeps_direction_in_a_quarter_of_the_bytes() {
        let mut v: Vec<f32> = (0..384)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        normalise(&mut v);
        let q = Stored::new(v.clone(), true);
        let back = q.to_f32();
        let cos: f32 = v.iter().zip(&back).map(|(x, y)| x * y).sum();
        assert!(cos > 0.999, "{cos}");
        assert_eq!(q.bytes(), 388);
        assert_eq!(Stored::new(v, false).bytes(), 1536);
    }
}
