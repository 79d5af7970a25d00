"""Persistence: round trips through close/open, checkpoints and compaction, crashes and torn WAL tails."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import gpusearch as gs


def _ids_vectors(col):
    res = {}
    for s in col._shards:
        for i, r in s.id_to_row.items():
            res[i] = s.store.host[r].copy()
    return res


@pytest.mark.parametrize("index", ["Flat", "IVF8,Flat", "HNSW16"])
def test_round_trip(tmp_path, rng, index):
    x = rng.standard_normal((600, 8)).astype(np.float32)
    meta = [{"i": i, "even": i % 2 == 0} for i in range(600)]
    col = gs.Collection.create(tmp_path / "c", dim=8, metric="l2", index=index, shards=2, device="cpu",
                               lineage={"model": "m", "version": "1"})
    col.upsert(range(600), x, metadata=meta)
    col.delete(ids=["5", "6"])
    col.upsert(["7"], x[8:9], metadata=[{"i": 77}])
    q = rng.standard_normal((4, 8)).astype(np.float32)
    before = col.search(q, k=10, filter={"even": False}, include_metadata=True)
    col.close()
    again = gs.Collection.open(tmp_path / "c", device="cpu")
    assert len(again) == 598 and again.lineage == {"model": "m", "version": "1"} and again.index == index
    after = again.search(q, k=10, filter={"even": False}, include_metadata=True)
    assert after.ids == before.ids and after.metadata == before.metadata
    assert again.fetch(["7"]).metadata == [{"i": 77}]
    assert again.fetch(["5"]).missing == ["5"]
    again.close()


def run_and_die(code: str, path) -> None:
    """Run ``code`` in a child process that then exits at once, with no close(): a crash after its writes."""
    prog = "import os, numpy as np, gpusearch as gs\n" + textwrap.dedent(code) + "\nos._exit(0)\n"
    subprocess.run([sys.executable, "-c", prog, str(path)], check=True, env={**os.environ, "GPUSEARCH_PROGRESS": "0"})


def test_reopen_after_crash_replays_wal(tmp_path):
    run_and_die(
        """
        import sys
        x = np.random.default_rng(1).standard_normal((100, 4)).astype(np.float32)
        col = gs.Collection.create(sys.argv[1], dim=4, metric="ip", shards=3, device="cpu")
        col.upsert(range(50), x[:50])
        col.checkpoint()
        col.upsert(range(50, 100), x[50:], metadata=[{"late": True}] * 50)
        col.delete(ids=["0"])
        """,
        tmp_path / "c",
    )
    x = np.random.default_rng(1).standard_normal((100, 4)).astype(np.float32)
    other = gs.Collection.open(tmp_path / "c", device="cpu")
    assert len(other) == 99
    assert other.fetch(["99"]).metadata == [{"late": True}]
    got = _ids_vectors(other)
    for i in range(1, 100):
        np.testing.assert_array_equal(got[str(i)], x[i])
    other.close()


def test_second_open_of_an_open_collection_is_refused(tmp_path):
    col = gs.Collection.create(tmp_path / "c", dim=2, device="cpu")
    with pytest.raises(RuntimeError, match="already open"):
        gs.Collection.open(tmp_path / "c", device="cpu")
    col.close()
    gs.Collection.open(tmp_path / "c", device="cpu").close()


def test_faiss_index_is_saved_not_retrained(tmp_path, rng, monkeypatch):
    x = rng.standard_normal((2000, 8)).astype(np.float32)
    col = gs.Collection.create(tmp_path / "c", dim=8, metric="l2", index="IVF16,Flat", device="cpu")
    col.upsert(range(2000), x)
    assert col.stats()["shards"][0]["index_trained"]
    col.close()
    import faiss

    def no_training(*a, **k):
        raise AssertionError("reopening retrained the index")

    monkeypatch.setattr(faiss.IndexIVFFlat, "train", no_training)
    again = gs.Collection.open(tmp_path / "c", device="cpu")
    assert again.stats()["shards"][0]["indexed_rows"] == 2000
    assert again.search(x[3], k=1, params={"nprobe": 16}).ids == [["3"]]


def test_train_with_no_later_writes_is_saved(tmp_path, rng):
    """train() changes the index without an op: its checkpoint must still write a new snapshot."""
    x = rng.standard_normal((200, 8)).astype(np.float32)
    col = gs.Collection.create(tmp_path / "c", dim=8, metric="l2", index="IVF16,Flat", device="cpu")
    col.upsert(range(200), x)
    col.checkpoint()
    assert not col.stats()["shards"][0]["index_trained"]  # 200 rows < 39 per centroid
    col.train(rng.standard_normal((1000, 8)).astype(np.float32))
    col.close()
    again = gs.Collection.open(tmp_path / "c", device="cpu")
    assert again.stats()["shards"][0]["index_trained"] and again.stats()["shards"][0]["indexed_rows"] == 200
    again.close()


def test_compact_reclaims_deleted_rows(tmp_path, rng):
    x = rng.standard_normal((300, 6)).astype(np.float32)
    col = gs.Collection.create(tmp_path / "c", dim=6, metric="l2", index="IVF4,Flat", shards=2, device="cpu")
    col.upsert(range(300), x, metadata=[{"i": i} for i in range(300)])
    col.delete(filter={"i": {"$lt": 100}})
    col.upsert(range(100, 150), x[100:150] + 1)  # overwrites leave dead rows too
    st = col.stats()
    assert sum(s["rows"] for s in st["shards"]) == 350 and st["records"] == 200
    q = rng.standard_normal((5, 6)).astype(np.float32)
    before = col.search(q, k=8, params={"nprobe": 4}, include_metadata=True)
    col.compact()
    st = col.stats()
    assert sum(s["rows"] for s in st["shards"]) == 200 and sum(s["deleted_rows"] for s in st["shards"]) == 0
    after = col.search(q, k=8, params={"nprobe": 4}, include_metadata=True)
    assert after.ids == before.ids and after.metadata == before.metadata
    col.close()
    files = sorted(p.name for p in (tmp_path / "c" / "shard-000").iterdir() if p.is_file())
    assert len([f for f in files if f.startswith("seg-")]) == 1
    again = gs.Collection.open(tmp_path / "c", device="cpu")
    assert again.search(q, k=8, params={"nprobe": 4}).ids == before.ids


def test_corrupt_wal_tail_is_cut(tmp_path, caplog):
    run_and_die(
        """
        import sys
        x = np.random.default_rng(2).standard_normal((20, 4)).astype(np.float32)
        col = gs.Collection.create(sys.argv[1], dim=4, metric="l2", device="cpu")
        col.upsert(range(10), x[:10])
        col.upsert(range(10, 20), x[10:20])
        """,
        tmp_path / "c",
    )
    wal_dir = tmp_path / "c" / "shard-000" / "wal"
    last = sorted(p for p in wal_dir.iterdir() if p.name.startswith("wal-"))[-1]
    data = bytearray(last.read_bytes())
    data[-5] ^= 0xFF  # flip a byte in the second batch's payload, as a torn write would leave it
    last.write_bytes(bytes(data) + b"\x00garbage-after-a-torn-write")
    with caplog.at_level("WARNING"):
        again = gs.Collection.open(tmp_path / "c", device="cpu")
    assert len(again) == 10  # the damaged batch is gone, the first one intact
    assert any("wal" in r.getMessage().lower() for r in caplog.records)
    x = np.random.default_rng(3).standard_normal((10, 4)).astype(np.float32)
    again.upsert(range(20, 30), x)  # the log is usable after the cut
    again.close()
    assert len(gs.Collection.open(tmp_path / "c", device="cpu")) == 20


CHILD = textwrap.dedent(
    """
    import sys, numpy as np, gpusearch as gs
    path, batch = sys.argv[1], 50
    col = gs.Collection.create(path, dim=8, metric="l2", shards=4, device="cpu")
    b = 0
    while True:
        rng = np.random.default_rng(b)
        ids = [f"b{b}-{j}" for j in range(batch)]
        col.upsert(ids, rng.standard_normal((batch, 8)).astype(np.float32), metadata=[{"batch": b}] * batch)
        print(b, flush=True)
        if b % 7 == 3:
            col.delete(ids=[f"b{b}-0"])
            print(f"d{b}", flush=True)
        b += 1
    """
)


@pytest.mark.parametrize("kill_after", [15, 40])
def test_sigkill_keeps_every_acknowledged_batch_and_nothing_partial(tmp_path, kill_after):
    path = tmp_path / "c"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "GPUSEARCH_PROGRESS": "0"})
    acked, deleted = [], []
    deadline = time.monotonic() + 120
    try:
        while len(acked) < kill_after and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            line = line.strip()
            (deleted if line.startswith("d") else acked).append(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # Lines the child printed before the kill but this loop had not read yet were acknowledged too.
    for line in proc.stdout.read().split():
        (deleted if line.startswith("d") else acked).append(line)
    assert len(acked) >= kill_after, "the writer died before it was killed"
    col = gs.Collection.open(path, device="cpu")
    present = {}
    for s in col._shards:
        for i in s.id_to_row:
            b = int(i[1:].split("-")[0])
            present.setdefault(b, set()).add(i)
    acked_batches = [int(a) for a in acked]
    deleted_batches = {int(d[1:]) for d in deleted}
    for b in present:  # nothing partial: a batch is all there (less its acknowledged delete) or absent
        expected = {f"b{b}-{j}" for j in range(50)}
        got = present[b]
        assert got in (expected, expected - {f"b{b}-0"}), f"batch {b} is partial: {len(got)} of 50"
        if b in deleted_batches:
            assert f"b{b}-0" not in got
    for b in acked_batches:  # every acknowledged batch is there, with the right vectors
        assert b in present, f"acknowledged batch {b} was lost"
        rng = np.random.default_rng(b)
        x = rng.standard_normal((50, 8)).astype(np.float32)
        f = col.fetch([f"b{b}-{j}" for j in range(1, 50)])
        np.testing.assert_array_equal(f.vectors, x[1:])
        assert f.metadata[0] == {"batch": b}
    assert max(present) <= max(acked_batches) + 1  # at most the one batch in flight
    col.close()


def _abandon(col):
    """Release a collection's files without a checkpoint, as a crash would leave them."""
    for s in col._shards:
        s.close()
    col._commits.close()


