//! The snapshot the fleet stores and loads.

use std::collections::BTreeMap;

use qefleet_schemas::{ComplexityReport, Pool};
use serde::{Deserialize, Serialize};

use crate::features::features;
use crate::predictor::{Predictor, Settings};

/// Jobs of a pool the predictor must have learned from before its estimate for that pool
/// is trusted.
pub const MIN_POOL_JOBS: u64 = 20;

/// The predictor's estimate of the quality a job reaches on each pool, for the pools it
/// has learned enough of (`MIN_POOL_JOBS`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolEstimates {
    pub local: Option<f64>,
    pub cloud: Option<f64>,
    /// The adapter version that estimated (0: none).
    pub version: u64,
    /// Similar past jobs behind the estimates when they come from the router's memory
    /// (0: the predictor alone).
    pub recalled: u32,
    /// The pool the router's memory has no outcome of for jobs like this one while it has
    /// the other's: its estimate is only the predictor's guess, so the router tries it.
    pub untried: Option<Pool>,
}

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
    /// Jobs learned from, by pool (`local`, `cloud`).
    #[serde(default)]
    pub jobs_by_pool: BTreeMap<String, u64>,
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
            jobs_by_pool: BTreeMap::new(),
            updated_at_ms: 0,
            predictor: Predictor::new(Settings::default()),
        }
    }

    /// Jobs of `pool` learned from.
    pub fn jobs_of(&self, pool: Pool) -> u64 {
        self.jobs_by_pool.get(pool.as_str()).copied().unwrap_or(0)
    }

    /// The quality a job with this complexity is expected to reach on each pool, for the
    /// pools learned from at least `MIN_POOL_JOBS` jobs, once a consolidation has run;
    /// `None` before.
    pub fn estimate(&self, report: &ComplexityReport) -> Option<PoolEstimates> {
        if self.version == 0 {
            return None;
        }
        let of = |pool: Pool| {
            (self.jobs_of(pool) >= MIN_POOL_JOBS)
                .then(|| self.predictor.predict(&features(report, pool)))
        };
        let estimates = PoolEstimates {
            local: of(Pool::Local),
            cloud: of(Pool::Cloud),
            version: self.version,
            recalled: 0,
            untried: None,
        };
        (estimates.local.is_some() || estimates.cloud.is_some()).then_some(estimates)
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
