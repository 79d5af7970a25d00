"""The served split of index work (gpusearch.shard, ``index_role``): a builder (the Writer) builds the FAISS
index at checkpoints and holds none between builds; loaders (shard replicas) build nothing, load each newer
index it saves and search the rows after it exactly."""
import numpy as np
import pytest

import gpusearch.shard as shard_mod
from gpusearch import Collection
from gpusearch.replica import ShardFollower

IVF = "IVF16,Flat"  # probed whole (nprobe 16), an IVF answers exactly: compared with brute force below
EXACT = {"nprobe": 16}


def _data(n, dim=16, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype("float32")
    return [f"r{i:05d}" for i in range(n)], x


def _brute(x, ids, q, k):
    alive = np.array(sorted(ids))
    pos = {i: n for n, i in enumerate(ids)}
    s = np.stack([x[[pos[i] for i in alive]] @ qq for qq in q])
    order = np.lexsort((np.broadcast_to(np.arange(len(alive)), s.shape), -s), axis=1)[:, :k]
    return [alive[o].tolist() for o in order]


def _open(tmp_path, index=IVF, dim=16, metric="ip"):
    col = Collection.create(tmp_path / "c", dim=dim, metric=metric, index=index, device="cpu", fsync=False,
                            index_role="builder")
    return col, ShardFollower.open(col.path, 0, device="cpu", load_indexes=True)


def _manifest_index(col):
    m = col._shards[0]._manifest
    return m.get("index"), m.get("n_indexed")


def test_builder_saves_the_index_at_a_pause_and_the_follower_loads_it_instead_of_building(tmp_path):
    col, f = _open(tmp_path)
    ids, x = _data(3000)
    col.upsert(ids[:2000], x[:2000])
    f.refresh()
    # Below the build threshold: nothing built anywhere; the follower searches every row exactly.
    assert f.shard.backend.n_indexed == 0 and col._shards[0].backend.n_indexed == 0
    q = x[:5] + 0.01
    assert f.search(q, k=5, params=EXACT).ids.tolist() == _brute(x[:2000], ids[:2000], q, 5)
    assert col.index_pending() == 2000

    assert not col.maybe_build_index(3600.0)  # writes came within the hour, and too few rows wait
    assert col.maybe_build_index(0.0)
    name, n = _manifest_index(col)
    assert name and n == 2000 and col.index_pending() == 0
    assert col._shards[0].backend.n_indexed == 0 and not col._shards[0].backend.is_trained  # held no longer
    assert col.stats()["shards"][0]["indexed_rows"] == 2000

    f.refresh()
    st = f.stats()
    assert f.shard.backend.n_indexed == 2000 and st["indexes_loaded"] == 1 and st["rebuilds"] == 0
    # Rows after the saved index: searched exactly beside it, never added to the follower's index.
    col.upsert(ids[2000:], x[2000:])
    f.refresh()
    assert f.shard.backend.n_indexed == 2000 and len(f) == 3000
    assert f.search(q, k=5, params=EXACT).ids.tolist() == _brute(x, ids, q, 5)

    # The next build starts from the saved index: only the new rows are added.
    col.build_index()
    assert _manifest_index(col)[1] == 3000
    f.refresh()
    assert f.shard.backend.n_indexed == 3000 and f.stats()["indexes_loaded"] == 2
    assert f.search(q, k=5, params=EXACT).ids.tolist() == _brute(x, ids, q, 5)
    f.close(), col.close()


def test_enough_waiting_rows_build_while_writes_go_on(tmp_path, monkeypatch):
    monkeypatch.setattr(shard_mod, "INDEX_BUILD_MIN_ROWS", 1000)
    col, f = _open(tmp_path)
    ids, x = _data(2600)
    col.upsert(ids[:900], x[:900])
    f.refresh()
    assert not col.maybe_build_index(3600.0) and not _manifest_index(col)[1]
    col.upsert(ids[900:1200], x[900:1200])  # 1,200 waiting >= 1,000: due, pause or not
    assert col.maybe_build_index(3600.0) and _manifest_index(col)[1] == 1200
    f.refresh()
    col.upsert(ids[1200:2000], x[1200:2000])  # 800 waiting: below max(1000, 1200 // 8)
    assert not col.maybe_build_index(3600.0) and _manifest_index(col)[1] == 1200
    f.refresh()
    assert f.shard.backend.n_indexed == 1200
    col.upsert(ids[2000:], x[2000:])
    assert col.maybe_build_index(3600.0) and _manifest_index(col)[1] == 2600
    f.refresh()
    # (A build's checkpoint drops WAL files this follower had not read: it reloads the snapshot then.)
    assert f.shard.backend.n_indexed == 2600 and len(f) == 2600
    f.close(), col.close()


def test_an_index_that_needs_training_waits_for_enough_rows(tmp_path):
    col, f = _open(tmp_path)
    ids, x = _data(700)
    col.upsert(ids[:500], x[:500])  # IVF16 trains on 39 x 16 = 624 rows
    assert not col.maybe_build_index(0.0) and not col.build_index()
    col.upsert(ids[500:], x[500:])
    f.refresh()  # read before the build's checkpoint drops the WAL: the trained index is then taken in place
    assert col.build_index()
    f.refresh()
    assert f.shard.backend.is_trained and f.shard.backend.n_indexed == 700 and f.stats()["rebuilds"] == 0
    f.close(), col.close()


def test_builder_reopened_compacted_and_trained_keeps_one_saved_index(tmp_path):
    col, f = _open(tmp_path)
    ids, x = _data(2000)
    col.upsert(ids, x)
    col.build_index()
    col.close()
    col = Collection.open(tmp_path / "c", device="cpu", fsync=False, index_role="builder")
    assert col._shards[0].backend.n_indexed == 0 and col.index_pending() == 0  # the saved index was not loaded
    col.delete(ids[:500])
    col.compact()  # rows renumbered: the index is built afresh (holding the lock), from the saved one's training
    name, n = _manifest_index(col)
    assert n == 1500 and col._shards[0].backend.n_indexed == 0
    f.refresh()
    q = x[600:603]
    assert f.search(q, k=4, params=EXACT).ids.tolist() == _brute(x[500:], ids[500:], q, 4)
    assert f.shard.backend.n_indexed == 1500
    col.train(x)  # already trained: saves the same rows again, holds nothing after
    assert _manifest_index(col)[1] == 1500 and col._shards[0].backend.n_indexed == 0
    f.close(), col.close()


def test_hnsw_follower_of_a_builder_finds_what_it_has_not_indexed(tmp_path):
    col, f = _open(tmp_path, index="HNSW16", dim=8, metric="l2")
    ids, x = _data(1500, dim=8, seed=3)
    col.upsert(ids[:1000], x[:1000])
    col.build_index()
    col.upsert(ids[1000:], x[1000:])
    f.refresh()
    assert f.shard.backend.n_indexed == 1000
    hits = f.search(x, k=1).ids  # every row, indexed or not, is its own nearest neighbour
    found = np.mean([h[0] == i for h, i in zip(hits.tolist(), ids)])
    assert found > 0.99
    assert all(h[0] == i for h, i in zip(hits[1000:].tolist(), ids[1000:]))  # the exact part: every one
    f.close(), col.close()


def test_index_role_is_checked():
    with pytest.raises(ValueError, match="index_role must be one of inline, builder, loader"):
        shard_mod.Shard("/nonexistent", number=0, dim=2, metric="ip", index="Flat", device="cpu",
                        index_role="writer")


def test_an_index_prepared_while_the_rows_were_renumbered_is_dropped(tmp_path):
    """The build runs without the shard's lock: a compaction (or another build) meanwhile changes what
    it was built on, and the checkpoint then names the newer index, never the stale one."""
    col, f = _open(tmp_path)
    ids, x = _data(2000)
    col.upsert(ids[:1000], x[:1000])
    col.build_index()
    col.upsert(ids[1000:], x[1000:])
    shard = col._shards[0]
    prepared = shard.prepare_index()  # 2,000 rows in the old numbering
    assert prepared is not None and prepared.rows == 2000 and prepared.path.exists()
    col.delete(ids[:300])
    col.compact()
    after = _manifest_index(col)
    shard.checkpoint(dict(col.schema), prepared=prepared)
    assert _manifest_index(col) == after and after[1] == 1700 and not prepared.path.exists()
    assert not list(shard.path.glob("building-*"))
    f.refresh()
    q = x[1500:1504]
    assert f.search(q, k=3, params=EXACT).ids.tolist() == _brute(x[300:], ids[300:], q, 3)
    f.close(), col.close()


def test_writes_go_on_while_an_index_builds(tmp_path):
    """A write made between the build's start and its checkpoint is kept, and searched exactly."""
    col, f = _open(tmp_path)
    ids, x = _data(1500)
    col.upsert(ids[:1000], x[:1000])
    prepared = col._shards[0].prepare_index()
    col.upsert(ids[1000:], x[1000:])  # while "building"
    with col._write_lock:
        col._checkpoint_locked(prepared={0: prepared})
    assert _manifest_index(col)[1] == 1000 and col.index_pending() == 500
    f.refresh()
    assert len(f) == 1500 and f.shard.backend.n_indexed == 1000
    q = x[1200:1203]
    assert f.search(q, k=3, params=EXACT).ids.tolist() == _brute(x, ids, q, 3)
    col.close()
    col = Collection.open(tmp_path / "c", device="cpu", fsync=False, index_role="builder")
    assert len(col) == 1500 and col.index_pending() == 500
    f.close(), col.close()


def test_a_build_a_crash_cut_short_leaves_no_file(tmp_path):
    col, f = _open(tmp_path)
    ids, x = _data(1000)
    col.upsert(ids, x)
    prepared = col._shards[0].prepare_index()  # built, never named by a checkpoint: the process "dies"
    col.close()
    assert prepared.path.exists()
    col = Collection.open(tmp_path / "c", device="cpu", fsync=False, index_role="builder")
    assert not prepared.path.exists()
    f.close(), col.close()


def test_a_served_replica_loads_indexes_in_its_background_refresh_not_on_the_query_path(tmp_path):
    from gpusearch.catalog import Catalog, ShardCatalog

    cat = Catalog(tmp_path, shards=1, metric="ip", index=IVF, device="cpu", fsync=False, index_role="builder")
    ids, x = _data(1000)
    cat.upsert("c", ids, x)
    replica = ShardCatalog(tmp_path, 0, device="cpu", load_indexes=True)
    replica.open_all()
    assert cat.get("c").build_index()
    f = replica.follower("c")  # what a query does first: catches up, loads nothing
    assert f.applied_seq == cat.get("c").stats()["sequence"] and f.shard.backend.n_indexed == 0
    q = x[:3] + 0.01
    assert f.search(q, k=3, params=EXACT).ids.tolist() == _brute(x, ids, q, 3)
    assert replica.refresh_all() == 1 and f.shard.backend.n_indexed == 1000
    assert replica.refresh_all() == 0  # nothing newer
    assert f.search(q, k=3, params=EXACT).ids.tolist() == _brute(x, ids, q, 3)
    cat.close()
