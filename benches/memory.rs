//! ReasoningBank retrieval benchmark: the bank's HNSW (memory/src/hnsw.rs) beside hnswlib
//! (PyPI, the reference implementation) and hora 0.1.1 (what the bank used before ADR
//! 0013) on the same vectors with the same M, ef_construction and ef, in one run:
//! - synthetic clustered unit vectors, N × 384 (default 100k): build time, single-query
//!   search p50/p95 (one thread; rounds of every query alternate with hnswlib's, so both
//!   see the same machine), recall@10 against exact brute force;
//! - an index keeping int8 vectors: the same measures and its bytes against f32;
//! - MiniLM embeddings of real code (functions of Python's standard library);
//! - the bank itself: search latency while its index is still building in the
//!   background (exact search, never blocked) and after.
//!
//! Run: `benches/memory/setup.sh && cargo bench --bench memory` (env BENCH_N=100000,
//! BENCH_QUERIES=1000, BENCH_M=16, BENCH_EFC=100, BENCH_EF=64, BENCH_CODE=4000,
//! BENCH_PARTS=synthetic,int8,code,bank, BENCH_ROUNDS=5, BENCH_HORA=0 to leave hora out).

mod support;
use support::{env_or, percentile};

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use hora::core::ann_index::ANNIndex;
use qefleet_memory::bank::BankSettings;
use qefleet_memory::hnsw::{Hnsw, HnswParams};
use qefleet_memory::vector::{distance2, normalise};
use qefleet_memory::{Bank, Trajectory};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIM: usize = 384;
const K: usize = 10;
/// Candidates an int8 index re-ranks with f32 vectors (and twice that).
const RERANK: usize = 32;

/// `n` unit vectors around `clusters` centres, Gaussian-ish noise of `spread` per axis.
fn clustered(n: usize, clusters: usize, spread: f32, seed: u64) -> Vec<Vec<f32>> {
    let mut centres_rng = StdRng::seed_from_u64(1);
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| {
            (0..DIM)
                .map(|_| centres_rng.gen_range(-1.0f32..1.0))
                .collect()
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let c = &centres[rng.gen_range(0..clusters)];
            let mut v: Vec<f32> = c
                .iter()
                .map(|x| {
                    let noise: f32 = (0..3).map(|_| rng.gen_range(-spread..spread)).sum();
                    x + noise
                })
                .collect();
            normalise(&mut v);
            v
        })
        .collect()
}

/// Exact top-K of every query, on every core.
fn exact(data: &[Vec<f32>], queries: &[Vec<f32>]) -> Vec<Vec<u32>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = queries.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = queries
            .chunks(chunk.max(1))
            .map(|qs| {
                s.spawn(move || {
                    qs.iter()
                        .map(|q| {
                            let mut d: Vec<(u32, f32)> = data
                                .iter()
                                .enumerate()
                                .map(|(i, v)| (i as u32, distance2(q, v)))
                                .collect();
                            d.select_nth_unstable_by(K, |a, b| a.1.total_cmp(&b.1));
                            d.truncate(K);
                            d.into_iter().map(|(i, _)| i).collect()
                        })
                        .collect::<Vec<Vec<u32>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("exact search thread"))
            .collect()
    })
}

fn write_f32(path: &Path, vectors: &[Vec<f32>]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    for v in vectors {
        for x in v {
            f.write_all(&x.to_le_bytes()).expect("write");
        }
    }
}

#[derive(Debug)]
struct Measured {
    build_s: f64,
    p50_ms: f64,
    p95_ms: f64,
    recall: f64,
}

