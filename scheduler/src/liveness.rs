//! Which pools have live workers, from the `qe_workers` bucket (entries expire unless the
//! worker renews them), cached briefly so routing stays cheap.
//!
//! Reading the bucket lists its keys through a consumer the server creates and deletes:
//! one read at a time, however many submissions find the counts stale. While one
//! submission reads, the others route by the last counts; only the first ever waits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use qefleet_schemas::Pool;

use crate::router::LivePools;

#[derive(Debug)]
pub struct Liveness {
    bucket: kv::Store,
    ttl: Duration,
    cache: Mutex<Option<(Instant, LivePools)>>,
    /// Held while the bucket is read.
    reading: tokio::sync::Mutex<()>,
}

impl Liveness {
    pub fn new(bucket: kv::Store, ttl: Duration) -> Self {
        Self {
            bucket,
            ttl,
            cache: Mutex::new(None),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    /// Live worker counts per pool; on a lookup failure, the last known counts.
    pub async fn live_pools(&self) -> LivePools {
        let stale = match self.cached() {
            Some((at, pools)) if at.elapsed() < self.ttl => return pools,
            stale => stale,
        };
        let _reading = match (self.reading.try_lock(), stale) {
            (Ok(guard), _) => guard,
            // Another submission is reading the bucket: the last counts will do.
            (Err(_), Some((_, pools))) => return pools,
            // The first counts: wait for them, then take them unless they failed.
            (Err(_), None) => {
                let guard = self.reading.lock().await;
                if let Some((_, pools)) = self.cached() {
                    return pools;
                }
                guard
            }
        };
        match count_live(&self.bucket).await {
            Ok(pools) => {
                if let Ok(mut cache) = self.cache.lock() {
                    *cache = Some((Instant::now(), pools.clone()));
                }
                pools
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read live workers; using last known");
                self.cached().map(|(_, p)| p).unwrap_or_default()
            }
        }
    }

    fn cached(&self) -> Option<(Instant, LivePools)> {
        self.cache.lock().ok().and_then(|c| c.clone())
    }
}

/// Counts keys `<pool>.<worker_id>` in the workers bucket. A cloud worker whose every
/// provider has an open circuit breaker says `"accepting": false` and is not counted:
/// jobs stay local rather than queue behind providers that are down.
pub async fn count_live(bucket: &kv::Store) -> Result<LivePools, async_nats::Error> {
    let mut counts: HashMap<Pool, usize> = HashMap::new();
    let mut keys = bucket.keys().await?;
    while let Some(key) = keys.next().await {
        let key = key?;
        let Some(pool) = key.split('.').next().and_then(Pool::parse) else {
            continue;
        };
        if pool == Pool::Cloud {
            let accepting = bucket
                .get(&key)
                .await?
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(&v).ok())
                .and_then(|info| info["accepting"].as_bool())
                .unwrap_or(true);
            if !accepting {
                continue;
            }
        }
        *counts.entry(pool).or_default() += 1;
    }
    Ok(LivePools(counts))
}
