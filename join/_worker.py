"""The join workers: each left batch is prepared once, sent to every partition, and the answers merged.

k-NN answers are :class:`gpusearch.hits.Hits` per partition, merged with the
engine's :func:`gpusearch.merge.merge` (the kernels' k-way merge on positions;
where scores tie, the smaller right id first, read from the ids the hits carry).
Range answers are unordered pairs, ranked here per left row.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpusearch.devices import resolve_device
from gpusearch.hits import Hits
from gpusearch.merge import merge

from . import _inputs as inputs
from ._output import write_part
from ._partition import encode
from ._spec import Spec

__all__ = ["JoinWorker", "merge_partitions", "rank_pairs", "result_table", "stats_row"]


def merge_partitions(answers: list[Hits], k: int, *, largest: bool) -> Hits:
    """The ``k`` best of the partitions' answers to the same queries (hits carrying their ids),
    ties to the smaller right id."""
    hits, _ = merge(answers, k, largest=largest)
    return hits


class JoinWorker:
    """A Ray Data actor: joins one left batch against every partition."""

    def __init__(self, partitions, spec: Spec, device: str, output: str | None, done_ref=None):
        import ray

        self.partitions = partitions
        self.spec = spec
        self.device = resolve_device(device)
        self.output = output
        self.done = None
        if done_ref is not None:
            done = ray.get(done_ref)
            self.done = done if len(done) else None

    def queries(self, batch: pa.Table, ids: pa.Array) -> np.ndarray:
        """The batch's query vectors as the engine takes them (float32, unit length for cosine)."""
        spec = self.spec
        if spec.text:
            q = encode(spec, inputs.texts(batch.column(spec.text), where="left", name=spec.text), self.device)
        elif spec.vector:
            q = inputs.vectors(batch.column(spec.vector), spec.dim, where="left", name=spec.vector, ids=ids)
        else:  # sparse vectors alone
            return np.empty((len(ids), 0), np.float32)
        return np.ascontiguousarray(inputs.prepare(q, dim=spec.dim, metric=spec.metric, where="left", ids=ids))

    def sparse(self, batch: pa.Table, ids: pa.Array) -> list | None:
        """The batch's sparse query vectors (``spec.sparse``), checked; None when the join has none."""
        spec = self.spec
        if not spec.sparse:
            return None
        return inputs.sparse_vectors(batch.column(spec.sparse), where="left", name=spec.sparse, ids=ids)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        spec = self.spec
        ids = inputs.ids(batch.column(spec.left_id), where="left", name=spec.left_id)
        if self.done is not None:
            keep = np.asarray(pc.invert(pc.is_in(ids, value_set=self.done)))
            if not keep.all():
                batch = batch.filter(pa.array(keep))
                ids = ids.filter(pa.array(keep))
        n = len(ids)
        if n == 0:
            return stats_row(0, 0)
        qref = ray.put(self.queries(batch, ids))
        sparse = self.sparse(batch, ids)
        sref = None if sparse is None else ray.put(sparse)
        left = ids.to_numpy(zero_copy_only=False)
        if spec.mode == "knn":
            exclude = ray.put(left) if spec.exclude_self else None
            answers = ray.get([p.knn.remote(qref, spec.k, exclude, sref) for p in self.partitions])
            hits = merge_partitions(answers, spec.k, largest=spec.largest)
            ok = hits.keys >= 0
            qi = np.repeat(np.arange(n), hits.counts)
            rank = np.broadcast_to(np.arange(spec.k), ok.shape)[ok]
            table = result_table(left[qi], hits.ids[ok], hits.scores[ok], rank, ids.type, spec.right_id_type)
        else:
            parts = ray.get([p.range.remote(qref, spec.threshold, sref) for p in self.partitions])
            qi = np.concatenate([p[0] for p in parts])
            rid = np.concatenate([p[1] for p in parts])
            sc = np.concatenate([p[2] for p in parts])
            if spec.exclude_self and len(qi):
                keep = rid != left[qi]
                qi, rid, sc = qi[keep], rid[keep], sc[keep]
            qi, rid, sc, rank = rank_pairs(qi, rid, sc, largest=spec.largest, max_per_row=spec.max_per_row)
            table = result_table(left[qi], rid, sc, rank, ids.type, spec.right_id_type)
        if self.output is None:
            return table
        write_part(self.output, table, ids)
        from gpusearch.serve._faults import HOLD_JOIN_PART, hold_while_file_exists
        hold_while_file_exists(HOLD_JOIN_PART)  # a test hook: nothing unless a test sets it
        return stats_row(n, table.num_rows)


def rank_pairs(qi, rid, sc, *, largest: bool, max_per_row: int | None):
    """Order pairs by query row, then best score, then smaller right id; number them per row."""
    if len(qi) == 0:
        return qi, rid, sc, np.empty(0, np.int64)
    key = -sc.astype(np.float64) if largest else sc.astype(np.float64)
    _, id_rank = np.unique(rid, return_inverse=True)
    order = np.lexsort((id_rank.reshape(-1), key, qi))
    qi, rid, sc = qi[order], rid[order], sc[order]
    starts = np.flatnonzero(np.r_[True, qi[1:] != qi[:-1]])
    lengths = np.diff(np.r_[starts, len(qi)])
    rank = np.arange(len(qi)) - np.repeat(starts, lengths)
    if max_per_row is not None:
        keep = rank < max_per_row
        qi, rid, sc, rank = qi[keep], rid[keep], sc[keep], rank[keep]
    return qi, rid, sc, rank


def result_table(left_ids, right_ids, scores, ranks, left_type: pa.DataType, right_type: str) -> pa.Table:
    rtype = pa.int64() if right_type == "int64" else pa.string()
    return pa.table({
        "left_id": pa.array(left_ids.tolist() if left_ids.dtype == object else left_ids, type=left_type),
        "right_id": pa.array(right_ids.tolist() if right_ids.dtype == object else right_ids, type=rtype),
        "score": pa.array(np.asarray(scores, np.float32)),
        "rank": pa.array(np.asarray(ranks, np.int32)),
    })


def stats_row(rows: int, pairs: int) -> pa.Table:
    return pa.table({"rows": pa.array([rows], pa.int64()), "pairs": pa.array([pairs], pa.int64())})
