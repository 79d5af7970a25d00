"""Backup and restore rates, incremental backups, writes during a backup, and rehydration from a storage URI.

    .venv/bin/python bench/bench_backup.py [--n 1000000] [--dim 384] [--repeats 3] [--s3-n 100000]

On one collection of ``--n`` x ``--dim`` float32 vectors (one shard, checkpointed):

- full backup to a fresh ``file://`` location, and its rate (MB/s of collection bytes);
- restore of it to a new directory (every byte checked against its SHA-256), then ``Collection.open``
  of the copy: together, what rehydrating the shard from the storage URI costs (goal: at most 10 s for
  1M x 384; Pinecone's 10-20 s is the anchor);
- an incremental backup after 1% more rows and a checkpoint: the bytes it copied and its time;
- a backup while a writer upserts batches of 100 in a loop: the writes' latency during the backup
  against without one, and how long the backup held the write lock (``writes_paused_s``);
- with ``--s3-n`` > 0, the same full backup and restore of an ``--s3-n``-row collection through a
  real S3 protocol server on loopback (moto's server mode; it keeps objects in memory, so it measures
  the client path and the protocol, not a cloud's bandwidth).

Medians of ``--repeats`` runs. Writes bench/results/backup-<cpuN or GPU name>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info, result_path  # noqa: E402

import gpusearch as gs  # noqa: E402


def build(path: Path, n: int, dim: int, batch: int = 50_000) -> None:
    if (path / "collection.json").exists():
        return
    rng = np.random.default_rng(0)
    col = gs.Collection.create(path, dim=dim, metric="cosine", shards=1, device="cpu", fsync=False)
    t = time.perf_counter()
    for lo in range(0, n, batch):
        hi = min(lo + batch, n)
        col.upsert([f"v{i}" for i in range(lo, hi)], rng.standard_normal((hi - lo, dim), dtype=np.float32),
                   [{"n": i} for i in range(lo, hi)])
    col.close()
    print(f"built {n} x {dim} in {time.perf_counter() - t:.1f} s at {path}", flush=True)


def _mb_s(nbytes: int, seconds: float) -> float:
    return round(nbytes / 1e6 / seconds, 1) if seconds > 0 else float("inf")


def full_and_restore(col, uri_of, work: Path, repeats: int, label: str) -> dict:
    runs = []
    for r in range(repeats):
        uri = uri_of(r)
        t = time.perf_counter()
        info = col.backup(uri)
        backup_s = time.perf_counter() - t
        dest = work / f"restored-{label}-{r}"
        shutil.rmtree(dest, ignore_errors=True)
        t = time.perf_counter()
        gs.restore(uri, dest)
        restore_s = time.perf_counter() - t
        t = time.perf_counter()
        back = gs.Collection.open(dest, device="cpu")
        open_s = time.perf_counter() - t
        t = time.perf_counter()
        back.search(np.ones(col.dim, dtype=np.float32), k=10)
        query_s = time.perf_counter() - t
        assert len(back) == len(col), (len(back), len(col))
        back.close()
        shutil.rmtree(dest, ignore_errors=True)
        runs.append({"bytes": info["bytes"], "backup_s": round(backup_s, 3), "restore_s": round(restore_s, 3),
                     "open_s": round(open_s, 3), "first_query_s": round(query_s, 4),
                     "rehydrate_s": round(restore_s + open_s + query_s, 3),
                     "writes_paused_s": info["writes_paused_s"]})
        print(f"  {label} run {r}: backup {backup_s:.2f} s, restore {restore_s:.2f} s, open {open_s:.2f} s",
              flush=True)
    med = {k: round(statistics.median(x[k] for x in runs), 4) for k in runs[0] if k != "bytes"}
    nbytes = runs[0]["bytes"]
    med.update(bytes=nbytes, backup_mb_s=_mb_s(nbytes, med["backup_s"]), restore_mb_s=_mb_s(nbytes, med["restore_s"]),
               runs=runs)
    return med


def incremental(col, uri: str, n_new: int, repeats: int) -> dict:
    rng = np.random.default_rng(1)
    col.backup(uri)  # the base
    runs = []
    for r in range(repeats):
        ids = [f"inc{r}-{i}" for i in range(n_new)]
        col.upsert(ids, rng.standard_normal((n_new, col.dim), dtype=np.float32))
        col.checkpoint()
        t = time.perf_counter()
        info = col.backup(uri)
        runs.append({"seconds": round(time.perf_counter() - t, 3), "bytes": info["bytes"],
                     "uploaded_bytes": info["uploaded_bytes"]})
        col.delete(ids)  # back to the base's size for the next run
        col.checkpoint()
    return {"new_rows": n_new, "seconds": statistics.median(x["seconds"] for x in runs),
            "uploaded_bytes": int(statistics.median(x["uploaded_bytes"] for x in runs)),
            "bytes": runs[-1]["bytes"], "runs": runs}


def writes_during_backup(col, uri: str) -> dict:
    """Write latency (batches of 100) with no backup, then while one full backup runs."""
    rng = np.random.default_rng(2)
    vecs = rng.standard_normal((100, col.dim), dtype=np.float32)

    def write_for(stop: threading.Event, out: list, tag: str) -> None:
        i = 0
        while not stop.is_set():
            t = time.perf_counter()
            col.upsert([f"{tag}{i}-{j}" for j in range(100)], vecs)
            out.append(time.perf_counter() - t)
            i += 1

    quiet: list = []
    stop = threading.Event()
    th = threading.Thread(target=write_for, args=(stop, quiet, "q"))
    th.start()
    time.sleep(3.0)
    stop.set()
    th.join()
    during: list = []
    stop = threading.Event()
    th = threading.Thread(target=write_for, args=(stop, during, "d"))
    th.start()
    t = time.perf_counter()
    info = col.backup(uri)
    backup_s = time.perf_counter() - t
    stop.set()
    th.join()
    ms = lambda xs, q: round(float(np.percentile(np.array(xs) * 1000, q)), 2)  # noqa: E731
    return {"batch": 100, "writes_without_backup": len(quiet), "writes_during_backup": len(during),
            "p50_ms_without": ms(quiet, 50), "p99_ms_without": ms(quiet, 99), "max_ms_without": ms(quiet, 100),
            "p50_ms_during": ms(during, 50), "p99_ms_during": ms(during, 99), "max_ms_during": ms(during, 100),
            "backup_s": round(backup_s, 3), "writes_paused_s": info["writes_paused_s"],
            "records_in_backup": info["records"]}



def s3_server():
    from server_proc import start_s3_server

    return start_s3_server(Path(tempfile.mkdtemp(prefix="gs-moto-")) / "moto.log")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--s3-n", type=int, default=100_000, help="rows of the S3 run (0: skip it)")
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "gs-backup-bench"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"src-{args.n}x{args.dim}"
    build(src, args.n, args.dim)
    res = {"benchmark": "backup", "n": args.n, "dim": args.dim, "repeats": args.repeats,
           "machine": machine_info(), "date": time.strftime("%Y-%m-%d"), "rehydrate_goal_s": 10.0,
           "loadavg_1min_before": os.getloadavg()[0],
           "command": "bench/bench_backup.py " + " ".join(sys.argv[1:])}
    col = gs.Collection.open(src, device="cpu", fsync=False)
    try:
        targets = work / "targets"
        shutil.rmtree(targets, ignore_errors=True)
        print(f"full backup and restore, file:// ({args.n} x {args.dim}):", flush=True)
        res["file"] = full_and_restore(col, lambda r: f"file://{targets}/full-{r}", work, args.repeats, "file")
        res["file"]["rehydrate_goal_met"] = res["file"]["rehydrate_s"] <= 10.0
        shutil.rmtree(targets, ignore_errors=True)
        print("incremental (1% new rows):", flush=True)
        res["incremental"] = incremental(col, f"file://{targets}/inc", max(1, args.n // 100), args.repeats)
        shutil.rmtree(targets, ignore_errors=True)
        print("writes during a backup:", flush=True)
        res["writes"] = writes_during_backup(col, f"file://{targets}/w")
        print(f"  {res['writes']}", flush=True)
        shutil.rmtree(targets, ignore_errors=True)
    finally:
        col.close()
        shutil.rmtree(src, ignore_errors=True)  # the writes above changed it: the next run builds afresh
    if args.s3_n > 0:
        small = work / f"src-s3-{args.s3_n}x{args.dim}"
        shutil.rmtree(small, ignore_errors=True)
        build(small, args.s3_n, args.dim)
        proc, url = s3_server()
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_EC2_METADATA_DISABLED="true")
        try:
            import pyarrow.fs as pafs

            q = f"endpoint_override={url}&region=us-east-1"
            fs, _ = pafs.FileSystem.from_uri(f"s3://bench?{q}&allow_bucket_creation=true")
            fs.create_dir("bench")
            col = gs.Collection.open(small, device="cpu", fsync=False)
            try:
                print(f"full backup and restore, s3:// on moto ({args.s3_n} x {args.dim}):", flush=True)
                res["s3"] = full_and_restore(col, lambda r: f"s3://bench/full-{r}?{q}", work, args.repeats, "s3")
                res["s3"]["n"] = args.s3_n
            finally:
                col.close()
        finally:
            proc.terminate()
            proc.wait(30)
            shutil.rmtree(small, ignore_errors=True)
    res["loadavg_1min_after"] = os.getloadavg()[0]
    out = Path(args.out) if args.out else result_path("backup", res["machine"])
    out.write_text(json.dumps(res, indent=1) + "\n")
    f = res["file"]
    print(f"file://: backup {f['backup_s']:.2f} s ({f['backup_mb_s']} MB/s), restore {f['restore_s']:.2f} s "
          f"({f['restore_mb_s']} MB/s), rehydrate (restore + open + first query) {f['rehydrate_s']:.2f} s "
          f"(goal 10 s); incremental {res['incremental']['uploaded_bytes'] / 1e6:.1f} MB in "
          f"{res['incremental']['seconds']:.2f} s; writes p50 {res['writes']['p50_ms_without']} -> "
          f"{res['writes']['p50_ms_during']} ms during a backup, lock held {res['writes']['writes_paused_s']} s")
    if "s3" in res:
        s = res["s3"]
        print(f"s3:// (moto, {args.s3_n} rows): backup {s['backup_mb_s']} MB/s, restore {s['restore_mb_s']} MB/s")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
