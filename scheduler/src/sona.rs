//! The SONA quality predictor as this scheduler has it: the latest snapshot in the
//! `qe_sona` bucket, followed as consolidations store new ones (the adapter version in
//! use is a metric). Routing does not consult it yet.

use async_nats::jetstream::kv;
use qefleet_learn::SonaSnapshot;
use qefleet_shared::consume::watch_key;
use qefleet_shared::metrics::Metrics;
use qefleet_shared::shutdown::Shutdown;
use qefleet_shared::subjects::QUALITY_PREDICTOR_KEY;

/// Follows the quality predictor's snapshots: the adapter version this process uses.
pub async fn watch_adapter(bucket: kv::Store, metrics: Metrics, shutdown: Shutdown) {
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
            }
            Err(e) => tracing::warn!(error = %e, "unreadable SONA snapshot ignored"),
        },
    )
    .await;
}
