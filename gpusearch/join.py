"""Offline batch similarity joins on Ray Data: k-NN join, threshold (range) join and self-join dedup.

For each row of a *left* table, find its nearest rows in a *right* table
(:func:`knn_join`), or every right row within a similarity threshold
(:func:`range_join`); :func:`dedup` range-joins a table with itself and gives
each row the id of its cluster of near-duplicates (entity resolution).

How it runs
-----------
- The right side is split over a pool of partition actors (one per GPU, or per
  worker on the CPU), each holding its part on its device: the vectors (unit
  length for cosine), the row ids and, when a ``filter`` is given, which rows
  pass it. No process ever holds the whole right side, so it may be larger
  than one worker's memory. A right side given as a collection directory is
  read from the collection's shards (its live records, as a writer last made
  them durable).
- The left side streams through ``Dataset.map_batches``: a pool of join
  workers sends every batch to every partition (one copy through the object
  store), and merges the per-partition answers with the kernels' k-way merge
  (``kernels.merge_topk``, ties to the smaller right id). Text columns are
  encoded on the join workers' device with the encoder (MiniLM by default).
- Exact search: on the CPU each partition runs FAISS's exact ``knn`` (or the
  kernels' fused search when a filter masks rows); on a GPU it runs the kernels'
  fused distance + top-k on the device.
- With ``output=`` the result is written as Parquet: each left batch becomes one
  file, written under a hidden name and renamed, and a side file records which
  left ids it finished. Rerunning into the same output path skips the finished
  left rows, so an interrupted join resumes without duplicating a row.

Scores: ``cosine`` and ``ip`` are similarities (larger is better), ``l2`` is the
*squared* Euclidean distance (smaller is better), as in
:class:`gpusearch.Collection`. ``range_join``'s threshold is in the same units:
pairs with score ``>= threshold`` (cosine, ip) or ``<= threshold`` (l2).

Every check that can fail (columns, types, dimensions, NaN or infinity, ``k``,
the threshold's range, the filter) runs before any join work starts.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import kernels
from . import metadata as md
from .arrays import to_host
from .devices import is_cuda, resolve_device
from .filters import compile_filter
from .progress import progress

__all__ = ["knn_join", "range_join", "dedup", "read_stats", "connected_components", "merge_knn", "Partition",
           "JOIN_COLUMNS", "METRICS", "MAX_K"]

log = logging.getLogger(__name__)

METRICS = ("cosine", "ip", "l2")
#: The largest ``k`` (and ``max_per_row``) a join accepts.
MAX_K = 1000
#: Columns of a join's result.
JOIN_COLUMNS = ("left_id", "right_id", "score", "rank")
#: In an output directory: the join's parameters, and one file of finished left ids per part.
PLAN_FILE = "_gpusearch_join.json"
DONE_DIR = "_gpusearch_done"
STATS_FILE = "_gpusearch_stats.json"
#: Rows of the right side read per batch while partitions load.
LOAD_BATCH = 65536
#: Range join: query x base scores held at once per partition.
RANGE_TILE_BYTES = 128 << 20


# ---------------------------------------------------------------------------------------------
# What the caller asked for, checked


@dataclass
class _Spec:
    """Everything a partition and a join worker need to know, picklable."""

    mode: str  # "knn" or "range"
    metric: str
    dim: int
    left_id: str
    right_id: str
    vector: str | None
    text: str | None
    k: int = 0
    threshold: float = 0.0
    max_per_row: int | None = None
    exclude_self: bool = False
    filter: Mapping | None = None
    filter_fields: list = field(default_factory=list)
    schema: dict = field(default_factory=dict)
    encoder: str | None = None  # a model path, or None for the default MiniLM

    @property
    def largest(self) -> bool:
        return self.metric != "l2"

    def describe(self) -> dict:
        """What must match for a rerun to resume into the same output."""
        d = asdict(self)
        d.pop("filter_fields")
        d.pop("schema")
        return d


def _check_metric(metric: Any) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(repr(m) for m in METRICS)}, got {metric!r}")
    return metric


def _check_count(value: Any, name: str, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int between 1 and {MAX_K}, got {type(value).__name__} {value!r}")
    if not 1 <= int(value) <= MAX_K:
        raise ValueError(f"{name} must be between 1 and {MAX_K}, got {int(value)}")
    return int(value)


def _check_threshold(threshold: Any, metric: str) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise TypeError(f"threshold must be a number, got {type(threshold).__name__} {threshold!r}")
    t = float(threshold)
    if not math.isfinite(t):
        raise ValueError(f"threshold must be finite, got {t}")
    if metric == "cosine" and not -1.0 <= t <= 1.0:
        raise ValueError(f"threshold for metric 'cosine' is a similarity in [-1, 1], got {t}")
    if metric == "l2" and t < 0:
        raise ValueError(f"threshold for metric 'l2' is a squared distance, at least 0, got {t}")
    return t


def _check_column_name(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a column name (a non-empty string), got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Sources: a Ray Dataset, Parquet paths or URIs, or (right only) a collection directory


@dataclass
class _Source:
    kind: str  # "dataset" or "collection"
    dataset: Any = None
    path: str | None = None
    describe: Any = None


def _is_collection(path: str) -> bool:
    return "://" not in path and os.path.isfile(os.path.join(path, "collection.json"))


def _check_exists(path: str, name: str) -> None:
    import pyarrow.fs as pafs

    try:
        fs, inner = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), os.path.abspath(path))
        info = fs.get_file_info(inner)
    except (pa.ArrowInvalid, OSError, ValueError) as e:
        raise ValueError(f"{name}: cannot open {path!r}: {e}") from None
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{name}: {path!r} does not exist (expected a Parquet file or directory)")


def _source(x: Any, name: str, *, allow_collection: bool) -> _Source:
    import ray.data

    if isinstance(x, ray.data.Dataset):
        return _Source("dataset", dataset=x, describe="a ray.data.Dataset")
    if isinstance(x, (str, os.PathLike)):
        paths = [os.fspath(x)]
    elif isinstance(x, (list, tuple)) and x and all(isinstance(p, (str, os.PathLike)) for p in x):
        paths = [os.fspath(p) for p in x]
    else:
        extra = ", or a collection directory" if allow_collection else ""
        raise TypeError(f"{name} must be a ray.data.Dataset, a Parquet path or URI, or a list of them{extra}; "
                        f"got {type(x).__name__}")
    if len(paths) == 1 and _is_collection(paths[0]):
        if not allow_collection:
            raise ValueError(f"{name} is a gpusearch collection ({paths[0]}); only the right side may be a "
                             "collection: export the left side to Parquet or pass a ray.data.Dataset")
        return _Source("collection", path=os.path.abspath(paths[0]), describe=os.path.abspath(paths[0]))
    for p in paths:
        _check_exists(p, name)
    local = [p if "://" in p else os.path.abspath(p) for p in paths]
    return _Source("dataset", dataset=_read_parquet(local), describe=local)


def _read_parquet(paths):
    """``ray.data.read_parquet`` through Ray Data's first Parquet datasource.

    Ray 2.60's default (``use_datasource_v2``) spent 6-9 s on every execution of
    a one-file read on the 2-core test machine, against 0.2-0.4 s for the first
    datasource; a join executes several reads. Read tasks take half a CPU, so they
    schedule beside the join's actors on a small machine.
    """
    import ray.data

    ctx = ray.data.DataContext.get_current()
    before = getattr(ctx, "use_datasource_v2", None)
    if before is not None:
        ctx.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(paths, num_cpus=0.5)
    finally:
        if before is not None:
            ctx.use_datasource_v2 = before


def _columns(ds) -> dict[str, pa.DataType]:
    schema = ds.schema()
    if schema is None:
        raise ValueError("the dataset has no schema (is it empty?)")
    base = getattr(schema, "base_schema", schema)
    if isinstance(base, pa.Schema):
        return {f.name: f.type for f in base}
    return dict(zip(schema.names, schema.types))


def _need_column(cols: Mapping, col: str, side: str, arg: str) -> None:
    if col not in cols:
        raise ValueError(f"{side} has no column {col!r} (its columns: {', '.join(cols) or 'none'}); "
                         f"pass {arg}= to name the right one")


# ---------------------------------------------------------------------------------------------
# Arrow columns to arrays


def _as_array(col) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        if col.num_chunks == 0:
            return pa.array([], type=col.type)
        return col.combine_chunks() if col.num_chunks > 1 else col.chunk(0)
    return col


def _vectors(col, dim: int | None, *, where: str, name: str, ids=None) -> np.ndarray:
    """An Arrow column of per-row vectors as an (n, dim) float32 matrix, every value finite."""
    arr = _as_array(col)
    t = arr.type
    n = len(arr)
    if arr.null_count:
        row = int(np.flatnonzero(~np.asarray(arr.is_valid()))[0])
        raise ValueError(f"{where}: {_row_name(ids, row)} has no {name!r} (null)")
    if isinstance(t, pa.ExtensionType):  # Ray's tensor columns (from_items / from_numpy)
        m = np.asarray(arr.to_numpy(), dtype=np.float32)
        if m.dtype == object or m.ndim != 2:
            raise TypeError(f"{where} column {name!r} holds {t}; expected one fixed-length vector per row")
    elif pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        if not (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
            raise TypeError(f"{where} column {name!r} holds lists of {t.value_type}; expected lists of floats")
        if pa.types.is_fixed_size_list(t):
            width = t.list_size
        else:
            lengths = np.asarray(pc.list_value_length(arr))
            width = int(lengths[0]) if n else (dim or 0)
            bad = np.flatnonzero(lengths != width) if n else []
            if len(bad):
                r = int(bad[0])
                raise ValueError(f"{where}: {_row_name(ids, r)} has a {name!r} of {int(lengths[r])} values; "
                                 f"expected {width} like the first row")
        flat = arr.flatten()
        if flat.null_count:
            raise ValueError(f"{where} column {name!r} has a null inside a vector")
        m = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(n, width)
    else:
        raise TypeError(f"{where} column {name!r} holds {t}; expected a vector per row "
                        "(fixed_size_list<float>, list<float> or a Ray tensor column)")
    if dim is not None and m.shape[1] != dim:
        raise ValueError(f"{where} column {name!r} has vectors of {m.shape[1]} dims; expected {dim}")
    finite = np.isfinite(m).all(axis=1)
    if not finite.all():
        r = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{where}: {_row_name(ids, r)} has NaN or infinity in {name!r}")
    return m


def _row_name(ids, row: int) -> str:
    """'the row with id 'x'' when the ids are known (row numbers inside a batch mean nothing to a user)."""
    note = _id_note(ids, row)
    return f"the row with id {note[5:-1]}" if note else f"row {row}"


def _id_note(ids, row: int) -> str:
    if ids is None:
        return ""
    try:
        return f" (id {_as_array(ids)[row].as_py()!r})"
    except Exception:  # the note is a courtesy; never let it hide the real error
        return ""


def _ids(col, *, where: str, name: str) -> pa.Array:
    arr = _as_array(col)
    if arr.null_count:
        row = int(np.flatnonzero(~np.asarray(arr.is_valid()))[0])
        raise ValueError(f"{where} row {row} has no id (column {name!r} is null there)")
    t = arr.type
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        arr = arr.cast(pa.string())
    elif pa.types.is_integer(t):
        arr = arr.cast(pa.int64())
    elif not pa.types.is_string(t):
        raise TypeError(f"{where} id column {name!r} holds {t}; expected strings or integers")
    return arr


def _texts(col, *, where: str, name: str) -> list[str]:
    arr = _as_array(col)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise TypeError(f"{where} text column {name!r} holds {arr.type}; expected strings")
    if arr.null_count:
        row = int(np.flatnonzero(~np.asarray(arr.is_valid()))[0])
        raise ValueError(f"{where} row {row} has no text (column {name!r} is null there)")
    return arr.to_pylist()


def _normalize(m: np.ndarray, *, where: str, ids=None) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if len(zero):
        r = int(zero[0])
        raise ValueError(f"{where}: {_row_name(ids, r)} is all zeros; cosine similarity needs non-zero vectors")
    return m / norms


def _filter_table(batch: pa.Table, fields: Sequence[str], schema: Mapping[str, str]) -> pa.Table:
    """The right side's filter columns, cast to the metadata types the filter compiler knows."""
    arrays = []
    for f in fields:
        col = _as_array(batch.column(f))
        arrays.append(col.cast(md.FIELD_TYPES[schema[f]]))
    return pa.table(arrays, names=list(fields)) if fields else pa.table({})


