"""Record metadata: flat JSON-like objects per record, held as Arrow columns.

A collection keeps a *schema*, a mapping from field name to one of the field
types in :data:`FIELD_TYPES`. Each shard holds its metadata as a
:class:`pyarrow.Table` with one nullable column per field, a null meaning "this
record has no such field".

Values a record may hold: ``str``, ``bool``, ``int`` (within int64), finite
``float``, and lists or tuples of ``str`` (a ``string_list`` field; an empty
list is a present, empty value). NumPy scalars are accepted as the matching
Python type. ``int`` and ``float`` are compatible: an ``int`` field that
receives a float becomes a ``float`` field, and ints written to a ``float``
field are stored as the nearest float64.

A field whose records hold values of other kinds (an int in one record and a
string in another, as Pinecone allows) becomes a ``mixed`` field: a struct
column with one child per kind (:data:`MIXED_KINDS`), exactly one of them set in
a record that has the field, so every value keeps its own type (an int stays an
int beside floats). Filters compare a mixed field's values with operands of
their own kind (see :mod:`gpusearch.filters`).

Errors follow one rule: :class:`TypeError` when a Python object has a type
metadata cannot hold (a record that is not a mapping, a key that is not a
string, a value that is ``None``, a nested object, a set, bytes, a list item
that is not a string); :class:`ValueError` when the type is right but the value
is not (an empty key, a key starting with ``$``, NaN or infinity, an int outside
int64, a length that does not match).

Zero columns, n rows: Arrow can hold a table with no columns and any number of
rows (``normalize_metadata(None, n, {})`` returns one, built from a
zero-field struct array), but as of pyarrow 26 ``Table.take`` and
``pa.concat_tables`` drop the row count of such tables. Use :func:`take` and
:func:`concat` from this module, which keep it.
"""
from __future__ import annotations

import itertools
import numbers
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._show import show
from .errors import InvalidArgumentError, InvalidTypeError

__all__ = [
    "FIELD_TYPES",
    "MIXED_KINDS",
    "normalize_metadata",
    "merge_schemas",
    "schema_of",
    "check_schema",
    "conform",
    "concat",
    "take",
    "empty_table",
    "rows_to_dicts",
]

_KIND_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "string_list": pa.list_(pa.string()),
}
MIXED_KINDS = tuple(_KIND_TYPES)  # the children of a mixed field's struct, in this order
FIELD_TYPES: dict[str, pa.DataType] = {**_KIND_TYPES, "mixed": pa.struct(list(_KIND_TYPES.items()))}

_TYPE_NAMES = {t: name for name, t in FIELD_TYPES.items()}
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_NONE_TYPE = type(None)
_SAFE_TYPES = {str, bool, int, float, list, tuple, _NONE_TYPE}

# Exact types first (the hot path); subclasses and NumPy scalars go through _slow_kind.
_KIND_OF_TYPE: dict[type, str] = {
    str: "string",
    bool: "bool",
    int: "int",
    float: "float",
    list: "string_list",
    tuple: "string_list",
}
_PLAIN = {"string": str, "bool": bool, "int": int, "float": float, "string_list": list}

def _show(value: Any) -> str:
    return show(value, limit=100)  # keeps messages short however deeply a bad value nests


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _slow_kind(t: type) -> str | None:
    """Kind of a value type that is not one of the exact built-ins."""
    if issubclass(t, (bool, np.bool_)):  # bool before int: bool subclasses int
        return "bool"
    if issubclass(t, str):
        return "string"
    if issubclass(t, numbers.Integral):
        return "int"
    if issubclass(t, numbers.Real):
        return "float"
    if issubclass(t, (list, tuple)):
        return "string_list"
    return None


def _kind(t: type) -> str | None:
    return _KIND_OF_TYPE.get(t) or _slow_kind(t)


