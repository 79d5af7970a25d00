"""Row-wise top-k selection: :func:`topk`."""
from __future__ import annotations

import numpy as np

from ._arrays import common_placement, compute_context, from_compute, to_compute
from ._checks import KERNEL_K, check_k, check_matrix, sentinel
from ._select import gather, select_k, sort_select
from .reference import topk_reference

__all__ = ["topk", "topk_reference"]

GPU_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


def topk(scores, k, *, largest=True):
    """Best ``k`` entries of every row, best first; ties go to the smaller column.

    Entries equal to the sentinel (``-inf`` when ``largest``, ``+inf``
    otherwise) are never returned; rows with fewer than ``k`` other entries
    are padded at the end with index ``-1`` and the sentinel. NaN scores give
    undefined results. :func:`topk_reference` defines the result exactly and
    the host path reproduces it bit for bit.

    Parameters
    ----------
    scores : array, shape (nq, n)
        NumPy array, torch tensor (CPU or CUDA) or CuPy array; float32 or
        float16 (float64 on the host only).
    k : int
        In ``1..MAX_K``; may exceed ``n``.
    largest : bool, default True
        Whether larger scores are better.

    Returns
    -------
    values : array, shape (nq, k), float32
    indices : array, shape (nq, k), int64
        Same library and device as ``scores``.

    Examples
    --------
    >>> D, I = topk(np.array([[0.5, 2.0, 2.0, -1.0]], np.float32), 3)
    >>> D, I
    (array([[2. , 2. , 0.5]], dtype=float32), array([[1, 2, 0]]))
    >>> topk(np.array([[0.5, np.inf, 2.0]], np.float32), 3, largest=False)[1]
    array([[ 0,  2, -1]])
    """
    k = check_k(k)
    placement = common_placement({"scores": scores})
    with compute_context(placement):
        x = to_compute(scores, placement, "scores")
        if placement.on_gpu:
            check_matrix(x, "scores", GPU_DTYPES, where=" on a CUDA device (float64 is host only)")
            D, I = topk_cuda(x, k, bool(largest))
        else:
            check_matrix(x, "scores")
            D, I = topk_host(x, k, bool(largest))
        return from_compute(D, placement), from_compute(I, placement)


def topk_host(x: np.ndarray, k: int, largest: bool):
    """The NumPy path: exact, vectorised over rows."""
    compute = np.float64 if x.dtype == np.float64 else np.float32
    # Costs: smaller is better and the sentinel becomes +inf either way.
    w = np.negative(x, dtype=compute) if largest else x.astype(compute, copy=False)
    pos = select_k(w, k)
    return pad_results(gather(x, pos, sentinel(largest)).astype(np.float32), pos, k, largest)


def topk_sorted(xp, x, k: int, largest: bool):
    """Top-k by a stable sort of each row (NumPy or CuPy): a ``k`` above the kernels' KERNEL_K."""
    x = x.astype(xp.float32, copy=False)
    w = -x if largest else x  # costs; the sentinel becomes +inf either way
    pos = sort_select(xp, w, k)
    D = xp.take_along_axis(x, xp.maximum(pos, 0), axis=1)
    D = xp.where(pos >= 0, D, xp.float32(sentinel(largest)))
    return pad_results(D, pos, k, largest, xp)


def pad_results(D, I, k: int, largest: bool, xp=np):
    """Widen (nq, m <= k) results to (nq, k) with the sentinel and ``-1`` (NumPy, or CuPy as ``xp``)."""
    nq, m = D.shape
    if m == k:
        return xp.ascontiguousarray(D, dtype=xp.float32), xp.ascontiguousarray(I, dtype=xp.int64)
    Dk = xp.full((nq, k), sentinel(largest), dtype=xp.float32)
    Ik = xp.full((nq, k), -1, dtype=xp.int64)
    Dk[:, :m], Ik[:, :m] = D, I
    return Dk, Ik


def topk_cuda(x, k: int, largest: bool):
    """The CUDA path: one block per row (``topk.cu``), on the current CuPy stream."""
    import cupy

    from ._cuda import THREADS, kernel

    nq, n = x.shape
    if n >= 2**31:
        raise ValueError(f"scores must have fewer than 2**31 columns on a CUDA device, got {n}")
    if k > KERNEL_K:
        return topk_sorted(cupy, x, k, largest)
    x = cupy.ascontiguousarray(x)
    D = cupy.empty((nq, k), dtype=cupy.float32)
    I = cupy.empty((nq, k), dtype=cupy.int64)
    if nq:
        name = "topk_f32" if x.dtype == cupy.float32 else "topk_f16"
        kernel("topk.cu", name)((nq,), (THREADS,), (x, np.int64(n), np.int64(n), np.int32(k), np.int32(largest), D, I))
    return D, I
