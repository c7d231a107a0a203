//! The real model on the real runtime: embeddings against an independent numpy forward
//! pass from the same weights, the similarities sentence-transformers documents for this
//! model, and the batching thread under concurrent callers.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::embed::{find_default_model, Embedder, EmbedderSettings, EmbeddingModel};
use crate::runtime::{Device, Provider, SessionSettings};

fn model_dir() -> PathBuf {
    find_default_model().expect(
        "onnx-models/all-MiniLM-L6-v2 is missing: run ./scripts/setup.sh (it converts the model)",
    )
}

fn cpu() -> SessionSettings {
    SessionSettings {
        device: Device::Cpu,
        intra_threads: 2,
        ..SessionSettings::default()
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Texts of different lengths, so a batch pads; code, as the fleet embeds.
const TEXTS: &[&str] = &[
    "This is an example sentence",
    "Each sentence is converted",
    "A man is eating food.",
    "def add(a, b):\n    \"\"\"Return the sum.\"\"\"\n    return a + b",
    "class Stack:\n    def push(self, item):\n        self.items.append(item)\n\n    def pop(self):\n        if not self.items:\n            raise IndexError('empty')\n        return self.items.pop()",
    "x",
];

#[test]
fn embeddings_match_an_independent_numpy_forward_pass() {
    let dir = model_dir();
    let mut model = EmbeddingModel::open(&dir, &cpu()).expect("open model");
    assert_eq!(model.dimension(), 384);
    assert_eq!(model.provider(), Provider::Cpu);
    let ours = model.embed(TEXTS).expect("embed");

    let python =
        qefleet_shared::embedded::venv_python().expect(".venv/bin/python (run ./scripts/setup.sh)");
    let script = dir.join("../minilm.py");
    let mut child = Command::new(python)
        .arg(&script)
        .arg("reference")
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the numpy reference");
    let input = serde_json::to_vec(TEXTS).expect("json");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&input)
        .expect("write");
    let out = child.wait_with_output().expect("reference output");
    assert!(out.status.success(), "reference failed: {}", out.status);
    let reference: Vec<Vec<f64>> = serde_json::from_slice(&out.stdout).expect("reference json");

    assert_eq!(reference.len(), ours.len());
    let mut worst = 0f64;
    for (r, o) in reference.iter().zip(&ours) {
        assert_eq!(r.len(), o.len());
        for (a, b) in r.iter().zip(o) {
            worst = worst.max((a - f64::from(*b)).abs());
        }
        let norm: f32 = o.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "not normalised: {norm}");
    }
    assert!(
        worst < 1e-4,
        "largest difference from the numpy reference: {worst}"
    );
}

#[test]
fn documented_similarities_hold() {
    // sentence-transformers' quick start for all-MiniLM-L6-v2 prints these similarities.
    let mut model = EmbeddingModel::open(&model_dir(), &cpu()).expect("open model");
    let v = model
        .embed(&[
            "The weather is lovely today.",
            "It's so sunny outside!",
            "He drove to the stadium.",
            "The new movie is awesome",
            "The new movie is so great",
        ])
        .expect("embed");
    for (a, b, expected) in [
        (0, 1, 0.6660),
        (0, 2, 0.1046),
        (1, 2, 0.1411),
        (3, 4, 0.8939),
    ] {
        let got = cosine(&v[a], &v[b]);
        assert!(
            (got - expected).abs() < 5e-4,
            "similarity {a}-{b}: {got}, documented {expected}"
        );
    }
}

#[test]
fn a_text_embeds_the_same_alone_and_in_a_batch_of_mixed_lengths() {
    let mut model = EmbeddingModel::open(&model_dir(), &cpu()).expect("open model");
    // 20 texts of shuffled lengths: sorted into sub-batches, padded, answered in order.
    let texts: Vec<String> = (0..20)
        .map(|i| TEXTS[i % TEXTS.len()].repeat(1 + (i * 7) % 4))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batch = model.embed(&refs).expect("batch");
    for (i, text) in refs.iter().enumerate() {
        let alone = model.embed(&[text]).expect("alone");
        let diff = alone[0]
            .iter()
            .zip(&batch[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "text {i} differs by {diff} in the batch");
    }
}

#[test]
fn concurrent_callers_are_batched_and_each_gets_its_own_answer() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let runs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = runs.clone();
    let embedder = Embedder::start(
        &model_dir(),
        EmbedderSettings {
            session: cpu(),
            max_batch: 8,
            queue: 64,
        },
        Some(Box::new(move |n, _| seen.lock().expect("lock").push(n))),
    )
    .expect("embedder");
    let mut model = EmbeddingModel::open(&model_dir(), &cpu()).expect("open model");
    let expected = model.embed(TEXTS).expect("direct");

    let answers = runtime.block_on(async {
        let calls = (0..24).map(|i| {
            let e = embedder.clone();
            let text = TEXTS[i % TEXTS.len()];
            tokio::spawn(async move { (i, e.embed_one(text).await) })
        });
        let mut out = Vec::new();
        for call in calls.collect::<Vec<_>>() {
            out.push(call.await.expect("task"));
        }
        out
    });
    for (i, answer) in answers {
        let v = answer.expect("embedding");
        let want = &expected[i % TEXTS.len()];
        assert!(
            cosine(&v, want) > 0.99999,
            "caller {i} got another text's embedding"
        );
    }
    let runs = runs.lock().expect("lock").clone();
    assert_eq!(runs.iter().sum::<usize>(), 24, "{runs:?}");
    assert!(
        runs.iter().all(|&n| n <= 8),
        "a run exceeded max_batch: {runs:?}"
    );
    assert!(
        runs.len() < 24,
        "24 concurrent callers were never batched: {runs:?}"
    );
}

#[test]
fn cuda_on_request_fails_clearly_without_it_and_auto_falls_back() {
    let dir = model_dir();
    let info = crate::runtime::runtime().expect("runtime");
    if info.cuda_compiled_in {
        eprintln!(
            "this ONNX Runtime has the CUDA provider; the fallback is tested on CPU builds only"
        );
        return;
    }
    let err = EmbeddingModel::open(
        &dir,
        &SessionSettings {
            device: Device::Cuda(0),
            ..cpu()
        },
    )
    .expect_err("cuda without the CUDA provider");
    let msg = err.to_string();
    assert!(
        msg.contains("--device cuda:0") && msg.contains("onnxruntime-gpu"),
        "{msg}"
    );
    let auto = EmbeddingModel::open(
        &dir,
        &SessionSettings {
            device: Device::Auto,
            ..cpu()
        },
    )
    .expect("auto");
    assert_eq!(auto.provider(), Provider::Cpu);
}

#[test]
fn a_directory_without_a_model_says_how_to_make_one() {
    let empty = tempfile::tempdir().expect("tempdir");
    let err = EmbeddingModel::open(empty.path(), &cpu()).expect_err("no model");
    assert!(err.to_string().contains("minilm.py convert"), "{err}");
}

#[test]
fn a_process_shares_one_embedder_per_model() {
    let settings = || EmbedderSettings {
        session: cpu(),
        ..EmbedderSettings::default()
    };
    let a = crate::embed::shared(&model_dir(), settings()).expect("first");
    let b = crate::embed::shared(&model_dir().join("."), settings()).expect("second");
    assert!(
        a.same_as(&b),
        "a second embedder was started for the same model"
    );
    let separate = Embedder::start(&model_dir(), settings(), None).expect("own");
    assert!(!a.same_as(&separate));
}