def _field_type(t: pa.DataType) -> str | None:
    """The metadata field type an Arrow column can be filtered as, or None."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
            pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)):
        return "string_list"
    return None


def _filter_fields(flt: Any, out: set) -> None:
    if isinstance(flt, Mapping):
        for key, value in flt.items():
            if key in ("$and", "$or") and isinstance(value, list):
                for sub in value:
                    _filter_fields(sub, out)
            elif isinstance(key, str) and not key.startswith("$"):
                out.add(key)


# ---------------------------------------------------------------------------------------------
# The right side's partitions (Ray actors)


class _Encoder:
    """The text encoder, loaded once per process on first use."""

    _cache: dict = {}

    @classmethod
    def get(cls, model: str | None, device: str):
        key = (model, device)
        if key not in cls._cache:
            from .encoders import SentenceEncoder

            cls._cache[key] = SentenceEncoder(model, device=device)
        return cls._cache[key]


def _encode(spec: _Spec, texts: list[str], device: str) -> np.ndarray:
    enc = _Encoder.get(spec.encoder, device)
    if not texts:
        return np.empty((0, enc.dim), np.float32)
    return np.ascontiguousarray(to_host(enc.encode(texts)), dtype=np.float32)


class Partition:
    """One part of the right side, on one device, searched exactly.

    Used as a Ray actor by the joins; usable directly for tests and debugging.
    """

    def __init__(self, number: int, spec: _Spec, *, device: str = "auto", threads: int | None = None):
        self.number = number
        self.spec = spec
        self.device = resolve_device(device)
        if threads:
            import faiss
            import torch

            torch.set_num_threads(threads)
            faiss.omp_set_num_threads(threads)
        self.ids: np.ndarray = np.empty(0, object)
        self.base = None
        self.mask: np.ndarray | None = None
        self.sqnorms = None
        self._parts: list = []

    # -- loading -------------------------------------------------------------
    def add_batch(self, batch: pa.Table) -> int:
        spec = self.spec
        where = f"right partition {self.number}"
        ids = _ids(batch.column(spec.right_id), where=where, name=spec.right_id)
        if spec.text:
            vecs = _encode(spec, _texts(batch.column(spec.text), where=where, name=spec.text), self.device)
        else:
            vecs = _vectors(batch.column(spec.vector), spec.dim, where=where, name=spec.vector, ids=ids)
        meta = _filter_table(batch, spec.filter_fields, spec.schema) if spec.filter_fields else None
        self._parts.append((ids, vecs, meta))
        return len(ids)

    def load_split(self, it) -> int:
        """Read this partition's share of the right side from a ``DataIterator`` (``streaming_split``)."""
        for batch in it.iter_batches(batch_format="pyarrow", batch_size=LOAD_BATCH, prefetch_batches=1):
            self.add_batch(batch)
        return self.finish()

    def load_collection(self, path: str, shards: Sequence[int]) -> int:
        """Read the live records of some shards of a collection."""
        from .replica import ShardFollower

        spec = self.spec
        for s in shards:
            with ShardFollower.open(path, s, device="cpu") as f:
                sh = f.shard
                with sh.lock.read():
                    rows = np.flatnonzero(sh.alive[: sh.n_rows])
                    ids = pa.array([sh.ids[r] for r in rows], pa.string())
                    vecs = np.array(sh.store.host[rows], dtype=np.float32)
                    meta = None
                    if spec.filter_fields:
                        meta = md.take(sh.metadata_table(md.merge_schemas(sh.schema, spec.schema)), rows)
                        meta = meta.select(spec.filter_fields)
                self._parts.append((ids, vecs, meta))
        return self.finish()

    def finish(self) -> int:
        """Put the loaded rows in id order on the device; compute the filter mask."""
        spec = self.spec
        parts, self._parts = self._parts, []
        if parts:
            ids = pa.concat_arrays([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
            host = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        else:
            ids, host = pa.array([], pa.string()), np.empty((0, spec.dim), np.float32)
        order = np.asarray(pc.sort_indices(ids))
        ids = ids.take(pa.array(order))
        host = np.ascontiguousarray(host[order], dtype=np.float32)
        if spec.metric == "cosine" and len(host):
            host = _normalize(host, where=f"right partition {self.number}", ids=ids)
        self.mask = None
        if spec.filter_fields:
            metas = [p[2] for p in parts]
            meta = md.concat(metas, {f: spec.schema[f] for f in spec.filter_fields}).take(pa.array(order))
            compiled = compile_filter(spec.filter, spec.schema)
            self.mask = None if compiled is None else compiled.mask(meta)
        self.ids = ids.to_numpy(zero_copy_only=False)
        if is_cuda(self.device):
            import torch

            self.base = torch.from_numpy(host).to(self.device)
        else:
            self.base = host
        self.sqnorms = None
        if spec.metric == "l2":
            self.sqnorms = (self.base * self.base).sum(1)
        return len(self.ids)

    def size(self) -> dict:
        allowed = len(self.ids) if self.mask is None else int(self.mask.sum())
        return {"rows": len(self.ids), "allowed": allowed}

    # -- searching -------------------------------------------------------------
    def _queries(self, q: np.ndarray):
        if is_cuda(self.device):
            import torch

            return torch.from_numpy(q).to(self.device)
        return q

    def knn(self, q: np.ndarray, k: int):
        """This partition's ``k`` best rows per query: scores (nq, k), ids (nq, k), valid (nq, k)."""
        nq, n = len(q), len(self.ids)
        kk = min(k, n)
        largest = self.spec.largest
        if kk == 0 or nq == 0:
            return (np.full((nq, k), -np.inf if largest else np.inf, np.float32),
                    np.zeros((nq, k), self.ids.dtype), np.zeros((nq, k), bool))
        if not is_cuda(self.device) and self.mask is None:
            import faiss

            metric = faiss.METRIC_L2 if self.spec.metric == "l2" else faiss.METRIC_INNER_PRODUCT
            D, I = faiss.knn(q, self.base, kk, metric=metric)
        else:
            D, I = kernels.fused_search(self._queries(q), self.base, kk,
                                        metric="l2" if self.spec.metric == "l2" else "ip",
                                        mask=None if self.mask is None else self._device_mask(),
                                        base_sqnorms=self.sqnorms)
            D, I = to_host(D), to_host(I)
        valid = I >= 0
        ids = self.ids[np.where(valid, I, 0)]
        return np.asarray(D, np.float32), ids, valid

    def _device_mask(self):
        if is_cuda(self.device):
            import torch

            if not hasattr(self, "_mask_dev") or self._mask_dev is None:
                self._mask_dev = torch.from_numpy(self.mask).to(self.device)
            return self._mask_dev
        return self.mask

    def range(self, q: np.ndarray, threshold: float):
        """Every (query row, right id, score) pair within the threshold, unordered."""
        n = len(self.ids)
        largest = self.spec.largest
        out_q, out_r, out_s = [], [], []
        if n and len(q):
            qd = self._queries(q)
            step = max(1, RANGE_TILE_BYTES // (4 * max(1, len(q))))
            for start in range(0, n, step):
                b = self.base[start : start + step]
                s = qd @ b.T
                if self.spec.metric == "l2":
                    qn = (qd * qd).sum(1)
                    s = qn[:, None] + self.sqnorms[start : start + step][None, :] - 2 * s
                    s = s.clip(min=0) if is_cuda(self.device) else np.maximum(s, 0)
                    hit = s <= threshold
                else:
                    hit = s >= threshold
                if self.mask is not None:
                    m = self._device_mask()[start : start + step]
                    hit = hit & m[None, :]
                if is_cuda(self.device):
                    import torch

                    qi, rj = (t.cpu().numpy() for t in torch.nonzero(hit, as_tuple=True))
                    sv = to_host(s[hit])
                else:
                    qi, rj = np.nonzero(hit)
                    sv = s[qi, rj]
                out_q.append(qi.astype(np.int64))
                out_r.append(rj + start)
                out_s.append(np.asarray(sv, np.float32))
        if not out_q:
            return np.empty(0, np.int64), self.ids[:0], np.empty(0, np.float32)
        rows = np.concatenate(out_r)
        return np.concatenate(out_q), self.ids[rows], np.concatenate(out_s)


# ---------------------------------------------------------------------------------------------
# Merging per-partition answers (in the join workers)


def merge_knn(answers: list, k: int, *, largest: bool):
    """Merge per-partition ``(scores, ids, valid)`` into the ``k`` best per query with the kernels' merge.

    Ties go to the smaller right id: the number passed to the merge with each
    candidate is its id's rank among this batch's candidate ids.
    Returns ``(scores (nq, k), ids (nq, k), valid (nq, k))``.
    """
    ids = np.concatenate([a[1] for a in answers], axis=1)
    valid = np.concatenate([a[2] for a in answers], axis=1)
    nq = ids.shape[0]
    flat = ids[valid]
    uniq, inv = np.unique(flat, return_inverse=True) if len(flat) else (ids[:0, 0], np.empty(0, np.int64))
    ranks = np.full(ids.shape, -1, np.int64)
    ranks[valid] = inv.reshape(-1)
    absent = np.float32(-np.inf if largest else np.inf)
    scores_list, ranks_list, start = [], [], 0
    for D_p, _, valid_p in answers:
        w = D_p.shape[1]
        scores_list.append(np.where(valid_p, D_p, absent).astype(np.float32))
        ranks_list.append(ranks[:, start : start + w])
        start += w
    D, R = kernels.merge_topk(scores_list, ranks_list, k, largest=largest)
    ok = R >= 0
    out_ids = np.empty((nq, k), dtype=ids.dtype)
    if len(uniq):
        out_ids[ok] = uniq[R[ok]]
    return D, out_ids, ok


def _exclude_self(answer, left_ids: np.ndarray):
    D, ids, valid = answer
    same = valid & (ids == left_ids[:, None])
    if same.any():
        valid = valid & ~same
    return D, ids, valid


class _JoinWorker:
    """A Ray Data actor: joins one left batch against every partition."""

    def __init__(self, partitions, spec: _Spec, device: str, output: str | None, done_ref=None):
        import ray

        self.partitions = partitions
        self.spec = spec
        self.device = resolve_device(device)
        self.output = output
        self.done = None
        if done_ref is not None:
            done = ray.get(done_ref)
            self.done = done if len(done) else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        spec = self.spec
        ids = _ids(batch.column(spec.left_id), where="left", name=spec.left_id)
        if self.done is not None:
            keep = np.asarray(pc.invert(pc.is_in(ids, value_set=self.done)))
            if not keep.all():
                batch = batch.filter(pa.array(keep))
                ids = ids.filter(pa.array(keep))
        n = len(ids)
        if n == 0:
            return _stats_row(0, 0)
        if spec.text:
            q = _encode(spec, _texts(batch.column(spec.text), where="left", name=spec.text), self.device)
        else:
            q = _vectors(batch.column(spec.vector), spec.dim, where="left", name=spec.vector, ids=ids)
        if spec.metric == "cosine":
            q = _normalize(q, where="left", ids=ids)
        q = np.ascontiguousarray(q, np.float32)
        left = ids.to_numpy(zero_copy_only=False)
        qref = ray.put(q)
        if spec.mode == "knn":
            kk = spec.k + (1 if spec.exclude_self else 0)
            answers = ray.get([p.knn.remote(qref, kk) for p in self.partitions])
            if spec.exclude_self:
                answers = [_exclude_self(a, left) for a in answers]
            D, rid, ok = merge_knn(answers, spec.k, largest=spec.largest)
            counts = ok.sum(axis=1)
            qi = np.repeat(np.arange(n), counts)
            table = _result_table(left[qi], rid[ok], D[ok], np.arange(spec.k)[None, :].repeat(n, 0)[ok], ids.type)
        else:
            parts = ray.get([p.range.remote(qref, spec.threshold) for p in self.partitions])
            qi = np.concatenate([p[0] for p in parts])
            rid = np.concatenate([p[1] for p in parts])
            sc = np.concatenate([p[2] for p in parts])
            if spec.exclude_self and len(qi):
                keep = rid != left[qi]
                qi, rid, sc = qi[keep], rid[keep], sc[keep]
            qi, rid, sc, rank = _rank_pairs(qi, rid, sc, largest=spec.largest, max_per_row=spec.max_per_row)
            table = _result_table(left[qi], rid, sc, rank, ids.type)
        if self.output is None:
            return table
        _write_part(self.output, table, ids)
        return _stats_row(n, table.num_rows)


def _rank_pairs(qi, rid, sc, *, largest: bool, max_per_row: int | None):
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


def _result_table(left_ids, right_ids, scores, ranks, left_type) -> pa.Table:
    right = pa.array(right_ids.tolist() if right_ids.dtype == object else right_ids)
    return pa.table({
        "left_id": pa.array(left_ids.tolist() if left_ids.dtype == object else left_ids, type=left_type),
        "right_id": right.cast(pa.string()) if pa.types.is_null(right.type) else right,
        "score": pa.array(np.asarray(scores, np.float32)),
        "rank": pa.array(np.asarray(ranks, np.int32)),
    })


def _stats_row(rows: int, pairs: int) -> pa.Table:
    return pa.table({"rows": pa.array([rows], pa.int64()), "pairs": pa.array([pairs], pa.int64())})


# ---------------------------------------------------------------------------------------------
# Output: one Parquet file per left batch, resumable


def _fs(path: str):
    import pyarrow.fs as pafs

    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _write_part(output: str, table: pa.Table, left_ids: pa.Array) -> None:
    """Write a part and its finished left ids; the part's rename is the commit."""
    import pyarrow.parquet as pq

    fs, root = _fs(output)
    name = f"part-{uuid.uuid4().hex}.parquet"
    done_tmp, done = f"{root}/{DONE_DIR}/.{name}.tmp", f"{root}/{DONE_DIR}/{name}"
    part_tmp, part = f"{root}/.{name}.tmp", f"{root}/{name}"
    pq.write_table(pa.table({"left_id": left_ids}), done_tmp, filesystem=fs)
    fs.move(done_tmp, done)
    pq.write_table(table, part_tmp, filesystem=fs)
    fs.move(part_tmp, part)


def _write_stats(output: str, stats: dict) -> None:
    """``output/_gpusearch_stats.json``: what the last run did and how long its phases took."""
    fs, root = _fs(output)
    with fs.open_output_stream(f"{root}/{STATS_FILE}.tmp") as f:
        f.write(json.dumps(stats, indent=1).encode())
    fs.move(f"{root}/{STATS_FILE}.tmp", f"{root}/{STATS_FILE}")


def read_stats(output) -> dict:
    """The stats the last join into ``output`` wrote: rows, pairs, partitions, load and join seconds."""
    fs, root = _fs(os.fspath(output))
    with fs.open_input_stream(f"{root}/{STATS_FILE}") as f:
        return json.loads(f.read().decode())


def _flatten(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and k != "filter":
            out.update(_flatten(v, f"{k}."))
        else:
            out[prefix + k] = v
    return out


def _prepare_output(output: str, plan: dict, *, overwrite: bool) -> pa.Array | None:
    """Create or reopen an output directory; the left ids it already finished (None when new)."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, root = _fs(output)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise ValueError(f"output {output!r} is a file; expected a directory for the join's Parquet parts")
    plan_path = f"{root}/{PLAN_FILE}"
    if info.type == pafs.FileType.Directory:
        entries = fs.get_file_info(pafs.FileSelector(root))
        if overwrite:
            fs.delete_dir_contents(root)
        elif fs.get_file_info(plan_path).type == pafs.FileType.File:
            with fs.open_input_stream(plan_path) as f:
                old = json.loads(f.read().decode())
            if old != plan:
                flat_old, flat_new = _flatten(old), _flatten(plan)
                changed = sorted(k for k in set(flat_old) | set(flat_new) if flat_old.get(k) != flat_new.get(k))
                raise ValueError(f"output {output!r} holds a different join (it differs in {', '.join(changed)}); "
                                 "use a new output path, or overwrite=True to start again")
        elif entries:
            raise ValueError(f"output {output!r} is a non-empty directory that is not a gpusearch join output; "
                             "use a new or empty path")
    fs.create_dir(f"{root}/{DONE_DIR}", recursive=True)
    if fs.get_file_info(plan_path).type != pafs.FileType.File:
        with fs.open_output_stream(plan_path + ".tmp") as f:
            f.write(json.dumps(plan, sort_keys=True).encode())
        fs.move(plan_path + ".tmp", plan_path)
    # Leftovers of an interrupted run: hidden temporaries, and id files whose part never landed.
    parts = {i.base_name for i in fs.get_file_info(pafs.FileSelector(root)) if i.type == pafs.FileType.File}
    for name in list(parts):
        if name.startswith(".") and name.endswith(".tmp"):
            fs.delete_file(f"{root}/{name}")
    done = []
    for i in fs.get_file_info(pafs.FileSelector(f"{root}/{DONE_DIR}")):
        if i.type != pafs.FileType.File:
            continue
        if i.base_name.startswith(".") or i.base_name not in parts:
            fs.delete_file(i.path)
            continue
        done.append(pq.read_table(i.path, filesystem=fs).column("left_id"))
    if not done:
        return None
    return pa.chunked_array(done).combine_chunks()


# ---------------------------------------------------------------------------------------------
# Driving a join


def _ensure_ray() -> None:
    import ray

    if not ray.is_initialized():
        import tempfile

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
                 _temp_dir=tempfile.mkdtemp(prefix="gsjoin-"))


def _plan_resources(workers: int | None, partitions: int | None, device: str):
    """How many partitions and join workers, and what each reserves."""
    import ray

    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    cpus = float(res.get("CPU", 1))
    on_gpu = device != "cpu" and gpus > 0
    if device.startswith("cuda") and not on_gpu:
        raise ValueError(f"device {device!r} was asked for but the Ray cluster has no GPUs")
    if partitions is not None:
        partitions = _check_count(partitions, "partitions")
    if workers is not None:
        workers = _check_count(workers, "workers")
    default = gpus if on_gpu else max(1, min(int(cpus), 8))
    partitions = partitions or workers or default
    workers = workers or partitions
    if on_gpu:
        # Partitions hold the data; join workers take a slice of the GPUs to encode text there.
        part_opts = {"num_gpus": min(1.0, 0.8 * gpus / partitions), "num_cpus": 0.25}
        worker_opts = {"num_gpus": min(1.0, 0.2 * gpus / workers), "num_cpus": 0.25}
        threads = None
    else:
        # Fractional reservations so everything schedules on a small machine; the threads carry the work.
        part_opts = {"num_cpus": 0.25}
        worker_opts = {"num_cpus": 0.25}
        threads = max(1, int(cpus) // partitions)
    return partitions, workers, part_opts, worker_opts, threads, ("cuda" if on_gpu else "cpu")


def _probe_dim(ds, spec_vector: str | None, spec_text: str | None, side: str, id_col: str) -> int | None:
    """The vectors' dimension: from the column type when it says (fixed-size lists, tensors), else the first row."""
    if spec_text:
        return None
    t = _columns(ds).get(spec_vector)
    if t is not None and pa.types.is_fixed_size_list(t):
        return t.list_size
    shape = getattr(t, "shape", None)
    if isinstance(t, pa.ExtensionType) and isinstance(shape, tuple) and len(shape) == 1 and shape[0]:
        return int(shape[0])
    rows = ds.select_columns([id_col, spec_vector]).limit(1).to_arrow_refs()
    import ray

    tables = [t for t in ray.get(rows) if t.num_rows]
    if not tables:
        raise ValueError(f"{side} is empty: nothing to join")
    return _vectors(tables[0].column(spec_vector), None, where=side, name=spec_vector).shape[1]


def _validate_left_values(ds, spec: _Spec, where: str = "left") -> int:
    """Read the left side's ids and vectors once: every row has an id and a finite vector of the right dim."""
    cols = [spec.left_id] + ([spec.text] if spec.text else [spec.vector])

    def check(batch: pa.Table) -> pa.Table:
        # A bad value comes back as data (kind, message): Ray wraps exceptions raised in tasks.
        try:
            ids = _ids(batch.column(spec.left_id), where=where, name=spec.left_id)
            if spec.text:
                _texts(batch.column(spec.text), where=where, name=spec.text)
            else:
                m = _vectors(batch.column(spec.vector), spec.dim, where=where, name=spec.vector, ids=ids)
                if spec.metric == "cosine":
                    _normalize(m, where=where, ids=ids)
        except (ValueError, TypeError) as e:
            return pa.table({"n": [0], "error": [type(e).__name__], "message": [str(e)]})
        return pa.table({"n": [len(ids)], "error": pa.array([None], pa.string()),
                         "message": pa.array([None], pa.string())})

    n = 0
    checked = ds.select_columns(cols).map_batches(check, batch_format="pyarrow", num_cpus=0.25)
    for b in checked.iter_batches(batch_format="pyarrow", batch_size=None):
        for kind, message in zip(b.column("error").to_pylist(), b.column("message").to_pylist()):
            if kind is not None:
                raise (TypeError if kind == "TypeError" else ValueError)(message)
        n += int(pc.sum(b.column("n")).as_py() or 0)
    return n


def _raise_user_error(e: BaseException) -> None:
    """Re-raise the ValueError/TypeError our checks raised inside a Ray task, without Ray's wrapping."""
    seen = set()
    stack = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if type(x) in (ValueError, TypeError):
            raise type(x)(str(x)) from None
        stack.extend([getattr(x, "cause", None), x.__cause__, x.__context__])


def _run(mode: str, left, right, *, k=0, threshold=0.0, max_per_row=None, metric="cosine", left_id="id",
         right_id="id", vector="vector", text=None, encoder=None, filter=None, exclude_self=False, output=None,
         overwrite=False, workers=None, partitions=None, device="auto", batch_size=4096, threads=None):
    metric = _check_metric(metric)
    if threads is not None:
        threads = _check_count(threads, "threads")
    if mode == "knn":
        k = _check_count(k, "k")
    else:
        threshold = _check_threshold(threshold, metric)
        max_per_row = _check_count(max_per_row, "max_per_row", allow_none=True)
    left_id = _check_column_name(left_id, "left_id")
    right_id = _check_column_name(right_id, "right_id")
    if text is not None:
        text = _check_column_name(text, "text")
        vector = None
    else:
        vector = _check_column_name(vector, "vector")
    if encoder is not None and not isinstance(encoder, (str, os.PathLike)):
        raise TypeError(f"encoder must be a sentence-transformers model path or name, got {type(encoder).__name__}")
    if filter is not None and not isinstance(filter, Mapping):
        raise TypeError(f"filter must be a dict such as {{'lang': 'en'}}, got {type(filter).__name__}")
    if not isinstance(exclude_self, bool):
        raise TypeError(f"exclude_self must be True or False, got {exclude_self!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if output is not None and not isinstance(output, (str, os.PathLike)):
        raise TypeError(f"output must be a directory path or URI, got {type(output).__name__}")
    output = None if output is None else os.fspath(output)
    device = "auto" if device is None else device
    if device not in ("auto", "cpu") and not str(device).startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")

    _ensure_ray()
    lsrc = _source(left, "left", allow_collection=False)
    rsrc = _source(right, "right", allow_collection=True)

    # Columns and dimensions, from schemas and one row per side.
    lcols = _columns(lsrc.dataset)
    _need_column(lcols, left_id, "left", "left_id")
    _need_column(lcols, text or vector, "left", "text" if text else "vector")
    schema: dict[str, str] = {}
    if rsrc.kind == "collection":
        from .collection import read_config
        from .fileio import read_json

        cfg = read_config(rsrc.path)
        if cfg["metric"] != metric:
            raise ValueError(f"right is a collection with metric {cfg['metric']!r}, but the join asks for "
                             f"{metric!r}; pass metric={cfg['metric']!r}")
        rdim = int(cfg["dim"])
        # The collection-wide fields, which the writer publishes before acknowledging a write that adds one.
        spath = os.path.join(rsrc.path, "schema.json")
        schema = dict(read_json(spath)) if os.path.isfile(spath) else {}
        n_shards = int(cfg["shards"])
    else:
        rcols = _columns(rsrc.dataset)
        _need_column(rcols, right_id, "right", "right_id")
        _need_column(rcols, text or vector, "right", "text" if text else "vector")
        schema = {c: t for c, t in ((c, _field_type(t)) for c, t in rcols.items()
                                    if c not in (right_id, vector, text)) if t is not None}
        rdim = None if text else _probe_dim(rsrc.dataset, vector, text, "right", right_id)
    if text:
        enc_dim = _Encoder.get(None if encoder is None else os.fspath(encoder), "cpu").dim
        if rsrc.kind == "collection" and rdim != enc_dim:
            raise ValueError(f"the encoder makes {enc_dim}-dim vectors but the right collection holds {rdim}-dim")
        dim = enc_dim
    else:
        ldim = _probe_dim(lsrc.dataset, vector, text, "left", left_id)
        if rdim is not None and ldim != rdim:
            raise ValueError(f"left vectors have {ldim} dims but right vectors have {rdim}; both sides must match")
        dim = ldim
    fields: set = set()
    if filter:
        compile_filter(filter, schema)  # raises on a bad filter, naming what was expected
        _filter_fields(filter, fields)
        fields &= set(schema)
    spec = _Spec(mode=mode, metric=metric, dim=dim, left_id=left_id, right_id=right_id, vector=vector, text=text,
                 k=k, threshold=threshold, max_per_row=max_per_row, exclude_self=exclude_self,
                 filter=dict(filter) if filter else None, filter_fields=sorted(fields), schema=schema,
                 encoder=None if encoder is None else os.fspath(encoder))
    n_left = _validate_left_values(lsrc.dataset, spec)

    # The right side, loaded into the partitions (its values are checked as it loads).
    import ray

    n_part, n_work, part_opts, worker_opts, auto_threads, dev = _plan_resources(workers, partitions, str(device))
    threads = threads or auto_threads
    if rsrc.kind == "collection":
        n_part = min(n_part, n_shards)
    actor = ray.remote(Partition)
    parts = [actor.options(**part_opts).remote(i, spec, device=dev, threads=threads) for i in range(n_part)]
    t0 = time.perf_counter()
    if rsrc.kind == "collection":
        groups = [list(range(n_shards))[i::n_part] for i in range(n_part)]
        loads = [p.load_collection.remote(rsrc.path, g) for p, g in zip(parts, groups)]
    else:
        rds = rsrc.dataset.select_columns(sorted({right_id, text or vector, *spec.filter_fields}))
        splits = rds.streaming_split(n_part, equal=False)
        loads = [p.load_split.remote(s) for p, s in zip(parts, splits)]
    try:
        n_right = sum(ray.get(loads))
    except Exception as e:
        for p in parts:
            ray.kill(p)
        _raise_user_error(e)
        raise
    log.info("join: %d right rows in %d partitions in %.1f s", n_right, n_part, time.perf_counter() - t0)

    done = None
    if output is not None:
        plan = {"spec": spec.describe(), "left": lsrc.describe, "right": rsrc.describe}
        plan = json.loads(json.dumps(plan, default=str))
        try:
            done = _prepare_output(output, plan, overwrite=overwrite)
        except Exception:
            for p in parts:
                ray.kill(p)
            raise

    done_ref = ray.put(done if done is not None else pa.array([], pa.string()))
    lds = lsrc.dataset.select_columns(sorted({left_id, text or vector}))
    joined = lds.map_batches(
        _JoinWorker, batch_size=batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=n_work),
        fn_constructor_kwargs={"partitions": parts, "spec": spec, "device": dev, "output": output,
                               "done_ref": done_ref},
        **worker_opts)
    if output is None:
        return joined
    todo = n_left - (0 if done is None else len(done))
    t1 = time.perf_counter()
    rows = pairs = 0
    with progress(max(todo, 0), f"{mode} join", unit="row") as bar:
        for b in joined.iter_batches(batch_format="pyarrow", batch_size=None):
            n = int(pc.sum(b.column("rows")).as_py() or 0)
            rows += n
            pairs += int(pc.sum(b.column("pairs")).as_py() or 0)
            bar.update(n)
    t2 = time.perf_counter()
    for p in parts:
        ray.kill(p)
    _write_stats(output, {"left_rows": n_left, "right_rows": n_right, "rows_this_run": rows,
                          "pairs_this_run": pairs, "resumed_rows": 0 if done is None else len(done),
                          "partitions": n_part, "workers": n_work, "threads_per_partition": threads,
                          "device": dev, "load_s": round(t1 - t0, 3), "join_s": round(t2 - t1, 3)})
    return _read_parquet(output if "://" in output else os.path.abspath(output))


def knn_join(left, right, *, k: int, metric: str = "cosine", left_id: str = "id", right_id: str = "id",
             vector: str = "vector", text: str | None = None, encoder=None, filter: Mapping | None = None,
             exclude_self: bool = False, output=None, overwrite: bool = False, workers: int | None = None,
             partitions: int | None = None, device: str = "auto", batch_size: int = 4096,
             threads: int | None = None):
    """The ``k`` nearest right rows of every left row.

    Parameters
    ----------
    left : ray.data.Dataset, str or list of str
        A dataset, or Parquet files/directories (local paths or pyarrow filesystem URIs).
    right : ray.data.Dataset, str or list of str
        As ``left``, or the directory of a gpusearch collection.
    k : int
        Neighbours per left row, 1..1000.
    metric : {"cosine", "ip", "l2"}
        Must be the collection's metric when ``right`` is a collection.
    left_id, right_id : str
        The id columns (strings or integers).
    vector : str
        The vector column on both sides (fixed-size or variable lists of floats, or a Ray tensor column).
    text : str, optional
        Join on a text column instead, encoded with ``encoder`` (default all-MiniLM-L6-v2).
    filter : dict, optional
        A Pinecone-style filter on the right side's other columns (or the collection's metadata).
    exclude_self : bool
        Leave out pairs whose right id equals the left id (self-joins).
    output : str, optional
        A directory (or URI) to write the result to as Parquet; a rerun into it resumes.
    overwrite : bool
        Start ``output`` afresh instead of resuming.
    workers, partitions : int, optional
        Join workers and right partitions (default: one per GPU, or per CPU core up to 8).
    device : {"auto", "cpu", "cuda"}
    batch_size : int
        Left rows per batch.
    threads : int, optional
        BLAS/OpenMP threads per partition on the CPU (default: the cluster's CPUs / partitions).

    Returns
    -------
    ray.data.Dataset
        Columns ``left_id, right_id, score, rank`` (rank 0 is the best). Lazy when
        ``output`` is None; otherwise read back from ``output``.
    """
    return _run("knn", left, right, k=k, metric=metric, left_id=left_id, right_id=right_id, vector=vector,
                text=text, encoder=encoder, filter=filter, exclude_self=exclude_self, output=output,
                overwrite=overwrite, workers=workers, partitions=partitions, device=device, batch_size=batch_size,
                threads=threads)


def range_join(left, right, *, threshold: float, max_per_row: int | None = None, metric: str = "cosine",
               left_id: str = "id", right_id: str = "id", vector: str = "vector", text: str | None = None,
               encoder=None, filter: Mapping | None = None, exclude_self: bool = False, output=None,
               overwrite: bool = False, workers: int | None = None, partitions: int | None = None,
               device: str = "auto", batch_size: int = 4096, threads: int | None = None):
    """Every (left, right) pair at or above a similarity (cosine, ip) or within a squared distance (l2).

    ``max_per_row`` keeps only each left row's best that many pairs. Other
    parameters and the result are as for :func:`knn_join`; ``rank`` numbers
    each left row's pairs best first.
    """
    return _run("range", left, right, threshold=threshold, max_per_row=max_per_row, metric=metric,
                left_id=left_id, right_id=right_id, vector=vector, text=text, encoder=encoder, filter=filter,
                exclude_self=exclude_self, output=output, overwrite=overwrite, workers=workers,
                partitions=partitions, device=device, batch_size=batch_size, threads=threads)


def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Label each of ``n`` nodes with the smallest node number of its component, given edges ``a[i]-b[i]``.

    >>> connected_components(5, np.array([0, 3]), np.array([1, 4])).tolist()
    [0, 0, 2, 3, 3]
    """
    labels = np.arange(n, dtype=np.int64)
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    while True:
        m = np.minimum(labels[a], labels[b])
        new = labels.copy()
        np.minimum.at(new, a, m)
        np.minimum.at(new, b, m)
        while True:  # pointer jumping: every node to its label's label
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, labels):
            return labels
        labels = new


def dedup(table, *, threshold: float, metric: str = "cosine", id: str = "id", vector: str = "vector",
          text: str | None = None, encoder=None, output=None, overwrite: bool = False, workers: int | None = None,
          partitions: int | None = None, device: str = "auto", batch_size: int = 4096):
    """Cluster near-duplicates: a self range join, then connected components.

    Two rows are linked when their similarity is at least ``threshold``
    (cosine, ip) or their squared distance at most ``threshold`` (l2); a
    cluster is a connected group of linked rows.

    Returns
    -------
    ray.data.Dataset
        One row per input row: ``id``, ``cluster`` (the smallest id in its
        cluster) and ``cluster_size``. Written to ``output`` as Parquet when given
        (the pairs of the range join go to ``output/pairs``, resumable).
    """
    import ray

    _id = _check_column_name(id, "id")
    pairs_out = None if output is None else os.path.join(os.fspath(output), "pairs")
    pairs = range_join(table, table, threshold=threshold, metric=metric, left_id=_id, right_id=_id, vector=vector,
                       text=text, encoder=encoder, exclude_self=True, output=pairs_out, overwrite=overwrite,
                       workers=workers, partitions=partitions, device=device, batch_size=batch_size)
    edges = pairs.select_columns(["left_id", "right_id"]).to_arrow_refs()
    edges = [t for t in ray.get(edges) if t.num_rows]
    src = _source(table, "table", allow_collection=False)
    ids = pa.chunked_array([_ids(t.column(_id), where="table", name=_id)
                            for t in ray.get(src.dataset.select_columns([_id]).to_arrow_refs()) if t.num_rows])
    ids = _as_array(ids)
    order = np.asarray(pc.sort_indices(ids))
    sorted_ids = ids.take(pa.array(order))
    uniq = sorted_ids.to_numpy(zero_copy_only=False)
    if len(uniq) > 1 and (uniq[1:] == uniq[:-1]).any():
        dup = uniq[1:][uniq[1:] == uniq[:-1]][0]
        raise ValueError(f"table has id {dup!r} more than once; dedup needs unique ids")
    if edges:
        e = pa.concat_tables(edges)
        a = np.searchsorted(uniq, e.column("left_id").to_numpy(zero_copy_only=False))
        b = np.searchsorted(uniq, e.column("right_id").to_numpy(zero_copy_only=False))
    else:
        a = b = np.empty(0, np.int64)
    labels = connected_components(len(uniq), a, b)
    sizes = np.bincount(labels, minlength=len(uniq))
    result = pa.table({"id": sorted_ids, "cluster": sorted_ids.take(pa.array(labels)),
                       "cluster_size": pa.array(sizes[labels], pa.int64())})
    if output is None:
        return ray.data.from_arrow(result)
    import pyarrow.parquet as pq

    fs, root = _fs(os.fspath(output))
    fs.create_dir(f"{root}/clusters", recursive=True)
    pq.write_table(result, f"{root}/clusters/.clusters.parquet.tmp", filesystem=fs)
    fs.move(f"{root}/clusters/.clusters.parquet.tmp", f"{root}/clusters/clusters.parquet")
    return _read_parquet(f"{output}/clusters" if "://" in os.fspath(output)
                         else os.path.join(os.path.abspath(output), "clusters"))
