"""The same collection on a CUDA device gives the CPU's answers (skipped without a GPU)."""
from __future__ import annotations

import numpy as np
import pytest

import gpusearch as gs
from knn_check import assert_same_knn, brute_force

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-4), ("float16", 1.5e-3)])
@pytest.mark.parametrize("shards", [1, 4])
def test_gpu_exact_search_equals_brute_force(tmp_path, rng, metric, dtype, rtol, shards):
    torch = pytest.importorskip("torch")
    n, d = 5000, 64
    x = rng.standard_normal((n, d)).astype(np.float32)
    meta = [{"even": i % 2 == 0} for i in range(n)]
    col = gs.Collection.create(tmp_path / "c", dim=d, metric=metric, shards=shards, device="cuda", dtype=dtype, fsync=False)
    col.upsert(range(n), x, metadata=meta)
    q = torch.from_numpy(rng.standard_normal((33, d)).astype(np.float32)).cuda()
    for k in (1, 10, 100):
        res = col.search(q, k=k)
        ref_ids, ref_scores = brute_force(range(n), x, q.cpu().numpy(), k, metric)
        assert_same_knn(res.ids, res.scores, ref_ids, ref_scores, rtol=rtol, atol=rtol)
    allow = np.array([m["even"] for m in meta])
    res = col.search(q, k=10, filter={"even": True})
    ref_ids, ref_scores = brute_force(range(n), x, q.cpu().numpy(), 10, metric, allow=allow)
    assert_same_knn(res.ids, res.scores, ref_ids, ref_scores, rtol=rtol, atol=rtol)


def test_gpu_collection_round_trip(tmp_path, rng):
    x = rng.standard_normal((1000, 32)).astype(np.float32)
    col = gs.Collection.create(tmp_path / "c", dim=32, metric="l2", device="cuda", fsync=False)
    col.upsert(range(1000), x)
    col.delete(ids=["3"])
    before = col.search(x[:5], k=5).ids
    col.close()
    again = gs.Collection.open(tmp_path / "c", device="cuda")
    assert again.search(x[:5], k=5).ids == before and len(again) == 999


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gpu_cosine_gives_back_the_values_sent(tmp_path, rng, dtype):
    """On the device too, a cosine collection searches unit rows and fetches what was sent; a torch
    CUDA tensor upserted keeps its lengths."""
    import torch

    x = (rng.standard_normal((300, 16)) * rng.uniform(0.1, 20, (300, 1))).astype(np.float32)
    col = gs.Collection.create(tmp_path / "c", dim=16, metric="cosine", device="cuda", dtype=dtype, fsync=False)
    col.upsert(range(200), x[:200])
    col.upsert(range(200, 300), torch.from_numpy(x[200:]).cuda())
    np.testing.assert_allclose(np.asarray(col.fetch([str(i) for i in range(300)]).vectors), x, rtol=1e-6)
    res = col.search(x[7], k=1, include_vectors=True)
    assert res.ids == [["7"]]
    np.testing.assert_allclose(res[0].vectors[0], x[7], rtol=1e-6)
    col.close()


def test_gpu_deletes_updates_and_filters_match_the_cpu(tmp_path, rng):
    """The same writes on a CUDA collection and a CPU one give the same answers, filters included."""
    n, d = 4000, 48
    x = rng.standard_normal((n, d)).astype(np.float32)
    meta = [{"b": i % 10, "tag": "odd" if i % 2 else "even"} for i in range(n)]
    cols = {dev: gs.Collection.create(tmp_path / dev, dim=d, metric="cosine", shards=2, device=dev, fsync=False)
            for dev in ("cpu", "cuda")}
    q = rng.standard_normal((17, d)).astype(np.float32)
    for col in cols.values():
        col.upsert(range(n), x, metadata=meta)
        col.delete(ids=[str(i) for i in range(0, n, 97)])
        col.delete(filter={"b": 3})
        col.update("5", values=x[6], set_metadata={"tag": "moved"})
        col.upsert(range(n, n + 50), x[:50], metadata=meta[:50])
    for flt in (None, {"b": {"$in": [0, 1]}}, {"tag": "even"}, {"tag": "moved"}):
        got, want = (cols[dev].search(q, k=25, filter=flt) for dev in ("cuda", "cpu"))
        assert_same_knn(got.ids, got.scores, want.ids, np.asarray(want.scores, np.float64), rtol=1e-4, atol=1e-4)
    assert len(cols["cuda"]) == len(cols["cpu"])


