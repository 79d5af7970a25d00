"""The Writer's log and snapshots at a storage URI (gpusearch.durable): a Writer rebuilt from the URI alone
holds every acknowledged write, a fenced Writer acknowledges nothing, and void writes are never replayed."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gpusearch.catalog import Catalog
from gpusearch.durable import (DurableStore, FencedError, LocalLease, NotDurableError, decode_writes,
                               encode_writes)
from gpusearch.storage import Location

DIM = 8


def _vecs(n, seed):
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _writer(tmp_path, uri, lease, name, **kw):
    store = DurableStore(uri, lease, shards=2, **kw)
    store.take_over(tmp_path / name)
    return store, Catalog(tmp_path / name, shards=2, device="cpu", fsync=False, durable=store)


def _ids_and_vectors(cat, name):
    col = cat.get(name)
    ids = sorted(col.list_ids(limit=100000)[0])
    res = col.fetch(ids)
    return {i: np.asarray(res.vectors[j], dtype=np.float32) for j, i in enumerate(res.ids)}


def test_log_objects_round_trip_and_refuse_damage():
    writes = [(3, {0: b"abc", 1: b""}), (5, {1: b"x" * 1000})]
    data = encode_writes(writes)
    assert decode_writes(data) == writes
    with pytest.raises(ValueError, match="checksum"):
        decode_writes(data[:-5] + b"\0" + data[-4:], "obj")
    with pytest.raises(ValueError, match="not a gpusearch log object"):
        decode_writes(b"nonsense", "obj")


def test_a_new_writer_rebuilds_every_acknowledged_write_from_the_uri(tmp_path):
    uri, lease = str(tmp_path / "bucket"), LocalLease()
    store, cat = _writer(tmp_path, uri, lease, "node-a")
    want = {}
    for b in range(6):
        ids = [f"r{b}-{i}" for i in range(20)]
        v = _vecs(20, b)
        cat.upsert("docs", ids, v, [{"b": b, "tag": "x" if i % 2 else "y"} for i in range(20)])
        want.update(zip(ids, v))
    cat.delete("docs", ["r0-0", "r0-1"])
    del want["r0-0"], want["r0-1"]
    cat.create("empty", dim=4)
    cat.set_alias("latest", "docs")
    store.snapshot("docs")  # a snapshot mid-stream: the rebuild starts from it and replays the rest
    cat.upsert("docs", ["late"], _vecs(1, 99))
    want["late"] = _vecs(1, 99)[0]

    # Node A is gone: nothing of its directory is read again.
    store2, cat2 = _writer(tmp_path, uri, lease, "node-b")
    got = _ids_and_vectors(cat2, "docs")
    assert set(got) == set(want)
    for i, v in want.items():
        np.testing.assert_allclose(got[i], v, rtol=1e-5, atol=1e-6)
    assert cat2.names() == ["docs", "empty"] and cat2.aliases() == {"latest": "docs"}
    assert cat2.get("docs").ids_matching({"b": 5}) and len(cat2.get("docs").ids_matching({"b": 5})) == 20
    rec = store2.recovery["collections"]["docs"]
    assert rec["log_writes"] == 1 and rec["snapshot_sequence"] > 0

    # The old Writer is fenced: its next write is refused, never acknowledged, and never replayed.
    with pytest.raises(FencedError):
        cat.upsert("docs", ["zombie"], _vecs(1, 7))
    with pytest.raises(FencedError):
        cat.upsert("docs", ["zombie2"], _vecs(1, 8))
    cat2.upsert("docs", ["after"], _vecs(1, 5))
    store3, cat3 = _writer(tmp_path, uri, lease, "node-c")
    got3 = _ids_and_vectors(cat3, "docs")
    assert "zombie" not in got3 and "zombie2" not in got3 and "after" in got3 and len(got3) == len(want) + 1
    for c in (cat, cat2, cat3):
        c.close()


def test_a_write_the_uri_did_not_take_is_not_acknowledged_and_ships_before_the_next(tmp_path, monkeypatch):
    uri, lease = str(tmp_path / "bucket"), LocalLease()
    store, cat = _writer(tmp_path, uri, lease, "a")
    cat.upsert("docs", ["a"], _vecs(1, 1))
    real = Location.put_bytes
    broken = {"on": True}

    def put(self, rel, data):
        if broken["on"] and "/log/" in rel:
            raise OSError("bucket unreachable")
        return real(self, rel, data)

    monkeypatch.setattr(Location, "put_bytes", put)
    with pytest.raises(NotDurableError):
        cat.upsert("docs", ["b"], _vecs(1, 2))
    with pytest.raises(NotDurableError, match="nothing was written"):  # refused before touching anything
        cat.upsert("docs", ["c"], _vecs(1, 3))
    assert "c" not in _ids_and_vectors(cat, "docs")
    broken["on"] = False
    cat.upsert("docs", ["d"], _vecs(1, 4))  # ships "b" first, then itself
    _, cat2 = _writer(tmp_path, uri, lease, "b")
    assert sorted(_ids_and_vectors(cat2, "docs")) == ["a", "b", "d"]
    cat.close(), cat2.close()


def test_void_log_objects_and_snapshots_of_a_fenced_writer_are_skipped(tmp_path):
    """A fenced Writer's objects stored after the takeover (its lease check then fails) lie at the URI;
    the next rebuild must not replay them even though they are well formed."""
    uri, lease = str(tmp_path / "bucket"), LocalLease()
    store, cat = _writer(tmp_path, uri, lease, "a")
    cat.upsert("docs", ["a"], _vecs(1, 1))
    store2, cat2 = _writer(tmp_path, uri, lease, "b")
    with pytest.raises(FencedError):
        cat.upsert("docs", ["void"], _vecs(1, 2))  # its object is stored, then the lease check fails
    store.fenced = False
    with pytest.raises(FencedError):
        store.snapshot("docs")  # a snapshot holding "void"
    loc = Location(uri)
    assert any("void" not in k for k in loc.list("collections"))
    cat2.upsert("docs", ["b"], _vecs(1, 3))
    _, cat3 = _writer(tmp_path, uri, lease, "c")
    assert sorted(_ids_and_vectors(cat3, "docs")) == ["a", "b"]
    terms = sorted(loc.list("terms"))
    assert len(terms) == 3 and json.loads(loc.get_bytes(f"terms/{terms[1]}"))["starts"]
    for c in (cat, cat2, cat3):
        c.close()


def test_drop_and_refused_create_are_durable_too(tmp_path, monkeypatch):
    uri, lease = str(tmp_path / "bucket"), LocalLease()
    store, cat = _writer(tmp_path, uri, lease, "a")
    cat.upsert("gone", ["a"], _vecs(1, 1))
    cat.upsert("kept", ["a"], _vecs(1, 1))
    cat.drop("gone")
    real = Location.put_bytes

    def put(self, rel, data):
        if rel.startswith("catalog/"):
            raise OSError("bucket unreachable")
        return real(self, rel, data)

    monkeypatch.setattr(Location, "put_bytes", put)
    with pytest.raises(OSError):
        cat.create("new", dim=4)
    assert cat.names() == ["kept"]  # the refused create left nothing behind
    monkeypatch.setattr(Location, "put_bytes", real)
    _, cat2 = _writer(tmp_path, uri, lease, "b")
    assert cat2.names() == ["kept"]
    cat.close(), cat2.close()


def test_snapshots_start_in_the_background_and_prune_the_log(tmp_path):
    uri, lease = str(tmp_path / "bucket"), LocalLease()
    store, cat = _writer(tmp_path, uri, lease, "a", snapshot_every_bytes=1, background_snapshots=False)
    for b in range(5):
        cat.upsert("docs", [f"x{b}"], _vecs(1, b))
    shipper = store.shippers["docs"]
    assert shipper.since_snapshot > 0
    info = store.snapshot("docs")
    loc = Location(uri)
    assert not [k for k in loc.list(f"{shipper.prefix}/log") if int(k.split("-")[1]) <= info["sequence"]]
    _, cat2 = _writer(tmp_path, uri, lease, "b")
    assert len(cat2.get("docs")) == 5
    cat.close(), cat2.close()


def test_take_over_refuses_a_directory_with_collections(tmp_path):
    uri, lease = str(tmp_path / "bucket"), LocalLease()
    store, cat = _writer(tmp_path, uri, lease, "a")
    cat.upsert("docs", ["a"], _vecs(1, 1))
    with pytest.raises(ValueError, match="empty directory"):
        DurableStore(uri, lease, shards=2).take_over(tmp_path / "a")
    with pytest.raises(ValueError, match="shards=2"):
        DurableStore(uri, lease, shards=3).take_over(tmp_path / "z")
    cat.close()


def _seeded_mirror(tmp_path, col, uri, shard, corrupt: bool = False):
    from gpusearch.durable import seed_sources
    from gpusearch.mirror import ShardMirror, sync_answer

    m = ShardMirror(tmp_path / f"replica-{shard}" / "docs", shard,
                    lambda have, epoch, token: sync_answer(col, shard, have, epoch, token))
    offered, src = 0, seed_sources(uri, shard)["docs"]
    for rel, size, sha, key in src["files"]:
        dest = m.seed(rel, size, sha)
        Location(src["uri"]).download(key, dest, size=size, sha256=sha)
        if corrupt:  # same name and size, other bytes, and a hash that matches them: the writer must refuse it
            import hashlib

            data = bytearray(dest.read_bytes())
            data[-1] ^= 0xFF
            dest.write_bytes(bytes(data))
            m._seeds[rel] = (size, hashlib.sha256(bytes(data)).hexdigest())
        offered += size
    return m, offered


@pytest.mark.parametrize("corrupt", [False, True])
def test_a_new_replica_copies_its_shard_from_the_snapshot_and_only_the_rest_from_the_writer(tmp_path, corrupt):
    from gpusearch.replica import ShardFollower

    uri, lease = str(tmp_path / "bucket"), LocalLease()
    store, cat = _writer(tmp_path, uri, lease, "a")
    X = _vecs(3000, 1)
    cat.upsert("docs", [f"r{i}" for i in range(3000)], X)
    col = cat.get("docs")
    col.checkpoint()
    store.snapshot("docs")
    cat.upsert("docs", ["late"], _vecs(1, 2))  # after the snapshot: only the writer has it
    m, offered = _seeded_mirror(tmp_path, col, uri, 0, corrupt)
    assert offered > 3000 * DIM * 4 // 4
    m.sync()
    if corrupt:
        assert m.seeded_bytes == 0 and m.bytes_received >= offered
    else:
        assert m.seeded_bytes == offered and m.bytes_received < offered / 4
    f = ShardFollower.open(m.path, 0, device="cpu")
    from gpusearch.collection import shard_of

    mine = sorted(i for i in col.ids_matching({}) if shard_of(i, 2) == 0)
    assert len(f) == len(mine)
    q = X[:5]
    got = f.search(q, k=5).ids
    got = got.tolist() if hasattr(got, "tolist") else got
    ref = col.search(q, k=50).ids
    assert [[i for i in r if shard_of(i, 2) == 0][:5] for r in ref] == got
    f.close()
    cat.close()
