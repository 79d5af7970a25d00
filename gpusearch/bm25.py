"""BM25 keyword search kept by the server: a tokeniser, term counts per record, corpus statistics
per collection, and the fusion of a keyword list with a dense one.

A collection created with ``bm25_field="text"`` makes each record's sparse vector itself, from the
text in that metadata field: the counts of its terms (:func:`encode_text`), each term a stable
32-bit hash of the token. The corpus statistics BM25 needs (how many records, their total length,
how many records hold each query term) are read from those stored counts and the shard's alive
rows whenever a query needs them, so they follow every upsert, overwrite and delete and are
persisted with the records (WAL, snapshots) without a file of their own. A query's statistics are
the collection's (summed over its shards first), not one shard's.

Score of record ``d`` for query terms ``t`` (Okapi BM25 with the ``ln(1 + ...)`` idf that keeps
every weight positive)::

    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
    score(d) = sum_t idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * len(d) / avglen))

with ``k1 = 1.2``, ``b = 0.75`` unless the query says otherwise; a query term counts once.

Fusion of a dense list and a keyword list (:func:`fuse`), chosen per query:

- ``{"method": "rrf", "k": 60}``: reciprocal rank fusion, ``sum 1 / (k + rank)`` over the lists a
  record is in (rank from 1);
- ``{"method": "weighted", "alpha": 0.5}``: each list's scores scaled to [0, 1], then
  ``alpha * dense + (1 - alpha) * keyword`` (0 for a list a record is not in). The dense list is
  scaled by its own min and max; the keyword list by its max alone (``score / max``), since BM25's
  floor is 0: a record the keywords match always counts more than one they do not (min-max would
  give the list's last match the same 0 as no match, which cost single rare-term queries their
  target in bench/bench_hybrid.py).

>>> tokenize("The Quick brown fox, the lazy dog's bone!")
['quick', 'brown', 'fox', 'lazy', 'dog', 'bone']
>>> v = encode_text("fox fox dog")
>>> sorted(v.values.tolist())
[1.0, 2.0]
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .errors import InvalidArgumentError, InvalidTypeError
from .sparse import SparseVector

__all__ = ["tokenize", "term_id", "encode_text", "KeywordQuery", "keyword_query", "check_fusion", "fuse",
           "idf", "K1", "B", "MAX_TEXT_CHARS"]

K1, B = 1.2, 0.75
#: The longest text a record's keyword field or a keyword query may hold.
MAX_TEXT_CHARS = 100_000
_WORD = re.compile(r"\w+", re.UNICODE)
# Words too common in English text to tell records apart; every other token counts.
_STOP = frozenset("""a an and are as at be but by for from has have he her his i if in into is it its
me my no not of on or our she so that the their them then there these they this to was we were what
when which who will with you your s t""".split())


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens of ``text`` (Unicode letters and digits), common English words left out."""
    text = unicodedata.normalize("NFKC", text).lower()
    return [w for w in _WORD.findall(text) if w not in _STOP and not w.startswith("_")]


def term_id(token: str) -> int:
    """A token's term index: a stable 32-bit hash (the same in every process and release)."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=4).digest(), "little")


def _check_text(text: Any, name: str) -> str:
    if not isinstance(text, str):
        raise InvalidTypeError(f"{name} must be a string, got {type(text).__name__}", field=name)
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidArgumentError(f"{name} may hold at most {MAX_TEXT_CHARS} characters, got {len(text)}",
                                   field=name)
    return text


def encode_text(text: str, name: str = "text") -> SparseVector | None:
    """A record's term counts as a sparse vector (``None`` when the text has no term)."""
    tokens = tokenize(_check_text(text, name))
    if not tokens:
        return None
    ids = np.fromiter((term_id(t) for t in tokens), np.uint32, len(tokens))
    terms, counts = np.unique(ids, return_counts=True)
    if len(terms) > 2048:  # keep the most frequent terms: a record's sparse vector holds at most 2,048
        keep = np.sort(np.argsort(-counts, kind="stable")[:2048])
        terms, counts = terms[keep], counts[keep]
    terms.setflags(write=False)
    values = counts.astype(np.float32)
    values.setflags(write=False)
    return SparseVector(terms, values)


