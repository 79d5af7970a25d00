"""Exact search, filters, upsert/fetch/delete semantics of the in-process Collection."""
from __future__ import annotations

import numpy as np
import pytest

import gpusearch as gs
from knn_check import assert_same_knn, brute_force

GENRES = ["drama", "news", "comedy", "horror"]


def make_meta(rng, n):
    return [
        {"genre": GENRES[int(g)], "year": int(y), "rating": float(r), "tags": ["a", "b"] if t else ["c"]}
        for g, y, r, t in zip(rng.integers(0, 4, n), rng.integers(2000, 2025, n), rng.random(n), rng.random(n) < 0.5)
    ]


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("shards, parallel", [(1, False), (4, False), (4, True)])
def test_exact_search_equals_brute_force(tmp_path, rng, monkeypatch, metric, shards, parallel):
    if parallel:  # fan out over the thread pool even for this small search
        monkeypatch.setattr("gpusearch.collection.PARALLEL_SEARCH_FLOPS", 0)
    n, d = 1500, 24
    x = rng.standard_normal((n, d)).astype(np.float32)
    ids = [f"id{i}" for i in range(n)]
    col = gs.Collection.create(tmp_path / "c", dim=d, metric=metric, shards=shards, device="cpu", fsync=False)
    col.upsert(ids, x)
    q = rng.standard_normal((7, d)).astype(np.float32)
    for k in (1, 10, 100):
        res = col.search(q, k=k)
        ref_ids, ref_scores = brute_force(ids, x, q, k, metric)
        assert_same_knn(res.ids, res.scores, ref_ids, ref_scores)
    col.close()


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("shards", [1, 4])
def test_exact_ties_go_to_smaller_id(tmp_path, rng, metric, shards):
    # Small integer vectors give exactly representable scores, and duplicates give exact ties.
    base = rng.integers(-3, 4, (40, 8)).astype(np.float32)
    base[np.all(base == 0, axis=1)] = 1
    x = np.concatenate([base] * 5)
    ids = [f"r{i:04d}" for i in rng.permutation(len(x))]
    col = gs.Collection.create(tmp_path / "c", dim=8, metric=metric, shards=shards, device="cpu", fsync=False)
    col.upsert(ids, x)
    q = rng.integers(-3, 4, (6, 8)).astype(np.float32)
    q[np.all(q == 0, axis=1)] = 1
    for k in (1, 3, 7, 12):
        res = col.search(q, k=k)
        ref_ids, ref_scores = brute_force(ids, x, q, k, metric)
        if metric == "cosine":  # normalisation rounds, so ties are only near-exact
            assert_same_knn(res.ids, res.scores, ref_ids, ref_scores)
        else:
            assert_same_knn(res.ids, res.scores, ref_ids, ref_scores, exact_ties=True)


@pytest.mark.parametrize("shards", [1, 4])
@pytest.mark.parametrize(
    "flt",
    [
        {"genre": {"$eq": "drama"}},
        {"genre": "news", "year": {"$gte": 2019}},
        {"$or": [{"genre": {"$in": ["comedy", "horror"]}}, {"rating": {"$lt": 0.1}}]},
        {"tags": {"$in": ["a"]}, "year": {"$lt": 2003}},
        {"year": {"$eq": 2001}, "genre": {"$ne": "drama"}},
    ],
)
def test_filtered_search_equals_brute_force_over_filtered_rows(tmp_path, rng, shards, flt):
    n, d = 1200, 16
    x = rng.standard_normal((n, d)).astype(np.float32)
    ids = list(range(n))
    meta = make_meta(rng, n)
    col = gs.Collection.create(tmp_path / "c", dim=d, metric="ip", shards=shards, device="cpu", fsync=False)
    col.upsert(ids, x, metadata=meta)
    allow = np.array([_matches(m, flt) for m in meta])
    assert allow.any()
    q = rng.standard_normal((5, d)).astype(np.float32)
    res = col.search(q, k=10, filter=flt, include_metadata=True)
    ref_ids, ref_scores = brute_force(ids, x, q, 10, "ip", allow=allow)
    assert_same_knn(res.ids, res.scores, ref_ids, ref_scores)
    for row_ids, row_meta in zip(res.ids, res.metadata):
        for i, m in zip(row_ids, row_meta):
            assert m == meta[int(i)]


