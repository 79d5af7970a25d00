"""Merging per-shard top-k lists into one top-k: used by ``Collection.search`` and the serve aggregator.

>>> import numpy as np
>>> from gpusearch.shard import ShardHits
>>> a = ShardHits(np.array([[0.9, 0.5]], "float32"), [["x", "y"]])
>>> b = ShardHits(np.array([[0.7, 0.5]], "float32"), [["z", "w"]])
>>> merge_hits([a, b], 3, metric="ip", dim=2)[0]
[['x', 'z', 'w']]
"""
from __future__ import annotations

import numpy as np

from . import kernels

__all__ = ["merge_hits", "rescore_exact", "candidates_per_shard", "merge_and_rerank"]


def merge_hits(results, k: int, *, metric: str, dim: int):
    """Merge shard answers (``ShardHits``, each best first) into the ``k`` best per query.

    Returns ``(ids, scores, metadata, vectors)``: per query a list of ids, a float32
    array of scores, and (when the shards returned them) metadata dicts and an
    (n, dim) array of vectors. Ties go to the smaller id: the kernels' k-way merge
    orders equal scores by the number passed with each candidate, so that number is
    the candidate id's rank among all candidate ids in string order.
    """
    if not results:
        raise ValueError("merge_hits needs at least one shard's answer")
    nq = results[0].scores.shape[0]
    want_meta = results[0].metadata is not None
    want_vecs = results[0].vectors is not None
    if len(results) == 1:
        h = results[0]
        scores = [np.asarray(h.scores[qi, : min(k, len(ids))], np.float32).copy() for qi, ids in enumerate(h.ids)]
        ids = [row[:k] for row in h.ids]
        metas = [row[:k] for row in h.metadata] if want_meta else None
        vecs = [v[:k] for v in h.vectors] if want_vecs else None
        return ids, scores, metas, vecs
    flat_ids = [i for h in results for row in h.ids for i in row]
    if not flat_ids:
        empty = [[] for _ in range(nq)]
        return (empty, [np.empty(0, np.float32) for _ in range(nq)], (empty if want_meta else None),
                ([np.empty((0, dim), np.float32)] * nq if want_vecs else None))
    uniq, inv = np.unique(np.array(flat_ids, dtype=object), return_inverse=True)
    ranks, pos = [], 0
    for h in results:
        R = np.full(h.scores.shape, -1, dtype=np.int64)
        for qi, row in enumerate(h.ids):
            R[qi, : len(row)] = inv[pos : pos + len(row)]
            pos += len(row)
        ranks.append(R)
    Dm, Rm = kernels.merge_topk([np.asarray(h.scores, np.float32) for h in results], ranks, k,
                                largest=metric != "l2")
    ids_out, scores_out = [], []
    metas = [] if want_meta else None
    vecs = [] if want_vecs else None
    for qi in range(nq):
        rr = Rm[qi, Rm[qi] >= 0]
        ids_out.append(uniq[rr].tolist())
        scores_out.append(np.asarray(Dm[qi, : len(rr)], dtype=np.float32))
        if want_meta or want_vecs:
            # where each winner sits: (shard, position in that shard's list for this query)
            loc = {int(r): (s, j) for s, R in enumerate(ranks) for j, r in enumerate(R[qi].tolist()) if r >= 0}
            src = np.array([loc[int(r)] for r in rr], dtype=np.int64).reshape(-1, 2)
        if want_meta:
            metas.append([results[s].metadata[qi][j] for s, j in src.tolist()])
        if want_vecs:
            vecs.append(np.stack([results[s].vectors[qi][j] for s, j in src.tolist()]) if len(rr)
                        else np.empty((0, dim), np.float32))
    return ids_out, scores_out, metas, vecs


def rescore_exact(queries, ids, vectors, metadata, k: int, *, metric: str):
    """Re-rank merged candidates by their exact score in float64 and keep the ``k`` best.

    The second stage after shards searched compressed codes (IVF-PQ, say) with
    over-fetching: ``vectors`` are the candidates' full-precision stored vectors
    (unit length for cosine). Ties go to the smaller id. Returns ``(ids, scores,
    metadata, vectors)`` like :func:`merge_hits`.
    """
    q = np.asarray(queries, dtype=np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    out_ids, out_scores = [], []
    out_meta = [] if metadata is not None else None
    out_vecs = []
    for qi, row in enumerate(ids):
        V = np.asarray(vectors[qi], dtype=np.float64).reshape(len(row), -1)
        if metric == "l2":
            s = ((V - q[qi]) ** 2).sum(axis=1)
            order = sorted(range(len(row)), key=lambda j: (s[j], row[j]))[:k]
        else:
            s = V @ q[qi]
            order = sorted(range(len(row)), key=lambda j: (-s[j], row[j]))[:k]
        out_ids.append([row[j] for j in order])
        out_scores.append(s[order].astype(np.float32))
        if out_meta is not None:
            out_meta.append([metadata[qi][j] for j in order])
        out_vecs.append(np.asarray(vectors[qi])[order] if len(order) else np.asarray(vectors[qi])[:0])
    return out_ids, out_scores, out_meta, out_vecs


def candidates_per_shard(k: int, *, rerank: str, overfetch: int, max_k: int) -> int:
    """How many candidates each shard returns: ``k``, or ``k * overfetch`` (at most ``max_k``) to rerank."""
    return min(k * overfetch, max_k) if rerank == "exact" else k


def merge_and_rerank(results, queries, k: int, *, metric: str, dim: int, rerank: str = "none",
                     include_vectors: bool = False):
    """Merge shard answers (:func:`merge_hits`), then for ``rerank="exact"`` re-score the candidates
    (which must carry their vectors) with :func:`rescore_exact` and keep ``k``."""
    k_fetch = results[0].scores.shape[1] if rerank == "exact" else k  # everything the shards over-fetched
    ids, scores, metas, vecs = merge_hits(results, k_fetch, metric=metric, dim=dim)
    if rerank == "exact":
        ids, scores, metas, vecs = rescore_exact(queries, ids, vecs, metas, k, metric=metric)
        if not include_vectors:
            vecs = None
    return ids, scores, metas, vecs
