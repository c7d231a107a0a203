//! The SONA quality predictor as this scheduler has it: the latest snapshot in the
//! `qe_sona` bucket, swapped in as consolidations (or a `qefleet sona rollback`) store new
//! ones. The router asks it how well a job would do on each pool; the adapter version in
//! use is a metric.

use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv;
use qefleet_learn::{PoolEstimates, SonaSnapshot};
use qefleet_schemas::ComplexityReport;
use qefleet_shared::consume::watch_key;
use qefleet_shared::metrics::Metrics;
use qefleet_shared::shutdown::Shutdown;
use qefleet_shared::subjects::QUALITY_PREDICTOR_KEY;

/// The snapshot in use, shared by the submission path and the watcher that swaps it.
#[derive(Debug, Default)]
pub struct QualityModel {
    current: RwLock<Option<Arc<SonaSnapshot>>>,
    /// Off: routing ignores the predictor (`--learned-routing false`).
    disabled: bool,
}

impl QualityModel {
    pub fn new(enabled: bool) -> Self {
        Self {
            current: RwLock::default(),
            disabled: !enabled,
        }
    }

    /// Swaps in `snapshot` (a new consolidation or a rollback).
    pub fn set(&self, snapshot: SonaSnapshot) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        *current = Some(Arc::new(snapshot));
    }

    /// How well a job with this complexity is expected to do on each pool; `None` while
    /// the predictor has not learned enough, or learned routing is off.
    pub fn estimate(&self, report: &ComplexityReport) -> Option<PoolEstimates> {
        if self.disabled {
            return None;
        }
        let snapshot = {
            let current = self.current.read().unwrap_or_else(|e| e.into_inner());
            current.clone()?
        };
        snapshot.estimate(report)
    }
}

/// Follows the quality predictor's snapshots into `model`, and the adapter version in use
/// into the metrics.
pub async fn watch_adapter(
    bucket: kv::Store,
    model: Arc<QualityModel>,
    metrics: Metrics,
    shutdown: Shutdown,
) {
    watch_key(
        bucket,
        QUALITY_PREDICTOR_KEY,
        "the SONA snapshot",
        shutdown,
        |value| match SonaSnapshot::decode(value) {
            Ok(snapshot) => {
                tracing::info!(
                    version = snapshot.version,
                    jobs = snapshot.jobs,
                    "SONA quality predictor loaded"
                );
                metrics
                    .sona_adapter_version
                    .set(i64::try_from(snapshot.version).unwrap_or(i64::MAX));
                model.set(snapshot);
            }
            Err(e) => tracing::warn!(error = %e, "unreadable SONA snapshot ignored"),
        },
    )
    .await;
}
