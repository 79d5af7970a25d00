"""Shard followers against a live writer in the same process, and the WAL tail they read with."""
from __future__ import annotations

import re
import logging
import os
import threading

import numpy as np
import pytest

import gpusearch as gs
from gpusearch import metadata as md
from gpusearch import ops as ops_mod
from gpusearch import replica as replica_mod
from gpusearch import wal as wal_mod
from gpusearch.replica import ShardFollower
from gpusearch.shard import Shard
from gpusearch.wal import WALRecord, WALTail, WriteAheadLog, encode_record

DIM = 16
SHARDS = 2
GENRES = ["a", "b", "c"]


# -- helpers -------------------------------------------------------------------
def make_col(path, metric="cosine", index="Flat"):
    return gs.Collection.create(path, dim=DIM, metric=metric, index=index, shards=SHARDS, device="cpu", fsync=False)


def open_followers(col):
    return [ShardFollower.open(col.path, i, device="cpu") for i in range(SHARDS)]


def upsert(col, rng, ids):
    x = rng.standard_normal((len(ids), DIM)).astype(np.float32)
    genres, ns = rng.integers(0, 3, len(ids)), rng.integers(0, 99, len(ids))
    meta = [{"genre": GENRES[int(g)], "n": int(n)} for g, n in zip(genres, ns)]
    return col.upsert(ids, x, metadata=meta)


def ids_in_shard(shard, count, prefix="s"):
    out, i = [], 0
    while len(out) < count:
        rid = f"{prefix}{i}"
        if gs.shard_of(rid, SHARDS) == shard:
            out.append(rid)
        i += 1
    return out


def merged_search(fs, q, k, **kw):
    """The followers' answers merged by score, then id, as Collection merges its shards."""
    hits = [f.search(q, k, **kw) for f in fs]
    sign = 1.0 if fs[0].metric == "l2" else -1.0
    ids, scores, metas = [], [], []
    for qi in range(q.shape[0]):
        cand = [(sign * float(h.scores[qi, j]), rid, s, j)
                for s, h in enumerate(hits) for j, rid in enumerate(h.ids[qi]) if rid is not None]
        cand = sorted(cand, key=lambda c: (c[0], c[1]))[:k]
        ids.append([c[1] for c in cand])
        scores.append(np.array([sign * c[0] for c in cand], np.float32))
        if hits[0].metadata is not None:
            metas.append([hits[s].metadata[qi][j] for _, _, s, j in cand])
    return ids, scores, (metas if hits[0].metadata is not None else None)


def assert_same(col, fs, rng, *, k=10, filter=None, refresh=True):
    """Followers, merged, answer as the writer does: ids exactly, scores closely, metadata equal."""
    if refresh:
        for f in fs:
            f.refresh()
    q = rng.standard_normal((6, DIM)).astype(np.float32)
    want = col.search(q, k, filter=filter, include_metadata=True)
    ids, scores, metas = merged_search(fs, q, k, filter=filter, include_metadata=True)
    assert ids == want.ids
    for got, exp in zip(scores, want.scores):
        np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-5)
    assert metas == want.metadata
    assert sum(len(f) for f in fs) == len(col)


def crash(col):
    """Stop a writer as a kill would: files closed (locks released), no checkpoint."""
    for s in col._shards:
        s.wal.close()
    col._commits.close()
    col._pool.shutdown(wait=True)
    col._closed = True


def log_uncommitted(col, rng, ids_by_shard):
    """Log a multi-shard batch to the shard WALs without its commit record (a writer dying mid-commit)."""
    with col._write_lock:
        seq = col._next_seq()
        ops = {}
        for s, ids in ids_by_shard.items():
            x = rng.standard_normal((len(ids), DIM)).astype(np.float32)
            table, _ = md.normalize_metadata([{"genre": "a", "n": 1}] * len(ids), len(ids), col.schema)
            col._shards[s].log(seq, ops_mod.encode_upsert(ids, x, table, len(ids_by_shard)))
            ops[s] = ops_mod.Op(ops_mod.UPSERT, len(ids_by_shard), ids, x, table)
    return seq, ops


def wal_files(col, shard):
    return sorted((col.path / f"shard-{shard:03d}" / "wal").glob("wal-*.log"))


# -- following the writer ------------------------------------------------------
@pytest.mark.parametrize("metric, index", [("cosine", "Flat"), ("l2", "Flat"), ("cosine", "IVF4,Flat"),
                                           ("l2", "IVF4,Flat")])
