"""A tiny causal LM in the layout of optimum's ONNX exports, generated with onnx + numpy,
for testing and benchmarking the Rust causal-LM runner without downloading anything.

    python onnx-models/tiny_llm.py OUT_DIR [--family qwen2|llama|mistral|phi3] [--seed N]
                                           [--answer FILE]

Writes model.onnx, tokenizer.json and config.json. The model is a llama-style decoder
(RMSNorm, rotary position embeddings, grouped-query attention, SwiGLU MLP): 2 layers,
hidden 64, 4 query heads and 2 key/value heads of 16, random weights from the seed. Its
inputs and outputs carry the names of optimum exports for llama, mistral, qwen2 and phi-3:

    input_ids, attention_mask, position_ids            int64 [batch, seq] / [batch, past+seq]
    past_key_values.N.key / .value                     float32 [batch, 2, past, 16]
    -> logits                                          float32 [batch, seq, vocab]
    -> present.N.key / .value                          float32 [batch, 2, past+seq, 16]

The tokenizer is byte-level (every byte a token, no merges) plus the family's special
tokens, so any text round-trips. Output is deterministic for a seed (weights are scaled
so that greedy decoding does not just repeat one token).

With --answer FILE the model also knows one answer by heart, for testing engines end to
end: each line of the file becomes a token of its own, and a bigram head added to the
logits makes greedy decoding after a prompt ending in a newline (every chat template
here) produce exactly the file's text, then end-of-sequence. The transformer layers, KV
cache and all, still run underneath.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

LAYERS = 2
HIDDEN = 64
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
INTERMEDIATE = 128
THETA = 10000.0
EPS = 1e-6
OPSET = 17

SPECIAL = {
    "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "llama": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "mistral": ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
    "phi3": ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
}
EOS = {"qwen2": ["<|im_end|>", "<|endoftext|>"], "llama": ["<|eot_id|>", "<|end_of_text|>"], "mistral": ["</s>"], "phi3": ["<|end|>", "<|endoftext|>"]}


def byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode table: the characters byte-level BPE uses for the 256 bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def tokenizer(family: str, answer_lines: list[str]):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(byte_alphabet())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL[family]])
    tok.add_tokens([AddedToken(line, special=False, normalized=False) for line in dict.fromkeys(answer_lines)])
    return tok


def answer_bigrams(tok, family: str, answer_lines: list[str], vocab: int) -> np.ndarray:
    """[vocab, vocab] additive logits: after a newline the first line, after each line
    the next, after the last end-of-sequence."""
    table = np.zeros((vocab, vocab), dtype=np.float32)
    if not answer_lines:
        return table
    ids = [tok.token_to_id(line) for line in answer_lines]
    if len(set(ids)) != len(ids):
        sys.exit("tiny_llm: the answer's lines must be distinct")
    chain = [tok.encode("\n").ids[-1]] + ids + [tok.token_to_id(EOS[family][0])]
    for a, b in zip(chain, chain[1:]):
        table[a, b] = 1000.0
    return table


def build(family: str, vocab: int, seed: int, bigrams: np.ndarray):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def weight(name, rows, cols, scale):
        return const(name, (rng.standard_normal((rows, cols)) * scale).astype(np.float32))

    def rms_norm(x, name):
        g = const(f"{name}.weight", (1.0 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
        sq = node("Mul", [x, x], f"{name}/sq")
        mean = node("ReduceMean", [sq], f"{name}/mean", axes=[-1], keepdims=1)
        inv = node("Reciprocal", [node("Sqrt", [node("Add", [mean, "eps"], f"{name}/add")], f"{name}/sqrt")], f"{name}/inv")
        return node("Mul", [node("Mul", [x, inv], f"{name}/normed"), g], name)

    const("eps", np.array(EPS, dtype=np.float32))
    const("zero_i", np.array(0, dtype=np.int64))
    const("one_i", np.array(1, dtype=np.int64))
    const("dim1", np.array([1], dtype=np.int64))
    const("ax0", np.array([0], dtype=np.int64))
    const("ax_1", np.array([-1], dtype=np.int64))
    const("ax_1_2", np.array([1, 2], dtype=np.int64))
    const("ax_2", np.array([2], dtype=np.int64))
    const("split_q", np.array([0, 0, HEADS, HEAD_DIM], dtype=np.int64))
    const("split_kv", np.array([0, 0, KV_HEADS, HEAD_DIM], dtype=np.int64))
    const("group_q", np.array([0, KV_HEADS, HEADS // KV_HEADS, -1, HEAD_DIM], dtype=np.int64))
    const("ungroup", np.array([0, HEADS, -1, HEAD_DIM], dtype=np.int64))
    const("merge", np.array([0, 0, HIDDEN], dtype=np.int64))
    const("scale", np.array(1.0 / np.sqrt(HEAD_DIM), dtype=np.float32))
    const("zero_f", np.array(0.0, dtype=np.float32))
    const("masked", np.array(np.finfo(np.float32).min, dtype=np.float32))
    half = HEAD_DIM // 2
    const("inv_freq", (1.0 / THETA ** (np.arange(0, half, dtype=np.float32) * 2 / HEAD_DIM)).astype(np.float32))
    const("halves", np.array([half, half], dtype=np.int64))

    x = node("Gather", [weight("embed_tokens", vocab, HIDDEN, 1.0), "input_ids"], "embed")

    # Rotary embeddings from position_ids: angles [b, 1, s, half] -> cos/sin over the full head.
    pos = node("Cast", [node("Unsqueeze", ["position_ids", "ax_1"], "rope/pos_u")], "rope/pos", to=TensorProto.FLOAT)
    angles = node("Mul", [pos, "inv_freq"], "rope/angles")
    angles = node("Unsqueeze", [node("Concat", [angles, angles], "rope/full", axis=-1), "dim1"], "rope/angles_h")
    cos = node("Cos", [angles], "rope/cos")
    sin = node("Sin", [angles], "rope/sin")

    def rope(t, name):
        a = f"{name}/a"
        b = f"{name}/b"
        nodes.append(helper.make_node("Split", [t, "halves"], [a, b], name=f"{name}/split", axis=-1))
        rotated = node("Concat", [node("Neg", [b], f"{name}/neg"), a], f"{name}/rot", axis=-1)
        return node("Add", [node("Mul", [t, cos], f"{name}/c"), node("Mul", [rotated, sin], f"{name}/s")], name)

    # Additive mask [b, 1, 1, s, total]: causal over absolute positions, and padding.
    seq = node("Gather", [node("Shape", ["input_ids"], "mask/ishape"), "one_i"], "mask/seq")
    total = node("Gather", [node("Shape", ["attention_mask"], "mask/mshape"), "one_i"], "mask/total")
    past = node("Sub", [total, seq], "mask/past")
    q_pos = node("Unsqueeze", [node("Range", [past, total, "one_i"], "mask/qr"), "ax_1"], "mask/q_pos")
    k_pos = node("Unsqueeze", [node("Range", ["zero_i", total, "one_i"], "mask/kr"), "ax0"], "mask/k_pos")
    causal = node("LessOrEqual", [k_pos, q_pos], "mask/causal")
    padding = node("Cast", [node("Unsqueeze", ["attention_mask", "ax_1_2"], "mask/pad_u")], "mask/pad", to=TensorProto.BOOL)
    allowed = node("And", [causal, padding], "mask/allowed")  # [b, 1, s, total]
    additive = node("Unsqueeze", [node("Where", [allowed, "zero_f", "masked"], "mask/where"), "ax_2"], "mask/additive")

    past_inputs, present_outputs = [], []
    for i in range(LAYERS):
        n = f"layers.{i}"
        h = rms_norm(x, f"{n}.input_layernorm")
        q = node("MatMul", [h, weight(f"{n}.q_proj", HIDDEN, HEADS * HEAD_DIM, 0.25)], f"{n}/q")
        k = node("MatMul", [h, weight(f"{n}.k_proj", HIDDEN, KV_HEADS * HEAD_DIM, 0.25)], f"{n}/k")
        v = node("MatMul", [h, weight(f"{n}.v_proj", HIDDEN, KV_HEADS * HEAD_DIM, 0.25)], f"{n}/v")
        q = node("Transpose", [node("Reshape", [q, "split_q"], f"{n}/q4")], f"{n}/qh", perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [k, "split_kv"], f"{n}/k4")], f"{n}/kh", perm=[0, 2, 1, 3])
        v = node("Transpose", [node("Reshape", [v, "split_kv"], f"{n}/v4")], f"{n}/vh", perm=[0, 2, 1, 3])
        q = rope(q, f"{n}/q_rope")
        k = rope(k, f"{n}/k_rope")
        pk, pv = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        past_inputs += [pk, pv]
        k_all = node("Concat", [pk, k], f"present.{i}.key", axis=2)
        v_all = node("Concat", [pv, v], f"present.{i}.value", axis=2)
        present_outputs += [k_all, v_all]
        # Grouped-query attention: queries grouped per key/value head, broadcast in MatMul.
        qg = node("Reshape", [q, "group_q"], f"{n}/qg")  # [b, kv, g, s, d]
        kg = node("Unsqueeze", [k_all, "ax_2"], f"{n}/kg")  # [b, kv, 1, t, d]
        vg = node("Unsqueeze", [v_all, "ax_2"], f"{n}/vg")
        kt = node("Transpose", [kg], f"{n}/kt", perm=[0, 1, 2, 4, 3])
        scores = node("Mul", [node("MatMul", [qg, kt], f"{n}/qk"), "scale"], f"{n}/scores")
        probs = node("Softmax", [node("Add", [scores, additive], f"{n}/masked")], f"{n}/probs", axis=-1)
        ctx = node("Reshape", [node("MatMul", [probs, vg], f"{n}/ctxg"), "ungroup"], f"{n}/ctx")
        ctx = node("Reshape", [node("Transpose", [ctx], f"{n}/ctx_t", perm=[0, 2, 1, 3]), "merge"], f"{n}/ctx_m")
        x = node("Add", [x, node("MatMul", [ctx, weight(f"{n}.o_proj", HIDDEN, HIDDEN, 0.25)], f"{n}/o")], f"{n}/attn_res")
        h = rms_norm(x, f"{n}.post_attention_layernorm")
        gate = node("MatMul", [h, weight(f"{n}.gate_proj", HIDDEN, INTERMEDIATE, 0.25)], f"{n}/gate")
        up = node("MatMul", [h, weight(f"{n}.up_proj", HIDDEN, INTERMEDIATE, 0.25)], f"{n}/up")
        silu = node("Mul", [gate, node("Sigmoid", [gate], f"{n}/sig")], f"{n}/silu")
        down = node("MatMul", [node("Mul", [silu, up], f"{n}/act"), weight(f"{n}.down_proj", INTERMEDIATE, HIDDEN, 0.25)], f"{n}/down")
        x = node("Add", [x, down], f"{n}/mlp_res")

    x = rms_norm(x, "norm")
    lm = node("MatMul", [x, weight("lm_head", HIDDEN, vocab, 0.5)], "lm_logits")
    node("Add", [lm, node("Gather", [const("answer_bigrams", bigrams), "input_ids"], "bigram")], "logits")

    ids = lambda name, dims: helper.make_tensor_value_info(name, TensorProto.INT64, dims)
    inputs = [ids("input_ids", ["batch", "sequence"]), ids("attention_mask", ["batch", "total"]), ids("position_ids", ["batch", "sequence"])]
    inputs += [helper.make_tensor_value_info(p, TensorProto.FLOAT, ["batch", KV_HEADS, "past", HEAD_DIM]) for p in past_inputs]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", vocab])]
    outputs += [helper.make_tensor_value_info(p, TensorProto.FLOAT, ["batch", KV_HEADS, "total", HEAD_DIM]) for p in present_outputs]
    graph = helper.make_graph(nodes, f"tiny-{family}", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qefleet onnx-models/tiny_llm.py")
    model.ir_version = 8
    return model


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    out = Path(argv[1])
    family = argv[argv.index("--family") + 1] if "--family" in argv else "qwen2"
    seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 7
    if family not in SPECIAL:
        sys.exit(f"tiny_llm: unknown family {family!r}; one of {', '.join(SPECIAL)}")
    import onnx

    answer_lines = []
    if "--answer" in argv:
        # One token a line; blank lines join the line before them.
        for line in Path(argv[argv.index("--answer") + 1]).read_text().splitlines(keepends=True):
            if answer_lines and not line.strip():
                answer_lines[-1] += line
            else:
                answer_lines.append(line)
    out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer(family, answer_lines)
    vocab = tok.get_vocab_size()
    model = build(family, vocab, seed, answer_bigrams(tok, family, answer_lines, vocab))
    onnx.checker.check_model(model)
    onnx.save(model, str(out / "model.onnx"))
    tok.save(str(out / "tokenizer.json"))
    config = {
        "model_type": family,
        "vocab_size": vocab,
        "num_hidden_layers": LAYERS,
        "hidden_size": HIDDEN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "eos_token_id": [tok.token_to_id(t) for t in EOS[family]],
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"tiny_llm: wrote {out} ({family}, vocab {vocab}, seed {seed})")


if __name__ == "__main__":
    main(sys.argv)
