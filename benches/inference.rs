//! Local inference benchmark.
//!
//! Embeddings: the MiniLM model through qefleet's embedder beside onnxruntime's Python
//! API on the same model file, tokenizer, pooling and thread count, in one run:
//! - single sentence: latency p50/p95 of one text per model run;
//! - batch of 32: texts/s;
//! - through the batching thread: 8 concurrent callers each embedding one text at a time.
//!
//! Causal LM, on the tiny generated model (onnx-models/tiny_llm.py): prefill and decode
//! tokens/s, decoding with the KV cache against recomputing the whole sequence each step.
//!
//! Run: `cargo bench --bench inference` (env BENCH_PARTS=embedding,causal, BENCH_THREADS=2,
//! BENCH_SINGLE=1200, BENCH_TEXTS=1024, BENCH_DEVICE=cpu; `cuda` on a GPU machine).

mod support;
use support::{env_or, percentile};

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use qefleet_inference::causal::{argmax, CausalLm};
use qefleet_inference::embed::find_default_model;
use qefleet_inference::{Device, Embedder, EmbedderSettings, EmbeddingModel, SessionSettings};

const BATCH: usize = 32;
const CALLERS: usize = 8;
/// Rounds the measurements alternate in, Python then Rust.
const ROUNDS: usize = 6;