def empty_table(n: int) -> pa.Table:
    """A table with ``n`` rows and no columns.

    >>> empty_table(3).num_rows, empty_table(3).num_columns
    (3, 0)
    """
    batch = pa.RecordBatch.from_struct_array(pa.nulls(n, pa.struct([])))
    return pa.Table.from_batches([batch])


def _from_columns(names: list[str], arrays: list, n: int) -> pa.Table:
    if not names:
        return empty_table(n)
    return pa.Table.from_arrays(arrays, names=names)


def check_schema(schema: Any) -> dict[str, str]:
    """Validate a collection schema and return it as a new plain dict.

    >>> check_schema({"year": "int"})
    {'year': 'int'}
    >>> check_schema({"year": "integer"})
    Traceback (most recent call last):
    ...
    gpusearch.errors.InvalidArgumentError: schema field 'year' has unknown type 'integer'; expected one of 'string', 'int', 'float', 'bool', 'string_list', 'mixed'
    """
    if not isinstance(schema, Mapping):
        raise InvalidTypeError(f"schema must be a mapping of field name to type name, got {type(schema).__name__}")
    out = {}
    for name, ftype in schema.items():
        if not isinstance(name, str):
            raise InvalidTypeError(f"schema field names must be strings, got {type(name).__name__} {_show(name)}")
        if not isinstance(ftype, str) or ftype not in FIELD_TYPES:  # `in` would hash a list
            expected = ", ".join(repr(t) for t in FIELD_TYPES)
            raise InvalidArgumentError(f"schema field {name!r} has unknown type {_show(ftype)}; expected one of {expected}")
        out[name] = ftype
    return out


def _check_key(key: Any, records: list[dict]) -> None:
    if isinstance(key, str) and key and key[0] != "$" and key.isascii():
        return
    index = next(i for i, r in enumerate(records) if key in r)
    if not isinstance(key, str):
        raise InvalidTypeError(f"metadata keys must be strings, got {type(key).__name__} {_show(key)} in record {index}")
    if not key:
        raise InvalidArgumentError(f"metadata keys must be non-empty strings, got '' in record {index}")
    if key[0] == "$":
        raise InvalidArgumentError(
            f"metadata keys must not start with '$' (reserved for filter operators), got {key!r} in record {index}"
        )
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgumentError(f"metadata key {_show(key)} in record {index} is not valid UTF-8 text") from None


_EMPTY: dict = {}


def _as_dicts(metadata: Sequence) -> list[dict]:
    """The records as plain dicts (``None`` becomes a shared, never modified, empty dict)."""
    if set(map(type, metadata)) <= {dict}:
        return metadata if isinstance(metadata, list) else list(metadata)
    records = list(metadata)
    for i, record in enumerate(records):
        if type(record) is dict:
            continue
        if record is None:
            records[i] = _EMPTY
        elif isinstance(record, Mapping):
            records[i] = dict(record)
        else:
            raise InvalidTypeError(f"metadata record {i} must be a dict or None, got {type(record).__name__} {_show(record)}")
    return records


def _gather_columns(records: list[dict]) -> dict[str, list]:
    """One list per key, in order of first appearance, holding None where a record lacks the key."""
    keys = set().union(*records) if records else set()
    for key in keys:
        _check_key(key, records)
    ordered: dict[str, None] = {}
    for record in records:  # usually ends at the first record
        ordered.update(dict.fromkeys(record))
        if len(ordered) == len(keys):
            break
    return {key: list(map(dict.get, records, itertools.repeat(key))) for key in ordered}


def _check_no_none(records: list[dict], cols: dict[str, list], types: dict[str, set]) -> None:
    """Refuse explicit ``None`` values, which a column cannot tell apart from missing keys."""
    present = 0
    for name, col in cols.items():
        if types[name] <= _SAFE_TYPES:  # list.count compares with ==; safe for these
            present += len(col) - col.count(None)
        else:
            present += sum(v is not None for v in col)
    if present == sum(map(len, records)):
        return
    for i, record in enumerate(records):
        for key, value in record.items():
            if value is None:
                raise InvalidTypeError(
                    f"metadata field {key!r} in record {i} is None; null values are not stored, omit the key instead"
                )


