"""Exact nearest neighbours, distances and top-k together: :func:`fused_search`.

Neither path ever holds the whole ``nq x N`` score matrix: the base is walked
in tiles, each tile's best k are kept, and a running best k is merged tile by
tile with the exact tie rule (the smaller row wins).
"""
from __future__ import annotations

import numpy as np

from ._arrays import common_placement, compute_context, from_compute, to_compute
from ._checks import KERNEL_K, METRICS, check_k, check_matrix, check_metric, check_vector, sentinel
from ._select import gather, select_k
from .reference import fused_search_reference
from .topk import GPU_DTYPES, pad_results, topk_cuda

__all__ = ["fused_search", "fused_search_reference"]

#: Host path: base rows per score tile, at most ...
BLOCK_ROWS = 65536
#: ... and fewer when ``queries x rows`` float32 scores would pass this many bytes.
TILE_BYTES = 256 << 20
#: Host path: queries searched together (bounds the per-tile merge work).
QUERY_BLOCK = 4096

#: CUDA path: the one-pass kernel serves up to this many queries of at most GPU_FUSED_MAX_D dims ...
GPU_FUSED_MAX_NQ = 64
GPU_FUSED_MAX_D = 4096
#: ... scanning the base in chunks of this many rows per thread block (must match the shared memory budget).
GPU_CHUNK = 4096
#: CUDA path: bytes of per-chunk candidates, or of GEMM scores, held at once.
GPU_CANDIDATE_BYTES = 512 << 20
GPU_TILE_BYTES = 512 << 20
GPU_QUERY_BLOCK = 8192


def fused_search(queries, base, k, *, metric="ip", mask=None, base_sqnorms=None):
    """Exact ``k`` nearest base rows of every query, best first.

    ``metric="ip"`` scores are ``q . b`` (larger is better, sentinel
    ``-inf``); ``metric="l2"`` scores are squared distances
    ``max(|q|^2 + |b|^2 - 2 q . b, 0)`` (smaller is better, sentinel
    ``+inf``), computed like FAISS. Scores accumulate in float32. Ties go to
    the smaller base row. Rows where ``mask`` is False are never returned;
    queries with fewer than ``k`` allowed rows are padded at the end with
    ``-1`` and the sentinel. :func:`fused_search_reference` (float64) defines
    the result up to float32 rounding.

    Parameters
    ----------
    queries : array, shape (nq, d), float32 or float16
    base : array, shape (n, d), same dtype, library and device as ``queries``
    k : int
        In ``1..MAX_K``; may exceed ``n``.
    metric : {"ip", "l2"}
    mask : bool array, shape (n,), optional
        Which base rows may be returned.
    base_sqnorms : float array, shape (n,), optional
        Precomputed ``|b|^2`` for ``l2`` (ignored for ``ip``).

    Returns
    -------
    D : array, shape (nq, k), float32
    I : array, shape (nq, k), int64
        Same library and device as ``queries``.

    Examples
    --------
    >>> q = np.array([[1.0, 0.0]], np.float32)
    >>> b = np.array([[0.0, 1.0], [2.0, 0.0], [2.0, 5.0]], np.float32)
    >>> fused_search(q, b, 2)
    (array([[2., 2.]], dtype=float32), array([[1, 2]]))
    >>> fused_search(q, b, 4, metric="l2", mask=np.array([True, False, True]))
    (array([[ 2., 26., inf, inf]], dtype=float32), array([[ 0,  2, -1, -1]]))
    """
    k = check_k(k)
    metric = check_metric(metric)
    placement = common_placement({"queries": queries, "base": base, "mask": mask, "base_sqnorms": base_sqnorms})
    with compute_context(placement):
        xq = to_compute(queries, placement, "queries")
        xb = to_compute(base, placement, "base")
        m = to_compute(mask, placement, "mask")
        bn = to_compute(base_sqnorms, placement, "base_sqnorms")
        check_inputs(xq, xb, m, bn)
        search = fused_cuda if placement.on_gpu else fused_host
        D, I = search(xq, xb, k, metric, m, bn if metric == "l2" else None)
        return from_compute(D, placement), from_compute(I, placement)


