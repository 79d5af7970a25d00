"""The join's inputs: where the two sides come from, and their Arrow columns as checked arrays.

A side is a Ray ``Dataset``, Parquet paths or URIs, or (the right side only) a
collection directory, which the partitions read through the engine's
:class:`gpusearch.replica.ShardFollower`. Every check names the side, the
column and, where it can, the row's id (a row number inside a batch means
nothing to a user).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpusearch import metadata as md
from gpusearch.arrays import prepare_vectors
from gpusearch.collection import read_config
from gpusearch.errors import InvalidArgumentError
from gpusearch.sparse import SparseVector, check_sparse

__all__ = ["Source", "source", "read_parquet", "columns", "need_column", "as_array", "vectors", "prepare",
           "row_name", "ids", "texts", "id_type", "filter_table", "field_type", "filter_fields", "check_sparse_type",
           "sparse_vectors"]


@dataclass
class Source:
    kind: str  # "dataset" or "collection"
    dataset: Any = None
    path: str | None = None
    describe: Any = None
    config: dict | None = None  # a collection's collection.json, as the engine reads it


def _collection_config(path: str) -> dict | None:
    """The engine's reading of a collection's config when ``path`` is a collection directory, else None."""
    if "://" in path or not os.path.isfile(os.path.join(path, "collection.json")):
        return None
    return read_config(path)  # refuses a newer format, naming it


def _check_exists(path: str, name: str) -> None:
    import pyarrow.fs as pafs

    try:
        fs, inner = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), os.path.abspath(path))
        info = fs.get_file_info(inner)
    except (pa.ArrowInvalid, OSError, ValueError) as e:
        raise ValueError(f"{name}: cannot open {path!r}: {e}") from None
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{name}: {path!r} does not exist (expected a Parquet file or directory)")


def source(x: Any, name: str, *, allow_collection: bool) -> Source:
    import ray.data

    if isinstance(x, ray.data.Dataset):
        return Source("dataset", dataset=x, describe="a ray.data.Dataset")
    if isinstance(x, (str, os.PathLike)):
        paths = [os.fspath(x)]
    elif isinstance(x, (list, tuple)) and x and all(isinstance(p, (str, os.PathLike)) for p in x):
        paths = [os.fspath(p) for p in x]
    else:
        extra = ", or a collection directory" if allow_collection else ""
        raise TypeError(f"{name} must be a ray.data.Dataset, a Parquet path or URI, or a list of them{extra}; "
                        f"got {type(x).__name__}")
    config = _collection_config(paths[0]) if len(paths) == 1 else None
    if config is not None:
        if not allow_collection:
            raise ValueError(f"{name} is a gpusearch collection ({paths[0]}); only the right side may be a "
                             "collection: export the left side to Parquet or pass a ray.data.Dataset")
        path = os.path.abspath(paths[0])
        return Source("collection", path=path, describe=path, config=config)
    for p in paths:
        _check_exists(p, name)
    local = [p if "://" in p else os.path.abspath(p) for p in paths]
    return Source("dataset", dataset=read_parquet(local), describe=local)


def read_parquet(paths):
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


def columns(ds) -> dict[str, pa.DataType]:
    schema = ds.schema()
    if schema is None:
        raise ValueError("the dataset has no schema (is it empty?)")
    base = getattr(schema, "base_schema", schema)
    if isinstance(base, pa.Schema):
        return {f.name: f.type for f in base}
    return dict(zip(schema.names, schema.types))


def need_column(cols: Mapping, col: str, side: str, arg: str) -> None:
    if col not in cols:
        raise ValueError(f"{side} has no column {col!r} (its columns: {', '.join(cols) or 'none'}); "
                         f"pass {arg}= to name the right one")


# ---------------------------------------------------------------------------------------------
# Arrow columns to arrays


def as_array(col) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        if col.num_chunks == 0:
            return pa.array([], type=col.type)
        return col.combine_chunks() if col.num_chunks > 1 else col.chunk(0)
    return col


def vectors(col, dim: int | None, *, where: str, name: str, ids=None) -> np.ndarray:
    """An Arrow column of per-row vectors as an (n, dim) float32 matrix, every value finite."""
    arr = as_array(col)
    t = arr.type
    n = len(arr)
    if arr.null_count:
        row = int(np.flatnonzero(~np.asarray(arr.is_valid()))[0])
        raise ValueError(f"{where}: {row_name(ids, row)} has no {name!r} (null)")
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
                raise ValueError(f"{where}: {row_name(ids, r)} has a {name!r} of {int(lengths[r])} values; "
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
        raise ValueError(f"{where}: {row_name(ids, r)} has NaN or infinity in {name!r}")
    return m


_ENGINE_ROW = re.compile(r"vectors row (\d+) (.*)", re.S)


def prepare(m: np.ndarray, *, dim: int, metric: str, where: str, ids=None, device: str = "cpu"):
    """``m`` as the engine's searches take it, through :func:`gpusearch.arrays.prepare_vectors` (unit
    length for cosine; all-zero rows and rows too long for a finite score refused), its errors naming
    the row by its id: ``left: the row with id 'x4' is all zeros; ...``."""
    try:
        return prepare_vectors(m, name="vectors", dim=dim, metric=metric, device=device)
    except InvalidArgumentError as e:
        hit = _ENGINE_ROW.fullmatch(str(e))
        if hit is None:
            raise
        raise type(e)(f"{where}: {row_name(ids, int(hit.group(1)))} {hit.group(2)}", field=e.field) from None


def check_sparse_type(t: pa.DataType, side: str, name: str) -> None:
    """A sparse column holds, per row, Pinecone's sparse values: a struct of ``indices`` (integers) and
    ``values`` (floats), as lists; null where a row has none."""
    ok = pa.types.is_struct(t) and {"indices", "values"} <= {f.name for f in t}
    if ok:
        ok = all(pa.types.is_list(t.field(f).type) or pa.types.is_large_list(t.field(f).type)
                 for f in ("indices", "values"))
    if not ok:
        raise TypeError(f"{side} column {name!r} holds {t}; expected sparse vectors as a struct of lists "
                        f"{{indices: list<uint32>, values: list<float32>}} (Pinecone's sparse values), null where "
                        f"a row has none")


def sparse_vectors(col, *, where: str, name: str, ids=None) -> list[SparseVector | None]:
    """A sparse column's rows checked as the engine checks a record's sparse values (``None``: none)."""
    arr = as_array(col)
    check_sparse_type(arr.type, where, name)
    out: list[SparseVector | None] = []
    for row, item in enumerate(arr.to_pylist()):
        if item is None or item.get("indices") is None and item.get("values") is None:
            out.append(None)
            continue
        try:
            v = check_sparse({"indices": item.get("indices") or [], "values": item.get("values") or []}, name)
        except InvalidArgumentError as e:  # InvalidTypeError too
            raise type(e)(f"{where}: {row_name(ids, row)}: {e}", field=e.field) from None
        out.append(v if len(v) else None)
    return out


def row_name(ids, row: int) -> str:
    """'the row with id 'x'' when the ids are known, else 'row N'."""
    if ids is not None:
        try:
            return f"the row with id {as_array(ids)[row].as_py()!r}"
        except Exception:  # the id is a courtesy; never let it hide the real error
            pass
    return f"row {row}"


def ids(col, *, where: str, name: str) -> pa.Array:
    """An id column as strings or int64, none missing."""
    arr = as_array(col)
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


def id_type(t: pa.DataType | None) -> str:
    """The Arrow type ids of a column of type ``t`` have in results: "int64" or "string"."""
    return "int64" if t is not None and pa.types.is_integer(t) else "string"


def texts(col, *, where: str, name: str) -> list[str]:
    arr = as_array(col)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise TypeError(f"{where} text column {name!r} holds {arr.type}; expected strings")
    if arr.null_count:
        row = int(np.flatnonzero(~np.asarray(arr.is_valid()))[0])
        raise ValueError(f"{where} row {row} has no text (column {name!r} is null there)")
    return arr.to_pylist()


# ---------------------------------------------------------------------------------------------
# The right side's filter columns


def filter_table(batch: pa.Table, fields: Sequence[str], schema: Mapping[str, str]) -> pa.Table:
    """The right side's filter columns, cast to the metadata types the filter compiler knows."""
    arrays = []
    for f in fields:
        col = as_array(batch.column(f))
        arrays.append(col.cast(md.FIELD_TYPES[schema[f]]))
    return pa.table(arrays, names=list(fields)) if fields else md.empty_table(batch.num_rows)


def field_type(t: pa.DataType) -> str | None:
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


def filter_fields(flt: Any, out: set | None = None) -> set:
    """The field names a filter mentions (its syntax alone; whether they exist is the compiler's to say)."""
    out = set() if out is None else out
    if isinstance(flt, Mapping):
        for key, value in flt.items():
            if key in ("$and", "$or") and isinstance(value, list):
                for sub in value:
                    filter_fields(sub, out)
            elif isinstance(key, str) and not key.startswith("$"):
                out.add(key)
    return out
