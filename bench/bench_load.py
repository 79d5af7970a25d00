"""Soak test: a real `gpusearch serve` under a fixed-rate mix of reads and writes for a long time.

    .venv/bin/python bench/bench_load.py [--minutes 10] [--rate 10] [--dim 384] [--pool 20000]
        [--shards 2] [--replicas 2] [--warmup-s 60] [--out bench/results/load-soak-cpu2.json]

Starts the server as a user would (``gpusearch serve --no-demo`` through
bench/server_proc.py: its own process session, local Ray, data in a temporary
directory, API keys on), preloads ``--pool`` records, runs a
warm-up at the same rate, then the soak (bench/loadgen.py: open loop at ``--rate`` requests/s,
70% query / 15% upsert / 10% fetch / 5% delete, every answer checked, read-your-writes by
fetch). The server's whole process tree (the driver, Ray's GCS and raylet, every replica) is
sampled for resident memory every 5 s. Goals (issue 6): zero errors, p99 recorded, memory
flat: the median RSS of the soak's last minute at most 10% above that of its first minute.

Writes the JSON (every window and memory sample) and a PNG: latency p50/p99 per window and the
server's RSS over time. Stops the server (and every process it started) at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import LoadSpec, preload, run_load, tree_rss_bytes  # noqa: E402
from machine import machine_info, result_path  # noqa: E402
from server_proc import Server  # noqa: E402

KEY = "soak-rw-key"


def memory_growth(samples: list, first_s: float, last_s: float) -> dict:
    """Median RSS over the first ``first_s`` seconds and over the last ``last_s`` seconds."""
    import numpy as np

    if not samples:
        return {}
    end = samples[-1][0]
    first = [m for t, m in samples if t <= first_s]
    last = [m for t, m in samples if t >= end - last_s]
    a, b = float(np.median(first)), float(np.median(last))
    return {"first_median_mib": a / 2**20, "last_median_mib": b / 2**20, "growth": (b - a) / a,
            "max_mib": max(m for _, m in samples) / 2**20}


def plot(summary: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    tl = summary["timeline"]
    t = [w["t"] / 60 for w in tl]
    a.plot(t, [w["p50"] * 1e3 if w["p50"] is not None else float("nan") for w in tl], label="p50")
    a.plot(t, [w["p99"] * 1e3 if w["p99"] is not None else float("nan") for w in tl], label="p99")
    errs = [(w["t"] / 60, w["errors"]) for w in tl if w["errors"]]
    if errs:
        a.scatter(*zip(*errs), color="red", label="windows with errors")
    a.set_ylabel("latency (ms, from scheduled time)")
    a.set_yscale("log")
    a.legend()
    s = summary["spec"]
    a.set_title(f"gpusearch served soak: {s['rate']:g} req/s, mix {s['mix']}, {summary['errors']} errors")
    mem = summary["memory"]
    b.plot([x / 60 for x, _ in mem], [m / 2**20 for _, m in mem], label="RSS")
    mg = summary.get("memory_growth") or {}
    if mg:
        b.axhline(mg["first_median_mib"] * 1.1, color="grey", ls="--", label="first minute's median + 10%")
        b.legend()
    b.set_ylim(bottom=0)
    b.set_ylabel("server RSS (MiB, all processes)")
    b.set_xlabel("minutes into the soak")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


async def main_async(args) -> dict:
    import httpx

    work = Path(tempfile.mkdtemp(prefix="gs-soak-"))
    server = Server(work / "data", shards=args.shards, replicas=args.replicas,
                    env={"GPUSEARCH_API_KEYS": f"{KEY}:rw"}, log_path=work / "server.log")
    try:
        t0 = time.perf_counter()
        server.start()
        up = time.perf_counter() - t0
        base, proc = server.url, server.proc
        print(f"server up in {up:.1f} s (pid {proc.pid}, log {server.log_path})", flush=True)
        spec = LoadSpec(rate=args.rate, duration_s=args.warmup_s, dim=args.dim, pool=args.pool, seed=1,
                        max_in_flight=args.max_in_flight, window_s=args.window_s, namespace="soak")
        headers = {"Api-Key": KEY}
        t0 = time.perf_counter()
        async with httpx.AsyncClient() as c:
            state = await preload(c, base, spec, headers)
        print(f"preloaded {args.pool} x {args.dim} in {time.perf_counter() - t0:.1f} s", flush=True)

        def progress(done_s, r):
            if int(done_s) % 30 == 0:
                print(f"  {done_s:6.0f} s: {r.sent} answered, {r.errors} errors", flush=True)

        warm = await run_load(base, spec, api_key=KEY, state=state, progress=progress)
        print(f"warm-up: {warm.sent} requests, {warm.errors} errors", flush=True)
        spec.duration_s = args.minutes * 60
        spec.seed = 2
        soak = await run_load(base, spec, api_key=KEY, state=state, memory_pid=proc.pid, progress=progress)
        summary = soak.summary()
        summary["warmup"] = {"sent": warm.sent, "errors": warm.errors, "error_samples": warm.error_samples}
        summary["server"] = {"shards": args.shards, "replicas": args.replicas, "start_s": up,
                             "rss_at_end_mib": tree_rss_bytes(proc.pid) / 2**20}
        summary["memory_growth"] = memory_growth(soak.memory, 60, 60)
        return summary
    finally:
        server.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--rate", type=float, default=10)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--pool", type=int, default=20000)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--warmup-s", type=float, default=60)
    p.add_argument("--window-s", type=float, default=10)
    p.add_argument("--max-in-flight", type=int, default=64)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    summary = asyncio.run(main_async(args))
    summary["machine"] = machine_info()
    summary["command"] = " ".join(["bench/bench_load.py", *(argv if argv is not None else sys.argv[1:])])
    out = Path(args.out) if args.out else result_path("load-soak", summary["machine"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    print(f"wrote {out}")
    plot(summary, out.with_suffix(".png"))
    lat, mg = summary["latency_s"], summary["memory_growth"]
    print(f"{summary['sent']} requests in {summary['elapsed_s']:.0f} s ({summary['achieved_rate']:.1f}/s), "
          f"{summary['errors']} errors; latency p50 {lat['p50'] * 1e3:.1f} ms, p99 {lat['p99'] * 1e3:.1f} ms, "
          f"max {lat['max'] * 1e3:.0f} ms; memory {mg['first_median_mib']:.0f} -> {mg['last_median_mib']:.0f} MiB "
          f"({mg['growth'] * 100:+.1f}%)")
    for s in summary["error_samples"]:
        print("  error:", s)
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
