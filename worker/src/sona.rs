//! The maint pool's consolidation job with SONA: the quality predictor learns from every
//! result published since the last consolidation (MicroLoRA steps per job), consolidates
//! into its BaseLoRA with EWC++, and the new snapshot is stored in the `qe_sona` bucket
//! (history kept for rollback) with a compare-and-set on the previous revision, so a
//! consolidation is applied whole or not at all, and a redelivered job that was already
//! applied changes nothing.

use std::time::Instant;

use async_nats::jetstream::{self, kv};
use qefleet_learn::{Sample, SonaSnapshot};
use qefleet_schemas::{
    now_unix_ms, ComplexityReport, ConsolidationJob, ContentType, JobResult, JobState, JobStatus,
    Pool,
};
use qefleet_shared::messages;
use qefleet_shared::metrics::Metrics;
use qefleet_shared::subjects::{
    JOB_STATE_BUCKET, QUALITY_PREDICTOR_KEY, RESULTS_STREAM, SONA_BUCKET,
};

use crate::consolidator::{ConsolidateFuture, ConsolidationContext, Consolidator};

/// Results learned from per consolidation at most (the most recent ones).
const MAX_BATCH: u64 = 1000;

/// The predictor's inputs: the complexity report scaled to about 0-1, and the pool.
pub fn features(report: &ComplexityReport, pool: Pool) -> Vec<f64> {
    let scaled = |v: u32, full: f64| (f64::from(v) / full).min(2.0);
    vec![
        report.score.min(2.0),
        scaled(report.cyclomatic, 50.0),
        scaled(report.max_function_cyclomatic, 20.0),
        scaled(report.code_lines, 1000.0),
        scaled(report.functions, 50.0),
        scaled(report.async_functions, 10.0),
        scaled(report.classes, 20.0),
        scaled(report.branches, 100.0),
        scaled(report.imports, 30.0),
        f64::from(u8::from(pool == Pool::Local)),
        f64::from(u8::from(pool == Pool::Cloud)),
        1.0,
    ]
}

/// The maint pool's consolidator in the fleet.
#[derive(Debug, Clone, Copy, Default)]
pub struct SonaConsolidator;

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
        let mut learned = 0u64;
        for seq in first..=last {
            // Gaps (results past their retention) are skipped.
            let Ok(message) = results.get_raw_message(seq).await else {
                continue;
            };
            let Ok((result, _)) =
                messages::decode::<JobResult>(Some(&message.headers), &message.payload)
            else {
                continue;
            };
            let y = match result.status {
                JobStatus::Succeeded => result.quality_score.unwrap_or(0.0),
                JobStatus::Failed => 0.0,
                JobStatus::Expired => continue,
            };
            let Ok(Some(state)) = states.get(&result.job_id).await else {
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