def _matches(m, flt):
    for key, cond in flt.items():
        if key == "$or":
            if not any(_matches(m, c) for c in cond):
                return False
            continue
        ops = cond if isinstance(cond, dict) else {"$eq": cond}
        v = m.get(key)
        vals = v if isinstance(v, list) else [v]
        for op, arg in ops.items():
            ok = {
                "$eq": lambda: arg in vals,
                "$ne": lambda: arg not in vals,
                "$in": lambda: any(a in vals for a in arg),
                "$gte": lambda: v >= arg,
                "$lt": lambda: v < arg,
            }[op]()
            if not ok:
                return False
    return True


def test_filter_leaves_fewer_than_k(tmp_path, rng):
    x = rng.standard_normal((300, 8)).astype(np.float32)
    meta = [{"g": "rare" if i in (5, 77, 201) else "common"} for i in range(300)]
    col = gs.Collection.create(tmp_path / "c", dim=8, metric="l2", shards=4, device="cpu", fsync=False)
    col.upsert(range(300), x, metadata=meta)
    res = col.search(x[:2], k=10, filter={"g": "rare"})
    assert [sorted(r) for r in res.ids] == [["201", "5", "77"]] * 2


def test_upsert_overwrites_fetch_and_delete(tmp_path, rng):
    col = gs.Collection.create(tmp_path / "c", dim=4, metric="l2", shards=3, device="cpu", fsync=False)
    x = rng.standard_normal((50, 4)).astype(np.float32)
    w = col.upsert(range(50), x, metadata=[{"n": i} for i in range(50)])
    assert w.count == 50 and w.sequence >= 1
    y = rng.standard_normal((2, 4)).astype(np.float32)
    col.upsert([3, "7"], y, metadata=[{"n": 300}, {"n": 700, "new": True}])
    assert len(col) == 50
    f = col.fetch(["3", 7, "nope"])
    assert f.ids == ["3", "7"] and f.missing == ["nope"]
    np.testing.assert_array_equal(f.vectors, y)
    assert f.metadata == [{"n": 300}, {"n": 700, "new": True}]
    # the overwritten vector is gone from search; the new one is found
    assert col.search(x[3], k=1).ids[0] != ["3"] or np.allclose(x[3], y[0])
    assert col.search(y[0], k=1).ids == [["3"]]
    d = col.delete(ids=["1", "2", "not-there"])
    assert d.count == 2 and len(col) == 48
    d = col.delete(filter={"n": {"$gte": 40}})
    assert d.count == 12 and len(col) == 36  # 40..49, and 3 and 7 whose n is now 300 and 700
    res = col.search(x, k=50)
    found = {i for row in res.ids for i in row}
    assert not found & {"1", "2", "3", "7", *map(str, range(40, 50))}
    assert col.fetch(["45"]).missing == ["45"]
    d = col.delete(delete_all=True)
    assert d.count == 36 and len(col) == 0
    assert col.search(x[0], k=5).ids == [[]]


def test_duplicate_ids_in_one_upsert_last_wins(tmp_path):
    col = gs.Collection.create(tmp_path / "c", dim=2, metric="ip", device="cpu", fsync=False)
    w = col.upsert(["a", "b", "a"], [[1, 0], [0, 1], [5, 5]], metadata=[{"v": 1}, {"v": 2}, {"v": 3}])
    assert w.count == 2 and len(col) == 2
    f = col.fetch(["a"])
    np.testing.assert_array_equal(f.vectors, [[5, 5]])
    assert f.metadata == [{"v": 3}]


def test_inputs_of_every_kind(tmp_path, rng):
    torch = pytest.importorskip("torch")
    col = gs.Collection.create(tmp_path / "c", dim=3, metric="ip", device="cpu", fsync=False)
    col.upsert(np.array([1, 2]), torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64))
    col.upsert(["3"], [[0, 0, 1]])  # plain lists, ints inside
    col.upsert(["4"], np.array([0.5, 0.5, 0], dtype=np.float16))  # one 1-D vector
    assert len(col) == 4
    assert col.search(torch.tensor([0.0, 0.0, 2.0]), k=1).ids == [["3"]]
    assert col.search([[1, 0.1, 0]], k=2).ids == [["1", "4"]]


