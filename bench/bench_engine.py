"""In-process search speed of a gpusearch Collection against raw FAISS on the same data, same run.

    .venv/bin/python bench/bench_engine.py                              # Flat, IVF, HNSW at 100k and 1M rows
    .venv/bin/python bench/bench_engine.py --indexes Flat               # the exact rows alone (100k and 1M)
    .venv/bin/python bench/bench_engine.py --n 20000 --nq 100 --repeats 3   # a quick check
    .venv/bin/python bench/bench_engine.py --n 100000 --indexes refine  # IVF + 4-bit fast-scan PQ + exact refine

Prints a table and writes bench/results/engine-<cpuN or GPU name>.json (rewritten after each
size, so a run stopped at 1M keeps its 100k rows).

What it compares (the issue's "Exact Flat: at least 1.0x faiss.IndexFlatIP for 1 query and for
1,000-query batches, 100k and 1M rows", and the approximate indexes beside it):

- ``Flat``: gpusearch's exact backend against ``faiss.IndexFlatIP``;
- ``IVF<nlist>,Flat`` (nlist about 2 sqrt(n)), ``HNSW32`` and ``IVF<nlist>,PQ<dim/2>x4fs,RFlat`` (the
  refine row: FAISS's ``IndexRefineFlat`` against gpusearch's own refine over its stored rows): the
  same FAISS factory string in both,
  at the engine's default options (what a user who sets none gets: efConstruction, efSearch,
  nprobe from ``gpusearch.backends.options``); raw FAISS is given the very values the collection
  stored, so the two search the same structure the same way.

Data: ``--n`` rows (comma-separated sizes, each measured in turn) of the clustered unit vectors of
``bench/ann/data.py`` (``synthetic_dataset``, seed 0: the same rows as ``bench_ann.py --dataset
synthetic:N``), ``--nq`` queries from the same distribution, metric inner product, k=10.

Timing: each row is one index at one size and one batch size: 1 query per call (over as many of
the queries as one gpusearch pass gets through in ``--single-budget-s``, at least 20) and
``--batch`` queries per call (default 1,000). gpusearch and FAISS alternate pass by pass after one
warm-up pass each, so drift in a shared machine's speed hits both alike; QPS is the median of
``--repeats`` passes (min and max kept), ``ratio`` = gpusearch / FAISS. recall@10 of both is
against exact search. Both use all cores (FAISS's OpenMP, gpusearch's BLAS and FAISS).

JSON keys as before (``rows`` of ``index``, ``params``, ``batch``, ``gpusearch_qps``, ``faiss_qps``,
``ratio``, ...), each row now also naming its ``n``; the top-level ``n`` is the list of sizes.
"""
from __future__ import annotations

import argparse
import gc
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
from ann import data as D  # noqa: E402


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


def refine_spec(n: int, shards: int, dim: int) -> str:
    """IVF over 4-bit fast-scan PQ (2 dims a code) with an exact refine; nlist about sqrt(rows)."""
    return f"IVF{max(16, int(np.sqrt(n // shards)))},PQ{dim // 2}x4fs,RFlat"


def ivf_spec(n: int, shards: int) -> str:
    """nlist is per shard (each shard trains its own IVF on its own rows): about 2 sqrt(rows), a multiple of 16."""
    return f"IVF{max(16, int(2 * np.sqrt(n // shards)) // 16 * 16)},Flat"


def singles_for(fn, queries, budget_s: float) -> int:
    """How many queries one pass of single calls gets through in about ``budget_s`` (at least 20)."""
    t0, m = time.perf_counter(), 0
    while m < len(queries) and (m < 20 or time.perf_counter() - t0 < budget_s):
        fn(queries[m : m + 1])
        m += 1
    return m


