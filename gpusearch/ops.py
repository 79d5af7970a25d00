"""The records a shard's WAL holds: one upsert or delete batch each, encoded as an Arrow IPC stream.

Layout of a payload: ``b"GSop"``, u8 format version, u8 kind (1 upsert,
2 delete), u16 number of shards the batch spans, then an Arrow IPC stream of
one table: ``id`` (string), and for upserts ``vector``
(fixed_size_list<float32>[dim]), for a cosine collection (format 2) ``norm``
(float32: the length each vector had when it was sent; ``vector`` holds it unit
length, and ``vector * norm`` gives back what was sent), plus the batch's
metadata columns as ``meta.<field>``. Format 3 adds ``sparse_indices``
(list<uint32>) and ``sparse_values`` (list<float32>), null for a record without a
sparse vector, and leaves ``vector`` out for a sparse-only collection (dim 0).
Format 1 records (no ``norm``) decode with ``norms=None``, records without sparse
columns with ``sparse=None``. The WAL adds its own framing and CRC around this.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

__all__ = ["Op", "encode_upsert", "encode_delete", "decode", "UPSERT", "DELETE"]

UPSERT, DELETE = 1, 2
_MAGIC, _VERSION, _VERSION_NORMS, _VERSION_SPARSE = b"GSop", 1, 2, 3
_HEAD = struct.Struct("<4sBBH")
_META = "meta."


@dataclass
class Op:
    kind: int
    participants: int
    ids: list[str]
    vectors: np.ndarray | None = None
    metadata: pa.Table | None = None
    norms: np.ndarray | None = None  # float32 (n,): cosine collections' sent lengths; None: not recorded
    sparse: tuple[pa.Array, pa.Array] | None = None  # list<uint32>, list<float32> columns; None: no sparse part


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def encode_upsert(ids: list[str], vectors: np.ndarray, metadata: pa.Table, participants: int,
                  norms: np.ndarray | None = None, sparse: tuple[pa.Array, pa.Array] | None = None) -> bytes:
    n, dim = vectors.shape
    cols = {"id": pa.array(ids, pa.string())}
    if dim:
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
        cols["vector"] = pa.FixedSizeListArray.from_arrays(flat, dim)
    if norms is not None:
        cols["norm"] = pa.array(np.asarray(norms, dtype=np.float32).reshape(-1))
    if sparse is not None:
        cols["sparse_indices"], cols["sparse_values"] = sparse
    for name in metadata.column_names:
        cols[_META + name] = metadata.column(name)
    if sparse is not None or not dim:
        version = _VERSION_SPARSE
    else:
        version = _VERSION if norms is None else _VERSION_NORMS
    return _HEAD.pack(_MAGIC, version, UPSERT, participants) + _ipc(pa.table(cols))


def encode_delete(ids: list[str], participants: int) -> bytes:
    return _HEAD.pack(_MAGIC, _VERSION, DELETE, participants) + _ipc(pa.table({"id": pa.array(ids, pa.string())}))


def decode(payload: bytes) -> Op:
    magic, version, kind, participants = _HEAD.unpack_from(payload)
    if magic != _MAGIC or version not in (_VERSION, _VERSION_NORMS, _VERSION_SPARSE) or kind not in (UPSERT, DELETE):
        raise ValueError(f"WAL record is not a gpusearch op (magic {magic!r}, version {version}, kind {kind})")
    table = pa.ipc.open_stream(pa.py_buffer(payload)[_HEAD.size :]).read_all()
    ids = table.column("id").to_pylist()
    if kind == DELETE:
        return Op(DELETE, participants, ids)
    if "vector" in table.column_names:
        vec = table.column("vector").combine_chunks()
        vectors = vec.values.to_numpy(zero_copy_only=False).reshape(-1, vec.type.list_size)
    else:  # a sparse-only collection
        vectors = np.zeros((len(ids), 0), np.float32)
    norms = None
    if "norm" in table.column_names:
        norms = table.column("norm").combine_chunks().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    sparse = None
    if "sparse_indices" in table.column_names:
        sparse = (table.column("sparse_indices").combine_chunks(), table.column("sparse_values").combine_chunks())
    meta_names = [c for c in table.column_names if c.startswith(_META)]
    metadata = table.select(meta_names).rename_columns([c[len(_META) :] for c in meta_names])
    return Op(UPSERT, participants, ids, vectors, metadata, norms, sparse)
