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
