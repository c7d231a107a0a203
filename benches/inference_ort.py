"""The baseline of benches/inference.rs (embeddings): the same model file through onnxruntime's Python
API, with the same tokenizer file, pooling and normalisation and the same thread count.

    python benches/inference_ort.py MODEL_DIR THREADS

Serves requests, one JSON object a line on stdin, so the bench can interleave its rounds
with the Rust side's (this machine's speed drifts): {"single": [texts]} answers the
milliseconds of each text embedded alone; {"batch": [texts], "size": 32} answers the
seconds for all texts in batches of that size.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def main() -> None:
    model_dir, threads = Path(sys.argv[1]), int(sys.argv[2])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    names = {i.name for i in session.get_inputs()}

    def embed(chunk):
        enc = tokenizer.encode_batch(chunk)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.array([e.type_ids for e in enc], dtype=np.int64)
        hidden = session.run(None, feed)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if "single" in request:
            answer = []
            for text in request["single"]:
                started = time.perf_counter()
                embed([text])
                answer.append((time.perf_counter() - started) * 1000.0)
        else:
            texts, size = request["batch"], request["size"]
            started = time.perf_counter()
            for start in range(0, len(texts), size):
                embed(texts[start:start + size])
            answer = time.perf_counter() - started
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
