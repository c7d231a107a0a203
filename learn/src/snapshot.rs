//! The snapshot the fleet stores and loads.

use serde::{Deserialize, Serialize};

use crate::predictor::{Predictor, Settings};

/// A versioned snapshot of the quality predictor, as the fleet stores it (the `qe_sona`
/// bucket) and every process loads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SonaSnapshot {
    /// Consolidations applied to the predictor (its adapter version).
    pub version: u64,
    /// The consolidation job that produced this snapshot.
    pub consolidation: u64,
    /// Last results-stream sequence learned from.
    pub results_seq: u64,
    /// Jobs learned from in all.
    pub jobs: u64,
    pub updated_at_ms: u64,
    pub predictor: Predictor,
}

impl SonaSnapshot {
    pub fn new() -> Self {
        Self {
            version: 0,
            consolidation: 0,
            results_seq: 0,
            jobs: 0,
            updated_at_ms: 0,
            predictor: Predictor::new(Settings::default()),
        }
    }

    /// MessagePack: every f64 comes back exactly.
    pub fn encode(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        rmp_serde::to_vec_named(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

impl Default for SonaSnapshot {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Sample;

    #[test]
    fn snapshots_round_trip_exactly() {
        let mut s = SonaSnapshot::new();
        s.predictor.observe(Sample {
            x: vec![0.5; 12],
            y: 0.7,
        });
        s.predictor.consolidate();
        s.version = 1;
        let back = SonaSnapshot::decode(&s.encode().expect("encode")).expect("decode");
        assert_eq!(back, s);
    }
}
