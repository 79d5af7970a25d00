"""Served (Ray Serve: HTTP and Python handles) against in-process search on the same collection.

    .venv/bin/python bench/bench_serve.py [--n 1000000] [--dim 384] [--shards 4] [--data-dir DIR] [--repeats 3]
        [--variant batch_wait_s=0.05] [--variant RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0,...]

Builds (or reuses, with ``--data-dir``) a catalog holding one collection ``bench`` of
``--n`` random unit vectors (exact ``Flat`` index, cosine, ``--shards`` shards), then:

1. in-process: ``gpusearch.Collection.open`` in this process; single queries (k=10)
   one at a time (p50/p99 latency, QPS at concurrency 1), and from a thread pool of
   8/32/64 threads, each issuing single queries (QPS for reference); then one search
   call with 8 and 32 queries stacked (the ceiling dynamic batching could reach with no
   serving cost). Closed (memory freed) before the server starts.
2. served: ``gpusearch.serve.app.start`` (local Ray, ``--shards`` Shard deployments with
   one replica each, dynamic batching as configured), then ``POST /query`` over HTTP:
   concurrency 1 with a blocking ``httpx.Client`` (p50/p99, QPS), concurrency 8/32/64
   with asyncio + ``httpx.AsyncClient`` (one coroutine per concurrent client, each
   sending its next query once the previous answer is in; non-200 answers are counted
   under ``errors``, not timed). Also: the Python-handle path
   (``gpusearch.serve.connect(...).query``) at concurrency 1; the floor of Serve's proxy
   plus the Aggregator's FastAPI ingress (``GET /healthz``, at 1 and 32 clients); the
   Aggregator handle directly (its answer carries each shard's search time); the shard
   tier alone (this process builds the request as the Aggregator does and fans it out to
   the Shard deployments) at concurrency 1 and 32, with the dynamic batch size of every
   shard answer; a py-spy profile of the proxy, the Aggregator and one Shard under 32
   clients (when py-spy is installed). The graph: HTTP -> proxy -> Aggregator (the
   ingress) -> shards; a handle enters at the Aggregator.
3. each ``--variant`` (ServeConfig fields and/or environment variables for Ray's
   processes): the app served again in a child process (a fresh Ray), HTTP levels
   ``--variant-levels`` only.
4. in-process again, concurrency 1 only, after the server is gone: a drift check on a
   shared machine.

Levels are interleaved within each repeat (1, 8, 32, 64, then again), so drift in the
machine's speed hits every level alike; QPS is the median over repeats, latency
percentiles are over all repeats' samples pooled. While each level runs, the CPU
seconds of every process of this process tree are read from /proc and grouped by role
(client, HTTP proxy, Aggregator, shards, Ray), with the CPU time the rest of
the machine used (other people's work) alongside: that is where the time goes.

Query bodies are JSON-encoded before timing starts (float32 values written as their
shortest round-tripping decimals), so the client's per-request cost is httpx alone.
The client shares the machine's cores with the server. Writes
bench/results/serve-<cpuN or GPU name>.json (and a .png plot when matplotlib is installed).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info, result_path  # noqa: E402
from server_proc import free_port  # noqa: E402

import gpusearch as gs  # noqa: E402

COLLECTION = "bench"


# -- data ---------------------------------------------------------------------
def unit_rows(rng, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def build(data_dir: Path, n: int, dim: int, shards: int, batch: int) -> dict:
    """The catalog at ``data_dir`` with ``n`` vectors in collection ``bench`` (reused when it holds them)."""
    from gpusearch.catalog import Catalog

    cpath = data_dir / "collections" / COLLECTION
    if (cpath / "collection.json").exists():
        meta = json.loads((cpath / "collection.json").read_text())
        if meta.get("dim") != dim or meta.get("shards") != shards:
            raise SystemExit(f"{cpath} holds dim {meta.get('dim')}, {meta.get('shards')} shards; asked for dim {dim}, "
                             f"{shards} shards: give another --data-dir")
        print(f"reusing {cpath}", flush=True)
        record = data_dir / "bench-build.json"
        return {**(json.loads(record.read_text()) if record.exists() else {}), "reused": True}
    rng = np.random.default_rng(0)
    catalog = Catalog(data_dir, shards=shards, metric="cosine", index="Flat", device="cpu", fsync=False)
    t = time.perf_counter()
    try:
        for lo in range(0, n, batch):
            hi = min(lo + batch, n)
            catalog.upsert(COLLECTION, np.arange(lo, hi), unit_rows(rng, hi - lo, dim),
                           [{"g": i % 10} for i in range(lo, hi)])
            if (hi // batch) % 10 == 0 or hi == n:
                el = time.perf_counter() - t
                print(f"  ingested {hi:>9,d} / {n:,d}  ({hi / el:,.0f} vectors/s)", flush=True)
        ingest = time.perf_counter() - t
        t = time.perf_counter()
    finally:
        catalog.close()  # checkpoints: the snapshot every reader loads
    out = {"reused": False, "n": n, "ingest_s": ingest, "ingest_vectors_per_s": n / ingest,
           "checkpoint_s": time.perf_counter() - t, "date": time.strftime("%Y-%m-%d %H:%M")}
    (data_dir / "bench-build.json").write_text(json.dumps(out))
    return out


def make_queries(count: int, dim: int, seed: int = 1) -> tuple[np.ndarray, list[bytes]]:
    """Unit query vectors and their /query JSON bodies (float32 values as shortest round-trip decimals)."""
    q = unit_rows(np.random.default_rng(seed), count, dim)
    bodies = []
    for v in q:
        vec = ",".join(str(x) for x in v)  # str of an np.float32: its shortest round-tripping decimal
        bodies.append(f'{{"namespace":"{COLLECTION}","topK":10,"vector":[{vec}]}}'.encode())
    assert np.array_equal(np.asarray(json.loads(bodies[0])["vector"], dtype=np.float32), q[0])
    return q, bodies


# -- timing harnesses ---------------------------------------------------------
_CAL = np.random.default_rng(7).standard_normal((131072, 384), dtype=np.float32)  # 192 MiB


def wait_quiet(max_wait_s: float, cores: float = 0.25, window_s: float = 5.0) -> float:
    """Wait (at most ``max_wait_s``) until processes outside this process tree use less than ``cores`` CPU cores over
    ``window_s``; return the seconds waited. Other people's jobs on a shared machine skew every number."""
    if max_wait_s <= 0:
        return 0.0
    meter, t0 = CpuMeter(), time.perf_counter()
    while True:
        a = meter.snapshot()
        time.sleep(window_s)
        d = meter.delta(a, meter.snapshot())
        busy = d["others_cpu_s"] / d["wall_s"]
        waited = time.perf_counter() - t0
        if busy < cores or waited >= max_wait_s:
            if busy >= cores:
                print(f"  the machine is still busy ({busy:.2f} cores of other work); going on", flush=True)
            return waited
        print(f"  waiting for a quiet machine ({busy:.2f} cores of other work)", flush=True)


