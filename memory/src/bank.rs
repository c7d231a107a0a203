//! The ReasoningBank: what each completed job taught (its code's embedding, complexity
//! features, route, engine, rounds, quality, the test patterns that survived), persisted
//! in sled and retrieved by similarity through an HNSW index (`hnsw.rs`; hora before
//! ADR 0013).
//!
//! The index never blocks: at open it is built in a background thread from what sled
//! holds while searches run exactly (brute force) over everything; once built, it serves
//! the entries it covers and the entries added since are searched exactly and folded in
//! one at a time. The vectors live in memory once, in the index (only the entries waiting
//! for it are held beside it). With `int8`, the index keeps int8 vectors and the f32 ones
//! stay on disk (the `vectors` tree), read to re-rank the index's candidates, so recall
//! is that of f32 in a third of the memory. Near-duplicates (cosine ≥ `merge_cosine`, same pool and engine) are
//! merged into the entry they resemble instead of piling up.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::hnsw::{Hnsw, HnswParams};
use crate::kmeans::kmeans;
use crate::vector::{cosine_from_distance2, distance2, normalise, Stored};

#[derive(Debug, thiserror::Error)]
pub enum BankError {
    #[error("cannot open the ReasoningBank at {path}: {message}")]
    Open { path: String, message: String },
    #[error("ReasoningBank storage: {0}")]
    Storage(String),
    #[error("embedding has {got} dimensions, the bank holds {want}")]
    Dimension { got: usize, want: usize },
}

/// What one completed job (or several merged near-duplicates) taught.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    pub job_id: String,
    pub module_name: String,
    /// Embedding of the module's code; normalised on insert.
    pub embedding: Vec<f32>,
    /// Complexity features (cyclomatic, lines, branches, ...), as the scheduler measured.
    pub features: Vec<f32>,
    pub complexity: String,
    pub pool: String,
    pub engine: String,
    pub rounds: u32,
    /// Quality score (0-1); for a merged entry, the mean over its jobs.
    pub quality: f64,
    /// Test patterns of the kept suite (`pytest.raises`, `parametrize`, ...).
    pub patterns: Vec<String>,
    /// The kept suite itself (cut to a few KB), an example for similar jobs' prompts.
    #[serde(default)]
    pub suite: String,
    /// Jobs this entry stands for (1 + merged near-duplicates).
    pub count: u32,
    pub at_ms: u64,
}

/// Stored form: the trajectory without its embedding, and the vector (f32 or int8).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    trajectory: Trajectory,
    vector: Stored,
}

/// Settings; defaults suit MiniLM's 384 dimensions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BankSettings {
    pub dimension: usize,
    /// Keep the index's vectors as int8 (a quarter of the bytes) and re-rank its
    /// candidates with the f32 vectors kept on disk.
    pub int8: bool,
    /// Candidates re-ranked per search with `int8` (at least the k asked for).
    pub rerank: usize,
    /// Merge a new trajectory into an existing one at this cosine or above.
    pub merge_cosine: f32,
    /// HNSW graph degree (M) and its layer-0 degree (2M).
    pub m: usize,
    pub ef_build: usize,
    pub ef_search: usize,
}

impl Default for BankSettings {
    fn default() -> Self {
        Self {
            dimension: 384,
            int8: false,
            rerank: 32,
            merge_cosine: 0.98,
            m: 16,
            ef_build: 200,
            ef_search: 64,
        }
    }
}

/// A retrieved trajectory and its cosine similarity to the query.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbour {
    pub trajectory: Trajectory,
    pub similarity: f32,
}

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// Merged into the near-duplicate stored under this key.
    Merged,
}

impl Inserted {
    /// The metrics label (`qefleet_memory_inserts_total{outcome}`).
    pub fn label(self) -> &'static str {
        match self {
            Inserted::New => "new",
            Inserted::Merged => "merged",
        }
    }
}

/// A distilled pattern: one k-means++ cluster of past jobs with its quality statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    pub centre: Vec<f32>,
    /// Jobs in the cluster (merged entries count for all their jobs).
    pub jobs: u32,
    pub mean_quality: f64,
    pub std_quality: f64,
    /// The engine with the best mean quality in the cluster.
    pub best_engine: String,
    /// The most frequent test patterns of the cluster's suites.
    pub common_patterns: Vec<String>,
}

pub fn hnsw_params(settings: &BankSettings) -> HnswParams {
    HnswParams {
        m: settings.m,
        ef_construction: settings.ef_build,
        ef_search: settings.ef_search,
        seed: 1,
    }
}

