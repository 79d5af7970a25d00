"""Approximate indexes reach a recall floor on clustered data at documented parameters, and see every record."""
from __future__ import annotations

import numpy as np
import pytest

import gpusearch as gs
from knn_check import brute_force, clustered, recall_at


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    x = clustered(rng, 8000, 32, clusters=100, spread=1.0)
    q = clustered(np.random.default_rng(8), 50, 32, clusters=100, spread=1.0)
    ref_ids, _ = brute_force(range(8000), x, q, 10, "l2")
    return x, q, ref_ids


# Parameters documented in the README: recall@10 >= 0.95 on clustered data for IVF and HNSW.
# 4-bit PQ codes of a 32-dim vector are lossy: it reaches about 0.45 here (raw FAISS the same).
@pytest.mark.parametrize(
    "index, params, floor",
    [("IVF32,Flat", {"nprobe": 16}, 0.95), ("HNSW32", {"efSearch": 64}, 0.95), ("IVF32,PQ16x4", {"nprobe": 16}, 0.4)],
)
@pytest.mark.parametrize("shards", [1, 2])
def test_recall_floor(tmp_path, data, index, params, floor, shards):
    x, q, ref_ids = data
    col = gs.Collection.create(tmp_path / "c", dim=32, metric="l2", index=index, shards=shards, device="cpu", fsync=False)
    col.upsert(range(8000), x)
    st = col.stats()
    assert all(s["indexed_rows"] == s["rows"] for s in st["shards"]), "every row should be in the trained index"
    res = col.search(q, k=10, params=params)
    assert recall_at(res.ids, ref_ids, 10) >= floor


def test_rows_before_training_are_searched_exactly(tmp_path, rng):
    x = rng.standard_normal((100, 8)).astype(np.float32)
    col = gs.Collection.create(tmp_path / "c", dim=8, metric="ip", index="IVF64,Flat", device="cpu", fsync=False)
    col.upsert(range(100), x)  # far fewer than 39 * 64 rows: not trained yet
    assert not col.stats()["shards"][0]["index_trained"]
    ref, _ = brute_force(range(100), x, x[:5], 5, "ip")
    assert col.search(x[:5], k=5).ids == ref


def test_explicit_train_then_add(tmp_path, rng):
    x = clustered(rng, 3000, 16, clusters=20)
    col = gs.Collection.create(tmp_path / "c", dim=16, metric="l2", index="IVF16,Flat", shards=2, device="cpu", fsync=False)
    col.upsert(range(200), x[:200])
    col.train(x)
    st = col.stats()
    assert all(s["index_trained"] and s["indexed_rows"] == s["rows"] for s in st["shards"])
    col.upsert(range(200, 3000), x[200:])
    res = col.search(x[:20], k=1, params={"nprobe": 16})
    assert [r[0] for r in res.ids] == [str(i) for i in range(20)]


@pytest.mark.parametrize("index", ["IVF32,Flat", "HNSW32"])
def test_selective_filter_on_ann_returns_every_match(tmp_path, data, index):
    x, q, _ = data
    meta = [{"rare": i % 500 == 0} for i in range(8000)]
    col = gs.Collection.create(tmp_path / "c", dim=32, metric="l2", index=index, device="cpu", fsync=False)
    col.upsert(range(8000), x, metadata=meta)
    res = col.search(q[:3], k=20, filter={"rare": True})
    assert all(len(r) == 16 for r in res.ids)  # all 16 matching records, though only 16 exist
    allow = np.array([m["rare"] for m in meta])
    ref, _ = brute_force(range(8000), x, q[:3], 20, "l2", allow=allow)
    assert res.ids == ref


def test_faiss_threads_reach_the_thread_that_searches_and_builds(tmp_path, data, monkeypatch):
    """OpenMP keeps its thread count per thread: a served shard replica sets it in its constructor and
    searches in asyncio.to_thread's pool, where FAISS used to run on one thread whatever was asked.
    The backend applies the process's choice in the thread doing the work (adds and batch searches:
    the count each of those threads holds once FAISS is done is recorded)."""
    import threading

    import faiss

    from gpusearch.backends import faiss_backend
    from gpusearch.backends.faiss_backend import FaissBackend

    x, q, ref_ids = data
    seen = []

    def recording(method):
        def wrapped(self, *a, **kw):
            out = method(self, *a, **kw)
            seen.append((method.__name__, faiss.omp_get_max_threads()))
            return out
        return wrapped

    monkeypatch.setattr(FaissBackend, "append_rows", recording(FaissBackend.append_rows))  # HNSW's insertion
    monkeypatch.setattr(FaissBackend, "add", recording(FaissBackend.add))  # IVF's training and adds
    monkeypatch.setattr(FaissBackend, "_faiss_search", recording(FaissBackend._faiss_search))

    def in_new_thread(fn):
        out = {}
        t = threading.Thread(target=lambda: out.update(r=fn()))
        t.start()
        t.join()
        return out.get("r")

    default = in_new_thread(faiss.omp_get_max_threads)  # what a thread that sets nothing gets
    want = default + 1
    monkeypatch.setattr(faiss_backend, "_THREADS", [None])
    faiss_backend.set_threads(want)
    col = gs.Collection.create(tmp_path / "c", dim=32, metric="l2", index="HNSW32", device="cpu", fsync=False)
    in_new_thread(lambda: col.upsert(range(8000), x))
    assert seen and all(t == want for name, t in seen if name == "append_rows"), seen
    seen.clear()
    res = in_new_thread(lambda: col.search(q, k=10, params={"efSearch": 64}))  # a batch
    assert seen == [("_faiss_search", want)] and recall_at(res.ids, ref_ids, 10) >= 0.95
    seen.clear()
    in_new_thread(lambda: col.search(q[0], k=10))  # one query: on its own thread, the count left as found
    assert seen == [("_faiss_search", default)]
    seen.clear()
    faiss_backend.set_threads(None)
    in_new_thread(lambda: col.search(q, k=10))
    assert seen == [("_faiss_search", default)]
    ivf = gs.Collection.create(tmp_path / "ivf", dim=32, metric="l2", index="IVF32,Flat", device="cpu", fsync=False)
    faiss_backend.set_threads(want)
    seen.clear()
    in_new_thread(lambda: ivf.upsert(range(8000), x))  # enough rows to train: k-means, then the adds
    assert ivf.stats()["shards"][0]["index_trained"] is True
    assert ("add", want) in seen and all(t == want for name, t in seen if name == "add"), seen
    ivf.close()
    faiss_backend.set_threads(None)
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="positive int or None"):
            faiss_backend.set_threads(bad)
    col.close()

    # the served shard replica's setting goes through it
    from gpusearch.serve import deployments

    calls = []
    monkeypatch.setattr(faiss_backend, "set_threads", calls.append)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(faiss, "omp_set_num_threads", lambda n: None)  # this process's own count stays
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # and torch's (not imported, as in a shard)
    deployments._set_search_threads(3)
    assert calls == [3]