def test_disk_full_on_one_shard_leaves_nothing_partial(tmp_path, rng):
    import errno

    x = rng.standard_normal((200, 4)).astype(np.float32)
    col = gs.Collection.create(tmp_path / "c", dim=4, metric="l2", shards=2, device="cpu")
    col.upsert(range(100), x[:100])
    victim = col._shards[1].wal
    real_append = victim.append

    def full(seq, payload):
        raise OSError(errno.ENOSPC, "No space left on device")

    victim.append = full
    with pytest.raises(OSError, match="No space left"):
        col.upsert(range(100, 200), x[100:])  # spans both shards; shard 0's part is logged first or not at all
    assert len(col) == 100 and col.fetch(["150"]).missing == ["150"]
    victim.append = real_append
    col.upsert(range(100, 120), x[100:120])  # space is back: writes go on
    assert len(col) == 120
    _abandon(col)
    again = gs.Collection.open(tmp_path / "c", device="cpu")
    assert sorted(int(i) for s in again._shards for i in s.id_to_row) == list(range(120))
    again.close()


@pytest.mark.parametrize("index", ["HNSW16", "PCA8,HNSW16", "IVF4,PQ4x4", "HNSW16,Flat"])
def test_compact_rebuilds_every_index_kind(tmp_path, rng, index):
    x = rng.standard_normal((1200, 16)).astype(np.float32)
    col = gs.Collection.create(tmp_path / "c", dim=16, metric="l2", index=index, device="cpu", fsync=False)
    col.upsert(range(1200), x)
    assert col.stats()["shards"][0]["index_trained"]
    col.delete(ids=[str(i) for i in range(0, 1200, 2)])
    col.compact()  # fewer rows than training wanted: the index is rebuilt (and retrained) all the same
    st = col.stats()["shards"][0]
    assert st["rows"] == 600 and st["indexed_rows"] == 600 and st["index_trained"]
    got = col.search(x[1::2][:10], k=1).ids
    assert sum(g == [str(i)] for g, i in zip(got, range(1, 20, 2))) >= 8