fn hora(
    data: &[Vec<f32>],
    queries: &[Vec<f32>],
    truth: &[Vec<u32>],
    settings: &BankSettings,
) -> Measured {
    use hora::core::metrics::Metric;
    use hora::index::hnsw_idx::HNSWIndex;
    use hora::index::hnsw_params::HNSWParams;
    let started = Instant::now();
    let params = HNSWParams::<f32>::default()
        .n_neighbor(settings.m)
        .n_neighbor0(settings.m * 2)
        .ef_build(settings.ef_build)
        .ef_search(settings.ef_search);
    let mut index = HNSWIndex::<f32, usize>::new(DIM, &params);
    for (i, v) in data.iter().enumerate() {
        index.add(v, i).expect("hora add");
    }
    index.build(Metric::Euclidean).expect("hora build");
    let build_s = started.elapsed().as_secs_f64();
    timed_searches(build_s, queries, truth, |q| {
        index.search(q, K).into_iter().map(|i| i as u32).collect()
    })
}

/// Times one search per query (one thread) and measures recall@K against `truth`.
fn timed_searches(
    build_s: f64,
    queries: &[Vec<f32>],
    truth: &[Vec<u32>],
    search: impl FnMut(&[f32]) -> Vec<u32>,
) -> Measured {
    pooled(build_s, &[round(queries, truth, search)])
}

/// The bank's HNSW over `data`, vectors kept as f32 or int8, and its build time.
fn build_ours(data: &[Vec<f32>], settings: &BankSettings, int8: bool) -> (Hnsw, f64) {
    let started = Instant::now();
    let params = HnswParams {
        m: settings.m,
        ef_construction: settings.ef_build,
        ef_search: settings.ef_search,
        seed: 1,
    };
    let mut index = if int8 {
        Hnsw::new_int8(DIM, params)
    } else {
        Hnsw::new(DIM, params)
    };
    for v in data {
        index.insert(v);
    }
    (index, started.elapsed().as_secs_f64())
}

/// The bank's HNSW, vectors kept as f32 or int8; also the bytes it holds.
fn ours_stored(
    data: &[Vec<f32>],
    queries: &[Vec<f32>],
    truth: &[Vec<u32>],
    settings: &BankSettings,
    int8: bool,
) -> (Measured, usize) {
    let (index, build_s) = build_ours(data, settings, int8);
    let measured = timed_searches(build_s, queries, truth, |q| {
        index.search(q, K).into_iter().map(|(i, _)| i).collect()
    });
    if int8 {
        // Re-ranking with the f32 vectors read from a file (what the index does not hold
        // in memory): RERANK candidates read per query, each 4 × DIM bytes.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vectors.f32");
        write_f32(&path, data);
        let file = std::fs::File::open(&path).expect("open");
        let mut buf = vec![0u8; DIM * 4];
        let mut v = vec![0f32; DIM];
        for candidates in [RERANK, RERANK * 2] {
            let reranked = timed_searches(build_s, queries, truth, |q| {
                use std::os::unix::fs::FileExt;
                index
                    .search_rerank(q, K, settings.ef_search, candidates, |id| {
                        file.read_exact_at(&mut buf, id as u64 * (DIM as u64 * 4))
                            .expect("read");
                        for (x, b) in v.iter_mut().zip(buf.chunks_exact(4)) {
                            *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                        }
                        qefleet_memory::vector::distance2(q, &v)
                    })
                    .into_iter()
                    .map(|(i, _)| i)
                    .collect()
            });
            report(
                &format!("  same int8 index, {candidates} candidates re-ranked with f32 from disk"),
                &reranked,
                None,
            );
        }
        // What a wider search buys back of the recall the rounding costs.
        for ef in [settings.ef_search * 2, settings.ef_search * 4] {
            let wider = timed_searches(build_s, queries, truth, |q| {
                index
                    .search_ef(q, K, ef)
                    .into_iter()
                    .map(|(i, _)| i)
                    .collect()
            });
            report(&format!("  same int8 index at ef {ef}"), &wider, None);
        }
    }
    (measured, index.bytes())
}

/// hnswlib in a Python process that has built its index and runs a round of all queries
/// whenever asked, so the bench can alternate its rounds with its own.
struct Hnswlib {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    build_s: f64,
    _dir: tempfile::TempDir,
}

