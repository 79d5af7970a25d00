"""NumPy references: the exact semantics every kernel must reproduce.

They are written to be obviously right, not fast: a Python loop over rows and
one ``np.lexsort`` (a stable sort) per row. Tests compare every kernel with
them on fresh random inputs.

Shared rules
------------
* Best first. ``largest=True``: larger scores are better and ``-inf`` is the
  *sentinel*; ``largest=False``: smaller is better and ``+inf`` is the sentinel.
* Entries whose score equals the sentinel are never returned.
* Ties go to the smaller index (``topk``), row (``fused_search``) or id
  (``merge_topk``).
* Rows with fewer than ``k`` entries are padded at the end with index ``-1``
  and the sentinel score.
* Scores come back as float32, indices as int64. NaN scores are undefined.
"""
from __future__ import annotations

import numpy as np

from ._checks import (
    METRICS,
    check_k,
    check_list_arrays,
    check_lists,
    check_matrix,
    check_metric,
    check_vector,
    sentinel,
)

__all__ = ["topk_reference", "fused_search_reference", "merge_topk_reference"]


def _best_k(scores: np.ndarray, keys: np.ndarray, k: int, largest: bool):
    """Row-wise best k of ``scores``; ties by ``keys``, then by column; ``keys == -1`` is absent."""
    nq = scores.shape[0]
    fill = sentinel(largest)
    D = np.full((nq, k), fill, dtype=np.float32)
    I = np.full((nq, k), -1, dtype=np.int64)
    for r in range(nq):
        keep = np.flatnonzero((scores[r] != fill) & (keys[r] != -1))
        s = scores[r, keep]
        order = np.lexsort((keys[r, keep], -s if largest else s))[:k]
        D[r, : order.size] = s[order]
        I[r, : order.size] = keys[r, keep[order]]
    return D, I


def topk_reference(scores, k, *, largest=True):
    """Row-wise best ``k`` entries of ``scores``; the definition of :func:`topk`.

    Parameters
    ----------
    scores : array_like, shape (nq, n), float16, float32 or float64
    k : int
        In ``1..MAX_K``; may exceed ``n`` (the rest is padding).
    largest : bool
        Whether larger scores are better.

    Returns
    -------
    values : ndarray, shape (nq, k), float32
    indices : ndarray, shape (nq, k), int64

    Examples
    --------
    >>> topk_reference(np.array([[1.0, 3.0, 3.0, -np.inf]]), 4)
    (array([[  3.,   3.,   1., -inf]], dtype=float32), array([[ 1,  2,  0, -1]]))
    """
    k = check_k(k)
    scores = np.asarray(scores)
    check_matrix(scores, "scores")
    cols = np.broadcast_to(np.arange(scores.shape[1], dtype=np.int64), scores.shape)
    return _best_k(scores, cols, k, bool(largest))


def fused_search_reference(queries, base, k, *, metric="ip", mask=None):
    """Exact search in float64; the definition of :func:`fused_search`.

    ``ip`` scores are ``q . b`` (larger is better); ``l2`` scores are
    ``max(|q|^2 + |b|^2 - 2 q . b, 0)`` (smaller is better). Rows where
    ``mask`` is False are never returned. Ties go to the smaller base row.

    Examples
    --------
    >>> q = np.array([[1.0, 0.0]], np.float32)
    >>> b = np.array([[0.0, 1.0], [2.0, 0.0], [2.0, 5.0]], np.float32)
    >>> fused_search_reference(q, b, 2)
    (array([[2., 2.]], dtype=float32), array([[1, 2]]))
    >>> fused_search_reference(q, b, 2, metric="l2", mask=np.array([True, False, True]))
    (array([[ 2., 26.]], dtype=float32), array([[0, 2]]))
    """
    k = check_k(k)
    metric = check_metric(metric)
    xq, xb = np.asarray(queries), np.asarray(base)
    check_matrix(xq, "queries")
    check_matrix(xb, "base")
    if xq.shape[1] != xb.shape[1]:
        raise ValueError(f"queries must have {xb.shape[1]} columns like base, got {xq.shape[1]}")
    xq, xb = xq.astype(np.float64), xb.astype(np.float64)
    S = xq @ xb.T
    if metric == "l2":
        S = np.maximum((xq**2).sum(1)[:, None] + (xb**2).sum(1)[None, :] - 2 * S, 0.0)
    largest = METRICS[metric]
    if mask is not None:
        mask = np.asarray(mask)
        check_vector(mask, "mask", xb.shape[0], [bool])
        S[:, ~mask] = sentinel(largest)
    rows = np.broadcast_to(np.arange(xb.shape[0], dtype=np.int64), S.shape)
    return _best_k(S, rows, k, largest)


def merge_topk_reference(scores_list, ids_list, k, *, largest=True):
    """Best ``k`` of several per-row lists; the definition of :func:`merge_topk`.

    An entry is absent when its id is ``-1`` or its score is the sentinel.
    Ties go to the smaller id, then to the earlier list and position.

    Examples
    --------
    >>> D, I = merge_topk_reference([np.array([[5.0, 1.0]]), np.array([[5.0, -np.inf]])],
    ...                             [np.array([[7, 2]]), np.array([[3, -1]])], 4)
    >>> D, I
    (array([[  5.,   5.,   1., -inf]], dtype=float32), array([[ 3,  7,  2, -1]]))
    """
    k = check_k(k)
    scores_list, ids_list = check_lists(scores_list, ids_list)
    scores_list = [np.asarray(a) for a in scores_list]
    ids_list = [np.asarray(a) for a in ids_list]
    check_list_arrays(scores_list, ids_list)
    S = np.concatenate(scores_list, axis=1)
    ids = np.concatenate(ids_list, axis=1).astype(np.int64)
    return _best_k(S, ids, k, bool(largest))