def test_followers_match_writer(tmp_path, rng, metric, index):
    col = make_col(tmp_path / "c", metric, index)
    fs = open_followers(col)  # on an empty collection: everything comes from the WAL
    assert [f.applied_seq for f in fs] == [0, 0]
    ids = [f"id{i}" for i in range(400)]
    for lo in range(0, 400, 100):
        upsert(col, rng, ids[lo : lo + 100])
    assert_same(col, fs, rng)
    if index != "Flat":
        assert all(f.shard.backend.is_trained for f in fs)
    upsert(col, rng, ids[:30] + [f"new{i}" for i in range(20)])  # overwrites and inserts in one batch
    col.delete(ids[100:140])
    upsert(col, rng, ids_in_shard(0, 5, "only0-"))  # a one-shard batch: no commit record
    assert_same(col, fs, rng)
    assert_same(col, fs, rng, filter={"genre": {"$in": ["a", "c"]}}, k=25, refresh=False)
    live = set(ids[:100]) | set(ids[140:]) | {f"new{i}" for i in range(20)} | set(ids_in_shard(0, 5, "only0-"))
    found = [i for f in fs for i in f.ids_matching()]
    assert len(found) == len(live) and set(found) == live
    assert set(fs[0].ids_matching({"genre": "b"})) | set(fs[1].ids_matching({"genre": "b"})) == {
        i for i in live if col.fetch([i]).metadata[0]["genre"] == "b"}
    ask = ["id0", "id120", "new3", "nope"]
    got = {rid: (v, m) for f in fs for rid, v, m, _ in f.fetch(ask)}
    want = col.fetch(ask)
    assert sorted(got) == sorted(want.ids) and "id120" not in got
    for rid, v, m in zip(want.ids, want.vectors, want.metadata):
        np.testing.assert_array_equal(got[rid][0], v)
        assert got[rid][1] == m
    seq = col.stats()["sequence"]
    assert max(f.applied_seq for f in fs) == seq
    col.close()
    for f in fs:
        f.close()


def test_uncommitted_batch_waits_for_its_commit_or_is_skipped(tmp_path, rng, caplog):
    col = make_col(tmp_path / "c", metric="l2")
    upsert(col, rng, [f"id{i}" for i in range(60)])
    fs = open_followers(col)
    a0, a1 = ids_in_shard(0, 3, "x"), ids_in_shard(1, 3, "x")

    # Logged on both shards, not committed yet: invisible, and nothing after it may overtake it.
    seq, ops = log_uncommitted(col, rng, {0: a0, 1: a1})
    for f in fs:
        assert f.refresh() < seq
        assert f.stats()["pending"] == 1
        assert f.fetch(a0 + a1) == []
    col._commits.append(seq, b"")  # the commit arrives
    for s, op in ops.items():
        col._shards[s].apply(seq, op)
    for f in fs:
        assert f.refresh() == seq and f.stats()["pending"] == 0
    assert [r[0] for r in fs[0].fetch(a0 + a1)] == a0 and [r[0] for r in fs[1].fetch(a0 + a1)] == a1
    assert_same(col, fs, rng)

    # The writer died before committing: a later seq (here a committed multi-shard batch) proves it.
    b0, b1 = ids_in_shard(0, 2, "y"), ids_in_shard(1, 2, "y")
    dead, _ = log_uncommitted(col, rng, {0: b0, 1: b1})
    assert all(f.refresh() < dead for f in fs)
    with caplog.at_level(logging.WARNING, logger="gpusearch.replica"):
        later = upsert(col, rng, ["z1", "z2", "z3", "z4"] + a0[:1] + a1[:1]).sequence
        assert [f.refresh() for f in fs] == [later, later]
    assert f"skipping batch {dead}" in caplog.text
    assert all(f.fetch(b0 + b1) == [] for f in fs)
    assert_same(col, fs, rng)

    # Only this shard's own WAL moved on: that follower skips it, the other waits (with nothing to apply).
    c0, c1 = ids_in_shard(0, 2, "w"), ids_in_shard(1, 2, "w")
    dead, _ = log_uncommitted(col, rng, {0: c0, 1: c1})
    upsert(col, rng, ids_in_shard(0, 3, "v"))
    fs[0].refresh()
    fs[1].refresh()
    assert fs[0].stats()["pending"] == 0 and fs[0].applied_seq > dead
    assert fs[1].stats()["pending"] == 1 and fs[1].applied_seq < dead
    assert_same(col, fs, rng, refresh=False)
    upsert(col, rng, ids_in_shard(1, 3, "v"))
    assert fs[1].refresh() > dead and fs[1].stats()["pending"] == 0
    assert_same(col, fs, rng)
    col.close()


