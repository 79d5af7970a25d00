"""Faults of a real ``gpusearch serve`` (subprocess, local Ray, loopback HTTP): issue 6's fault guarantees.

1. kill -9 of every process of the server while a client streams upserts: after a restart on the
   same data, every acknowledged record is there with its exact vector and metadata, a batch that
   was in flight is wholly there or wholly absent (a batch spans both shards), and the count adds up.
2. kill -9 (after a 1 s freeze) of one of a shard's two replicas under steady query load: zero
   failed or partial queries, every answer right, and the load did reach the killed replica (its
   log, at DEBUG) before it died, and queries kept flowing until its replacement was up.
3. kill -9 of the only replica of a shard, its replacement held back at the start of its constructor
   (``GPUSEARCH_FAULT_HOLD_SHARD_START``, serve/_faults.py) until the test has seen the outage:
   queries answer 200, ``partial`` naming that shard, within the shard timeout plus a margin; writes
   keep being acknowledged; once let go the shard comes back, catches up, and every record (those
   written while it was down included) is found again.

Two server processes in all: scenario A (2 shards x 2 replicas) serves tests 1 and 2 (test 1
restarts it), scenario B (2 shards x 1 replica, shard timeout 3 s) serves test 3.

The stream of test 1 is ``GPUSEARCH_KILL_TEST_RECORDS`` records (default 20,000; the issue's long
run is 200,000) and the kill comes once a seeded random share (30-80 %) of them is acknowledged,
or after ``GPUSEARCH_KILL_TEST_SECONDS`` (default 25 s; no cap when the record count is set).

The collections use the l2 metric: a cosine collection stores (and fetch returns) normalised
vectors, and these tests compare what fetch returns with what was sent, bit for bit.
"""
from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")

from server_proc import Server  # noqa: E402  (bench/server_proc.py; tests/conftest.py puts bench on sys.path)

from gpusearch.collection import shard_of  # noqa: E402

DIM = 16
RW = "fault-rw-key"
# DEBUG: each shard replica logs every batch it searches, which test 2 reads to see the load reach its victim.
ENV_A = {"GPUSEARCH_API_KEYS": f"{RW}:rw", "GPUSEARCH_SHARD_TIMEOUT_S": "20", "GPUSEARCH_METRIC": "l2",
         "GPUSEARCH_LOG_LEVEL": "DEBUG"}
H = {"Api-Key": RW}
SEED = int(os.environ.get("GPUSEARCH_KILL_TEST_SEED", "6"))


def batch_vectors(b: int, n: int) -> np.ndarray:
    """Batch ``b``'s vectors, recomputable after the crash."""
    return np.random.default_rng([SEED, b]).standard_normal((n, DIM)).astype(np.float32)


def batch_ids(b: int, n: int) -> list[str]:
    return [f"b{b}-{j}" for j in range(n)]


def fetch_all(c: httpx.Client, url: str, ns: str, ids: list[str], chunk: int = 200) -> dict:
    out = {}
    for lo in range(0, len(ids), chunk):
        r = c.get(url + "/vectors/fetch", params={"ids": ids[lo:lo + chunk], "namespace": ns}, headers=H)
        assert r.status_code == 200, r.text
        out.update(r.json()["vectors"])
    return out


# -- scenario A: 2 shards x 2 replicas ----------------------------------------------
class _Holder:
    server: Server | None = None


@pytest.fixture(scope="module")
def scenario_a(tmp_path_factory):
    h = _Holder()
    h.data = tmp_path_factory.mktemp("fault-a") / "data"
    h.server = Server(h.data, shards=2, replicas=2, env=ENV_A)
    try:
        yield h
    finally:
        h.server.stop()