def _first_index(col: list, pred) -> int:
    return next(i for i, v in enumerate(col) if v is not None and pred(v))


def _column_kind(name: str, col: list, types: set, schema_type: str | None) -> str:
    """The kind the values in ``col`` have together, checked against the collection's type."""
    kinds: dict[str, type] = {}
    for t in types:
        if t is _NONE_TYPE:
            continue
        k = _kind(t)
        if k is None:
            i = _first_index(col, lambda v: type(v) is t)
            what = "nested objects are not supported" if isinstance(col[i], Mapping) else "expected str, bool, int, float or a list of str"
            raise InvalidTypeError(f"metadata field {name!r} in record {i} has {_a(t.__name__)} value {_show(col[i])}; {what}")
        kinds.setdefault(k, t)
    numeric = set(kinds) <= {"int", "float"}
    if schema_type == "mixed" or (len(kinds) > 1 and not numeric):
        return "mixed"
    kind = "float" if "float" in kinds else next(iter(kinds))
    if schema_type is None or schema_type == kind:
        return kind
    if numeric and schema_type in ("int", "float"):
        return "float"
    return "mixed"  # a value of another kind than the field's: each record keeps its own


def _check_list_items(name: str, col: list) -> None:
    item_types = set(map(type, itertools.chain.from_iterable(v for v in col if v is not None)))
    if item_types <= {str}:
        return
    for i, v in enumerate(col):
        if v is None:
            continue
        for x in v:
            if not isinstance(x, str):
                raise InvalidTypeError(
                    f"metadata field {name!r} in record {i} is a list holding {type(x).__name__} {_show(x)}; "
                    "lists may only hold strings"
                )


def _plain_values(col: list, types: set, kind: str) -> list:
    """Convert NumPy scalars and subclasses to the plain built-in types."""
    exact = {str, bool, int, float, list, tuple, _NONE_TYPE}
    if types <= exact or kind == "mixed":  # a mixed field's values are made plain child by child
        return col
    plain = _PLAIN[kind]
    return [v if v is None or type(v) in exact else plain(v) for v in col]


def _check_encodable(name: str, col: list) -> None:
    for i, v in enumerate(col):
        for s in ([v] if isinstance(v, str) else v or ()):
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidArgumentError(f"metadata field {name!r} in record {i} holds text that is not valid UTF-8: {_show(s)}") from None


def _int_array(name: str, col: list) -> pa.Array:
    try:
        return pa.array(col, type=pa.int64())
    except (OverflowError, pa.ArrowInvalid):
        i = _first_index(col, lambda v: not _INT64_MIN <= v <= _INT64_MAX)
        raise InvalidArgumentError(
            f"metadata field {name!r} in record {i} holds {_show(col[i])}, outside the int64 range "
            f"[{_INT64_MIN}, {_INT64_MAX}]; ints must fit in int64"
        ) from None


def _float_array(name: str, col: list) -> pa.Array:
    try:
        arr = pa.array(col, type=pa.float64())
    except (OverflowError, pa.ArrowInvalid, pa.ArrowTypeError):
        # Ints beyond 2**53 are refused by Arrow's exact conversion; round them here.
        for i, v in enumerate(col):
            if isinstance(v, int) and not _INT64_MIN <= v <= _INT64_MAX:
                raise InvalidArgumentError(
                    f"metadata field {name!r} in record {i} holds {_show(v)}, outside the int64 range "
                    f"[{_INT64_MIN}, {_INT64_MAX}]; ints must fit in int64"
                ) from None
        arr = pa.array([None if v is None else float(v) for v in col], type=pa.float64())
    bad = pc.fill_null(pc.invert(pc.is_finite(arr)), False)
    if pc.any(bad).as_py():
        i = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
        raise InvalidArgumentError(f"metadata field {name!r} in record {i} holds {_show(col[i])}; float values must be finite")
    return arr