def test_checkpoint_rebuilds_only_followers_that_missed_records(tmp_path, rng):
    col = make_col(tmp_path / "c")
    upsert(col, rng, [f"id{i}" for i in range(100)])
    keeping_up = open_followers(col)
    behind = open_followers(col)
    upsert(col, rng, [f"id{i}" for i in range(50, 200)])
    col.delete([f"id{i}" for i in range(10)])
    for f in keeping_up:
        f.refresh()
    col.checkpoint()
    assert wal_files(col, 0) == [] and wal_files(col, 1) == []  # the records `behind` never read are gone
    upsert(col, rng, [f"id{i}" for i in range(150, 260)])
    assert_same(col, keeping_up, rng)
    assert [f.stats()["rebuilds"] for f in keeping_up] == [0, 0]
    assert_same(col, behind, rng)
    assert [f.stats()["rebuilds"] for f in behind] == [1, 1]
    # Both keep going in place afterwards, across another checkpoint.
    col.checkpoint()
    upsert(col, rng, [f"id{i}" for i in range(250, 300)])
    assert_same(col, keeping_up, rng)
    assert_same(col, behind, rng)
    assert [f.stats()["rebuilds"] for f in keeping_up + behind] == [0, 0, 1, 1]
    col.close()


def test_wal_dropped_between_snapshot_and_wal_read(tmp_path, rng, monkeypatch):
    """A checkpoint lands after a follower loaded the snapshot and before it reads the WAL."""
    col = make_col(tmp_path / "c")
    upsert(col, rng, [f"id{i}" for i in range(60)])
    col.checkpoint()
    upsert(col, rng, [f"id{i}" for i in range(40, 120)])
    real_build, calls = ShardFollower._build, []

    def build_then_checkpoint(self):
        state = real_build(self)
        if not calls:
            col.checkpoint()  # drops the WAL records this snapshot lacks
            upsert(col, rng, [f"id{i}" for i in range(100, 150)])
        calls.append(state)
        return state

    monkeypatch.setattr(ShardFollower, "_build", build_then_checkpoint)
    f = ShardFollower.open(col.path, 0, device="cpu")
    assert len(calls) == 2 and f.stats()["rebuilds"] == 1  # it noticed, and loaded the newer snapshot
    monkeypatch.undo()
    assert_same(col, [f, ShardFollower.open(col.path, 1, device="cpu")], rng)
    col.close()


def test_snapshot_replaced_while_loading(tmp_path, rng, monkeypatch):
    """A compaction deletes the segments a follower is about to read: it starts over on the new manifest."""
    col = make_col(tmp_path / "c")
    upsert(col, rng, [f"id{i}" for i in range(100)])
    col.delete([f"id{i}" for i in range(30)])
    col.checkpoint()
    real_load, calls = Shard._load_snapshot, []

    def compact_then_load(self, m):
        if not calls:
            col.compact()  # same seq as the checkpoint: new segments, alive and index files, old ones deleted
        calls.append(m["segments"])
        return real_load(self, m)

    monkeypatch.setattr(Shard, "_load_snapshot", compact_then_load)
    f = ShardFollower.open(col.path, 1, device="cpu")
    monkeypatch.undo()
    assert len(calls) == 2 and calls[0] != calls[1] and re.search(r"-c\d*\.arrow$", calls[1][0])
    assert f.shard.n_rows == len(f)
    assert_same(col, [ShardFollower.open(col.path, 0, device="cpu"), f], rng)
    col.close()


@pytest.mark.parametrize("index", ["Flat", "IVF4,Flat"])
def test_compaction_rebuilds_followers(tmp_path, rng, index):
    col = make_col(tmp_path / "c", index=index)
    ids = [f"id{i}" for i in range(400)]
    upsert(col, rng, ids)
    fs = open_followers(col)
    col.delete(ids[:120])
    upsert(col, rng, ids[200:260])
    assert_same(col, fs, rng)
    col.compact()
    upsert(col, rng, [f"new{i}" for i in range(30)])
    assert_same(col, fs, rng)
    assert [f.stats()["rebuilds"] for f in fs] == [1, 1]
    assert all(f.shard.n_rows == len(f) for f in fs)  # the dead rows went with the compaction
    late = open_followers(col)  # opened on the compacted snapshot plus WAL
    assert_same(col, late, rng)
    assert_same(col, fs, rng, filter={"genre": "a"}, refresh=False)
    col.close()