def test_kill9_whole_server_mid_stream_keeps_every_acknowledged_record(scenario_a):
    total = int(os.environ.get("GPUSEARCH_KILL_TEST_RECORDS", "20000"))
    cap_s = float(os.environ.get("GPUSEARCH_KILL_TEST_SECONDS",
                                 "25" if "GPUSEARCH_KILL_TEST_RECORDS" not in os.environ else "7200"))
    server = scenario_a.server.start()
    pick = random.Random(SEED)
    sizes, n = [], 0
    while n < total:
        sizes.append(min(pick.randint(1, 500), total - n))
        n += sizes[-1]
    kill_at = int(total * pick.uniform(0.3, 0.8))

    lock = threading.Lock()
    next_batch = [0]
    acked: dict[int, int] = {}  # batch -> size, for every 200 answer
    started: set[int] = set()
    posting: set[int] = set()  # sent, answer not back yet
    errors_before_kill: list[str] = []
    killing = threading.Event()

    def sender():
        with httpx.Client(timeout=120) as c:
            while not killing.is_set():
                with lock:
                    b = next_batch[0]
                    if b >= len(sizes):
                        return
                    next_batch[0] += 1
                    started.add(b)
                m = sizes[b]
                X = batch_vectors(b, m)
                body = {"namespace": "stream", "vectors": [
                    {"id": i, "values": X[j].tolist(), "metadata": {"b": b, "j": j}}
                    for j, i in enumerate(batch_ids(b, m))]}
                try:
                    with lock:
                        posting.add(b)
                    r = c.post(server.url + "/vectors/upsert", json=body, headers=H)
                    with lock:
                        posting.discard(b)
                except httpx.HTTPError as e:
                    if not killing.is_set():
                        errors_before_kill.append(f"batch {b}: {e!r}")
                    return
                if r.status_code == 200:
                    assert r.json()["upsertedCount"] == m
                    with lock:
                        acked[b] = m
                elif not killing.is_set():
                    errors_before_kill.append(f"batch {b}: {r.status_code} {r.text[:200]}")
                    return

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(3)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    snapshot, t_snap = server.processes(), time.monotonic()
    while True:
        if time.monotonic() - t_snap > 5:  # keep the list of pids to kill fresh
            snapshot, t_snap = server.processes(), time.monotonic()
        with lock:
            done = sum(acked.values())
            posted = bool(posting)
        if (done >= kill_at or time.monotonic() - t0 > cap_s) and posted:
            break
        assert not errors_before_kill, errors_before_kill[:3]
        assert any(t.is_alive() for t in threads), "the stream ended before the kill point"
        time.sleep(0.005)
    killing.set()
    stream_s = time.monotonic() - t0
    killed = server.kill9(first=snapshot)
    for t in threads:
        t.join(timeout=60)
    assert not errors_before_kill, errors_before_kill[:3]
    assert server.survivors() == {}
    # The kill really took the whole server: driver, Ray's own processes and every replica were
    # running at the kill instant and none of them is left. (Not "each got our SIGKILL": Ray starts
    # raylet and GCS with a parent-death signal, so one may die with the driver before our signal
    # reaches it; a CI run failed once on exactly that.)
    titles = " ".join(snapshot.values())
    for part in ("gpusearch.cli serve", "raylet", "gcs_server", "ServeReplica:gpusearch:Writer",
                 "ServeReplica:gpusearch:Shard0", "ServeReplica:gpusearch:Shard1", "ServeController"):
        assert part in titles, f"{part} was not running at the kill: {sorted(set(snapshot.values()))}"
    alive = [pid for pid in snapshot if os.path.exists(f"/proc/{pid}") and
             Server._same_process(pid, snapshot[pid])]
    assert not alive, f"processes of the server outlived the kill: {alive}"
    unknown = sorted(started - set(acked))
    n_acked = sum(acked.values())
    assert unknown, "no request was in flight at the kill"
    assert n_acked > 0

    # Restart on the same data and read everything back.
    server.stop()
    server = scenario_a.server = Server(scenario_a.data, shards=2, replicas=2, env=ENV_A).start()
    with httpx.Client(timeout=120) as c:
        ack_ids = [i for b in sorted(acked) for i in batch_ids(b, acked[b])]
        got = fetch_all(c, server.url, "stream", ack_ids)
        missing = [i for i in ack_ids if i not in got]
        assert not missing, f"{len(missing)} acknowledged records lost after kill -9, e.g. {missing[:5]}"
        for b in sorted(acked):
            X = batch_vectors(b, acked[b])
            for j, i in enumerate(batch_ids(b, acked[b])):
                v = np.asarray(got[i]["values"], dtype=np.float32)
                assert np.array_equal(v, X[j]), f"{i}: the vector read back differs from the one acknowledged"
                assert got[i]["metadata"] == {"b": b, "j": j}, (i, got[i]["metadata"])
        landed = 0
        for b in unknown:
            ids = batch_ids(b, sizes[b])
            there = fetch_all(c, server.url, "stream", ids)
            assert len(there) in (0, len(ids)), (
                f"in-flight batch {b} is half there: {len(there)} of {len(ids)} records "
                f"(shards {sorted({shard_of(i, 2) for i in there})})")
            if there:
                landed += len(ids)
                X = batch_vectors(b, sizes[b])
                assert all(np.array_equal(np.asarray(there[i]["values"], np.float32), X[j]) for j, i in enumerate(ids))
        r = c.post(server.url + "/describe_index_stats", json={}, headers=H)
        assert r.status_code == 200, r.text
        count = r.json()["namespaces"]["stream"]["vectorCount"]
        assert count == n_acked + landed, (count, n_acked, landed)
        # Later batches (never sent) are absent: the stream really stopped at the kill.
        never = [b for b in range(len(sizes)) if b not in started][:3]
        if never:
            assert fetch_all(c, server.url, "stream", [i for b in never for i in batch_ids(b, sizes[b])]) == {}
    print(f"\nkill -9 after {stream_s:.1f} s of streaming: {n_acked} records acknowledged in {len(acked)} batches "
          f"({n_acked / stream_s:.0f}/s), {len(unknown)} batches in flight of which {landed} records landed whole; "
          f"{len(killed)} processes killed; all acknowledged records read back exactly")