def _mixed_array(name: str, col: list) -> pa.Array:
    """A mixed field's struct column: per record, its value in the child of its own kind."""
    kinds = [None if v is None else _kind(type(v)) for v in col]
    children = []
    for kind in MIXED_KINDS:
        part = [v if k == kind else None for v, k in zip(col, kinds)]
        part = _plain_values(part, set(map(type, part)), kind)
        children.append(_build_array(name, part, kind))
    missing = pa.array([k is None for k in kinds], type=pa.bool_())
    return pa.StructArray.from_arrays(children, fields=list(FIELD_TYPES["mixed"]), mask=missing)


def to_mixed(col, kind: str):
    """A column of one field type (``kind``) as a mixed field's struct column; nulls stay missing."""
    if isinstance(col, pa.ChunkedArray):
        return pa.chunked_array([to_mixed(c, kind) for c in col.chunks], type=FIELD_TYPES["mixed"])
    n = len(col)
    children = [col.cast(FIELD_TYPES[k]) if k == kind else pa.nulls(n, FIELD_TYPES[k]) for k in MIXED_KINDS]
    return pa.StructArray.from_arrays(children, fields=list(FIELD_TYPES["mixed"]), mask=col.is_null())


def _build_array(name: str, col: list, kind: str) -> pa.Array:
    if kind == "mixed":
        return _mixed_array(name, col)
    if kind == "int":
        return _int_array(name, col)
    if kind == "float":
        return _float_array(name, col)
    if kind == "string_list":
        _check_list_items(name, col)
    try:
        return pa.array(col, type=FIELD_TYPES[kind])
    except UnicodeEncodeError:
        _check_encodable(name, col)
        raise


def normalize_metadata(metadata: Any, n: int, schema: Mapping[str, str]) -> tuple[pa.Table, dict[str, str]]:
    """Turn one batch of per-record metadata into an Arrow table.

    Parameters
    ----------
    metadata : sequence of (mapping or None), or None
        One flat object per record; ``None`` (for the batch or for a record)
        means no metadata.
    n : int
        The number of records in the batch.
    schema : mapping of str to str
        The collection's field types so far. Never modified.

    Returns
    -------
    table : pyarrow.Table
        ``n`` rows, one column per field that occurs in this batch, typed per
        the returned schema (in its order), null where a record lacks the
        field. With no fields it has zero columns and still ``n`` rows.
    schema : dict of str to str
        The input schema extended with new fields, with ``int`` fields
        promoted to ``float`` where this batch holds floats, and with fields
        that now hold values of several kinds made ``mixed``.

    Raises
    ------
    TypeError
        A record, key, value or list item of an unsupported type.
    ValueError
        A length other than ``n``, a bad key, a non-finite float, an int
        outside int64.

    Examples
    --------
    >>> table, schema = normalize_metadata([{"genre": "drama", "year": 2020}, None], 2, {"year": "int"})
    >>> table.to_pylist()
    [{'year': 2020, 'genre': 'drama'}, {'year': None, 'genre': None}]
    >>> schema
    {'year': 'int', 'genre': 'string'}
    >>> table, schema = normalize_metadata([{"year": "2020"}], 1, {"year": "int"})
    >>> schema, table.column("year").to_pylist()[0]["string"]
    ({'year': 'mixed'}, '2020')
    """
    schema = check_schema(schema)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {_show(n)}")
    if metadata is None:
        return empty_table(n), schema
    if isinstance(metadata, (str, bytes, Mapping)) or not isinstance(metadata, (Sequence, np.ndarray)):
        raise InvalidTypeError(
            f"metadata must be a list with one dict (or None) per record, got {type(metadata).__name__}"
        )
    if len(metadata) != n:
        raise InvalidArgumentError(f"metadata must have one entry per record ({n}), got {len(metadata)}")

    records = _as_dicts(metadata)
    cols = _gather_columns(records)
    types = {name: set(map(type, col)) for name, col in cols.items()}
    _check_no_none(records, cols, types)

    kinds = {name: _column_kind(name, col, types[name], schema.get(name)) for name, col in cols.items()}
    out_schema = dict(schema)
    for name, kind in kinds.items():
        out_schema[name] = kind
    names = [name for name in out_schema if name in cols]
    arrays = [_build_array(name, _plain_values(cols[name], types[name], kinds[name]), kinds[name]) for name in names]
    return _from_columns(names, arrays, n), out_schema


