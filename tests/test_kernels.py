"""Host (NumPy) paths of gpusearch.kernels against their references, and bad input."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from gpusearch import kernels
from gpusearch.kernels import MAX_K, _select, fused, fused_search, fused_search_reference, merge_topk, merge_topk_reference
from gpusearch.kernels import topk, topk_reference

RTOL = {np.float32: 1e-4, np.float16: 1.5e-3}


# ---------------------------------------------------------------- helpers


def tied_scores(rng, shape, dtype, largest, *, values=5, sentinel_frac=0.1, best_frac=0.05):
    """Scores from a few integer values (many exact ties), some sentinels, some +-inf at the good end."""
    x = rng.integers(-values, values + 1, size=shape).astype(dtype)
    worst = -np.inf if largest else np.inf
    x[rng.random(shape) < sentinel_frac] = worst
    x[rng.random(shape) < best_frac] = -worst
    x[rng.random(shape) < 0.05] = -0.0  # compares equal to +0.0
    return x


def assert_same(got, ref):
    """Exactly the reference's values and indices, dtypes included."""
    (D, I), (Dr, Ir) = got, ref
    assert D.dtype == np.float32 and I.dtype == np.int64
    assert D.shape == Dr.shape and I.shape == Ir.shape
    np.testing.assert_array_equal(I, Ir)
    np.testing.assert_array_equal(D, Dr)


def true_scores(xq, xb, I, metric):
    """Float64 scores of the returned rows (padding gets nan)."""
    q, b = xq.astype(np.float64), xb.astype(np.float64)
    rows = b[np.maximum(I, 0)]  # (nq, k, d)
    if metric == "ip":
        s = np.einsum("qd,qkd->qk", q, rows)
    else:
        s = ((q[:, None, :] - rows) ** 2).sum(-1)
    return np.where(I >= 0, s, np.nan)


def assert_knn_close(got, ref, xq, xb, metric, rtol, mask=None):
    """Tie-aware check against the float64 reference.

    Padding must match exactly; scores match to ``rtol``; where ids differ,
    the returned row must truly score within ``rtol`` of the reference's row
    at that rank (a tie up to rounding). Returned rows are distinct and allowed.
    """
    (D, I), (Dr, Ir) = (np.asarray(got[0]), np.asarray(got[1])), ref
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == Dr.shape == I.shape
    np.testing.assert_array_equal(I < 0, Ir < 0)
    valid = Ir >= 0
    np.testing.assert_array_equal(D[~valid], Dr[~valid])
    scale = np.maximum(1.0, np.abs(Dr[valid]).max(initial=0.0))
    tol = rtol * np.maximum(np.abs(Dr.astype(np.float64)), scale)
    np.testing.assert_array_less(np.abs(D[valid] - Dr[valid].astype(np.float64)), tol[valid] + 1e-30)
    differ = valid & (I != Ir)
    if differ.any():
        s = true_scores(xq, xb, I, metric)
        np.testing.assert_array_less(np.abs(s[differ] - Dr[differ]), tol[differ] * 2)
    for row in I:
        kept = row[row >= 0]
        assert np.unique(kept).size == kept.size
        if mask is not None:
            assert mask[kept].all()


def sorted_lists(rng, nq, widths, largest, *, id_high=50):
    """Per-row best-first lists with tied scores, absent entries (-1) at their ends."""
    worst = -np.inf if largest else np.inf
    S_list, I_list = [], []
    for m in widths:
        S = rng.integers(-3, 4, size=(nq, m)).astype(np.float32)
        ids = rng.integers(0, id_high, size=(nq, m))
        absent = rng.random((nq, m)) < 0.2
        S[absent], ids[absent] = worst, -1
        order = np.argsort(-S if largest else S, axis=1, kind="stable")  # ties left in any id order
        S_list.append(np.take_along_axis(S, order, 1))
        I_list.append(np.take_along_axis(ids, order, 1))
    return S_list, I_list


# ---------------------------------------------------------------- topk


TOPK_SHAPES = [(1, 1, 1), (1, 1, 5), (4, 37, 37), (257, 50, 10), (3, 200, MAX_K), (5, 3000, MAX_K), (2, 0, 3)]