def idf(n_docs: int, df: np.ndarray) -> np.ndarray:
    df = np.asarray(df, np.float64)
    return np.log1p((n_docs - df + 0.5) / (df + 0.5))


@dataclass(frozen=True, eq=False)
class KeywordQuery:
    """A checked keyword query: its unique ``terms`` (uint32, ascending), and once the collection's
    statistics are known (:meth:`with_stats`) each term's ``idf`` and the average record length."""

    text: str
    terms: np.ndarray
    k1: float = K1
    b: float = B
    idf: np.ndarray | None = None
    avg_len: float = 0.0

    def with_stats(self, n_docs: int, total_len: float, df: np.ndarray) -> "KeywordQuery":
        avg = total_len / n_docs if n_docs else 0.0
        return KeywordQuery(self.text, self.terms, self.k1, self.b, idf(n_docs, df), avg)

    __hash__ = object.__hash__  # by identity: a request holding one is grouped alone


def keyword_query(text: Any, name: str = "text") -> KeywordQuery:
    """The keyword query of ``text``; refused when it has no term to search for."""
    tokens = tokenize(_check_text(text, name))
    if not tokens:
        raise InvalidArgumentError(f"{name} has no word to search for (common words such as 'the' are left out), "
                                   f"got {text!r}", field=name)
    terms = np.unique(np.fromiter((term_id(t) for t in tokens), np.uint32, len(tokens)))
    terms.setflags(write=False)
    return KeywordQuery(text, terms)


def check_fusion(fusion: Any) -> dict:
    """A fusion setting, checked: ``"rrf"``, ``"weighted"`` or a dict with ``method`` and its parameter."""
    if fusion is None:
        fusion = "rrf"
    if isinstance(fusion, str):
        fusion = {"method": fusion}
    if not isinstance(fusion, Mapping):
        raise InvalidTypeError(f"fusion must be 'rrf', 'weighted' or a dict such as {{'method': 'weighted', "
                               f"'alpha': 0.5}}, got {type(fusion).__name__}", field="fusion")
    method = fusion.get("method")
    if method == "rrf":
        extra = set(fusion) - {"method", "k"}
        k = fusion.get("k", 60)
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 <= k <= 1e6:
            raise InvalidArgumentError(f"fusion k (rrf) must be a number between 0 and 1000000, got {k!r}",
                                       field="fusion")
        out = {"method": "rrf", "k": float(k)}
    elif method == "weighted":
        extra = set(fusion) - {"method", "alpha"}
        alpha = fusion.get("alpha", 0.5)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise InvalidArgumentError(f"fusion alpha (weighted) must be between 0 and 1 (the dense list's "
                                       f"weight), got {alpha!r}", field="fusion")
        out = {"method": "weighted", "alpha": float(alpha)}
    else:
        raise InvalidArgumentError(f"fusion method must be 'rrf' or 'weighted', got {method!r}", field="fusion")
    if extra:
        raise InvalidArgumentError(f"fusion {method} takes no {', '.join(sorted(map(str, extra)))}", field="fusion")
    return out


def fuse(lists: list[tuple[list[str], np.ndarray]], k: int, fusion: Mapping, *, largest: tuple[bool, ...],
         floors: tuple[float | None, ...] | None = None) -> list[tuple[str, float, int, int]]:
    """The ``k`` best of several ranked lists of ``(ids, scores)``, fused: ``(id, fused score, list,
    position)`` best first, the list and position naming where a record's payload is (the first list
    that has it). Ties go to the smaller id. ``largest[i]``: whether list ``i``'s larger scores are better;
    ``floors[i]``: the score list ``i`` scales to 0 in a weighted fusion (``None``: its own minimum)."""
    total: dict[str, float] = {}
    where: dict[str, tuple[int, int]] = {}
    for li, (ids, scores) in enumerate(lists):
        if not len(ids):
            continue
        s = np.asarray(scores, np.float64)
        if fusion["method"] == "rrf":
            contrib = 1.0 / (fusion["k"] + np.arange(1, len(ids) + 1))
        else:
            weight = fusion["alpha"] if li == 0 else 1.0 - fusion["alpha"]
            floor = None if floors is None else floors[li]
            lo, hi = (float(s.min()) if floor is None else min(floor, float(s.min()))), float(s.max())
            norm = np.ones_like(s) if hi == lo else (s - lo) / (hi - lo)
            contrib = weight * (norm if largest[li] else 1.0 - norm)
        for pos, (rid, c) in enumerate(zip(ids, contrib.tolist())):
            total[rid] = total.get(rid, 0.0) + c
            where.setdefault(rid, (li, pos))
    ranked = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return [(rid, score, *where[rid]) for rid, score in ranked]