def merge_schemas(a: Mapping[str, str], b: Mapping[str, str]) -> dict[str, str]:
    """Combine two schemas: the union of their fields, ``int`` and ``float`` giving ``float``,
    any other two types ``mixed``.

    Fields keep ``a``'s order, then ``b``'s new fields in ``b``'s order.

    >>> merge_schemas({"year": "int"}, {"year": "float", "genre": "string"})
    {'year': 'float', 'genre': 'string'}
    >>> merge_schemas({"year": "int"}, {"year": "string"})
    {'year': 'mixed'}
    """
    out = check_schema(a)
    for name, ftype in check_schema(b).items():
        have = out.get(name)
        if have is None or have == ftype:
            out[name] = ftype
        elif {have, ftype} == {"int", "float"}:
            out[name] = "float"
        else:
            out[name] = "mixed"
    return out


def _type_name(dt: pa.DataType) -> str | None:
    name = _TYPE_NAMES.get(dt)
    if name is None and pa.types.is_list(dt) and pa.types.is_string(dt.value_type):
        return "string_list"  # e.g. Parquet names the list item "element"
    if name is None and pa.types.is_struct(dt) and [f.name for f in dt] == list(MIXED_KINDS):
        if all(_type_name(f.type) == k for f, k in zip(dt, MIXED_KINDS)):
            return "mixed"
    return name


def schema_of(table: pa.Table) -> dict[str, str]:
    """The field types of a metadata table's columns.

    >>> t, _ = normalize_metadata([{"year": 2020, "tags": ["a"]}], 1, {})
    >>> schema_of(t)
    {'year': 'int', 'tags': 'string_list'}
    """
    if not isinstance(table, (pa.Table, pa.RecordBatch)):
        raise TypeError(f"table must be a pyarrow.Table, got {type(table).__name__}")
    out = {}
    for field in table.schema:
        ftype = _type_name(field.type)
        if ftype is None:
            expected = ", ".join(str(t) for t in FIELD_TYPES.values())
            raise ValueError(f"metadata column {field.name!r} has Arrow type {field.type}; expected one of {expected}")
        out[field.name] = ftype
    return out


def conform(table: pa.Table, schema: Mapping[str, str]) -> pa.Table:
    """Cast and extend ``table`` to ``schema``: every schema field, in schema order.

    Missing fields become all-null columns, ``int`` columns become ``float``
    where the schema says so, a column of one type becomes a ``mixed`` column
    where the schema says so, and the row count is kept even with no columns.

    >>> t, _ = normalize_metadata([{"year": 2020}], 1, {})
    >>> conform(t, {"year": "float", "genre": "string"}).to_pylist()
    [{'year': 2020.0, 'genre': None}]
    """
    schema = check_schema(schema)
    if not isinstance(table, pa.Table):
        raise TypeError(f"table must be a pyarrow.Table, got {type(table).__name__}")
    extra = [name for name in table.column_names if name not in schema]
    if extra:
        raise ValueError(f"table has columns {extra} that are not in the schema (fields: {list(schema)})")
    n = table.num_rows
    target = pa.schema([(name, FIELD_TYPES[ftype]) for name, ftype in schema.items()])
    if table.schema.equals(target):
        return table
    arrays = []
    for field in target:
        if field.name not in table.column_names:
            arrays.append(pa.nulls(n, field.type))
            continue
        col = table.column(field.name)
        if col.type != field.type:
            kind = _type_name(col.type)
            if pa.types.is_integer(col.type) and pa.types.is_floating(field.type):
                col = col.cast(field.type, safe=False)  # ints beyond 2**53 round, as Python's float() does
            elif schema[field.name] == "mixed" and kind in MIXED_KINDS:
                col = to_mixed(col, kind)
            elif pa.types.is_null(col.type) or kind == schema[field.name]:
                col = col.cast(field.type)
            else:
                raise ValueError(
                    f"table column {field.name!r} has type {col.type}, which cannot become the schema's "
                    f"{schema[field.name]!r} ({field.type})"
                )
        arrays.append(col)
    return _from_columns(target.names, arrays, n)


