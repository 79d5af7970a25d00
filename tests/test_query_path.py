"""The one query path in process: one typed request per search, columnar hits on integer keys at
every tier below the edge, one merge, index options, the refine stage, one copy of the vectors."""
from __future__ import annotations

import numpy as np
import pytest

import gpusearch as gs
from gpusearch import filters as filters_mod
from gpusearch.errors import InvalidArgumentError, InvalidTypeError, LimitExceededError
from gpusearch.hits import Hits
from gpusearch.merge import merge
from gpusearch.replica import ShardFollower
from gpusearch.request import (MAX_TOP_K, HNSWParams, IVFParams, IVFRefineParams, SearchParams, SearchRequest,
                               build_request, check_top_k, parse_params)
from knn_check import assert_same_knn, brute_force, clustered, recall_at


def make(tmp_path, name="c", n=300, dim=8, shards=3, index="Flat", metric="cosine", rng=None, **kw):
    rng = rng or np.random.default_rng(0)
    col = gs.Collection.create(tmp_path / name, dim=dim, metric=metric, index=index, shards=shards, device="cpu",
                               fsync=False, **kw)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    col.upsert([f"r{i}" for i in range(n)], x, metadata=[{"g": i % 3} for i in range(n)])
    return col, x


# -- one request ---------------------------------------------------------------------------------
def test_the_k_limit_has_one_check_and_one_message(tmp_path):
    col, x = make(tmp_path)
    msg = f"k must be between 1 and {MAX_TOP_K}, got {MAX_TOP_K + 1}"
    with pytest.raises(LimitExceededError, match=msg) as ei:
        col.search(x[0], k=MAX_TOP_K + 1)
    assert ei.value.limit == MAX_TOP_K and ei.value.limit_name == "MAX_TOP_K"
    f = ShardFollower.open(col.path, 0, device="cpu")
    with pytest.raises(LimitExceededError, match=msg):
        f.search(x[0], MAX_TOP_K + 1)
    with pytest.raises(LimitExceededError, match=msg):
        check_top_k(MAX_TOP_K + 1)
    with pytest.raises(InvalidTypeError, match="k must be an int"):
        col.search(x[0], k=2.0)
    assert MAX_TOP_K + 1 <= gs.kernels.MAX_K  # the exact search asks a shard for k + 1 rows
    assert col.search(x[0], k=MAX_TOP_K).ids[0]  # the limit itself is answered
    f.close()
    col.close()


@pytest.mark.parametrize("index", ["Flat", "HNSW16", "IVF16,Flat"])
def test_top_k_up_to_ten_thousand_as_pinecone_allows(tmp_path, index):
    """k up to MAX_TOP_K (10,000) over several shards, exact for Flat and matching brute force for the
    approximate indexes at their widest; with metadata or vectors at most 1,000, as Pinecone allows."""
    rng = np.random.default_rng(3)
    col, x = make(tmp_path, n=12_000, dim=8, shards=2, index=index, rng=rng)
    if col.stats()["shards"][0]["index_trained"] is False:
        col.train(x)
    q = rng.standard_normal(8).astype(np.float32)
    params = {"nprobe": 16} if index.startswith("IVF") else None
    res = col.search(q, k=MAX_TOP_K, params=params)
    ref_ids, ref_scores = brute_force([f"r{i}" for i in range(len(x))], x, q, MAX_TOP_K, "cosine")
    assert len(res.ids[0]) == MAX_TOP_K
    if index == "Flat":
        assert_same_knn(res.ids, res.scores, ref_ids, ref_scores)
    else:
        assert recall_at(res.ids, ref_ids, MAX_TOP_K) >= 0.99
    assert len(col.search(q, k=1000, include_metadata=True, params=params).ids[0]) == 1000
    for kw in ({"include_metadata": True}, {"include_vectors": True}):
        with pytest.raises(LimitExceededError, match="k must be at most 1000 when metadata or vectors are included"):
            col.search(q, k=1001, **kw)
    col.close()


