"""K-way merge of per-row sorted result lists: :func:`merge_topk`."""
from __future__ import annotations

import numpy as np

from ._arrays import common_placement, compute_context, from_compute, to_compute
from ._checks import KERNEL_K, check_k, check_list_arrays, check_lists, sentinel
from ._select import gather, select_k, sort_select
from .reference import merge_topk_reference
from .topk import GPU_DTYPES, pad_results

__all__ = ["merge_topk", "merge_topk_reference"]


def merge_topk(scores_list, ids_list, k, *, largest=True):
    """Merge several best-first result lists row by row into the best ``k``.

    Used to merge per-shard (or per-block) results. Pair ``i`` is
    ``scores_list[i]`` (nq, m_i) with ``ids_list[i]`` (nq, m_i); the widths
    ``m_i`` may differ. An entry is absent when its id is ``-1`` or its score
    is the sentinel (``-inf`` when ``largest``, ``+inf`` otherwise). Ties go
    to the smaller id (then to the earlier list and position; ids are
    expected to be distinct, duplicates are kept). Rows come back padded with
    ``-1`` and the sentinel. :func:`merge_topk_reference` defines the result;
    the host path reproduces it bit for bit.

    Parameters
    ----------
    scores_list : sequence of arrays, each (nq, m_i), float32 or float16
        (float64 on the host only). Each row sorted best first, absent
        entries last (the CUDA path relies on that order; the host path does
        not).
    ids_list : sequence of int arrays, each (nq, m_i)
    k : int
        In ``1..MAX_K``.
    largest : bool, default True
        Whether larger scores are better.

    Returns
    -------
    scores : array, shape (nq, k), float32
    ids : array, shape (nq, k), int64
        Same library and device as the inputs.

    Examples
    --------
    >>> D, I = merge_topk([np.array([[0.9, 0.5]], np.float32), np.array([[0.7, -np.inf]], np.float32)],
    ...                   [np.array([[4, 8]]), np.array([[1, -1]])], 3)
    >>> D, I
    (array([[0.9, 0.7, 0.5]], dtype=float32), array([[4, 1, 8]]))
    """
    k = check_k(k)
    scores_list, ids_list = check_lists(scores_list, ids_list)
    named = {f"scores_list[{i}]": a for i, a in enumerate(scores_list)}
    named.update({f"ids_list[{i}]": a for i, a in enumerate(ids_list)})
    placement = common_placement(named)
    with compute_context(placement):
        S = [to_compute(a, placement, f"scores_list[{i}]") for i, a in enumerate(scores_list)]
        I = [to_compute(a, placement, f"ids_list[{i}]") for i, a in enumerate(ids_list)]
        if placement.on_gpu:
            check_list_arrays(S, I, GPU_DTYPES, where=" on a CUDA device (float64 is host only)")
            D, I = merge_cuda(S, I, k, bool(largest))
        else:
            check_list_arrays(S, I)
            D, I = merge_host(S, I, k, bool(largest))
        return from_compute(D, placement), from_compute(I, placement)


def merge_host(scores_list: list, ids_list: list, k: int, largest: bool):
    """The NumPy path: concatenate the lists, then one exact selection keyed by id."""
    S = np.concatenate(scores_list, axis=1)
    ids = np.concatenate(ids_list, axis=1).astype(np.int64, copy=False)
    compute = np.float64 if S.dtype == np.float64 else np.float32
    w = np.negative(S, dtype=compute) if largest else S.astype(compute)  # costs, a fresh array
    w[ids == -1] = np.inf
    pos = select_k(w, k, ids=ids)
    D = gather(S, pos, sentinel(largest)).astype(np.float32)
    return pad_results(D, gather(ids, pos, -1), k, largest)


def merge_sorted(xp, S, ids, k: int, largest: bool):
    """Merge by stable sorts (NumPy or CuPy): a ``k`` above the kernels' KERNEL_K."""
    w = -S if largest else S + 0  # costs, a fresh array
    w[ids == -1] = xp.inf
    pos = sort_select(xp, w, k, ids=ids)
    D = xp.where(pos >= 0, xp.take_along_axis(S, xp.maximum(pos, 0), axis=1), xp.float32(sentinel(largest)))
    I = xp.where(pos >= 0, xp.take_along_axis(ids, xp.maximum(pos, 0), axis=1), -1)
    return pad_results(D.astype(xp.float32), I, k, largest, xp)


def merge_cuda(scores_list: list, ids_list: list, k: int, largest: bool):
    """The CUDA path: one block per row ranks every entry by binary search (``merge.cu``)."""
    import cupy

    from ._cuda import THREADS, kernel

    S = cupy.ascontiguousarray(cupy.concatenate([a.astype(cupy.float32, copy=False) for a in scores_list], axis=1))
    ids = cupy.ascontiguousarray(cupy.concatenate([a.astype(cupy.int64, copy=False) for a in ids_list], axis=1))
    nq, m = S.shape
    if m >= 2**31:
        raise ValueError(f"the lists must hold fewer than 2**31 entries per row on a CUDA device, got {m}")
    if k > KERNEL_K:  # beyond the kernel's shared memory: stable sorts, the same rule
        return merge_sorted(cupy, S, ids, k, largest)
    offsets = cupy.asarray(np.cumsum([0] + [a.shape[1] for a in scores_list]), dtype=cupy.int32)
    D = cupy.empty((nq, k), dtype=cupy.float32)
    I = cupy.empty((nq, k), dtype=cupy.int64)
    if nq:
        args = (S, ids, offsets, np.int32(len(scores_list)), np.int32(m), np.int32(k), np.int32(largest), D, I)
        kernel("merge.cu", "merge_sorted_lists")((nq,), (THREADS,), args)
    return D, I
