//! The maint pool's consolidation job with SONA: the quality predictor learns from every
//! result published since the last consolidation (MicroLoRA steps per job), consolidates
//! into its BaseLoRA with EWC++, and the new snapshot is stored in the `qe_sona` bucket
//! (history kept for rollback) with a compare-and-set on the previous revision, so a
//! consolidation is applied whole or not at all, and a redelivered job that was already
//! applied changes nothing.

use std::time::Instant;

use futures_util::StreamExt;

use async_nats::jetstream::{self, kv};
pub use qefleet_learn::features;
use qefleet_learn::{Sample, SonaSnapshot};
use qefleet_schemas::{now_unix_ms, ConsolidationJob, ContentType, JobResult, JobState, JobStatus};
use qefleet_shared::messages;
use qefleet_shared::metrics::Metrics;
use qefleet_shared::subjects::{
    JOB_STATE_BUCKET, QUALITY_PREDICTOR_KEY, RESULTS_STREAM, SONA_BUCKET,
};

use crate::consolidator::{ConsolidateFuture, ConsolidationContext, Consolidator};

/// Results learned from per consolidation at most (the most recent ones).
const MAX_BATCH: u64 = 1000;

/// The results published at stream sequences `first..=last`, in order, through one
/// ordered consumer (gaps, results past their retention, are skipped; unreadable ones
/// too).
async fn read_results(
    stream: &jetstream::stream::Stream,
    first: u64,
    last: u64,
) -> Result<Vec<JobResult>, String> {
    use jetstream::consumer::{pull, DeliverPolicy};
    if first > last {
        return Ok(Vec::new());
    }
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: first,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| format!("results stream reader: {e}"))?;
    let mut delivered = consumer
        .messages()
        .await
        .map_err(|e| format!("results stream reader: {e}"))?;
    let mut out = Vec::new();
    // The idle limit ends the read if the last results were removed meanwhile.
    while let Ok(Some(message)) = tokio::time::timeout(IDLE, delivered.next()).await {
        let message = message.map_err(|e| format!("results stream reader: {e}"))?;
        let seq = message.info().map_or(last, |i| i.stream_sequence);
        if let Ok((result, _)) =
            messages::decode::<JobResult>(message.headers.as_ref(), &message.payload)
        {
            out.push(result);
        }
        if seq >= last {
            break;
        }
    }
    Ok(out)
}

/// How long the results reader waits for the next message before it ends.
const IDLE: std::time::Duration = std::time::Duration::from_secs(5);

/// The maint pool's consolidator in the fleet. Consolidations run one at a time in a
/// process (jobs are delivered in order, so an earlier number is applied before a later
/// one); between processes the compare-and-set decides.
#[derive(Debug, Clone, Default)]
pub struct SonaConsolidator {
    one_at_a_time: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl SonaConsolidator {
    async fn run(
        &self,
        job: &ConsolidationJob,
        js: &jetstream::Context,
        metrics: &Metrics,
    ) -> Result<(String, &'static str), String> {
        let bucket = js
            .get_key_value(SONA_BUCKET)
            .await
            .map_err(|e| format!("SONA bucket: {e}"))?;
        let (mut snapshot, revision) = match bucket
            .entry(QUALITY_PREDICTOR_KEY)
            .await
            .map_err(|e| format!("SONA snapshot: {e}"))?
        {
            Some(entry) if entry.operation == kv::Operation::Put => (
                SonaSnapshot::decode(&entry.value).map_err(|e| e.to_string())?,
                entry.revision,
            ),
            Some(entry) => (SonaSnapshot::new(), entry.revision),
            None => (SonaSnapshot::new(), 0),
        };
        if snapshot.consolidation >= job.number {
            return Ok((
                format!(
                    "consolidation {} already applied (adapter version {})",
                    job.number, snapshot.version
                ),
                "skipped",
            ));
        }
        let mut results = js
            .get_stream(RESULTS_STREAM)
            .await
            .map_err(|e| format!("results stream: {e}"))?;
        let last = results
            .info()
            .await
            .map_err(|e| format!("results stream: {e}"))?
            .state
            .last_sequence;
        let states = js
            .get_key_value(JOB_STATE_BUCKET)
            .await
            .map_err(|e| format!("job states: {e}"))?;
        let first = (snapshot.results_seq + 1).max(last.saturating_sub(MAX_BATCH - 1));
        let results = read_results(&results, first, last).await?;
        // Each result's complexity report, from the job-state bucket, 16 reads in flight.
        let states: Vec<_> = futures_util::stream::iter(results)
            .map(|result| {
                let states = states.clone();
                async move {
                    let state = states.get(&result.job_id).await;
                    (result, state)
                }
            })
            .buffered(16)
            .collect()
            .await;
        let mut learned = 0u64;
        for (result, state) in states {
            let y = match result.status {
                JobStatus::Succeeded => result.quality_score.unwrap_or(0.0),
                JobStatus::Failed => 0.0,
                JobStatus::Expired => continue,
            };
            let Ok(Some(state)) = state else {
                continue;
            };
            let Ok(state) = qefleet_schemas::codec::decode::<JobState>(&state, ContentType::Json)
            else {
                continue;
            };
            snapshot.predictor.observe(Sample {
                x: features(&state.complexity, result.pool),
                y,
            });
            *snapshot
                .jobs_by_pool
                .entry(result.pool.as_str().to_string())
                .or_default() += 1;
            metrics
                .sona_jobs_learned
                .with_label_values(&[result.pool.as_str()])
                .inc();
            learned += 1;
        }
        let (before, after) = snapshot.predictor.consolidate();
        snapshot.version = snapshot.predictor.version;
        snapshot.consolidation = job.number;
        snapshot.results_seq = snapshot.results_seq.max(last);
        snapshot.jobs += learned;
        snapshot.updated_at_ms = now_unix_ms();
        let bytes = snapshot.encode().map_err(|e| e.to_string())?;
        // Compare-and-set on the revision read: two maint workers (or a redelivery racing
        // the first attempt) cannot both apply; the loser retries and finds it applied.
        let stored = if revision == 0 {
            bucket
                .create(QUALITY_PREDICTOR_KEY, bytes.into())
                .await
                .map_err(|e| format!("snapshot not stored (another consolidation?): {e}"))
        } else {
            bucket
                .update(QUALITY_PREDICTOR_KEY, bytes.into(), revision)
                .await
                .map_err(|e| format!("snapshot not stored (another consolidation?): {e}"))
        };
        stored?;
        metrics
            .sona_adapter_version
            .set(i64::try_from(snapshot.version).unwrap_or(i64::MAX));
        Ok((
            format!(
                "consolidation {}: learned from {learned} jobs (results up to #{last}), objective {before:.4} -> {after:.4}, adapter version {}",
                job.number, snapshot.version
            ),
            "applied",
        ))
    }
}

impl Consolidator for SonaConsolidator {
    fn consolidate<'a>(
        &'a self,
        job: &'a ConsolidationJob,
        ctx: &'a ConsolidationContext,
    ) -> ConsolidateFuture<'a> {
        Box::pin(async move {
            let _turn = self.one_at_a_time.lock().await;
            let started = Instant::now();
            let outcome = self.run(job, &ctx.js, &ctx.metrics).await;
            let label = match &outcome {
                Ok((_, label)) => *label,
                Err(_) => "failed",
            };
            ctx.metrics
                .sona_consolidation_seconds
                .with_label_values(&[label])
                .observe(started.elapsed().as_secs_f64());
            outcome.map(|(summary, _)| summary)
        })
    }
}

