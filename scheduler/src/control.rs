//! What routing reads besides the job: the operators' switch (from `--route-mode`, then
//! the `route_mode` key of the `qe_control` bucket, watched) and the queue lag of each
//! pool (sampled from its consumer every second, with the queue metrics). Both are read
//! per submission without touching NATS.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use qefleet_schemas::Pool;
use qefleet_shared::consume::watch_key;
use qefleet_shared::metrics::Metrics;
use qefleet_shared::queues;
use qefleet_shared::shutdown::Shutdown;
use qefleet_shared::subjects::ROUTE_MODE_KEY;

use crate::router::{PoolLag, RouteMode};

#[derive(Debug, Default)]
pub struct RouteControl {
    mode: AtomicU8,
    lag: RwLock<PoolLag>,
}

fn code(mode: RouteMode) -> u8 {
    match mode {
        RouteMode::Auto => 0,
        RouteMode::ForceLocal => 1,
        RouteMode::ForceCloud => 2,
    }
}

impl RouteControl {
    pub fn new(mode: RouteMode) -> Self {
        let control = Self::default();
        control.set_mode(mode);
        control
    }

    pub fn mode(&self) -> RouteMode {
        match self.mode.load(Ordering::Relaxed) {
            1 => RouteMode::ForceLocal,
            2 => RouteMode::ForceCloud,
            _ => RouteMode::Auto,
        }
    }

    pub fn set_mode(&self, mode: RouteMode) {
        self.mode.store(code(mode), Ordering::Relaxed);
    }

    pub fn lag(&self) -> PoolLag {
        self.lag.read().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn set_lag(&self, lag: PoolLag) {
        if let Ok(mut current) = self.lag.write() {
            *current = lag;
        }
    }
}

/// Samples the queues every `every` until shutdown: pending + ack-pending of the local
/// and cloud consumers for routing, and every queue gauge for Prometheus.
pub async fn sample_lag(
    js: jetstream::Context,
    control: std::sync::Arc<RouteControl>,
    metrics: Metrics,
    every: Duration,
    mut shutdown: Shutdown,
) {
    loop {
        let snapshot = queues::sample(&js).await;
        let mut lag = PoolLag::default();
        for pool in [Pool::Local, Pool::Cloud] {
            let queue = snapshot.pool(pool);
            if queue.consumer.is_some() {
                lag.0.insert(pool, queue.lag());
            }
        }
        control.set_lag(lag);
        snapshot.export(&metrics);
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Follows the `route_mode` key: its current value at start, then every change. A
/// deleted key or an unknown value leaves the mode as it was, with a warning.
pub async fn watch_mode(
    bucket: kv::Store,
    control: std::sync::Arc<RouteControl>,
    shutdown: Shutdown,
) {
    let apply = |value: &[u8]| {
        let text = String::from_utf8_lossy(value);
        match RouteMode::parse(&text) {
            Some(mode) => {
                if mode != control.mode() {
                    tracing::info!(mode = mode.as_str(), "route mode switched");
                }
                control.set_mode(mode);
            }
            None => {
                tracing::warn!(value = %text, "ignoring unknown route_mode (auto, force-local, force-cloud)")
            }
        }
    };
    watch_key(
        bucket,
        ROUTE_MODE_KEY,
        "the route switch (--route-mode stays in force)",
        shutdown,
        apply,
    )
    .await;
}
