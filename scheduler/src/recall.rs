//! The router's memory: a ReasoningBank of what past jobs reached on each pool, kept by
//! the scheduler when it has an embedder. At submission the module is embedded and the
//! most similar past jobs retrieved; where enough of them ran on a pool, their
//! similarity-weighted mean quality is the estimate for that pool (retrieval knows the
//! very module or its near twins, which the SONA predictor, seeing only complexity
//! features, cannot tell apart). When the job's result comes back, its outcome is stored.
//!
//! A replica learns from the jobs it routed (it holds their embeddings until their result
//! arrives); replicas keep a bank each.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::StreamExt;
use qefleet_inference::Embedder;
use qefleet_memory::{Bank, BankSettings, Neighbour, Trajectory};
use qefleet_schemas::{now_unix_ms, JobResult, JobStatus, Pool};
use qefleet_shared::metrics::Metrics;
use qefleet_shared::shutdown::Shutdown;
use qefleet_shared::subjects::RESULTS_SUBJECTS;

/// Neighbours retrieved per submission.
const RETRIEVE: usize = 10;
/// A past job counts for the estimate from this cosine similarity on.
pub const ROUTE_SIMILARITY: f32 = 0.9;
/// Past jobs of a pool (merged entries count for all theirs) needed for an estimate.
pub const MIN_RECALLED: u32 = 2;
/// Submissions whose result is awaited, at most (the oldest are forgotten).
const PENDING: usize = 50_000;

/// What retrieval expects of a job on each pool.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recalled {
    pub embedding: Vec<f32>,
    pub local: Option<f64>,
    pub cloud: Option<f64>,
    /// Similar past jobs behind the estimates.
    pub jobs: u32,
}

/// The similarity-weighted mean quality per pool of the neighbours at or above
/// [`ROUTE_SIMILARITY`], for pools with at least [`MIN_RECALLED`] jobs.
pub fn estimate(neighbours: &[Neighbour]) -> (Option<f64>, Option<f64>, u32) {
    let mut sums: HashMap<&str, (f64, f64, u32)> = HashMap::new();
    for n in neighbours
        .iter()
        .filter(|n| n.similarity >= ROUTE_SIMILARITY)
    {
        let t = &n.trajectory;
        let w = f64::from(n.similarity) * f64::from(t.count.max(1));
        let e = sums.entry(t.pool.as_str()).or_default();
        e.0 += w * t.quality;
        e.1 += w;
        e.2 += t.count.max(1);
    }
    let of = |pool: Pool| {
        sums.get(pool.as_str())
            .filter(|(_, w, n)| *n >= MIN_RECALLED && *w > 0.0)
            .map(|(s, w, _)| s / w)
    };
    let jobs = sums.values().map(|(_, _, n)| n).sum();
    (of(Pool::Local), of(Pool::Cloud), jobs)
}

/// The scheduler's bank, its embedder, and the embeddings of jobs awaiting results.
#[derive(Debug, Clone)]
pub struct RouteMemory {
    bank: Bank,
    embedder: Embedder,
    metrics: Metrics,
    pending: Arc<Mutex<Pending>>,
}

#[derive(Debug, Default)]
struct Pending {
    by_job: HashMap<String, Vec<f32>>,
    order: VecDeque<String>,
}

