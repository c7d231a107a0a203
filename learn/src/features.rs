//! What the quality predictor sees of a job: its complexity report, scaled to about 0-1,
//! and the pool it runs on. The maint worker builds these from results to learn, the
//! scheduler from a submission to route; one function keeps the two the same.

use qefleet_schemas::{ComplexityReport, Pool};

/// Inputs of the predictor (its `Settings::inputs`).
pub const INPUTS: usize = 12;

/// The predictor's inputs for `report` run on `pool`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_fit_the_default_predictor_and_tell_pools_apart() {
        let report = ComplexityReport {
            class: qefleet_schemas::Complexity::Moderate,
            score: 0.4,
            cyclomatic: 12,
            max_function_cyclomatic: 5,
            code_lines: 120,
            functions: 6,
            async_functions: 0,
            classes: 1,
            branches: 9,
            imports: 3,
        };
        let local = features(&report, Pool::Local);
        let cloud = features(&report, Pool::Cloud);
        assert_eq!(local.len(), INPUTS);
        assert_eq!(crate::Settings::default().inputs, INPUTS);
        assert_ne!(local, cloud);
    }
}
