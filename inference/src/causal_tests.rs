//! The causal-LM runner on tiny generated models (onnx-models/tiny_llm.py: 2 layers,
//! grouped-query attention, rotary positions, the export names of optimum) in the real
//! runtime: the KV cache against full recomputation, sampling, stops, templates.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::causal::{CausalLm, Family, GenerateOptions, StopReason};
use crate::runtime::{Device, SessionSettings};

fn settings() -> SessionSettings {
    SessionSettings {
        device: Device::Cpu,
        intra_threads: 1,
        ..SessionSettings::default()
    }
}

/// Generates a tiny model of `family` into a fresh temp dir.
fn tiny(family: &str, seed: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let python =
        qefleet_shared::embedded::venv_python().expect(".venv/bin/python (run ./scripts/setup.sh)");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../onnx-models/tiny_llm.py");
    let out = dir.path().join(family);
    let status = Command::new(python)
        .arg(script)
        .arg(&out)
        .args(["--family", family, "--seed", &seed.to_string()])
        .status()
        .expect("run tiny_llm.py");
    assert!(status.success(), "tiny_llm.py failed");
    (dir, out)
}

#[test]
fn kv_cache_decoding_gives_the_logits_of_full_recomputation() {
    let (_keep, dir) = tiny("qwen2", 7);
    let mut lm = CausalLm::open(&dir, &settings()).expect("open");
    let ids = lm
        .encode(&Family::Qwen2.chat_prompt("You write tests.", "def add(a, b): return a + b"))
        .expect("encode");
    assert!(ids.len() > 20);
    let (full, vocab, _) = lm.forward(&ids, None, 0).expect("full");
    assert_eq!(full.len(), ids.len() * vocab);

    let prefill = 8;
    let (first, _, mut cache) = lm.forward(&ids[..prefill], None, 0).expect("prefill");
    let mut worst = first
        .iter()
        .zip(&full[..prefill * vocab])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    for (pos, &token) in ids.iter().enumerate().skip(prefill) {
        let (step, _, present) = lm.forward(&[token], Some(cache), pos).expect("step");
        cache = present;
        let row = &full[pos * vocab..(pos + 1) * vocab];
        worst = step
            .iter()
            .zip(row)
            .map(|(a, b)| (a - b).abs())
            .fold(worst, f32::max);
    }
    let scale = full.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        worst < 1e-4 * scale.max(1.0),
        "cached and recomputed logits differ by {worst} (scale {scale})"
    );
}

#[test]
fn greedy_is_deterministic_and_stops_at_the_token_limit() {
    let (_keep, dir) = tiny("qwen2", 7);
    let mut lm = CausalLm::open(&dir, &settings()).expect("open");
    let prompt = Family::Qwen2.chat_prompt("S", "hello");
    let options = GenerateOptions {
        max_new_tokens: 12,
        ..GenerateOptions::default()
    };
    let a = lm.generate(&prompt, &options).expect("generate");
    let b = lm.generate(&prompt, &options).expect("generate");
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.tokens.len(), 12);
    assert_eq!(a.stop, StopReason::MaxTokens);
    assert!(a.prefill_tokens_per_second() > 0.0 && a.decode_tokens_per_second() > 0.0);
    let late = lm
        .generate(
            &prompt,
            &GenerateOptions {
                deadline: Some(std::time::Instant::now()),
                ..options.clone()
            },
        )
        .expect("generate");
    assert_eq!(late.stop, StopReason::Deadline);
    assert_eq!(
        late.tokens,
        a.tokens[..1],
        "a passed deadline keeps the first token only"
    );

    // Greedy decoding with the cache picks the argmax of full recomputation at every step.
    let mut ids = lm.encode(&prompt).expect("encode");
    for &token in &a.tokens {
        let (logits, vocab, _) = lm.forward(&ids, None, 0).expect("full");
        let last = &logits[logits.len() - vocab..];
        assert_eq!(crate::causal::argmax(last), token);
        ids.push(token);
    }
}

