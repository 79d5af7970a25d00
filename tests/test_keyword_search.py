"""BM25 keyword search and its fusion with dense search (gpusearch.bm25): scores equal a reference
computation of Okapi BM25 on a small corpus over the whole collection (any number of shards), through
writes, deletes, updates, filters and a reopen; fusion by reciprocal rank and by weighted sum; the
same through the served app (``text`` with ``mode``)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gpusearch import Collection
from gpusearch.bm25 import check_fusion, fuse, tokenize
from gpusearch.errors import InvalidArgumentError

DOCS = ["the quick brown fox jumps over the lazy dog", "a fox is a small omnivore", "dogs and foxes are canids",
        "quantum chromodynamics of quarks", "the brown dog sleeps", "fox fox fox hunting season", "lazy afternoon",
        "Brown bears and brown rice", "an unrelated sentence about tea", "hunting dogs chase the fox"]


def reference(docs: dict[str, str], query: str, k1=1.2, b=0.75) -> dict[str, float]:
    """Okapi BM25 of every document for ``query``, written out from its definition."""
    toks = {i: tokenize(t) for i, t in docs.items()}
    toks = {i: t for i, t in toks.items() if t}
    n = len(toks)
    avg = sum(len(t) for t in toks.values()) / n
    out = {}
    for i, t in toks.items():
        s = 0.0
        for w in set(tokenize(query)):
            df = sum(w in other for other in toks.values())
            tf = t.count(w)
            s += math.log(1 + (n - df + 0.5) / (df + 0.5)) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(t) / avg))
        if s > 0:
            out[i] = s
    return out


def top(scores: dict[str, float], k: int) -> list[str]:
    return sorted(scores, key=lambda i: (-scores[i], i))[:k]


def check(col, docs, query, k=5, flt=None, allowed=None):
    ref = reference(docs, query)
    if allowed is not None:
        ref = {i: s for i, s in ref.items() if i in allowed}
    r = col.search(keywords=query, k=k, filter=flt)
    assert r.ids[0] == top(ref, k), (query, r.ids[0], top(ref, k))
    np.testing.assert_allclose(r.scores[0], [ref[i] for i in r.ids[0]], rtol=1e-5)


@pytest.mark.parametrize("shards", [1, 3])
def test_bm25_equals_the_reference_through_writes_deletes_updates_and_reopen(tmp_path, rng, shards):
    X = rng.standard_normal((len(DOCS), 8)).astype(np.float32)
    col = Collection.create(tmp_path / "c", dim=8, shards=shards, bm25_field="text", fsync=False)
    docs = {f"d{i}": t for i, t in enumerate(DOCS)}
    col.upsert(list(docs), X, [{"text": t, "n": i} for i, t in enumerate(DOCS)])
    col.upsert(["no-text"], X[:1], [{"n": 99}])  # a record without the field: in no keyword list
    for q in ("brown fox", "lazy dogs", "quarks", "hunting season fox"):
        check(col, docs, q)
    check(col, docs, "fox", flt={"n": {"$gte": 4}}, allowed={f"d{i}" for i in range(4, len(DOCS))})
    col.delete(["d5"])
    del docs["d5"]
    check(col, docs, "fox hunting")
    col.upsert(["d1"], X[1:2], [{"text": "nothing about that animal"}])  # overwrite: old terms leave the stats
    docs["d1"] = "nothing about that animal"
    check(col, docs, "fox")
    col.update("d3", set_metadata={"text": "brown brown fox"})
    docs["d3"] = "brown brown fox"
    check(col, docs, "brown fox")
    col.checkpoint()
    col.upsert(["late"], X[:1], [{"text": "a late fox"}])
    docs["late"] = "a late fox"
    col.close()
    col = Collection.open(tmp_path / "c")
    check(col, docs, "late fox")
    col.compact()
    check(col, docs, "brown fox dog")
    col.close()


def test_fusion_rrf_and_weighted(tmp_path, rng):
    X = rng.standard_normal((len(DOCS), 8)).astype(np.float32)
    col = Collection.create(tmp_path / "c", dim=8, metric="ip", bm25_field="text", fsync=False)
    ids = [f"d{i}" for i in range(len(DOCS))]
    col.upsert(ids, X, [{"text": t} for t in DOCS])
    q = rng.standard_normal(8).astype(np.float32)
    dense = X @ q
    kw = reference(dict(zip(ids, DOCS)), "brown fox")
    d_rank = sorted(ids, key=lambda i: (-dense[ids.index(i)], i))
    k_rank = top(kw, len(kw))
    rrf = {i: 1 / (60 + d_rank.index(i) + 1) + (1 / (60 + k_rank.index(i) + 1) if i in kw else 0) for i in ids}
    r = col.search(q, k=5, keywords="brown fox", fusion="rrf", include_metadata=True)
    assert r.ids[0] == top(rrf, 5)
    np.testing.assert_allclose(r.scores[0], [rrf[i] for i in r.ids[0]], rtol=1e-6)
    assert r.metadata[0][0]["text"] == DOCS[ids.index(r.ids[0][0])]
    lo, hi = dense.min(), dense.max()
    khi = max(kw.values())  # the keyword list scales from 0, BM25's floor: its last match still counts
    w = {i: 0.3 * (dense[ids.index(i)] - lo) / (hi - lo) + (0.7 * kw[i] / khi if i in kw else 0) for i in ids}
    r = col.search(q, k=5, keywords="brown fox", fusion={"method": "weighted", "alpha": 0.3})
    assert r.ids[0] == top(w, 5)
    np.testing.assert_allclose(r.scores[0], [w[i] for i in r.ids[0]], rtol=1e-5)
    # alpha 1: the dense order; alpha 0: the keyword order first
    assert col.search(q, k=3, keywords="brown fox", fusion={"method": "weighted", "alpha": 1.0}).ids[0] == d_rank[:3]
    assert col.search(q, k=2, keywords="brown fox", fusion={"method": "weighted", "alpha": 0.0}).ids[0] == k_rank[:2]
    col.close()


@pytest.mark.parametrize("kwargs, needle", [
    ({"keywords": "the of and"}, "no word to search for"),
    ({"keywords": 7}, "keywords must be a string"),
    ({"keywords": "x" * 100_001}, "at most 100000 characters"),
    ({"keywords": "fox", "fusion": "max"}, "fusion method must be 'rrf' or 'weighted'"),
    ({"keywords": "fox", "fusion": {"method": "weighted", "alpha": 2}}, "alpha"),
    ({"fusion": "rrf"}, "fusion applies to a query with keywords"),
    ({"keywords": "fox", "sparse_vector": {"indices": [1], "values": [1.0]}}, "takes no sparse_vector"),
])
def test_bad_keyword_queries_are_refused(tmp_path, kwargs, needle):
    col = Collection.create(tmp_path / "c", dim=2, bm25_field="text", fsync=False)
    col.upsert(["a"], [[1.0, 0.0]], [{"text": "a fox"}])
    q = None if "fusion" not in kwargs or "keywords" not in kwargs else [1.0, 0.0]
    if "keywords" not in kwargs:
        q = [1.0, 0.0]
    with pytest.raises((ValueError, TypeError), match=needle):
        col.search(q, k=1, **kwargs)
    col.close()


def test_keywords_need_a_bm25_field_and_bm25_collections_take_no_sparse_values(tmp_path):
    plain = Collection.create(tmp_path / "p", dim=2, fsync=False)
    with pytest.raises(InvalidArgumentError, match="no keyword"):
        plain.search(keywords="fox")
    plain.close()
    col = Collection.create(tmp_path / "c", dim=2, metric="ip", bm25_field="text", fsync=False)
    with pytest.raises(InvalidArgumentError, match="BM25"):
        col.upsert(["a"], [[1.0, 0.0]], sparse_values=[{"indices": [1], "values": [1.0]}])
    with pytest.raises(InvalidArgumentError, match="at most 100000 characters"):
        col.upsert(["a"], [[1.0, 0.0]], [{"text": "y" * 100_001}])
    assert len(col) == 0
    col.close()


def test_fuse_is_deterministic_on_ties():
    out = fuse([(["b", "a"], np.array([1.0, 1.0])), (["a", "b"], np.array([2.0, 2.0]))], 2, check_fusion("rrf"),
               largest=(True, True))
    assert [o[0] for o in out] == ["a", "b"]  # equal fused scores: the smaller id first


def test_served_keyword_and_hybrid_text_queries(served):
    httpx = pytest.importorskip("httpx")
    from conftest import RW_KEY

    base = f"http://{served.host}:{served.port}"
    key = {"Api-Key": RW_KEY}
    r = httpx.post(f"{base}/collections", json={"name": "kw-docs", "dimension": 384, "bm25Field": "text"},
                   headers=key, timeout=60)
    assert r.status_code == 200, r.text
    ids = [f"d{i}" for i in range(len(DOCS))]
    vectors = np.random.default_rng(0).standard_normal((len(DOCS), 384)).tolist()  # BM25 needs none; hybrid any
    r = httpx.post(f"{base}/vectors/upsert", json={"namespace": "kw-docs", "vectors": [
        {"id": i, "values": v, "metadata": {"text": t}} for i, v, t in zip(ids, vectors, DOCS)]}, headers=key,
        timeout=60)
    assert r.status_code == 200, r.text
    ref = reference(dict(zip(ids, DOCS)), "brown fox")
    r = httpx.post(f"{base}/query", json={"namespace": "kw-docs", "text": "brown fox", "mode": "keyword", "topK": 4},
                   headers=key, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()["matches"]
    assert [m["id"] for m in got] == top(ref, 4)  # the collection's statistics, over both shards
    np.testing.assert_allclose([m["score"] for m in got], [ref[i] for i in top(ref, 4)], rtol=1e-5)
    r = httpx.post(f"{base}/query", json={"namespace": "kw-docs", "text": "brown fox", "mode": "hybrid", "topK": 3,
                                          "fusion": {"method": "weighted", "alpha": 0.5}, "includeMetadata": True},
                   headers=key, timeout=60)
    assert r.status_code == 200, r.text
    assert len(r.json()["matches"]) == 3 and "text" in r.json()["matches"][0]["metadata"]
    r = httpx.post(f"{base}/query", json={"namespace": "kw-docs", "text": "brown fox", "mode": "sideways"},
                   headers=key, timeout=60)
    assert r.status_code == 400 and "mode" in r.json()["message"]


def test_python_handle_keyword_and_hybrid(served):
    from gpusearch.serve import connect

    client = connect(served.app_name)
    client.create("kw-handle", dim=384)  # a plain collection: keyword queries are refused by name
    with pytest.raises(InvalidArgumentError, match="no keyword"):
        client.query_text("kw-handle", "fox", k=2, mode="keyword")
    client.drop("kw-handle")
    client.create("kw-handle2", dim=384, bm25_field="text")
    rng = np.random.default_rng(1)
    client.upsert("kw-handle2", [f"d{i}" for i in range(len(DOCS))], rng.standard_normal((len(DOCS), 384)),
                  [{"text": t} for t in DOCS])
    ref = reference({f"d{i}": t for i, t in enumerate(DOCS)}, "lazy dogs")
    assert client.query_text("kw-handle2", "lazy dogs", k=3, mode="keyword").ids == [top(ref, 3)]
    assert len(client.query_text("kw-handle2", "lazy dogs", k=3, mode="hybrid", fusion="rrf").ids[0]) == 3
    client.drop("kw-handle2")
