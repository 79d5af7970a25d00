"""In-process search speed of a gpusearch Collection against raw FAISS on the same data, same run.

    .venv/bin/python bench/bench_engine.py [--n 200000] [--dim 384] [--repeats 5]

Prints a table and writes bench/results/engine-<cpuN or GPU name>.json. Each row: median
queries per second over repeats (after a warm-up) for the gpusearch collection
and for the FAISS index it is compared with (the same factory string and search
parameters, one index over all rows), their ratio, and recall@10 of both against
exact search. With one shard (the default) the two run the same index, so the
ratio is our overhead; with --shards S each shard trains its own index.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info, result_path  # noqa: E402

import faiss  # noqa: E402

import gpusearch as gs  # noqa: E402


def embeddings_like(rng, n, d, latent=32, clusters=1000):
    """Unit vectors with a low intrinsic dimension, as sentence embeddings have: clustered points
    in a ``latent``-dim space, projected to ``d`` dims, plus a little noise."""
    proj = np.random.default_rng(12345).standard_normal((latent, d)).astype(np.float32)
    centres = np.random.default_rng(54321).standard_normal((clusters, latent)).astype(np.float32)
    z = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, latent)).astype(np.float32)
    x = z @ proj + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed_pair(fa, fb, queries, batch, repeats):
    """Median QPS (and min, max) of fa and of fb over the queries in batches of ``batch``.

    The two alternate run by run, so drift in a shared machine's speed hits both alike.
    """
    def once(fn):
        t = time.perf_counter()
        for lo in range(0, len(queries), batch):
            fn(queries[lo : lo + batch])
        return len(queries) / (time.perf_counter() - t)

    once(fa), once(fb)  # warm-up
    runs = [(once(fa), once(fb)) for _ in range(repeats)]
    a, b = np.array(runs).T
    return (float(np.median(a)), float(a.min()), float(a.max())), (float(np.median(b)), float(b.min()), float(b.max()))


def recall(got, ref):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(got, ref)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--nq", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shards", type=int, default=1)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = embeddings_like(rng, args.n, args.dim)
    q = embeddings_like(np.random.default_rng(1), args.nq, args.dim)
    rows = []
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(x)
    _, gt = flat.search(q, args.k)
    gt_ids = [[str(i) for i in r] for r in gt]
    # nlist is per shard: each shard trains its own IVF on its own rows.
    per_shard = args.n // args.shards
    ivf_spec = f"IVF{max(16, int(2 * np.sqrt(per_shard)) // 16 * 16)},Flat"
    for spec, params, raw in [
        ("Flat", {}, flat),
        (ivf_spec, {"nprobe": 16}, None),
        ("HNSW32", {"efSearch": 64}, None),
    ]:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            col = gs.Collection.create(Path(tmp) / "c", dim=args.dim, metric="ip", index=spec, shards=args.shards,
                                       device="cpu", fsync=False)
            col.upsert(np.arange(args.n), x, batch_size=100_000)
            build = time.perf_counter() - t
            if raw is None:
                t = time.perf_counter()
                raw = faiss.index_factory(args.dim, spec, faiss.METRIC_INNER_PRODUCT)
                raw.train(x)
                raw.add(x)
                raw_build = time.perf_counter() - t
            else:
                raw_build = 0.0
            if "nprobe" in params:
                faiss.extract_index_ivf(raw).nprobe = params["nprobe"]
            if "efSearch" in params:
                raw.hnsw.efSearch = params["efSearch"]
            got = col.search(q, k=args.k, params=params).ids
            _, ri = raw.search(q, args.k)
            r_ours, r_raw = recall(got, gt_ids), recall([[str(i) for i in r] for r in ri], gt_ids)
            for batch in (1, args.nq):
                ours, theirs = timed_pair(lambda b: col.search(b, k=args.k, params=params),
                                          lambda b: raw.search(b, args.k), q, batch, args.repeats)
                rows.append({"index": spec, "params": params, "batch": batch, "shards": args.shards,
                             "gpusearch_qps": ours[0], "gpusearch_qps_min_max": ours[1:],
                             "faiss_qps": theirs[0], "faiss_qps_min_max": theirs[1:], "ratio": ours[0] / theirs[0],
                             "recall10_gpusearch": r_ours, "recall10_faiss": r_raw,
                             "build_s_gpusearch": build, "build_s_faiss": raw_build})
                r = rows[-1]
                print(f"{spec:14s} batch {batch:4d}: gpusearch {r['gpusearch_qps']:9.1f} qps  faiss {r['faiss_qps']:9.1f} qps"
                      f"  ratio {r['ratio']:.2f}  recall@10 {r_ours:.3f}/{r_raw:.3f}", flush=True)
            col.close()
    out = {"benchmark": "engine", "n": args.n, "dim": args.dim, "nq": args.nq, "k": args.k,
           "repeats": args.repeats, "machine": machine_info(), "rows": rows,
           "date": time.strftime("%Y-%m-%d")}
    path = result_path("engine", out["machine"])
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