def calibrate() -> dict:
    """The machine's speed right now: a pure-Python loop and a memory-bound GEMV (the search's bottleneck), best
    of 3. Compare between phases to tell the code's speed from the machine's (other VMs, other jobs)."""
    py, mem = [], []
    q = _CAL[0]
    for _ in range(3):
        t = time.perf_counter()
        x = 0
        for i in range(500_000):
            x += i
        py.append(time.perf_counter() - t)
        t = time.perf_counter()
        _CAL @ q
        mem.append(time.perf_counter() - t)
    return {"python_loop_ms": 1e3 * min(py), "gemv_192MiB_ms": 1e3 * min(mem), "loadavg1": os.getloadavg()[0]}

class Cursor:
    """Hands out query numbers to concurrent workers (cycling through the pre-made queries)."""

    def __init__(self, total: int, start: int, modulo: int):
        self.total, self.start, self.modulo = total, start, modulo
        self.n = 0
        self.lock = threading.Lock()

    def next(self) -> int | None:
        with self.lock:
            if self.n >= self.total:
                return None
            self.n += 1
            return (self.start + self.n - 1) % self.modulo


def run_threads(fn, conc: int, total: int, start: int, modulo: int) -> tuple[list[float], float]:
    """``conc`` threads call ``fn(i)`` for query numbers until ``total`` are done: (latencies s, wall s)."""
    cur, lat, lock = Cursor(total, start, modulo), [], threading.Lock()

    def worker():
        mine = []
        while (i := cur.next()) is not None:
            t = time.perf_counter()
            fn(i)
            mine.append(time.perf_counter() - t)
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    if conc == 1:
        worker()
    else:
        with ThreadPoolExecutor(conc) as pool:
            for f in [pool.submit(worker) for _ in range(conc)]:
                f.result()
    return lat, time.perf_counter() - t0


def run_http_async(url: str, bodies: list[bytes], conc: int, total: int, start: int,
                   stop_after: float | None = None) -> tuple[list[float], float]:
    """``conc`` asyncio clients on one event loop (httpx.AsyncClient, keep-alive), each with one request in flight,
    until ``total`` requests are answered (or ``stop_after`` seconds have passed)."""
    import httpx

    async def main():
        cur, lat, errors = Cursor(total, start, len(bodies)), [], {}
        limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
        headers = {"content-type": "application/json"}
        async with httpx.AsyncClient(limits=limits, timeout=120) as client:
            async def worker():
                while (i := cur.next()) is not None:
                    if stop_after is not None and time.perf_counter() - t0 > stop_after:
                        break
                    t = time.perf_counter()
                    r = await client.post(url, content=bodies[i], headers=headers)
                    if r.status_code == 200:
                        lat.append(time.perf_counter() - t)
                    else:  # counted, not timed: an overloaded server answers 504 after shard_timeout_s
                        key = f"{r.status_code}: {r.json().get('message', '')[:120]}"
                        errors[key] = errors.get(key, 0) + 1
            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(conc)))
            return lat, time.perf_counter() - t0, errors

    return asyncio.run(main())


def summary(lat: list[float], wall: float, errors: dict | None = None) -> dict:
    """QPS counts answered queries only; latencies are of answered queries."""
    a = np.asarray(lat) * 1e3 if lat else np.full(1, np.nan)
    out = {"n": len(lat), "wall_s": wall, "qps": len(lat) / wall, "p50_ms": float(np.percentile(a, 50)),
           "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}
    if errors:
        out["errors"] = errors
    return out


def combine(reps: list[dict], lats: list[list[float]]) -> dict:
    """Median QPS over repeats; latency percentiles over every repeat's samples pooled."""
    pooled = np.concatenate([np.asarray(x) for x in lats]) * 1e3
    qps = [r["qps"] for r in reps]
    return {"qps": float(np.median(qps)), "qps_min_max": [float(min(qps)), float(max(qps))],
            "p50_ms": float(np.percentile(pooled, 50)), "p99_ms": float(np.percentile(pooled, 99)),
            "mean_ms": float(pooled.mean()), "samples": int(pooled.size), "repeats": reps}


# -- where CPU time goes (/proc; psutil is not installed) ---------------------
_TICK = os.sysconf("SC_CLK_TCK")
_ROLES = [("ServeReplica:", None), ("ProxyActor", "http_proxy"), ("ServeController", "serve_controller"),
          ("raylet", "raylet"), ("gcs_server", "gcs"), ("ray::", "ray_other_workers")]


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, cpu seconds) for every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        rest = s[s.rindex(")") + 2:].split()
        out[int(d)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / _TICK)
    return out


def _system_busy_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return (sum(v[:8]) - idle) / _TICK


class CpuMeter:
    """CPU seconds per role of this process tree between two snapshots, and the rest of the machine's."""

    def __init__(self):
        self.me = os.getpid()
        self.roles: dict[int, str] = {self.me: "client (bench process)"}

    def _role(self, pid: int) -> str:
        role = self.roles.get(pid)
        if role is not None:
            return role
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return "gone"
        role = "ray_other"
        for key, name in _ROLES:
            if key in cmd:
                if name is None:  # ray::ServeReplica:<app>:<Deployment>
                    dep = cmd.split("ServeReplica:", 1)[1].split()[0].split(":")[-1].split(".")[0]
                    name = "shards" if re.fullmatch(r"Shard\d+", dep) else dep.lower()
                role = name
                break
        if "IDLE" not in cmd:
            self.roles[pid] = role  # an actor keeps its role; an idle worker may become one later
        return role

    def snapshot(self):
        table = _proc_table()
        kids: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            kids.setdefault(ppid, []).append(pid)
        mine, todo = set(), [self.me]
        while todo:
            p = todo.pop()
            if p in mine:
                continue
            mine.add(p)
            todo.extend(kids.get(p, []))
        return {p: table[p][1] for p in mine}, _system_busy_s(), time.perf_counter()

    def delta(self, a, b) -> dict:
        (pa, sa, ta), (pb, sb, tb) = a, b
        groups: dict[str, float] = {}
        for pid, cpu in pb.items():
            d = cpu - pa.get(pid, 0.0)
            if d > 0:
                r = self._role(pid)
                groups[r] = groups.get(r, 0.0) + d
        ours = sum(groups.values())
        return {"wall_s": tb - ta, "cpu_s": groups, "ours_cpu_s": ours, "machine_busy_cpu_s": sb - sa,
                "others_cpu_s": max(0.0, (sb - sa) - ours)}


