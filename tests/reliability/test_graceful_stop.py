"""Stopping ``gpusearch serve`` with SIGTERM (what Kubernetes, systemd, Docker and Ray's autoscaler send).

One real server (subprocess, local Ray, loopback), three lives on the same data:

1. Under a stream of upserts and queries, the Writer's upserts are held (``GPUSEARCH_FAULT_HOLD_WRITE``,
   serve/_faults.py) so that writes are under way for as long as the test needs; then SIGTERM. While
   it drains, ``/healthz`` says draining (503) and a new request gets 503 with Retry-After; once the
   hold is let go, the writes under way finish with 200, and the process exits 0 with its one stop
   line and no native stack dump, leaving no process behind. Every answer any client saw was 200 or
   503 (a refused connection only once the server had gone).
2. Restarted: every acknowledged record is there with its vector. Writes held again, SIGTERM, then a
   second SIGTERM during the drain: the process ends at once (status 128+15) and nothing survives it.
3. Restarted again, logging JSON: every record acknowledged in life 1 is still there, the command's
   own lines and every line of the Aggregator's log are JSON objects, and each fetch has its line
   with method, status, latency and collection as fields (no ids).

No step waits on a clock: each waits on a condition (a log line, a status, a process gone) with a
generous bound that only a broken server reaches.
"""
from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")

from server_proc import Server  # noqa: E402  (bench/server_proc.py)

DIM = 8
NS = "stop"
BOUND_S = 240.0  # only a broken server takes this long for any one step


def vectors(b: int, n: int = 20) -> np.ndarray:
    return np.random.default_rng([7, b]).standard_normal((n, DIM)).astype(np.float32)


def ids(b: int, n: int = 20) -> list[str]:
    return [f"s{b}-{j}" for j in range(n)]


def body(b: int) -> dict:
    return {"namespace": NS, "vectors": [{"id": i, "values": v.tolist()} for i, v in zip(ids(b), vectors(b))]}


def wait_for(what: str, cond, bound: float = BOUND_S, every: float = 0.1):
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"not within {bound} s: {what}")


def writer_log_says(server: Server, text: str) -> bool:
    for p in Path(server.ray_dir).glob("session_*/logs/serve/replica_gpusearch_Writer_*.log"):
        try:
            if text in p.read_text(errors="replace"):
                return True
        except OSError:
            pass
    return False


def healthz(server: Server) -> int | None:
    try:
        return httpx.get(server.url + "/healthz", timeout=10).status_code
    except httpx.TransportError:
        return None


def check_all_there(server: Server, acked: dict[int, int]) -> None:
    want = [(b, j, i) for b in sorted(acked) for j, i in enumerate(ids(b))]
    with httpx.Client(timeout=60) as c:
        got = {}
        for lo in range(0, len(want), 200):
            part = [i for _, _, i in want[lo:lo + 200]]
            r = c.get(server.url + "/vectors/fetch", params={"ids": part, "namespace": NS})
            assert r.status_code == 200, r.text
            got.update(r.json()["vectors"])
    missing = [i for _, _, i in want if i not in got]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:5]}"
    for b, j, i in want:
        v = vectors(b)[j]
        assert np.allclose(got[i]["values"], v, rtol=1e-5, atol=1e-6), i


@contextlib.contextmanager
def life(data: Path, env: dict, hold: Path, acked: dict[int, int] | None = None):
    """One life of the server on ``data``: started, checked to hold every record of ``acked``, then
    (whatever the test did) the hold file removed and every process of it killed."""
    server = Server(data, shards=2, replicas=1, env=env).start(timeout=BOUND_S)
    try:
        if acked is not None:
            server.wait_serving(NS, BOUND_S, dim=DIM)
            check_all_there(server, acked)
        yield server
    finally:
        hold.unlink(missing_ok=True)
        server.stop()


