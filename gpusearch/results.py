"""Result objects: names instead of bare tuples."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

__all__ = ["SearchResult", "QueryResult", "WriteResult", "FetchResult", "result_of_hits"]


@dataclass(frozen=True)
class QueryResult:
    """The matches of one query, best first."""

    ids: list[str]
    scores: np.ndarray
    metadata: list[dict] | None = None
    vectors: np.ndarray | None = None
    sparse: list | None = None  # SparseVector or None per match (with include_vectors)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class SearchResult:
    """Matches of a batch of queries: ``ids[q]``, ``scores[q]``, ``metadata[q]``, best first.

    A query has fewer than ``k`` matches only when fewer than ``k`` records
    exist (or pass the filter). Scores are similarities (larger is better) for
    ``cosine`` and ``ip`` and squared L2 distances (smaller is better) for ``l2``.
    """

    ids: list[list[str]]
    scores: list[np.ndarray]
    metadata: list[list[dict]] | None = None
    vectors: list[np.ndarray] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    sparse: list[list] | None = None  # per query, a SparseVector or None per match (with include_vectors)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, q: int) -> QueryResult:
        return QueryResult(
            self.ids[q],
            self.scores[q],
            None if self.metadata is None else self.metadata[q],
            None if self.vectors is None else self.vectors[q],
            None if self.sparse is None else self.sparse[q],
        )

    def __iter__(self) -> Iterator[QueryResult]:
        return (self[q] for q in range(len(self)))


@dataclass(frozen=True)
class WriteResult:
    """An acknowledged write: it is on disk (fsynced) when this is returned."""

    count: int
    sequence: int


@dataclass(frozen=True)
class FetchResult:
    """Records found by id, in the order asked; ids that do not exist are listed in ``missing``."""

    ids: list[str]
    vectors: np.ndarray
    metadata: list[dict]
    missing: list[str]
    sparse: list = field(default_factory=list)  # a SparseVector or None per found id

    def __len__(self) -> int:
        return len(self.ids)


def result_of_hits(hits, info: dict, *, metadata: bool = True, vectors: bool = True) -> SearchResult:
    """The edge's :class:`SearchResult` of :class:`~gpusearch.hits.Hits` that carry their ``ids`` (each
    query's valid hits first): metadata, and vectors with their sparse parts, when asked for and present."""
    counts = hits.counts.tolist()

    def cut(a):
        return [a[q, :c] for q, c in enumerate(counts)]

    return SearchResult(
        [row.tolist() for row in cut(hits.ids)], cut(hits.scores),
        hits.metadata if metadata else None,
        cut(hits.vectors) if vectors and hits.vectors is not None else None,
        info,
        [row.tolist() for row in cut(hits.sparse)] if vectors and hits.sparse is not None else None)