def test_encoder_tensor_on_the_device_goes_straight_into_the_search(tmp_path):
    """MiniLM on the GPU hands its torch tensor to Collection.search, which answers what the CPU path
    answers for the same vectors."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("sentence_transformers")
    from gpusearch.encoders import SentenceEncoder

    enc = SentenceEncoder(device="cuda")
    docs = [f"document {i} is about {w}" for i, w in enumerate(["cats", "dogs", "ships", "GPUs", "rivers", "tea"] * 20)]
    vecs = enc.encode(docs)
    assert isinstance(vecs, torch.Tensor) and vecs.is_cuda and vecs.shape == (len(docs), 384)
    q = enc.encode(["which one is about graphics cards?", "boats"])
    assert q.is_cuda
    gpu = gs.Collection.create(tmp_path / "g", dim=384, metric="cosine", device="cuda", fsync=False)
    cpu = gs.Collection.create(tmp_path / "c", dim=384, metric="cosine", device="cpu", fsync=False)
    gpu.upsert(range(len(docs)), vecs)
    cpu.upsert(range(len(docs)), vecs.cpu().numpy())
    got, want = gpu.search(q, k=5), cpu.search(q.cpu().numpy(), k=5)
    assert_same_knn(got.ids, got.scores, want.ids, np.asarray(want.scores, np.float64), rtol=1e-4, atol=1e-4)
    assert {int(i) % 6 for i in got.ids[0][:3]} == {3} and {int(i) % 6 for i in got.ids[1][:3]} == {2}


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-4), ("float16", 2e-3)])
def test_gpu_hybrid_search_matches_the_cpu(tmp_path, rng, dtype, rtol):
    """Dense + sparse on a CUDA collection: the dense part on the device, the sparse part added on the
    host; the same answers as the CPU collection (and as brute force)."""
    torch = pytest.importorskip("torch")
    n, d, vocab = 3000, 32, 200
    x = rng.standard_normal((n, d)).astype(np.float32)
    sparse = [{"indices": rng.choice(vocab, 6, replace=False).tolist(), "values": rng.random(6).tolist()}
              for _ in range(n)]
    cols = {dev: gs.Collection.create(tmp_path / dev, dim=d, metric="ip", device=dev, dtype=dtype if dev == "cuda"
                                      else "float32", fsync=False) for dev in ("cpu", "cuda")}
    for col in cols.values():
        col.upsert(range(n), x, sparse_values=sparse)
    S = np.zeros((n, vocab))
    for i, sv in enumerate(sparse):
        S[i, sv["indices"]] = sv["values"]
    for _ in range(5):
        q = rng.standard_normal(d).astype(np.float32)
        qs = {"indices": rng.choice(vocab, 12, replace=False).tolist(), "values": rng.random(12).tolist()}
        qd = np.zeros(vocab)
        qd[qs["indices"]] = qs["values"]
        ref = x.astype(np.float64) @ q + S @ qd
        want = np.argsort(-ref, kind="stable")[:10]
        for dev, col in cols.items():
            res = col.search(torch.from_numpy(q).cuda() if dev == "cuda" else q, k=10, sparse_vector=qs)
            assert_same_knn(res.ids, res.scores, [[str(i) for i in want]], [ref[want]], rtol=rtol, atol=rtol)