def test_sigterm_drains_exits_0_and_a_second_signal_stops_at_once(tmp_path):
    hold = tmp_path / "hold-writes"
    env = {"GPUSEARCH_FAULT_HOLD_WRITE": str(hold), "GPUSEARCH_DRAIN_GRACE_S": "600"}
    data = tmp_path / "data"

    # -- life 1: SIGTERM under load, writes under way finish -------------------------------------
    with life(data, env, hold) as server:
        lock = threading.Lock()
        acked: dict[int, int] = {}
        statuses: list[tuple[str, int]] = []
        unexpected: list[str] = []
        signalled = threading.Event()
        next_b = [0]

        def writes():
            with httpx.Client(timeout=BOUND_S) as c:
                while True:
                    with lock:
                        b, next_b[0] = next_b[0], next_b[0] + 1
                    try:
                        r = c.post(server.url + "/vectors/upsert", json=body(b))
                    except httpx.TransportError as e:
                        if not signalled.is_set():
                            unexpected.append(f"write {b}: {e!r} before the signal")
                        return
                    with lock:
                        statuses.append(("write", r.status_code))
                        if r.status_code == 200:
                            acked[b] = r.json()["upsertedCount"]
                    if r.status_code not in (200, 503):
                        unexpected.append(f"write {b}: {r.status_code} {r.text[:200]}")
                    elif r.status_code == 503:
                        if r.headers.get("retry-after") != "1":
                            unexpected.append(f"write {b}: 503 without Retry-After")
                        time.sleep(0.05)

        def queries():
            q = {"namespace": NS, "vector": [1.0] * DIM, "topK": 5}
            with httpx.Client(timeout=BOUND_S) as c:
                while True:
                    try:
                        r = c.post(server.url + "/query", json=q)
                    except httpx.TransportError as e:
                        if not signalled.is_set():
                            unexpected.append(f"query: {e!r} before the signal")
                        return
                    with lock:
                        statuses.append(("query", r.status_code))
                    # 404 until the first upsert has made the collection
                    if r.status_code not in (200, 503) and not (r.status_code == 404 and not acked):
                        unexpected.append(f"query: {r.status_code} {r.text[:200]}")
                    time.sleep(0.02)

        threads = [threading.Thread(target=writes, daemon=True) for _ in range(2)]
        threads.append(threading.Thread(target=queries, daemon=True))
        for t in threads:
            t.start()
        wait_for("20 batches acknowledged", lambda: len(acked) >= 20)
        hold.touch()
        wait_for("a write held in the Writer", lambda: writer_log_says(server, "GPUSEARCH_FAULT_HOLD_WRITE: holding"))
        with lock:
            acked_before = dict(acked)
        signalled.set()
        server.proc.send_signal(signal.SIGTERM)
        wait_for("/healthz says draining", lambda: healthz(server) == 503)
        r = httpx.post(server.url + "/query", json={"namespace": NS, "vector": [1.0] * DIM, "topK": 1}, timeout=30)
        assert r.status_code == 503 and r.headers.get("retry-after") == "1", r.text
        assert "stopping" in r.json()["message"]
        assert server.proc.poll() is None  # still draining: the held writes are under way
        hold.unlink()
        rc = server.proc.wait(timeout=BOUND_S)
        for t in threads:
            t.join(timeout=BOUND_S)
        log = server.log_tail(20000)
        assert rc == 0, log
        assert "SIGTERM: stopping" in log and "stopped in" in log and "every request under way finished" in log, log
        assert "*** SIGTERM received" not in log and "Traceback" not in log, log
        assert not unexpected, unexpected[:5]
        assert len(acked) > len(acked_before), "the writes held during the drain did not finish with 200"
        assert ("write", 503) in statuses or ("query", 503) in statuses
        wait_for("no process of the server left", lambda: not server.survivors(), every=0.5)

    # -- life 2: everything acknowledged is there; a second SIGTERM stops at once -----------------
    with life(data, env, hold, acked) as server:
        hold.touch()
        held = threading.Thread(target=lambda: _post_quietly(server.url + "/vectors/upsert", body(10_000)),
                                daemon=True)
        held.start()
        wait_for("a write held in the Writer", lambda: writer_log_says(server, "GPUSEARCH_FAULT_HOLD_WRITE: holding"))
        server.proc.send_signal(signal.SIGTERM)
        wait_for("/healthz says draining", lambda: healthz(server) == 503)
        server.proc.send_signal(signal.SIGTERM)
        rc = server.proc.wait(timeout=BOUND_S)
        log = server.log_tail(20000)
        assert rc == 128 + signal.SIGTERM, log
        assert "second SIGTERM: stopping at once" in log and "*** SIGTERM received" not in log, log
        wait_for("no process of the server left", lambda: not server.survivors(), every=0.5)

    # -- life 3: still every record acknowledged in life 1; logs as JSON ---------------------------
    with life(data, {**env, "GPUSEARCH_LOG_FORMAT": "json"}, hold, acked) as server:
        lines = server.log_tail(20000).splitlines()
        own = [json.loads(ln) for ln in lines if '"logger": "gpusearch.cli"' in ln]
        assert any(o["message"].startswith("app up in") for o in own), server.log_tail()
        # Ray's own start line is a JSON line too, not Ray's text format
        started = [ln for ln in lines if "Started a local Ray instance" in ln]
        assert started and all(json.loads(ln)["logger"].startswith("ray") for ln in started), started

        def fetch_lines():
            found = []
            for p in Path(server.ray_dir).glob("session_*/logs/serve/replica_gpusearch_Aggregator_*.log"):
                for ln in p.read_text(errors="replace").splitlines():
                    rec = json.loads(ln)  # every line of the file is one JSON object
                    if rec.get("path") == "/vectors/fetch":
                        found.append(rec)
            return found
        recs = wait_for("the fetches' lines in the Aggregator's JSON log", fetch_lines)
        assert all(r["http_method"] == "GET" and r["http_status"] == 200 and r["collection"] == NS
                   and r["latency_ms"] >= 0 and "ids" not in r["message"] for r in recs), recs[:3]


def _post_quietly(url: str, payload: dict) -> None:
    try:
        httpx.post(url, json=payload, timeout=BOUND_S)
    except httpx.TransportError:
        pass  # the server stopped at once: this write was never acknowledged