struct Inner {
    /// sled key of each entry, by position.
    keys: Vec<u64>,
    /// Vectors of the entries not in the index yet, positions `indexed..` (all of them
    /// while the index is built at open; none once it has caught up).
    waiting: Vec<Stored>,
    index: Option<Hnsw>,
    /// Entries `0..indexed` are in `index`.
    indexed: usize,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("entries", &self.keys.len())
            .field("indexed", &self.indexed)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct Bank {
    tree: sled::Tree,
    /// f32 vectors by key, with `int8` (for re-ranking).
    vectors: sled::Tree,
    db: sled::Db,
    settings: BankSettings,
    inner: Arc<RwLock<Inner>>,
}

fn storage(e: impl std::fmt::Display) -> BankError {
    BankError::Storage(e.to_string())
}

impl Bank {
    /// Opens (or creates) the bank at `path` and starts building its index in the
    /// background.
    pub fn open(path: &Path, settings: BankSettings) -> Result<Self, BankError> {
        let db =
            crate::store::open_db(path, crate::store::LOCK_WAIT).map_err(|e| BankError::Open {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        let tree = db.open_tree("trajectories").map_err(storage)?;
        let vectors = db.open_tree("vectors").map_err(storage)?;
        let mut keys = Vec::new();
        let mut waiting = Vec::new();
        for entry in tree.iter() {
            let (k, v) = entry.map_err(storage)?;
            let Ok(record) = rmp_serde::from_slice::<Record>(&v) else {
                tracing::warn!("skipping an unreadable ReasoningBank entry");
                continue;
            };
            let key = u64::from_be_bytes(k.as_ref().try_into().map_err(storage)?);
            keys.push(key);
            waiting.push(record.vector);
        }
        let bank = Self {
            tree,
            vectors,
            db,
            settings,
            inner: Arc::new(RwLock::new(Inner {
                keys,
                waiting,
                index: None,
                indexed: 0,
            })),
        };
        bank.build_in_background();
        Ok(bank)
    }

    /// Builds an index over every entry present now in a background thread and swaps it
    /// in; entries added meanwhile are folded in at the next insert.
    fn build_in_background(&self) {
        // A copy while the build runs: searches keep using the waiting vectors meanwhile.
        let snapshot: Vec<Stored> = match self.inner.read() {
            Ok(inner) => inner.waiting.clone(),
            Err(_) => return,
        };
        if snapshot.is_empty() {
            return;
        }
        let inner = Arc::clone(&self.inner);
        let settings = self.settings;
        std::thread::spawn(move || {
            let started = Instant::now();
            let index = build_index(&snapshot, &settings);
            let n = snapshot.len();
            if let Ok(mut inner) = inner.write() {
                inner.index = index;
                inner.indexed = n;
                inner.waiting.drain(..n);
                fold_in_tail(&mut inner);
            }
            tracing::info!(
                entries = n,
                seconds = started.elapsed().as_secs_f64(),
                "ReasoningBank index built"
            );
        });
    }

    /// Whether the index covers every entry (for tests and status).
    pub fn fully_indexed(&self) -> bool {
        self.inner
            .read()
            .map(|i| i.index.is_some() && i.indexed == i.keys.len())
            .unwrap_or(false)
    }

    pub fn len(&self) -> usize {
        self.inner.read().map(|i| i.keys.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of vectors and links the bank holds in memory (the index and the entries
    /// waiting for it), for the memory comparison.
    pub fn memory_bytes(&self) -> usize {
        self.inner
            .read()
            .map(|i| {
                i.index.as_ref().map_or(0, Hnsw::bytes)
                    + i.waiting.iter().map(Stored::bytes).sum::<usize>()
            })
            .unwrap_or(0)
    }

    /// Bytes of vector data in the records (f32 or int8), for the storage comparison.
    pub fn vector_bytes(&self) -> usize {
        self.tree
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(_, v)| rmp_serde::from_slice::<Record>(&v).ok())
            .map(|r| r.vector.bytes())
            .sum()
    }

    fn check(&self, v: &[f32]) -> Result<(), BankError> {
        if v.len() != self.settings.dimension {
            return Err(BankError::Dimension {
                got: v.len(),
                want: self.settings.dimension,
            });
        }
        Ok(())
    }

    /// The f32 vector kept on disk for the entry `key` (with `int8`).
    fn exact_vector(&self, key: u64) -> Option<Vec<f32>> {
        let bytes = self.vectors.get(key.to_be_bytes()).ok()??;
        Some(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        )
    }

    /// Positions and squared distances of the `k` nearest entries.
    fn nearest(&self, inner: &Inner, query: &[f32], k: usize) -> Vec<(usize, f32)> {
        let mut found: Vec<(usize, f32)> = Vec::with_capacity(k * 2);
        if let Some(index) = &inner.index {
            let hits = if self.settings.int8 {
                index.search_rerank(
                    query,
                    k,
                    self.settings.ef_search,
                    self.settings.rerank,
                    |id| match self.exact_vector(inner.keys[id as usize]) {
                        Some(v) => distance2(query, &v),
                        // A bank written before f32 copies were kept: the int8 distance.
                        None => index.distance(query, id),
                    },
                )
            } else {
                index.search(query, k)
            };
            for (pos, d2) in hits {
                found.push((pos as usize, d2));
            }
        }
        for (i, v) in inner.waiting.iter().enumerate() {
            found.push((inner.indexed + i, v.distance2(query)));
        }
        found.sort_by(|a, b| a.1.total_cmp(&b.1));
        found.dedup_by_key(|f| f.0);
        found.truncate(k);
        found
    }

    fn record(&self, key: u64) -> Result<Option<Record>, BankError> {
        Ok(self
            .tree
            .get(key.to_be_bytes())
            .map_err(storage)?
            .and_then(|v| rmp_serde::from_slice::<Record>(&v).ok()))
    }

    /// The `k` stored trajectories most similar to `embedding`, most similar first.
    pub fn search(&self, embedding: &[f32], k: usize) -> Result<Vec<Neighbour>, BankError> {
        self.check(embedding)?;
        let mut query = embedding.to_vec();
        normalise(&mut query);
        let hits: Vec<(u64, f32)> = {
            let inner = self.inner.read().map_err(storage)?;
            self.nearest(&inner, &query, k)
                .into_iter()
                .map(|(pos, d2)| (inner.keys[pos], d2))
                .collect()
        };
        let mut out = Vec::with_capacity(hits.len());
        for (key, d2) in hits {
            if let Some(record) = self.record(key)? {
                let mut trajectory = record.trajectory;
                trajectory.embedding = record.vector.to_f32();
                out.push(Neighbour {
                    trajectory,
                    similarity: cosine_from_distance2(d2),
                });
            }
        }
        Ok(out)
    }

    /// [`Bank::search`] on the blocking pool, for async callers (while the index is built at
    /// open, searches are exact and can take milliseconds). A failure is logged and costs
    /// the caller its neighbours, nothing else.
    pub async fn search_off_thread(&self, embedding: Vec<f32>, k: usize) -> Vec<Neighbour> {
        let bank = self.clone();
        match tokio::task::spawn_blocking(move || bank.search(&embedding, k)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "ReasoningBank search failed");
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(error = %e, "ReasoningBank search task failed");
                Vec::new()
            }
        }
    }

    /// Stores a trajectory, or merges it into a near-duplicate of the same pool and
    /// engine (counts add up, quality becomes the mean, patterns the union).
    pub fn insert(&self, mut trajectory: Trajectory) -> Result<Inserted, BankError> {
        self.check(&trajectory.embedding)?;
        normalise(&mut trajectory.embedding);
        trajectory.count = trajectory.count.max(1);
        let mut inner = self.inner.write().map_err(storage)?;
        let candidates = self.nearest(&inner, &trajectory.embedding, 4);
        for (pos, d2) in candidates {
            if cosine_from_distance2(d2) < self.settings.merge_cosine {
                break;
            }
            let key = inner.keys[pos];
            let Some(mut record) = self.record(key)? else {
                continue;
            };
            let old = &mut record.trajectory;
            if old.pool != trajectory.pool || old.engine != trajectory.engine {
                continue;
            }
            let total = old.count + trajectory.count;
            old.quality = (old.quality * f64::from(old.count)
                + trajectory.quality * f64::from(trajectory.count))
                / f64::from(total);
            old.rounds = (old.rounds * old.count + trajectory.rounds * trajectory.count) / total;
            old.count = total;
            for p in trajectory.patterns {
                if !old.patterns.contains(&p) && old.patterns.len() < 32 {
                    old.patterns.push(p);
                }
            }
            old.at_ms = old.at_ms.max(trajectory.at_ms);
            let bytes = rmp_serde::to_vec_named(&record).map_err(storage)?;
            self.tree
                .insert(key.to_be_bytes(), bytes)
                .map_err(storage)?;
            return Ok(Inserted::Merged);
        }
        let vector = Stored::new(trajectory.embedding.clone(), self.settings.int8);
        let exact: Vec<u8> = if self.settings.int8 {
            trajectory
                .embedding
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect()
        } else {
            Vec::new()
        };
        let record = Record {
            trajectory: Trajectory {
                embedding: Vec::new(),
                ..trajectory
            },
            vector,
        };
        let key = self.db.generate_id().map_err(storage)?;
        let bytes = rmp_serde::to_vec_named(&record).map_err(storage)?;
        let record_vector = record.vector;
        if !exact.is_empty() {
            self.vectors
                .insert(key.to_be_bytes(), exact)
                .map_err(storage)?;
        }
        self.tree
            .insert(key.to_be_bytes(), bytes)
            .map_err(storage)?;
        inner.keys.push(key);
        inner.waiting.push(record_vector);
        if inner.index.is_none() && inner.keys.len() == 1 {
            // The first entry: an index of one, grown entry by entry from here.
            inner.index = build_index(&inner.waiting, &self.settings);
            inner.waiting.clear();
            inner.indexed = 1;
        } else {
            fold_in_tail(&mut inner);
        }
        Ok(Inserted::New)
    }

    /// Every stored trajectory with its vector (for distillation and replays).
    pub fn trajectories(&self) -> Result<Vec<Trajectory>, BankError> {
        let mut out = Vec::new();
        for entry in self.tree.iter() {
            let (_, v) = entry.map_err(storage)?;
            if let Ok(record) = rmp_serde::from_slice::<Record>(&v) {
                let mut t = record.trajectory;
                t.embedding = record.vector.to_f32();
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Distils the bank into at most `k` patterns with k-means++ (seeded) over the
    /// embeddings, each with its quality statistics, best engine and common test
    /// patterns. Largest clusters first.
    pub fn distill(&self, k: usize, seed: u64) -> Result<Vec<Pattern>, BankError> {
        let all = self.trajectories()?;
        let points: Vec<Vec<f32>> = all.iter().map(|t| t.embedding.clone()).collect();
        let clustering = kmeans(&points, k, seed, 100);
        let mut patterns = Vec::new();
        for (c, centre) in clustering.centres.iter().enumerate() {
            let members: Vec<&Trajectory> = all
                .iter()
                .zip(&clustering.assignment)
                .filter(|(_, a)| **a == c)
                .map(|(t, _)| t)
                .collect();
            if members.is_empty() {
                continue;
            }
            let jobs: u32 = members.iter().map(|t| t.count).sum();
            let mean = members
                .iter()
                .map(|t| t.quality * f64::from(t.count))
                .sum::<f64>()
                / f64::from(jobs);
            let var = members
                .iter()
                .map(|t| (t.quality - mean).powi(2) * f64::from(t.count))
                .sum::<f64>()
                / f64::from(jobs);
            let mut by_engine: std::collections::BTreeMap<&str, (f64, u32)> = Default::default();
            let mut by_pattern: std::collections::BTreeMap<&str, u32> = Default::default();
            for t in &members {
                let e = by_engine.entry(t.engine.as_str()).or_default();
                e.0 += t.quality * f64::from(t.count);
                e.1 += t.count;
                for p in &t.patterns {
                    *by_pattern.entry(p.as_str()).or_default() += t.count;
                }
            }
            let best_engine = by_engine
                .iter()
                .max_by(|a, b| {
                    (a.1 .0 / f64::from(a.1 .1)).total_cmp(&(b.1 .0 / f64::from(b.1 .1)))
                })
                .map(|(e, _)| e.to_string())
                .unwrap_or_default();
            let mut common: Vec<(&str, u32)> = by_pattern.into_iter().collect();
            common.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            patterns.push(Pattern {
                centre: centre.clone(),
                jobs,
                mean_quality: mean,
                std_quality: var.sqrt(),
                best_engine,
                common_patterns: common
                    .into_iter()
                    .take(5)
                    .map(|(p, _)| p.to_string())
                    .collect(),
            });
        }
        patterns.sort_by_key(|p| std::cmp::Reverse(p.jobs));
        Ok(patterns)
    }

    pub fn flush(&self) -> Result<(), BankError> {
        self.db.flush().map(|_| ()).map_err(storage)
    }
}

/// An HNSW index over `vectors` (positions as ids; int8 with `settings.int8`), or none
/// for no vectors.
pub fn build_index(vectors: &[Stored], settings: &BankSettings) -> Option<Hnsw> {
    if vectors.is_empty() {
        return None;
    }
    let mut index = if settings.int8 {
        Hnsw::new_int8(settings.dimension, hnsw_params(settings))
    } else {
        Hnsw::new(settings.dimension, hnsw_params(settings))
    };
    for v in vectors {
        index.insert(&v.to_f32());
    }
    Some(index)
}

/// Moves the waiting entries into the index, in order (ids stay positions).
fn fold_in_tail(inner: &mut Inner) {
    let Inner {
        waiting,
        index,
        indexed,
        ..
    } = inner;
    let Some(index) = index.as_mut() else { return };
    for v in waiting.drain(..) {
        index.insert(&v.to_f32());
        *indexed += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::exact_nearest;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const DIM: usize = 64;

    fn settings() -> BankSettings {
        BankSettings {
            dimension: DIM,
            ..BankSettings::default()
        }
    }

    /// `n` unit vectors around `clusters` random centres.
    fn clustered(n: usize, clusters: usize, spread: f32, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let centres: Vec<Vec<f32>> = (0..clusters)
            .map(|_| (0..DIM).map(|_| rng.gen_range(-1.0..1.0)).collect())
            .collect();
        (0..n)
            .map(|i| {
                let c = &centres[i % clusters];
                let mut v: Vec<f32> = c
                    .iter()
                    .map(|x| x + rng.gen_range(-spread..spread))
                    .collect();
                normalise(&mut v);
                v
            })
            .collect()
    }

    /// A bank that stores every trajectory (no merging), for recall and clustering.
    fn open_unmerged(dir: &Path) -> Bank {
        Bank::open(
            dir,
            BankSettings {
                merge_cosine: 1.1,
                ..settings()
            },
        )
        .expect("open")
    }

    fn trajectory(id: usize, embedding: Vec<f32>, engine: &str, quality: f64) -> Trajectory {
        Trajectory {
            job_id: format!("job-{id}"),
            module_name: format!("m{id}"),
            embedding,
            features: vec![1.0, 2.0],
            complexity: "simple".into(),
            pool: "local".into(),
            engine: engine.into(),
            rounds: 2,
            quality,
            patterns: vec!["pytest.raises".into()],
            suite: String::new(),
            count: 1,
            at_ms: id as u64,
        }
    }

    fn wait_indexed(bank: &Bank) {
        let start = Instant::now();
        while !bank.fully_indexed() {
            assert!(start.elapsed().as_secs() < 120, "index not built");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn hnsw_retrieval_matches_exact_search_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vectors = clustered(1500, 30, 0.6, 3);
        {
            let bank = open_unmerged(dir.path());
            for (i, v) in vectors.iter().enumerate() {
                assert_eq!(
                    bank.insert(trajectory(i, v.clone(), "gen", 0.5))
                        .expect("insert"),
                    Inserted::New
                );
            }
            bank.flush().expect("flush");
        }
        // Reopened: the index is rebuilt in the background from sled.
        let bank = Bank::open(dir.path(), settings()).expect("reopen");
        assert_eq!(bank.len(), 1500);
        wait_indexed(&bank);
        let queries = clustered(100, 30, 0.6, 99);
        let mut hits = 0;
        for q in &queries {
            let truth: std::collections::HashSet<String> = exact_nearest(&vectors, q, 10)
                .into_iter()
                .map(|i| format!("job-{i}"))
                .collect();
            let found = bank.search(q, 10).expect("search");
            assert_eq!(found.len(), 10);
            assert!(found.windows(2).all(|w| w[0].similarity >= w[1].similarity));
            hits += found
                .iter()
                .filter(|n| truth.contains(&n.trajectory.job_id))
                .count();
        }
        let recall = hits as f64 / 1000.0;
        assert!(recall >= 0.95, "recall@10 {recall}");
    }

    #[test]
    fn near_duplicates_of_the_same_route_merge_and_others_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bank = Bank::open(dir.path(), settings()).expect("open");
        let base = clustered(1, 1, 0.001, 5).remove(0);
        let mut close = base.clone();
        close[0] += 0.05;
        normalise(&mut close);
        assert!(cosine_from_distance2(distance2(&base, &close)) > 0.98);
        assert_eq!(
            bank.insert(trajectory(1, base.clone(), "gen", 0.4))
                .expect("insert"),
            Inserted::New
        );
        let mut second = trajectory(2, close.clone(), "gen", 0.8);
        second.patterns = vec!["parametrize".into()];
        assert_eq!(bank.insert(second).expect("insert"), Inserted::Merged);
        assert_eq!(
            bank.insert(trajectory(3, close, "cloud", 0.9))
                .expect("insert"),
            Inserted::New
        );
        let far = clustered(1, 1, 0.001, 6).remove(0);
        assert_eq!(
            bank.insert(trajectory(4, far, "gen", 0.1)).expect("insert"),
            Inserted::New
        );
        assert_eq!(bank.len(), 3);
        let top = bank.search(&base, 1).expect("search").remove(0).trajectory;
        assert_eq!(top.job_id, "job-1");
        assert_eq!(top.count, 2);
        assert!((top.quality - 0.6).abs() < 1e-9, "{}", top.quality);
        assert_eq!(
            top.patterns,
            vec!["pytest.raises".to_string(), "parametrize".into()]
        );
    }

    #[test]
    fn wrong_dimensions_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bank = Bank::open(dir.path(), settings()).expect("open");
        assert!(matches!(
            bank.search(&[1.0, 0.0], 3),
            Err(BankError::Dimension { got: 2, want: DIM })
        ));
        assert!(bank
            .search(&vec![0.5; DIM], 3)
            .expect("empty bank")
            .is_empty());
    }

    #[test]
    fn distillation_finds_each_groups_quality_and_best_engine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bank = open_unmerged(dir.path());
        // Two far groups: group A good with "cloud", group B weaker with "gen".
        let a = clustered(60, 1, 0.05, 11);
        let b = clustered(40, 1, 0.05, 12);
        for (i, v) in a.into_iter().enumerate() {
            let (engine, q) = if i % 2 == 0 {
                ("cloud", 0.9)
            } else {
                ("gen", 0.7)
            };
            bank.insert(trajectory(i, v, engine, q)).expect("insert");
        }
        for (i, v) in b.into_iter().enumerate() {
            bank.insert(trajectory(100 + i, v, "gen", 0.3))
                .expect("insert");
        }
        let patterns = bank.distill(2, 42).expect("distill");
        assert_eq!(patterns.len(), 2);
        assert_eq!(patterns[0].jobs, 60);
        assert!((patterns[0].mean_quality - 0.8).abs() < 1e-9);
        assert!((patterns[0].std_quality - 0.1).abs() < 1e-9);
        assert_eq!(patterns[0].best_engine, "cloud");
        assert_eq!(patterns[1].jobs, 40);
        assert!((patterns[1].mean_quality - 0.3).abs() < 1e-9);
        assert_eq!(
            patterns[1].common_patterns,
            vec!["pytest.raises".to_string()]
        );
    }

    #[test]
    fn an_int8_bank_keeps_f32_recall_in_less_memory_also_after_reopening() {
        let vectors = clustered(400, 10, 0.6, 21);
        let mut bytes = Vec::new();
        let mut recalls = Vec::new();
        for (int8, reopen) in [(false, false), (true, false), (true, true)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let open = || {
                Bank::open(
                    dir.path(),
                    BankSettings {
                        int8,
                        merge_cosine: 1.1,
                        ..settings()
                    },
                )
                .expect("open")
            };
            let mut bank = open();
            for (i, v) in vectors.iter().enumerate() {
                bank.insert(trajectory(i, v.clone(), "gen", 0.5))
                    .expect("insert");
            }
            if reopen {
                bank.flush().expect("flush");
                drop(bank);
                bank = open();
                wait_indexed(&bank);
            }
            bytes.push(bank.memory_bytes());
            let mut hits = 0;
            for q in clustered(20, 10, 0.6, 77) {
                let truth: std::collections::HashSet<String> = exact_nearest(&vectors, &q, 10)
                    .into_iter()
                    .map(|i| format!("job-{i}"))
                    .collect();
                hits += bank
                    .search(&q, 10)
                    .expect("search")
                    .iter()
                    .filter(|n| truth.contains(&n.trajectory.job_id))
                    .count();
            }
            recalls.push(hits as f64 / 200.0);
        }
        // 64 dimensions: links weigh more than at 384 (where int8 saves about 70%).
        assert!(
            bytes[1] * 10 <= bytes[0] * 6 && bytes[2] == bytes[1],
            "int8 {bytes:?} vs f32 {}",
            bytes[0]
        );
        assert!(
            recalls[0] >= 0.95 && recalls[1] >= recalls[0] - 0.01 && recalls[2] == recalls[1],
            "{recalls:?}"
        );
    }
}
