"""The one result shape of every tier below an edge: columnar hits on integer keys.

Backends, shards, replicas, collections (before their edge) and join partitions all
answer a :class:`~gpusearch.request.SearchRequest` with :class:`Hits`:

- ``scores``: float32 ``(nq, k)``, best first, padded with the sentinel (``-inf`` when
  larger is better, ``+inf`` for ``l2``);
- ``keys``: int64 ``(nq, k)``, the tier's own integer key of each hit (a shard's row
  number, a collection's ``row * shards + shard``), padded with ``-1``; valid hits
  always come first, so :attr:`Hits.counts` says how many each query has.

String ids exist only at the edges. When hits cross a process boundary (a served shard
replica answering the aggregator, a join partition answering a join worker), the rows
they name could be renumbered (a compaction) before anyone asked for them again, so the
answering process attaches what the edge will need to the same answer: the hits' ids,
and their metadata or vectors when the request asked for them. Nothing above reads
those payloads except to pass the final ``k`` on.

>>> import numpy as np
>>> h = Hits(np.array([[0.9, 0.5, -np.inf]], "float32"), np.array([[7, 3, -1]]))
>>> h.counts, h.nq, h.k
(array([2]), 1, 3)
"""
from __future__ import annotations

import numpy as np

__all__ = ["Hits", "sentinel"]


def sentinel(largest: bool) -> np.float32:
    """The score of an absent hit: ``-inf`` when larger is better, ``+inf`` otherwise."""
    return np.float32(-np.inf if largest else np.inf)


class Hits:
    """Columnar search answers: ``scores`` (nq, k) float32, ``keys`` (nq, k) int64 (``-1``: none).

    Optional payloads, aligned with ``keys``, for answers that cross a process:
    ``ids`` (an (nq, k) object array of str, ``None`` where there is no hit),
    ``metadata`` (per query, a list of one dict per valid hit), ``vectors``
    ((nq, k, dim) float32, zeros where there is no hit) and ``sparse`` (an (nq, k)
    object array of :class:`~gpusearch.sparse.SparseVector`, ``None`` where a hit has
    none or there is no hit; with ``vectors``).
    """

    __slots__ = ("scores", "keys", "ids", "metadata", "vectors", "sparse")

    def __init__(self, scores: np.ndarray, keys: np.ndarray, ids: np.ndarray | None = None,
                 metadata: list | None = None, vectors: np.ndarray | None = None, sparse: np.ndarray | None = None):
        self.scores, self.keys = scores, keys
        self.ids, self.metadata, self.vectors, self.sparse = ids, metadata, vectors, sparse

    @classmethod
    def empty(cls, nq: int, k: int, largest: bool) -> "Hits":
        """No hit for any of ``nq`` queries."""
        return cls(np.full((nq, k), sentinel(largest), np.float32), np.full((nq, k), -1, np.int64))

    @property
    def nq(self) -> int:
        return int(self.keys.shape[0])

    @property
    def k(self) -> int:
        return int(self.keys.shape[1])

    @property
    def counts(self) -> np.ndarray:
        """Valid hits per query (they come first in each row)."""
        return np.count_nonzero(self.keys >= 0, axis=1)

    def slice(self, lo: int, hi: int, k: int | None = None) -> "Hits":
        """Queries ``lo:hi``, each cut to its first ``k`` hits (a prefix of a best-first list)."""
        k = self.k if k is None else min(k, self.k)
        return Hits(
            self.scores[lo:hi, :k], self.keys[lo:hi, :k],
            None if self.ids is None else self.ids[lo:hi, :k],
            None if self.metadata is None else [row[:k] for row in self.metadata[lo:hi]],
            None if self.vectors is None else self.vectors[lo:hi, :k],
            None if self.sparse is None else self.sparse[lo:hi, :k],
        )

    def __repr__(self) -> str:
        extra = [name for name in ("ids", "metadata", "vectors", "sparse") if getattr(self, name) is not None]
        return f"Hits(nq={self.nq}, k={self.k}{', with ' + ', '.join(extra) if extra else ''})"