def test_typed_params_per_family(tmp_path):
    assert parse_params({"efSearch": 32}, "hnsw") == HNSWParams(ef_search=32)
    assert parse_params({"nprobe": 4}, "ivf") == IVFParams(nprobe=4)
    assert parse_params({"nprobe": 4, "kFactor": 8}, "ivf+refine") == IVFRefineParams(nprobe=4, k_factor=8)
    assert parse_params(None, "flat") == SearchParams()
    assert parse_params(IVFParams(nprobe=2), "ivf") == IVFParams(nprobe=2)
    with pytest.raises(InvalidArgumentError, match="'kFactor' does not apply to a ivf index; it takes: nprobe"):
        parse_params({"kFactor": 2}, "ivf")
    with pytest.raises(InvalidArgumentError, match="takes no search params"):
        parse_params({"nprobe": 2}, "flat")
    with pytest.raises(InvalidTypeError, match="IVFParams"):
        parse_params(HNSWParams(ef_search=3), "ivf")
    with pytest.raises(InvalidArgumentError, match="positive int"):
        parse_params({"nprobe": True}, "ivf")
    hnsw, x = make(tmp_path, index="HNSW16", shards=1)
    assert hnsw.family == "hnsw"
    a = hnsw.search(x[:3], k=5, params={"efSearch": 40})
    b = hnsw.search(x[:3], k=5, params=HNSWParams(ef_search=40))
    assert a.ids == b.ids


def test_filter_is_compiled_once_per_request(tmp_path, monkeypatch):
    col, x = make(tmp_path, shards=3)
    calls = []
    real = filters_mod._Compiler.filter

    def counting(self, flt, depth, where):
        if depth == 0:
            calls.append(flt)
        return real(self, flt, depth, where)

    monkeypatch.setattr(filters_mod._Compiler, "filter", counting)
    res = col.search(x[:4], k=5, filter={"g": {"$ne": 1}})
    assert len(calls) == 1  # three shards, four queries, one compilation
    assert all(int(i[1:]) % 3 != 1 for row in res.ids for i in row)
    col.close()


def test_requests_with_equal_filters_group_together(tmp_path):
    col, x = make(tmp_path)
    a = col.request(x[0], 5, filter={"g": 1, "$or": [{"g": 2}, {"g": 1}]})
    b = col.request(x[1], 7, filter={"$or": [{"g": 2}, {"g": 1}], "g": 1})
    c = col.request(x[1], 7, filter={"g": 2})
    assert a.group == b.group and hash(a.group) == hash(b.group) and a.group != c.group
    col.close()


# -- one result shape --------------------------------------------------------------------------
def test_every_tier_answers_with_columnar_hits(tmp_path):
    col, x = make(tmp_path, shards=2)
    req = col.request(x[:3], 4, include_metadata=True)
    shard = col._shards[0]
    backend_hits = shard.backend.search(shard.store, req.queries, 4, None, req.params)
    assert isinstance(backend_hits, Hits) and backend_hits.keys.dtype == np.int64
    assert backend_hits.scores.dtype == np.float32 and backend_hits.scores.shape == (3, 4)
    shard_hits, ids = shard.search(req)
    assert isinstance(shard_hits, Hits) and shard_hits.ids is None  # no strings inside the process
    assert all(ids[r] for r in shard_hits.keys[0] if r >= 0)
    col_hits, lists = col.search_hits(req)
    assert isinstance(col_hits, Hits) and col_hits.ids is None and len(lists) == 2
    assert ((col_hits.keys % 2) < 2).all()  # keys are row * shards + shard
    f = ShardFollower.open(col.path, 1, device="cpu")
    f_hits = f.search_request(req)
    assert isinstance(f_hits, Hits) and f_hits.ids.shape == (3, 4)  # crossing a process: ids attached
    res = col.search_request(req)  # the edge: strings for the final k only
    assert isinstance(res, gs.SearchResult) and all(isinstance(i, str) for row in res.ids for i in row)
    f.close()
    col.close()


def test_merge_orders_ties_by_id_across_parts():
    def part(scores, keys, ids):
        return Hits(np.array([scores], np.float32), np.array([keys], np.int64), np.array([ids], object))

    a = part([0.9, 0.5, 0.5], [0, 1, 2], ["m", "p", "q"])
    b = part([0.5, 0.5, 0.1], [0, 1, 2], ["b", "z", "c"])
    hits, where = merge([a, b], 3, largest=True)
    assert hits.ids.tolist() == [["m", "b", "p"]] and where.tolist() == [[0, 1, 0]]
    # without payloads the ids come from the callable, asked only for tied candidates
    asked = []
    lists = [["m", "p", "q"], ["b", "z", "c"]]

    def ids_of(p, keys):
        asked.append(p)
        return [lists[p][k] for k in keys.tolist()]

    a.ids = b.ids = None
    hits, where = merge([a, b], 3, largest=True, ids_of=ids_of)
    assert hits.keys.tolist() == [[0, 0, 1]] and where.tolist() == [[0, 1, 0]] and asked
    # no tie, no strings
    asked.clear()
    c = part([0.8, 0.3, 0.2], [5, 6, 7], ["x", "y", "w"])
    c.ids = None
    merge([c, Hits(np.array([[0.7]], np.float32), np.array([[1]]))], 2, largest=True, ids_of=ids_of)
    assert asked == []


