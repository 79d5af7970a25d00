"""Offline batch similarity joins on Ray Data: k-NN join, threshold (range) join and self-join dedup.

An integration layer over the engine, beside ``gpusearch.serve``: installed as
``gpusearch.join`` from the top-level ``join/`` folder, never imported by the
core (``import gpusearch`` does not import Ray). It needs the ``join`` extra.

For each row of a *left* table, find its nearest rows in a *right* table
(:func:`knn_join`), or every right row within a similarity threshold
(:func:`range_join`); :func:`dedup` range-joins a table with itself and gives
each row the id of its cluster of near-duplicates (entity resolution).

How it runs
-----------
- The right side is split over a pool of partition actors (one per GPU, or per
  worker on the CPU). Each holds its part in the engine's
  :class:`gpusearch.vectors.VectorStore` on its device, rows in id order (unit
  length for cosine, through :func:`gpusearch.arrays.prepare_vectors`), and,
  when a ``filter`` is given, which rows pass it. No process ever holds the whole
  right side, so it may be larger than one worker's memory. A right side given as
  a collection directory is read through the engine's
  :class:`gpusearch.replica.ShardFollower` (its live records, as a writer last
  made them durable).
- The left side streams through ``Dataset.map_batches``: a pool of join workers
  prepares each batch once (:func:`gpusearch.arrays.prepare_vectors`), sends it
  to every partition (one copy through the object store), and merges the
  partitions' :class:`gpusearch.hits.Hits` with the engine's
  :func:`gpusearch.merge.merge` (ties to the smaller right id). Text columns are
  encoded on the join workers' device with the encoder (MiniLM by default).
- Exact search is the engine's: :class:`gpusearch.backends.exact.ExactBackend`
  over the partition's store (the kernels' fused distance + top-k, on the GPU or
  their NumPy path on the CPU, with the filter as its allow-mask). A range join
  scans the same store in tiles.
- ``k`` is checked by :func:`gpusearch.request.check_top_k`: one limit
  (:data:`gpusearch.MAX_TOP_K`) and one message on every edge.
- With ``output=`` the result is written as Parquet: each left batch becomes one
  file, written under a hidden name and renamed, and a side file records which
  left ids it finished. Rerunning into the same output path skips the finished
  left rows, so an interrupted join resumes without duplicating a row.

With ``sparse=`` (a column of Pinecone-style ``{indices, values}`` sparse
vectors, or a collection's own), a pair scores the dense inner product plus the
sparse dot product, exactly as the engine's hybrid search (metric ``ip``); with
``vector=None`` sparse vectors alone, pairing rows that share a term. Each
partition keeps its share in the engine's :class:`gpusearch.sparse.SparseRows`.

Scores: ``cosine`` and ``ip`` are similarities (larger is better), ``l2`` is the
*squared* Euclidean distance (smaller is better), as in
:class:`gpusearch.Collection`. ``range_join``'s threshold is in the same units:
pairs with score ``>= threshold`` (cosine, ip) or ``<= threshold`` (l2).

Every check that can fail (columns, types, dimensions, NaN or infinity, ``k``,
the threshold's range, the filter) runs before any output is written.

Modules: ``_spec`` (the checked parameters), ``_inputs`` (sources and Arrow
columns), ``_partition`` (a partition of the right side), ``_worker`` (a left
batch against every partition, and the merge), ``_output`` (resumable Parquet),
``_joins`` (the public functions, driving a join).
"""
from __future__ import annotations

from ._joins import connected_components, dedup, knn_join, range_join
from ._output import DONE_DIR, PLAN_FILE, STATS_FILE, read_stats
from ._partition import Partition
from ._spec import JOIN_COLUMNS, METRICS

__all__ = ["knn_join", "range_join", "dedup", "read_stats", "connected_components", "Partition",
           "JOIN_COLUMNS", "METRICS", "DONE_DIR", "PLAN_FILE", "STATS_FILE"]