def test_follower_opened_mid_stream(tmp_path, rng):
    col = make_col(tmp_path / "c")
    upsert(col, rng, [f"id{i}" for i in range(120)])
    col.checkpoint()
    upsert(col, rng, [f"id{i}" for i in range(100, 180)])
    col.delete(["id1", "id2", "id150"])
    col.compact()
    upsert(col, rng, [f"id{i}" for i in range(170, 220)])
    fs = open_followers(col)  # snapshot (compacted) + WAL written since
    assert [f.stats()["rebuilds"] for f in fs] == [0, 0]
    assert_same(col, fs, rng, refresh=False)
    col.close()
    assert_same(gs.Collection.open(col.path, device="cpu"), fs, rng)  # close() checkpointed: still the same


def test_writer_crash_torn_tail_and_reopen(tmp_path, rng, caplog):
    col = make_col(tmp_path / "c")
    upsert(col, rng, [f"id{i}" for i in range(80)])
    fs = open_followers(col)
    upsert(col, rng, [f"id{i}" for i in range(60, 120)])
    last = col.stats()["sequence"]
    crash(col)
    # The writer died inside a write: half a frame at the end of shard 0's log.
    newest = wal_files(col, 0)[-1]
    with open(newest, "ab") as fh:
        fh.write(encode_record(last + 1, b"torn" * 50)[:37])
    assert [f.refresh() for f in fs] == [last, last]  # everything before the torn frame; the frame waits
    cursor = fs[0].stats()["wal_cursor"]
    assert cursor["offset"] == newest.stat().st_size - 37
    with caplog.at_level(logging.WARNING, logger="gpusearch.wal"):
        col = gs.Collection.open(col.path, device="cpu", fsync=False)  # recovery cuts the torn frame
    assert "cutting 37 bytes" in caplog.text
    assert_same(col, fs, rng)
    upsert(col, rng, [f"id{i}" for i in range(110, 160)])  # appended where the torn frame was
    col.delete(["id0", "id70"])
    assert_same(col, fs, rng)
    assert [f.stats()["rebuilds"] for f in fs] == [0, 0]
    col.close()


def test_collection_created_anew_under_the_same_path(tmp_path, rng):
    col = make_col(tmp_path / "c")
    upsert(col, rng, [f"old{i}" for i in range(80)])
    fs = open_followers(col)
    col.close()
    os.rename(col.path, tmp_path / "trash")  # dropped, as a catalog does, then created again
    col = make_col(tmp_path / "c")
    upsert(col, rng, [f"new{i}" for i in range(30)])
    assert_same(col, fs, rng)  # seqs started again from 1: the followers reloaded, they did not skip them
    assert all(i.startswith("new") for f in fs for i in f.ids_matching())
    col.close()
    os.rename(col.path, tmp_path / "trash2")
    gs.Collection.create(tmp_path / "c", dim=DIM + 1, shards=SHARDS, device="cpu", fsync=False).close()
    with pytest.raises(ValueError, match=r"was created anew as another collection \(dim 16 -> 17\)"):
        fs[0].refresh()


