"""What durability at a storage URI costs (gpusearch.durable): the added write latency of acknowledging
only once a write is also in an object at the URI, log shipping throughput, and a Writer's takeover.

    .venv/bin/python bench/bench_durable.py [--n 200000] [--dim 384] [--writes 200] [--repeats 3] [--s3] [--ray]

- One-record upserts into a 2-shard collection (fsync on) with no storage URI, with a ``file://``
  location, and (``--s3``) through a real S3 protocol server on loopback (moto's server mode, objects
  in memory: the client path and the protocol, not a cloud's latency): p50 and p99 per write, and what
  the durability rule adds to the p50. Passes interleaved, ``--repeats`` of them, medians.
- Batches of 1,000 x ``--dim`` records: records/s and MB/s shipped, against no storage URI.
- With ``--ray``: the lease check a served Writer makes after every shipped write (a call to the
  lease actor on the head node, local Ray here): its p50.
- Takeover: a collection of ``--n`` x ``--dim`` written in durable mode (90% folded into a snapshot at
  the URI, the last 10% only in the log), then a new Writer's ``take_over``: seconds to rebuild it
  from the URI alone, and how many writes it replayed from the log.

Writes bench/results/durable-<cpuN or GPU name>.json.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backup import s3_server  # noqa: E402
from machine import machine_info, result_path  # noqa: E402

from gpusearch.catalog import Catalog  # noqa: E402
from gpusearch.durable import DurableStore, LocalLease  # noqa: E402


def writer(work: Path, uri: str | None, lease, tag: str, **kw):
    d = work / f"writer-{tag}"
    shutil.rmtree(d, ignore_errors=True)
    store = None
    if uri is not None:
        store = DurableStore(uri, lease, shards=2, **kw)
        store.take_over(d)
    return store, Catalog(d, shards=2, device="cpu", fsync=True, durable=store)


def pct(xs, q):
    return round(float(np.percentile(xs, q)) * 1e3, 3)


def write_latency(work: Path, uris: dict, dim: int, writes: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    cats = {m: writer(work, u, LocalLease(), f"lat-{m}")[1] for m, u in uris.items()}
    samples: dict[str, list] = {m: [] for m in uris}
    runs: dict[str, list] = {m: [] for m in uris}
    for r in range(repeats):
        for m, cat in cats.items():
            cat.upsert("lat", ["warm"], rng.standard_normal((1, dim), dtype=np.float32))
            xs = []
            for i in range(writes):
                v = rng.standard_normal((1, dim), dtype=np.float32)
                t = time.perf_counter()
                cat.upsert("lat", [f"{r}-{i}"], v)
                xs.append(time.perf_counter() - t)
            samples[m] += xs
            runs[m].append(statistics.median(xs))
    for cat in cats.values():
        cat.close()
    out = {m: {"p50_ms": round(statistics.median(runs[m]) * 1e3, 3), "p99_ms": pct(samples[m], 99),
               "writes": len(samples[m])} for m in uris}
    for m in uris:
        if m != "none":
            out[m]["added_p50_ms"] = round(out[m]["p50_ms"] - out["none"]["p50_ms"], 3)
    return out


def shipping(work: Path, uris: dict, dim: int, batches: int, repeats: int) -> dict:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((1000, dim), dtype=np.float32)
    out = {}
    for m, uri in uris.items():
        rates, mbs = [], []
        for r in range(repeats):
            store, cat = writer(work, uri, LocalLease(), f"ship-{m}-{r}", background_snapshots=False)
            t = time.perf_counter()
            for b in range(batches):
                cat.upsert("ship", [f"{b}-{i}" for i in range(len(X))], X)
            secs = time.perf_counter() - t
            rates.append(batches * len(X) / secs)
            if store is not None:
                mbs.append(store.stats()["shipped_bytes"] / 1e6 / secs)
            cat.close()
        out[m] = {"records_per_s": round(statistics.median(rates)), "batch_rows": len(X), "batches": batches}
        if mbs:
            out[m]["shipped_mb_s"] = round(statistics.median(mbs), 1)
    for m in uris:
        if m != "none":
            out[m]["vs_none"] = round(out[m]["records_per_s"] / out["none"]["records_per_s"], 3)
    return out


def lease_check_ms(calls: int = 300) -> float:
    import ray

    from gpusearch.durable import RayLease

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from gpusearch._ray import local_ray_kwargs

    ray.init(include_dashboard=False, num_cpus=1, log_to_driver=False, **local_ray_kwargs(),
             _temp_dir=tempfile.mkdtemp(prefix="gsray-durable-"))
    try:
        lease = RayLease(tempfile.mkdtemp(prefix="gs-lease-"))
        lease.acquire()
        xs = []
        for _ in range(calls):
            t = time.perf_counter()
            lease.current()
            xs.append(time.perf_counter() - t)
        return round(statistics.median(xs[20:]) * 1e3, 3)
    finally:
        ray.shutdown()


def takeover(work: Path, uri: str, n: int, dim: int) -> dict:
    rng = np.random.default_rng(2)
    batch = max(1, min(10_000, n // 20))
    lease = LocalLease()
    store, cat = writer(work, uri, lease, "src", background_snapshots=False)
    t = time.perf_counter()
    snap_at = int(n * 0.9)
    for lo in range(0, n, batch):
        hi = min(lo + batch, n)
        cat.upsert("big", [f"v{i}" for i in range(lo, hi)], rng.standard_normal((hi - lo, dim), dtype=np.float32))
        if lo < snap_at <= hi:
            cat.get("big").checkpoint()
            store.snapshot("big")
    write_s = time.perf_counter() - t
    cat.close()
    new = DurableStore(uri, lease, shards=2)
    d = work / "writer-new"
    shutil.rmtree(d, ignore_errors=True)
    t = time.perf_counter()
    report = new.take_over(d)
    secs = time.perf_counter() - t
    cat2 = Catalog(d, shards=2, device="cpu", fsync=True, durable=new)
    assert len(cat2.get("big")) == n
    cat2.close()
    rec = report["collections"]["big"]
    return {"n": n, "dim": dim, "write_s": round(write_s, 2), "takeover_s": round(secs, 2),
            "snapshot_sequence": rec["snapshot_sequence"], "log_writes_replayed": rec["log_writes"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--writes", type=int, default=200)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--s3", action="store_true", help="also through moto's S3 server on loopback")
    ap.add_argument("--ray", action="store_true", help="also the lease actor's check (starts local Ray)")
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "gs-durable-bench"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work = Path(args.dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    res = {"benchmark": "durable", "dim": args.dim, "repeats": args.repeats, "machine": machine_info(),
           "date": time.strftime("%Y-%m-%d"), "loadavg_1min_before": os.getloadavg()[0],
           "command": "bench/bench_durable.py " + " ".join(sys.argv[1:])}
    uris = {"none": None, "file": f"file://{work}/bucket"}
    proc = None
    if args.s3:
        proc, url = s3_server()
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_EC2_METADATA_DISABLED="true")
        import pyarrow.fs as pafs

        q = f"endpoint_override={url}&region=us-east-1"
        fs, _ = pafs.FileSystem.from_uri(f"s3://bench?{q}&allow_bucket_creation=true")
        fs.create_dir("bench")
        uris["s3"] = f"s3://bench/durable?{q}"
    try:
        print("one-record writes:", flush=True)
        res["write_latency"] = write_latency(work, uris, args.dim, args.writes, args.repeats)
        print(f"  {res['write_latency']}", flush=True)
        print("batches of 1,000:", flush=True)
        res["shipping"] = shipping(work, uris, args.dim, args.batches, args.repeats)
        print(f"  {res['shipping']}", flush=True)
        if args.ray:
            res["lease_check_p50_ms"] = lease_check_ms()
            print(f"  lease check p50 {res['lease_check_p50_ms']} ms", flush=True)
        print(f"takeover of {args.n} x {args.dim}:", flush=True)
        res["takeover"] = takeover(work, uris["file"] + "-takeover", args.n, args.dim)
        print(f"  {res['takeover']}", flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    res["loadavg_1min_after"] = os.getloadavg()[0]
    out = Path(args.out) if args.out else result_path("durable", res["machine"])
    out.write_text(json.dumps(res, indent=1) + "\n")
    w, s = res["write_latency"], res["shipping"]
    line = (f"write p50: none {w['none']['p50_ms']} ms, file {w['file']['p50_ms']} ms "
            f"(+{w['file']['added_p50_ms']})")
    if "s3" in w:
        line += f", s3 {w['s3']['p50_ms']} ms (+{w['s3']['added_p50_ms']})"
    print(line)
    print(f"shipping: none {s['none']['records_per_s']} rec/s, file {s['file']['records_per_s']} rec/s "
          f"({s['file']['shipped_mb_s']} MB/s)" + (f", s3 {s['s3']['records_per_s']} rec/s ({s['s3']['shipped_mb_s']} MB/s)"
                                                    if "s3" in s else ""))
    t = res["takeover"]
    print(f"takeover of {t['n']} x {t['dim']}: {t['takeover_s']} s ({t['log_writes_replayed']} writes from the log)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