def raw_faiss(spec: str, x: np.ndarray, options: dict):
    """The FAISS index gpusearch's ``spec`` stands for, with the options the collection stored."""
    if spec == "Flat":
        ix = faiss.IndexFlatIP(x.shape[1])
    else:
        ix = faiss.index_factory(x.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    if "efConstruction" in options:
        ix.hnsw.efConstruction = options["efConstruction"]
    if not ix.is_trained:
        ix.train(x)
    ix.add(x)
    if "nprobe" in options:
        faiss.extract_index_ivf(ix).nprobe = options["nprobe"]
    if "efSearch" in options:
        ix.hnsw.efSearch = options["efSearch"]
    if "kFactor" in options:
        faiss.downcast_index(ix).k_factor = options["kFactor"]
    return ix


def measure_size(n: int, args, rows: list) -> None:
    ds = D.synthetic_dataset(n, dim=args.dim, nq=args.nq)
    x, q = ds.train, ds.test
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(x)
    _, gt = exact.search(q, args.k)
    del exact
    gt_ids = [[str(i) for i in r] for r in gt]
    specs = {"flat": "Flat", "ivf": ivf_spec(n, args.shards), "hnsw": "HNSW32",
             "refine": refine_spec(n, args.shards, args.dim)}
    for name in args.indexes:
        spec = specs[name]
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            col = gs.Collection.create(Path(tmp) / "c", dim=args.dim, metric="ip", index=spec, shards=args.shards,
                                       device="cpu", fsync=False)
            col.upsert(np.arange(n), x, batch_size=100_000)
            build = time.perf_counter() - t
            options = dict(col.stats()["index_options"])  # the engine's defaults, filled in
            t = time.perf_counter()
            raw = raw_faiss(spec, x, options)
            raw_build = time.perf_counter() - t
            got = col.search(q, k=args.k).ids
            _, ri = raw.search(q, args.k)
            r_ours, r_raw = recall(got, gt_ids), recall([[str(i) for i in r] for r in ri], gt_ids)
            ours_fn = lambda b: col.search(b, k=args.k)  # noqa: E731 - no params: the engine's defaults
            raw_fn = lambda b: raw.search(b, args.k)  # noqa: E731
            for batch in (1, args.batch):
                qs = q[: singles_for(ours_fn, q, args.single_budget_s)] if batch == 1 else q
                ours, theirs = timed_pair(ours_fn, raw_fn, qs, batch, args.repeats)
                rows.append({"index": spec, "n": n, "params": options, "batch": batch, "queries_timed": len(qs),
                             "shards": args.shards,
                             "gpusearch_qps": ours[0], "gpusearch_qps_min_max": ours[1:],
                             "faiss_qps": theirs[0], "faiss_qps_min_max": theirs[1:], "ratio": ours[0] / theirs[0],
                             "recall10_gpusearch": r_ours, "recall10_faiss": r_raw,
                             "build_s_gpusearch": build, "build_s_faiss": raw_build,
                             "faiss_index": "IndexFlatIP" if spec == "Flat" else type(faiss.downcast_index(raw)).__name__})
                r = rows[-1]
                print(f"{spec:14s} n {n:>9,} batch {batch:5d}: gpusearch {r['gpusearch_qps']:9.1f} qps  "
                      f"faiss {r['faiss_qps']:9.1f} qps  ratio {r['ratio']:.2f}  recall@10 {r_ours:.3f}/{r_raw:.3f}",
                      flush=True)
            col.close()
            del col, raw
            gc.collect()


def _commit() -> str:
    """The checkout's commit (with ``+changes`` when its files differ from it), or ``unknown``."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="100000,1000000", help="rows, comma-separated sizes (default 100000,1000000)")
    ap.add_argument("--indexes", default="Flat,IVF,HNSW", help="which of Flat, IVF, HNSW, refine (default the "
                    "first three)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--nq", type=int, default=1000, help="queries (default 1000)")
    ap.add_argument("--batch", type=int, default=1000, help="queries per call in the batch rows (default 1000)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--single-budget-s", type=float, default=3.0, help="time single queries on as many of the "
                    "queries as one gpusearch pass gets through in about this long (at least 20)")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--out", default=None, help="result path (default bench/results/engine-<machine>.json)")
    args = ap.parse_args()
    ns = [int(float(v)) for v in args.n.split(",") if v.strip()]
    bad = [v.strip() for v in args.indexes.split(",") if v.strip().lower() not in ("flat", "ivf", "hnsw", "refine", "")]
    if bad:
        raise SystemExit(f"--indexes: unknown {bad[0]!r}; use Flat, IVF, HNSW, refine")
    args.indexes = [v.strip().lower() for v in args.indexes.split(",") if v.strip()]
    if args.batch > args.nq:
        raise SystemExit(f"--batch {args.batch} is more than the {args.nq} queries (--nq)")
    rows: list = []
    out = {"benchmark": "engine", "n": ns, "dim": args.dim, "nq": args.nq, "k": args.k, "batch": args.batch,
           "repeats": args.repeats, "single_budget_s": args.single_budget_s, "metric": "ip",
           "data": "synthetic clustered unit vectors (bench/ann/data.py synthetic_dataset, seed 0)",
           "faiss_omp_threads": faiss.omp_get_max_threads(), "machine": machine_info(), "rows": rows,
           "date": time.strftime("%Y-%m-%d"), "commit": _commit()}
    path = Path(args.out) if args.out else result_path("engine", out["machine"])
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in ns:
        measure_size(n, args, rows)
        path.write_text(json.dumps(out, indent=2))
    print(f"\n{'index':14s} {'n':>9s} {'batch':>5s} {'gpusearch qps':>13s} {'faiss qps':>10s} {'ratio':>5s}")
    for r in rows:
        print(f"{r['index']:14s} {r['n']:>9,} {r['batch']:>5d} {r['gpusearch_qps']:>13.1f} {r['faiss_qps']:>10.1f} "
              f"{r['ratio']:>5.2f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
