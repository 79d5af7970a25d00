"""Sparse and hybrid records over HTTP, driven with the real ``pinecone`` SDK against the shared served
app (conftest ``served``): a sparse index (``vector_type="sparse"``), sparse values beside dense ones in a
``dotproduct`` index, and Pinecone's answers (4xx naming the problem, nothing written) for bad sparse input."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import RW_KEY

pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")
pinecone = pytest.importorskip("pinecone")

SPEC = {"serverless": {"cloud": "aws", "region": "us-east-1"}}


def url(cfg, path=""):
    return f"http://{cfg.host}:{cfg.port}{path}"


def sparse_dense(sv: dict, vocab: int) -> np.ndarray:
    v = np.zeros(vocab)
    v[sv["indices"]] = sv["values"]
    return v


def random_sparse(rng, vocab: int, nnz: int) -> dict:
    idx = rng.choice(vocab, nnz, replace=False)  # in no order: the server sorts
    return {"indices": idx.tolist(), "values": rng.random(nnz).astype(np.float32).tolist()}


@pytest.fixture
def pc(served):
    return pinecone.Pinecone(api_key=RW_KEY, host=url(served))


def test_sparse_index_upsert_fetch_query_and_describe(served, pc, rng):
    name = "pc-sparse"
    pc.create_index(name=name, metric="dotproduct", vector_type="sparse", spec=SPEC)
    try:
        desc = pc.describe_index(name)
        assert desc.vector_type == "sparse" and desc.dimension is None and desc.metric == "dotproduct"
        idx = pc.Index(name)
        vocab = 200
        recs = [random_sparse(rng, vocab, int(rng.integers(2, 9))) for _ in range(40)]
        idx.upsert(vectors=[{"id": f"s{i}", "sparse_values": sv, "metadata": {"i": i}} for i, sv in enumerate(recs)],
                   namespace="n")
        got = idx.fetch(ids=["s3"], namespace="n").vectors["s3"]
        order = np.argsort(recs[3]["indices"])
        assert got.sparse_values.indices == np.asarray(recs[3]["indices"])[order].tolist()
        np.testing.assert_allclose(got.sparse_values.values, np.asarray(recs[3]["values"])[order], rtol=1e-6)

        q = random_sparse(rng, vocab, 30)
        S = np.stack([sparse_dense(sv, vocab) for sv in recs])
        ref = S @ sparse_dense(q, vocab)
        out = idx.query(sparse_vector=q, top_k=5, namespace="n", include_values=True, include_metadata=True)
        want = [f"s{i}" for i in np.argsort(-ref, kind="stable")[:5]]
        assert [m.id for m in out.matches] == want
        np.testing.assert_allclose([m.score for m in out.matches], np.sort(ref)[::-1][:5], rtol=1e-5)
        assert out.matches[0].sparse_values is not None and out.matches[0].metadata["i"] == int(want[0][1:])
        # filters apply; a query by id uses the stored sparse vector
        flt = idx.query(sparse_vector=q, top_k=40, namespace="n", filter={"i": {"$lt": 10}})
        assert {m.id for m in flt.matches} <= {f"s{i}" for i in range(10)}
        by_id = S @ sparse_dense(recs[5], vocab)
        assert [m.id for m in idx.query(id="s5", top_k=3, namespace="n").matches] == \
            [f"s{i}" for i in np.argsort(-by_id, kind="stable")[:3]]

        # dense values into a sparse index: 400, nothing written
        with pytest.raises(pinecone.ApiError) as ei:
            idx.upsert(vectors=[{"id": "d", "values": [0.1, 0.2], "sparse_values": recs[0]}], namespace="n")
        assert ei.value.status_code == 400 and "sparse" in str(ei.value.body)
        assert idx.fetch(ids=["d"], namespace="n").vectors == {}
    finally:
        pc.delete_index(name)


def test_hybrid_dotproduct_index_scores_dense_plus_sparse(served, pc, rng):
    name = "pc-hybrid"
    pc.create_index(name=name, dimension=8, metric="dotproduct", spec=SPEC)
    try:
        idx = pc.Index(name)
        vocab = 100
        X = rng.standard_normal((30, 8)).astype(np.float32)
        recs = [random_sparse(rng, vocab, 5) if i % 3 else None for i in range(30)]
        idx.upsert(vectors=[{"id": f"h{i}", "values": X[i].tolist(), **({"sparse_values": recs[i]} if recs[i] else {})}
                            for i in range(30)])
        q, qs = rng.standard_normal(8).astype(np.float32), random_sparse(rng, vocab, 20)
        S = np.stack([sparse_dense(sv, vocab) if sv else np.zeros(vocab) for sv in recs])
        ref = X.astype(np.float64) @ q + S @ sparse_dense(qs, vocab)
        out = idx.query(vector=q.tolist(), sparse_vector=qs, top_k=6)
        assert [m.id for m in out.matches] == [f"h{i}" for i in np.argsort(-ref, kind="stable")[:6]]
        np.testing.assert_allclose([m.score for m in out.matches], np.sort(ref)[::-1][:6], rtol=1e-4, atol=1e-5)
        # update replaces a record's sparse values and keeps its dense ones
        idx.update(id="h0", sparse_values={"indices": [7], "values": [100.0]})
        top = idx.query(vector=q.tolist(), sparse_vector={"indices": [7], "values": [1.0]}, top_k=1)
        assert top.matches[0].id == "h0"
        assert top.matches[0].score == pytest.approx(float(X[0] @ q) + 100.0, rel=1e-5)
    finally:
        pc.delete_index(name)


@pytest.mark.parametrize("sparse, needle", [
    ({"indices": [1, 1], "values": [0.5, 0.5]}, "must not repeat"),
    ({"indices": [1, 2], "values": [0.5]}, "as many indices as values"),
    ({"indices": [-1], "values": [0.5]}, "between 0 and 4294967295"),
    ({"indices": [2**32], "values": [0.5]}, "between 0 and 4294967295"),
    ({"indices": [1], "values": ["NaN"]}, "finite"),
    ({"indices": [1]}, "missing values"),
])
def test_bad_sparse_values_are_400_naming_the_problem_and_write_nothing(served, sparse, needle):
    key = {"Api-Key": RW_KEY}
    good = {"id": "ok", "values": [0.1, 0.2], "sparseValues": {"indices": [3], "values": [1.0]}}
    body = {"namespace": "sparse-bad", "vectors": [good, {"id": "bad", "values": [0.3, 0.4], "sparseValues": sparse}]}
    # "NaN" as a JSON string is not a number: send the float itself through a raw body
    raw = __import__("json").dumps(body).replace('"NaN"', "NaN")
    r = httpx.post(url(served, "/vectors/upsert"), content=raw, headers={**key, "Content-Type": "application/json"},
                   timeout=30)
    assert r.status_code == 400 and needle in r.json()["message"], r.text
    assert "sparseValues" in r.json()["message"]
    assert "sparse-bad" not in httpx.get(url(served, "/collections"), headers=key, timeout=30).json()["collections"]
    q = httpx.post(url(served, "/query"), json={"namespace": "sparse-bad", "vector": [0.1, 0.2], "sparseVector": sparse,
                                               "topK": 1}, headers=key, timeout=30)
    assert q.status_code == 400 and needle in q.json()["message"], q.text


def test_sparse_values_on_a_cosine_index_are_refused(served, pc):
    name = "pc-cos-sparse"
    pc.create_index(name=name, dimension=2, metric="cosine", spec=SPEC)
    try:
        idx = pc.Index(name)
        with pytest.raises(pinecone.ApiError) as ei:
            idx.upsert(vectors=[{"id": "a", "values": [0.1, 0.2], "sparse_values": {"indices": [1], "values": [1.0]}}])
        assert ei.value.status_code == 400 and "dotproduct" in str(ei.value.body)
        assert idx.fetch(ids=["a"]).vectors == {}
    finally:
        pc.delete_index(name)


def test_python_handle_writes_and_queries_sparse_and_hybrid(served, rng):
    from gpusearch.serve import connect

    client = connect(served.app_name)
    client.create("handle-hybrid", dim=4, metric="ip")
    X = rng.standard_normal((20, 4)).astype(np.float32)
    recs = [random_sparse(rng, 50, 4) for _ in range(20)]
    client.upsert("handle-hybrid", [f"h{i}" for i in range(20)], X, sparse_values=recs)
    q, qs = rng.standard_normal(4).astype(np.float32), random_sparse(rng, 50, 10)
    S = np.stack([sparse_dense(sv, 50) for sv in recs])
    ref = X.astype(np.float64) @ q + S @ sparse_dense(qs, 50)
    res = client.query("handle-hybrid", q, k=5, sparse_vector=qs, include_vectors=True)
    assert res.ids[0] == [f"h{i}" for i in np.argsort(-ref, kind="stable")[:5]]
    assert res.sparse[0][0] is not None
    got = client.fetch("handle-hybrid", ["h3"]).sparse[0]
    order = np.argsort(recs[3]["indices"])
    assert got.indices.tolist() == np.asarray(recs[3]["indices"])[order].tolist()
    client.upsert("handle-sparse", ["s0", "s1"], None, sparse_values=[{"indices": [1, 2], "values": [1.0, 2.0]},
                                                                     {"indices": [3], "values": [5.0]}])
    assert client.query("handle-sparse", None, k=2, sparse_vector={"indices": [2], "values": [1.0]}).ids == [["s0"]]
    client.drop("handle-hybrid")
    client.drop("handle-sparse")