# -- in-process -----------------------------------------------------------------
def bench_inprocess(cpath: Path, queries: np.ndarray, levels: list[int], repeats: int, seq_n: int, min_n: int,
                    tag: str, batches: list[int] = (), quiet_s: float = 0.0) -> dict:
    waited = wait_quiet(quiet_s)
    cal = calibrate()
    t = time.perf_counter()
    col = gs.Collection.open(cpath, device="cpu")
    out: dict = {"open_s": time.perf_counter() - t, "records": len(col), "calibration_start": cal,
                 "waited_for_quiet_s": waited}
    print(f"[{tag}] opened {len(col):,d} records in {out['open_s']:.1f} s", flush=True)
    nq = len(queries)

    def one(i):
        col.search(queries[i], k=10)

    for i in range(5):  # warm-up
        one(i)
    run_threads(one, 8, 16, 0, nq)
    per: dict[int, tuple[list, list]] = {c: ([], []) for c in levels}
    start, meter = 0, CpuMeter()
    for rep in range(repeats):
        for c in levels:
            total = seq_n if c == 1 else max(min_n, c)
            s0 = meter.snapshot()
            lat, wall = run_threads(one, c, total, start, nq)
            cpu = meter.delta(s0, meter.snapshot())
            start += total
            s = summary(lat, wall)
            s["cpu_ms_per_query"] = 1e3 * cpu["ours_cpu_s"] / total
            s["others_cpu_s"] = cpu["others_cpu_s"]
            per[c][0].append(s)
            per[c][1].append(lat)
            print(f"[{tag}] rep {rep} c={c:<3d} qps {s['qps']:7.2f}  p50 {s['p50_ms']:8.1f} ms  "
                  f"p99 {s['p99_ms']:8.1f} ms  cpu {s['cpu_ms_per_query']:.0f} ms/query  "
                  f"others' cpu {s['others_cpu_s']:.1f} s", flush=True)
    out["levels"] = {str(c): combine(*per[c]) for c in levels}
    # What dynamic batching could reach with no serving cost: one search call with b queries stacked.
    out["batched"] = {}
    for b in batches:
        qps = []
        for rep in range(repeats):
            calls = max(1, 64 // b)
            t = time.perf_counter()
            for j in range(calls):
                lo = (start + j * b) % (nq - b)
                col.search(queries[lo:lo + b], k=10)
            qps.append(calls * b / (time.perf_counter() - t))
            start += calls * b
        out["batched"][str(b)] = {"qps": float(np.median(qps)), "qps_all": qps}
        print(f"[{tag}] one call with {b} queries stacked: {np.median(qps):.2f} QPS", flush=True)
    out["reference_ids"] = [col.search(queries[i], k=10).ids[0] for i in range(5)]
    out["calibration_end"] = calibrate()
    col.close()
    del col
    gc.collect()
    return out


# -- served ---------------------------------------------------------------------
_METRIC_RE = re.compile(r'^gpusearch_shard_search_seconds_(sum|count)\{shard="(\d+)"\} (\S+)$', re.M)


def shard_metrics(base: str) -> dict:
    """{shard: (sum s, count)} of the Aggregator's per-shard search-time histogram."""
    import httpx

    text = httpx.get(base + "/metrics", timeout=60).text
    out: dict[str, list[float]] = {}
    for kind, shard, val in _METRIC_RE.findall(text):
        out.setdefault(shard, [0.0, 0.0])[0 if kind == "sum" else 1] = float(val)
    return out


def shard_delta(a: dict, b: dict) -> dict:
    """Mean search time (ms) per query answered, per shard, between two /metrics reads."""
    out = {}
    for s, (sm, cnt) in b.items():
        s0, c0 = a.get(s, (0.0, 0.0))
        if cnt > c0:
            out[s] = 1e3 * (sm - s0) / (cnt - c0)
    return out


def bench_served(args, data_dir: Path, queries: np.ndarray, bodies: list[bytes], levels: list[int],
                 reference_ids: list, env: dict[str, str] | None = None, light: bool = False,
                 config: dict | None = None) -> dict:
    """The served measurements. ``env``: environment for Ray's processes (Serve settings); ``config``: ServeConfig
    overrides; ``light``: HTTP levels and the /healthz floor only (no handle, Aggregator, shards-direct or profile)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import httpx
    import ray
    from ray import serve

    from gpusearch.serve import ServeConfig, connect
    from gpusearch.serve.app import start

    # Set after Serve's settings were read in this process: they apply to Ray's processes (started by start()),
    # not to this client's handles.
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})

    cfg = ServeConfig(data_dir=str(data_dir), port=free_port(), shards=args.shards, replicas=1, device="cpu",
                      encoder_enabled=False, fsync=False, **(config or {}))
    out: dict = {"config": {k: v for k, v in cfg.to_dict().items() if k != "api_keys"}, "env": dict(env or {}),
                 "config_overrides": dict(config or {})}
    base = f"http://{cfg.host}:{cfg.port}"
    meter = CpuMeter()
    nq = len(queries)
    http = None
    out["waited_for_quiet_s"] = wait_quiet(args.wait_quiet_s)
    out["calibration_start"] = calibrate()
    try:
        t = time.perf_counter()
        start(cfg, num_cpus=args.num_cpus)
        out["start_s"] = time.perf_counter() - t
        print(f"[served] app up in {out['start_s']:.1f} s on {base}", flush=True)
        client = connect(cfg.app_name)
        aggregator = serve.get_deployment_handle("Aggregator", app_name=cfg.app_name)
        shard_handles = [serve.get_deployment_handle(f"Shard{i}", app_name=cfg.app_name) for i in range(args.shards)]
        http = httpx.Client(timeout=120)
        headers = {"content-type": "application/json"}

        def http_one(i):
            r = http.post(base + "/query", content=bodies[i], headers=headers)
            if r.status_code != 200:
                raise RuntimeError(f"/query answered {r.status_code}: {r.text[:300]}")
            return r

        def healthz(_i):
            r = http.get(base + "/healthz")
            assert r.status_code == 200

        def handle_one(i):
            client.query(COLLECTION, queries[i], k=10)

        # warm-up (first requests set up routers and connections), then check the answers
        for i in range(10):
            http_one(i)
            handle_one(i)
        run_http_async(base + "/query", bodies, 32, 64, 0)
        run_shards_direct(shard_handles, data_dir, queries, 8, 16, 0)
        got = [[m["id"] for m in http_one(i).json()["matches"]] for i in range(5)]
        out["answers_match_in_process"] = got == reference_ids
        if not out["answers_match_in_process"] and reference_ids is not None:
            print(f"WARNING: served answers differ from in-process ones: {got} vs {reference_ids}", flush=True)
        got_h = [client.query(COLLECTION, queries[i], k=10).ids[0] for i in range(5)]
        out["handle_answers_match_in_process"] = got_h == reference_ids

        # what the app costs doing nothing (Serve's control loops, health checks, metrics, Ray)
        s0 = meter.snapshot()
        time.sleep(args.idle_s)
        idle = meter.delta(s0, meter.snapshot())
        out["idle_cpu_cores"] = {k: v / idle["wall_s"] for k, v in idle["cpu_s"].items()}
        out["idle_cpu_cores_total"] = idle["ours_cpu_s"] / idle["wall_s"]
        out["idle_others_cores"] = idle["others_cpu_s"] / idle["wall_s"]
        print(f"[served] idle: the app uses {out['idle_cpu_cores_total']:.2f} cores doing nothing "
              f"(others: {out['idle_others_cores']:.2f})", flush=True)

        per = {c: ([], []) for c in levels}
        per_handle, per_health, per_health32, agg_shard = ([], []), ([], []), ([], []), []
        per_direct: dict[int, tuple[list, list]] = {c: ([], []) for c in args.direct_levels}
        start_i = 0
        for rep in range(args.repeats):
            # the floor: Serve's HTTP proxy + FastAPI ingress, nothing behind it
            lat, wall = run_threads(healthz, 1, args.healthz_n, 0, nq)
            per_health[0].append(summary(lat, wall))
            per_health[1].append(lat)
            for c in levels:
                total = args.seq_queries if c == 1 else max(args.min_queries, 2 * c)
                m0, s0 = shard_metrics(base), meter.snapshot()
                errors = None
                if c == 1:
                    lat, wall = run_threads(http_one, 1, total, start_i, nq)
                else:
                    lat, wall, errors = run_http_async(base + "/query", bodies, c, total, start_i)
                s1, m1 = meter.snapshot(), shard_metrics(base)
                start_i += total
                s = summary(lat, wall, errors)
                s["cpu"] = meter.delta(s0, s1)
                s["cpu_ms_per_query"] = {k: 1e3 * v / total for k, v in s["cpu"]["cpu_s"].items()}
                s["shard_search_ms_per_query"] = shard_delta(m0, m1)
                per[c][0].append(s)
                per[c][1].append(lat)
                print(f"[served] rep {rep} c={c:<3d} qps {s['qps']:7.2f}  p50 {s['p50_ms']:8.1f} ms  "
                      f"p99 {s['p99_ms']:8.1f} ms  shard batch ms {_fmt(s['shard_search_ms_per_query'])}  "
                      f"cpu ms/query {1e3 * s['cpu']['ours_cpu_s'] / total:.0f}  "
                      f"others' cpu {s['cpu']['others_cpu_s']:.1f} s"
                      + (f"  ERRORS {s['errors']}" if errors else ""), flush=True)
            if light:
                continue
            # the Python-handle path at concurrency 1 (no HTTP, no proxy: straight to the Aggregator)
            lat, wall = run_threads(handle_one, 1, args.handle_queries, start_i, nq)
            start_i += args.handle_queries
            per_handle[0].append(summary(lat, wall))
            per_handle[1].append(lat)
            print(f"[served] rep {rep} handle c=1 qps {per_handle[0][-1]['qps']:7.2f}  "
                  f"p50 {per_handle[0][-1]['p50_ms']:8.1f} ms  | /healthz p50 {per_health[0][-1]['p50_ms']:.2f} ms",
                  flush=True)
            # the Aggregator directly: its answer holds each shard's search time for this query
            for i in range(args.agg_queries):
                q = queries[(start_i + i) % nq][None, :]
                t = time.perf_counter()
                r = aggregator.query.remote(COLLECTION, q, 10).result()
                el = time.perf_counter() - t
                sec = r.info["shard_seconds"]
                agg_shard.append({"latency_ms": 1e3 * el, "max_shard_ms": 1e3 * max(sec.values()),
                                  "mean_shard_ms": 1e3 * float(np.mean(list(sec.values())))})
            start_i += args.agg_queries
            # the shard tier alone: this process fans each query out to every Shard deployment itself
            for c in args.direct_levels:
                total = args.seq_queries // 3 if c == 1 else max(args.min_queries, 2 * c)
                s0 = meter.snapshot()
                lat, wall, batches = run_shards_direct(shard_handles, data_dir, queries, c, total, start_i)
                cpu = meter.delta(s0, meter.snapshot())
                start_i += total
                s = summary(lat, wall)
                s["batch_size_mean"] = float(np.mean(batches))
                s["batch_size_max"] = int(np.max(batches))
                s["cpu_ms_per_query"] = {k: 1e3 * v / total for k, v in cpu["cpu_s"].items()}
                s["others_cpu_s"] = cpu["others_cpu_s"]
                per_direct[c][0].append(s)
                per_direct[c][1].append(lat)
                print(f"[served] rep {rep} shards direct c={c:<3d} qps {s['qps']:7.2f}  p50 {s['p50_ms']:8.1f} ms  "
                      f"mean batch {s['batch_size_mean']:.1f}", flush=True)
        # the proxy + ingress floor under load: /healthz from 32 concurrent clients
        for _ in range(args.repeats):
            s0 = meter.snapshot()
            lat, wall = _run_get_async(base + "/healthz", 32, args.healthz_n * 2)
            s = summary(lat, wall)
            cpu = meter.delta(s0, meter.snapshot())
            s["cpu_ms_per_request"] = {k: 1e3 * v / len(lat) for k, v in cpu["cpu_s"].items()}
            s["others_cpu_s"] = cpu["others_cpu_s"]
            per_health32[0].append(s)
            per_health32[1].append(lat)
        out["calibration_end"] = calibrate()  # with the app up and idle
        out["levels"] = {str(c): combine(per[c][0], per[c][1]) for c in levels}
        out["healthz_c1"] = combine(*per_health)
        out["healthz_c32"] = combine(*per_health32)
        for lv in out["levels"].values():
            lv["cpu_ms_per_query_median"] = _median_dicts([r["cpu_ms_per_query"] for r in lv["repeats"]])
        if light:
            return out
        out["handle_c1"] = combine(*per_handle)
        out["shards_direct"] = {str(c): combine(*per_direct[c]) for c in args.direct_levels}
        for lv in out["shards_direct"].values():
            lv["cpu_ms_per_query_median"] = _median_dicts([r["cpu_ms_per_query"] for r in lv["repeats"]])
        a = {k: float(np.median([x[k] for x in agg_shard])) for k in agg_shard[0]}
        out["aggregator_handle_c1_median"] = a
        out["aggregator_handle_c1_samples"] = len(agg_shard)
        if args.profile_s > 0:
            out["profile_c32"] = profile_level(meter, lambda: run_http_async(base + "/query", bodies, 32, 10_000_000,
                                                                             0, stop_after=args.profile_s + 1),
                                               args.profile_s)
        try:
            st = aggregator.stats.remote().result()
            out["shard_stats"] = {str(i): {k: s.get(k) for k in ("records", "applied_seq", "refreshes", "device")}
                                  for i, s in st.get(COLLECTION, {}).items()}
        except Exception as e:  # noqa: BLE001
            out["shard_stats"] = repr(e)
    finally:
        if http is not None:
            http.close()
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return out


def served_variant(args, data_dir: Path, variant: str) -> dict:
    """The HTTP levels again with ``variant`` settings, in a child process: Ray does not restart cleanly inside one."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "variant.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", "served-light", "--data-dir", str(data_dir),
               "--out", str(out), "--variant", variant, "--repeats", str(args.variant_repeats),
               "--levels", args.variant_levels]
        for name in ("n", "dim", "shards", "seq_queries", "min_queries", "healthz_n", "num_cpus", "idle_s",
                     "wait_quiet_s"):
            cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        print(f"[variant] serving again with {variant}", flush=True)
        subprocess.run(cmd, check=True)
        res = json.loads(out.read_text())
        res["settings"] = variant
        return res


