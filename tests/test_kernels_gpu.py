"""CUDA paths of gpusearch.kernels against the NumPy references (skipped without a device).

Each test runs on fresh random inputs, on a non-default stream, with the CuPy
memory pool poisoned first: the API returns fresh arrays rather than taking
``out=``, so poisoning the pool is how stale memory gets a chance to leak into
results that a kernel forgot to write.
"""
from __future__ import annotations

import numpy as np
import pytest
from test_kernels import assert_knn_close, assert_same, int_vectors, make_mask, sorted_lists, tied_scores

from gpusearch.kernels import fused, fused_search, fused_search_reference, merge_topk, merge_topk_reference
from gpusearch.kernels import topk, topk_reference

pytestmark = pytest.mark.gpu

KS = [1, 10, 100, 1024]
RTOL = {np.float32: 1e-4, np.float16: 1.5e-3}


@pytest.fixture
def cp():
    import cupy

    return cupy


@pytest.fixture
def stream(cp):
    """A fresh non-blocking stream, made current; poisoned pool memory before it."""
    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    junk = [cp.full(n, np.nan, dtype=cp.float32) for n in (1 << 24, 1 << 20, 1 << 16, 4096, 333)]
    junk += [cp.full(n, -7, dtype=cp.int64) for n in (1 << 22, 1 << 14, 1000)]
    cp.cuda.Device().synchronize()
    del junk  # back to the pool, bytes unchanged: later allocations start out poisoned
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        yield s
    s.synchronize()


def host(pair):
    """Copy results to the host once the current (non-blocking) stream has finished them."""
    import cupy

    cupy.cuda.get_current_stream().synchronize()
    return tuple(cupy.asnumpy(a) for a in pair)


@pytest.fixture
def torch_cuda():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA")
    return torch


# ---------------------------------------------------------------- topk


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("nq,n", [(33, 5000), (1, 200_001), (4, 700)])
def test_topk_gpu(rng, cp, stream, k, dtype, largest, nq, n):
    x = tied_scores(rng, (nq, n), dtype, largest, values=50)
    got = topk(cp.asarray(x), k, largest=largest)
    assert all(isinstance(a, cp.ndarray) for a in got)
    stream.synchronize()
    assert_same(host(got), topk_reference(x, k, largest=largest))
    y = rng.standard_normal((nq, n)).astype(dtype)
    assert_same(host(topk(cp.asarray(y), k, largest=largest)), topk_reference(y, k, largest=largest))


def test_topk_gpu_strided_view(rng, cp, stream):
    x = rng.integers(0, 9, size=(50, 90)).astype(np.float32)
    got = topk(cp.asarray(x)[::2, 3::3], 20)
    assert_same(host(got), topk_reference(x[::2, 3::3], 20))


# ---------------------------------------------------------------- merge_topk


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("largest", [True, False])
def test_merge_gpu(rng, cp, stream, k, largest):
    S, I = sorted_lists(rng, 65, [30, 0, 200, 1024], largest, id_high=600)
    S[2] = S[2].astype(np.float16)
    got = merge_topk([cp.asarray(s) for s in S], [cp.asarray(i) for i in I], k, largest=largest)
    assert_same(host(got), merge_topk_reference(S, I, k, largest=largest))


# ---------------------------------------------------------------- fused_search


@pytest.fixture
def small_gpu_tiles(monkeypatch):
    """Small chunks, candidate budget and GEMM tiles: many chunks, segments and merges."""
    monkeypatch.setattr(fused, "GPU_CHUNK", 256)
    monkeypatch.setattr(fused, "GPU_CANDIDATE_BYTES", 12 * 64 * 1024 * 3)
    monkeypatch.setattr(fused, "GPU_TILE_BYTES", 4 * 100 * 1000)
    monkeypatch.setattr(fused, "GPU_QUERY_BLOCK", 150)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("nq", [1, 64, 200])  # 200 takes the GEMM path
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_fused_gpu_exact_on_integer_data(rng, cp, stream, small_gpu_tiles, k, nq, metric, dtype):
    n = 9001
    xq, xb = int_vectors(rng, (nq, 12), dtype), int_vectors(rng, (n, 12), dtype)
    mask = make_mask(rng, "dense", n)
    got = fused_search(cp.asarray(xq), cp.asarray(xb), k, metric=metric, mask=cp.asarray(mask))
    assert_same(host(got), fused_search_reference(xq, xb, k, metric=metric, mask=mask))


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("nq", [1, 7, 300])
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("mask_kind", ["none", "sparse"])
def test_fused_gpu_random(rng, cp, stream, k, nq, metric, dtype, mask_kind):
    n, d = 20_000, 96
    xq = rng.standard_normal((nq, d)).astype(dtype)
    xb = rng.standard_normal((n, d)).astype(dtype)
    mask = make_mask(rng, mask_kind, n)
    bn = None if metric == "ip" else cp.asarray((xb.astype(np.float32) ** 2).sum(1))
    got = fused_search(
        cp.asarray(xq), cp.asarray(xb), k, metric=metric, mask=None if mask is None else cp.asarray(mask), base_sqnorms=bn
    )
    ref = fused_search_reference(xq, xb, k, metric=metric, mask=mask)
    assert_knn_close(host(got), ref, xq, xb, metric, RTOL[dtype], mask)


