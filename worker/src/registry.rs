//! Liveness: a worker renews `<pool>.<worker_id>` in the `qe_workers` bucket while it
//! runs; entries expire on their own when it dies, and are removed when it drains.

use std::time::Duration;

use async_nats::jetstream::kv;
use qefleet_schemas::Pool;
use qefleet_shared::provision::WORKER_TTL;
use qefleet_shared::shutdown::Shutdown;

pub fn key(pool: Pool, worker_id: &str) -> String {
    format!("{pool}.{worker_id}")
}

/// Renews this worker's entry with what `info` says now, until shutdown, then deletes it.
pub async fn heartbeat(
    bucket: kv::Store,
    key: String,
    info: Box<dyn Fn() -> String + Send>,
    mut shutdown: Shutdown,
) {
    let every = WORKER_TTL / 3;
    loop {
        if let Err(e) = bucket.put(&key, info().into()).await {
            tracing::debug!(error = %e, "worker liveness not renewed");
        }
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep(every.max(Duration::from_millis(100))) => {}
        }
    }
    let _ = bucket.delete(&key).await;
}
