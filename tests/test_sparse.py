"""Sparse vectors and sparse-dense hybrid search at the Collection level, checked against brute force.

The reference is computed here with NumPy in float64: score = dense inner product + sparse dot
product (a record with no sparse vector scores its dense part only), best first, ties to the
smaller id. Random continuous values keep ties away from the k-th place; where two scores are
within float32 rounding of each other the order among them may differ (``assert_same_knn``).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import gpusearch as gs
from gpusearch.errors import InvalidArgumentError
from gpusearch.replica import ShardFollower
from gpusearch.sparse import MAX_SPARSE_NNZ, SparseVector, check_sparse
from knn_check import assert_same_knn, recall_at
from test_replica import crash  # stop a writer as a kill would

DIM = 16
VOCAB = 400
RTOL = ATOL = 1e-5  # float32 scores (about 10 in size) against float64 sums


# -- data and the reference -------------------------------------------------------------------------
def rand_sparse(rng, lo=5, hi=20, vocab=VOCAB):
    """A sparse vector as a client sends it: a dict, indices unsorted, positive float32 values."""
    nnz = int(rng.integers(lo, hi + 1))
    idx = rng.choice(vocab, nnz, replace=False)
    val = rng.uniform(0.2, 3.0, nnz).astype(np.float32)
    return {"indices": [int(i) for i in idx], "values": [float(v) for v in val]}


def norm_sparse(sv):
    """``(indices uint32, values float32)`` sorted by index, or None for no (or an empty) sparse vector."""
    if sv is None:
        return None
    if isinstance(sv, SparseVector):
        idx, val = sv.indices, sv.values
    elif isinstance(sv, tuple):
        idx, val = sv
    else:
        idx, val = sv["indices"], sv["values"]
    idx, val = np.asarray(idx, np.int64), np.asarray(val, np.float32)
    if len(idx) == 0:
        return None
    order = np.argsort(idx, kind="stable")
    return idx[order].astype(np.uint32), val[order]


def sparse_dot(a, b) -> float:
    if a is None or b is None:
        return 0.0
    _, ia, ib = np.intersect1d(a[0], b[0], assume_unique=True, return_indices=True)
    return float(np.dot(a[1][ia].astype(np.float64), b[1][ib].astype(np.float64)))


class Model:
    """What the collection should hold: per id its dense vector (None in a sparse collection), its
    sparse vector (normalised, or None) and its metadata."""

    def __init__(self):
        self.vec, self.sp, self.meta = {}, {}, {}

    def upsert(self, ids, vecs, sparse, metas):
        for j, rid in enumerate(ids):
            self.vec[rid] = None if vecs is None else np.asarray(vecs[j], np.float32)
            self.sp[rid] = norm_sparse(sparse[j])
            self.meta[rid] = dict(metas[j])

    def delete(self, ids):
        for rid in ids:
            for d in (self.vec, self.sp, self.meta):
                d.pop(rid, None)

    def __len__(self):
        return len(self.meta)

    def search(self, q, sq, k, allow=None):
        """Exact top-k: ids and float64 scores, ties to the smaller id."""
        qs = norm_sparse(sq)
        q64 = None if q is None else np.asarray(q, np.float64).reshape(-1)
        ids = sorted(i for i in self.meta if allow is None or allow(self.meta[i]))
        scores = {}
        for rid in ids:
            s = 0.0 if q64 is None else float(self.vec[rid].astype(np.float64) @ q64)
            scores[rid] = s + sparse_dot(self.sp[rid], qs)
        top = sorted(ids, key=lambda i: (-scores[i], i))[:k]
        return top, np.array([scores[i] for i in top], np.float64)


def meta_of(rid: str) -> dict:
    n = int(rid[1:])
    return {"g": n % 3, "n": n}


def write(col, model, rng, ids, *, p_none=0.2, p_empty=0.05, dim=DIM):
    """Upsert ``ids`` with fresh dense and sparse vectors; some get none, some an empty one (counts as none)."""
    x = rng.standard_normal((len(ids), dim)).astype(np.float32)
    sparse = []
    for _ in ids:
        u = rng.random()
        sparse.append(None if u < p_none else {"indices": [], "values": []} if u < p_none + p_empty
                      else rand_sparse(rng))
    metas = [meta_of(i) for i in ids]
    col.upsert(ids, x, metadata=metas, sparse_values=sparse)
    model.upsert(ids, x, sparse, metas)
    return x


def assert_sparse_equal(got, want, where=""):
    """``got`` (a SparseVector or None) is ``want`` (normalised or None) exactly."""
    if want is None:
        assert got is None, f"{where}: expected no sparse vector, got {got!r}"
        return
    assert isinstance(got, SparseVector), f"{where}: expected a SparseVector, got {got!r}"
    assert got.indices.dtype == np.uint32 and got.values.dtype == np.float32, where
    np.testing.assert_array_equal(got.indices, want[0], err_msg=where)
    np.testing.assert_array_equal(got.values, want[1], err_msg=where)


def check(col, model, rng, *, nq=3, k=10, filter=None, allow=None, include_vectors=False, dense=True):
    """``nq`` random hybrid queries answer as the reference does."""
    for _ in range(nq):
        q = rng.standard_normal(DIM).astype(np.float32) if dense else None
        sq = rand_sparse(rng, 10, 30)
        res = col.search(q, k=k, sparse_vector=sq, filter=filter, include_vectors=include_vectors)
        want_ids, want_scores = model.search(q, sq, k, allow)
        assert_same_knn(res.ids, res.scores, [want_ids], [want_scores], rtol=RTOL, atol=ATOL)
        if include_vectors:
            assert res.sparse is not None and len(res.sparse[0]) == len(res.ids[0])
            assert len(res[0].sparse) == len(res[0].ids)
            for j, rid in enumerate(res.ids[0]):
                assert_sparse_equal(res.sparse[0][j], model.sp[rid], f"hit {rid}")
                assert_sparse_equal(res[0].sparse[j], model.sp[rid], f"hit {rid}")
                if dense:
                    np.testing.assert_array_equal(res.vectors[0][j], model.vec[rid])
        else:
            assert res.sparse is None


def check_fetch(col, model, ask):
    ask = list(dict.fromkeys(list(ask) + ["never-written"]))  # fetch gives a record once
    res = col.fetch(ask)
    live = [i for i in ask if i in model.meta]
    assert res.ids == live
    assert sorted(res.missing) == sorted(set(ask) - set(live))
    assert len(res.sparse) == len(res.ids)
    for j, rid in enumerate(res.ids):
        assert_sparse_equal(res.sparse[j], model.sp[rid], f"fetch {rid}")
        if model.vec[rid] is not None:
            np.testing.assert_array_equal(res.vectors[j], model.vec[rid])
        assert res.metadata[j] == model.meta[rid]


def ip_collection(path, **kw):
    kw.setdefault("shards", 3)
    return gs.Collection.create(path, dim=DIM, metric="ip", device="cpu", fsync=False, **kw)


NOT_EVEN = {"g": {"$ne": 1}}


def not_even(m):
    return m["g"] != 1


# -- SparseVector --------------------------------------------------------------------------------
DUP = r"(?i)duplicate|repeat|more than once"
RANGE = r"(?i)negative|range|between|>= ?0|2\*\*32|4294967295|4294967296|uint32"
BAD_SPARSE = [
    ("duplicate", {"indices": [3, 1, 3], "values": [1.0, 2.0, 3.0]}, DUP),
    ("negative", {"indices": [-1, 2], "values": [1.0, 2.0]}, RANGE),
    ("too large", {"indices": [2, 2**32], "values": [1.0, 2.0]}, RANGE),
    ("float index", {"indices": [1.5, 2], "values": [1.0, 2.0]}, r"(?i)integer|int"),
    ("nan", {"indices": [1, 2], "values": [math.nan, 2.0]}, r"(?i)nan|finite"),
    ("inf", {"indices": [1, 2], "values": [1.0, math.inf]}, r"(?i)inf|finite"),
    ("-inf", {"indices": [1, 2], "values": [-math.inf, 1.0]}, r"(?i)inf|finite"),
    ("length", {"indices": [1, 2, 3], "values": [1.0, 2.0]}, r"(?i)length|same|mismatch|match|as many"),
    ("too many", {"indices": list(range(MAX_SPARSE_NNZ + 1)), "values": [1.0] * (MAX_SPARSE_NNZ + 1)},
     r"2048|MAX_SPARSE_NNZ"),
    ("no indices", {"values": [1.0]}, r"(?i)missing.*indices"),
    ("no values", {"indices": [1]}, r"(?i)missing.*values"),
    ("tuple duplicate", ([4, 4], [1.0, 2.0]), DUP),
    ("tuple length", ([4, 5], [1.0]), r"(?i)length|same|mismatch|match|as many"),
]


@pytest.mark.parametrize("name, bad, match", BAD_SPARSE, ids=[c[0] for c in BAD_SPARSE])
def test_check_sparse_refuses_bad_input_naming_the_problem(name, bad, match):
    assert MAX_SPARSE_NNZ == 2048
    with pytest.raises((ValueError, TypeError), match=match):
        check_sparse(bad, name="sparse_values")


def test_check_sparse_refuses_what_is_not_a_sparse_vector():
    for bad in ("abc", 3, [1, 2, 3]):
        with pytest.raises((ValueError, TypeError)):
            check_sparse(bad, name="sparse_vector")


def test_check_sparse_sorts_and_converts():
    sv = check_sparse({"indices": [5, 1, 2**32 - 1, 3], "values": [0.5, 0.1, 9, -0.3]}, name="s")
    assert isinstance(sv, SparseVector) and len(sv) == 4
    assert sv.indices.dtype == np.uint32 and sv.values.dtype == np.float32
    assert sv.indices.tolist() == [1, 3, 5, 2**32 - 1]
    np.testing.assert_array_equal(sv.values, np.array([0.1, -0.3, 0.5, 9.0], np.float32))
    d = sv.as_dict()
    assert d["indices"] == [1, 3, 5, 2**32 - 1] and all(type(i) is int for i in d["indices"])
    np.testing.assert_allclose(d["values"], [0.1, -0.3, 0.5, 9.0], rtol=1e-7)
    assert all(type(v) is float for v in d["values"])
    # a tuple, NumPy arrays and a SparseVector are taken as well, and give the same vector
    t = check_sparse((np.array([5, 1, 2**32 - 1, 3], np.int64), np.array([0.5, 0.1, 9, -0.3])), name="s")
    np.testing.assert_array_equal(t.indices, sv.indices)
    np.testing.assert_array_equal(t.values, sv.values)
    again = check_sparse(sv, name="s")
    np.testing.assert_array_equal(again.indices, sv.indices)
    np.testing.assert_array_equal(again.values, sv.values)
    # the limit itself is allowed
    full = check_sparse({"indices": list(range(MAX_SPARSE_NNZ))[::-1], "values": [1.0] * MAX_SPARSE_NNZ}, name="s")
    assert len(full) == MAX_SPARSE_NNZ and full.indices[0] == 0 and full.indices[-1] == MAX_SPARSE_NNZ - 1
    with pytest.raises(Exception):  # frozen
        sv.indices = np.array([0], np.uint32)


@pytest.mark.parametrize("name, bad, match", BAD_SPARSE[:9], ids=[c[0] for c in BAD_SPARSE[:9]])
def test_bad_sparse_refused_by_upsert_update_and_search(tmp_path, rng, name, bad, match):
    col = ip_collection(tmp_path / "c", shards=2)
    x = rng.standard_normal((3, DIM)).astype(np.float32)
    col.upsert(["a", "b", "c"], x, sparse_values=[rand_sparse(rng), None, rand_sparse(rng)])
    before = col.fetch(["a"])
    with pytest.raises((ValueError, TypeError), match=match):
        col.upsert(["d"], x[:1], sparse_values=[bad])
    with pytest.raises((ValueError, TypeError), match=match):
        col.update("a", sparse_values=bad)
    with pytest.raises((ValueError, TypeError), match=match):
        col.search(x[0], k=2, sparse_vector=bad)
    assert len(col) == 3 and col.fetch(["d"]).missing == ["d"]
    after = col.fetch(["a"])
    assert_sparse_equal(after.sparse[0], norm_sparse(before.sparse[0]), "a after refused update")
    col.close()


# -- hybrid on Flat: exact --------------------------------------------------------------------------
def test_hybrid_flat_is_exact_through_writes_filters_checkpoint_compaction_and_reopen(tmp_path, rng):
    path = tmp_path / "c"
    col = ip_collection(path, shards=3)
    assert col.vector_type == "dense"
    model = Model()
    ids = [f"r{i:03d}" for i in range(300)]
    write(col, model, rng, ids[:200])
    write(col, model, rng, ids[200:])
    assert len(col) == 300
    assert sum(model.sp[i] is None for i in ids) > 30  # some records have no sparse vector
    check(col, model, rng, include_vectors=True)
    check(col, model, rng, filter=NOT_EVEN, allow=not_even)
    check(col, model, rng, nq=2, k=50, filter={"n": {"$lt": 40}}, allow=lambda m: m["n"] < 40)  # fewer than k pass
    check_fetch(col, model, ids[:50])

    col.delete(ids[:30])
    model.delete(ids[:30])
    assert len(col) == 270
    check(col, model, rng)
    check(col, model, rng, filter=NOT_EVEN, allow=not_even)

    # overwrite: new dense and sparse values; half of them now have no sparse vector at all
    write(col, model, rng, ids[30:60], p_none=0.5)
    check(col, model, rng, include_vectors=True)
    check_fetch(col, model, ids[25:65])

    # update(sparse_values=...) replaces the sparse vector, also of a record that had none;
    # a metadata-only update keeps it
    had_none = [i for i in ids[100:] if model.sp[i] is None][:4]
    assert had_none
    for j, rid in enumerate(ids[60:70] + had_none):
        sv = rand_sparse(rng)
        col.update(rid, sparse_values=sv if j % 2 else check_sparse(sv, name="s"))
        model.sp[rid] = norm_sparse(sv)
    kept = next(i for i in ids[70:100] if model.sp[i] is not None)
    col.update(kept, set_metadata={"g": 1})
    model.meta[kept]["g"] = 1
    check(col, model, rng, include_vectors=True)
    check(col, model, rng, filter=NOT_EVEN, allow=not_even)
    check_fetch(col, model, ids[55:110] + had_none + [kept])

    col.checkpoint()
    check(col, model, rng)
    check_fetch(col, model, ids)

    col.close()  # after a checkpoint: everything from snapshot segments
    col = gs.Collection.open(path, device="cpu")
    assert len(col) == len(model)
    check(col, model, rng, include_vectors=True)
    check(col, model, rng, filter=NOT_EVEN, allow=not_even)
    check_fetch(col, model, ids)

    # writes only (no explicit checkpoint), then reopen
    more = [f"r{i:03d}" for i in range(300, 330)]
    write(col, model, rng, more)
    col.delete(ids[100:110])
    model.delete(ids[100:110])
    for rid in ids[110:115]:
        sv = rand_sparse(rng)
        col.update(rid, sparse_values=sv)
        model.sp[rid] = norm_sparse(sv)
    col.close()
    col = gs.Collection.open(path, device="cpu")
    assert len(col) == len(model)
    check(col, model, rng, include_vectors=True)
    check_fetch(col, model, ids + more)

    col.delete(ids[120:160])
    model.delete(ids[120:160])
    col.compact()
    check(col, model, rng, include_vectors=True)
    check(col, model, rng, filter=NOT_EVEN, allow=not_even)
    check_fetch(col, model, ids + more)
    col.close()
    col = gs.Collection.open(path, device="cpu")
    check(col, model, rng)
    check_fetch(col, model, ids + more)
    col.close()


def test_hybrid_after_wal_replay(tmp_path, rng):
    """Writes after the last checkpoint come back from the WAL alone (a writer stopped without closing)."""
    path = tmp_path / "c"
    col = ip_collection(path, shards=3)
    model = Model()
    ids = [f"r{i:03d}" for i in range(150)]
    write(col, model, rng, ids[:100])
    col.checkpoint()
    write(col, model, rng, ids[100:])  # new ones
    write(col, model, rng, ids[:20], p_none=0.5)  # overwrites
    col.delete(ids[20:30])
    model.delete(ids[20:30])
    for rid in ids[30:36]:
        sv = rand_sparse(rng)
        col.update(rid, sparse_values=sv)
        model.sp[rid] = norm_sparse(sv)
    crash(col)
    col = gs.Collection.open(path, device="cpu")
    assert len(col) == len(model) == 140
    check(col, model, rng, include_vectors=True)
    check(col, model, rng, filter=NOT_EVEN, allow=not_even)
    check_fetch(col, model, ids)
    col.close()


def test_hybrid_query_forms_and_refusals(tmp_path, rng):
    col = ip_collection(tmp_path / "c", shards=2)
    model = Model()
    ids = [f"r{i:03d}" for i in range(120)]
    x = write(col, model, rng, ids)
    q = rng.standard_normal(DIM).astype(np.float32)
    sq = rand_sparse(rng, 10, 30)
    want = col.search(q, k=10, sparse_vector=sq)
    want_ids, want_scores = model.search(q, sq, 10)
    assert_same_knn(want.ids, want.scores, [want_ids], [want_scores], rtol=RTOL, atol=ATOL)
    norm = norm_sparse(sq)
    for form in (check_sparse(sq, name="s"), (list(reversed(sq["indices"])), list(reversed(sq["values"]))),
                 {"indices": norm[0].tolist(), "values": norm[1].tolist()}):
        for qq in (q, q[None, :], q.tolist()):
            got = col.search(qq, k=10, sparse_vector=form)
            assert got.ids == want.ids
            np.testing.assert_array_equal(got.scores[0], want.scores[0])
    # without a sparse vector the search is dense only, sparse vectors or not
    dense = col.search(q, k=10)
    ref = Model()
    ref.upsert(ids, x, [None] * len(ids), [{}] * len(ids))
    d_ids, d_scores = ref.search(q, None, 10)
    assert_same_knn(dense.ids, dense.scores, [d_ids], [d_scores], rtol=RTOL, atol=ATOL)
    # a query sparse vector overlapping nothing scores the dense part only
    far = {"indices": [VOCAB + 7, VOCAB + 9], "values": [5.0, 5.0]}
    got = col.search(q, k=10, sparse_vector=far)
    assert_same_knn(got.ids, got.scores, [d_ids], [d_scores], rtol=RTOL, atol=ATOL)
    with pytest.raises((ValueError, TypeError)):  # a sparse vector goes with exactly one query
        col.search(x[:2], k=5, sparse_vector=sq)
    col.close()


# -- sparse-only collections ----------------------------------------------------------------------
def test_sparse_only_collection(tmp_path, rng):
    path = tmp_path / "s"
    col = gs.Collection.create(path, dim=None, metric="ip", vector_type="sparse", shards=2, device="cpu",
                               fsync=False)
    assert col.vector_type == "sparse" and col.dim == 0
    model = Model()
    ids = [f"r{i:03d}" for i in range(200)]
    sparse = [rand_sparse(rng, vocab=200) for _ in ids]
    metas = [meta_of(i) for i in ids]
    col.upsert(ids, sparse_values=sparse, metadata=metas)
    model.upsert(ids, None, sparse, metas)
    assert len(col) == 200

    res = col.fetch(ids[:20] + ["nope"])
    assert res.ids == ids[:20] and res.missing == ["nope"]
    assert np.asarray(res.vectors).shape == (20, 0)
    for rid, sv in zip(res.ids, res.sparse):
        assert_sparse_equal(sv, model.sp[rid], f"fetch {rid}")
        assert sv.indices.tolist() == sorted(sparse[ids.index(rid)]["indices"])  # sent values, sorted

    check(col, model, rng, nq=4, dense=False, include_vectors=True)
    check(col, model, rng, dense=False, filter=NOT_EVEN, allow=not_even)
    sq = check_sparse(rand_sparse(rng, 10, 30), name="s")
    a = col.search(k=5, sparse_vector=sq)
    b = col.search(None, 5, sparse_vector=sq.as_dict())
    assert a.ids == b.ids and len(a.ids[0]) == 5

    col.delete(ids[:20])
    model.delete(ids[:20])
    for rid in ids[20:30]:
        sv = rand_sparse(rng, vocab=200)
        col.update(rid, sparse_values=sv)
        model.sp[rid] = norm_sparse(sv)
    new = [rand_sparse(rng, vocab=200) for _ in ids[30:40]]  # overwrite
    col.upsert(ids[30:40], sparse_values=new, metadata=[meta_of(i) for i in ids[30:40]])
    model.upsert(ids[30:40], None, new, [meta_of(i) for i in ids[30:40]])
    check(col, model, rng, dense=False, include_vectors=True)
    check_fetch(col, model, ids[:50])
    col.checkpoint()
    more = [f"r{i:03d}" for i in range(200, 220)]
    extra = [rand_sparse(rng, vocab=200) for _ in more]
    col.upsert(more, sparse_values=extra, metadata=[meta_of(i) for i in more])
    model.upsert(more, None, extra, [meta_of(i) for i in more])
    col.close()
    col = gs.Collection.open(path, device="cpu")
    assert col.vector_type == "sparse" and col.dim == 0 and len(col) == len(model)
    check(col, model, rng, dense=False, include_vectors=True)
    check_fetch(col, model, ids + more)
    col.compact()
    check(col, model, rng, dense=False)
    check_fetch(col, model, ids + more)
    col.close()


def test_sparse_only_collection_refusals(tmp_path, rng):
    for i, (kw, match) in enumerate([({"dim": 8}, r"dim"), ({"metric": "cosine"}, r"ip|metric"),
                                     ({"metric": "l2"}, r"ip|metric"), ({"index": "HNSW32"}, r"Flat|index")]):
        args = {"dim": None, "metric": "ip", "index": "Flat", **kw}
        with pytest.raises((ValueError, TypeError), match=match):
            gs.Collection.create(tmp_path / f"bad{i}", vector_type="sparse", device="cpu", fsync=False, **args)
    with pytest.raises((ValueError, TypeError), match="vector_type"):
        gs.Collection.create(tmp_path / "bad-type", dim=8, metric="ip", vector_type="bogus", device="cpu")

    col = gs.Collection.create(tmp_path / "s", dim=None, metric="ip", vector_type="sparse", device="cpu",
                               fsync=False)
    col.upsert(["a", "b"], sparse_values=[rand_sparse(rng), rand_sparse(rng)])
    good = rand_sparse(rng)
    with pytest.raises((ValueError, TypeError), match=r"(?i)sparse"):  # dense vectors in a sparse collection
        col.upsert(["c"], [[1.0, 2.0, 3.0]], sparse_values=[good])
    with pytest.raises((ValueError, TypeError), match=r"(?i)sparse"):  # no sparse values at all
        col.upsert(["c"])
    with pytest.raises((ValueError, TypeError), match=r"(?i)sparse"):  # a record without one
        col.upsert(["c", "d"], sparse_values=[good, None])
    with pytest.raises((ValueError, TypeError), match=r"(?i)sparse|empty"):  # an empty one
        col.upsert(["c", "d"], sparse_values=[good, {"indices": [], "values": []}])
    assert len(col) == 2 and col.fetch(["c", "d"]).missing == ["c", "d"]
    with pytest.raises((ValueError, TypeError), match=r"(?i)sparse"):  # a search needs the sparse vector
        col.search(k=3)
    with pytest.raises((ValueError, TypeError)):  # and no dense query
        col.search([1.0, 2.0], k=3, sparse_vector=good)
    assert col.search(k=3, sparse_vector=good).ids[0]
    col.close()


# -- approximate indexes: the union of both sides' candidates, re-scored --------------------------
@pytest.mark.parametrize("index", ["HNSW32", "IVF16,Flat"])
def test_hybrid_recall_of_approximate_indexes(tmp_path, index):
    rng = np.random.default_rng(17)
    n, nq, k = 1000, 20, 10
    centres = rng.standard_normal((20, DIM)).astype(np.float32)
    x = (centres[rng.integers(0, 20, n)] + rng.standard_normal((n, DIM))).astype(np.float32)
    qs = (centres[rng.integers(0, 20, nq)] + rng.standard_normal((nq, DIM))).astype(np.float32)
    ids = [f"r{i:04d}" for i in range(n)]
    sparse = [None if rng.random() < 0.2 else rand_sparse(rng) for _ in ids]
    col = gs.Collection.create(tmp_path / "c", dim=DIM, metric="ip", index=index, device="cpu", fsync=False)
    col.upsert(ids, x, sparse_values=sparse)
    if index.startswith("IVF"):  # 1,000 rows are enough for IVF16 to train: the search is approximate
        assert col.stats()["shards"][0]["index_trained"] is True
    model = Model()
    model.upsert(ids, x, sparse, [{}] * n)
    got, want, changed = [], [], 0
    for q in qs:
        sq = rand_sparse(rng, 10, 30)
        res = col.search(q, k=k, sparse_vector=sq)
        ref_ids, ref_scores = model.search(q, sq, k)
        got.append(res.ids[0])
        want.append(ref_ids)
        exact = dict(zip(ref_ids, ref_scores))
        for rid, s in zip(res.ids[0], res.scores[0]):  # what comes back is scored exactly
            if rid in exact:
                assert s == pytest.approx(exact[rid], rel=RTOL, abs=ATOL)
        changed += model.search(q, None, k)[0] != ref_ids
    assert changed >= nq // 2, f"the sparse part changed the top {k} of only {changed} of {nq} queries"
    recall = recall_at(got, want, k)
    assert recall >= 0.95, f"{index}: hybrid recall@{k} {recall:.3f} against brute force"
    col.close()


# -- refusals that write nothing ------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_sparse_values_need_the_ip_metric(tmp_path, rng, metric):
    col = gs.Collection.create(tmp_path / "c", dim=DIM, metric=metric, shards=2, device="cpu", fsync=False)
    x = rng.standard_normal((6, DIM)).astype(np.float32)
    col.upsert(["a", "b"], x[:2])
    with pytest.raises(InvalidArgumentError, match=metric):
        col.upsert(["c", "d", "e", "f"], x[2:], sparse_values=[rand_sparse(rng) for _ in range(4)])
    with pytest.raises(InvalidArgumentError, match=metric):
        col.upsert(["a"], x[2:3], sparse_values=[rand_sparse(rng)])
    with pytest.raises(InvalidArgumentError, match=metric):
        col.update("a", sparse_values=rand_sparse(rng))
    assert len(col) == 2
    res = col.fetch(["a", "b", "c"])
    assert res.ids == ["a", "b"] and res.missing == ["c"]
    np.testing.assert_allclose(res.vectors, x[:2], rtol=1e-6)
    col.close()


@pytest.mark.parametrize("bad", [{"indices": [1, 1], "values": [1.0, 2.0]},
                                 {"indices": [1, 2], "values": [1.0, math.nan]},
                                 {"indices": list(range(MAX_SPARSE_NNZ + 1)), "values": [1.0] * (MAX_SPARSE_NNZ + 1)}],
                         ids=["duplicate", "nan", "too-many"])
def test_a_rejected_batch_writes_nothing(tmp_path, rng, bad):
    path = tmp_path / "c"
    col = ip_collection(path, shards=3)
    model = Model()
    ids = [f"r{i:03d}" for i in range(20)]
    write(col, model, rng, ids, p_none=0.0, p_empty=0.0)
    seq = col.stats()["sequence"]
    batch = ids[:3] + [f"n{i}" for i in range(10)]  # overwrites and new records, across shards
    x = rng.standard_normal((len(batch), DIM)).astype(np.float32)
    sparse = [rand_sparse(rng) for _ in batch]
    sparse[7] = bad
    with pytest.raises((ValueError, TypeError)):
        col.upsert(batch, x, metadata=[{"g": 9}] * len(batch), sparse_values=sparse)
    with pytest.raises((ValueError, TypeError)):  # one sparse item per id
        col.upsert(batch, x, sparse_values=sparse[:5])
    assert len(col) == 20 and col.stats()["sequence"] == seq
    check_fetch(col, model, batch)
    check(col, model, rng, nq=2)
    col.close()
    col = gs.Collection.open(path, device="cpu")
    assert len(col) == 20
    check_fetch(col, model, batch)
    col.close()


# -- a follower answers as the collection does ----------------------------------------------------
def test_follower_answers_hybrid_search_as_the_collection(tmp_path, rng):
    col = ip_collection(tmp_path / "c", shards=1)
    model = Model()
    ids = [f"r{i:03d}" for i in range(150)]
    write(col, model, rng, ids)
    f = ShardFollower.open(col.path, 0, device="cpu")

    def same(k=10, filter=None, allow=None):
        for _ in range(3):
            q = rng.standard_normal(DIM).astype(np.float32)
            sq = rand_sparse(rng, 10, 30)
            want = col.search(q, k=k, sparse_vector=sq, filter=filter, include_vectors=True)
            got = f.search(q, k, sparse_vector=sq, filter=filter, include_vectors=True)
            n = len(want.ids[0])
            ref_ids, ref_scores = model.search(q, sq, k, allow)
            assert_same_knn(want.ids, want.scores, [ref_ids], [ref_scores], rtol=RTOL, atol=ATOL)
            assert list(got.ids[0][:n]) == want.ids[0]
            np.testing.assert_allclose(got.scores[0][:n], want.scores[0], rtol=RTOL, atol=ATOL)
            assert got.sparse is not None
            for j, rid in enumerate(want.ids[0]):
                assert_sparse_equal(got.sparse[0][j], model.sp[rid], f"follower hit {rid}")

    same()
    same(filter=NOT_EVEN, allow=not_even)
    write(col, model, rng, ids[:20], p_none=0.5)  # overwrites
    write(col, model, rng, [f"r{i:03d}" for i in range(150, 170)])
    col.delete(ids[20:30])
    model.delete(ids[20:30])
    for rid in ids[30:40]:
        sv = rand_sparse(rng)
        col.update(rid, sparse_values=sv)
        model.sp[rid] = norm_sparse(sv)
    f.refresh()
    same()
    same(k=30, filter=NOT_EVEN, allow=not_even)
    col.checkpoint()
    f.refresh()
    same()
    f.close()
    col.close()


# -- the sparse candidates of an approximate index: top_rows and dot --------------------------------
def _rows_with_tail(rng, n_copy=300, n_tail=40):
    """A SparseRows whose first ``n_copy`` rows are in its term-ordered copy and the rest appended after
    it; values of both signs, some rows without entries. Returns it and the rows (normalised)."""
    from gpusearch.sparse import SparseRows

    def one():
        if rng.random() < 0.1:
            return None
        v = rand_sparse(rng, 3, 25, vocab=60)  # a small vocabulary: every term in many rows
        v["values"] = [x * (1 if rng.random() < 0.8 else -1) for x in v["values"]]
        return check_sparse(v)

    rows = SparseRows()
    first = [one() for _ in range(n_copy)]
    rows.append(first)
    rows.entries(np.array([0], np.uint32), n_copy)  # builds the copy over the rows so far
    tail = [one() for _ in range(n_tail)]
    rows.append(tail)
    return rows, [None if v is None else (v.indices, v.values) for v in first + tail]


def test_sparse_dot_of_chosen_rows_is_the_full_scoring_to_the_bit():
    rng = np.random.default_rng(5)
    rows, _ = _rows_with_tail(rng)
    n = rows.n
    for _ in range(20):
        q = check_sparse(rand_sparse(rng, 1, 30, vocab=70))  # terms no row holds too
        full = rows.scores(q, n)
        pick = np.sort(rng.choice(n, 50, replace=False))
        np.testing.assert_array_equal(rows.dot(q, pick), full[pick])
    assert rows.dot(q, np.empty(0, np.int64)).shape == (0,)


def test_sparse_top_rows_reads_each_terms_best_rows_and_falls_back_under_a_filter():
    rng = np.random.default_rng(6)
    rows, norm = _rows_with_tail(rng)
    n = rows.n
    for trial in range(30):
        q = check_sparse(rand_sparse(rng, 1, 8, vocab=60))
        if trial % 3 == 0:  # a negative weight reads its term's most negative rows
            q = SparseVector(q.indices, -q.values)
        exact = rows.scores(q, n)
        # deep enough to read every run whole: every row with a positive score, and only those
        got = rows.top_rows(q, n, n)
        np.testing.assert_array_equal(got, np.flatnonzero(exact > 0))
        # shallow: at most `depth` rows, ascending, each with a positive partial score; for each term
        # the rows that add the most to it through the copy are among those read
        depth = 10
        got = rows.top_rows(q, n, depth)
        assert len(got) <= depth and np.all(np.diff(got) > 0) and np.all(got >= 0) and np.all(got < n)
        # the best row of a one-term query is always found
        t = int(q.indices[0])
        one = SparseVector(q.indices[:1], q.values[:1])
        s1 = rows.scores(one, n)
        if s1.max() > 0:
            assert int(np.argmax(s1)) in rows.top_rows(one, n, 1).tolist(), (trial, t)
        # a filter that lets few rows through: the candidates are those rows, found although the
        # terms' best rows are all filtered out (every run is read when too few are left)
        allow = np.zeros(n, bool)
        allow[rng.choice(n, 15, replace=False)] = True
        want = np.flatnonzero((exact > 0) & allow)
        got = rows.top_rows(q, n, depth, allow)
        np.testing.assert_array_equal(got, np.sort(want[np.argsort(-exact[want], kind="stable")[:depth]])
                                      if len(want) > depth else want)


def test_hybrid_on_hnsw_with_a_selective_filter_and_deletes_matches_brute_force(tmp_path):
    rng = np.random.default_rng(23)
    n, k = 1500, 10
    ids = [f"r{i:04d}" for i in range(n)]
    col = gs.Collection.create(tmp_path / "c", dim=DIM, metric="ip", index="HNSW32", device="cpu", fsync=False)
    model = Model()
    write(col, model, rng, ids)
    gone = ids[::7]
    col.delete(gone)
    model.delete(gone)
    got, want = [], []
    for j in range(20):
        q = rng.standard_normal(DIM).astype(np.float32)
        sq = rand_sparse(rng, 10, 30)
        f = {"n": {"$lt": 120}} if j % 2 else {"g": 1}  # 7% of the rows, then a third
        res = col.search(q, k=k, sparse_vector=sq, filter=f)
        keep = (lambda m: m["n"] < 120) if j % 2 else (lambda m: m["g"] == 1)
        ref_ids, ref_scores = model.search(q, sq, k, allow=keep)
        assert all(keep(meta_of(i)) and i not in gone for i in res.ids[0])
        exact = dict(zip(ref_ids, ref_scores))
        for rid, s in zip(res.ids[0], res.scores[0]):
            if rid in exact:
                assert s == pytest.approx(exact[rid], rel=RTOL, abs=ATOL)
        got.append(res.ids[0])
        want.append(ref_ids)
    assert recall_at(got, want, k) >= 0.95
    col.close()
