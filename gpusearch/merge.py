"""The one merge of every tier: per-part :class:`~gpusearch.hits.Hits` into the ``k`` best, on integer keys.

Collections merge their shards, the serve aggregator its shard deployments, the joins
their partitions: all with :func:`merge`, which runs the kernels' k-way merge
(:func:`gpusearch.kernels.merge_topk`) on each candidate's position and gathers keys
and payloads by position. No string is compared unless scores tie: then, and only for
the queries with a tie among their best ``k + 1``, the tied candidates are ordered by
their ids (ties go to the smaller id, exactly, as each part already orders its own).

>>> import numpy as np
>>> from gpusearch.hits import Hits
>>> a = Hits(np.array([[0.9, 0.5]], "float32"), np.array([[4, 2]]), ids=np.array([["x", "y"]], object))
>>> b = Hits(np.array([[0.7, 0.5]], "float32"), np.array([[0, 1]]), ids=np.array([["z", "w"]], object))
>>> hits, part = merge([a, b], 3, largest=True)
>>> hits.ids.tolist(), hits.keys.tolist(), part.tolist()
([['x', 'z', 'w']], [[4, 0, 1]], [[0, 1, 1]])
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from . import kernels
from .hits import Hits, sentinel

__all__ = ["merge", "rescore_exact", "candidates_per_shard"]


def merge(parts: Sequence[Hits], k: int, *, largest: bool,
          ids_of: Callable[[int, np.ndarray], Sequence[str]] | None = None) -> tuple[Hits, np.ndarray]:
    """The ``k`` best of several best-first answers to the same queries.

    Parameters
    ----------
    parts : sequence of Hits
        One answer per part (shard, replica, partition), each best first with ties
        already ordered by id within it. Widths may differ.
    k : int
        How many to keep per query.
    largest : bool
        Whether larger scores are better.
    ids_of : callable, optional
        ``ids_of(part, keys) -> ids``: the string ids of some of a part's keys, asked
        only for queries whose candidates tie. Parts that carry ``ids`` need none.
        With neither, ties go to the earlier part.

    Returns
    -------
    (Hits, part)
        The merged answer, keys as each part gave them, payloads gathered; ``part``
        (nq, k) int64 says which part each hit came from (``-1``: no hit).
    """
    if not parts:
        raise ValueError("merge needs at least one part's answer")
    if len(parts) == 1:
        h = parts[0].slice(0, parts[0].nq, k)
        return h, np.where(h.keys >= 0, 0, -1)
    widths = [h.k for h in parts]
    offsets = np.concatenate([[0], np.cumsum(widths)])
    S = np.concatenate([np.asarray(h.scores, np.float32) for h in parts], axis=1)
    K = np.concatenate([h.keys for h in parts], axis=1)
    nq, width = K.shape
    pos = np.where(K >= 0, np.arange(width, dtype=np.int64), -1)
    kk = min(k + 1, width)  # one more: a tie at the k-th place shows as equal k-th and (k+1)-th scores
    D, P = kernels.merge_topk([S], [pos], kk, largest=largest)
    have_ids = ids_of is not None or all(h.ids is not None for h in parts)
    if have_ids and kk > 1:
        tied = np.flatnonzero(((P[:, 1:] >= 0) & (D[:, 1:] == D[:, :-1])).any(axis=1))
        for q in tied.tolist():
            D[q], P[q] = _by_score_then_id(S[q], K[q], offsets, parts, ids_of, q, kk, largest)
    D, P = D[:, :k], P[:, :k]
    if kk < k:  # fewer candidates than k in all: pad
        pad = k - kk
        D = np.concatenate([D, np.full((nq, pad), sentinel(largest), np.float32)], axis=1)
        P = np.concatenate([P, np.full((nq, pad), -1, np.int64)], axis=1)
    valid = P >= 0
    at = np.maximum(P, 0)
    part = np.where(valid, np.searchsorted(offsets, at, side="right") - 1, -1)
    keys = np.where(valid, np.take_along_axis(K, at, axis=1), -1)
    out = Hits(D, keys)
    if all(h.ids is not None for h in parts):
        ids = np.take_along_axis(np.concatenate([h.ids for h in parts], axis=1), at, axis=1)
        ids[~valid] = None
        out.ids = ids
    if all(h.vectors is not None for h in parts):
        V = np.concatenate([h.vectors for h in parts], axis=1)
        out.vectors = np.take_along_axis(V, at[:, :, None], axis=1)
        out.vectors[~valid] = 0
    if all(h.sparse is not None for h in parts):
        out.sparse = np.take_along_axis(np.concatenate([h.sparse for h in parts], axis=1), at, axis=1)
        out.sparse[~valid] = None
    if all(h.metadata is not None for h in parts):
        col = at - offsets[np.maximum(part, 0)]
        out.metadata = [[parts[s].metadata[q][c] for s, c in zip(part[q].tolist(), col[q].tolist()) if s >= 0]
                        for q in range(nq)]
    return out, part


def _by_score_then_id(s: np.ndarray, keys: np.ndarray, offsets: np.ndarray, parts, ids_of, q: int, kk: int,
                      largest: bool):
    """Row ``q``'s best ``kk`` candidates, ordered by score and then by id (the exact tie rule)."""
    cand = np.flatnonzero(keys >= 0)
    owner = np.searchsorted(offsets, cand, side="right") - 1
    ids: list[str] = [""] * len(cand)
    for p in np.unique(owner).tolist():
        sel = np.flatnonzero(owner == p)
        if parts[p].ids is not None:
            got = parts[p].ids[q, cand[sel] - offsets[p]].tolist()
        else:
            got = ids_of(p, keys[cand[sel]])
        for j, i in zip(sel.tolist(), got):
            ids[j] = i
    sign = -1.0 if largest else 1.0
    order = sorted(range(len(cand)), key=lambda j: (sign * float(s[cand[j]]), ids[j]))[:kk]
    D = np.full(kk, sentinel(largest), np.float32)
    P = np.full(kk, -1, np.int64)
    P[: len(order)] = cand[order]
    D[: len(order)] = s[cand[order]]
    return D, P