def test_exact_ties_across_shards_go_to_the_smaller_id(tmp_path):
    col = gs.Collection.create(tmp_path / "c", dim=4, metric="ip", shards=4, device="cpu", fsync=False)
    v = np.array([1, 0, 0, 0], np.float32)
    ids = [f"t{i:02d}" for i in range(40)]
    col.upsert(ids, np.tile(v, (40, 1)))
    col.upsert(["a-best"], np.array([[2, 0, 0, 0]], np.float32))
    assert col.search(v, k=6).ids == [["a-best", "t00", "t01", "t02", "t03", "t04"]]
    col.close()


# -- index options -------------------------------------------------------------------------------
def test_index_options_are_checked_stored_and_kept(tmp_path):
    col = gs.Collection.create(tmp_path / "h", dim=8, index="HNSW16", device="cpu", fsync=False,
                               index_options={"efConstruction": 60})
    assert col.stats()["index_options"] == {"efConstruction": 60, "efSearch": 64}
    assert col._shards[0].backend.index.hnsw.efConstruction == 60
    col.upsert(range(50), np.random.default_rng(1).standard_normal((50, 8)).astype(np.float32))
    col.close()
    col = gs.Collection.open(tmp_path / "h", device="cpu")
    hnsw = col._shards[0].backend.index.hnsw
    assert (hnsw.efConstruction, hnsw.efSearch) == (60, 64)
    col.close()
    ivf = gs.Collection.create(tmp_path / "i", dim=8, index="IVF64,Flat", device="cpu", fsync=False)
    assert ivf.stats()["index_options"] == {"nprobe": 8}
    ivf.close()
    d = gs.Collection.create(tmp_path / "d", dim=8, index="HNSW16", device="cpu", fsync=False)
    assert d.stats()["index_options"]["efConstruction"] == gs.backends.DEFAULT_EF_CONSTRUCTION
    d.close()
    for bad, match in [({"nprobe": 4}, "'nprobe' does not apply to index 'HNSW16'"),
                       ({"efConstruction": 0}, "between 1 and"), ("x", "must be a dict")]:
        with pytest.raises((InvalidArgumentError, InvalidTypeError), match=match):
            gs.Collection.create(tmp_path / f"bad{len(match)}", dim=8, index="HNSW16", device="cpu",
                                 index_options=bad)


def test_a_collection_from_before_options_keeps_its_build(tmp_path):
    import json

    col = gs.Collection.create(tmp_path / "old", dim=8, index="HNSW16", device="cpu", fsync=False)
    col.close()
    path = tmp_path / "old" / "collection.json"
    config = json.loads(path.read_text())
    del config["index_options"]  # as written before options existed
    path.write_text(json.dumps(config))
    col = gs.Collection.open(tmp_path / "old", device="cpu")
    assert col.stats()["index_options"] == {"efConstruction": 40, "efSearch": 64}
    col.close()


