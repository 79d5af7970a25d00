"""Recall-versus-speed benchmark suite (issue 5): data sets, the systems compared, the runner.

Layout:
- ``data.py``: data sets (WordNet glosses embedded with MiniLM, synthetic clustered vectors,
  ann-benchmarks HDF5 files), exact ground truth, recall.
- ``systems.py``: third-party systems (raw FAISS, ScaNN, hnswlib, usearch, Milvus Lite, Chroma).
- ``ours.py``: gpusearch in-process (any index spec, with ``index_options``) and served over HTTP.
- ``../bench_ann.py``: the runner (one process, every system on the same data in one run).

Every system follows the ``System`` protocol below. Vectors handed to ``build`` are float32
rows of unit length and the metric is always cosine, so inner product, cosine and
(for unit vectors) L2 rank alike; a system may use whichever its library is fastest at,
as long as the neighbours it returns are the cosine neighbours. Ids are the row numbers
0..n-1 (int64); systems that need string ids convert at their edge and convert back.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np


class System(Protocol):
    name: str    # the system, one line per name in the plot: "hnswlib", "FAISS HNSW", "gpusearch HNSW", ...
    index: str   # what was built, with its build parameters: "HNSW M=32 efConstruction=200"
    build_params: dict  # the same as data, complete after build: {"M": 32, "efConstruction": 200}

    def build(self, x: np.ndarray) -> None:
        """Insert/index every row of ``x`` ((n, dim) float32, unit rows); row i has id i."""

    def sweep(self) -> list[dict]:
        """Search-parameter settings to measure, cheapest (lowest recall) first, e.g. [{"ef": 16}, ...].
        One entry ``{}`` for a system with nothing to tune (exact search)."""

    def set_params(self, params: dict) -> None:
        """Apply one entry of ``sweep()`` to the searches that follow."""

    def search_one(self, q: np.ndarray, k: int) -> np.ndarray:
        """One query ((dim,) float32) the way a user sends a single query: ids of the ``k`` best, best first."""

    def search_batch(self, q: np.ndarray, k: int) -> np.ndarray:
        """Many queries in one call where the system has such a call (else a loop): (nq, k) int64 ids,
        best first, -1 where fewer than k came back."""

    def close(self) -> None:
        """Free the index (and stop any server or child process the system started)."""


def pad_ids(rows, k: int) -> np.ndarray:
    """A list of id sequences (each at most k long) as an (n, k) int64 array padded with -1."""
    rows = list(rows)
    if rows and all(len(r) == k for r in rows):  # the usual case, in one conversion
        return np.array(rows, dtype=np.int64).reshape(len(rows), k)
    out = np.full((len(rows), k), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        r = np.asarray(r, dtype=np.int64)[:k]
        out[i, : len(r)] = r
    return out
