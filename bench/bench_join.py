"""Self k-NN join throughput: gpusearch.join on Ray Data against raw ``faiss.knn`` in one process.

Data: N synthetic clustered unit vectors (default 1M x 384, seed 0), written
once as Parquet under ``--data-dir``. The join is the self k-NN join of that
table (k=10, ``exclude_self``); the right side is always the whole table. A
full 1M x 1M exact self-join costs about 7.7e14 flops (2.4 h on 2 cores), so
the left side is the first ``--queries`` rows of the same table and the
result is reported as left rows per second, with the time a full self-join
would take at that rate (plus the one-off partition load).

Configurations, in one process, interleaved over ``--repeats`` rounds
(the median is reported):

- ``faiss.knn``: the whole table in this process's memory, all cores;
- ``join W=2``: 2 partitions x 1 thread, 2 join workers (the whole machine);
- ``join W=1``: 1 partition x 1 thread, 1 join worker (for the 1 -> 2 scaling);
- ``faiss.knn 1 thread``: the one-core baseline for the scaling.

Each join partition searches its share with the engine's exact search
(``ExactBackend`` over a ``VectorStore``: on the CPU a NumPy GEMM per base tile and
an exact top-k), the join workers merge with ``gpusearch.merge.merge``.
The load average before and after the run goes into the result: the machine is shared.

Run::

    RAY_AUTH_MODE=disabled .venv/bin/python bench/bench_join.py            # ~15 min on 2 cores
    RAY_AUTH_MODE=disabled .venv/bin/python bench/bench_join.py --rows 200000 --queries 2048 --repeats 1  # quick

Writes ``bench/results/join-<cpuN|gpu>.json``.
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


def make_data(root: Path, rows: int, dim: int, files: int, seed: int = 0) -> Path:
    """Clustered unit vectors (1000 centres, Gaussian spread), ids 'v0000000'...; cached by shape."""
    path = root / f"vectors-{rows}x{dim}"
    if (path / "_SUCCESS").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    bounds = np.linspace(0, rows, files + 1).astype(int)
    t0 = time.perf_counter()
    for f in range(files):
        a, b = bounds[f], bounds[f + 1]
        x = centres[rng.integers(0, 1000, b - a)] + 0.5 * rng.standard_normal((b - a, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        vec = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim)
        ids = pa.array([f"v{i:07d}" for i in range(a, b)])
        pq.write_table(pa.table({"id": ids, "vector": vec}), path / f"part-{f:03d}.parquet")
    (path / "_SUCCESS").write_text("")
    print(f"wrote {rows} x {dim} to {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def load_matrix(path: Path) -> tuple[list, np.ndarray]:
    t = pq.read_table(path)
    ids = t.column("id").to_pylist()
    vec = t.column("vector").combine_chunks()
    return ids, np.asarray(vec.flatten().to_numpy(), np.float32).reshape(len(ids), -1)


def left_slice(path: Path, queries: int, root: Path) -> Path:
    out = root / f"left-{path.name}-{queries}"
    if not (out / "part-000.parquet").exists():
        out.mkdir(parents=True, exist_ok=True)
        t = pq.read_table(path).slice(0, queries)
        pq.write_table(t, out / "part-000.parquet")
    return out


def run_faiss(X: np.ndarray, Q: np.ndarray, k: int, threads: int) -> tuple[float, np.ndarray]:
    import faiss

    faiss.omp_set_num_threads(threads)
    t0 = time.perf_counter()
    _, I = faiss.knn(Q, X, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    return time.perf_counter() - t0, I


def run_join(left: Path, right: Path, k: int, workers: int, threads: int, batch: int, out: Path) -> dict:
    from gpusearch import join

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    join.knn_join(str(left), str(right), k=k, exclude_self=True, workers=workers, partitions=workers,
                  threads=threads, batch_size=batch, output=str(out))
    total = time.perf_counter() - t0
    stats = join.read_stats(out)
    stats["total_s"] = round(total, 3)
    return stats


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=6144)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "gs-join-bench"))
    p.add_argument("--out", default=None)
    args = p.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("GPUSEARCH_PROGRESS", "0")
    load_before = [round(x, 2) for x in os.getloadavg()]
    root = Path(args.data_dir)
    data = make_data(root, args.rows, args.dim, files=max(2, args.rows // 100_000))
    left = left_slice(data, args.queries, root)
    ids, X = load_matrix(data)
    Q = X[: args.queries].copy()
    cores = os.cpu_count() or 1

    import ray

    from gpusearch._ray import local_ray_kwargs

    ray.init(include_dashboard=False, num_cpus=max(4, cores), log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="gsray-bench-join-"), **local_ray_kwargs())
    ray.data.DataContext.get_current().enable_progress_bars = False

    times: dict[str, list[float]] = {"faiss": [], "faiss_1t": [], "join_w2": [], "join_w1": []}
    loads: dict[str, list[float]] = {"join_w2": [], "join_w1": []}
    ref_I = None
    check = None
    for rep in range(args.repeats):
        s, I = run_faiss(X, Q, args.k, cores)
        times["faiss"].append(s)
        ref_I = I
        print(f"[{rep}] faiss.knn {cores} threads: {s:.1f} s ({args.queries / s:.0f} rows/s)", flush=True)
        for name, w in (("join_w2", 2), ("join_w1", 1)):
            st = run_join(left, data, args.k, w, 1, args.batch_size, root / f"out-{name}")
            times[name].append(st["join_s"])
            loads[name].append(st["load_s"])
            print(f"[{rep}] {name}: load {st['load_s']:.1f} s, join {st['join_s']:.1f} s "
                  f"({args.queries / st['join_s']:.0f} rows/s), total {st['total_s']:.1f} s", flush=True)
            if name == "join_w2" and check is None:
                check = pq.read_table(root / f"out-{name}").to_pandas()
        s, _ = run_faiss(X, Q, args.k, 1)
        times["faiss_1t"].append(s)
        print(f"[{rep}] faiss.knn 1 thread: {s:.1f} s ({args.queries / s:.0f} rows/s)", flush=True)

    # Agreement with faiss (its own row excluded): the share of faiss's 10 ids our join returned.
    id_arr = np.array(ids, dtype=object)
    ours = check.groupby("left_id")["right_id"].apply(set).to_dict()
    agree = []
    for qi in range(args.queries):
        row = [j for j in ref_I[qi] if j != qi][: args.k]
        agree.append(len(ours.get(ids[qi], set()) & set(id_arr[row])) / args.k)
    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: args.queries / v for k, v in med.items()}
    full_h = {k: (args.rows / rate[k] + (statistics.median(loads[k]) if k in loads else 0)) / 3600 for k in med}
    result = {
        "benchmark": "self k-NN join, exact, cosine",
        "machine": machine_info(),
        "rows": args.rows, "dim": args.dim, "k": args.k, "left_rows_timed": args.queries,
        "batch_size": args.batch_size, "repeats": args.repeats,
        "median_s": {k: round(v, 2) for k, v in med.items()},
        "runs_s": {k: [round(x, 2) for x in v] for k, v in times.items()},
        "partition_load_s": {k: [round(x, 2) for x in v] for k, v in loads.items()},
        "rows_per_s": {k: round(v, 1) for k, v in rate.items()},
        "full_self_join_hours_at_this_rate": {k: round(v, 2) for k, v in full_h.items()},
        "ratio_join_w2_to_faiss": round(rate["join_w2"] / rate["faiss"], 3),
        "scaling_w1_to_w2": round(rate["join_w2"] / rate["join_w1"], 3),
        "ratio_join_w1_to_faiss_1t": round(rate["join_w1"] / rate["faiss_1t"], 3),
        "agreement_with_faiss_ids": round(float(np.mean(agree)), 5),
        "load_average_1_5_15_min": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
        "command": "RAY_AUTH_MODE=disabled .venv/bin/python bench/bench_join.py " + " ".join(sys.argv[1:]),
    }
    out = Path(args.out) if args.out else result_path("join", result["machine"])
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("median_s", "rows_per_s", "ratio_join_w2_to_faiss",
                                             "scaling_w1_to_w2", "ratio_join_w1_to_faiss_1t",
                                             "agreement_with_faiss_ids")}, indent=1))
    print(f"wrote {out}")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
