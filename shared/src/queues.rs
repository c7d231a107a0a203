//! One reading of the fleet's queues from JetStream itself: jobs per pool and complexity
//! (the work-queue stream keeps a job until it is acknowledged, so its per-subject count
//! is pending + ack-pending), each pool consumer's counters, the oldest job per pool and
//! the dead letters per subject. `qefleet status`, the scheduler's routing lag and the
//! queue metrics all read it, so they cannot disagree.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, stream::Stream};
use futures_util::StreamExt;
use qefleet_schemas::{now_unix_ms, Complexity, Pool};

use crate::metrics::Metrics;
use crate::subjects::{
    pool_consumer, pool_filter, DLQ_STREAM, DLQ_SUBJECTS, JOBS_STREAM, JOBS_SUBJECTS,
};

/// The pool consumer's own counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerCounts {
    /// Jobs not yet delivered.
    pub pending: u64,
    /// Jobs delivered and not yet acknowledged (running, or waiting for redelivery).
    pub ack_pending: u64,
    /// Jobs delivered more than once and not yet acknowledged.
    pub redelivered: u64,
}

/// One pool's queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolQueue {
    /// Jobs in the work queue by the last subject token (complexity, or `consolidate`).
    pub by_class: BTreeMap<String, u64>,
    /// `None` while no worker of the pool has created its consumer.
    pub consumer: Option<ConsumerCounts>,
    /// Age of the oldest job still in the queue, `None` when it is empty.
    pub oldest_age_ms: Option<u64>,
}

impl PoolQueue {
    /// Every job of the pool in the queue: waiting plus in flight.
    pub fn queued(&self) -> u64 {
        self.by_class.values().sum()
    }

    /// The routing lag: pending + ack-pending from the consumer (0 without one).
    pub fn lag(&self) -> u64 {
        self.consumer
            .map(|c| c.pending + c.ack_pending)
            .unwrap_or(0)
    }
}

/// A reading of every queue. Missing streams read as empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSnapshot {
    pub pools: BTreeMap<Pool, PoolQueue>,
    /// Dead letters by the DLQ subject's last token (a pool, or `submit`).
    pub dead_letters: BTreeMap<String, u64>,
}

impl QueueSnapshot {
    pub fn pool(&self, pool: Pool) -> PoolQueue {
        self.pools.get(&pool).cloned().unwrap_or_default()
    }

    /// Sets the queue gauges. Every pool and class the fleet knows is written, 0 when
    /// absent, so an emptied queue reads 0 instead of keeping its last value.
    pub fn export(&self, metrics: &Metrics) {
        for pool in Pool::ALL {
            let queue = self.pool(pool);
            let classes: Vec<&str> = match pool {
                Pool::Maint => vec!["consolidate"],
                _ => Complexity::ALL.iter().map(|c| c.as_str()).collect(),
            };
            for class in classes {
                let n = queue.by_class.get(class).copied().unwrap_or(0);
                metrics
                    .queue_lag
                    .with_label_values(&[pool.as_str(), class])
                    .set(n as i64);
            }
            for (class, n) in &queue.by_class {
                metrics
                    .queue_lag
                    .with_label_values(&[pool.as_str(), class])
                    .set(*n as i64);
            }
            let counts = queue.consumer.unwrap_or_default();
            metrics
                .queue_ack_pending
                .with_label_values(&[pool.as_str()])
                .set(counts.ack_pending as i64);
            metrics
                .queue_redelivered
                .with_label_values(&[pool.as_str()])
                .set(counts.redelivered as i64);
            metrics
                .queue_oldest_age
                .with_label_values(&[pool.as_str()])
                .set(queue.oldest_age_ms.unwrap_or(0) as f64 / 1000.0);
        }
        for subject in Pool::ALL.map(|p| p.as_str()).into_iter().chain(["submit"]) {
            let n = self.dead_letters.get(subject).copied().unwrap_or(0);
            metrics
                .dlq_depth
                .with_label_values(&[subject])
                .set(n as i64);
        }
        for (subject, n) in &self.dead_letters {
            metrics
                .dlq_depth
                .with_label_values(&[subject])
                .set(*n as i64);
        }
    }
}