def test_fused_gpu_all_masked_and_tiny(rng, cp, stream):
    xq = rng.standard_normal((3, 8)).astype(np.float32)
    xb = rng.standard_normal((5, 8)).astype(np.float32)
    D, I = host(fused_search(cp.asarray(xq), cp.asarray(xb), 10, mask=cp.zeros(5, dtype=bool)))
    assert (I == -1).all() and np.isneginf(D).all()
    got = fused_search(cp.asarray(xq), cp.asarray(xb[:1]), 4, metric="l2")
    ref = fused_search_reference(xq, xb[:1], 4, metric="l2")
    assert_knn_close(host(got), ref, xq, xb[:1], "l2", RTOL[np.float32])


# ---------------------------------------------------------------- torch CUDA


def test_torch_cuda_in_and_out_on_current_stream(rng, torch_cuda):
    torch = torch_cuda
    x = tied_scores(rng, (20, 3000), np.float32, True)
    xq, xb = int_vectors(rng, (5, 16), np.float16), int_vectors(rng, (3000, 16), np.float16)
    mask = rng.random(3000) < 0.5
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        D, I = topk(torch.from_numpy(x).cuda(), 100)
        Df, If = fused_search(
            torch.from_numpy(xq).cuda(), torch.from_numpy(xb).cuda(), 50, metric="l2", mask=torch.from_numpy(mask).cuda()
        )
        Dm, Im = merge_topk([D[:, :10], D[:, 10:]], [I[:, :10], I[:, 10:]], 100)
    side.synchronize()
    for t in (D, I, Df, If, Dm, Im):
        assert isinstance(t, torch.Tensor) and t.is_cuda
    assert_same((D.cpu().numpy(), I.cpu().numpy()), topk_reference(x, 100))
    assert_same((Dm.cpu().numpy(), Im.cpu().numpy()), topk_reference(x, 100))
    assert_same((Df.cpu().numpy(), If.cpu().numpy()), fused_search_reference(xq, xb, 50, metric="l2", mask=mask))


# ---------------------------------------------------------------- k above the one-block kernels


@pytest.mark.parametrize("largest", [True, False])
def test_k_above_kernel_k_on_gpu(rng, cp, stream, small_gpu_tiles, largest):
    """k > KERNEL_K (1024) takes stable sorts on the device (topk_sorted, merge_sorted, and the GEMM
    path of fused_search): the same answers as the references, ties included."""
    x = tied_scores(rng, (3, 20_000), np.float32, largest, values=50)
    for k in (1025, 10_001):
        assert_same(host(topk(cp.asarray(x), k, largest=largest)), topk_reference(x, k, largest=largest))
    S, I = sorted_lists(rng, 9, [700, 0, 1500], largest, id_high=5000)
    got = merge_topk([cp.asarray(s) for s in S], [cp.asarray(i) for i in I], 1500, largest=largest)
    assert_same(host(got), merge_topk_reference(S, I, 1500, largest=largest))
    metric = "ip" if largest else "l2"
    xb = int_vectors(rng, (9001, 12), np.float32)
    mask = make_mask(rng, "dense", 9001)
    for nq in (1, 200):
        xq = int_vectors(rng, (nq, 12), np.float32)
        got = fused_search(cp.asarray(xq), cp.asarray(xb), 5000, metric=metric, mask=cp.asarray(mask))
        assert_same(host(got), fused_search_reference(xq, xb, 5000, metric=metric, mask=mask))