def test_noop_refresh_reads_nothing(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(replica_mod, "_RACY_NS", 0)  # a fresh manifest is otherwise parsed again for a while
    col = make_col(tmp_path / "c")
    upsert(col, rng, [f"id{i}" for i in range(50)])
    col.checkpoint()
    upsert(col, rng, [f"id{i}" for i in range(40, 90)])
    f = ShardFollower.open(col.path, 1, device="cpu")
    seq = f.refresh()
    before, shard = f.stats(), f.shard
    for _ in range(3):
        assert f.refresh() == seq
    after = f.stats()
    for key in ("wal_files_opened", "wal_bytes_read", "manifest_reads", "wal_cursor", "rebuilds"):
        assert after[key] == before[key], key
    assert f.shard is shard
    upsert(col, rng, [f"id{i}" for i in range(200, 260)])  # some of these land on shard 1
    assert f.refresh() > seq
    assert f.stats()["wal_bytes_read"] > after["wal_bytes_read"]
    col.close()
    f.close()


def test_refresh_while_searching(tmp_path, rng):
    col = make_col(tmp_path / "c")
    upsert(col, rng, [f"id{i}" for i in range(300)])
    fs = open_followers(col)
    stop, errors = threading.Event(), []
    q = rng.standard_normal((4, DIM)).astype(np.float32)

    def searcher():
        while not stop.is_set():
            try:
                for f in fs:
                    h = f.search(q, 5, filter={"genre": {"$ne": "b"}}, include_metadata=True)
                    assert h.counts.tolist() == [5] * h.nq
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for step in range(6):
            upsert(col, rng, [f"id{i}" for i in range(step * 40, step * 40 + 60)])
            if step == 2:
                col.compact()
            if step == 4:
                col.checkpoint()
            for f in fs:
                f.refresh()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert_same(col, fs, rng)
    col.close()


# -- errors --------------------------------------------------------------------
def test_open_and_input_errors(tmp_path, rng):
    with pytest.raises(ValueError, match="not a gpusearch collection"):
        ShardFollower.open(tmp_path / "nothing", 0)
    col = make_col(tmp_path / "c")
    upsert(col, rng, [f"id{i}" for i in range(20)])
    col.upsert(ids_in_shard(0, 1, "only0-"), np.ones((1, DIM), np.float32), metadata=[{"only0": "x"}])
    for bad in (2, -1, True, "0"):
        with pytest.raises(ValueError, match=r"shard must be an int in \[0, 2\)"):
            ShardFollower.open(col.path, bad, device="cpu")
    f0, f1 = open_followers(col)
    with pytest.raises(ValueError, match="must have 16 columns .* got 3"):
        f0.search(np.ones((2, 3), np.float32), 3)
    # an all-zero query on a cosine collection is answered (every score 0), as Pinecone answers it
    zero = f0.search(np.stack([np.ones(DIM), np.zeros(DIM)]).astype(np.float32), 3)
    assert zero.counts.tolist() == [3, 3] and not zero.scores[3:].any()
    with pytest.raises(ValueError, match="k must be between 1 and 10000, got 0"):
        f0.search(np.ones(DIM, np.float32), 0)
    with pytest.raises(TypeError, match="k must be an int"):
        f0.search(np.ones(DIM, np.float32), "3")
    with pytest.raises(TypeError, match="queries must be a 2-D array"):
        f0.search("hello", 3)
    with pytest.raises(TypeError, match="params must be a dict"):
        f0.search(np.ones(DIM, np.float32), 3, params=[1])
    # A field only the other shard has: missing from every record here, with or without the collection's schema.
    assert f1.search(np.ones(DIM, np.float32), 3, filter={"only0": "x"}).counts.tolist() == [0]
    assert f1.search(np.ones(DIM, np.float32), 3, filter={"only0": "x"}, schema=col.schema).counts.tolist() == [0]
    assert f1.ids_matching({"only0": {"$ne": "x"}}, schema=col.schema) == f1.ids_matching()
    assert [r[0] for r in f0.fetch(ids_in_shard(0, 1, "only0-"))] == ids_in_shard(0, 1, "only0-")
    with pytest.raises(TypeError, match="schema must be a dict"):
        f1.search(np.ones(DIM, np.float32), 3, schema=["only0"])
    f0.close()
    f0.close()
    with pytest.raises(ValueError, match="closed"):
        f0.search(np.ones(DIM, np.float32), 3)
    with pytest.raises(ValueError, match="closed"):
        f0.refresh()
    f1.close()
    col.close()


# -- WALTail -------------------------------------------------------------------
def _name(seq):
    return f"wal-{seq:020d}.log"


def test_tail_waits_for_a_partial_frame(tmp_path):
    d = tmp_path / "wal"
    d.mkdir()
    frames = [encode_record(s, f"payload-{s}".encode() * s) for s in (1, 2, 3)]
    path = d / _name(1)
    path.write_bytes(frames[0] + frames[1] + frames[2][:10])  # 3's header is incomplete
    tail = WALTail(d)
    assert tail.read_new() == [WALRecord(1, b"payload-1"), WALRecord(2, b"payload-2" * 2)]
    assert tail.cursor.offset == len(frames[0]) + len(frames[1]) and tail.cursor.last_seq == 2
    assert tail.read_new() == []
    with open(path, "ab") as fh:
        fh.write(frames[2][10:30])  # header complete, payload not
    assert tail.read_new() == []
    with open(path, "ab") as fh:
        fh.write(frames[2][30:])
    assert [r.seq for r in tail.read_new()] == [3]
    assert not tail.missed
    opened, read = tail.files_opened, tail.bytes_read
    assert tail.read_new() == [] and (tail.files_opened, tail.bytes_read) == (opened, read)


def test_tail_stops_at_a_bad_crc_until_it_is_rewritten(tmp_path):
    d = tmp_path / "wal"
    d.mkdir()
    good = encode_record(5, b"hello")
    bad = bytearray(encode_record(6, b"world"))
    bad[-1] ^= 0xFF
    (d / _name(5)).write_bytes(good + bytes(bad))
    tail = WALTail(d)
    assert [r.seq for r in tail.read_new()] == [5]
    assert tail.read_new() == []
    (d / _name(5)).write_bytes(good + encode_record(6, b"world") + encode_record(7, b"!"))  # as recovery + append would
    assert [r.seq for r in tail.read_new()] == [6, 7]


def test_tail_follows_rotation_and_deletion(tmp_path):
    d = tmp_path / "wal"
    wal, _ = WriteAheadLog.open(d, fsync=False)
    tail = WALTail(d)
    wal.append(1, b"a")
    wal.append(2, b"b")
    assert [r.seq for r in tail.read_new()] == [1, 2] and not tail.missed
    wal.append(3, b"c")
    wal.rotate()
    wal.append(4, b"d")
    assert [r.seq for r in tail.read_new()] == [3, 4] and tail.cursor.file == _name(4)
    # A checkpoint drops every file; the tail had read them through, the next file starts right after.
    wal.rotate()
    wal.drop_through(4, keep_newest=False)
    assert tail.read_new() == [] and tail.missed  # its file vanished: it cannot know what else did
    wal.append(5, b"e")
    assert [r.seq for r in tail.read_new()] == [5] and not tail.missed
    # Records 6 and 7 are dropped before the tail reads them: it says records may be missing.
    wal.append(6, b"f")
    wal.rotate()
    wal.append(7, b"g")
    wal.rotate()
    wal.drop_through(7, keep_newest=False)
    wal.append(9, b"i")
    assert [r.seq for r in tail.read_new()] == [9] and tail.missed
    wal.append(10, b"j")
    assert [r.seq for r in tail.read_new()] == [10] and not tail.missed
    wal.close()


def test_tail_after_seq_chunks_and_missing_files(tmp_path, monkeypatch):
    d = tmp_path / "wal"
    tail = WALTail(d)
    assert tail.read_new() == [] and not tail.missed  # no directory yet
    wal, _ = WriteAheadLog.open(d, fsync=False)
    for s in range(1, 11):
        if s in (4, 8):
            wal.rotate()
        wal.append(s, bytes(100))
    wal.close()
    assert [r.seq for r in tail.read_new(max_bytes=250)] == [1, 2, 3]  # stops once 250 bytes were returned
    assert [r.seq for r in tail.read_new(max_bytes=1)] == [4]
    assert [r.seq for r in tail.read_new()] == list(range(5, 11))
    late = WALTail(d, after_seq=8)
    assert [r.seq for r in late.read_new()] == [9, 10]
    assert late.files_opened == 1  # the files holding only older records are not read
    # A file listed but deleted before it is read: no error, and the tail says records may be missing.
    ghost = WALTail(d, after_seq=10)
    real_listdir = os.listdir
    monkeypatch.setattr(wal_mod.os, "listdir", lambda p: real_listdir(p) + [_name(11)])
    assert ghost.read_new() == [] and ghost.missed
    with pytest.raises(ValueError, match="max_bytes must be a positive int"):
        ghost.read_new(max_bytes=0)
    with pytest.raises(ValueError, match="after_seq must be an int"):
        WALTail(d, after_seq=-1)


def test_shard_catalog_follows_a_collection_made_again_with_another_shape(tmp_path):
    """Drop a collection and upsert again under its name with another vector length: the read side opens
    a follower of the new one (it used to answer every query with an error naming the data path, for good)."""
    from gpusearch.catalog import Catalog, ShardCatalog

    cat = Catalog(tmp_path, shards=1, device="cpu", fsync=False)
    cat.upsert("c", ["a", "b"], np.eye(3, dtype=np.float32)[:2])
    reader = ShardCatalog(tmp_path, 0, device="cpu")
    old = reader.follower("c")
    assert old.dim == 3 and old.search(np.ones(3, np.float32), 2).counts.tolist() == [2]
    cat.drop("c")
    cat.upsert("c", ["x"], np.ones((1, 4), np.float32), metric="l2")
    new = reader.follower("c")
    assert new is not old and new.dim == 4
    assert new.search(np.ones(4, np.float32), 2).counts.tolist() == [1]
    assert reader.follower("c") is new
