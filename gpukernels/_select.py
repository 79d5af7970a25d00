"""Exact row-wise selection of the k best entries on the host (NumPy).

Everything here works on *costs*: smaller is better and ``+inf`` marks an
entry that must not be selected. Callers turn scores into costs (negate them
when larger is better) so one code path serves every kernel.

The method: ``np.partition`` finds each row's k-th smallest cost ``t``; every
entry ``<= t`` is a candidate. A row has exactly k candidates unless ties at
``t`` straddle the cut; only those rows are redone with the exact tie rule.
The k picks are then sorted by ``(cost, tie key)``. No Python loop runs over
rows.
"""
from __future__ import annotations

import numpy as np

__all__ = ["select_k", "gather", "sort_select"]

#: Rows redone for ties at once hold at most about this many entries.
TIE_GROUP_ELEMENTS = 1 << 22


def select_k(w: np.ndarray, k: int, ids: np.ndarray | None = None) -> np.ndarray:
    """Positions of the ``min(k, n)`` smallest entries of each row of ``w``, best first.

    Parameters
    ----------
    w : ndarray, shape (nq, n), float
        Costs, smaller is better; ``+inf`` entries are never selected.
    k : int
        How many entries per row.
    ids : ndarray, shape (nq, n), int64, optional
        Tie keys: equal costs go to the smaller id, then to the smaller
        position. ``None`` means ties go to the smaller position.

    Returns
    -------
    ndarray, shape (nq, min(k, n)), int64
        Column positions, best first; ``-1`` pads rows with fewer finite
        entries (at the end).

    Examples
    --------
    >>> select_k(np.array([[3.0, 1.0, 1.0, np.inf]]), 3)
    array([[1, 2, 0]])
    >>> select_k(np.array([[3.0, 1.0, 1.0, np.inf]]), 4, ids=np.array([[0, 9, 5, 1]]))
    array([[ 2,  1,  0, -1]])
    """
    nq, n = w.shape
    kk = min(k, n)
    if nq == 0 or kk == 0:
        return np.empty((nq, kk), dtype=np.int64)
    if kk < n:
        t = np.partition(w, kk - 1, axis=1)[:, kk - 1 : kk]
        cand = w <= t
        short = np.flatnonzero(np.isposinf(t[:, 0]))
        if short.size:  # fewer than kk selectable entries: take the finite ones only
            cand[short] = w[short] < np.inf
    else:
        t, cand = None, w < np.inf
    rows, cols, counts = _where(cand)
    # Rows where entries equal to t outnumber the places left for them (only
    # possible when kk < n). Redo them a bounded group of rows at a time, so
    # tie-heavy data (duplicate vectors) cannot blow up memory.
    bad = np.flatnonzero(counts > kk)
    if bad.size:
        group = max(1, TIE_GROUP_ELEMENTS // n)
        for g in range(0, bad.size, group):
            b = bad[g : g + group]
            cand[b] = _resolve_ties(w[b], t[b], kk, None if ids is None else ids[b])
        rows, cols, counts = _where(cand)
    if counts.min() == kk:
        pos = cols.reshape(nq, kk)
    else:
        starts = np.cumsum(counts) - counts
        pos = np.full((nq, kk), -1, dtype=np.int64)
        pos[rows, np.arange(rows.size) - starts[rows]] = cols
    wk = gather(w, pos, np.inf)
    if ids is None:
        order = np.argsort(wk, axis=1, kind="stable")
    else:
        order = np.lexsort((gather(ids, pos, -1), wk), axis=1)
    return np.take_along_axis(pos, order, axis=1).astype(np.int64, copy=False)


def sort_select(xp, w, k: int, ids=None):
    """:func:`select_k` by stable sorts, for NumPy or CuPy (``xp``): the CUDA path's way for a ``k``
    above the one-block kernels' KERNEL_K. Same result: the ``min(k, n)`` smallest costs of each
    row best first, ties to the smaller id (``ids``) then the smaller position, ``-1`` past the
    finite entries.

    >>> sort_select(np, np.array([[3.0, 1.0, 1.0, np.inf]]), 4, ids=np.array([[0, 9, 5, 1]]))
    array([[ 2,  1,  0, -1]])
    """
    nq, n = w.shape
    kk = min(k, n)
    stable = {"kind": "stable"} if xp is np else {}  # CuPy's sorts are always stable
    if ids is None:
        pos = xp.argsort(w, axis=1, **stable)[:, :kk]
    else:  # by id, then (stably) by cost: cost order, equal costs in id order, then position order
        by_id = xp.argsort(ids, axis=1, **stable)
        by_cost = xp.argsort(xp.take_along_axis(w, by_id, axis=1), axis=1, **stable)[:, :kk]
        pos = xp.take_along_axis(by_id, by_cost, axis=1)
    pos = pos.astype(xp.int64, copy=False)
    return xp.where(xp.isposinf(xp.take_along_axis(w, pos, axis=1)), -1, pos)


def _where(cand: np.ndarray):
    """Row, column and per-row count of the True entries, columns ascending within a row.

    ``np.flatnonzero`` on the flat view is many times faster than 2-D ``np.nonzero``.
    """
    n = cand.shape[1]
    flat = np.flatnonzero(cand)
    rows = flat // n
    return rows, flat - rows * n, np.bincount(rows, minlength=cand.shape[0])


def _resolve_ties(w: np.ndarray, t: np.ndarray, kk: int, ids: np.ndarray | None) -> np.ndarray:
    """Exactly kk picks per row: every entry below ``t``, then the best-keyed entries equal to it."""
    if ids is not None:
        # Tie keys are arbitrary ids here, so sort these (few) rows outright; the
        # stable sort puts equal (cost, id) pairs in position order.
        order = np.lexsort((ids, w), axis=1)[:, :kk]
        keep = np.zeros(w.shape, dtype=bool)
        np.put_along_axis(keep, order, True, axis=1)
        return keep
    lt = w < t
    eq = w == t
    need = kk - np.count_nonzero(lt, axis=1)
    count = np.int32 if w.shape[1] < 2**31 else np.int64
    return lt | (eq & (np.cumsum(eq, axis=1, dtype=count) <= need[:, None]))


def gather(a: np.ndarray, pos: np.ndarray, fill) -> np.ndarray:
    """``a[row, pos]`` row by row, with ``fill`` where ``pos`` is -1.

    Examples
    --------
    >>> gather(np.array([[5, 6, 7]]), np.array([[2, -1]]), 0)
    array([[7, 0]])
    """
    out = np.take_along_axis(a, np.maximum(pos, 0), axis=1)
    if pos.size and pos.min() < 0:
        out[pos < 0] = fill
    return out
