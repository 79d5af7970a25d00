"""Ingest, checkpoint and reopen times of a collection on this machine's disk.

    .venv/bin/python bench/bench_storage.py [--n 1000000] [--dim 384] [--shards 4] [--batch 10000]

Writes bench/results/storage-<cpuN or GPU name>.json. Upserts are fsynced (the
durability guarantee is on); "open" is loading every shard's snapshot (memory-
mapped Arrow segments copied into the vector store, id maps rebuilt) with an
empty WAL, then with a WAL tail of ``--tail`` records to replay.
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

import gpusearch as gs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--tail", type=int, default=50_000)
    ap.add_argument("--dir", default=None, help="where to write the collection (default: a temp dir)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    res = {"benchmark": "storage", "n": args.n, "dim": args.dim, "shards": args.shards, "batch": args.batch,
           "machine": machine_info(), "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "c"
        col = gs.Collection.create(path, dim=args.dim, metric="ip", shards=args.shards, device="cpu")
        t = time.perf_counter()
        for lo in range(0, args.n, args.batch):
            hi = min(lo + args.batch, args.n)
            x = rng.standard_normal((hi - lo, args.dim), dtype=np.float32)
            col.upsert(np.arange(lo, hi), x, metadata=[{"g": int(i % 10)} for i in range(lo, hi)])
        res["ingest_s"] = time.perf_counter() - t
        res["ingest_vectors_per_s"] = args.n / res["ingest_s"]
        t = time.perf_counter()
        col.close()
        res["checkpoint_s"] = time.perf_counter() - t
        res["disk_bytes"] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        t = time.perf_counter()
        col = gs.Collection.open(path, device="cpu")
        res["open_s"] = time.perf_counter() - t
        assert len(col) == args.n
        tail = min(args.tail, args.n)
        for lo in range(0, tail, args.batch):
            hi = min(lo + args.batch, tail)
            col.upsert(np.arange(lo, hi), rng.standard_normal((hi - lo, args.dim), dtype=np.float32))
        # leave the tail in the WAL, as a crash would: release the files without a checkpoint
        for s in col._shards:
            s.close()
        col._commits.close()
        t = time.perf_counter()
        col = gs.Collection.open(path, device="cpu")
        res["open_with_wal_tail_s"] = time.perf_counter() - t
        res["wal_tail_records"] = tail
        col.close()
    for key in ("ingest_vectors_per_s", "checkpoint_s", "open_s", "open_with_wal_tail_s", "disk_bytes"):
        print(f"{key:24s} {res[key]:.3f}" if isinstance(res[key], float) else f"{key:24s} {res[key]}")
    out = result_path("storage", res["machine"])
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