impl Hnswlib {
    fn start(
        data: &[Vec<f32>],
        queries: &[Vec<f32>],
        truth: &[Vec<u32>],
        settings: &BankSettings,
    ) -> Option<Self> {
        let python = Path::new(".venv-bench/bin/python");
        if !python.exists() {
            println!("  hnswlib: .venv-bench missing (run benches/memory/setup.sh); skipped");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        write_f32(&dir.path().join("data.f32"), data);
        write_f32(&dir.path().join("queries.f32"), queries);
        let mut f = std::fs::File::create(dir.path().join("truth.u32")).expect("truth");
        for t in truth {
            for i in t {
                f.write_all(&i.to_le_bytes()).expect("write");
            }
        }
        drop(f);
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut child = Command::new(python)
            .arg("benches/memory_hnswlib.py")
            .arg(dir.path())
            .args(
                [
                    data.len(),
                    DIM,
                    queries.len(),
                    settings.m,
                    settings.ef_build,
                    settings.ef_search,
                    threads,
                ]
                .map(|n| n.to_string()),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python runs");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let Some(built) = read_json(&mut stdout) else {
            println!("  hnswlib failed to build its index");
            let _ = child.wait();
            return None;
        };
        Some(Self {
            child,
            stdin,
            stdout,
            build_s: built["build_s"].as_f64().unwrap_or(f64::NAN),
            _dir: dir,
        })
    }

    /// One round of every query: latencies in ms and hits.
    fn round(&mut self) -> Option<(Vec<f64>, usize)> {
        writeln!(self.stdin, "search").ok()?;
        self.stdin.flush().ok()?;
        let v = read_json(&mut self.stdout)?;
        let lat = v["lat_ms"]
            .as_array()?
            .iter()
            .filter_map(|x| x.as_f64())
            .collect();
        Some((lat, v["hits"].as_u64()? as usize))
    }
}

impl Drop for Hnswlib {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_json(from: &mut impl std::io::BufRead) -> Option<serde_json::Value> {
    let mut line = String::new();
    from.read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}

/// Latencies (ms) and hits of one round of every query through `search`.
fn round(
    queries: &[Vec<f32>],
    truth: &[Vec<u32>],
    mut search: impl FnMut(&[f32]) -> Vec<u32>,
) -> (Vec<f64>, usize) {
    let mut lat = Vec::with_capacity(queries.len());
    let mut hits = 0;
    for (q, t) in queries.iter().zip(truth) {
        let start = Instant::now();
        let found = search(q);
        lat.push(start.elapsed().as_secs_f64() * 1000.0);
        let t: HashSet<u32> = t.iter().copied().collect();
        hits += found.iter().filter(|i| t.contains(i)).count();
    }
    (lat, hits)
}

/// Percentiles over every round's latencies, recall over every round's hits.
fn pooled(build_s: f64, rounds: &[(Vec<f64>, usize)]) -> Measured {
    let mut lat: Vec<f64> = rounds.iter().flat_map(|r| r.0.iter().copied()).collect();
    lat.sort_by(f64::total_cmp);
    let hits: usize = rounds.iter().map(|r| r.1).sum();
    Measured {
        build_s,
        p50_ms: percentile(&lat, 50.0),
        p95_ms: percentile(&lat, 95.0),
        recall: hits as f64 / (K * lat.len().max(1)) as f64,
    }
}

fn report(what: &str, ours: &Measured, reference: Option<&Measured>) {
    println!(
        "  {what:<28} build {:>8.2} s   search p50 {:.3} ms  p95 {:.3} ms   recall@10 {:.4}",
        ours.build_s, ours.p50_ms, ours.p95_ms, ours.recall
    );
    if let Some(r) = reference {
        println!(
            "  {:<28} build {:>8.2} s   search p50 {:.3} ms  p95 {:.3} ms   recall@10 {:.4}",
            "hnswlib 0.8.0", r.build_s, r.p50_ms, r.p95_ms, r.recall
        );
        println!(
            "  ratio to hnswlib: build {:.2}x, search p95 {:.2}x, recall {:+.4}",
            ours.build_s / r.build_s,
            ours.p95_ms / r.p95_ms,
            ours.recall - r.recall
        );
    }
}

fn compare(what: &str, data: &[Vec<f32>], queries: &[Vec<f32>], settings: &BankSettings) {
    let started = Instant::now();
    let truth = exact(data, queries);
    println!(
        "\n{what}: {} × {DIM}, {} queries (exact neighbours in {:.1} s)",
        data.len(),
        queries.len(),
        started.elapsed().as_secs_f64()
    );
    let mut reference = Hnswlib::start(data, queries, &truth, settings);
    let (index, build_s) = build_ours(data, settings, false);
    // Rounds alternate (and swap which goes first), so a drift of this shared machine's
    // speed reaches both sides alike; percentiles are over every round's queries.
    let rounds: usize = env_or("BENCH_ROUNDS", 5);
    let (mut theirs, mut mine) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let ours_round = || {
            round(queries, &truth, |q| {
                index.search(q, K).into_iter().map(|(i, _)| i).collect()
            })
        };
        if r % 2 == 1 {
            mine.push(ours_round());
        }
        if let Some(round) = reference.as_mut().and_then(Hnswlib::round) {
            theirs.push(round);
        }
        if r % 2 == 0 {
            mine.push(ours_round());
        }
    }
    let own = pooled(build_s, &mine);
    let reference = reference
        .filter(|_| !theirs.is_empty())
        .map(|h| pooled(h.build_s, &theirs));
    println!("  {rounds} rounds of every query, alternating with hnswlib's");
    report("qefleet hnsw (the bank's)", &own, reference.as_ref());
    if std::env::var("BENCH_HORA").map_or(true, |v| v != "0") {
        let old = hora(data, queries, &truth, settings);
        report("hora 0.1.1 (before ADR 0013)", &old, reference.as_ref());
    }
}

/// Function bodies of Python's standard library, as code snippets to embed.
fn code_snippets(limit: usize) -> Vec<String> {
    let mut snippets = Vec::new();
    let roots = ["/usr/lib/python3.11", "/usr/lib/python3"];
    let Some(root) = roots.iter().map(Path::new).find(|p| p.is_dir()) else {
        return snippets;
    };
    let mut files: Vec<_> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "py"))
        .collect();
    files.sort();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let mut current = String::new();
        for line in text.lines() {
            let starts = line.trim_start().starts_with("def ");
            if starts && !current.is_empty() {
                snippets.push(std::mem::take(&mut current));
                if snippets.len() >= limit {
                    return snippets;
                }
            }
            if (starts || !current.is_empty()) && current.len() < 2000 {
                current.push_str(line);
                current.push('\n');
            }
        }
    }
    snippets
}

