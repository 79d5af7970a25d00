"""gpusearch.kernels.ivf (the device IVF-Flat) against its float64 reference, on the CPU and, with a
GPU, on the device (the ``gpu`` cases); and its recall against exact search."""
from __future__ import annotations

import numpy as np
import pytest

from gpusearch.kernels import fused_search, ivf_build, ivf_search, ivf_search_reference, ivf_train

torch = pytest.importorskip("torch")


def clustered(rng, n, d, centres=20, noise=0.3):
    c = rng.standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + noise * rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def same_hits(D, I, Dr, Ir, rtol):
    """Same rows in the same order wherever the reference's scores are apart by more than rounding."""
    np.testing.assert_allclose(D, Dr, rtol=rtol, atol=rtol)
    for i in range(len(I)):
        if not np.array_equal(I[i], Ir[i]):  # a swap between (nearly) equal scores is allowed
            assert set(I[i][I[i] >= 0]) == set(Ir[i][Ir[i] >= 0]) or np.allclose(D[i], Dr[i], rtol=rtol, atol=rtol)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("nprobe", [1, 3, 16])
def test_ivf_matches_reference(rng, metric, nprobe):
    x = clustered(rng, 3000, 24)
    lists = ivf_build(x, ivf_train(x, 16, metric=metric, seed=1), metric=metric)
    assert sorted(lists.rows.tolist()) == list(range(3000))
    q = clustered(rng, 37, 24)
    mask = rng.random(3000) < 0.3
    for k, m in ((1, None), (10, None), (10, mask), (200, mask)):
        D, I = ivf_search(q, lists, k, nprobe=nprobe, mask=m)
        Dr, Ir = ivf_search_reference(q, lists, k, nprobe=nprobe, mask=m)
        same_hits(D, I, Dr, Ir, 1e-4)
        if m is not None:
            assert m[I[I >= 0]].all()


def test_ivf_all_lists_probed_is_exact(rng):
    x = clustered(rng, 2000, 16)
    lists = ivf_build(x, ivf_train(x, 8, seed=2))
    q = clustered(rng, 10, 16)
    D, I = ivf_search(q, lists, 10, nprobe=8)
    De, Ie = fused_search(q, x, 10)
    np.testing.assert_array_equal(I, Ie)
    np.testing.assert_allclose(D, De, rtol=1e-5)


def test_ivf_pads_when_too_few_candidates(rng):
    x = clustered(rng, 500, 8)
    lists = ivf_build(x, ivf_train(x, 4, seed=0))
    mask = np.zeros(500, bool)
    mask[[3, 7]] = True
    D, I = ivf_search(x[:2], lists, 5, nprobe=4, mask=mask)
    assert sorted(I[0][:2].tolist()) == [3, 7] and (I[:, 2:] == -1).all() and np.isneginf(D[:, 2:]).all()


def test_ivf_recall_on_clusters(rng):
    x = clustered(rng, 20000, 32, centres=64)
    lists = ivf_build(x, ivf_train(x[:5000], 64, seed=0))
    q = clustered(rng, 50, 32, centres=64)
    _, I = ivf_search(q, lists, 10, nprobe=8)
    _, Ie = fused_search(q, x, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, Ie)])
    assert recall >= 0.9


def test_ivf_rejects_bad_arguments(rng):
    x = clustered(rng, 100, 8)
    lists = ivf_build(x, ivf_train(x, 4))
    with pytest.raises(ValueError, match="nprobe must be a positive int"):
        ivf_search(x[:1], lists, 5, nprobe=0)
    with pytest.raises(ValueError, match=r"queries must have shape \(nq, 8\)"):
        ivf_search(x[:1, :4], lists, 5)
    with pytest.raises(ValueError, match="k must be in"):
        ivf_search(x[:1], lists, 0)
    with pytest.raises(ValueError, match="mask must be a bool array of shape"):
        ivf_search(x[:1], lists, 5, mask=np.ones(99, bool))
    with pytest.raises(TypeError, match="float32 or float16"):
        ivf_search(x[:1].astype(np.float64), lists, 5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-4), (torch.float16, 2e-3)])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_ivf_on_device_matches_reference(rng, dtype, rtol, metric):
    x = clustered(rng, 20000, 64, centres=50)
    xd = torch.from_numpy(x).cuda().to(dtype)
    lists = ivf_build(xd, ivf_train(xd, 32, metric=metric, seed=3), metric=metric)
    assert lists.vectors.is_cuda and lists.vectors.dtype == dtype
    q = clustered(rng, 65, 64, centres=50)
    mask = torch.from_numpy(rng.random(20000) < 0.1).cuda()
    D, I = ivf_search(torch.from_numpy(q).cuda(), lists, 10, nprobe=4, mask=mask)
    assert D.is_cuda and I.is_cuda
    qr = q.astype(np.float16).astype(np.float32) if dtype == torch.float16 else q
    Dr, Ir = ivf_search_reference(qr, lists, 10, nprobe=4, mask=mask.cpu().numpy())
    same_hits(D.cpu().numpy(), I.cpu().numpy(), Dr, Ir, rtol)
