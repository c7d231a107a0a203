//! The hook the maint pool runs for each consolidation job: `SonaConsolidator`
//! (`sona.rs`) in the fleet, `RecordOnly` where a test or bench wants no learning.

use std::future::Future;
use std::pin::Pin;

use async_nats::jetstream;
use qefleet_schemas::ConsolidationJob;
use qefleet_shared::metrics::Metrics;

pub type ConsolidateFuture<'a> = Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;

/// What a consolidation may use: the worker's JetStream context and metrics.
#[derive(Debug, Clone)]
pub struct ConsolidationContext {
    pub js: jetstream::Context,
    pub metrics: Metrics,
}

/// Consolidates what recent completions taught the fleet. Returns a summary for the
/// `consolidated` event, or an error to retry.
pub trait Consolidator: Send + Sync + std::fmt::Debug {
    fn consolidate<'a>(
        &'a self,
        job: &'a ConsolidationJob,
        ctx: &'a ConsolidationContext,
    ) -> ConsolidateFuture<'a>;
}

/// Records the consolidation and changes nothing (tests and benches of the backbone).
#[derive(Debug, Default)]
pub struct RecordOnly;

impl Consolidator for RecordOnly {
    fn consolidate<'a>(
        &'a self,
        job: &'a ConsolidationJob,
        _: &'a ConsolidationContext,
    ) -> ConsolidateFuture<'a> {
        Box::pin(async move {
            Ok(format!(
                "consolidation {} after {} completions: recorded, nothing learned",
                job.number, job.completions
            ))
        })
    }
}