@pytest.mark.parametrize("nq,n,k", TOPK_SHAPES)
@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_topk_matches_reference(rng, nq, n, k, largest, dtype):
    x = tied_scores(rng, (nq, n), dtype, largest)
    assert_same(topk(x, k, largest=largest), topk_reference(x, k, largest=largest))
    y = rng.standard_normal((nq, n)).astype(dtype)
    assert_same(topk(y, k, largest=largest), topk_reference(y, k, largest=largest))


@pytest.mark.parametrize("k", [1, 7, 1024, 1500])
def test_topk_heavy_ties_pick_smallest_columns(rng, k):
    x = np.zeros((6, 2000), np.float32)
    x[:, rng.integers(0, 2000, 5)] = 1.0
    D, I = topk(x, k)
    assert_same((D, I), topk_reference(x, k))
    ones = np.flatnonzero(x[0] > 0)
    zeros = np.setdiff1d(np.arange(2000), ones)[: max(0, k - ones.size)]
    np.testing.assert_array_equal(I[0], np.concatenate([ones, zeros])[:k])


def test_tie_heavy_rows_redone_in_small_groups(rng, monkeypatch, small_tiles):
    monkeypatch.setattr(_select, "TIE_GROUP_ELEMENTS", 100)
    x = tied_scores(rng, (40, 300), np.float32, True, values=1)
    assert_same(topk(x, 17), topk_reference(x, 17))
    S, I = sorted_lists(rng, 40, [30, 50], False, id_high=10)
    assert_same(merge_topk(S, I, 33, largest=False), merge_topk_reference(S, I, 33, largest=False))
    xq, xb = np.ones((9, 4), np.float32), np.zeros((200, 4), np.float32)  # every row scores the same
    xb[150] = 1.0
    for metric in ("ip", "l2"):
        assert_same(fused_search(xq, xb, 30, metric=metric), fused_search_reference(xq, xb, 30, metric=metric))


def test_topk_rows_of_sentinels_are_padding(rng):
    x = rng.standard_normal((3, 10)).astype(np.float32)
    x[1] = -np.inf
    x[2, 3:] = -np.inf
    D, I = topk(x, 5)
    np.testing.assert_array_equal(I[1], -1)
    assert np.isneginf(D[1]).all()
    np.testing.assert_array_equal(I[2, 3:], -1)
    assert set(I[2, :3]) == {0, 1, 2}


def test_topk_strided_input_and_input_untouched(rng):
    big = rng.integers(0, 4, size=(40, 60)).astype(np.float32)
    x = big[::3, 5::2]
    before = x.copy()
    assert_same(topk(x, 9, largest=False), topk_reference(before, 9, largest=False))
    np.testing.assert_array_equal(x, before)


def test_topk_torch_cpu_in_and_out(rng):
    x = tied_scores(rng, (20, 33), np.float32, True)
    D, I = topk(torch.from_numpy(x), 8)
    assert isinstance(D, torch.Tensor) and isinstance(I, torch.Tensor)
    assert D.dtype == torch.float32 and I.dtype == torch.int64 and D.device.type == "cpu"
    assert_same((D.numpy(), I.numpy()), topk_reference(x, 8))
    h = torch.from_numpy(x).half().requires_grad_(False)
    assert_same(tuple(t.numpy() for t in topk(h, 8)), topk_reference(h.numpy(), 8))


# ---------------------------------------------------------------- merge_topk


@pytest.mark.parametrize("nq", [1, 257])
@pytest.mark.parametrize("widths,k", [([5], 3), ([4, 0, 9], 1), ([6, 6, 6], 18), ([3, 10], 40), ([40, 50, 60], MAX_K)])
@pytest.mark.parametrize("largest", [True, False])
def test_merge_matches_reference(rng, nq, widths, k, largest):
    S, I = sorted_lists(rng, nq, widths, largest)
    assert_same(merge_topk(S, I, k, largest=largest), merge_topk_reference(S, I, k, largest=largest))


def test_merge_duplicate_ids_and_mixed_dtypes(rng):
    S, I = sorted_lists(rng, 30, [8, 8], True, id_high=4)  # many equal (score, id) pairs
    S[1] = S[1].astype(np.float16)
    I[0] = I[0].astype(np.int32)
    assert_same(merge_topk(S, I, 12), merge_topk_reference(S, I, 12))


