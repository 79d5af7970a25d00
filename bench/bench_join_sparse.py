"""Hybrid (dense + sparse) k-NN join on Ray Data against the dense join of the same tables and against an
in-process NumPy/SciPy brute force of the same hybrid scores.

Data (seeded): ``--right`` rows and ``--left`` rows, each a ``--dim`` clustered unit vector plus a sparse
vector of up to ``--nnz`` non-zeros over a ``--vocab``-term vocabulary (Zipf-like term frequencies, as
text has), written once as Parquet under ``--data-dir``. Three timings, alternating round by round over
``--repeats`` rounds (medians reported):

- ``dense join``: ``join.knn_join(left, right, k, metric="ip")`` on the dense vectors alone;
- ``hybrid join``: the same with ``sparse="sparse"`` (score = dense inner product + sparse dot product,
  exact; each partition scores one query at a time: a GEMM per tile of queries, then the engine's
  ``SparseRows`` inverted index);
- ``brute force``: the whole right side in this process, ``L @ R.T`` (float32 GEMM, all cores) plus the
  sparse product (SciPy CSR x CSC), then a top-k per row: the same answers, no Ray.

Both joins use 2 partitions and 2 join workers; their time is the join phase (``join_s`` in the
output's stats; the partition load is reported apart). ``agreement`` is the share of the brute force's
top-k ids the hybrid join returned (1.0 unless near-ties at the k-th place).

Run::

    RAY_AUTH_MODE=disabled .venv/bin/python bench/bench_join_sparse.py             # 4,096 x 200,000, ~5 min
    RAY_AUTH_MODE=disabled .venv/bin/python bench/bench_join_sparse.py --right 20000 --left 1000 --repeats 1

Writes ``bench/results/join-sparse-<cpuN|gpu>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info, result_path  # noqa: E402


def make_side(path: Path, n: int, dim: int, nnz: int, vocab: int, seed: int, prefix: str):
    """n rows (ids ``{prefix}0000000``...): clustered unit vectors and sparse vectors of up to ``nnz`` terms
    (drawn Zipf-like: a few common terms, many rare ones, as text has); returned as arrays too (the sparse
    ones as CSR offsets, indices and values)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((256, dim)).astype(np.float32)
    x = centres[rng.integers(0, 256, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, vocab + 1)
    draws = rng.choice(vocab, size=(n, 3 * nnz), p=weights / weights.sum())
    rows = []
    for d in draws:
        _, first = np.unique(d, return_index=True)
        rows.append(np.sort(d[np.sort(first)][:nnz]))
    offsets = np.zeros(n + 1, np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    indices = np.concatenate(rows)
    values = (rng.random(len(indices)) * 0.2).astype(np.float32)
    ids = [f"{prefix}{i:07d}" for i in range(n)]
    if not (path / "_SUCCESS").exists():
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        off = pa.array(offsets.astype(np.int32))
        sparse = pa.StructArray.from_arrays([pa.ListArray.from_arrays(off, pa.array(indices.astype(np.uint32))),
                                             pa.ListArray.from_arrays(off, pa.array(values))],
                                            names=["indices", "values"])
        vec = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim)
        pq.write_table(pa.table({"id": pa.array(ids), "vector": vec, "sparse": sparse}), path / "part-000.parquet")
        (path / "_SUCCESS").write_text("")
    return ids, x, (offsets, indices, values)


def brute_force(L, R, Ls, Rs, k: int, chunk: int = 512) -> tuple[float, np.ndarray]:
    """Top-k right rows per left row by dense + sparse score (float64), ties to the smaller row, ``chunk``
    left rows at a time; and its time."""
    t0 = time.perf_counter()
    RsT = Rs.T.tocsc()
    out = []
    for a in range(0, len(L), chunk):
        S = (L[a : a + chunk] @ R.T).astype(np.float64)
        S += (Ls[a : a + chunk] @ RsT).toarray()
        part = np.argpartition(-S, k - 1, axis=1)[:, :k]
        order = np.lexsort((part, -np.take_along_axis(S, part, 1)), axis=1)
        out.append(np.take_along_axis(part, order, 1))
    return time.perf_counter() - t0, np.concatenate(out)


def csr(parts, vocab: int):
    from scipy.sparse import csr_matrix

    offsets, indices, values = parts
    return csr_matrix((values.astype(np.float64), indices, offsets), shape=(len(offsets) - 1, vocab))


def run_join(left: Path, right: Path, k: int, sparse: bool, batch: int, out: Path) -> dict:
    from gpusearch import join

    shutil.rmtree(out, ignore_errors=True)
    join.knn_join(str(left), str(right), k=k, metric="ip", sparse="sparse" if sparse else None, workers=2,
                  partitions=2, batch_size=batch, output=str(out))
    return join.read_stats(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--right", type=int, default=200_000)
    p.add_argument("--left", type=int, default=4096)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--nnz", type=int, default=50)
    p.add_argument("--vocab", type=int, default=30_000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "gs-join-sparse-bench"))
    p.add_argument("--out", default=None)
    args = p.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("GPUSEARCH_PROGRESS", "0")
    load_before = [round(x, 2) for x in os.getloadavg()]
    root = Path(args.data_dir)
    shape = f"{args.dim}d-{args.nnz}nnz-{args.vocab}v"
    rpath, lpath = root / f"right-{args.right}-{shape}", root / f"left-{args.left}-{shape}"
    rids, R, rsp = make_side(rpath, args.right, args.dim, args.nnz, args.vocab, 1, "r")
    lids, L, lsp = make_side(lpath, args.left, args.dim, args.nnz, args.vocab, 2, "q")
    Rs, Ls = csr(rsp, args.vocab), csr(lsp, args.vocab)

    import ray

    from gpusearch._ray import local_ray_kwargs

    ray.init(include_dashboard=False, num_cpus=max(4, os.cpu_count() or 1), log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="gsray-bench-join-sparse-"), **local_ray_kwargs())
    ray.data.DataContext.get_current().enable_progress_bars = False

    times: dict[str, list[float]] = {"dense_join": [], "hybrid_join": [], "brute_force": []}
    loads: dict[str, list[float]] = {"dense_join": [], "hybrid_join": []}
    ref = check = None
    for rep in range(args.repeats):
        for name, sparse in (("dense_join", False), ("hybrid_join", True)):
            st = run_join(lpath, rpath, args.k, sparse, args.batch_size, root / f"out-{name}")
            times[name].append(st["join_s"])
            loads[name].append(st["load_s"])
            print(f"[{rep}] {name}: load {st['load_s']:.1f} s, join {st['join_s']:.2f} s", flush=True)
            if sparse and check is None:
                check = pq.read_table(root / f"out-{name}").to_pandas()
        s, ref = brute_force(L, R, Ls, Rs, args.k)
        times["brute_force"].append(s)
        print(f"[{rep}] brute force (NumPy GEMM + SciPy sparse, in process): {s:.2f} s", flush=True)
    ray.shutdown()

    ours = check.groupby("left_id")["right_id"].apply(set).to_dict()
    agree = float(np.mean([len(ours.get(lids[i], set()) & {rids[j] for j in ref[i]}) / args.k
                           for i in range(args.left)]))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "hybrid (dense + sparse) k-NN join, exact, ip",
        "machine": machine_info(),
        "right_rows": args.right, "left_rows": args.left, "dim": args.dim, "nnz": args.nnz, "vocab": args.vocab,
        "k": args.k, "batch_size": args.batch_size, "repeats": args.repeats, "partitions": 2, "workers": 2,
        "median_s": {k: round(v, 6) for k, v in med.items()},
        "runs_s": {k: [round(x, 6) for x in v] for k, v in times.items()},
        "partition_load_s": {k: [round(x, 2) for x in v] for k, v in loads.items()},
        "left_rows_per_s": {k: round(args.left / v, 1) for k, v in med.items()},
        "hybrid_over_dense_join": round(med["hybrid_join"] / med["dense_join"], 3),
        "hybrid_join_over_brute_force": round(med["hybrid_join"] / med["brute_force"], 3),
        "agreement_with_brute_force_ids": round(agree, 5),
        "load_average_1_5_15_min": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
        "command": "RAY_AUTH_MODE=disabled .venv/bin/python bench/bench_join_sparse.py " + " ".join(sys.argv[1:]),
    }
    out = Path(args.out) if args.out else result_path("join-sparse", result["machine"])
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("median_s", "left_rows_per_s", "hybrid_over_dense_join",
                                             "hybrid_join_over_brute_force", "agreement_with_brute_force_ids")},
                     indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