# -- refine stage, one copy ---------------------------------------------------------------------
def test_refine_stage_reaches_recall_and_rescores_exactly(tmp_path):
    rng = np.random.default_rng(3)
    x = clustered(rng, 4000, 32, clusters=40, spread=1.0)
    q = clustered(np.random.default_rng(4), 30, 32, clusters=40, spread=1.0)
    col = gs.Collection.create(tmp_path / "r", dim=32, metric="l2", index="IVF32,PQ16x4fs,RFlat", device="cpu",
                               fsync=False)
    col.upsert(range(4000), x)
    assert col.family == "ivf+refine" and col.stats()["index_options"] == {"nprobe": 8, "kFactor": 4}
    ref_ids, ref_scores = brute_force(range(4000), x, q, 10, "l2")
    res = col.search(q, k=10, params={"nprobe": 32, "kFactor": 20})
    assert recall_at(res.ids, ref_ids, 10) >= 0.95
    for got, want_ids, want_scores, ids in zip(res.scores, ref_ids, ref_scores, res.ids):
        exact = {i: s for i, s in zip(want_ids, want_scores)}
        for i, s in zip(ids, got):  # every returned score is the exact one, not the PQ estimate
            if i in exact:
                assert s == pytest.approx(exact[i], rel=1e-4)
    col.close()


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_refine_with_every_candidate_is_brute_force_ties_deletes_and_filters_included(tmp_path, metric):
    """With k * kFactor covering every row and every list probed, the refine stage alone decides: its
    answer must be brute force's exactly, tie order (smaller id first) included. Rows 0-199 are repeated
    as rows 200-399, so every query that finds one finds its twin at the same score."""
    rng = np.random.default_rng(7)
    base = clustered(rng, 200, 16, clusters=10, spread=1.0)
    x = np.concatenate([base, base])
    ids = [f"{i:03d}" for i in range(400)]
    col = gs.Collection.create(tmp_path / metric, dim=16, metric=metric, index="IVF8,PQ8x4fs,RFlat", device="cpu",
                               fsync=False)
    col.upsert(ids, x, metadata=[{"g": i % 4} for i in range(400)])
    col.delete(ids=ids[::7])
    live = np.ones(400, bool)
    live[::7] = False
    q = np.concatenate([base[:5], clustered(np.random.default_rng(8), 5, 16, clusters=10, spread=1.0)])
    params = {"nprobe": 8, "kFactor": 400}
    keep = np.array([i % 4 != 1 for i in range(400)]) & live
    for flt, allow in ((None, live), ({"g": {"$ne": 1}}, keep)):
        res = col.search(q, k=12, params=params, filter=flt)
        ref_ids, ref_scores = brute_force(ids, x, q, 12, metric, allow=allow)
        assert res.ids == [list(r) for r in ref_ids]
        for got, want in zip(res.scores, ref_scores):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    col.close()


def test_hnsw_keeps_one_copy_of_the_vectors(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    col = gs.Collection.create(tmp_path / "h", dim=16, metric="l2", index="HNSW16", device="cpu", fsync=False)
    col.upsert([str(i) for i in range(500)], x)
    shard = col._shards[0]
    assert shard.store.external and shard.store.memory_bytes()["host"] < x.nbytes / 4
    got = col.fetch(["7", "499"])
    np.testing.assert_array_equal(got.vectors, x[[7, 499]])
    col.delete(ids=[str(i) for i in range(0, 500, 2)])
    col.compact()  # rebuilds the index from the kept rows
    assert shard.store.external and len(shard.store) == 250
    np.testing.assert_array_equal(col.fetch(["7"]).vectors, x[[7]])
    col.checkpoint()
    col.upsert(["new"], x[:1] + 1)
    col.close()
    col = gs.Collection.open(tmp_path / "h", device="cpu")
    np.testing.assert_array_equal(col.fetch(["7", "new"]).vectors, np.stack([x[7], x[0] + 1]))
    assert col.search(x[9], k=1).ids == [["9"]]
    col.close()


def test_values_and_metadata_of_hits_when_some_shards_are_empty(tmp_path):
    col = gs.Collection.create(tmp_path / "c", dim=4, metric="l2", shards=4, device="cpu", fsync=False)
    col.upsert(["only"], np.array([[1, 2, 3, 4]], np.float32), metadata=[{"a": 1}])
    res = col.search(np.ones(4, np.float32), k=3, include_vectors=True, include_metadata=True)
    assert res.ids == [["only"]] and res.metadata == [[{"a": 1}]]
    np.testing.assert_array_equal(res.vectors[0], [[1, 2, 3, 4]])
    col.close()


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("masked", [False, True])
def test_cpu_batches_through_torch_keep_the_exact_tie_rule(metric, masked):
    """Batches on the CPU go through torch's GEMM and top-k; integer-valued vectors make ties
    everywhere, and every answer must still equal the kernels' reference exactly."""
    pytest.importorskip("torch")
    from gpusearch.backends import _cpu_batch
    from gpusearch.backends.exact import exact_search
    from gpusearch.vectors import VectorStore

    rng = np.random.default_rng(11)
    xb = rng.integers(-2, 3, (3000, 6)).astype(np.float32)
    xq = rng.integers(-2, 3, (_cpu_batch.MIN_BATCH + 9, 6)).astype(np.float32)
    store = VectorStore(6)
    store.append(xb)
    allow = rng.random(3000) < 0.6 if masked else None
    D, I = exact_search(store, xq, 25, metric, allow)
    Dr, Ir = gs.kernels.fused_search_reference(xq, xb, 25, metric=metric, mask=allow)
    np.testing.assert_array_equal(I, Ir)
    np.testing.assert_allclose(D, Dr, rtol=1e-5, atol=1e-4)
    _, _, redo = _cpu_batch.exact_batch(xq, xb, 25, l2=metric == "l2", mask=allow)
    assert len(redo) > 0  # these ties did take the exact path
