//! Checks a submission before anything is queued. Every rejection names the field and
//! what would be accepted.

use qefleet_schemas::{ErrorCode, ErrorReply, JobSpec, Pool};

use crate::complexity::{analyze, Analysis};

/// Limits the scheduler enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_source_bytes: usize,
    pub max_job_seconds: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_source_bytes: 512 * 1024,
            max_job_seconds: 3600,
        }
    }
}

fn reject(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply {
        code,
        message: message.into(),
    }
}

fn is_token(s: &str, max: usize, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || extra.contains(&c))
}

const PY_KEYWORDS: [&str; 35] = [
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

fn is_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !PY_KEYWORDS.contains(&part)
        })
}

/// Validates a job and analyses its source. `now_ms` is the current time.
pub fn validate(job: &JobSpec, limits: &Limits, now_ms: u64) -> Result<Analysis, ErrorReply> {
    use ErrorCode::*;
    if job.language != "python" {
        return Err(reject(
            UnsupportedLanguage,
            format!(
                "language {:?} is not supported: only \"python\"",
                job.language
            ),
        ));
    }
    if job.source.trim().is_empty() {
        return Err(reject(
            EmptySource,
            "source is empty: send the module's text",
        ));
    }
    if job.source.len() > limits.max_source_bytes {
        return Err(reject(
            SourceTooLarge,
            format!(
                "source is {} bytes, over the limit of {} bytes: split the module or raise --max-source-bytes",
                job.source.len(),
                limits.max_source_bytes
            ),
        ));
    }
    if let Some(id) = &job.job_id {
        if !is_token(id, 128, &[]) {
            return Err(reject(
                InvalidField,
                "job_id must be 1-128 characters of A-Z a-z 0-9 _ -",
            ));
        }
    }
    if !is_token(&job.tenant, 64, &['.']) {
        return Err(reject(
            InvalidField,
            "tenant must be 1-64 characters of A-Z a-z 0-9 _ - .",
        ));
    }
    if !is_module_name(&job.module_name) {
        return Err(reject(
            InvalidField,
            format!(
                "module_name {:?} is not an importable Python module name (dotted identifiers, no keywords)",
                job.module_name
            ),
        ));
    }
    if let Some(target) = job.coverage_target {
        if !(0.0..=1.0).contains(&target) {
            return Err(reject(
                InvalidField,
                format!("coverage_target {target} must be between 0.0 and 1.0"),
            ));
        }
    }
    if let Some(usd) = job.budget.max_usd {
        if !usd.is_finite() || usd < 0.0 {
            return Err(reject(InvalidField, "budget.max_usd must be 0 or more"));
        }
    }
    if let Some(secs) = job.budget.max_seconds {
        if secs == 0 || secs > limits.max_job_seconds {
            return Err(reject(
                InvalidField,
                format!(
                    "budget.max_seconds must be between 1 and {}",
                    limits.max_job_seconds
                ),
            ));
        }
    }
    if job.priority.is_some() {
        return Err(reject(
            ReservedField,
            "priority is reserved until fair scheduling exists: omit it (jobs are served in arrival order)",
        ));
    }
    if let Some(deadline) = job.deadline_unix_ms {
        if deadline <= now_ms {
            return Err(reject(
                InvalidField,
                format!("deadline_unix_ms {deadline} has already passed (now {now_ms})"),
            ));
        }
    }
    match job.pool {
        Some(Pool::Maint) => {
            return Err(reject(
                Unroutable,
                "pool \"maint\" runs the fleet's own maintenance jobs: choose local or cloud",
            ))
        }
        Some(Pool::Cloud) if job.local_only => {
            return Err(reject(
                Unroutable,
                "local_only forbids pool \"cloud\": drop one of them",
            ))
        }
        _ => {}
    }
    if job.metadata.len() > 32
        || job
            .metadata
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 1024)
    {
        return Err(reject(
            InvalidField,
            "metadata allows at most 32 entries, keys of 1-64 bytes and values up to 1024 bytes",
        ));
    }
    let analysis = analyze(&job.source)
        .map_err(|e| reject(InvalidField, format!("source is not valid Python: {e}")))?;
    if let Some(target) = &job.target_function {
        if !analysis.functions.iter().any(|f| f == target) {
            let mut found = analysis.functions.clone();
            found.truncate(20);
            return Err(reject(
                InvalidField,
                format!(
                    "target_function {target:?} is not defined in the module (found: {})",
                    found.join(", ")
                ),
            ));
        }
    }
    Ok(analysis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobSpec {
        JobSpec::python("calc", "def add(a, b):\n    return a + b\n")
    }

    fn code(job: &JobSpec) -> Option<ErrorCode> {
        validate(job, &Limits::default(), 1_000)
            .err()
            .map(|e| e.code)
    }

    #[test]
    fn a_plain_job_passes() {
        assert_eq!(code(&job()), None);
    }

    #[test]
    fn each_rule_has_its_code() {
        let cases: Vec<(Box<dyn Fn(&mut JobSpec)>, ErrorCode)> = vec![
            (
                Box::new(|j| j.language = "rust".into()),
                ErrorCode::UnsupportedLanguage,
            ),
            (
                Box::new(|j| j.source = "  \n".into()),
                ErrorCode::EmptySource,
            ),
            (
                Box::new(|j| j.source = "x = 1\n".repeat(100_000)),
                ErrorCode::SourceTooLarge,
            ),
            (
                Box::new(|j| j.job_id = Some("a b".into())),
                ErrorCode::InvalidField,
            ),
            (
                Box::new(|j| j.module_name = "class".into()),
                ErrorCode::InvalidField,
            ),
            (
                Box::new(|j| j.coverage_target = Some(1.5)),
                ErrorCode::InvalidField,
            ),
            (Box::new(|j| j.priority = Some(3)), ErrorCode::ReservedField),
            (
                Box::new(|j| j.deadline_unix_ms = Some(10)),
                ErrorCode::InvalidField,
            ),
            (
                Box::new(|j| j.pool = Some(Pool::Maint)),
                ErrorCode::Unroutable,
            ),
            (
                Box::new(|j| {
                    j.pool = Some(Pool::Cloud);
                    j.local_only = true;
                }),
                ErrorCode::Unroutable,
            ),
            (
                Box::new(|j| j.target_function = Some("sub".into())),
                ErrorCode::InvalidField,
            ),
            (
                Box::new(|j| j.source = "x = '\n".into()),
                ErrorCode::InvalidField,
            ),
        ];
        for (mutate, expected) in cases {
            let mut j = job();
            mutate(&mut j);
            assert_eq!(code(&j), Some(expected), "{j:?}");
        }
    }

    #[test]
    fn dotted_module_names_and_known_targets_are_fine() {
        let mut j = job();
        j.module_name = "pkg.calc_2".into();
        j.target_function = Some("add".into());
        assert_eq!(code(&j), None);
    }
}
