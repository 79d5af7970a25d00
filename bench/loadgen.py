"""An open-loop HTTP load generator for a served gpusearch collection: mixed reads and writes
at a fixed rate, every answer checked, not just its status.

Requests are *scheduled* at a fixed rate (request ``i`` at ``t0 + i / rate``) whether or not
earlier ones have answered, so a slow server shows up as latency instead of silently lowering
the load (no coordinated omission). Latency is measured from the scheduled time; the time from
sending is kept too. At most ``max_in_flight`` requests are open; a request that finds the cap
full waits, and that wait counts in its latency.

The mix (weights) is over four operations on one collection:

- ``query``: a random unit vector, top-k; the answer must be 200, not ``partial``, and hold
  ``min(k, live records)`` matches in descending score order.
- ``upsert``: a batch of ids from the pool, each with a new version; the vector is a pure
  function of (id, version), and the version is in the metadata.
- ``fetch``: a batch of ids; each must come back as last acknowledged (same version, vector
  equal within 1e-6: a cosine collection stores it re-normalised), or absent when its last acknowledged write was a delete. This is
  read-your-writes under load.
- ``delete``: a batch of ids by id.

An id is used by one request at a time (writers and readers pick ids that are not in flight),
so every fetch has exactly one right answer. Any other status, a transport error, a timeout or
a wrong answer is an error, kept with its first messages.

    from loadgen import LoadSpec, run_load
    result = asyncio.run(run_load("http://127.0.0.1:8000", LoadSpec(rate=50, duration_s=60), api_key="k"))
"""
from __future__ import annotations

import asyncio
import os
import random
import time
import zlib
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LoadSpec", "LoadResult", "run_load", "preload", "record_vector", "tree_rss_bytes", "percentiles"]


@dataclass
class LoadSpec:
    rate: float = 20.0  # requests per second, all operations together
    duration_s: float = 10.0
    namespace: str = "load"
    dim: int = 16
    pool: int = 2000  # ids load-0 .. load-<pool-1>, all upserted by preload()
    mix: dict = field(default_factory=lambda: {"query": 0.7, "upsert": 0.15, "fetch": 0.1, "delete": 0.05})
    batch: int = 10  # ids per upsert / fetch / delete
    k: int = 10
    max_in_flight: int = 64
    timeout_s: float = 30.0
    seed: int = 0
    window_s: float = 10.0  # timeline bucket width

    def __post_init__(self):
        if not self.rate > 0 or not self.duration_s > 0:
            raise ValueError(f"rate and duration_s must be positive, got {self.rate} and {self.duration_s}")
        unknown = set(self.mix) - {"query", "upsert", "fetch", "delete"}
        if unknown or not self.mix or min(self.mix.values()) < 0 or sum(self.mix.values()) <= 0:
            raise ValueError(f"mix must weigh query/upsert/fetch/delete with non-negative weights, got {self.mix}")
        if not 1 <= self.batch <= self.pool // 4:
            raise ValueError(f"batch must be between 1 and pool/4 ({self.pool // 4}), got {self.batch}")


def record_vector(rid: str, version: int, dim: int) -> np.ndarray:
    """The vector of record ``rid`` at ``version``: a pure function, so a reader can check it."""
    g = np.random.default_rng([zlib.crc32(rid.encode()), version])
    v = g.standard_normal(dim).astype(np.float32)
    return v / np.float32(np.linalg.norm(v))