def check_inputs(xq, xb, mask, bn) -> None:
    """Shapes and dtypes of :func:`fused_search`'s arrays."""
    check_matrix(xq, "queries", GPU_DTYPES)
    check_matrix(xb, "base", GPU_DTYPES)
    if xb.dtype != xq.dtype:
        raise TypeError(f"base must have the dtype of queries ({xq.dtype}), got {xb.dtype}")
    if xq.shape[1] != xb.shape[1]:
        raise ValueError(f"queries must have {xb.shape[1]} columns like base, got {xq.shape[1]}")
    if mask is not None:
        check_vector(mask, "mask", xb.shape[0], [bool])
    if bn is not None:
        check_vector(bn, "base_sqnorms", xb.shape[0], [np.float32, np.float16, np.float64])


def rows_per_tile(nq: int) -> int:
    """Host tile height: BLOCK_ROWS, fewer when the score tile would pass TILE_BYTES."""
    return max(1, min(BLOCK_ROWS, TILE_BYTES // (4 * max(nq, 1))))


def fused_host(xq, xb, k: int, metric: str, mask, bn):
    """The NumPy path: float32 matmul per base tile, exact selection, running merge."""
    nq = xq.shape[0]
    D = np.empty((nq, k), dtype=np.float32)
    I = np.empty((nq, k), dtype=np.int64)
    step = max(1, QUERY_BLOCK)
    for q0 in range(0, nq, step):
        D[q0 : q0 + step], I[q0 : q0 + step] = _host_queries(xq[q0 : q0 + step], xb, k, metric, mask, bn)
    return D, I


def _host_queries(xq, xb, k: int, metric: str, mask, bn):
    nq, n = xq.shape[0], xb.shape[0]
    largest = METRICS[metric]
    xq = xq.astype(np.float32, copy=False)
    # Work in costs (smaller is better): -q.b for ip, and the -2 folds into the
    # queries for l2. Negating and doubling are exact, so no score changes.
    if metric == "ip":
        lhs = -xq
    else:
        lhs = -2.0 * xq
        qn = np.einsum("ij,ij->i", xq, xq)[:, None]
        if bn is not None:
            bn = bn.astype(np.float32, copy=False)
    run_w = np.empty((nq, 0), dtype=np.float32)
    run_i = np.empty((nq, 0), dtype=np.int64)
    step = rows_per_tile(nq)
    for s in range(0, n, step):
        e = min(n, s + step)
        rows = None  # global row of each tile column, when the tile is not xb[s:e]
        blk = xb[s:e]
        m = None if mask is None else mask[s:e]
        if m is not None:
            allowed = int(np.count_nonzero(m))
            if allowed == 0:
                continue
            if allowed == e - s:
                m = None
            elif 2 * allowed <= e - s:  # selective: score only the allowed rows
                rows = np.flatnonzero(m) + s
                blk, m = xb[rows], None
        blk = blk.astype(np.float32, copy=False)
        tile = lhs @ blk.T
        if metric == "l2":
            if bn is None:
                bnb = np.einsum("ij,ij->i", blk, blk)
            else:
                bnb = bn[s:e] if rows is None else bn[rows]
            tile += qn
            tile += bnb
            np.maximum(tile, 0.0, out=tile)
        if m is not None:
            np.copyto(tile, np.inf, where=~m)
        pos = select_k(tile, k)
        tw = gather(tile, pos, np.inf)
        ti = np.where(pos >= 0, pos + s if rows is None else rows[pos], -1)
        if run_w.shape[1] == 0:
            run_w, run_i = tw, ti
        else:  # earlier tiles hold smaller rows, and ties go to the smaller row id
            cw = np.concatenate([run_w, tw], axis=1)
            ci = np.concatenate([run_i, ti], axis=1)
            p = select_k(cw, k, ids=ci)
            run_w, run_i = gather(cw, p, np.inf), gather(ci, p, -1)
    D = np.negative(run_w) if largest else run_w
    return pad_results(D, run_i, k, largest)


def fused_cuda(xq, xb, k: int, metric: str, mask, bn):
    """The CUDA path, on the current CuPy stream.

    Up to GPU_FUSED_MAX_NQ queries: ``fused_search.cu`` scores each chunk of
    GPU_CHUNK base rows for one query in one thread block and keeps only its
    best k; ``topk.cu`` then reduces the per-chunk candidates. More queries:
    cuBLAS GEMM per base tile (float32, TF32 off unless CuPy is told
    otherwise), the top-k kernel per tile, and a running merge.
    """
    import cupy

    nq, d = xq.shape
    n = xb.shape[0]
    largest = METRICS[metric]
    if nq == 0 or n == 0:
        return (cupy.full((nq, k), sentinel(largest), dtype=cupy.float32), cupy.full((nq, k), -1, dtype=cupy.int64))
    xq = cupy.ascontiguousarray(xq)
    xb = cupy.ascontiguousarray(xb)
    mask = None if mask is None else cupy.ascontiguousarray(mask)
    bn = None if bn is None else cupy.ascontiguousarray(bn, dtype=cupy.float32)
    if nq <= GPU_FUSED_MAX_NQ and d <= GPU_FUSED_MAX_D and k <= KERNEL_K:
        chunks = max(1, GPU_CANDIDATE_BYTES // (12 * nq * k))
        return _walk_base(xq, xb, k, metric, mask, bn, GPU_CHUNK * chunks, _chunked_segment)
    D = cupy.empty((nq, k), dtype=cupy.float32)
    I = cupy.empty((nq, k), dtype=cupy.int64)
    for q0 in range(0, nq, GPU_QUERY_BLOCK):
        q = xq[q0 : q0 + GPU_QUERY_BLOCK]
        step = max(1, GPU_TILE_BYTES // (4 * q.shape[0]))
        D[q0 : q0 + q.shape[0]], I[q0 : q0 + q.shape[0]] = _walk_base(q, xb, k, metric, mask, bn, step, _gemm_segment)
    return D, I


def _walk_base(xq, xb, k, metric, mask, bn, step, search_segment):
    """Search base segments of ``step`` rows in order, merging each into a running best k."""
    import cupy

    largest = METRICS[metric]
    n = xb.shape[0]
    run = None
    for s in range(0, n, step):
        e = min(n, s + step)
        D, I = search_segment(
            xq, xb[s:e], k, metric, None if mask is None else mask[s:e], None if bn is None else bn[s:e]
        )
        if s:
            I = cupy.where(I >= 0, I + s, -1)
        run = (D, I) if run is None else _merge_running(run, (D, I), k, largest)
    return run


def _take(ids, pos):
    """``ids[row, pos]`` with -1 where pos is -1 (CuPy)."""
    import cupy

    return cupy.where(pos >= 0, cupy.take_along_axis(ids, cupy.maximum(pos, 0), axis=1), -1)


def _merge_running(run, new, k: int, largest: bool):
    """Merge two best-first (nq, k) results whose rows in ``run`` all precede those in ``new``.

    Laid side by side, equal scores appear in row order, so the top-k
    kernel's smaller-column rule is the smaller-row rule.
    """
    import cupy

    D, pos = topk_cuda(cupy.concatenate([run[0], new[0]], axis=1), k, largest)
    return D, _take(cupy.concatenate([run[1], new[1]], axis=1), pos)


def _chunked_segment(xq, xb, k, metric, mask, bn):
    import cupy

    from ._cuda import NULL, THREADS, kernel

    nq, d = xq.shape
    n = xb.shape[0]
    n_chunks = -(-n // GPU_CHUNK)
    cand_D = cupy.empty((nq, n_chunks, k), dtype=cupy.float32)
    cand_I = cupy.empty((nq, n_chunks, k), dtype=cupy.int64)
    name = "fused_chunks_f32" if xq.dtype == cupy.float32 else "fused_chunks_f16"
    args = (
        xq,
        xb,
        NULL if bn is None else bn,
        NULL if mask is None else mask,
        np.int64(n),
        np.int32(d),
        np.int32(k),
        np.int32(GPU_CHUNK),
        np.int32(metric == "l2"),
        cand_D,
        cand_I,
    )
    kernel("fused_search.cu", name)((n_chunks, nq), (THREADS,), args, shared_mem=4 * (GPU_CHUNK + d))
    cand_D = cand_D.reshape(nq, n_chunks * k)
    cand_I = cand_I.reshape(nq, n_chunks * k)
    if n_chunks == 1:
        return cand_D, cand_I
    # Chunks are in row order and each is sorted with ties by row, so the
    # smaller-column rule of the top-k kernel is the smaller-row rule.
    D, pos = topk_cuda(cand_D, k, METRICS[metric])
    return D, _take(cand_I, pos)


def _gemm_segment(xq, xb, k, metric, mask, bn):
    import cupy

    largest = METRICS[metric]
    q = xq.astype(cupy.float32, copy=False)
    b = xb.astype(cupy.float32, copy=False)
    S = q @ b.T
    if metric == "l2":
        if bn is None:
            bn = (b * b).sum(axis=1)
        S *= -2.0
        S += (q * q).sum(axis=1)[:, None]
        S += bn[None, :]
        cupy.maximum(S, 0.0, out=S)
    if mask is not None:
        S = cupy.where(mask[None, :], S, cupy.float32(sentinel(largest)))
    return topk_cuda(S, k, largest)