fn code_embeddings(n: usize) -> Option<Vec<Vec<f32>>> {
    use qefleet_inference::embed::find_default_model;
    use qefleet_inference::{Device, EmbeddingModel, SessionSettings};
    let dir = find_default_model()?;
    let settings = SessionSettings {
        device: Device::Cpu,
        ..SessionSettings::default()
    };
    let mut model = EmbeddingModel::open(&dir, &settings).ok()?;
    let snippets = code_snippets(n);
    let started = Instant::now();
    let mut out = Vec::with_capacity(snippets.len());
    for batch in snippets.chunks(32) {
        let texts: Vec<&str> = batch.iter().map(String::as_str).collect();
        out.extend(model.embed(&texts).ok()?);
    }
    println!(
        "\nembedded {} stdlib functions with MiniLM in {:.1} s",
        out.len(),
        started.elapsed().as_secs_f64()
    );
    Some(out)
}

fn trajectory(i: usize, embedding: Vec<f32>) -> Trajectory {
    Trajectory {
        job_id: format!("job-{i}"),
        module_name: format!("m{i}"),
        embedding,
        features: Vec::new(),
        complexity: "simple".into(),
        pool: "local".into(),
        engine: "local-generator".into(),
        rounds: 2,
        quality: 0.5,
        patterns: Vec::new(),
        suite: String::new(),
        count: 1,
        at_ms: 0,
    }
}

