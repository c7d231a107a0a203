//! Engines shipped with the worker.

pub mod doctest;
pub mod generator;
pub mod llm;
pub mod measure;
pub mod prompt;
pub mod python;
pub mod refine;

pub use doctest::DoctestEngine;

/// What engine tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use qefleet_schemas::{
        Complexity, ComplexityReport, JobSpec, Pool, QueuedJob, RouteDecision, Strategy,
    };

    /// A queued job for `source` as module `module`, routed local, simple.
    pub fn queued(module: &str, source: &str) -> QueuedJob {
        let mut job = JobSpec::python(module, source);
        job.job_id = Some("engine-test".into());
        QueuedJob {
            schema_version: qefleet_schemas::SCHEMA_VERSION,
            job,
            complexity: ComplexityReport {
                class: Complexity::Simple,
                score: 5.0,
                cyclomatic: 9,
                max_function_cyclomatic: 4,
                code_lines: 25,
                functions: 4,
                async_functions: 0,
                classes: 2,
                branches: 5,
                imports: 0,
            },
            route: RouteDecision {
                pool: Pool::Local,
                subject: "qe.jobs.local.simple".into(),
                router: "test".into(),
                strategy: Strategy::Balanced,
                reasons: vec![],
            },
            submitted_at_ms: 0,
            escalation: None,
        }
    }
}
