//! The worker's side of the ReasoningBank: before a job runs, its module is embedded and
//! the most similar past jobs retrieved (their suites become examples in LLM prompts);
//! after its result is published, what it taught is stored. On only when the worker has
//! an embedder (`--embeddings`); a bank that cannot open leaves the worker running
//! without memory.

use std::path::Path;
use std::time::Instant;

use qefleet_inference::Embedder;
use qefleet_memory::{Bank, BankSettings, Neighbour, Trajectory};
use qefleet_schemas::{now_unix_ms, JobResult, JobStatus, QueuedJob};
use qefleet_shared::metrics::Metrics;

/// Neighbours retrieved per job.
const RETRIEVE: usize = 5;
/// A past suite becomes a prompt example from this similarity and quality on.
const EXAMPLE_SIMILARITY: f32 = 0.5;
const EXAMPLE_QUALITY: f64 = 0.6;
/// Suites kept in the bank are cut to this many bytes.
const SUITE_BYTES: usize = 4000;

#[derive(Debug, Clone)]
pub struct Memory {
    bank: Bank,
    embedder: Embedder,
    metrics: Metrics,
    pool: String,
}

/// What retrieval found for one job, kept to store the job's trajectory afterwards.
#[derive(Debug, Clone, Default)]
pub struct Recall {
    pub embedding: Vec<f32>,
    pub neighbours: Vec<Neighbour>,
}

impl Recall {
    /// Suites of similar, good past jobs, best first.
    pub fn examples(&self) -> Vec<String> {
        self.neighbours
            .iter()
            .filter(|n| {
                n.similarity >= EXAMPLE_SIMILARITY
                    && n.trajectory.quality >= EXAMPLE_QUALITY
                    && !n.trajectory.suite.is_empty()
            })
            .take(2)
            .map(|n| n.trajectory.suite.clone())
            .collect()
    }
}

/// Idioms of a kept suite worth remembering (what "worked" looks like).
pub fn patterns_of(suite: &str) -> Vec<String> {
    const IDIOMS: &[(&str, &str)] = &[
        ("pytest.raises", "pytest.raises"),
        ("pytest.mark.parametrize", "parametrize"),
        ("pytest.approx", "approx"),
        ("isinstance(", "isinstance"),
        ("monkeypatch", "monkeypatch"),
        ("tmp_path", "tmp_path"),
        ("random.seed", "seeded_random"),
        ("io.StringIO", "string_io"),
        ("len(", "len"),
        ("== [", "list_equality"),
        ("== {", "dict_equality"),
        (" is None", "is_none"),
        ("assert not ", "negative_assert"),
    ];
    IDIOMS
        .iter()
        .filter(|(needle, _)| suite.contains(needle))
        .map(|(_, name)| name.to_string())
        .collect()
}

fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

impl Memory {
    /// Opens the bank at `dir`; `None` (with a warning) when it cannot.
    pub fn open(dir: &Path, embedder: Embedder, metrics: Metrics, pool: &str) -> Option<Self> {
        let settings = BankSettings {
            dimension: embedder.dimension(),
            ..BankSettings::default()
        };
        match Bank::open(dir, settings) {
            Ok(bank) => {
                metrics.memory_stored.set(bank.len() as i64);
                tracing::info!(dir = %dir.display(), entries = bank.len(), "ReasoningBank open");
                Some(Self {
                    bank,
                    embedder,
                    metrics,
                    pool: pool.to_string(),
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "running without the ReasoningBank");
                None
            }
        }
    }

    /// Embeds the job's module and retrieves similar past jobs. Failures cost the job
    /// its examples, nothing else.
    pub async fn recall(&self, queued: &QueuedJob) -> Option<Recall> {
        let embedding = match self
            .embedder
            .embed_one_observed(&queued.job.source, &self.metrics)
            .await
        {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "module not embedded; no retrieval");
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
            .with_label_values(&[self.pool.as_str()])
            .observe(searched.elapsed().as_secs_f64());
        if let Some(best) = neighbours.first() {
            self.metrics
                .memory_retrieved_quality
                .with_label_values(&[self.pool.as_str()])
                .observe(best.trajectory.quality);
            tracing::debug!(
                similar = %best.trajectory.module_name,
                similarity = best.similarity,
                quality = best.trajectory.quality,
                "retrieved past jobs"
            );
        }
        Some(Recall {
            embedding,
            neighbours,
        })
    }

    /// Stores what a succeeded job taught.
    pub async fn remember(&self, recall: &Recall, queued: &QueuedJob, result: &JobResult) {
        if result.status != JobStatus::Succeeded {
            return;
        }
        let suite = result.test_file.clone().unwrap_or_default();
        let c = &queued.complexity;
        let trajectory = Trajectory {
            job_id: result.job_id.clone(),
            module_name: result.module_name.clone(),
            embedding: recall.embedding.clone(),
            features: vec![
                c.score as f32,
                c.cyclomatic as f32,
                c.max_function_cyclomatic as f32,
                c.code_lines as f32,
                c.functions as f32,
                c.async_functions as f32,
                c.classes as f32,
                c.branches as f32,
                c.imports as f32,
            ],
            complexity: c.class.as_str().to_string(),
            pool: result.pool.as_str().to_string(),
            engine: result.engine.clone(),
            rounds: result.refinement_rounds,
            quality: result.quality_score.unwrap_or(0.0),
            patterns: patterns_of(&suite),
            suite: cut(&suite, SUITE_BYTES),
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
                self.metrics.memory_stored.set(self.bank.len() as i64);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "trajectory not stored"),
            Err(e) => tracing::warn!(error = %e, "trajectory task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idioms_of_a_suite_are_named() {
        let suite = "import pytest\n\n\n@pytest.mark.parametrize('x', [1])\ndef test_a(x):\n    with pytest.raises(ValueError):\n        f(x)\n    assert g() is None\n";
        assert_eq!(
            patterns_of(suite),
            vec!["pytest.raises", "parametrize", "is_none"]
        );
        assert!(patterns_of("").is_empty());
    }

    #[test]
    fn cutting_respects_characters() {
        assert_eq!(cut("ab€cd", 3), "ab");
        assert_eq!(cut("abc", 10), "abc");
    }
}