@pytest.mark.parametrize("largest", [True, False])
def test_merge_of_shard_topk_equals_global_topk(rng, largest):
    x = tied_scores(rng, (40, 300), np.float32, largest, values=3)
    cuts = [0, 70, 71, 200, 300]
    parts = [topk(x[:, a:b], 25, largest=largest) for a, b in zip(cuts, cuts[1:])]
    ids = [np.where(I >= 0, I + a, -1) for (_, I), a in zip(parts, cuts)]
    got = merge_topk([D for D, _ in parts], ids, 25, largest=largest)
    assert_same(got, topk(x, 25, largest=largest))


def test_merge_torch_cpu_in_and_out(rng):
    S, I = sorted_lists(rng, 5, [4, 7], False)
    D, Im = merge_topk([torch.from_numpy(s) for s in S], [torch.from_numpy(i) for i in I], 6, largest=False)
    assert isinstance(D, torch.Tensor) and isinstance(Im, torch.Tensor)
    assert_same((D.numpy(), Im.numpy()), merge_topk_reference(S, I, 6, largest=False))


# ---------------------------------------------------------------- fused_search


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiny host tiles, so a few hundred rows already take many tiles and query blocks."""
    monkeypatch.setattr(fused, "BLOCK_ROWS", 7)
    monkeypatch.setattr(fused, "QUERY_BLOCK", 5)


def int_vectors(rng, shape, dtype):
    """Small integers: float32 arithmetic is exact, so results must equal the reference exactly."""
    return rng.integers(-2, 3, size=shape).astype(dtype)


MASKS = ["none", "dense", "sparse", "all_false", "one"]


def make_mask(rng, kind, n):
    if kind == "none":
        return None
    if kind == "dense":
        return rng.random(n) < 0.9
    if kind == "sparse":
        return rng.random(n) < 0.1
    if kind == "all_false":
        return np.zeros(n, bool)
    m = np.zeros(n, bool)
    m[rng.integers(n)] = True
    return m


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("nq,n,k", [(1, 1, 1), (3, 100, 100), (6, 301, 20), (2, 50, MAX_K)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_fused_exact_ties_across_tiles(rng, small_tiles, metric, mask_kind, nq, n, k, dtype):
    xq, xb = int_vectors(rng, (nq, 5), dtype), int_vectors(rng, (n, 5), dtype)
    mask = make_mask(rng, mask_kind, n)
    ref = fused_search_reference(xq, xb, k, metric=metric, mask=mask)
    assert_same(fused_search(xq, xb, k, metric=metric, mask=mask), ref)
    if metric == "l2":
        bn = (xb.astype(np.float32) ** 2).sum(1)
        assert_same(fused_search(xq, xb, k, metric=metric, mask=mask, base_sqnorms=bn), ref)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("nq,k", [(1, 1), (257, 10), (4, MAX_K)])
def test_fused_random_vectors_tie_aware(rng, metric, dtype, nq, k):
    n, d = 3000, 24
    xq = rng.standard_normal((nq, d)).astype(dtype)
    xb = rng.standard_normal((n, d)).astype(dtype)
    xb[5] = xb[17]  # an exact duplicate row: tied scores
    mask = rng.random(n) < 0.7
    ref = fused_search_reference(xq, xb, k, metric=metric, mask=mask)
    got = fused_search(xq, xb, k, metric=metric, mask=mask)
    assert_knn_close(got, ref, xq, xb, metric, RTOL[dtype], mask)


def test_fused_default_tiles_n_not_multiple_of_block(rng):
    n = fused.BLOCK_ROWS + 1234
    xq = rng.standard_normal((2, 8)).astype(np.float32)
    xb = rng.standard_normal((n, 8)).astype(np.float32)
    for metric in ("ip", "l2"):
        ref = fused_search_reference(xq, xb, 50, metric=metric)
        assert_knn_close(fused_search(xq, xb, 50, metric=metric), ref, xq, xb, metric, RTOL[np.float32])


def test_fused_tile_shrinks_with_many_queries(monkeypatch):
    assert fused.rows_per_tile(1) == fused.BLOCK_ROWS
    monkeypatch.setattr(fused, "TILE_BYTES", 4 * 100 * 16)
    assert fused.rows_per_tile(100) == 16
    assert fused.rows_per_tile(10**9) == 1


def test_fused_torch_cpu_in_and_out(rng):
    xq, xb = int_vectors(rng, (4, 6), np.float32), int_vectors(rng, (40, 6), np.float32)
    mask = rng.random(40) < 0.5
    D, I = fused_search(torch.from_numpy(xq), torch.from_numpy(xb), 7, metric="l2", mask=torch.from_numpy(mask))
    assert isinstance(D, torch.Tensor) and isinstance(I, torch.Tensor)
    assert_same((D.numpy(), I.numpy()), fused_search_reference(xq, xb, 7, metric="l2", mask=mask))


def test_fused_zero_queries_and_empty_base(rng):
    xb = rng.standard_normal((10, 3)).astype(np.float32)
    D, I = fused_search(np.empty((0, 3), np.float32), xb, 4)
    assert D.shape == I.shape == (0, 4)
    D, I = fused_search(np.ones((2, 3), np.float32), np.empty((0, 3), np.float32), 4, metric="l2")
    assert np.isposinf(D).all() and (I == -1).all()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "k,exc,message",
    [
        (0, ValueError, r"k must be in \[1, 16384\], got 0"),
        (MAX_K + 1, ValueError, r"k must be in \[1, 16384\], got 16385"),
        (-3, ValueError, r"got -3"),
        (2.0, TypeError, r"k must be an int in \[1, 16384\], got float"),
        ("5", TypeError, r"got str"),
        (True, TypeError, r"got bool"),
    ],
)
def test_bad_k(k, exc, message):
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(exc, match=message):
        topk(x, k)
    with pytest.raises(exc, match=message):
        topk_reference(x, k)
    with pytest.raises(exc, match=message):
        fused_search(x, x, k)
    with pytest.raises(exc, match=message):
        merge_topk([x], [np.zeros((2, 3), np.int64)], k)


def test_numpy_integer_k_is_accepted():
    D, I = topk(np.array([[1.0, 2.0]], np.float32), np.int64(1))
    assert I.tolist() == [[1]]


@pytest.mark.parametrize("fn", [topk, topk_reference])
def test_topk_bad_scores(fn):
    with pytest.raises(ValueError, match=r"scores must be 2-D \(rows, columns\), got shape \(3,\)"):
        fn(np.zeros(3, np.float32), 1)
    with pytest.raises(TypeError, match=r"scores must have dtype float16, float32 or float64, got int64"):
        fn(np.zeros((2, 3), np.int64), 1)


def test_bad_array_types():
    with pytest.raises(TypeError, match=r"scores must be a NumPy array, torch tensor or CuPy array, got builtins.list"):
        topk([[1.0, 2.0]], 1)
    with pytest.raises(TypeError, match=r"base must be in the same library and on the same device as queries"):
        fused_search(np.zeros((1, 2), np.float32), torch.zeros(3, 2), 1)
    with pytest.raises(TypeError, match=r"scores has torch dtype torch.bfloat16"):
        topk(torch.zeros(2, 2, dtype=torch.bfloat16), 1)


def test_fused_bad_inputs():
    q, b = np.zeros((2, 4), np.float32), np.zeros((5, 4), np.float32)
    with pytest.raises(ValueError, match=r"queries must have 4 columns like base, got 3"):
        fused_search(np.zeros((2, 3), np.float32), b, 1)
    with pytest.raises(ValueError, match=r"queries must be 2-D"):
        fused_search(np.zeros(4, np.float32), b, 1)
    with pytest.raises(TypeError, match=r"queries must have dtype float32 or float16, got int32"):
        fused_search(q.astype(np.int32), b, 1)
    with pytest.raises(TypeError, match=r"queries must have dtype float32 or float16, got float64"):
        fused_search(q.astype(np.float64), b.astype(np.float64), 1)
    with pytest.raises(TypeError, match=r"base must have the dtype of queries \(float32\), got float16"):
        fused_search(q, b.astype(np.float16), 1)
    with pytest.raises(ValueError, match=r"mask must have shape \(5,\) \(one entry per base row\), got \(4,\)"):
        fused_search(q, b, 1, mask=np.ones(4, bool))
    with pytest.raises(TypeError, match=r"mask must have dtype bool, got uint8"):
        fused_search(q, b, 1, mask=np.ones(5, np.uint8))
    with pytest.raises(ValueError, match=r"base_sqnorms must have shape \(5,\)"):
        fused_search(q, b, 1, metric="l2", base_sqnorms=np.ones(6, np.float32))
    with pytest.raises(ValueError, match=r"metric must be one of \['ip', 'l2'\], got 'cosine'"):
        fused_search(q, b, 1, metric="cosine")
    with pytest.raises(ValueError, match=r"metric must be one of"):
        fused_search_reference(q, b, 1, metric="L2")


def test_merge_bad_inputs():
    S, I = np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError, match=r"scores_list and ids_list must have the same length, got 2 and 1"):
        merge_topk([S, S], [I], 1)
    with pytest.raises(ValueError, match=r"at least one"):
        merge_topk([], [], 1)
    with pytest.raises(TypeError, match=r"scores_list must be a list or tuple of 2-D arrays, got ndarray"):
        merge_topk(S, [I], 1)
    with pytest.raises(TypeError, match=r"ids_list\[0\] must have an integer dtype \(int64\), got float32"):
        merge_topk([S], [S], 1)
    with pytest.raises(ValueError, match=r"ids_list\[0\] must have the shape of scores_list\[0\], \(2, 3\), got \(2, 2\)"):
        merge_topk([S], [I[:, :2]], 1)
    with pytest.raises(ValueError, match=r"scores_list\[1\] must have 2 rows like scores_list\[0\], got 1"):
        merge_topk([S, S[:1]], [I, I[:1]], 1)
    with pytest.raises(ValueError, match=r"scores_list\[0\] must be 2-D"):
        merge_topk_reference([S[0]], [I[0]], 1)


# ---------------------------------------------------------------- packaging


def test_host_paths_never_import_cuda_libraries():
    """Importing the kernels and running them on NumPy works even where CuPy cannot be imported."""
    code = textwrap.dedent(
        """
        import sys, importlib.abc
        class NoCuda(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] == "cupy":
                    raise ImportError("cupy is blocked in this test")
        sys.meta_path.insert(0, NoCuda())
        import numpy as np
        from gpusearch import kernels
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        kernels.topk(x, 2)
        kernels.fused_search(x, x, 2, metric="l2")
        kernels.merge_topk([x], [np.zeros((3, 4), np.int64)], 2)
        assert "cupy" not in sys.modules
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_public_names_and_sources():
    assert set(kernels.__all__) >= {"MAX_K", "topk", "fused_search", "merge_topk", "cuda_sources"}
    assert kernels.MAX_K == 16384 and kernels.KERNEL_K == 1024
    names = sorted(p.name for p in kernels.cuda_sources())
    assert names == ["fused_search.cu", "merge.cu", "topk.cu"]
    assert all(p.is_file() for p in kernels.cuda_sources())


