"""In-process speed of sparse-dense hybrid search against dense search on the same collection, and the
recall of hybrid search over an approximate dense index.

    .venv/bin/python bench/bench_sparse.py                          # 1M rows (speed), 100k rows (recall)
    .venv/bin/python bench/bench_sparse.py --n 100000,1000000       # two sizes for the speed part
    .venv/bin/python bench/bench_sparse.py --n 20000 --ann-n 20000 --repeats 3   # a quick check

Prints a table and writes bench/results/sparse-<cpuN or GPU name>.json (rewritten after each size and
after the recall part, so a run stopped part-way keeps what it measured).

Part 1, speed (the goal "in-process hybrid exact search within 1.5x dense exact search on 1M records
with 50 non-zeros each"): a ``Flat`` collection, metric ``ip``, of ``--n`` records (comma-separated
sizes, each measured in turn), each a ``--dim`` dense vector plus a sparse vector of ``--nnz``
non-zeros over a ``--vocab``-term vocabulary. One query at a time, k=10, three searches timed on
the same queries:

- ``dense``: ``col.search(q, k)`` on that collection (the dense part only; the sparse vectors are
  stored but not asked for);
- ``hybrid``: ``col.search(q, k, sparse_vector=s)``, the same dense query plus its sparse query
  (score = dense inner product + sparse dot product, exact);
- ``sparse``: ``col.search(None, k, sparse_vector=s)`` on a ``vector_type="sparse"`` collection of
  the same sparse rows (sparse only, exact).

The three alternate pass by pass after one warm-up pass each, so drift in a shared machine's speed
hits all alike; QPS is the median of ``--repeats`` passes (min and max kept). ``hybrid_over_dense``
= hybrid latency / dense latency (= dense QPS / hybrid QPS); the goal is met when it is <= 1.5.
``hybrid_over_dense_paired`` is the median over the repeats of the same ratio within one repeat (the
two passes ran back to back), less moved by a load that comes and goes; ``loadavg_1min_before_after``
is the machine's load average around the timed passes (others' work on a shared machine).
Each size also checks the collections' answers against a NumPy brute force (float64) on
``--check-q`` queries (``recall10_*_vs_numpy``: 1.0 unless a near-tie at the 10th place).

Part 2, recall (``--ann-n`` rows, default 100,000; a data set of its own, made the same way):
``HNSW32`` (``--ann-indexes``: FAISS factory strings separated by ``;``) at the engine's default
options, each collection holding the same dense and sparse rows. Hybrid search on it is the union
of the dense index's ``max(4k, 100)`` candidates and as many sparse ones (for each query term the
rows that add the most to it, ranked by what they add), re-scored exactly; ``hybrid_recall10`` is its
recall@10 against the exact ``Flat`` collection's hybrid answer on the same data (and
``dense_recall10`` that of its dense search against Flat's dense answer, for comparison). The Flat
row is the reference searched again (1.0 by construction); the reference itself is checked against
NumPy (``reference_recall10_vs_numpy``). QPS of hybrid and dense search on each index, timed as above.

Data. Dense: the clustered unit vectors of ``bench/ann/data.py`` (``synthetic_dataset``, seed 0,
queries from the same distribution), as bench_engine.py uses. Sparse, made here (seed ``--seed``):
term ranks drawn from a Zipf law (P(rank r) ~ 1/r^``--zipf``, as word frequencies in text), over
a random permutation of the vocabulary; a share ``--topic-share`` of each row's draws come from
its topic's own Zipf law (the global one shifted by a random offset per topic), the topic being
the argmax of the row's dense vector over ``--topics`` random directions, so rows close in the dense
space share terms, as text and its embedding do. A row keeps ``--nnz`` distinct terms (a random
choice among the distinct ones drawn) with values (1 + log tf) x U(0.5, 1.5); a query keeps 10 to
20 (``--q-nnz``) with BM25-like idf values (df counted in the rows) x U(0.5, 1.5). Both are
scaled to unit length, so the sparse dot product is in [0, 1] like the dense one.

Loading: ``Collection.upsert(ids, vectors, sparse_values=..., batch_size=--batch-size)`` in calls of
``--chunk`` rows (a progress line each), ``fsync=False``, in a temporary folder (``--workdir``).
Memory at 1M x 384: the rows (1.5 GB) and the collection's copy (1.5 GB), plus about 0.4 GB of
sparse rows in each of the three places (here, the hybrid collection, the sparse collection).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info, result_path  # noqa: E402

import gpusearch as gs  # noqa: E402
from ann import data as D  # noqa: E402

GOAL = "in-process hybrid exact search within 1.5x dense exact search on 1M records with 50 non-zeros each"
GOAL_RATIO = 1.5
GEN_CHUNK = 50_000  # rows of sparse data drawn at a time (temporaries of GEN_CHUNK x 4 nnz)


def log(msg: str) -> None:
    print(msg, flush=True)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# --------------------------------------------------------------------------- sparse data

@dataclass
class Vocab:
    """The term distribution: a global Zipf law over a permuted vocabulary and one shifted law per topic."""
    size: int
    cdf: np.ndarray          # (size,) cumulative Zipf probabilities by rank
    perm: np.ndarray         # rank -> term id
    offsets: np.ndarray      # (topics,) rank shift of each topic's law
    directions: np.ndarray   # (dim, topics) a row's topic is the argmax of x @ directions
    share: float             # share of a row's draws from its topic's law


def make_vocab(rng, size: int, s: float, dim: int, topics: int, share: float) -> Vocab:
    p = 1.0 / np.arange(1, size + 1, dtype=np.float64) ** s
    cdf = np.cumsum(p / p.sum())
    cdf[-1] = 1.0
    return Vocab(size, cdf, rng.permutation(size).astype(np.int64), rng.integers(0, size, topics),
                 rng.standard_normal((dim, topics)).astype(np.float32), share)


def topics_of(x: np.ndarray, vocab: Vocab) -> np.ndarray:
    out = np.empty(len(x), np.int64)
    for lo in range(0, len(x), 100_000):
        out[lo : lo + 100_000] = np.argmax(x[lo : lo + 100_000] @ vocab.directions, axis=1)
    return out


def draw_terms(rng, topic: np.ndarray, nnz: np.ndarray, vocab: Vocab):
    """Distinct terms per row (``nnz[i]`` of them, ascending) and their counts among the draws.

    Returns (terms, tf, valid), each (rows, max nnz); ``valid`` marks the first ``nnz[i]`` columns.
    """
    c, kmax = len(topic), int(nnz.max())
    m = 4 * kmax
    while True:
        ranks = np.minimum(np.searchsorted(vocab.cdf, rng.random((c, m))), vocab.size - 1)
        own = rng.random((c, m)) < vocab.share
        ranks = np.where(own, (ranks + vocab.offsets[topic][:, None]) % vocab.size, ranks)
        terms = vocab.perm[ranks]
        terms.sort(axis=1)
        first = np.ones((c, m), bool)
        first[:, 1:] = terms[:, 1:] != terms[:, :-1]
        if (first.sum(axis=1) >= nnz).all():
            break
        m *= 2  # too few distinct terms in some row: draw more
    starts = np.flatnonzero(first.ravel())
    tf = np.zeros(c * m, np.int64)
    tf[starts] = np.diff(np.append(starts, c * m))  # run lengths: each row starts a run
    tf = tf.reshape(c, m)
    keys = rng.random((c, m))
    keys[~first] = 2.0
    valid = np.arange(kmax)[None, :] < nnz[:, None]
    pos = np.where(valid, np.argsort(keys, axis=1)[:, :kmax], m)  # a random choice of distinct terms
    pos.sort(axis=1)  # ascending position = ascending term; the unused columns (m) go last
    pos = np.minimum(pos, m - 1)
    rows = np.arange(c)[:, None]
    return terms[rows, pos], tf[rows, pos], valid


def to_csr(values: np.ndarray, terms: np.ndarray, valid: np.ndarray):
    """Rows scaled to unit length, as (indptr, indices uint32, values float32)."""
    values = np.where(valid, values, 0.0)
    values /= np.linalg.norm(values, axis=1, keepdims=True)
    indptr = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int64)
    return indptr, terms[valid].astype(np.uint32), values[valid].astype(np.float32)


def sparse_docs(x: np.ndarray, nnz: int, vocab: Vocab, seed: int):
    """The sparse rows of ``x`` as a CSR triple, ``nnz`` terms each."""
    n = len(x)
    indices = np.empty(n * nnz, np.uint32)
    values = np.empty(n * nnz, np.float32)
    for j, lo in enumerate(range(0, n, GEN_CHUNK)):
        rng = np.random.default_rng([seed, 1, j])
        xc = x[lo : lo + GEN_CHUNK]
        terms, tf, valid = draw_terms(rng, topics_of(xc, vocab), np.full(len(xc), nnz), vocab)
        w = (1.0 + np.log(tf)) * rng.uniform(0.5, 1.5, tf.shape)
        _, ind, val = to_csr(w, terms, valid)
        indices[lo * nnz : lo * nnz + len(ind)] = ind
        values[lo * nnz : lo * nnz + len(val)] = val
    return np.arange(0, n * nnz + 1, nnz, dtype=np.int64), indices, values


def sparse_queries(q: np.ndarray, q_nnz: tuple[int, int], vocab: Vocab, df: np.ndarray, n_docs: int, seed: int):
    """One sparse query per dense query: 10-20 terms, BM25-like idf weights."""
    rng = np.random.default_rng([seed, 2])
    nnz = rng.integers(q_nnz[0], q_nnz[1] + 1, len(q))
    terms, _, valid = draw_terms(rng, topics_of(q, vocab), nnz, vocab)
    d = df[terms]
    idf = np.log1p((n_docs - d + 0.5) / (d + 0.5))
    indptr, ind, val = to_csr(idf * rng.uniform(0.5, 1.5, terms.shape), terms, valid)
    return [gs.SparseVector(indices=ind[a:b], values=val[a:b]) for a, b in zip(indptr[:-1], indptr[1:])]


def sparse_objects(csr, lo: int, hi: int) -> list:
    indptr, indices, values = csr
    return [gs.SparseVector(indices=indices[indptr[i] : indptr[i + 1]], values=values[indptr[i] : indptr[i + 1]])
            for i in range(lo, hi)]


# --------------------------------------------------------------------------- reference, timing

def brute_force(x, csr, dense_q, sparse_q, k: int):
    """Exact top-k ids (float64 scores, ties to the smaller row) of dense + sparse scores, and how many
    rows have a non-zero sparse dot product with each query. ``x`` None: sparse only."""
    indptr, indices, values = csr
    n, nq = len(indptr) - 1, len(sparse_q)
    qd = np.zeros((nq, int(indices.max()) + 1 if len(indices) else 1), np.float64)
    for j, s in enumerate(sparse_q):
        keep = s.indices < qd.shape[1]
        qd[j, s.indices[keep].astype(np.int64)] = s.values[keep]
    best_s = np.full((nq, 0), -np.inf)
    best_i = np.zeros((nq, 0), np.int64)
    matches = np.zeros(nq, np.int64)
    step = 100_000
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        a, b = indptr[lo], indptr[hi]
        ind, val = indices[a:b].astype(np.int64), values[a:b].astype(np.float64)
        row_of = np.repeat(np.arange(hi - lo), np.diff(indptr[lo : hi + 1]))
        scores = np.empty((nq, hi - lo))
        for j in range(nq):
            scores[j] = np.bincount(row_of, weights=val * qd[j, ind], minlength=hi - lo)
        matches += (scores != 0).sum(axis=1)
        if x is not None:
            scores += np.asarray(dense_q, np.float64) @ x[lo:hi].astype(np.float64).T
        cat_s = np.concatenate([best_s, scores], 1)
        cat_i = np.concatenate([best_i, np.broadcast_to(np.arange(lo, hi), scores.shape)], 1)
        kk = min(k, cat_s.shape[1])
        new_s, new_i = np.empty((nq, kk)), np.empty((nq, kk), np.int64)
        for j in range(nq):
            kth = np.partition(cat_s[j], cat_s.shape[1] - kk)[cat_s.shape[1] - kk]
            cand = np.flatnonzero(cat_s[j] >= kth)  # the k best and any tied with the k-th
            order = cand[np.lexsort((cat_i[j, cand], -cat_s[j, cand]))[:kk]]
            new_s[j], new_i[j] = cat_s[j, order], cat_i[j, order]
        best_s, best_i = new_s, new_i
    return [[str(i) for i in row] for row in best_i], matches


def recall(got, ref) -> float:
    return float(np.mean([len(set(a) & set(b)) / max(1, len(b)) for a, b in zip(got, ref)]))


def singles_for(fn, m_max: int, budget_s: float) -> int:
    """How many queries one pass of single calls gets through in about ``budget_s`` (at least 20)."""
    t0, m = time.perf_counter(), 0
    while m < m_max and (m < 20 or time.perf_counter() - t0 < budget_s):
        fn(m)
        m += 1
    return m


def timed_passes(fns: dict, m: int, repeats: int) -> dict:
    """Median QPS (and min, max) of each fn(i) over queries 0..m-1, one query a call; the fns alternate
    pass by pass after a warm-up pass each."""
    def once(fn):
        t = time.perf_counter()
        for i in range(m):
            fn(i)
        return m / (time.perf_counter() - t)

    for fn in fns.values():
        once(fn)
    runs = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            runs[name].append(once(fn))
    out = {name: (float(np.median(r)), float(min(r)), float(max(r))) for name, r in runs.items()}
    if "hybrid" in runs:  # hybrid / dense latency pass by pass (the passes of one repeat ran back to back)
        out["paired"] = float(np.median(np.array(runs["dense"]) / np.array(runs["hybrid"])))
    return out


def load(col, x, csr, args, label: str) -> float:
    """Upsert rows 0..n-1 (dense ``x`` or None, sparse from ``csr``) in calls of --chunk rows; seconds taken."""
    n = len(csr[0]) - 1
    t0 = time.perf_counter()
    for lo in range(0, n, args.chunk):
        hi = min(n, lo + args.chunk)
        col.upsert(np.arange(lo, hi), None if x is None else x[lo:hi], sparse_values=sparse_objects(csr, lo, hi),
                   batch_size=args.batch_size)
        el = time.perf_counter() - t0
        log(f"  {label}: {hi:>9,} / {n:,} rows upserted  {el:7.1f} s  ({hi / el:,.0f} rows/s)")
    return time.perf_counter() - t0


def make_data(n: int, args, seed_stream: int):
    t = time.perf_counter()
    ds = D.synthetic_dataset(n, dim=args.dim, nq=args.nq)
    vocab = make_vocab(np.random.default_rng([args.seed, seed_stream]), args.vocab, args.zipf, args.dim,
                       args.topics, args.topic_share)
    csr = sparse_docs(ds.train, args.nnz, vocab, args.seed * 1000 + seed_stream)
    df = np.bincount(csr[1], minlength=args.vocab)
    sq = sparse_queries(ds.test, args.q_nnz, vocab, df, n, args.seed * 1000 + seed_stream)
    gen_s = time.perf_counter() - t
    log(f"n {n:,}: data made in {gen_s:.1f} s ({n:,} x {args.dim} dense, {args.nnz} sparse non-zeros a row over "
        f"{args.vocab:,} terms; the most frequent term in {df.max() / n:.0%} of rows; {args.nq} queries with "
        f"{min(map(len, sq))}-{max(map(len, sq))} terms)")
    return ds.train, ds.test, csr, sq, gen_s


def create(path, args, **kw):
    return gs.Collection.create(path, metric="ip", shards=args.shards, device=args.device, fsync=False, **kw)


# --------------------------------------------------------------------------- the two parts

def measure_speed(n: int, args, rows: list) -> None:
    x, q, csr, sq, gen_s = make_data(n, args, 0)
    k = args.k
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        col = create(Path(tmp) / "hybrid", args, dim=args.dim, index="Flat")
        build_h = load(col, x, csr, args, f"hybrid Flat n={n:,}")
        log(f"  hybrid Flat collection built in {build_h:.1f} s")
        scol = create(Path(tmp) / "sparse", args, dim=None, index="Flat", vector_type="sparse")
        build_s = load(scol, None, csr, args, f"sparse n={n:,}")
        log(f"  sparse collection built in {build_s:.1f} s")

        nc = min(args.check_q, len(sq))
        t = time.perf_counter()
        ref_h, matches = brute_force(x, csr, q[:nc], sq[:nc], k)
        ref_s, _ = brute_force(None, csr, None, sq[:nc], k)
        got_h = [col.search(q[i], k=k, sparse_vector=sq[i]).ids[0] for i in range(nc)]
        got_s = [scol.search(None, k=k, sparse_vector=sq[i]).ids[0] for i in range(nc)]
        r_h, r_s = recall(got_h, ref_h), recall(got_s, ref_s)
        log(f"  checked against NumPy on {nc} queries ({time.perf_counter() - t:.1f} s): recall@10 hybrid {r_h:.3f}, "
            f"sparse {r_s:.3f}; {matches.mean():,.0f} rows a query have a non-zero sparse score")

        fns = {"dense": lambda i: col.search(q[i], k=k),
               "hybrid": lambda i: col.search(q[i], k=k, sparse_vector=sq[i]),
               "sparse": lambda i: scol.search(None, k=k, sparse_vector=sq[i])}
        m = singles_for(fns["hybrid"], len(sq), args.single_budget_s)
        load_before = os.getloadavg()[0]
        qps = timed_passes(fns, m, args.repeats)
        row = {"n": n, "queries_timed": m, "loadavg_1min_before_after": [load_before, os.getloadavg()[0]], "gen_s": gen_s, "build_s_hybrid": build_h, "build_s_sparse": build_s,
               "check_queries": nc, "recall10_hybrid_vs_numpy": r_h, "recall10_sparse_vs_numpy": r_s,
               "sparse_matches_mean": float(matches.mean())}
        for name in ("dense", "hybrid", "sparse"):
            med, lo, hi = qps[name]
            row[f"{name}_qps"], row[f"{name}_qps_min_max"], row[f"{name}_ms"] = med, [lo, hi], 1000.0 / med
        row["hybrid_over_dense"] = row["hybrid_ms"] / row["dense_ms"]
        row["hybrid_over_dense_paired"] = qps["paired"]
        row["sparse_over_dense"] = row["sparse_ms"] / row["dense_ms"]
        row["goal_met"] = row["hybrid_over_dense"] <= GOAL_RATIO
        row["peak_rss_gib"] = peak_rss_gib()
        rows.append(row)
        log(f"Flat n {n:>9,}: dense {row['dense_ms']:7.2f} ms  hybrid {row['hybrid_ms']:7.2f} ms  "
            f"sparse {row['sparse_ms']:7.2f} ms  hybrid/dense {row['hybrid_over_dense']:.2f} "
            f"(goal <= {GOAL_RATIO}: {'met' if row['goal_met'] else 'NOT met'}); load average "
            f"{row['loadavg_1min_before_after'][0]:.1f} -> {row['loadavg_1min_before_after'][1]:.1f} "
            f"on {os.cpu_count()} cores")
        col.close()
        scol.close()
        del col, scol, fns
    del x, q, csr, sq
    gc.collect()


def measure_ann(args, out: dict) -> None:
    n, k = args.ann_n, args.k
    x, q, csr, sq, _ = make_data(n, args, 1)
    nq = min(args.ann_nq, len(sq))
    rows = out["ann"]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        t = time.perf_counter()
        flat = create(Path(tmp) / "flat", args, dim=args.dim, index="Flat")
        load(flat, x, csr, args, f"hybrid Flat n={n:,}")
        flat_build = time.perf_counter() - t
        ref_h = [flat.search(q[i], k=k, sparse_vector=sq[i]).ids[0] for i in range(nq)]
        ref_d = [flat.search(q[i], k=k).ids[0] for i in range(nq)]
        nc = min(args.check_q, nq)
        np_ref, _ = brute_force(x, csr, q[:nc], sq[:nc], k)
        out["ann_reference_recall10_vs_numpy"] = recall(ref_h[:nc], np_ref)
        out["ann_queries"] = nq
        log(f"  reference (Flat hybrid) vs NumPy on {nc} queries: recall@10 {out['ann_reference_recall10_vs_numpy']:.3f}")
        for spec in ["Flat"] + args.ann_indexes:
            if spec == "Flat":
                col, build = flat, flat_build
            else:
                t = time.perf_counter()
                col = create(Path(tmp) / f"ix{len(rows)}", args, dim=args.dim, index=spec)
                load(col, x, csr, args, f"hybrid {spec} n={n:,}")
                build = time.perf_counter() - t
            got_h = [col.search(q[i], k=k, sparse_vector=sq[i]).ids[0] for i in range(nq)]
            got_d = [col.search(q[i], k=k).ids[0] for i in range(nq)]
            fns = {"dense": lambda i, c=col: c.search(q[i], k=k),
                   "hybrid": lambda i, c=col: c.search(q[i], k=k, sparse_vector=sq[i])}
            m = singles_for(fns["hybrid"], nq, args.single_budget_s)
            load_before = os.getloadavg()[0]
            qps = timed_passes(fns, m, args.repeats)
            row = {"index": spec, "n": n, "params": dict(col.stats()["index_options"]), "build_s": build,
                   "queries": nq, "queries_timed": m, "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
                   "hybrid_recall10": recall(got_h, ref_h), "dense_recall10": recall(got_d, ref_d),
                   "hybrid_qps": qps["hybrid"][0], "hybrid_qps_min_max": list(qps["hybrid"][1:]),
                   "dense_qps": qps["dense"][0], "dense_qps_min_max": list(qps["dense"][1:])}
            row["hybrid_over_dense"] = row["dense_qps"] / row["hybrid_qps"]
            row["hybrid_over_dense_paired"] = qps["paired"]
            rows.append(row)
            log(f"{spec:10s} n {n:>9,}: hybrid recall@10 {row['hybrid_recall10']:.3f} (dense {row['dense_recall10']:.3f}) "
                f"hybrid {row['hybrid_qps']:8.1f} qps  dense {row['dense_qps']:8.1f} qps  build {build:.1f} s")
            if col is not flat:
                col.close()
        flat.close()
    out["peak_rss_gib"] = peak_rss_gib()


def print_table(out: dict) -> None:
    print(f"\nspeed, one query a call, k={out['k']} (Flat, exact; ms = median latency; build = upsert of dense+sparse)")
    print(f"{'n':>9s} {'build s':>8s} {'dense ms':>9s} {'hybrid ms':>9s} {'sparse ms':>9s} {'dense qps':>9s} "
          f"{'hybrid qps':>10s} {'sparse qps':>10s} {'hyb/dense':>9s} {'paired':>6s} {'goal<=1.5':>9s} {'check':>5s} "
          f"{'load':>9s}")
    for r in out["rows"]:
        print(f"{r['n']:>9,} {r['build_s_hybrid']:>8.1f} {r['dense_ms']:>9.2f} {r['hybrid_ms']:>9.2f} "
              f"{r['sparse_ms']:>9.2f} {r['dense_qps']:>9.1f} {r['hybrid_qps']:>10.1f} {r['sparse_qps']:>10.1f} "
              f"{r['hybrid_over_dense']:>9.2f} {r['hybrid_over_dense_paired']:>6.2f} "
              f"{'met' if r['goal_met'] else 'NOT met':>9s} "
              f"{min(r['recall10_hybrid_vs_numpy'], r['recall10_sparse_vs_numpy']):>5.3f} "
              f"{r['loadavg_1min_before_after'][0]:>4.1f}>{r['loadavg_1min_before_after'][1]:<4.1f}")
    if out["ann"]:
        print(f"\nrecall@10 against the exact Flat answer on the same data ({out['ann_queries']} queries; "
              f"Flat vs NumPy {out['ann_reference_recall10_vs_numpy']:.3f})")
        print(f"{'index':10s} {'n':>9s} {'hybrid recall':>13s} {'dense recall':>12s} {'hybrid qps':>10s} "
              f"{'dense qps':>9s} {'hyb/dense':>9s} {'build s':>8s}")
        for r in out["ann"]:
            print(f"{r['index']:10s} {r['n']:>9,} {r['hybrid_recall10']:>13.3f} {r['dense_recall10']:>12.3f} "
                  f"{r['hybrid_qps']:>10.1f} {r['dense_qps']:>9.1f} {r['hybrid_over_dense']:>9.2f} {r['build_s']:>8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="1000000", help="rows of the speed part, comma-separated sizes (default 1000000)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--nnz", type=int, default=50, help="sparse non-zeros a row (default 50)")
    ap.add_argument("--vocab", type=int, default=30_000, help="sparse vocabulary size (default 30,000)")
    ap.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of term frequencies (default 1.0)")
    ap.add_argument("--topics", type=int, default=64, help="topics tying terms to the dense space (default 64)")
    ap.add_argument("--topic-share", type=float, default=0.3, help="share of a row's terms from its topic (0.3)")
    ap.add_argument("--q-nnz", default="10,20", help="sparse query terms, min,max (default 10,20)")
    ap.add_argument("--nq", type=int, default=200, help="queries made (default 200)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--single-budget-s", type=float, default=3.0, help="time on as many of the queries as one "
                    "hybrid pass gets through in about this long (at least 20)")
    ap.add_argument("--check-q", type=int, default=20, help="queries checked against NumPy brute force (default 20)")
    ap.add_argument("--ann-n", type=int, default=100_000, help="rows of the recall part (default 100,000; 0: skip it)")
    ap.add_argument("--ann-indexes", default="HNSW32", help="approximate indexes (FAISS factory strings, "
                    "separated by ';' as theirs hold commas, e.g. 'HNSW32;IVF316,Flat'; default HNSW32)")
    ap.add_argument("--ann-nq", type=int, default=200, help="queries of the recall part (default 200)")
    ap.add_argument("--batch-size", type=int, default=50_000, help="Collection.upsert batch_size (default 50,000)")
    ap.add_argument("--chunk", type=int, default=200_000, help="rows a Collection.upsert call (default 200,000)")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where the temporary collections go (default the system's temp)")
    ap.add_argument("--out", default=None, help="result path (default bench/results/sparse-<machine>.json)")
    args = ap.parse_args()
    ns = [int(float(v)) for v in args.n.split(",") if v.strip()]
    try:
        args.q_nnz = tuple(int(v) for v in args.q_nnz.split(","))
        assert len(args.q_nnz) == 2 and 1 <= args.q_nnz[0] <= args.q_nnz[1]
    except (ValueError, AssertionError):
        raise SystemExit(f"--q-nnz: want min,max (1 <= min <= max), got {args.q_nnz!r}")
    args.ann_indexes = [v.strip() for v in args.ann_indexes.split(";") if v.strip()]
    if max(args.nnz, args.q_nnz[1]) > args.vocab:
        raise SystemExit(f"--nnz {args.nnz} / --q-nnz {args.q_nnz[1]} is more than the --vocab {args.vocab} terms")
    if min(ns + ([args.ann_n] if args.ann_n else [])) <= args.k:
        raise SystemExit(f"every size must be more than k={args.k}")
    t_start = time.perf_counter()
    out = {"benchmark": "sparse", "goal": GOAL, "goal_ratio": GOAL_RATIO, "n": ns, "ann_n": args.ann_n,
           "dim": args.dim, "nnz": args.nnz, "vocab": args.vocab, "zipf": args.zipf, "topics": args.topics,
           "topic_share": args.topic_share, "q_nnz": list(args.q_nnz), "nq": args.nq, "ann_nq": args.ann_nq,
           "k": args.k, "repeats": args.repeats, "single_budget_s": args.single_budget_s,
           "batch_size": args.batch_size, "chunk": args.chunk, "shards": args.shards, "device": args.device,
           "metric": "ip",
           "data": "dense: synthetic clustered unit vectors (bench/ann/data.py synthetic_dataset, seed 0); sparse: "
                   "Zipf-distributed terms tied to dense topics, unit length (bench_sparse.py)",
           "machine": machine_info(), "rows": [], "ann": [], "date": time.strftime("%Y-%m-%d")}
    path = Path(args.out) if args.out else result_path("sparse", out["machine"])
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in ns:
        measure_speed(n, args, out["rows"])
        out["wall_s"] = time.perf_counter() - t_start
        path.write_text(json.dumps(out, indent=2))
    if args.ann_n:
        measure_ann(args, out)
    out["wall_s"] = time.perf_counter() - t_start
    out["peak_rss_gib"] = peak_rss_gib()
    path.write_text(json.dumps(out, indent=2))
    print_table(out)
    print(f"\ntotal {out['wall_s']:.0f} s, peak memory {out['peak_rss_gib']:.1f} GiB; wrote {path}")


if __name__ == "__main__":
    main()