/// Search latency of the bank while its index builds in the background, then after.
fn bank_while_building(data: &[Vec<f32>], queries: &[Vec<f32>], settings: BankSettings) {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = BankSettings {
        merge_cosine: 1.1,
        ..settings
    };
    {
        let bank = Bank::open(dir.path(), settings).expect("open");
        let started = Instant::now();
        for (i, v) in data.iter().enumerate() {
            bank.insert(trajectory(i, v.clone())).expect("insert");
        }
        println!(
            "\nbank: {} inserts (index grown entry by entry) in {:.1} s, {:.2} ms each",
            data.len(),
            started.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64() * 1000.0 / data.len() as f64
        );
        bank.flush().expect("flush");
    }
    let opened = Instant::now();
    let bank = Bank::open(dir.path(), settings).expect("reopen");
    let open_s = opened.elapsed().as_secs_f64();
    let mut during = Vec::new();
    let mut after = Vec::new();
    let mut i = 0;
    while after.len() < queries.len() {
        let q = &queries[i % queries.len()];
        let building = !bank.fully_indexed();
        let start = Instant::now();
        let found = bank.search(q, K).expect("search");
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(found.len(), K);
        if building {
            during.push(ms);
        } else {
            after.push(ms);
        }
        i += 1;
    }
    let built_s = opened.elapsed().as_secs_f64();
    during.sort_by(f64::total_cmp);
    after.sort_by(f64::total_cmp);
    println!(
        "bank reopened in {open_s:.2} s; {} searches while the index built in the background (exact): p50 {:.2} ms p95 {:.2} ms; index ready after {built_s:.1} s; then p50 {:.3} ms p95 {:.3} ms (with sled reads)",
        during.len(),
        percentile(&during, 50.0),
        percentile(&during, 95.0),
        percentile(&after, 50.0),
        percentile(&after, 95.0),
    );
}

fn main() {
    let n: usize = env_or("BENCH_N", 100_000);
    let q: usize = env_or("BENCH_QUERIES", 1000);
    let settings = BankSettings {
        dimension: DIM,
        m: env_or("BENCH_M", 16),
        ef_build: env_or("BENCH_EFC", 100),
        ef_search: env_or("BENCH_EF", 64),
        ..BankSettings::default()
    };
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "synthetic,int8,code,bank".into());
    println!(
        "HNSW: M {} (layer 0: {}), ef_construction {}, ef {}; {} cores",
        settings.m,
        settings.m * 2,
        settings.ef_build,
        settings.ef_search,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let data = clustered(n, 1000, 0.08, 2);
    let queries = clustered(q, 1000, 0.08, 3);
    if parts.contains("synthetic") {
        compare("synthetic clustered", &data, &queries, &settings);
    }
    if parts.contains("int8") {
        let truth = exact(&data, &queries);
        let (full, full_bytes) = ours_stored(&data, &queries, &truth, &settings, false);
        let (small, small_bytes) = ours_stored(&data, &queries, &truth, &settings, true);
        println!(
            "\nint8 vectors in the index: {} MB against {} MB with f32 vectors ({:.0}% less, links included)",
            small_bytes / 1_000_000,
            full_bytes / 1_000_000,
            100.0 * (1.0 - small_bytes as f64 / full_bytes as f64)
        );
        report("qefleet hnsw, f32 vectors", &full, None);
        report("qefleet hnsw, int8 vectors", &small, None);
        println!("  (recall against the exact f32 neighbours)");
    }
    if parts.contains("code") {
        match code_embeddings(env_or("BENCH_CODE", 4_000)) {
            Some(mut vectors) if vectors.len() > 200 => {
                let held_out = vectors.split_off(vectors.len() - 200);
                compare(
                    "MiniLM embeddings of stdlib code",
                    &vectors,
                    &held_out,
                    &settings,
                );
            }
            _ => println!(
                "\ncode embeddings: no model or no Python sources; skipped (run scripts/setup.sh)"
            ),
        }
    }
    if parts.contains("bank") {
        let n_bank = n.min(env_or("BENCH_BANK_N", 20_000));
        bank_while_building(&data[..n_bank], &queries, settings);
    }
}
