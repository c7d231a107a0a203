//! The hook the maint pool runs for each consolidation job. The learning itself (SONA)
//! arrives with a later issue; until then the fleet records that consolidation ran.

use std::future::Future;
use std::pin::Pin;

use qefleet_schemas::ConsolidationJob;

pub type ConsolidateFuture<'a> = Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;

/// Consolidates what recent completions taught the fleet. Returns a summary for the
/// `consolidated` event, or an error to retry.
pub trait Consolidator: Send + Sync + std::fmt::Debug {
    fn consolidate<'a>(&'a self, job: &'a ConsolidationJob) -> ConsolidateFuture<'a>;
}

/// Records the consolidation and changes nothing: the fleet has no learned models yet.
#[derive(Debug, Default)]
pub struct RecordOnly;

impl Consolidator for RecordOnly {
    fn consolidate<'a>(&'a self, job: &'a ConsolidationJob) -> ConsolidateFuture<'a> {
        Box::pin(async move {
            Ok(format!(
                "consolidation {} after {} completions: no learned models to update yet",
                job.number, job.completions
            ))
        })
    }
}
