"""Rehydration: how long a restarted shard replica of 1M x 384 takes to answer its first query.

A served shard replica that dies is restarted in a new process, which opens its
shard read-only (``gpusearch.replica.ShardFollower.open``: load the snapshot,
replay the WAL tail) before Serve routes it anything. This times exactly that
in a fresh Python process, as a restart would: interpreter start and imports,
the open, and the first exact top-10 query, for a one-shard collection of
``--n`` x ``--dim`` vectors, with an empty WAL and with a WAL tail of ``--tail``
records. "cold" runs first drop the OS page cache (when the machine allows
it), so the snapshot is read from disk; "warm" runs find it in memory.

    .venv/bin/python bench/bench_rehydrate.py [--n 1000000] [--tail 50000] [--repeats 3]

What it does not include: Ray starting the replica's actor process and Serve
marking the replica healthy (seconds on this machine; see the serve tests).
Writes bench/results/rehydrate-<cpuN or GPU name>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info, result_path  # noqa: E402

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from gpusearch.replica import ShardFollower
t1 = time.perf_counter()
f = ShardFollower.open(sys.argv[1], 0, device="cpu")
t2 = time.perf_counter()
q = np.random.default_rng(1).standard_normal((1, f.dim)).astype("float32")
hits = f.search(q, 10)
t3 = time.perf_counter()
print(json.dumps({"imports_s": t1 - t0, "open_s": t2 - t1, "first_query_s": t3 - t2, "rows": len(f),
                  "hits": len(hits.ids[0])}))
"""


def drop_page_cache() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def run_child(path: Path, cold: bool) -> dict:
    dropped = drop_page_cache() if cold else False
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_total_s"] = time.perf_counter() - t
    res["page_cache_dropped"] = dropped
    return res


def build(path: Path, n: int, dim: int, batch: int) -> None:
    import gpusearch as gs

    if (path / "collection.json").exists():
        return
    rng = np.random.default_rng(0)
    col = gs.Collection.create(path, dim=dim, metric="cosine", shards=1, device="cpu")
    t = time.perf_counter()
    for lo in range(0, n, batch):
        hi = min(lo + batch, n)
        col.upsert([f"v{i}" for i in range(lo, hi)], rng.standard_normal((hi - lo, dim), dtype=np.float32))
    col.close()
    print(f"built {n} x {dim} in {time.perf_counter() - t:.1f} s at {path}", flush=True)


def add_tail(path: Path, tail: int, dim: int, batch: int) -> None:
    """Upsert ``tail`` new records and leave them in the WAL, as a writer that crashed would."""
    import gpusearch as gs

    rng = np.random.default_rng(2)
    col = gs.Collection.open(path, device="cpu")
    for lo in range(0, tail, batch):
        hi = min(lo + batch, tail)
        col.upsert([f"t{i}" for i in range(lo, hi)], rng.standard_normal((hi - lo, dim), dtype=np.float32))
    for s in col._shards:
        s.close()
    col._commits.close()


def measure(path: Path, repeats: int) -> dict:
    out = {}
    for mode in ("cold", "warm"):
        runs = []
        if mode == "warm":
            run_child(path, cold=False)  # fill the page cache
        for _ in range(repeats):
            runs.append(run_child(path, cold=(mode == "cold")))
        keys = ("imports_s", "open_s", "first_query_s", "process_total_s")
        out[mode] = {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}
        out[mode]["runs"] = runs
        out[mode]["page_cache_dropped"] = all(r["page_cache_dropped"] for r in runs) if mode == "cold" else False
        print(f"  {mode}: " + ", ".join(f"{k} {out[mode][k]:.2f}" for k in keys), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--tail", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "gs-rehydrate"))
    args = ap.parse_args()
    path = Path(args.dir) / f"shard-{args.n}x{args.dim}"
    build(path, args.n, args.dim, args.batch)
    res = {"benchmark": "rehydrate one shard replica (ShardFollower.open in a fresh process)", "n": args.n,
           "dim": args.dim, "machine": machine_info(), "date": time.strftime("%Y-%m-%d"),
           "goal_s": 10.0, "command": "bench/bench_rehydrate.py " + " ".join(sys.argv[1:])}
    print("empty WAL:", flush=True)
    res["empty_wal"] = measure(path, args.repeats)
    add_tail(path, args.tail, args.dim, args.batch)
    print(f"WAL tail of {args.tail} records:", flush=True)
    res["wal_tail_records"] = args.tail
    res["with_wal_tail"] = measure(path, args.repeats)
    out = result_path("rehydrate", res["machine"])
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