/// One stored snapshot of the quality predictor (a revision of its key).
#[derive(Debug, Clone)]
pub struct Revision {
    /// The key-value revision: unique, increasing, what a rollback names.
    pub revision: u64,
    pub snapshot: SonaSnapshot,
}

/// The stored snapshots of the quality predictor, oldest first (the bucket keeps ten).
pub async fn history(bucket: &kv::Store) -> Result<Vec<Revision>, String> {
    use futures_util::StreamExt;
    let mut entries = bucket
        .history(QUALITY_PREDICTOR_KEY)
        .await
        .map_err(|e| format!("SONA snapshot history: {e}"))?;
    let mut out = Vec::new();
    while let Some(entry) = entries.next().await {
        let entry = entry.map_err(|e| format!("SONA snapshot history: {e}"))?;
        if entry.operation != kv::Operation::Put {
            continue;
        }
        let snapshot = SonaSnapshot::decode(&entry.value)
            .map_err(|e| format!("revision {}: unreadable snapshot: {e}", entry.revision))?;
        out.push(Revision {
            revision: entry.revision,
            snapshot,
        });
    }
    Ok(out)
}

/// What a rollback did.
#[derive(Debug, Clone)]
pub struct RolledBack {
    /// The revision that was in use.
    pub from: Revision,
    /// The revision whose snapshot is in use again.
    pub to: Revision,
    /// The new revision holding it.
    pub revision: u64,
}

/// Puts an earlier snapshot back in use: `to` (a revision from [`history`]), or the one
/// before the latest. It is stored as a new revision with a compare-and-set on the latest,
/// so a consolidation finishing at the same moment makes the rollback fail (and say so)
/// instead of being silently overwritten; schedulers swap it in as they would a new one.
/// The next consolidation learns again from the results after the restored snapshot.
pub async fn rollback(bucket: &kv::Store, to: Option<u64>) -> Result<RolledBack, String> {
    let revisions = history(bucket).await?;
    let Some(latest) = revisions.last().cloned() else {
        return Err("no SONA snapshot stored yet: nothing to roll back".into());
    };
    let target = match to {
        Some(r) if r == latest.revision => {
            return Err(format!("revision {r} is the one in use already"));
        }
        Some(r) => revisions
            .iter()
            .find(|v| v.revision == r)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "revision {r} is not kept (kept: {})",
                    revisions
                        .iter()
                        .map(|v| v.revision.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?,
        None => revisions
            .iter()
            .rev()
            .nth(1)
            .cloned()
            .ok_or("only one SONA snapshot is stored: there is no earlier one to go back to")?,
    };
    let bytes = target.snapshot.encode().map_err(|e| e.to_string())?;
    let revision = bucket
        .update(QUALITY_PREDICTOR_KEY, bytes.into(), latest.revision)
        .await
        .map_err(|e| {
            format!(
                "not rolled back: the snapshot changed while rolling back (a consolidation?), try again: {e}"
            )
        })?;
    Ok(RolledBack {
        from: latest,
        to: target,
        revision,
    })
}