def _median_dicts(ds: list[dict]) -> dict:
    keys = sorted({k for d in ds for k in d})
    return {k: float(np.median([d.get(k, 0.0) for d in ds])) for k in keys}


def run_shards_direct(handles, data_dir: Path, queries: np.ndarray, conc: int, total: int, start: int):
    """``conc`` asyncio clients in this process, each building a query's request (as the Aggregator does) and
    sending it to every Shard deployment at once, without HTTP or the Aggregator: (latencies, wall, batch size of
    every shard answer)."""
    from gpusearch.catalog import CatalogReader

    reader = CatalogReader(data_dir)

    async def main():
        cur, lat, batches = Cursor(total, start, len(queries)), [], []

        async def worker():
            while (i := cur.next()) is not None:
                t = time.perf_counter()
                req = reader.request(COLLECTION, queries[i][None, :], 10)
                answers = await asyncio.gather(*(h.search.remote(COLLECTION, req) for h in handles))
                lat.append(time.perf_counter() - t)
                batches.extend(a[3] for a in answers)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        return lat, time.perf_counter() - t0, batches

    return asyncio.run(main())


def profile_level(meter: CpuMeter, run, seconds: float) -> dict:
    """Sample the stacks of the Aggregator, the HTTP proxy and one Shard replica with py-spy while ``run``
    drives load; per process: the share of samples in which it was busy and its hottest frames."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        return {"skipped": "py-spy is not installed"}
    meter.delta(meter.snapshot(), meter.snapshot())  # classify every process
    targets: dict[str, int] = {}
    for pid, role in meter.roles.items():
        if role in ("aggregator", "http_proxy", "shards") and role not in targets:
            targets[role] = pid
    tmp = Path(tempfile.mkdtemp(prefix="gs-spy-"))
    rate = 50
    procs = {role: subprocess.Popen([str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)),
                                     "--rate", str(rate), "--format", "raw", "--nonblocking",
                                     "--output", str(tmp / f"{role}.txt")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for role, pid in targets.items()}
    lat, wall, errors = run()
    out: dict = {"seconds": seconds, "rate_hz": rate, "load": summary(lat, wall, errors)}
    for role, p in procs.items():
        p.wait(timeout=seconds + 60)
        out[role] = _collapse(tmp / f"{role}.txt", seconds * rate)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def _collapse(path: Path, possible: float, top: int = 12) -> dict:
    """Busy share and hottest frames (self and inclusive) from py-spy's raw (collapsed stacks) output."""
    if not path.exists():
        return {"error": "no profile written"}
    self_c: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        n = int(n)
        frames = [re.sub(r"\s*\(/.*?site-packages/", " (", f) for f in stack.split(";")]
        total += n
        self_c[frames[-1]] = self_c.get(frames[-1], 0) + n
        for f in set(frames[1:]):
            incl[f] = incl.get(f, 0) + n
    def topn(d):
        return [[f, round(100 * c / max(total, 1), 1)] for f, c in sorted(d.items(), key=lambda x: -x[1])[:top]]
    return {"busy_share": round(total / possible, 3), "samples": total, "top_self_pct": topn(self_c),
            "top_inclusive_pct": topn(incl)}


