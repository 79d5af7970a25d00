"""Shard replicas without a shared file system (gpusearch.mirror): a follower reading a copy of the writer's
files made only from sync answers, through writes, deletes, multi-shard batches, checkpoints, compactions,
a writer reopening, and the collection made anew."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import gpusearch as gs
from gpusearch.errors import CollectionNotFoundError
from gpusearch.mirror import ShardMirror, sync_answer
from gpusearch.replica import ShardFollower
from gpusearch.errors import CollectionReplacedError

DIM = 8


def _vecs(rng, n):
    return rng.standard_normal((n, DIM)).astype("float32")


class Writer:
    """The writer's side as a transport would reach it: the open collection, or none."""

    def __init__(self, col):
        self.col = col
        self.calls = 0

    def fetch(self, shard):
        def fetch(have, epoch, token=None, budget=None):
            self.calls += 1
            if self.col is None:
                raise CollectionNotFoundError("no collection named 'docs'", name="docs")
            kw = {} if budget is None else {"budget": budget}
            return sync_answer(self.col, shard, dict(have), epoch, token, **kw)
        return fetch


def shard_state(col, shard: int) -> dict:
    s = col._shards[shard]
    return {rid: col.fetch([rid]).vectors[0].tobytes() for rid in s.id_to_row}


def follower_state(f) -> dict:
    ids = f.ids_matching(None)
    return {rid: v.tobytes() for rid, v, _m, _sp in f.fetch(ids)} if ids else {}


@pytest.mark.parametrize("budget", [None, 3000])
def test_a_mirrored_follower_reads_its_writes_through_everything(tmp_path, budget):
    """After every acknowledged write the mirror syncs and the follower has it (read-your-writes); the
    follower ends equal to the writer's shard. A budget of 3,000 bytes makes every segment arrive in pieces
    staged over several answers."""
    rng = np.random.default_rng(0)
    col = gs.Collection.create(tmp_path / "w" / "docs", dim=DIM, metric="ip", shards=3, device="cpu", fsync=False)
    w = Writer(col)
    fetches = {s: w.fetch(s) for s in range(3)}
    if budget is not None:
        fetches = {s: (lambda f: lambda have, epoch, token: f(have, epoch, token, budget))(w.fetch(s))
                   for s in range(3)}
    mirrors = [ShardMirror(tmp_path / f"node{s}" / "docs", s, fetches[s]) for s in range(3)]
    for m in mirrors:
        m.sync()
    followers = [ShardFollower.open(m.path, m.shard, device="cpu") for m in mirrors]
    i = 0
    for step in range(60):
        n = int(rng.integers(1, 30))
        ids = [f"r{i + j}" for j in range(n)]
        i += n
        seq = col.upsert(ids, _vecs(rng, n), [{"step": step}] * n).sequence  # most batches span shards
        if step % 5 == 4:
            col.delete([f"r{i - 3}", f"r{i // 2}"])
        if step % 7 == 6:
            col.checkpoint()
        if step % 17 == 16:
            col.compact()
        probe = ids[0]
        owner = gs.shard_of(probe, 3)
        for m, f in zip(mirrors, followers):
            m.sync()
            f.refresh()
        assert followers[owner].refresh() >= seq  # it covers the write that touched it
        got = followers[owner].fetch([probe])
        assert [r[0] for r in got] == [probe]
    for s, (m, f) in enumerate(zip(mirrors, followers)):
        assert follower_state(f) == shard_state(col, s)
        q = _vecs(rng, 3)
        want = col.search(q, k=5, filter={"step": {"$gte": 10}})
        # each follower answers for its own shard: the merged answer equals the writer's
    merged = sorted(((float(sc), rid) for f in followers
                     for rid, sc in zip(f.search(q[0], k=5, filter={"step": {"$gte": 10}}).ids[0],
                                        f.search(q[0], k=5, filter={"step": {"$gte": 10}}).scores[0])
                     if rid is not None), key=lambda t: (-t[0], t[1]))[:5]
    assert [rid for _, rid in merged] == want.ids[0]
    if budget is not None:
        assert max(m.syncs for m in mirrors) > 60  # pieces really came over several answers
    for f in followers:
        f.close()
    col.close()


def test_mirror_follows_a_concurrent_writer(tmp_path):
    """The writer writes, checkpoints and compacts in one thread while the mirror syncs and the follower
    refreshes in another; at the end they agree."""
    rng = np.random.default_rng(1)
    col = gs.Collection.create(tmp_path / "w" / "docs", dim=DIM, metric="ip", shards=2, device="cpu", fsync=False)
    w = Writer(col)
    m = ShardMirror(tmp_path / "node" / "docs", 1, w.fetch(1))
    m.sync()
    f = ShardFollower.open(m.path, 1, device="cpu")
    stop = threading.Event()
    errors = []

    def write():
        r = np.random.default_rng(2)
        try:
            for step in range(300):
                col.upsert([f"c{step}-{j}" for j in range(10)], _vecs(r, 10))
                if step % 9 == 0:
                    col.delete([f"c{step // 2}-{j}" for j in range(3)])
                if step % 25 == 0:
                    col.checkpoint()
                if step % 80 == 79:
                    col.compact()
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)
        finally:
            stop.set()

    t = threading.Thread(target=write)
    t.start()
    while not stop.is_set():
        m.sync()
        f.refresh()
    t.join()
    assert not errors, errors
    m.sync()
    f.refresh()
    assert follower_state(f) == shard_state(col, 1)
    f.close()
    col.close()


def test_mirror_after_the_writer_reopens_and_when_the_collection_is_made_anew_or_dropped(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "w" / "docs"
    col = gs.Collection.create(path, dim=DIM, shards=1, device="cpu", fsync=False)
    col.upsert(["a", "b"], _vecs(rng, 2))
    w = Writer(col)
    m = ShardMirror(tmp_path / "node" / "docs", 0, w.fetch(0))
    m.sync()
    f = ShardFollower.open(m.path, 0, device="cpu")
    epoch = m.epoch
    # the writer restarts (a new epoch): the logs come over whole again, and the follower goes on
    for s in col._shards:
        s.close()
    col._commits.close()
    w.col = col = gs.Collection.open(path, device="cpu", fsync=False)
    col.upsert(["c"], _vecs(rng, 1))
    m.sync()
    assert m.epoch != epoch
    f.refresh()
    assert sorted(f.ids_matching(None)) == ["a", "b", "c"]
    # dropped and made again with another dim: the copy is made afresh and the follower says so
    col.close()
    import shutil

    shutil.rmtree(path)
    w.col = col = gs.Collection.create(path, dim=DIM + 1, shards=1, device="cpu", fsync=False)
    col.upsert(["z"], rng.standard_normal((1, DIM + 1)).astype("float32"))
    m.sync()
    with pytest.raises(CollectionReplacedError):
        f.refresh()
    f.close()
    f = ShardFollower.open(m.path, 0, device="cpu")
    assert f.ids_matching(None) == ["z"] and f.dim == DIM + 1
    f.close()
    # dropped: the mirror says so and removes its copy
    col.close()
    w.col = None
    with pytest.raises(CollectionNotFoundError):
        m.sync()
    assert not m.path.exists()
