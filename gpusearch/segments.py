"""Immutable snapshot segments: ids, vectors and metadata of one shard in an Arrow IPC file.

A segment is one Arrow IPC *file* (the random-access format with a footer, not
the stream format) holding a single record batch with these columns:

``id``
    ``string``, not null (ids may repeat: a snapshot keeps overwritten rows until compaction).
``vector``
    ``fixed_size_list<float32 or float16>[dim]``, not null. The list size is the
    dimension, so it round-trips even with no rows.
``norm`` (format 2 only, optional)
    ``float32``, not null: for a cosine collection, the length each vector had when
    it was sent (``vector`` holds it unit length; ``vector * norm`` is what was sent).
``sparse_indices``, ``sparse_values`` (format 3 only, optional)
    ``list<uint32>`` and ``list<float32>``: each row's sparse vector, null for a row
    without one. In format 3 the ``vector`` column is left out for a sparse-only
    collection (its rows have no dense part: ``vectors`` reads back as ``(n, 0)``).
``meta.<name>``
    One column per metadata field, any Arrow type, nulls allowed. The ``meta.``
    prefix keeps a field called ``id`` or ``vector`` from clashing.

The schema metadata carries ``gpusearch.format = "gpusearch-segment"``,
``gpusearch.version`` (an integer: 1, 2 when the file has a ``norm`` column, 3 when it has sparse columns or no ``vector``) and ``gpusearch.extra`` (a JSON
object of strings chosen by the caller, e.g. the WAL seq a snapshot covers).

Files are written atomically (temp file, fsync, rename, directory fsync; see
:mod:`gpusearch.fileio`) and read through a memory map, so the vectors come back
as a read-only NumPy view of the mapped file: no copy, and the pages are loaded
on first touch. Arrow IPC has no checksum over the data: truncation and damaged
structure are detected, flipped bits inside vector or metadata values are not.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpusearch.fileio import atomic_write

__all__ = ["FORMAT_VERSION", "META_PREFIX", "Segment", "read_segment", "write_segment"]

logger = logging.getLogger(__name__)

FORMAT_MARKER = b"gpusearch-segment"
FORMAT_VERSION = 3  # the newest this release reads; a file is written in the oldest format that holds it
NORM_COLUMN = "norm"
SPARSE_COLUMNS = ("sparse_indices", "sparse_values")
KEY_FORMAT = b"gpusearch.format"
KEY_VERSION = b"gpusearch.version"
KEY_EXTRA = b"gpusearch.extra"
ID_COLUMN = "id"
VECTOR_COLUMN = "vector"
META_PREFIX = "meta."

_VECTOR_TYPES = {np.dtype(np.float32): pa.float32(), np.dtype(np.float16): pa.float16()}


@dataclass
class Segment:
    """The contents of one segment file.

    Attributes
    ----------
    ids : pyarrow.StringArray
        ``n`` ids, in row order (``ids.to_pylist()`` gives Python strings).
    vectors : numpy.ndarray
        ``(n, dim)`` float32 or float16. Read back with ``memory_map=True`` it is
        a read-only view of the mapped file; copy it before writing into it.
    metadata : pyarrow.Table
        ``n`` rows, one column per metadata field (names without the ``meta.``
        prefix); may have no columns.
    extra : dict of str to str
        The caller's annotations given to :func:`write_segment`.
    norms : numpy.ndarray or None
        ``(n,)`` float32 lengths the vectors were sent with (cosine collections), or
        ``None`` when the file records none.
    sparse : (pyarrow.ListArray, pyarrow.ListArray) or None
        The rows' sparse vectors (indices, values), or ``None`` when the file has none.
    """

    ids: pa.StringArray
    vectors: np.ndarray
    metadata: pa.Table
    extra: dict[str, str] = field(default_factory=dict)
    norms: np.ndarray | None = None
    sparse: tuple | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self.vectors.shape[1]


def _check_vectors(vectors) -> np.ndarray:
    if not isinstance(vectors, np.ndarray):
        raise TypeError(f"vectors must be a numpy.ndarray, got {type(vectors).__name__}")
    if vectors.dtype not in _VECTOR_TYPES:
        raise TypeError(f"vectors must have dtype float32 or float16, got {vectors.dtype}")
    if vectors.ndim != 2:
        raise ValueError(f"vectors must have shape (n, dim), got {vectors.shape}")
    return np.ascontiguousarray(vectors)


def _check_ids(ids, n: int) -> pa.StringArray:
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks != 1 else ids.chunk(0)
    if isinstance(ids, pa.Array):
        if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
            raise TypeError(f"ids must be strings, got an Arrow array of {ids.type}")
        arr = ids.cast(pa.string())
    else:
        if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)):
            raise TypeError(f"ids must be a sequence of str, got {type(ids).__name__}")
        try:
            arr = pa.array(ids, type=pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            bad = next((x for x in ids if not isinstance(x, str)), None)
            raise TypeError(f"ids must be str, got {type(bad).__name__} ({bad!r})") from None
    if len(arr) != n:
        raise ValueError(f"ids must have one entry per vector ({n}), got {len(arr)}")
    if arr.null_count:
        raise ValueError(f"ids must not be null, got {arr.null_count} nulls")
    # Ids may repeat: a shard's snapshot keeps overwritten (dead) rows until compaction,
    # and its alive bitmap says which copy counts.
    return arr


def _check_metadata(metadata, n: int) -> pa.Table:
    if metadata is None:
        return pa.table({})
    if isinstance(metadata, pa.RecordBatch):
        metadata = pa.Table.from_batches([metadata])
    if not isinstance(metadata, pa.Table):
        raise TypeError(f"metadata must be a pyarrow.Table or None, got {type(metadata).__name__}")
    if metadata.num_columns and metadata.num_rows != n:
        raise ValueError(f"metadata must have one row per vector ({n}), got {metadata.num_rows}")
    names = metadata.column_names
    if len(set(names)) != len(names):
        raise ValueError(f"metadata column names must be unique, got {names}")
    return metadata


def _check_extra(extra) -> dict[str, str]:
    if extra is None:
        return {}
    if not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict of str to str, got {type(extra).__name__}")
    for key, value in extra.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                f"extra must map str to str, got {type(key).__name__} -> {type(value).__name__} for {key!r}"
            )
    return dict(extra)


def _single_chunk(column: pa.ChunkedArray) -> pa.Array:
    if column.num_chunks == 1:
        return column.chunk(0)
    if column.num_chunks == 0:
        return pa.array([], type=column.type)
    return column.combine_chunks()


def write_segment(
    path: str | os.PathLike,
    ids,
    vectors: np.ndarray,
    metadata: pa.Table | None = None,
    *,
    extra: dict[str, str] | None = None,
    norms: np.ndarray | None = None,
    sparse: tuple | None = None,
) -> int:
    """Write a segment file atomically and durably.

    Parameters
    ----------
    path : str or os.PathLike
        Target file (conventionally ``*.arrow``); its directory must exist. An
        existing file is replaced atomically.
    ids : sequence of str, numpy array of str, or pyarrow string array
        One non-null id per vector.
    vectors : numpy.ndarray
        ``(n, dim)`` float32 or float16, ``dim >= 1``. Written without a copy
        when C-contiguous.
    metadata : pyarrow.Table, optional
        ``n`` rows, any column names and Arrow types (nulls allowed). ``None``
        or a table with no columns stores no metadata.
    extra : dict of str to str, optional
        Annotations kept in the schema metadata and returned as ``Segment.extra``.
    norms : numpy.ndarray, optional
        ``(n,)`` finite float32 row lengths (see the module docstring); the file is
        then format 2.
    sparse : (pyarrow list<uint32> array, pyarrow list<float32> array), optional
        The rows' sparse vectors (nulls for rows without one); the file is then format 3,
        as it is when ``vectors`` has no columns (a sparse-only collection).

    Returns
    -------
    int
        Size of the written file in bytes.

    Raises
    ------
    TypeError
        If ``vectors`` is not a float32/float16 array, ``ids`` are not strings,
        ``metadata`` is not a table or ``extra`` is not ``dict[str, str]``.
    ValueError
        If shapes or row counts disagree, ids repeat or are null, or metadata
        column names repeat.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np, pyarrow as pa
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = pathlib.Path(d) / "seg.arrow"
    ...     _ = write_segment(p, ["a", "b"], np.eye(2, 3, dtype=np.float32),
    ...                       pa.table({"year": [2020, None]}), extra={"seq": "7"})
    ...     seg = read_segment(p)
    ...     seg.ids.to_pylist(), seg.vectors.shape, seg.metadata.column_names, seg.extra
    (['a', 'b'], (2, 3), ['year'], {'seq': '7'})
    """
    vectors = _check_vectors(vectors)
    n, dim = vectors.shape
    id_array = _check_ids(ids, n)
    metadata = _check_metadata(metadata, n)
    extra = _check_extra(extra)
    if norms is not None:
        norms = np.ascontiguousarray(norms, dtype=np.float32).reshape(-1)
        if norms.shape[0] != n:
            raise ValueError(f"norms must hold one value per vector ({n}), got {norms.shape[0]}")

    fields = [pa.field(ID_COLUMN, pa.string(), nullable=False)]
    arrays = [id_array]
    if dim:
        value_type = _VECTOR_TYPES[vectors.dtype]
        vector_type = pa.list_(pa.field("item", value_type, nullable=False), dim)
        vector_array = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=value_type),
                                                         type=vector_type)
        fields.append(pa.field(VECTOR_COLUMN, vector_type, nullable=False))
        arrays.append(vector_array)
    if norms is not None:
        fields.append(pa.field(NORM_COLUMN, pa.float32(), nullable=False))
        arrays.append(pa.array(norms, type=pa.float32()))
    if sparse is not None:
        for name, column, item in zip(SPARSE_COLUMNS, sparse, (pa.uint32(), pa.float32())):
            if len(column) != n or column.type != pa.list_(item):
                raise ValueError(f"sparse column {name} must be {n} rows of {pa.list_(item)}, got {len(column)} "
                                 f"of {column.type}")
            fields.append(pa.field(name, column.type))
            arrays.append(column)
    version = 3 if sparse is not None or not dim else 2 if norms is not None else 1
    for name, column in zip(metadata.column_names, metadata.columns):
        fields.append(pa.field(META_PREFIX + name, column.type))
        arrays.append(_single_chunk(column))
    schema = pa.schema(
        fields,
        metadata={
            KEY_FORMAT: FORMAT_MARKER,
            KEY_VERSION: str(version).encode(),
            KEY_EXTRA: json.dumps(extra, sort_keys=True).encode(),
        },
    )
    batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
    with atomic_write(path) as f:
        sink = pa.PythonFile(f, mode="w")
        with pa.ipc.new_file(sink, schema) as writer:
            writer.write_batch(batch)
        size = f.tell()
    logger.debug("wrote segment %s: %d rows, dim %d, %d bytes", path, n, dim, size)
    return size


def _parse_schema(schema: pa.Schema, path: Path) -> tuple[dict[str, str], list[str], bool, bool, bool]:
    """Check the schema of a segment; return its extra, its metadata column names and whether it has
    dense vectors, norms and sparse vectors."""
    meta = schema.metadata or {}
    if meta.get(KEY_FORMAT) != FORMAT_MARKER:
        raise ValueError(f"{path} is not a gpusearch segment (no {KEY_FORMAT.decode()} marker in its schema)")
    try:
        version = int(meta.get(KEY_VERSION, b""))
    except ValueError:
        raise ValueError(f"{path} has an unreadable segment version {meta.get(KEY_VERSION)!r}") from None
    if not 1 <= version <= FORMAT_VERSION:
        raise ValueError(
            f"{path} is segment format version {version}; this gpusearch reads versions 1 to {FORMAT_VERSION} "
            "(upgrade gpusearch to read it)"
        )
    try:
        extra = json.loads(meta.get(KEY_EXTRA, b"{}"))
    except ValueError:
        extra = None
    if not isinstance(extra, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise ValueError(f"{path} has corrupt segment annotations ({KEY_EXTRA.decode()})")
    names = schema.names
    has_vectors = len(names) > 1 and names[1] == VECTOR_COLUMN
    if not names or names[0] != ID_COLUMN or not has_vectors and version < 3:
        raise ValueError(f"{path} must start with columns {[ID_COLUMN, VECTOR_COLUMN]}, got {names[:2]}")
    if schema.field(ID_COLUMN).type != pa.string():
        raise ValueError(f"{path}: column {ID_COLUMN!r} must be string, got {schema.field(ID_COLUMN).type}")
    vector_type = schema.field(VECTOR_COLUMN).type if has_vectors else None
    if has_vectors and not (
        pa.types.is_fixed_size_list(vector_type)
        and vector_type.value_type in (pa.float32(), pa.float16())
        and vector_type.list_size >= 1
    ):
        raise ValueError(
            f"{path}: column {VECTOR_COLUMN!r} must be fixed_size_list<float32 or float16>, got {vector_type}"
        )
    at = 2 if has_vectors else 1
    has_norms = version >= 2 and len(names) > at and names[at] == NORM_COLUMN
    if has_norms and schema.field(NORM_COLUMN).type != pa.float32():
        raise ValueError(f"{path}: column {NORM_COLUMN!r} must be float32, got {schema.field(NORM_COLUMN).type}")
    at += has_norms
    has_sparse = version >= 3 and tuple(names[at : at + 2]) == SPARSE_COLUMNS
    if has_sparse:
        for name, item in zip(SPARSE_COLUMNS, (pa.uint32(), pa.float32())):
            if schema.field(name).type != pa.list_(item):
                raise ValueError(f"{path}: column {name!r} must be {pa.list_(item)}, got {schema.field(name).type}")
        at += 2
    meta_names = names[at:]
    bad = [name for name in meta_names if not name.startswith(META_PREFIX)]
    if bad:
        raise ValueError(f"{path}: metadata columns must start with {META_PREFIX!r}, got {bad}")
    return extra, meta_names, has_vectors, has_norms, has_sparse


def _vectors_of(column: pa.ChunkedArray, path: Path) -> np.ndarray:
    vector_type = column.type
    dim = vector_type.list_size
    if column.null_count:
        raise ValueError(f"{path}: column {VECTOR_COLUMN!r} has {column.null_count} nulls")
    if column.num_chunks > 1:
        logger.debug("%s: vectors in %d chunks; combining them (a copy)", path, column.num_chunks)
    array = _single_chunk(column)
    values = array.flatten()  # honours the array's offset; a slice, not a copy
    if values.null_count:
        raise ValueError(f"{path}: column {VECTOR_COLUMN!r} has null values inside vectors")
    return values.to_numpy(zero_copy_only=True).reshape(len(array), dim)


def read_segment(path: str | os.PathLike, *, memory_map: bool = True) -> Segment:
    """Read a segment file written by :func:`write_segment`.

    Parameters
    ----------
    path : str or os.PathLike
        The segment file.
    memory_map : bool, default True
        Map the file instead of reading it: vectors, ids and metadata are views
        of the mapped pages (nothing is copied; pages load on first touch). With
        ``False`` the file is read into memory once, still without a further copy.

    Returns
    -------
    Segment
        Vectors are read-only in both modes.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If the file is not a gpusearch segment, has a newer format version, or
        is truncated or structurally corrupt; the message names the path.
    """
    path = Path(path)
    try:
        source = pa.memory_map(str(path), "r") if memory_map else pa.OSFile(str(path), "rb")
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{path} cannot be opened as a gpusearch segment: {exc}") from None
    try:
        reader = pa.ipc.open_file(source)
        extra, meta_names, has_vectors, has_norms, has_sparse = _parse_schema(reader.schema, path)
        table = reader.read_all()
        table.validate(full=True)
        if has_vectors:
            vectors = _vectors_of(table.column(VECTOR_COLUMN), path)
        else:
            vectors = np.zeros((table.num_rows, 0), np.float32)
        ids = _single_chunk(table.column(ID_COLUMN))
        if ids.null_count:
            raise ValueError(f"{path}: column {ID_COLUMN!r} has {ids.null_count} nulls")
        norms = None
        if has_norms:
            col = _single_chunk(table.column(NORM_COLUMN))
            if col.null_count:
                raise ValueError(f"{path}: column {NORM_COLUMN!r} has {col.null_count} nulls")
            norms = col.to_numpy(zero_copy_only=True)
        sparse = tuple(_single_chunk(table.column(name)) for name in SPARSE_COLUMNS) if has_sparse else None
        metadata = table.select(meta_names).rename_columns([name[len(META_PREFIX):] for name in meta_names])
    except ValueError as exc:  # includes pyarrow's ArrowInvalid
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path} is not a readable gpusearch segment (truncated or corrupt?): {exc}") from None
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{path} is not a readable gpusearch segment (truncated or corrupt?): {exc}") from None
    finally:
        if not memory_map:
            source.close()  # read buffers own their memory; a map must stay open for the views
    return Segment(ids=ids, vectors=vectors, metadata=metadata, extra=extra, norms=norms, sparse=sparse)