def _run_get_async(url: str, conc: int, total: int):
    import httpx

    async def main():
        cur, lat = Cursor(total, 0, 1), []
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=conc), timeout=60) as client:
            async def worker():
                while cur.next() is not None:
                    t = time.perf_counter()
                    r = await client.get(url)
                    lat.append(time.perf_counter() - t)
                    assert r.status_code == 200
            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(conc)))
            return lat, time.perf_counter() - t0

    return asyncio.run(main())


def _fmt(d: dict) -> str:
    return "/".join(f"{v:.0f}" for _, v in sorted(d.items())) or "-"


# -- report -----------------------------------------------------------------------
def plot(res: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    levels = [int(c) for c in res["served"]["levels"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(levels, [res["served"]["levels"][str(c)]["qps"] for c in levels], "o-", label="served (HTTP)")
    ax.plot(levels, [res["in_process"]["levels"][str(c)]["qps"] for c in levels], "s--", label="in-process (threads)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("queries / s")
    ax.set_title(f"{res['n']:,} x {res['dim']}, {res['shards']} shards, Flat, {res['machine']['cores']} CPU cores")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--batch", type=int, default=10_000, help="ingest batch size")
    ap.add_argument("--data-dir", default=None, help="catalog directory, reused when it already holds the collection "
                                                     "(default: a temporary directory, deleted at the end)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--levels", default="1,8,32,64", help="concurrency levels (1 must be first)")
    ap.add_argument("--seq-queries", type=int, default=70, help="queries per repeat at concurrency 1")
    ap.add_argument("--min-queries", type=int, default=64, help="queries per repeat at concurrency c > 1: "
                                                                 "max(this, 2c) served, max(this, c) in-process")
    ap.add_argument("--handle-queries", type=int, default=40)
    ap.add_argument("--agg-queries", type=int, default=10)
    ap.add_argument("--healthz-n", type=int, default=100)
    ap.add_argument("--direct-levels", default="1,32", help="concurrency levels of the shards-direct diagnostic")
    ap.add_argument("--idle-s", type=float, default=5.0, help="seconds to measure the idle app's CPU use")
    ap.add_argument("--profile-s", type=float, default=10.0, help="py-spy the server processes under 32 clients "
                                                                   "for this long at the end (0: don't)")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count())
    ap.add_argument("--wait-quiet-s", type=float, default=180.0, help="before each phase, wait up to this long for "
                    "other processes on the machine to use less than a quarter of a core (0: don't wait)")
    ap.add_argument("--variant", action="append", default=[], help="KEY=VAL,KEY=VAL (repeatable): after the app as "
                    "configured, serve it again with "
                    "these settings and measure the HTTP levels again; a ServeConfig field (batch_wait_s=0.05) "
                    "overrides the config, any other key is an environment variable for Ray's processes "
                    "(RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0)")
    ap.add_argument("--inproc-batches", default="8,32", help="in-process reference: QPS of one search call with "
                                                              "this many queries stacked (the ceiling of batching)")
    ap.add_argument("--variant-levels", default="1,32", help="concurrency levels of the --variant runs")
    ap.add_argument("--variant-repeats", type=int, default=2)
    ap.add_argument("--no-recheck", action="store_true", help="skip the in-process re-run after the server")
    ap.add_argument("--out", default=None, help="result file (default bench/results/serve-<machine>.json)")
    ap.add_argument("--phase", choices=["all", "served-light"], default="all", help=argparse.SUPPRESS)
    ap.add_argument("--summarize", metavar="RESULT", default=None, help="recompute the goals and notes of a stored "
                    "result file (after their definitions change) without measuring again")
    args = ap.parse_args()
    if args.summarize:
        path = Path(args.summarize)
        res = json.loads(path.read_text())
        res["goals"], res["notes"] = goals_of(res), notes(res)
        path.write_text(json.dumps(res, indent=2, default=float))
        print_table(res, [int(c) for c in res["in_process"]["levels"]], res["goals"])
        print(f"rewrote {path}")
        return
    levels = [int(x) for x in args.levels.split(",")]
    args.direct_levels = [int(x) for x in args.direct_levels.split(",")] if args.direct_levels else []
    args.inproc_batches = [int(x) for x in args.inproc_batches.split(",")] if args.inproc_batches else []
    if args.phase == "served-light":  # the --variant run, in a process of its own (a fresh Ray)
        import dataclasses

        from gpusearch.serve import ServeConfig

        queries, bodies = make_queries(1000, args.dim)
        fields = {f.name: f.type for f in dataclasses.fields(ServeConfig)}
        env, config = {}, {}
        for kv in args.variant[0].split(","):
            key, val = kv.split("=", 1)
            if key in fields:
                config[key] = type(getattr(ServeConfig(), key))(val)
            else:
                env[key] = val
        out = bench_served(args, Path(args.data_dir), queries, bodies, levels, None, env=env, light=True,
                           config=config)
        Path(args.out).write_text(json.dumps(out, indent=2, default=float))
        return
    assert levels[0] == 1

    res: dict = {"benchmark": "serve", "n": args.n, "dim": args.dim, "shards": args.shards, "index": "Flat",
                 "metric": "cosine", "k": 10, "repeats": args.repeats, "levels": levels,
                 "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M"),
                 "loadavg_start": os.getloadavg(),
                 "params": {k: v for k, v in vars(args).items() if k not in ("out",)}}
    tmp = None
    if args.data_dir:
        data_dir = Path(args.data_dir).resolve()
    else:
        tmp = tempfile.mkdtemp(prefix="gs-serve-bench-")
        data_dir = Path(tmp)
    try:
        print(f"catalog in {data_dir}", flush=True)
        res["build"] = build(data_dir, args.n, args.dim, args.shards, args.batch)
        queries, bodies = make_queries(1000, args.dim)
        res["query_body_bytes"] = int(np.mean([len(b) for b in bodies]))
        t = time.perf_counter()
        for i in range(200):
            json.dumps({"namespace": COLLECTION, "topK": 10, "vector": queries[i].tolist()})
        res["client_json_encode_ms"] = 1e3 * (time.perf_counter() - t) / 200  # what pre-encoding saves per request
        cpath = data_dir / "collections" / COLLECTION
        res["in_process"] = bench_inprocess(cpath, queries, levels, args.repeats, args.seq_queries,
                                            args.min_queries, "in-process", args.inproc_batches, args.wait_quiet_s)
        if res["in_process"]["records"] != args.n:
            print(f"WARNING: the collection holds {res['in_process']['records']:,d} records, not --n {args.n:,d}")
            res["n"] = res["in_process"]["records"]
        res["served"] = bench_served(args, data_dir, queries, bodies, levels, res["in_process"]["reference_ids"])
        res["served_variants"] = [served_variant(args, data_dir, v) for v in args.variant]
        if not args.no_recheck:
            res["in_process_after"] = bench_inprocess(cpath, queries, [1], 1, args.seq_queries, args.min_queries,
                                                      "in-process again", quiet_s=args.wait_quiet_s)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    res["loadavg_end"] = os.getloadavg()

    goals = goals_of(res)
    res["goals"] = goals
    try:
        res["notes"] = notes(res)
    except Exception as e:  # noqa: BLE001 - never lose the measurements to a summary bug
        res["notes"] = [f"notes failed: {e!r}"]
    out = Path(args.out) if args.out else result_path("serve", res["machine"])
    out.write_text(json.dumps(res, indent=2, default=float))

    print_table(res, levels, goals)
    print(f"wrote {out}")
    png = out.with_suffix(".png")
    if plot(res, png):
        print(f"wrote {png}")

def print_table(res: dict, levels: list[int], goals: dict) -> None:
    """The run's table: latency and QPS per path, then the goals."""
    print()
    print(f"{'':26s}{'p50 ms':>9s}{'p99 ms':>9s}" + "".join(f"{'qps@' + str(c):>10s}" for c in levels))
    ip, sv = res["in_process"]["levels"], res["served"]["levels"]
    for name, lv in (("in-process (threads)", ip), ("served HTTP", sv)):
        print(f"{name:26s}{lv['1']['p50_ms']:9.1f}{lv['1']['p99_ms']:9.1f}"
              + "".join(f"{lv[str(c)]['qps']:10.2f}" for c in levels))
    for j, var in enumerate(res.get("served_variants", [])):
        lv = var["levels"]
        print(f"{'served HTTP, variant ' + str(j + 1):26s}{lv['1']['p50_ms']:9.1f}{lv['1']['p99_ms']:9.1f}"
              + "".join(f"{lv[str(c)]['qps']:10.2f}" if str(c) in lv else f"{'-':>10s}" for c in levels)
              + f"  ({var['settings']})")
    h = res["served"]["handle_c1"]
    print(f"{'served Python handle':26s}{h['p50_ms']:9.1f}{h['p99_ms']:9.1f}{h['qps']:10.2f}")
    for c, lv in res["served"]["shards_direct"].items():
        print(f"{'shards direct c=' + c:26s}{lv['p50_ms']:9.1f}{lv['p99_ms']:9.1f}{lv['qps']:10.2f}  "
              f"mean batch {np.mean([r['batch_size_mean'] for r in lv['repeats']]):.1f}")
    print(f"/healthz floor: p50 {res['served']['healthz_c1']['p50_ms']:.2f} ms, "
          f"{res['served']['healthz_c32']['qps']:.0f} req/s at 32 clients")
    for k, v in goals.items():
        print(f"  {k}: {v:.2f}" if isinstance(v, float) else f"  {k}: {v}")


#: CPU ms per query spent outside the shards (proxy, ingress, Aggregator, controller) before issue 14, per its text
#: ("110-150 ms"); the goal is a third of the low end.
OUTSIDE_SHARDS_BEFORE_MS = 110.0


def outside_shards_ms(cpu: dict) -> float:
    """CPU ms per query in every server role but the shards (the bench process, the client, is not the server)."""
    return sum(v for k, v in cpu.items() if k not in ("shards", "client (bench process)"))


def goals_of(res: dict) -> dict:
    """The served goals of issue 14, from the measurements: HTTP p50 within 5 ms of /healthz p50 + in-process p50,
    Python-handle p50 within 3 ms of in-process, QPS at 32 clients >= 3x in-process one at a time, CPU per query
    outside the shards <= a third of the 110 ms measured before."""
    ip, sv = res["in_process"]["levels"], res["served"]["levels"]
    ip1 = ip["1"]
    hz = res["served"]["healthz_c1"]["p50_ms"]
    g = {"in_process_p50_ms": ip1["p50_ms"], "in_process_qps1": ip1["qps"], "served_p50_ms": sv["1"]["p50_ms"],
         "healthz_p50_ms": hz,
         "served_p50_minus_healthz_minus_in_process_ms": sv["1"]["p50_ms"] - hz - ip1["p50_ms"],
         "handle_p50_minus_in_process_p50_ms": res["served"]["handle_c1"]["p50_ms"] - ip1["p50_ms"]}
    g["goal_http_p50_within_5ms"] = bool(g["served_p50_minus_healthz_minus_in_process_ms"] <= 5.0)
    g["goal_handle_p50_within_3ms"] = bool(g["handle_p50_minus_in_process_p50_ms"] <= 3.0)
    if "32" in sv:
        g["served_qps32"] = sv["32"]["qps"]
        g["served_qps32_over_in_process_qps1"] = sv["32"]["qps"] / ip1["qps"]
        g["goal_qps32_at_least_3x"] = bool(g["served_qps32_over_in_process_qps1"] >= 3.0)
    for c in ("1", "32"):
        if c in sv and "cpu_ms_per_query_median" in sv[c]:
            g[f"cpu_ms_per_query_outside_shards_c{c}"] = outside_shards_ms(sv[c]["cpu_ms_per_query_median"])
    if "cpu_ms_per_query_outside_shards_c32" in g:
        g["goal_outside_shards_cpu_cut_3x_c32"] = bool(
            g["cpu_ms_per_query_outside_shards_c32"] <= OUTSIDE_SHARDS_BEFORE_MS / 3)
    if "cpu_ms_per_query_outside_shards_c1" in g:
        g["goal_outside_shards_cpu_cut_3x_c1"] = bool(
            g["cpu_ms_per_query_outside_shards_c1"] <= OUTSIDE_SHARDS_BEFORE_MS / 3)
    if "in_process_after" in res:  # the same ratios against the in-process run after the server (drift check)
        ip1b = res["in_process_after"]["levels"]["1"]
        g["after"] = {"in_process_p50_ms": ip1b["p50_ms"], "in_process_qps1": ip1b["qps"],
                      "served_p50_minus_healthz_minus_in_process_ms": sv["1"]["p50_ms"] - hz - ip1b["p50_ms"]}
        if "32" in sv:
            g["after"]["served_qps32_over_in_process_qps1"] = sv["32"]["qps"] / ip1b["qps"]
    g["variants"] = []
    for var in res.get("served_variants", []):
        vv = var["levels"]
        vh = var["healthz_c1"]["p50_ms"]
        x = {"settings": var["settings"], "served_p50_ms": vv["1"]["p50_ms"], "healthz_p50_ms": vh,
             "served_p50_minus_healthz_minus_in_process_ms": vv["1"]["p50_ms"] - vh - ip1["p50_ms"]}
        if "32" in vv:
            x["served_qps32"] = vv["32"]["qps"]
            x["served_qps32_over_in_process_qps1"] = vv["32"]["qps"] / ip1["qps"]
        g["variants"].append(x)
    return g



def notes(res: dict) -> list[str]:
    """Measured facts about where the time goes, in words (the numbers behind them are in the result)."""
    sv, ip = res["served"], res["in_process"]["levels"]
    cores = res["machine"]["cores"]
    n = [
        f"The client (this process: httpx, asyncio, threads) shares the machine's {cores} cores with every server "
        f"process (Serve's HTTP proxy, the Aggregator (the ingress), {res['shards']} Shard replicas, Writer, Ray's own "
        "processes) and with whatever else runs on the machine; served.levels.*.repeats[].cpu has the CPU seconds of "
        "each role and others_cpu_s the rest of the machine's.",
        "Served concurrency 1: blocking httpx.Client, keep-alive. Concurrency > 1: asyncio + httpx.AsyncClient on one "
        "event loop, one coroutine per client, each with one request in flight. In-process concurrency > 1: a thread "
        "pool, each thread issuing single-query Collection.search calls (no batching across threads).",
        "Query bodies are JSON-encoded before timing (float32 shortest decimals, "
        f"{res['query_body_bytes']} bytes); encoding one costs about {res['client_json_encode_ms']:.2f} ms with json.dumps.",
        "QPS: median over repeats; p50/p99: over every repeat's samples pooled.",
    ]
    others = [r["others_cpu_s"] / r["wall_s"] for lv in ip.values() for r in lv["repeats"]]
    others += [r["cpu"]["others_cpu_s"] / r["cpu"]["wall_s"] for lv in sv["levels"].values() for r in lv["repeats"]]
    n.append(f"Other people's work on the machine while measuring: {np.median(others):.2f} cores median "
             f"(max {max(others):.2f}) of {cores}; load average {res['loadavg_start'][0]:.1f} at start, "
             f"{res['loadavg_end'][0]:.1f} at end.")
    phases = [("in-process", res["in_process"]), ("served", sv)] + [(v["settings"], v) for v in res.get("served_variants", [])]
    if "in_process_after" in res:
        phases.append(("in-process again", res["in_process_after"]))
    n.append("Machine speed per phase (calibration: best-of-3 Python loop ms / 192 MiB GEMV ms, start -> end): " + "; ".join(
        f"{name}: {p['calibration_start']['python_loop_ms']:.0f}/{p['calibration_start']['gemv_192MiB_ms']:.0f} -> "
        f"{p['calibration_end']['python_loop_ms']:.0f}/{p['calibration_end']['gemv_192MiB_ms']:.0f}"
        for name, p in phases if "calibration_end" in p) + ". A phase that ran on a slower machine is not comparable.")
    n.append(f"Idle, the app uses {sv['idle_cpu_cores_total']:.2f} cores (Serve controller, health checks, metrics, "
             "Ray): served.idle_cpu_cores.")
    h1, h32 = sv["healthz_c1"], sv["healthz_c32"]
    cpu_h = h32["repeats"][-1]["cpu_ms_per_request"]
    n.append(f"Floor of the HTTP path (GET /healthz: Serve's proxy + the Aggregator's FastAPI, nothing behind): "
             f"p50 {h1['p50_ms']:.1f} ms at concurrency 1; {h32['qps']:.0f} req/s at 32 clients, costing "
             f"{cpu_h.get('http_proxy', 0):.1f} ms CPU in the proxy and {cpu_h.get('aggregator', 0):.1f} ms in the "
             "Aggregator per request.")
    a = sv["aggregator_handle_c1_median"]
    n.append(f"Concurrency 1: in-process p50 {ip['1']['p50_ms']:.1f} ms; Aggregator handle p50 {a['latency_ms']:.1f} ms "
             f"of which the slowest shard's search {a['max_shard_ms']:.1f} ms (mean shard {a['mean_shard_ms']:.1f} ms); "
             f"Python handle (Client.query) p50 {sv['handle_c1']['p50_ms']:.1f} ms; HTTP p50 "
             f"{sv['levels']['1']['p50_ms']:.1f} ms.")
    for bsz, x in res["in_process"].get("batched", {}).items():
        n.append(f"In-process, one search call with {bsz} queries stacked: {x['qps']:.2f} QPS "
                 f"({x['qps'] / ip['1']['qps']:.1f}x one at a time): the ceiling batching could reach with no serving cost.")
    if "shards_direct" in sv:
        for c, lv in sv["shards_direct"].items():
            b = np.mean([r["batch_size_mean"] for r in lv["repeats"]])
            n.append(f"Shard tier alone (this process fans out to the {res['shards']} Shard deployments; no HTTP "
                     f"or Aggregator) at concurrency {c}: {lv['qps']:.2f} QPS, p50 {lv['p50_ms']:.1f} ms, "
                     f"mean dynamic batch {b:.1f}.")
    for c in ("1", "32"):
        if c in sv["levels"]:
            cpu = sv["levels"][c]["cpu_ms_per_query_median"]
            total = sum(cpu.values())
            top = ", ".join(f"{k} {v:.0f}" for k, v in sorted(cpu.items(), key=lambda x: -x[1]) if v >= 1)
            n.append(f"CPU per answered query over HTTP at concurrency {c}: {total:.0f} ms in all ({top}); "
                     f"shards {100 * cpu.get('shards', 0) / max(total, 1e-9):.0f}% of it. In-process: "
                     f"{ip[c]['repeats'][0]['cpu_ms_per_query']:.0f} ms." if c in ip else "")
    for vv in res.get("served_variants", []):
        n.append(f"Variant run with {vv['settings']}: HTTP p50 at concurrency 1 {vv['levels']['1']['p50_ms']:.1f} ms, "
                 + (f"QPS at 32 {vv['levels']['32']['qps']:.2f}, " if "32" in vv["levels"] else "")
                 + f"/healthz p50 {vv['healthz_c1']['p50_ms']:.1f} ms, {vv['healthz_c32']['qps']:.0f} req/s at 32.")
    return [x for x in n if x]


if __name__ == "__main__":
    main()