def test_a_field_of_several_kinds_survives_checkpoints_replay_and_compaction(tmp_path):
    """A field that held ints when a checkpoint was written and strings after it (Pinecone allows both in
    one field) reads back value for value, with its types, from segments and the WAL, and filters by kind."""
    run_and_die(
        """
        import sys
        col = gs.Collection.create(sys.argv[1], dim=2, metric="l2", shards=2, device="cpu")
        col.upsert([f"i{i}" for i in range(6)], np.ones((6, 2), np.float32), metadata=[{"code": i} for i in range(6)])
        col.checkpoint()  # segments hold "code" as an int column
        col.upsert(["s1", "s2", "f1", "b1"], np.ones((4, 2), np.float32),
                   metadata=[{"code": "5"}, {"code": "abc"}, {"code": 2.5}, {"code": True}])
        col.update("i1", set_metadata={"code": ["5", "x"]})
        """,
        tmp_path / "c",
    )
    want = {**{f"i{i}": i for i in range(6)}, "i1": ["5", "x"], "s1": "5", "s2": "abc", "f1": 2.5, "b1": True}
    for step in ("replayed", "checkpointed", "compacted"):
        col = gs.Collection.open(tmp_path / "c", device="cpu")
        assert col.schema["code"] == "mixed"
        ids = sorted(want)
        got = {i: m["code"] for i, m in zip(ids, col.fetch(ids).metadata)}
        assert got == want and [type(got[i]) for i in ids] == [type(want[i]) for i in ids], step
        q = np.ones((1, 2), np.float32)

        def hits(flt):
            return sorted(col.search(q, k=20, filter=flt).ids[0])

        assert hits({"code": 5}) == ["i5"]  # the number 5, never the string "5"
        assert hits({"code": "5"}) == ["i1", "s1"]  # the string, also as an element of a list
        assert hits({"code": {"$gt": 2}}) == ["f1", "i3", "i4", "i5"]  # numbers only; strings, bools fail $gt 2
        assert hits({"code": {"$gte": "a"}}) == ["s2"]
        assert hits({"code": {"$ne": 0}}) == sorted(set(want) - {"i0"})
        assert hits({"code": {"$in": [True]}}) == ["b1"]
        if step == "replayed":
            col.checkpoint()
        elif step == "checkpointed":
            col.compact()
        col.close()