def bm25_row_weights(tf: np.ndarray, lengths: np.ndarray, query: KeywordQuery, term_idf: np.ndarray) -> np.ndarray:
    """BM25 weight of entries with term counts ``tf`` in records of ``lengths`` for terms of ``term_idf``."""
    norm = query.k1 * (1.0 - query.b + query.b * lengths / query.avg_len) if query.avg_len > 0 else query.k1
    return term_idf * tf * (query.k1 + 1.0) / (tf + norm)


def fuse_hits(lists, k: int, fusion: Mapping, *, largest: tuple[bool, ...]):
    """:func:`fuse` over one query's :class:`~gpusearch.hits.Hits` lists that carry their ``ids``, the
    first the dense list and the others keyword lists (scaled from 0 in a weighted fusion):
    a Hits of the fused ``k`` (scores are the fused ones), each hit's payloads (metadata, vectors,
    sparse) from the list it was taken from."""
    from .hits import Hits

    parts = []
    for h in lists:
        c = int(h.counts[0])
        parts.append((h.ids[0, :c].tolist(), h.scores[0, :c]))
    picked = fuse(parts, k, fusion, largest=largest, floors=(None,) + (0.0,) * (len(parts) - 1))
    out = Hits.empty(1, k, True)
    out.ids = np.full((1, k), None, dtype=object)
    for j, (rid, score, li, pos) in enumerate(picked):
        out.scores[0, j], out.keys[0, j], out.ids[0, j] = score, lists[li].keys[0, pos], rid
    if all(h.metadata is not None for h in lists):
        out.metadata = [[lists[li].metadata[0][pos] for _, _, li, pos in picked]]
    if all(h.vectors is not None for h in lists):
        out.vectors = np.zeros((1, k, lists[0].vectors.shape[2]), np.float32)
        for j, (_, _, li, pos) in enumerate(picked):
            out.vectors[0, j] = lists[li].vectors[0, pos]
    if all(h.sparse is not None for h in lists):
        out.sparse = np.full((1, k), None, dtype=object)
        for j, (_, _, li, pos) in enumerate(picked):
            out.sparse[0, j] = lists[li].sparse[0, pos]
    return out


def keyword_candidates(k: int) -> int:
    """How deep each list of a fused query goes: ``max(4k, 100)``, at most 10,000."""
    return min(max(4 * k, 100), 10_000)


def sum_stats(parts, n_terms: int) -> tuple[int, float, np.ndarray]:
    """The collection's BM25 statistics from its shards' ``(records, total length, df)``."""
    parts = list(parts)
    return (sum(p[0] for p in parts), sum(p[1] for p in parts),
            np.sum([p[2] for p in parts], axis=0) if parts else np.zeros(n_terms, np.int64))


def keyword_requests(request, stats: tuple[int, float, np.ndarray]):
    """What a keyword query asks every shard, once the collection's statistics are known: the keyword
    list's request, and the dense list's for a fused query (``None`` for keywords alone); each list
    ``keyword_candidates(k)`` deep when fused. Answer with :func:`fuse_hits` over (dense, keyword)."""
    from dataclasses import replace

    kw = request.keyword.with_stats(*stats)
    if request.fusion is None:
        return replace(request, keyword=kw), None
    depth = keyword_candidates(request.k)
    return replace(request, keyword=kw, k=depth), replace(request, keyword=None, fusion=None, k=depth)