def test_search_result_shape_and_info(tmp_path, rng):
    col = gs.Collection.create(tmp_path / "c", dim=5, metric="cosine", shards=2, device="cpu", fsync=False,
                               lineage={"model": "test-model", "version": "3"})
    x = rng.standard_normal((20, 5)).astype(np.float32)
    col.upsert(range(20), x, metadata=[{"i": i} for i in range(20)])
    res = col.search(x[:3], k=4, include_metadata=True, include_vectors=True)
    assert len(res) == 3 and len(res[0]) == 4
    assert res[1].ids[0] == "1" and res[1].metadata[0] == {"i": 1}
    np.testing.assert_allclose(res[2].vectors[0], x[2], rtol=1e-6)  # the values as sent, also for cosine
    assert res.info["lineage"] == {"model": "test-model", "version": "3"}
    assert np.all(np.diff(res.scores[0]) <= 0)
    st = col.stats()
    assert st["records"] == 20 and len(st["shards"]) == 2 and st["lineage"]["model"] == "test-model"
    assert st["schema"] == {"i": "int"}


def test_concurrent_searches_and_writes(tmp_path, rng):
    import threading

    col = gs.Collection.create(tmp_path / "c", dim=8, metric="l2", shards=2, device="cpu", fsync=False)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    col.upsert(range(200), x[:200])
    errors = []

    def reader():
        try:
            for _ in range(30):
                r = col.search(x[:4], k=5)
                assert all(len(ids) == 5 for ids in r.ids)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for lo in range(200, 400, 20):
        col.upsert(range(lo, lo + 20), x[lo : lo + 20])
    for t in threads:
        t.join()
    assert not errors
    assert len(col) == 400
    # read-your-writes: every acknowledged vector is its own nearest neighbour
    assert col.search(x[390], k=1).ids == [["390"]]


def test_batches_with_and_without_metadata_mix(tmp_path, rng):
    x = rng.standard_normal((30, 4)).astype(np.float32)
    col = gs.Collection.create(tmp_path / "c", dim=4, metric="l2", shards=2, device="cpu")
    col.upsert(range(10), x[:10])  # no metadata at all
    assert len(col.search(x[0], k=30, filter={"colour": {"$exists": False}}).ids[0]) == 10
    col.upsert(range(10, 20), x[10:20], metadata=[{"colour": "red"}] * 10)
    col.upsert(range(20, 30), x[20:30], metadata=[None] * 5 + [{"size": 3}] * 5)
    for c in (col, None):
        if c is None:
            col.close()
            c = gs.Collection.open(tmp_path / "c", device="cpu")
        assert sorted(map(int, c.search(x[0], k=30, filter={"colour": "red"}).ids[0])) == list(range(10, 20))
        assert len(c.search(x[0], k=30, filter={"colour": {"$exists": False}}).ids[0]) == 20
        assert c.fetch(["0", "10", "29"]).metadata == [{}, {"colour": "red"}, {"size": 3}]
    c.compact()
    assert len(c.search(x[0], k=30, filter={"size": {"$gte": 3}}).ids[0]) == 5
    c.close()


def test_concurrent_upserts_extend_the_schema_without_losing_a_change(tmp_path, rng):
    import threading

    col = gs.Collection.create(tmp_path / "c", dim=2, metric="l2", shards=2, device="cpu", fsync=False)
    outcomes = []

    def write(value, start):
        for j in range(20):
            col.upsert([f"{start}-{j}"], [[1.0, 2.0]], metadata=[{"x": value, f"f{start}": 1}])
        outcomes.append("ok")

    threads = [threading.Thread(target=write, args=(v, s)) for s, v in ((0, 5), (1, "five"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == ["ok", "ok"]
    st = col.stats()["schema"]
    assert st["x"] == "mixed" and st["f0"] == st["f1"] == "int"  # each thread's new field and kind kept
    ids = [f"{s}-{j}" for s in (0, 1) for j in range(20)]
    assert col.fetch(ids).metadata == [{"x": 5, "f0": 1}] * 20 + [{"x": "five", "f1": 1}] * 20
    assert len(col.search([1.0, 2.0], k=50, filter={"x": 5}).ids[0]) == 20
    col.close()
