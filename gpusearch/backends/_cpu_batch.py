"""Exact top-k of a batch of queries on the CPU with torch's GEMM and top-k, exact ties kept.

On this project's 2-core machine (bench/results/engine-*.json) a 1,000-query batch over 100k x 384
rows ran 2.9x faster through ``torch.mm`` + ``torch.topk`` than through NumPy's GEMM and the
kernels' NumPy selection (0.86x of ``faiss.IndexFlatIP``): torch's BLAS and its multi-threaded
top-k. One query gains little (a matrix-vector product either way), so batches below
:data:`MIN_BATCH` stay on the kernels' NumPy path, and a process that never searches a batch
never imports torch (a CPU shard replica's restart would pay ~2-3 s for it).

torch's top-k picks arbitrarily among equal scores, so exactness is checked, not assumed: per base
tile it keeps ``k + 1`` candidates; a query whose k-th score is equal to a candidate left out, or
to the (k+1)-th of any tile (where more equal rows may hide), is answered again by the kernels'
exact path. The others are exact as they are, and are ordered by (score, row).
"""
from __future__ import annotations

import importlib.util
import sys

import numpy as np

__all__ = ["MIN_BATCH", "available", "exact_batch", "import_on_first_batch", "warm_up"]

#: Batches of at least this many queries take this path.
MIN_BATCH = 16
#: Base rows per GEMM tile, fewer when a tile of scores would pass _TILE_BYTES.
_TILE_ROWS = 65536
_TILE_BYTES = 256 << 20

_available: bool | None = None
_may_import = True


def available() -> bool:
    """Whether this path may run now: torch is installed and either imported already or allowed to be
    imported by the first batch (see :func:`import_on_first_batch`). Never imports torch itself."""
    global _available
    if "torch" in sys.modules:
        return True
    if not _may_import:
        return False
    if _available is None:
        _available = importlib.util.find_spec("torch") is not None
    return _available


def import_on_first_batch(allowed: bool) -> None:
    """Whether the first batch may import torch (1.5-3 s here). A served shard replica says no, so that
    no query waits for it past the aggregator's shard timeout, and imports torch in the background
    instead (:func:`warm_up`); until then its batches take the kernels' NumPy path."""
    global _may_import
    _may_import = bool(allowed)


def warm_up(threads: int | None = None) -> None:
    """Import torch now (in a background thread, say), with ``threads`` intra-op threads."""
    if importlib.util.find_spec("torch") is None:
        return
    import torch

    if threads:
        torch.set_num_threads(threads)


def exact_batch(xq: np.ndarray, xb: np.ndarray, k: int, *, l2: bool, mask: np.ndarray | None = None,
                base_sqnorms: np.ndarray | None = None):
    """The exact k best rows of ``xb`` for each query, ties to the smaller row, ``-1``/sentinel padding;
    scores as :func:`gpusearch.kernels.fused_search` computes them (up to float32 rounding).

    Returns ``(D, I, redo)``: ``redo`` lists the queries whose answer a tie made uncertain (see the
    module docstring); the caller answers those again on the exact path.
    """
    import torch

    nq, n = xq.shape[0], xb.shape[0]
    q = torch.from_numpy(np.ascontiguousarray(xq, dtype=np.float32))
    b = torch.from_numpy(np.ascontiguousarray(xb, dtype=np.float32))
    m = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask))
    qn = (q * q).sum(1, keepdim=True) if l2 else None
    bn = None
    if l2:
        bn = torch.from_numpy(np.ascontiguousarray(base_sqnorms, dtype=np.float32)) if base_sqnorms is not None \
            else (b * b).sum(1)
    worst = float("inf") if l2 else float("-inf")
    step = max(1, min(_TILE_ROWS, _TILE_BYTES // (4 * max(nq, 1))))
    vals, rows, edges = [], [], []
    for s in range(0, n, step):
        e = min(n, s + step)
        S = q @ b[s:e].T
        if l2:
            S = (qn + bn[s:e][None, :] - 2 * S).clamp_(min=0)
        if m is not None:
            S.masked_fill_(~m[s:e][None, :], worst)
        kk = min(k + 1, e - s)
        v, i = torch.topk(S, kk, dim=1, largest=not l2, sorted=True)
        vals.append(v)
        rows.append(i + s)
        # the (k+1)-th of this tile: an equal score there may hide more equal rows not kept
        edges.append(v[:, k] if kk == k + 1 else torch.full((nq,), worst))
    V = torch.cat(vals, 1)
    R = torch.cat(rows, 1)
    kk = min(k, V.shape[1])
    v, j = torch.topk(V, kk, dim=1, largest=not l2, sorted=True)
    r = torch.gather(R, 1, j)
    D, I = v.numpy(), r.numpy().astype(np.int64, copy=False)
    Vn = V.numpy()
    kth = D[:, kk - 1 : kk]
    # Ambiguous: a candidate left out equals the k-th score, or a tile's (k+1)-th does.
    equal_all = (Vn == kth).sum(1)
    equal_kept = (D == kth).sum(1)
    edge = torch.stack(edges, 1).numpy() if len(edges) > 1 else edges[0].numpy()[:, None]
    finite = np.isfinite(kth[:, 0])
    redo = np.flatnonzero(finite & ((equal_all > equal_kept) | (edge == kth).any(1)))
    # Rows at the sentinel are absent.
    absent = ~np.isfinite(D)
    I = np.where(absent, -1, I)
    # Exact order among the kept: by score, then by row.
    order = np.lexsort((np.where(absent, np.iinfo(np.int64).max, I), D if l2 else -D), axis=1)
    D = np.take_along_axis(D, order, 1)
    I = np.take_along_axis(I, order, 1)
    if kk < k:
        D = np.pad(D, ((0, 0), (0, k - kk)), constant_values=worst)
        I = np.pad(I, ((0, 0), (0, k - kk)), constant_values=-1)
    return np.ascontiguousarray(D, dtype=np.float32), np.ascontiguousarray(I), redo