@pytest.mark.parametrize("largest", [True, False])
def test_sort_paths_for_k_above_the_kernels_match_the_references(rng, largest):
    """A k above KERNEL_K on a CUDA device goes through stable sorts (gpukernels.topk.topk_sorted,
    gpukernels.merge.merge_sorted), written for NumPy and CuPy alike: checked here with NumPy
    against the references, ties, sentinels and padding included."""
    import importlib

    merge_sorted = importlib.import_module("gpukernels.merge").merge_sorted
    topk_sorted = importlib.import_module("gpukernels.topk").topk_sorted

    x = tied_scores(rng, (5, 3000), np.float32, largest)
    x[1, ::3] = -np.inf if largest else np.inf  # sentinels are never returned
    for k in (1, 1025, 2999, 4000):
        assert_same(topk_sorted(np, x, k, largest), topk_reference(x, k, largest=largest))
    S = [np.sort(tied_scores(rng, (4, m), np.float32, largest), axis=1)[:, ::-1 if largest else 1].copy()
         for m in (700, 900)]
    ids = [rng.permutation(5000)[: 4 * m].reshape(4, m).astype(np.int64) for m in (700, 900)]
    ids[1][0, -5:] = -1
    for k in (3, 1100, 2000):
        want = kernels.merge_topk_reference(S, ids, k, largest=largest)
        got = merge_sorted(np, np.concatenate(S, axis=1), np.concatenate(ids, axis=1), k, largest)
        assert_same(got, want)