def _replica_log(pid: int) -> Path | None:
    """The Serve log file a replica process writes (an open file of it)."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if re.search(r"/serve/replica_gpusearch_Shard\d_[^/]*\.log$", target):
            return Path(target)
    return None


def test_one_of_two_replicas_killed_under_load_fails_no_query(scenario_a, rng):
    server = scenario_a.server
    if server.proc is None:  # test 1 did not run
        server.start()
    elif server.proc.poll() is not None:  # test 1 failed with its server down
        server.stop()
        server = scenario_a.server = Server(scenario_a.data, shards=2, replicas=2, env=ENV_A).start()
    X = rng.standard_normal((400, DIM)).astype(np.float32)
    with httpx.Client(timeout=60) as c:
        r = c.post(server.url + "/vectors/upsert", headers=H, json={
            "namespace": "load", "vectors": [{"id": f"l{i}", "values": X[i].tolist()} for i in range(400)]})
        assert r.status_code == 200, r.text
    stop, failures, answered = threading.Event(), [], [0]

    def load(seed):
        pick = np.random.default_rng(seed)
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                i = int(pick.integers(400))
                try:
                    r = c.post(server.url + "/query", headers=H,
                               json={"namespace": "load", "vector": X[i].tolist(), "topK": 3})
                    body = r.json()
                    if r.status_code != 200 or body["partial"] or body["matches"][0]["id"] != f"l{i}":
                        failures.append(f"{r.status_code} {r.text[:300]}")
                    else:
                        answered[0] += 1
                except Exception as e:  # noqa: BLE001 - any failure counts
                    failures.append(repr(e))

    victims = server.replica_pids("Shard0")
    assert len(victims) == 2, server.processes()
    victim = victims[0]
    log = _replica_log(victim)
    assert log is not None, f"no Serve log file open in replica process {victim}"
    threads = [threading.Thread(target=load, args=(s,), daemon=True) for s in range(4)]
    for t in threads:
        t.start()
    try:
        # The load reaches the victim before it is frozen (its own log says so: a line per batch at DEBUG).
        t0 = time.monotonic()
        while (served_by_victim := log.read_text().count("searched a batch")) == 0 or answered[0] < 20:
            assert failures == [], failures[:5]
            assert time.monotonic() - t0 < 120, f"the load did not reach replica {victim} within 120 s"
            time.sleep(0.2)
        before = answered[0]
        # The replica hangs first, then dies: whatever was routed to it in that second is caught
        # in it when it goes and must still be answered (by Serve's router or the Aggregator's retry).
        os.kill(victim, signal.SIGSTOP)
        time.sleep(1.0)  # the length of the freeze (the fault itself), not a wait for something
        os.kill(victim, signal.SIGKILL)
        t_kill = time.monotonic()
        # Keep the load on until Serve has a replacement up and a little after it joined.
        while time.monotonic() - t_kill < 180:
            now = server.replica_pids("Shard0")
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the killed Shard0 replica was not replaced within 180 s: {server.replica_pids('Shard0')}")
        replaced_s = time.monotonic() - t_kill
        # Keep it on until queries have kept flowing after the replacement joined.
        joined = answered[0]
        while answered[0] < joined + 20:
            assert failures == [], failures[:5]
            assert time.monotonic() - t_kill < 300, "queries stopped flowing after the replacement joined"
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert failures == [], failures[:5]
    assert served_by_victim > 0, "the load never reached the replica that was killed"
    assert answered[0] > before + 20, "queries stopped flowing after the kill"
    # How the death was absorbed (reported, not asserted: which layer sees it depends on timing).
    # Serve's router retries a request whose slot reservation hit the dead replica itself and logs
    # "... because it has died"; a request already running there when it died comes back to the
    # Aggregator as ActorDiedError, which sends it again ("replica failed ... retrying").
    text = "".join(p.read_text(errors="replace") for p in Path(server.ray_dir).glob("session_*/logs/**/*")
                   if p.is_file() and p.suffix in (".err", ".out", ".log"))
    print(f"\nvictim had served {served_by_victim} searches; {answered[0]} queries answered, 0 failed; "
          f"replacement up {replaced_s:.1f} s after the kill; router saw the death "
          f"{text.count('because it has died')} times, Aggregator retried {text.count('replica failed')} requests")


# -- scenario B: 2 shards x 1 replica, shard timeout 3 s ---------------------------
TIMEOUT_S = 3.0
MARGIN_S = 4.0  # a loaded 2-core machine (load 28) took up to 5.9 s with a 3 s timeout
PARTIAL_ANSWERS = 3  # queries (each followed by a write) while shard 0 is held down


def test_only_replica_killed_partial_then_catches_up(tmp_path, rng):
    # While `hold` exists a shard replica waits at the start of its constructor (serve/_faults.py),
    # so the outage lasts until this test removes it, however fast Serve starts the replacement.
    hold = tmp_path / "hold-shard-start"
    env = {"GPUSEARCH_API_KEYS": f"{RW}:rw", "GPUSEARCH_SHARD_TIMEOUT_S": str(TIMEOUT_S), "GPUSEARCH_METRIC": "l2",
           "GPUSEARCH_FAULT_HOLD_SHARD_START": str(hold)}
    with Server(tmp_path / "data", shards=2, replicas=1, env=env) as server, httpx.Client(timeout=60) as c:
        server.start()
        vecs: dict[str, np.ndarray] = {}

        def upsert(prefix, n):
            X = rng.standard_normal((n, DIM)).astype(np.float32)
            ids = [f"{prefix}{len(vecs) + j}" for j in range(n)]
            r = c.post(server.url + "/vectors/upsert", headers=H, json={
                "namespace": "solo", "vectors": [{"id": i, "values": X[j].tolist()} for j, i in enumerate(ids)]})
            assert r.status_code == 200, r.text
            vecs.update(zip(ids, X))
            return ids

        upsert("p", 1000)
        probe = next(i for i in vecs if shard_of(i, 2) == 1)  # a record of the shard that stays up
        (victim,) = server.replica_pids("Shard0")
        hold.touch()
        os.kill(victim, signal.SIGKILL)
        t_kill = time.monotonic()
        # Serve starts the replacement, which waits in the hook: from here on the outage is held open
        # by the file alone, with the new replica's process already there.
        while not (held := [pid for pid in server.replica_pids("Shard0", starting=True) if pid != victim]):
            assert time.monotonic() - t_kill < 180, f"no replacement Shard0 process within 180 s: {server.processes()}"
            time.sleep(0.2)
        held_s = time.monotonic() - t_kill
        partial, written_down = [], []
        for _ in range(PARTIAL_ANSWERS):
            t = time.monotonic()
            r = c.post(server.url + "/query", headers=H,
                       json={"namespace": "solo", "vector": vecs[probe].tolist(), "topK": 5})
            took = time.monotonic() - t
            assert r.status_code == 200, f"query during the outage: {r.status_code} {r.text[:300]}"
            body = r.json()
            assert body["partial"] is True, f"a whole answer while shard 0 was held down: {body}"
            assert body["missingShards"] == [0], body
            assert took <= TIMEOUT_S + MARGIN_S, f"a partial answer took {took:.1f} s (timeout {TIMEOUT_S} s)"
            assert body["matches"][0]["id"] == probe
            assert all(shard_of(m["id"], 2) == 1 for m in body["matches"]), body["matches"]
            partial.append(took)
            written_down += upsert("d", 50)  # the Writer still acknowledges while shard 0 is down
        assert any(shard_of(i, 2) == 0 for i in written_down)
        hold.unlink()
        t_release = time.monotonic()
        server.wait_serving("solo", timeout=180, dim=DIM)
        back_s = time.monotonic() - t_release
        assert server.replica_pids("Shard0") == held, "the held replacement is not the replica that came back"
        # Back and caught up: every record found, exactly, by fetch and by search.
        got = {}
        for lo in range(0, len(vecs), 200):
            r = c.get(server.url + "/vectors/fetch", headers=H,
                      params={"ids": list(vecs)[lo:lo + 200], "namespace": "solo"})
            assert r.status_code == 200, r.text
            got.update(r.json()["vectors"])
        assert sorted(got) == sorted(vecs)
        assert all(np.array_equal(np.asarray(got[i]["values"], np.float32), v) for i, v in vecs.items())
        ids = list(vecs)
        for lo in range(0, len(ids), 500):
            part = ids[lo:lo + 500]
            r = c.post(server.url + "/query", headers=H, json={
                "namespace": "solo", "queries": [vecs[i].tolist() for i in part], "topK": 1})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["partial"] is False
            assert [res["matches"][0]["id"] for res in body["results"]] == part
        print(f"\nreplacement process held {held_s:.1f} s after the kill; {len(partial)} partial answers in "
              f"{min(partial):.2f}-{max(partial):.2f} s (timeout {TIMEOUT_S} s); {len(written_down)} records written "
              f"while shard 0 was down ({t_release - t_kill:.1f} s); whole again {back_s:.1f} s after the hold ended")