/// Message counts of `stream` per subject under `filter` (one request for all of them).
async fn subject_counts(stream: &mut Stream, filter: &str) -> Vec<(String, u64)> {
    let mut counts = Vec::new();
    if let Ok(mut subjects) = stream.info_with_subjects(filter).await {
        while let Some(Ok((subject, n))) = subjects.next().await {
            counts.push((subject, n as u64));
        }
    }
    counts
}

/// The last token of a subject (`qe.jobs.local.simple` → `simple`).
fn last_token(subject: &str) -> &str {
    subject.rsplit('.').next().unwrap_or(subject)
}

/// Reads every queue now.
pub async fn sample(js: &jetstream::Context) -> QueueSnapshot {
    let mut snapshot = QueueSnapshot::default();
    if let Ok(mut jobs) = js.get_stream(JOBS_STREAM).await {
        // `qe.jobs.<pool>.<class>`: one listing, split by pool here.
        let all = subject_counts(&mut jobs, JOBS_SUBJECTS).await;
        for pool in Pool::ALL {
            let mut by_class = BTreeMap::new();
            for (subject, n) in &all {
                if subject.split('.').nth(2) == Some(pool.as_str()) {
                    *by_class.entry(last_token(subject).to_string()).or_insert(0) += n;
                }
            }
            let consumer =
                jobs.consumer_info(pool_consumer(pool))
                    .await
                    .ok()
                    .map(|c| ConsumerCounts {
                        pending: c.num_pending,
                        ack_pending: c.num_ack_pending as u64,
                        redelivered: c.num_redelivered as u64,
                    });
            let oldest_age_ms = if by_class.values().any(|n| *n > 0) {
                jobs.get_first_raw_message_by_subject(pool_filter(pool), 0)
                    .await
                    .ok()
                    .map(|m| {
                        let at = (m.time.unix_timestamp_nanos() / 1_000_000) as u64;
                        now_unix_ms().saturating_sub(at)
                    })
            } else {
                None
            };
            snapshot.pools.insert(
                pool,
                PoolQueue {
                    by_class,
                    consumer,
                    oldest_age_ms,
                },
            );
        }
    }
    if let Ok(mut dlq) = js.get_stream(DLQ_STREAM).await {
        for (subject, n) in subject_counts(&mut dlq, DLQ_SUBJECTS).await {
            *snapshot
                .dead_letters
                .entry(last_token(&subject).to_string())
                .or_insert(0) += n;
        }
    }
    snapshot
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge(metrics: &Metrics, line_start: &str) -> Option<String> {
        metrics
            .render()
            .lines()
            .find(|l| l.starts_with(line_start))
            .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
    }

    #[test]
    fn export_writes_zero_for_what_emptied() {
        let metrics = Metrics::new();
        let mut snapshot = QueueSnapshot::default();
        snapshot.pools.insert(
            Pool::Local,
            PoolQueue {
                by_class: BTreeMap::from([("simple".into(), 3), ("complex".into(), 1)]),
                consumer: Some(ConsumerCounts {
                    pending: 2,
                    ack_pending: 2,
                    redelivered: 1,
                }),
                oldest_age_ms: Some(2500),
            },
        );
        snapshot.dead_letters.insert("local".into(), 4);
        snapshot.export(&metrics);
        let lag = r#"qefleet_queue_lag_jobs{complexity="simple",pool="local"}"#;
        assert_eq!(gauge(&metrics, lag).as_deref(), Some("3"));
        assert_eq!(
            gauge(
                &metrics,
                r#"qefleet_queue_oldest_job_age_seconds{pool="local"}"#
            )
            .as_deref(),
            Some("2.5")
        );
        assert_eq!(
            gauge(&metrics, r#"qefleet_dlq_depth_messages{pool="local"}"#).as_deref(),
            Some("4")
        );
        assert_eq!(snapshot.pool(Pool::Local).queued(), 4);
        assert_eq!(snapshot.pool(Pool::Local).lag(), 4);

        QueueSnapshot::default().export(&metrics);
        assert_eq!(gauge(&metrics, lag).as_deref(), Some("0"));
        assert_eq!(
            gauge(
                &metrics,
                r#"qefleet_queue_lag_jobs{complexity="consolidate",pool="maint"}"#
            )
            .as_deref(),
            Some("0")
        );
        assert_eq!(
            gauge(&metrics, r#"qefleet_dlq_depth_messages{pool="local"}"#).as_deref(),
            Some("0")
        );
    }
}
