"""Brute-force references and a tie-aware comparison for search results (shared by the tests)."""
from __future__ import annotations

import numpy as np


def brute_force(ids, vectors, queries, k, metric, allow=None):
    """Exact top-k in float64, ties broken by the smaller id (string order)."""
    ids = np.asarray([str(i) for i in ids], dtype=object)
    x = np.asarray(vectors, np.float64)
    q = np.atleast_2d(np.asarray(queries, np.float64))
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if metric == "l2":
        s = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        key = s
    else:
        s = q @ x.T
        key = -s
    if allow is not None:
        keep = np.flatnonzero(allow)
        ids, s, key = ids[keep], s[:, keep], key[:, keep]
    out_ids, out_scores = [], []
    for qi in range(q.shape[0]):
        order = sorted(range(len(ids)), key=lambda j: (key[qi, j], ids[j]))[:k]
        out_ids.append([ids[j] for j in order])
        out_scores.append(s[qi, order])
    return out_ids, out_scores


def assert_same_knn(got_ids, got_scores, ref_ids, ref_scores, *, rtol=1e-4, atol=1e-5, exact_ties=False):
    """Ids equal the reference's; where scores tie within tolerance the order among them may differ
    (unless ``exact_ties``), and scores match to ``rtol``."""
    assert len(got_ids) == len(ref_ids)
    for q, (gi, gs, ri, rs) in enumerate(zip(got_ids, got_scores, ref_ids, ref_scores)):
        assert len(gi) == len(ri), f"query {q}: {len(gi)} results, expected {len(ri)}"
        np.testing.assert_allclose(np.asarray(gs, np.float64), rs, rtol=rtol, atol=atol, err_msg=f"query {q}")
        if exact_ties:
            assert list(gi) == list(ri), f"query {q}: {gi} != {ri}"
            continue
        tol = atol + rtol * np.abs(rs)
        kth = rs[-1] if len(rs) else 0
        for j, (a, b) in enumerate(zip(gi, ri)):
            if a != b:
                near = np.abs(rs - rs[j]) <= 2 * tol
                assert near.sum() > 1 or abs(rs[j] - kth) <= 2 * tol[j], f"query {q} pos {j}: {a} != {b} and no tie"
        clear = [i for i, sc, t in zip(ri, rs, tol) if abs(sc - kth) > 2 * t]
        assert set(clear) <= set(gi), f"query {q}: missing {set(clear) - set(gi)}"


def recall_at(got_ids, ref_ids, k):
    hits = sum(len(set(g[:k]) & set(r[:k])) for g, r in zip(got_ids, ref_ids))
    return hits / sum(min(k, len(r)) for r in ref_ids)


def clustered(rng, n, d, clusters=50, spread=0.1):
    """Vectors around random centres, like real embeddings (not uniform noise)."""
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    labels = rng.integers(0, clusters, n)
    return (centres[labels] + spread * rng.standard_normal((n, d))).astype(np.float32)
