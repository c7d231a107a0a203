//! Which pools have live workers, from the `qe_workers` bucket (entries expire unless the
//! worker renews them), cached briefly so routing stays cheap.

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
}

impl Liveness {
    pub fn new(bucket: kv::Store, ttl: Duration) -> Self {
        Self {
            bucket,
            ttl,
            cache: Mutex::new(None),
        }
    }

    /// Live worker counts per pool; on a lookup failure, the last known counts.
    pub async fn live_pools(&self) -> LivePools {
        if let Ok(cache) = self.cache.lock() {
            if let Some((at, pools)) = cache.as_ref() {
                if at.elapsed() < self.ttl {
                    return pools.clone();
                }
            }
        }
        match count_live(&self.bucket).await {
            Ok(pools) => {
                if let Ok(mut cache) = self.cache.lock() {
                    *cache = Some((Instant::now(), pools.clone()));
                }
                pools
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read live workers; using last known");
                self.cache
                    .lock()
                    .ok()
                    .and_then(|c| c.as_ref().map(|(_, p)| p.clone()))
                    .unwrap_or_default()
            }
        }
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