/// Deterministic texts of `min..=max` words, prose and code, so batches pad as real ones do.
fn make_texts(n: usize, min: usize, max: usize, seed: u64) -> Vec<String> {
    const WORDS: &[&str] = &[
        "the",
        "queue",
        "worker",
        "returns",
        "a",
        "list",
        "of",
        "tests",
        "def",
        "self",
        "if",
        "else",
        "raise",
        "ValueError",
        "for",
        "item",
        "in",
        "items",
        "coverage",
        "branch",
        "mutation",
        "score",
        "parse",
        "header",
        "value",
        "None",
        "return",
        "class",
        "Stack",
        "push",
        "pop",
        "empty",
        "index",
        "string",
        "format",
        "json",
        "dict",
        "key",
        "lambda",
        "yield",
        "async",
        "await",
        "import",
        "os",
        "path",
        "sum",
        "count",
        "len",
        "range",
        "while",
        "True",
        "False",
        "assert",
        "==",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ seed;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|_| {
            let len = min + (next() % (max - min + 1) as u64) as usize;
            (0..len)
                .map(|_| WORDS[(next() % WORDS.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn main() {
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "embedding,causal".into());
    let device: Device = std::env::var("BENCH_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .expect("BENCH_DEVICE");
    let threads: usize = env_or("BENCH_THREADS", 2);
    if parts.contains("embedding") {
        embedding(device, threads);
    }
    if parts.contains("causal") {
        causal(device, threads);
    }
}

fn python() -> std::path::PathBuf {
    qefleet_shared::embedded::venv_python().expect(".venv/bin/python: run ./scripts/setup.sh")
}

fn causal(device: Device, threads: usize) {
    const PROMPT: usize = 128;
    const NEW: usize = 64;
    let runs: usize = env_or("BENCH_LM_RUNS", 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let model_dir = dir.path().join("tiny");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("onnx-models/tiny_llm.py");
    let status = Command::new(python())
        .arg(script)
        .arg(&model_dir)
        .stdout(Stdio::null())
        .status()
        .expect("tiny_llm.py");
    assert!(status.success(), "tiny_llm.py failed");
    let session = SessionSettings {
        device,
        intra_threads: threads,
        ..SessionSettings::default()
    };
    let mut lm = CausalLm::open(&model_dir, &session).expect("open tiny model");
    let provider = lm.provider();
    let filler = "def add(a, b):\n    return a + b\n".repeat(8);
    let mut prompt_ids = lm.encode(&filler).expect("encode");
    prompt_ids.truncate(PROMPT);
    assert_eq!(prompt_ids.len(), PROMPT);

    let (mut prefill, mut kv, mut recompute) = (0f64, 0f64, 0f64);
    for _ in 0..runs {
        // Prefill, then NEW greedy steps with the cache.
        let started = Instant::now();
        let (logits, vocab, mut cache) = lm.forward(&prompt_ids, None, 0).expect("prefill");
        prefill += started.elapsed().as_secs_f64();
        let mut next = argmax(&logits[logits.len() - vocab..]);
        let started = Instant::now();
        for step in 0..NEW {
            let (logits, _, present) = lm
                .forward(&[next], Some(cache), PROMPT + step)
                .expect("step");
            cache = present;
            next = argmax(&logits);
        }
        kv += started.elapsed().as_secs_f64();
        // The same steps recomputing the whole sequence each time.
        let mut ids = prompt_ids.clone();
        let started = Instant::now();
        for _ in 0..NEW {
            let (logits, vocab, _) = lm.forward(&ids, None, 0).expect("recompute");
            ids.push(argmax(&logits[logits.len() - vocab..]));
        }
        recompute += started.elapsed().as_secs_f64();
    }
    let total = runs as f64;
    println!();
    println!("causal LM: tiny generated model (2 layers, hidden 64, GQA 4/2 heads), {threads} intra-op threads, provider {provider}, prompt {PROMPT} tokens, {NEW} new tokens, {runs} runs");
    println!();
    println!("| measure | tokens/s |");
    println!("|---|---:|");
    println!(
        "| prefill ({PROMPT} tokens in one run) | {:.0} |",
        PROMPT as f64 * total / prefill
    );
    println!("| decode with KV cache | {:.0} |", NEW as f64 * total / kv);
    println!(
        "| decode recomputing the sequence | {:.0} |",
        NEW as f64 * total / recompute
    );
    println!("| KV cache speed-up | {:.2}× |", recompute / kv);
}

fn embedding(device: Device, threads: usize) {
    let single_runs: usize = env_or("BENCH_SINGLE", 1200);
    let n = env_or("BENCH_TEXTS", 1024).max(BATCH);
    let dir =
        find_default_model().expect("no onnx-models/all-MiniLM-L6-v2: run ./scripts/setup.sh");
    // Batches: texts of 3-60 words. Single runs: sentence-sized texts of 5-15 words.
    let texts = make_texts(n, 3, 60, 0);
    let sentences = make_texts(single_runs.max(1), 5, 15, 1);
    let session = SessionSettings {
        device,
        intra_threads: threads,
        ..SessionSettings::default()
    };

    // The Python baseline is a server the rounds alternate with, so both sides see the
    // same drift of this shared machine.
    let python = python();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/inference_ort.py");
    let mut child = Command::new(python)
        .arg(script)
        .arg(&dir)
        .arg(threads.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python baseline");
    let mut to_py = child.stdin.take().expect("stdin");
    let mut from_py = BufReader::new(child.stdout.take().expect("stdout"));
    let mut ready = String::new();
    from_py.read_line(&mut ready).expect("baseline start");
    let mut ask = |request: serde_json::Value| -> serde_json::Value {
        writeln!(to_py, "{request}").expect("write to the baseline");
        let mut line = String::new();
        from_py
            .read_line(&mut line)
            .expect("read from the baseline");
        serde_json::from_str(&line).expect("baseline answer")
    };

    let mut model = EmbeddingModel::open(&dir, &session).expect("open model");
    let provider = model.provider();
    let warm: Vec<String> = texts[..8].to_vec();
    ask(serde_json::json!({ "single": warm }));
    for t in &warm {
        model.embed(&[t]).expect("warm-up");
    }

    let (mut single, mut py_single) = (Vec::new(), Vec::new());
    let (mut batch_secs, mut py_batch_secs) = (0f64, 0f64);
    let mut batched = 0usize;
    let per_round = single_runs.div_ceil(ROUNDS);
    let batch_texts = (texts.len() / ROUNDS / BATCH).max(1) * BATCH;
    for round in 0..ROUNDS {
        let picks: Vec<&String> = (0..per_round)
            .map(|i| &sentences[(round * per_round + i) % sentences.len()])
            .collect();
        let answer = ask(serde_json::json!({ "single": picks }));
        py_single.extend(
            answer
                .as_array()
                .expect("ms")
                .iter()
                .filter_map(|v| v.as_f64()),
        );
        for t in &picks {
            let started = Instant::now();
            model.embed(&[t.as_str()]).expect("embed");
            single.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        let chunk: Vec<&String> = texts
            .iter()
            .cycle()
            .skip(round * batch_texts)
            .take(batch_texts)
            .collect();
        let answer = ask(serde_json::json!({ "batch": chunk, "size": BATCH }));
        py_batch_secs += answer.as_f64().expect("seconds");
        let started = Instant::now();
        for part in chunk.chunks(BATCH) {
            let refs: Vec<&str> = part.iter().map(|s| s.as_str()).collect();
            model.embed(&refs).expect("embed");
        }
        batch_secs += started.elapsed().as_secs_f64();
        batched += chunk.len();
    }
    single.sort_by(f64::total_cmp);
    py_single.sort_by(f64::total_cmp);
    let batch_rate = batched as f64 / batch_secs;
    let py_batch = batched as f64 / py_batch_secs;
    drop(model);
    drop(to_py);
    let _ = child.wait();

    // Through the batching thread with concurrent callers.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio");
    let embedder = Embedder::start(
        &dir,
        EmbedderSettings {
            session: session.clone(),
            max_batch: BATCH,
            queue: 4096,
        },
        None,
    )
    .expect("embedder");
    let shared = Arc::new(texts.clone());
    let (latencies, seconds) = runtime.block_on(async {
        for t in shared.iter().take(8) {
            embedder.embed_one(t).await.expect("warm-up");
        }
        let started = Instant::now();
        let mut callers = Vec::new();
        for c in 0..CALLERS {
            let (e, texts) = (embedder.clone(), shared.clone());
            callers.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                for t in texts.iter().skip(c).step_by(CALLERS) {
                    let s = Instant::now();
                    e.embed_one(t).await.expect("embed");
                    lat.push(s.elapsed().as_secs_f64() * 1000.0);
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for c in callers {
            all.extend(c.await.expect("caller"));
        }
        (all, started.elapsed().as_secs_f64())
    });
    let mut latencies = latencies;
    latencies.sort_by(f64::total_cmp);
    let e2e_rate = latencies.len() as f64 / seconds;

    println!("all-MiniLM-L6-v2, {threads} intra-op threads, provider {provider}; batches from {n} texts of 3-60 words, {single_runs} single sentences of 5-15 words; {ROUNDS} rounds alternating with Python");
    println!();
    println!("| measure | qefleet (Rust, ort) | onnxruntime Python | ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| single sentence p50, ms | {:.2} | {:.2} | {:.2}× |",
        percentile(&single, 50.0),
        percentile(&py_single, 50.0),
        percentile(&py_single, 50.0) / percentile(&single, 50.0)
    );
    println!(
        "| single sentence p95, ms | {:.2} | {:.2} | {:.2}× |",
        percentile(&single, 95.0),
        percentile(&py_single, 95.0),
        percentile(&py_single, 95.0) / percentile(&single, 95.0)
    );
    println!(
        "| batch of {BATCH}, texts/s | {batch_rate:.0} | {py_batch:.0} | {:.2}× |",
        batch_rate / py_batch
    );
    println!(
        "| batching thread, {CALLERS} callers, texts/s | {e2e_rate:.0} | {py_batch:.0} (batch of {BATCH}) | {:.2}× |",
        e2e_rate / py_batch
    );
    println!(
        "| batching thread, {CALLERS} callers, latency p50 / p95, ms | {:.2} / {:.2} | | |",
        percentile(&latencies, 50.0),
        percentile(&latencies, 95.0)
    );
}
