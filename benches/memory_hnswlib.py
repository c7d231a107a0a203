"""hnswlib on the vectors `cargo bench --bench memory` wrote, with the same M, ef_construction
and ef. Builds the index and prints one JSON line (build time), then serves rounds: for
each line `search` read from stdin it runs every query once (one query per call, one
thread, as the fleet searches) and prints one JSON line with the latencies in ms and the
hits against the bench's exact neighbours. The bench alternates these rounds with its
own, so both see the same machine.

usage: memory_hnswlib.py DIR N DIM QUERIES M EF_CONSTRUCTION EF THREADS
"""
import json
import sys
import time

import hnswlib
import numpy as np


def main():
    d, n, dim, q, m, efc, ef, threads = sys.argv[1:9]
    n, dim, q, m, efc, ef, threads = map(int, (n, dim, q, m, efc, ef, threads))
    data = np.fromfile(f"{d}/data.f32", dtype="<f4").reshape(n, dim)
    queries = np.fromfile(f"{d}/queries.f32", dtype="<f4").reshape(q, dim)
    truth = np.fromfile(f"{d}/truth.u32", dtype="<u4").reshape(q, 10)
    index = hnswlib.Index(space="l2", dim=dim)
    start = time.perf_counter()
    index.init_index(max_elements=n, M=m, ef_construction=efc, random_seed=1)
    index.add_items(data, np.arange(n), num_threads=threads)
    build_s = time.perf_counter() - start
    index.set_ef(ef)
    index.set_num_threads(1)
    print(json.dumps({"build_s": build_s, "version": getattr(hnswlib, "__version__", "0.8.0")}), flush=True)
    rows = [queries[i : i + 1] for i in range(q)]
    for line in sys.stdin:
        if line.strip() != "search":
            continue
        lat = []
        hits = 0
        for i in range(q):
            t = time.perf_counter()
            labels, _ = index.knn_query(rows[i], k=10)
            lat.append((time.perf_counter() - t) * 1000.0)
            hits += len(set(labels[0].tolist()) & set(truth[i].tolist()))
        print(json.dumps({"lat_ms": lat, "hits": hits}), flush=True)


if __name__ == "__main__":
    main()