def rescore_exact(queries, hits: Hits, k: int, *, metric: str) -> Hits:
    """Re-rank candidates by their exact score in float64 and keep the ``k`` best (ties to the smaller id).

    The second stage after shards searched compressed codes (IVF-PQ, say) and
    over-fetched: ``hits`` must carry the candidates' full-precision ``vectors``
    (as sent: for cosine they are scaled to unit length here) and their ``ids``;
    ``queries`` are the request's (unit length for cosine).
    """
    q = np.asarray(queries, dtype=np.float64)
    largest = metric != "l2"
    nq = hits.nq
    kk = min(k, hits.k)
    D = np.full((nq, k), sentinel(largest), np.float32)
    order_all = np.full((nq, k), -1, np.int64)
    for qi in range(nq):
        n = int(np.count_nonzero(hits.keys[qi] >= 0))
        V = np.asarray(hits.vectors[qi, :n], dtype=np.float64)
        if metric == "cosine":
            nv = np.linalg.norm(V, axis=1, keepdims=True)
            V = V / np.where(nv > 0, nv, 1.0)
        row = hits.ids[qi, :n].tolist()
        s = ((V - q[qi]) ** 2).sum(axis=1) if metric == "l2" else V @ q[qi]
        sign = 1.0 if metric == "l2" else -1.0
        order = sorted(range(n), key=lambda j: (sign * s[j], row[j]))[:kk]
        order_all[qi, : len(order)] = order
        D[qi, : len(order)] = s[order].astype(np.float32)
    valid = order_all >= 0
    at = np.maximum(order_all, 0)
    keys = np.where(valid, np.take_along_axis(hits.keys, at, axis=1), -1)
    ids = np.take_along_axis(hits.ids, at, axis=1)
    ids[~valid] = None
    out = Hits(D, keys, ids)
    out.vectors = np.take_along_axis(hits.vectors, at[:, :, None], axis=1)
    out.vectors[~valid] = 0
    if hits.sparse is not None:
        out.sparse = np.take_along_axis(hits.sparse, at, axis=1)
        out.sparse[~valid] = None
    if hits.metadata is not None:
        out.metadata = [[hits.metadata[qi][j] for j in order_all[qi].tolist() if j >= 0] for qi in range(nq)]
    return out


def candidates_per_shard(k: int, *, rerank: str, overfetch: int, max_k: int) -> int:
    """How many candidates each shard returns: ``k``, or ``k * overfetch`` (at most ``max_k``) to rerank."""
    return min(k * overfetch, max_k) if rerank == "exact" else k