def concat(tables: Sequence[pa.Table], schema: Mapping[str, str]) -> pa.Table:
    """Concatenate metadata tables (possibly with different columns) into one conforming to ``schema``.

    >>> a, s = normalize_metadata([{"year": 2020}], 1, {})
    >>> b, s = normalize_metadata([{"genre": "drama"}], 1, s)
    >>> concat([a, b], s).to_pylist()
    [{'year': 2020, 'genre': None}, {'year': None, 'genre': 'drama'}]
    """
    schema = check_schema(schema)
    if isinstance(tables, pa.Table) or not isinstance(tables, Sequence):
        raise TypeError(f"tables must be a sequence of pyarrow.Table, got {type(tables).__name__}")
    parts = [conform(t, schema) for t in tables]
    if not schema:
        return empty_table(sum(t.num_rows for t in parts))
    if not parts:
        return conform(empty_table(0), schema)
    return pa.concat_tables(parts)


def _positions(rows: Any, num_rows: int) -> np.ndarray:
    if rows is None:
        return np.arange(num_rows, dtype=np.int64)
    idx = np.asarray(rows)
    if idx.ndim != 1 or not (idx.dtype.kind in "iu" or idx.size == 0):
        raise TypeError(f"rows must be a 1-D sequence of integer row positions, got {idx.dtype} with shape {idx.shape}")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.min() < 0 or idx.max() >= num_rows):
        bad = int(idx[(idx < 0) | (idx >= num_rows)][0])
        raise ValueError(f"row positions must be in [0, {num_rows}), got {bad}")
    return idx


def take(table: pa.Table, rows: Any) -> pa.Table:
    """The given rows of ``table``, in order; keeps the row count of zero-column tables.

    >>> take(empty_table(5), [0, 4, 4]).num_rows
    3
    """
    idx = _positions(rows, table.num_rows)
    if table.num_columns == 0:
        return empty_table(len(idx))
    return table.take(idx)


def rows_to_dicts(table: pa.Table, rows: Any = None) -> list[dict]:
    """Metadata of the given row positions as plain dicts, leaving out missing fields.

    ``rows`` is a sequence of row positions (``None`` for every row). Ints come
    back as ``int``, floats as ``float``, lists as ``list``; a mixed field's
    value as the one it holds.

    >>> t, _ = normalize_metadata([{"year": 2020, "tags": ("a", "b")}, {"genre": "drama"}], 2, {})
    >>> rows_to_dicts(t, [1, 0])
    [{'genre': 'drama'}, {'year': 2020, 'tags': ['a', 'b']}]
    """
    if not isinstance(table, pa.Table):
        raise TypeError(f"table must be a pyarrow.Table, got {type(table).__name__}")
    sub = take(table, rows)
    names = sub.column_names
    columns = [_values(sub.column(name)) for name in names]
    return [
        {name: value for name, value in zip(names, values) if value is not None}
        for values in zip(*columns)
    ] if names else [{} for _ in range(sub.num_rows)]


def _values(col) -> list:
    """A column's values as Python objects, a mixed field's as the value each record holds."""
    if _type_name(col.type) != "mixed":
        return col.to_pylist()
    out = [None] * len(col)
    for kind in MIXED_KINDS:
        for i, v in enumerate(pc.struct_field(col, kind).to_pylist()):
            if v is not None:
                out[i] = v
    return out