impl RouteMemory {
    /// Opens the bank at `dir`; `None` (with a warning) when it cannot.
    pub fn open(dir: &Path, embedder: Embedder, metrics: Metrics) -> Option<Self> {
        let settings = BankSettings {
            dimension: embedder.dimension(),
            ..BankSettings::default()
        };
        match Bank::open(dir, settings) {
            Ok(bank) => {
                tracing::info!(dir = %dir.display(), entries = bank.len(), "router memory open");
                Some(Self {
                    bank,
                    embedder,
                    metrics,
                    pending: Arc::default(),
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "routing without memory");
                None
            }
        }
    }

    /// Embeds the module and estimates each pool from similar past jobs. A failure costs
    /// the job its recalled estimate, nothing else.
    pub async fn recall(&self, source: &str) -> Option<Recalled> {
        let embedding = match self
            .embedder
            .embed_one_observed(source, &self.metrics)
            .await
        {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "module not embedded; routing without memory");
                return None;
            }
        };
        let searched = Instant::now();
        let neighbours = self
            .bank
            .search_off_thread(embedding.clone(), RETRIEVE)
            .await;
        self.metrics
            .memory_search_seconds
            .with_label_values(&["route"])
            .observe(searched.elapsed().as_secs_f64());
        let (local, cloud, jobs) = estimate(&neighbours);
        Some(Recalled {
            embedding,
            local,
            cloud,
            jobs,
        })
    }

    /// Holds the job's embedding until its result arrives.
    pub fn expect(&self, job_id: &str, embedding: Vec<f32>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending
            .by_job
            .insert(job_id.to_string(), embedding)
            .is_none()
        {
            pending.order.push_back(job_id.to_string());
        }
        while pending.order.len() > PENDING {
            if let Some(old) = pending.order.pop_front() {
                pending.by_job.remove(&old);
            }
        }
    }

    /// Stores what a result of a job this replica routed reached on its pool, and for an
    /// escalated job also what the local pool reached before it.
    pub async fn learn(&self, result: &JobResult) {
        if result.status == JobStatus::Expired {
            return;
        }
        let embedding = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.by_job.remove(&result.job_id)
        };
        let Some(embedding) = embedding else {
            return;
        };
        let quality = match result.status {
            JobStatus::Succeeded => result.quality_score.unwrap_or(0.0),
            _ => 0.0,
        };
        let mut outcomes = vec![(result.pool, result.engine.clone(), quality)];
        if let Some(escalation) = &result.escalation {
            outcomes.push((
                Pool::Local,
                escalation.local_engine.clone(),
                escalation.local_quality_score.unwrap_or(0.0),
            ));
        }
        for (pool, engine, quality) in outcomes {
            let trajectory = Trajectory {
                job_id: result.job_id.clone(),
                module_name: result.module_name.clone(),
                embedding: embedding.clone(),
                features: Vec::new(),
                complexity: String::new(),
                pool: pool.as_str().to_string(),
                engine,
                rounds: result.refinement_rounds,
                quality,
                patterns: Vec::new(),
                suite: String::new(),
                count: 1,
                at_ms: now_unix_ms(),
            };
            let bank = self.bank.clone();
            match tokio::task::spawn_blocking(move || bank.insert(trajectory)).await {
                Ok(Ok(inserted)) => {
                    self.metrics
                        .memory_inserts
                        .with_label_values(&[inserted.label()])
                        .inc();
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "router memory: outcome not stored"),
                Err(e) => tracing::warn!(error = %e, "router memory: store task failed"),
            }
        }
    }
}

/// Feeds every result to the memory (core subscription: each replica sees all results
/// and learns from the ones it routed).
pub async fn follow_results(
    client: async_nats::Client,
    memory: RouteMemory,
    mut shutdown: Shutdown,
) {
    let mut results = match client.subscribe(RESULTS_SUBJECTS).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "router memory cannot follow results");
            return;
        }
    };
    loop {
        let message = tokio::select! {
            _ = shutdown.wait() => return,
            m = results.next() => m,
        };
        let Some(message) = message else { return };
        match qefleet_shared::messages::decode::<JobResult>(
            message.headers.as_ref(),
            &message.payload,
        ) {
            Ok((result, _)) => memory.learn(&result).await,
            Err(e) => tracing::debug!(error = %e, "router memory: unreadable result skipped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neighbour(pool: &str, quality: f64, similarity: f32, count: u32) -> Neighbour {
        Neighbour {
            trajectory: Trajectory {
                job_id: "j".into(),
                module_name: "m".into(),
                embedding: Vec::new(),
                features: Vec::new(),
                complexity: String::new(),
                pool: pool.into(),
                engine: "e".into(),
                rounds: 1,
                quality,
                patterns: Vec::new(),
                suite: String::new(),
                count,
                at_ms: 0,
            },
            similarity,
        }
    }

    #[test]
    fn estimates_weigh_similar_jobs_and_need_enough_of_them() {
        let found = [
            neighbour("local", 0.2, 0.99, 3),
            neighbour("local", 0.8, 0.95, 1),
            neighbour("cloud", 0.9, 0.97, 1),
            // Too far to count.
            neighbour("cloud", 0.1, 0.5, 10),
        ];
        let (local, cloud, jobs) = estimate(&found);
        let (a, b) = (f64::from(0.99f32), f64::from(0.95f32));
        let want = (a * 3.0 * 0.2 + b * 0.8) / (a * 3.0 + b);
        assert!((local.expect("local") - want).abs() < 1e-9);
        assert_eq!(cloud, None, "one cloud job is not enough");
        assert_eq!(jobs, 5);
        assert_eq!(estimate(&[]), (None, None, 0));
    }
}
