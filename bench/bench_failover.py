"""Failover through Serve: from kill -9 of a shard replica's process to the first whole query answer.

A real ``gpusearch serve`` (subprocess, local Ray, 1 shard x 1 replica, no encoder) serves one
collection of ``--n`` x ``--dim`` vectors. Each round kill -9s the shard replica's OS process and
sends queries over HTTP one after another until one answers 200 and not partial; the time from the
kill to that answer is the failover time. It includes everything a real failure costs: Serve's
controller noticing the death, Ray starting a new worker process, the replica's imports, opening
the shard (snapshot load + WAL replay, see bench_rehydrate.py), Serve's health check and routing,
and the query. The moment the new replica's process appears is recorded too. Median over
``--kills`` rounds.

The collection is written in-process with :class:`gpusearch.catalog.Catalog` into the server's data
directory before the server starts (1M x 384 through HTTP would take far longer than the test);
the server then opens it as it would after any restart. Data is kept in ``--dir`` between runs.

    .venv/bin/python bench/bench_failover.py [--n 1000000] [--dim 384] [--kills 3]

Writes bench/results/failover-<cpuN or GPU name>.json (``--n`` below 1M: failover-<n>-...).
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import machine_info, result_path  # noqa: E402
from server_proc import Server  # noqa: E402

KEY = "failover-bench-key"
NAME = "bench"


def build(data_dir: Path, n: int, dim: int, batch: int) -> None:
    from gpusearch.catalog import Catalog

    marker = data_dir / f"built-{n}x{dim}"
    if marker.exists():
        return
    if data_dir.exists() and any(data_dir.iterdir()):
        raise SystemExit(f"{data_dir} holds something other than a finished {n} x {dim} build; remove it")
    rng = np.random.default_rng(0)
    cat = Catalog(data_dir, shards=1, metric="cosine", index="Flat", device="cpu")
    cat.create(NAME, dim=dim)
    t = time.perf_counter()
    for lo in range(0, n, batch):
        hi = min(lo + batch, n)
        cat.upsert(NAME, [f"v{i}" for i in range(lo, hi)], rng.standard_normal((hi - lo, dim), dtype=np.float32))
    cat.close()  # checkpoints: the shard opens from its snapshot
    marker.write_text("")
    print(f"built {n} x {dim} in {time.perf_counter() - t:.1f} s at {data_dir}", flush=True)


def one_kill(server: Server, query: dict, limit_s: float) -> dict:
    import httpx

    (victim,) = server.replica_pids("Shard0")
    seen_new: list[float] = []
    stop = threading.Event()

    def watch():  # when the replacement's process shows up
        while not stop.is_set():
            if [p for p in server.replica_pids("Shard0") if p != victim]:
                seen_new.append(time.monotonic())
                return
            time.sleep(0.1)

    w = threading.Thread(target=watch, daemon=True)
    t0 = time.monotonic()
    os.kill(victim, 9)
    w.start()
    answers = {"partial": 0, "errors": 0}
    try:
        with httpx.Client(timeout=120) as c:
            while True:
                if time.monotonic() - t0 > limit_s:
                    raise TimeoutError(f"not serving again within {limit_s} s of the kill")
                try:
                    r = c.post(server.url + "/query", json=query, headers={"Api-Key": KEY})
                except httpx.HTTPError:
                    answers["errors"] += 1
                    continue
                if r.status_code == 200 and not r.json()["partial"]:
                    t1 = time.monotonic()
                    assert len(r.json()["matches"]) == 10, r.text[:300]
                    break
                if r.status_code == 200:
                    answers["partial"] += 1
                else:
                    answers["errors"] += 1
                    time.sleep(0.05)
    finally:
        stop.set()
        w.join(timeout=5)
    return {"serving_again_s": round(t1 - t0, 3),
            "new_process_seen_s": round(seen_new[0] - t0, 3) if seen_new else None,
            "non_200_answers_meanwhile": answers["errors"], "partial_answers_meanwhile": answers["partial"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--limit", type=float, default=300.0, help="give up on a round after this many seconds")
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "gs-failover"))
    ap.add_argument("--out", default=None, help="result file (default bench/results/failover-...json)")
    args = ap.parse_args()
    if args.kills < 1 or args.n < 1 or args.dim < 1:
        raise SystemExit("--n, --dim and --kills must be at least 1")
    root = Path(args.dir) / f"{args.n}x{args.dim}"
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    build(data, args.n, args.dim, args.batch)
    load_before = os.getloadavg()
    # A long shard timeout: a query sent while the shard is down waits for the replacement
    # (Serve holds it until a replica is ready) rather than coming back at once.
    env = {"GPUSEARCH_API_KEYS": f"{KEY}:rw", "GPUSEARCH_SHARD_TIMEOUT_S": "60", "GPUSEARCH_METRIC": "cosine"}
    q = np.random.default_rng(1).standard_normal(args.dim).astype(np.float32)
    query = {"namespace": NAME, "vector": q.tolist(), "topK": 10}
    server = Server(data, shards=1, replicas=1, env=env, log_path=root / "server.log")
    rounds = []
    try:
        t = time.monotonic()
        server.start(timeout=args.limit)
        server.wait_serving(NAME, args.limit, dim=args.dim)
        start_s = time.monotonic() - t
        print(f"server up and serving {args.n} x {args.dim} in {start_s:.1f} s", flush=True)
        for k in range(args.kills):
            time.sleep(2.0)  # let the last replacement settle
            r = one_kill(server, query, args.limit)
            rounds.append(r)
            print(f"  kill {k + 1}: serving again {r['serving_again_s']:.2f} s after kill -9 "
                  f"(new replica process seen at {r['new_process_seen_s']} s)", flush=True)
    finally:
        for f in Path(server.ray_dir).glob("session_*/logs/serve/controller_*.log"):  # the timeline of each failover
            shutil.copy(f, root / f.name)
        server.stop()
    med = statistics.median(r["serving_again_s"] for r in rounds)
    res = {"benchmark": "failover through Serve: kill -9 of the only shard replica -> first non-partial answer",
           "n": args.n, "dim": args.dim, "shards": 1, "replicas": 1, "index": "Flat", "metric": "cosine",
           "median_serving_again_s": med, "goal_s": 10.0, "rounds": rounds, "server_start_s": round(start_s, 1),
           "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
           "data": "written in-process with gpusearch.catalog.Catalog before the server started",
           "machine": machine_info(), "date": time.strftime("%Y-%m-%d"),
           "command": "bench/bench_failover.py " + " ".join(sys.argv[1:])}
    print(f"median: serving again {med:.2f} s after kill -9 (goal {res['goal_s']} s)")
    out = Path(args.out) if args.out else result_path("failover" if args.n == 1_000_000 else f"failover-{args.n}",
                                                      res["machine"])
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