def percentiles(xs, qs=(50, 95, 99, 99.9)) -> dict:
    if not len(xs):
        return {f"p{q:g}": None for q in qs} | {"max": None}
    a = np.asarray(xs, dtype=np.float64)
    return {f"p{q:g}": float(np.percentile(a, q)) for q in qs} | {"max": float(a.max())}


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (from /proc; Linux)."""
    from ann.systems import child_pids

    total = 0
    for p in (pid, *child_pids(pid)):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):  # gone meanwhile
            continue
    return total


@dataclass
class LoadResult:
    spec: dict
    sent: int = 0
    skipped: int = 0  # scheduled writes/fetches that found too few ids free (client side)
    ok: int = 0
    errors: int = 0
    error_samples: list = field(default_factory=list)
    by_op: dict = field(default_factory=dict)  # op -> {"n", "errors", "latency_s": [...]}
    timeline: list = field(default_factory=list)  # per window: {"t", "n", "errors", "p50", "p99"}
    memory: list = field(default_factory=list)  # [(t, rss_bytes)]
    elapsed_s: float = 0.0
    achieved_rate: float = 0.0
    max_lag_s: float = 0.0  # worst wait between a request's scheduled time and its sending

    def summary(self) -> dict:
        ops = {}
        for op, d in self.by_op.items():
            ops[op] = {"n": d["n"], "errors": d["errors"], **percentiles(d["latency_s"])}
        all_lat = [x for d in self.by_op.values() for x in d["latency_s"]]
        return {"spec": self.spec, "sent": self.sent, "skipped": self.skipped, "ok": self.ok, "errors": self.errors,
                "error_samples": self.error_samples, "elapsed_s": self.elapsed_s,
                "achieved_rate": self.achieved_rate, "max_lag_s": self.max_lag_s,
                "latency_s": percentiles(all_lat), "by_op": ops, "timeline": self.timeline,
                "memory": self.memory}


class _State:
    """What the client knows was acknowledged: per id, its version, or None once deleted."""

    def __init__(self, spec: LoadSpec):
        self.spec = spec
        self.ids = [f"load-{i}" for i in range(spec.pool)]
        self.version: dict[str, int | None] = {}
        self.busy: set[str] = set()
        self.next_version = 1
        self.live = 0

    def take(self, rng: random.Random, n: int) -> list[str] | None:
        """``n`` ids not in flight, marked busy; None when too few are free right now."""
        picked: list[str] = []
        for _ in range(n * 8):
            rid = self.ids[rng.randrange(len(self.ids))]
            if rid not in self.busy and rid not in picked:
                picked.append(rid)
                if len(picked) == n:
                    self.busy.update(picked)
                    return picked
        return None

    def release(self, ids):
        self.busy.difference_update(ids)


async def preload(client, base: str, spec: LoadSpec, headers: dict, *, chunk: int = 500) -> _State:
    """Upsert every id of the pool at version 0 (creates the collection); the state to load from."""
    st = _State(spec)
    for lo in range(0, spec.pool, chunk):
        part = st.ids[lo:lo + chunk]
        body = {"namespace": spec.namespace, "vectors": [
            {"id": rid, "values": record_vector(rid, 0, spec.dim).tolist(), "metadata": {"v": 0}} for rid in part]}
        r = await client.post(f"{base}/vectors/upsert", json=body, headers=headers, timeout=120)
        if r.status_code != 200:
            raise RuntimeError(f"preload: upsert answered {r.status_code}: {r.text[:300]}")
        for rid in part:
            st.version[rid] = 0
    st.live = spec.pool
    return st


async def run_load(base: str, spec: LoadSpec, *, api_key: str | None = None, state: _State | None = None,
                   memory_pid: int | None = None, memory_every_s: float = 5.0, progress=None) -> LoadResult:
    """Run ``spec`` against the server at ``base`` (``http://host:port``); preloads the pool unless
    ``state`` (from :func:`preload`) is given. ``memory_pid``: sample that process tree's RSS.
    ``progress(done_s, result)`` is called about once a second."""
    import httpx

    headers = {"Api-Key": api_key} if api_key else {}
    res = LoadResult(spec=dict(vars(spec)))
    res.by_op = {op: {"n": 0, "errors": 0, "latency_s": []} for op in spec.mix}
    rng = random.Random(spec.seed)
    ops, weights = zip(*spec.mix.items())
    limits = httpx.Limits(max_connections=spec.max_in_flight, max_keepalive_connections=spec.max_in_flight)
    window: dict[int, list] = {}
    window_err: dict[int, int] = {}

    async with httpx.AsyncClient(timeout=spec.timeout_s, limits=limits) as client:
        st = state or await preload(client, base, spec, headers)
        gate = asyncio.Semaphore(spec.max_in_flight)
        t0 = time.perf_counter()

        def fail(op: str, msg: str, w: int):
            res.errors += 1
            res.by_op[op]["errors"] += 1
            window_err[w] = window_err.get(w, 0) + 1
            if len(res.error_samples) < 20:
                res.error_samples.append(f"{op} at {time.perf_counter() - t0:.1f} s: {msg[:300]}")

        async def one(op: str, scheduled: float):
            async with gate:
                sent = time.perf_counter()
                res.max_lag_s = max(res.max_lag_s, sent - scheduled)
                w = int((scheduled - t0) // spec.window_s)
                ids = None
                try:
                    if op == "query":
                        q = np.random.default_rng(rng.getrandbits(32)).standard_normal(spec.dim).astype(np.float32)
                        live_before = st.live
                        r = await client.post(f"{base}/query", headers=headers, json={
                            "namespace": spec.namespace, "vector": q.tolist(), "topK": spec.k})
                        problem = _check_query(r, spec.k, live_before, st)
                    else:
                        ids = st.take(rng, spec.batch)
                        if ids is None:  # too few ids free: a client-side skip, not a request
                            res.skipped += 1
                            return
                        if op == "upsert":
                            vers = [st.next_version + j for j in range(len(ids))]
                            st.next_version += len(ids)
                            r = await client.post(f"{base}/vectors/upsert", headers=headers, json={
                                "namespace": spec.namespace, "vectors": [
                                    {"id": rid, "values": record_vector(rid, v, spec.dim).tolist(),
                                     "metadata": {"v": v}} for rid, v in zip(ids, vers)]})
                            problem = None if r.status_code == 200 else f"{r.status_code}: {r.text}"
                            if problem is None:
                                st.live += sum(st.version.get(rid) is None for rid in ids)
                                st.version.update(zip(ids, vers))
                        elif op == "delete":
                            r = await client.post(f"{base}/vectors/delete", headers=headers,
                                                  json={"namespace": spec.namespace, "ids": ids})
                            problem = None if r.status_code == 200 else f"{r.status_code}: {r.text}"
                            if problem is None:
                                st.live -= sum(st.version.get(rid) is not None for rid in ids)
                                st.version.update(dict.fromkeys(ids))
                        else:
                            r = await client.get(f"{base}/vectors/fetch", headers=headers,
                                                 params={"ids": ids, "namespace": spec.namespace})
                            problem = _check_fetch(r, ids, st, spec.dim)
                except (httpx.HTTPError, OSError) as e:
                    problem = f"{type(e).__name__}: {e}"
                finally:
                    if ids is not None:
                        st.release(ids)
                done = time.perf_counter()
                res.sent += 1
                res.by_op[op]["n"] += 1
                if problem:
                    fail(op, problem, w)
                else:
                    res.ok += 1
                    res.by_op[op]["latency_s"].append(done - scheduled)
                    window.setdefault(w, []).append(done - scheduled)

        async def sample_memory():
            while True:
                res.memory.append((round(time.perf_counter() - t0, 2), tree_rss_bytes(memory_pid)))
                await asyncio.sleep(memory_every_s)

        mem_task = asyncio.create_task(sample_memory()) if memory_pid else None
        tasks: set[asyncio.Task] = set()
        n_total = int(spec.rate * spec.duration_s)
        last_progress = t0
        for i in range(n_total):
            scheduled = t0 + i / spec.rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            t = asyncio.create_task(one(rng.choices(ops, weights)[0], scheduled))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            if progress and time.perf_counter() - last_progress >= 1.0:
                last_progress = time.perf_counter()
                progress(last_progress - t0, res)
        if tasks:
            await asyncio.gather(*tasks)
        res.elapsed_s = time.perf_counter() - t0
        if mem_task:
            mem_task.cancel()
            res.memory.append((round(res.elapsed_s, 2), tree_rss_bytes(memory_pid)))
    res.achieved_rate = res.sent / res.elapsed_s if res.elapsed_s else 0.0
    for w in sorted(set(window) | set(window_err)):
        lat = window.get(w, [])
        p = percentiles(lat, (50, 99))
        res.timeline.append({"t": w * spec.window_s, "n": len(lat) + window_err.get(w, 0),
                             "errors": window_err.get(w, 0), "p50": p["p50"], "p99": p["p99"]})
    return res


def _check_query(r, k: int, live_before: int, st: _State) -> str | None:
    if r.status_code != 200:
        return f"{r.status_code}: {r.text}"
    body = r.json()
    if body.get("partial"):
        return f"partial answer, missing shards {body.get('missingShards')}"
    scores = [m["score"] for m in body["matches"]]
    # Writes in flight may add or remove records while this query runs: the live count lies
    # between the smallest and largest it could be, which bounds how many matches are fair.
    low = min(live_before, st.live) - st.spec.batch * st.spec.max_in_flight
    if len(scores) > k or len(scores) < min(k, max(low, 0)):
        return f"{len(scores)} matches for topK {k} with about {live_before} live records"
    if any(a < b for a, b in zip(scores, scores[1:])):
        return f"scores not in descending order: {scores}"
    return None


def _check_fetch(r, ids: list[str], st: _State, dim: int) -> str | None:
    if r.status_code != 200:
        return f"{r.status_code}: {r.text}"
    got = r.json()["vectors"]
    for rid in ids:
        want = st.version.get(rid)
        if want is None:
            if rid in got:
                return f"{rid} was deleted (acknowledged) but fetch returned it"
            continue
        if rid not in got:
            return f"{rid} at version {want} was acknowledged but fetch did not return it"
        rec = got[rid]
        if (rec.get("metadata") or {}).get("v") != want:
            return f"{rid}: fetch returned version {(rec.get('metadata') or {}).get('v')}, acknowledged {want}"
        # A cosine collection stores its vectors re-normalised (last-bit differences); another
        # version of the same id is a different random vector, far outside this tolerance.
        if not np.allclose(np.asarray(rec["values"], dtype=np.float32), record_vector(rid, want, dim),
                           rtol=0, atol=1e-6):
            return f"{rid}: fetched vector differs from the one acknowledged at version {want}"
    return None