#[test]
fn sampling_is_reproducible_by_seed() {
    let (_keep, dir) = tiny("qwen2", 7);
    let mut lm = CausalLm::open(&dir, &settings()).expect("open");
    let prompt = Family::Qwen2.chat_prompt("S", "hello");
    let with_seed = |seed| GenerateOptions {
        max_new_tokens: 24,
        temperature: 1.0,
        top_p: 0.95,
        seed,
        ..GenerateOptions::default()
    };
    let a = lm.generate(&prompt, &with_seed(1)).expect("generate");
    let b = lm.generate(&prompt, &with_seed(1)).expect("generate");
    let c = lm.generate(&prompt, &with_seed(2)).expect("generate");
    assert_eq!(a.tokens, b.tokens);
    assert_ne!(a.tokens, c.tokens, "two seeds drew the same 24 tokens");
}

#[test]
fn stop_sequences_and_end_of_sequence_end_generation() {
    let (_keep, dir) = tiny("qwen2", 7);
    let mut lm = CausalLm::open(&dir, &settings()).expect("open");
    let prompt = Family::Qwen2.chat_prompt("S", "hello");
    let free = lm
        .generate(
            &prompt,
            &GenerateOptions {
                max_new_tokens: 30,
                ..GenerateOptions::default()
            },
        )
        .expect("generate");
    // A stop sequence taken from the middle of the free text cuts it where it first occurs.
    let chars: Vec<char> = free.text.chars().collect();
    assert!(chars.len() >= 12, "{:?}", free.text);
    let stop: String = chars[8..10].iter().collect();
    let expected: String = free.text[..free.text.find(&stop).expect("present")].to_string();
    let stopped = lm
        .generate(
            &prompt,
            &GenerateOptions {
                max_new_tokens: 30,
                stop: vec![stop.clone()],
                ..GenerateOptions::default()
            },
        )
        .expect("generate");
    assert_eq!(stopped.stop, StopReason::StopSequence);
    assert_eq!(stopped.text, expected);

    // The fourth greedy token made end-of-sequence ends generation before it.
    let config = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).expect("read")).expect("json");
    json["eos_token_id"] = serde_json::json!(free.tokens[3]);
    std::fs::write(&config, json.to_string()).expect("write");
    let mut lm = CausalLm::open(&dir, &settings()).expect("reopen");
    let ended = lm
        .generate(
            &prompt,
            &GenerateOptions {
                max_new_tokens: 30,
                ..GenerateOptions::default()
            },
        )
        .expect("generate");
    assert_eq!(ended.stop, StopReason::EndOfSequence);
    let first = free
        .tokens
        .iter()
        .position(|t| *t == free.tokens[3])
        .expect("present");
    assert_eq!(ended.tokens, free.tokens[..first]);
}

#[test]
fn every_family_opens_and_its_template_markers_are_single_tokens() {
    for (family, kind, marker) in [
        ("llama", Family::Llama, "<|start_header_id|>"),
        ("mistral", Family::Mistral, "[INST]"),
        ("qwen2", Family::Qwen2, "<|im_start|>"),
        ("phi3", Family::Phi3, "<|user|>"),
    ] {
        let (_keep, dir) = tiny(family, 3);
        let mut lm = CausalLm::open(&dir, &settings()).expect(family);
        assert_eq!(lm.family(), kind);
        let marker_ids = lm.encode(marker).expect("encode");
        assert_eq!(marker_ids.len(), 1, "{family}: {marker} is not one token");
        let ids = lm.encode(&kind.chat_prompt("sys", "user")).expect("encode");
        assert!(
            ids.contains(&marker_ids[0]),
            "{family}: template lacks {marker}"
        );
        let g = lm
            .generate(
                &kind.chat_prompt("sys", "user"),
                &GenerateOptions {
                    max_new_tokens: 4,
                    ..GenerateOptions::default()
                },
            )
            .expect("generate");
        assert!(g.tokens.len() <= 4);
    }
}

#[test]
fn an_unknown_model_type_is_refused_by_name() {
    let (_keep, dir) = tiny("qwen2", 7);
    std::fs::write(dir.join("config.json"), r#"{"model_type": "gpt2"}"#).expect("write");
    let err = CausalLm::open(&dir, &settings()).expect_err("gpt2");
    assert!(
        err.to_string()
            .contains("\"gpt2\" is not one of llama, mistral, qwen2, phi3"),
        "{err}"
    );
}
