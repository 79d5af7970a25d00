"""Pinecone-style metadata filters, compiled once to a pyarrow compute expression.

Grammar
-------
A filter is a dict. Each key is a metadata field name or ``$and`` / ``$or``;
the keys are ANDed. A field maps to a value (shorthand for ``$eq``) or to an
object of operators, which are ANDed too::

    {"genre": "drama", "year": {"$gte": 2019, "$lt": 2022}}
    {"$or": [{"genre": {"$in": ["drama", "news"]}}, {"rating": {"$gt": 4.5}}]}

Field operators: ``$eq $ne $gt $gte $lt $lte $in $nin $exists``. Logical
operators: ``$and`` and ``$or``, each with a non-empty list of filters (an
empty filter ``{}`` inside them matches every record). ``None`` or ``{}`` as the
whole filter means no filtering (:func:`compile_filter` returns ``None``).

Semantics
---------
- Missing fields (MongoDB rules): a record without the field fails every
  comparison except ``$ne`` and ``$nin``, which it passes. ``$exists: true``
  matches records that have the field, ``$exists: false`` those that do not.
  A field the collection has never seen is missing from every record, as
  Pinecone treats it: ``$ne``, ``$nin`` and ``$exists: false`` match every
  record, every other condition none (its operand is still checked).
- ``int`` and ``float`` fields compare numerically with int or float operands,
  exactly as Python compares numbers (``{"year": {"$gt": 2019.5}}`` matches
  2020; ``{"year": 2020.0}`` matches 2020). Operand ints must fit in int64.
- ``string`` fields support every operator; ``$gt $gte $lt $lte`` compare
  lexicographically by Unicode code point (the same order as Python's ``<``
  and as UTF-8 bytes).
- ``bool`` fields support ``$eq $ne $in $nin $exists`` only; operands must be
  ``True``/``False`` (``1`` is not ``True``).
- ``string_list`` fields: ``$eq v`` matches when any element equals ``v``,
  ``$in [..]`` when any element is one of the values; ``$ne`` and ``$nin``
  are their negations (no element matches; a record without the field passes
  them). An empty list is present but matches no value. ``$gt`` and friends
  are refused.
- ``mixed`` fields (records holding values of different kinds, see
  :mod:`gpusearch.metadata`): a condition compares each record's value with
  operands of its own kind, as Pinecone does: ``{"code": 5}`` matches the
  records holding 5 (or 5.0), never the string ``"5"``; ``$gt 3`` is false for a
  record holding a string; ``$ne``/``$nin`` are the negations of ``$eq``/``$in``,
  so a record holding another kind passes them. Strings also match any element
  of a record's list of strings, as on ``string_list`` fields.
- ``$in`` / ``$nin`` take a non-empty list of operands of one kind (strings,
  bools, or numbers).

Errors
------
``TypeError`` when something has the wrong type (the filter is not a dict, an
operand of the wrong kind, ``$exists`` with a non-bool, ``$in`` with a
non-list); ``ValueError`` for a wrong value (an unknown operator, an empty ``$in`` list or condition object, an operator a field type
does not support, NaN or infinity, mixing operators and plain keys in one
object, nesting deeper than :data:`MAX_DEPTH`).

Evaluation
----------
:attr:`CompiledFilter.expression` refers to metadata columns by field name.
Predicates on ``string_list`` fields ("any element is in ...") are not
elementwise in Arrow, so they appear in the expression as references to
derived boolean columns named ``$list0``, ``$list1``, ... (no metadata field
can start with ``$``), which :meth:`CompiledFilter.mask` computes from the list
column before it evaluates the expression. Use ``mask`` rather than handing
``expression`` to Arrow yourself when the filter touches a list field.
"""
from __future__ import annotations

import json
import math
import numbers
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.acero as acero
import pyarrow.compute as pc

from ._show import show as _show
from .errors import InvalidArgumentError, InvalidTypeError
from .metadata import FIELD_TYPES, MIXED_KINDS, check_schema, to_mixed

__all__ = ["CompiledFilter", "compile_filter", "FIELD_OPERATORS", "LOGICAL_OPERATORS", "MAX_DEPTH"]

FIELD_OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists")
LOGICAL_OPERATORS = ("$and", "$or")
MAX_DEPTH = 32  # nesting of $and/$or; deeper filters are refused before they can exhaust the stack

_SUPPORTED = ", ".join(FIELD_OPERATORS + LOGICAL_OPERATORS)
_COMPARISONS = ("$gt", "$gte", "$lt", "$lte")
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_KIND_NAMES = {"string": "a string", "number": "a number (int or float)", "bool": "a bool (true or false)"}
_FIELD_KIND = {"string": "string", "int": "number", "float": "number", "bool": "bool", "string_list": "string"}
# The children of a mixed field an operand of each kind is compared with (equality, then order).
_MIXED_CHILDREN = {"string": (("string", "string_list"), ("string",)), "number": (("int", "float"), ("int", "float")),
                   "bool": (("bool",), ())}


class _Node:
    """A compiled piece of filter: an expression that is never null for any row, the
    fields it reads, and the derived list columns it refers to.

    Constants are plain Python bools instead, folded away by :func:`_and` and :func:`_or`
    so that ``fields`` names only the columns the final expression reads.
    """

    __slots__ = ("expr", "fields", "lists")

    def __init__(self, expr: pc.Expression, fields: frozenset, lists: tuple = ()):
        self.expr, self.fields, self.lists = expr, fields, lists


def _combine(parts: list, absorbing: bool, join) -> Any:
    """Join nodes with ``join``; ``absorbing`` is False for AND and True for OR."""
    if any(p is absorbing for p in parts):
        return absorbing
    nodes = [p for p in parts if not isinstance(p, bool)]  # the rest are the identity
    if not nodes:
        return not absorbing
    expr = nodes[0].expr
    for node in nodes[1:]:
        expr = join(expr, node.expr)
    fields = frozenset().union(*(node.fields for node in nodes))
    return _Node(expr, fields, tuple(item for node in nodes for item in node.lists))


def _and(parts: list) -> Any:
    return _combine(parts, False, lambda a, b: a & b)


def _or(parts: list) -> Any:
    return _combine(parts, True, lambda a, b: a | b)


def _not(part: Any) -> Any:
    if isinstance(part, bool):
        return not part
    return _Node(~part.expr, part.fields, part.lists)  # node expressions are never null


class CompiledFilter:
    """A filter compiled against a collection schema; build with :func:`compile_filter`.

    Attributes
    ----------
    expression : pyarrow.compute.Expression
        The whole filter; never null for any row. See the module docstring
        for the derived ``$listN`` columns it may refer to.
    fields : frozenset of str
        The metadata fields whose columns :meth:`mask` reads.
    """

    __slots__ = ("expression", "fields", "key", "_types", "_lists", "_constant", "_children")

    def __init__(self, expression, fields, types, lists, constant, key=None, children=None):
        self.expression = expression
        self.fields = fields
        self._types = types  # column -> pa.DataType from the schema at compile time
        self._lists = lists  # (derived column, field, value set, negate)
        self._constant = constant  # bool when the filter folded to a constant, else None
        self._children = children or {}  # derived column -> (mixed field, kind): one child of its struct
        # The filter as canonical JSON and the types of the fields it reads: equal keys select the
        # same rows, so a batcher may answer requests with equal keys in one search.
        self.key = key if key is not None else (str(expression), ())

    def __repr__(self) -> str:
        return f"CompiledFilter({self.expression})"

    def __eq__(self, other) -> bool:
        return isinstance(other, CompiledFilter) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __getstate__(self):  # slots, no __dict__: pickled (to a shard replica) field by field
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)

    def mask(self, table: pa.Table | pa.RecordBatch) -> np.ndarray:
        """Evaluate the filter over every row of ``table``.

        Columns the table lacks count as missing in every row; integer
        columns of a field that is now ``float`` are read as floats.

        Parameters
        ----------
        table : pyarrow.Table or pyarrow.RecordBatch
            Metadata rows, one column per field (extra columns are ignored).

        Returns
        -------
        numpy.ndarray
            ``bool``, one entry per row, True where the row matches.

        Examples
        --------
        >>> import pyarrow as pa
        >>> f = compile_filter({"year": {"$gte": 2019}}, {"year": "int", "genre": "string"})
        >>> f.mask(pa.table({"year": [2018, 2020, None]})).tolist()
        [False, True, False]
        """
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if not isinstance(table, pa.Table):
            raise InvalidTypeError(f"table must be a pyarrow.Table or RecordBatch, got {type(table).__name__}")
        n = table.num_rows
        if self._constant is not None:
            return np.full(n, self._constant, dtype=bool)
        columns = {name: self._child(table, *self._children[name], t) if name in self._children
                   else self._column(table, name, t) for name, t in self._types.items()}
        for derived, field, values, negate in self._lists:
            columns[derived] = _any_in(columns[field], values, negate, n)
        inputs = pa.table(columns)
        plan = acero.Declaration.from_sequence(
            [
                acero.Declaration("table_source", acero.TableSourceNodeOptions(inputs)),
                acero.Declaration("project", acero.ProjectNodeOptions([self.expression], ["mask"])),
            ]
        )
        # One thread keeps batches in row order; the expression is cheap next to the plan.
        result = plan.to_table(use_threads=False).column(0)
        if result.num_chunks == 0:
            return np.zeros(0, dtype=bool)
        out = pc.fill_null(result, False).to_numpy()
        if out.shape != (n,):  # would be a bug in the plan, not bad input
            raise RuntimeError(f"filter produced {out.shape[0]} values for {n} rows")
        return out

    @staticmethod
    def _child(table: pa.Table, name: str, kind: str, target: pa.DataType):
        """The values of kind ``kind`` in mixed field ``name`` (null in records holding another kind)."""
        child = pc.struct_field(CompiledFilter._column(table, name, FIELD_TYPES["mixed"]), kind)
        return child if child.type == target else child.cast(target)

    @staticmethod
    def _column(table: pa.Table, name: str, target: pa.DataType):
        n = table.num_rows
        if name not in table.schema.names:
            return pa.nulls(n, target)
        col = table.column(name)
        if col.type == target:
            return col
        if pa.types.is_struct(target) and not pa.types.is_struct(col.type):  # mixed now, one type when written
            kind = next((k for k in MIXED_KINDS if FIELD_TYPES[k] == col.type), None)
            if kind is not None:
                return to_mixed(col, kind)
        if pa.types.is_integer(col.type) and pa.types.is_floating(target):
            return col.cast(target, safe=False)
        if pa.types.is_null(col.type) or (pa.types.is_list(col.type) and pa.types.is_list(target)) or (
                pa.types.is_struct(col.type) and pa.types.is_struct(target)):
            try:
                return col.cast(target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        raise ValueError(f"metadata column {name!r} has type {col.type}, but the filter was compiled for {target}")


def _any_in(col, values: pa.Array, negate: bool, n: int) -> pa.Array:
    """Per row of a list column: does any element lie in ``values``? (Negated: does none?)

    A missing list has no elements, so it never matches and always matches
    the negation.
    """
    flat = pc.list_flatten(col)
    parents = pc.list_parent_indices(col)  # row positions, continuing across chunks
    hits = pc.is_in(flat, value_set=values).to_numpy(zero_copy_only=False)
    found = np.zeros(n, dtype=bool)
    found[parents.to_numpy()[hits]] = True
    return pa.array(~found if negate else found)


class _Compiler:
    def __init__(self, schema: Mapping[str, str]):
        self.schema = schema
        self.list_count = 0
        self.children: dict[str, tuple[str, str]] = {}  # derived column -> (mixed field, kind)

    def filter(self, flt: Any, depth: int, where: str) -> Any:
        if not isinstance(flt, Mapping):
            raise InvalidTypeError(f"{where} must be a dict, got {type(flt).__name__} {_show(flt)}")
        if depth > MAX_DEPTH:
            raise InvalidArgumentError(f"filter nests $and/$or deeper than {MAX_DEPTH} levels")
        parts = []
        for key, value in flt.items():
            if not isinstance(key, str):
                raise InvalidTypeError(f"filter keys must be strings (field names or operators), got {type(key).__name__} {_show(key)}")
            if key in LOGICAL_OPERATORS:
                parts.append(self.logical(key, value, depth))
            elif key.startswith("$"):
                if key in FIELD_OPERATORS:
                    raise InvalidArgumentError(
                        f"operator {key} must be applied to a field, as in {{'field': {{'{key}': ...}}}}; "
                        f"only $and and $or may stand at the top of a filter"
                    )
                raise InvalidArgumentError(f"unknown filter operator {key!r}; supported operators: {_SUPPORTED}")
            else:
                parts.append(self.condition(key, value))
        return _and(parts)

    def logical(self, op: str, value: Any, depth: int) -> Any:
        if not isinstance(value, (list, tuple)):
            raise InvalidTypeError(f"{op} needs a list of filters, got {type(value).__name__} {_show(value)}")
        if not value:
            raise InvalidArgumentError(f"{op} needs a non-empty list of filters, got []")
        parts = [self.filter(item, depth + 1, f"each item of {op}") for item in value]
        return _and(parts) if op == "$and" else _or(parts)

    def condition(self, field: str, cond: Any) -> Any:
        if not isinstance(cond, Mapping):
            return self.leaf(field, "$eq", cond)
        if not cond:
            raise InvalidArgumentError(f"condition for field {field!r} is an empty object; expected operators such as {{'$eq': value}}")
        keys = list(cond)
        ops = [k for k in keys if isinstance(k, str) and k.startswith("$")]
        if not ops:
            raise InvalidTypeError(
                f"field {field!r} must map to a value or an object of operators, got an object with keys "
                f"{_show(keys)}; nested objects are not supported"
            )
        if len(ops) != len(keys):
            plain = [k for k in keys if k not in ops]
            raise InvalidArgumentError(
                f"condition for field {field!r} mixes operators {ops} with other keys {_show(plain)}; "
                "an object under a field holds operators only"
            )
        parts = []
        for op, operand in cond.items():
            if op in LOGICAL_OPERATORS:
                raise InvalidArgumentError(f"{op} cannot be used inside the condition for field {field!r}; put it at the top of a filter")
            if op not in FIELD_OPERATORS:
                raise InvalidArgumentError(f"unknown filter operator {op!r} for field {field!r}; supported operators: {_SUPPORTED}")
            parts.append(self.leaf(field, op, operand))
        return _and(parts)

    def leaf(self, field: str, op: str, operand: Any) -> Any:
        if op == "$exists":
            if not isinstance(operand, (bool, np.bool_)):
                raise InvalidTypeError(f"$exists for field {field!r} needs true or false, got {type(operand).__name__} {_show(operand)}")
            if field not in self.schema:
                return not operand  # a field no record has
            ref = pc.field(field)
            return _Node(pc.is_valid(ref) if operand else pc.is_null(ref), frozenset([field]))
        if field not in self.schema:  # no record has it: a missing value everywhere (Pinecone's answer)
            self.unseen(field, op, operand)
            return op in ("$ne", "$nin")
        ftype = self.schema[field]
        if ftype == "mixed":
            return self.mixed(field, op, operand)
        return self.typed(field, ftype, op, operand)

    def typed(self, field: str, ftype: str, op: str, operand: Any) -> Any:
        if op in _COMPARISONS and ftype in ("bool", "string_list"):
            raise InvalidArgumentError(
                f"{op} is not supported on {ftype} field {field!r}; use $eq, $ne, $in, $nin or $exists"
            )
        if op in ("$in", "$nin"):
            values = self.operand_list(field, ftype, op, operand)
            return self.membership(field, ftype, op, values)
        value = self.operand(field, ftype, op, operand)
        if ftype == "string_list":
            return self.list_any(field, [value], negate=op == "$ne")
        if ftype == "int" and isinstance(value, float):
            return self.int_vs_float(field, op, value)
        if ftype == "float" and isinstance(value, int):
            return self.float_vs_int(field, op, value)
        return self.compare(field, op, value)

    def mixed(self, field: str, op: str, operand: Any) -> Any:
        """A condition on a mixed field: on the children holding the operand's kind, each as a typed field."""
        self.unseen(field, op, operand)  # the operand alone decides what is well formed
        kind = _operand_kind(operand[0] if op in ("$in", "$nin") else operand)
        equality, order = _MIXED_CHILDREN[kind]
        positive = {"$ne": "$eq", "$nin": "$in"}.get(op, op)
        parts = [self.typed(self.child(field, k), k, positive, operand)
                 for k in (order if op in _COMPARISONS else equality)]
        node = _or(parts)
        return _not(node) if positive != op else node

    def child(self, field: str, kind: str) -> str:
        name = f"$mixed{len(self.children)}.{kind}"
        self.children[name] = (field, kind)
        return name

    def unseen(self, field: str, op: str, operand: Any) -> None:
        """Check the operand of a condition on a field no record has, as if the field had the operand's
        type: a malformed filter is refused whether or not the field exists yet."""
        if op in ("$in", "$nin") and not (isinstance(operand, (list, tuple)) and operand):
            self.operand_list(field, "string", op, operand)  # refuses a non-list or an empty list
        first = operand[0] if op in ("$in", "$nin") else operand
        kind = _operand_kind(first)
        if kind is None:
            raise InvalidTypeError(f"{op} on field {field!r} needs a string, number or bool, got "
                                   f"{type(first).__name__} {_show(first)}")
        ftype = {"bool": "bool", "string": "string", "number": "float"}[kind]
        if op in _COMPARISONS and ftype == "bool":
            raise InvalidTypeError(f"{op} on field {field!r} needs a number or a string, got bool {_show(first)}")
        if op in ("$in", "$nin"):
            self.operand_list(field, ftype, op, operand)
        else:
            self.operand(field, ftype, op, operand)

    # -- operands -----------------------------------------------------------

    def operand(self, field: str, ftype: str, op: str, value: Any) -> Any:
        """A scalar operand checked against the field type, as a plain Python value."""
        want = _FIELD_KIND[ftype]
        kind = _operand_kind(value)
        if kind != want:
            hint = "; to match any of several values use $in" if isinstance(value, (list, tuple)) and op in ("$eq", "$ne") else ""
            raise InvalidTypeError(
                f"{op} on {ftype} field {field!r} needs {_KIND_NAMES[want]}, got {type(value).__name__} {_show(value)}{hint}"
            )
        if kind == "bool":
            return bool(value)
        if kind == "string":
            value = str(value)
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidArgumentError(f"{op} operand for field {field!r} is not valid UTF-8 text: {_show(value)}") from None
            return value
        if isinstance(value, numbers.Integral):
            value = int(value)
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise InvalidArgumentError(f"{op} operand for field {field!r} must fit in int64, got {_show(value)}")
            return value
        value = float(value)
        if not math.isfinite(value):
            raise InvalidArgumentError(f"{op} operand for field {field!r} must be a finite number, got {value}")
        return value

    def operand_list(self, field: str, ftype: str, op: str, values: Any) -> list:
        if not isinstance(values, (list, tuple)):
            raise InvalidTypeError(f"{op} on field {field!r} needs a list of values, got {type(values).__name__} {_show(values)}")
        if not values:
            raise InvalidArgumentError(f"{op} on field {field!r} needs a non-empty list of values, got []")
        if len({_operand_kind(v) for v in values}) > 1:
            names = ", ".join(dict.fromkeys(type(v).__name__ for v in values))
            raise InvalidTypeError(
                f"{op} on field {field!r} needs values of one kind, got a mix of {names}: {_show(list(values))}"
            )
        return [self.operand(field, ftype, op, v) for v in values]

    # -- expressions --------------------------------------------------------

    def compare(self, field: str, op: str, value: Any) -> _Node:
        ref = pc.field(field)
        if op == "$ne":
            return _Node(pc.coalesce(pc.not_equal(ref, value), True), frozenset([field]))  # missing passes $ne
        fn = {"$eq": pc.equal, "$gt": pc.greater, "$gte": pc.greater_equal, "$lt": pc.less, "$lte": pc.less_equal}[op]
        return _Node(pc.coalesce(fn(ref, value), False), frozenset([field]))

    def membership(self, field: str, ftype: str, op: str, values: list) -> Any:
        if ftype == "int":
            values = [int(v) for v in values if _is_int_valued(v)]
        elif ftype == "float":
            values = [float(v) for v in values if isinstance(v, float) or float(v) == v]
            if 0.0 in values:
                # is_in hashes -0.0 and 0.0 apart, but they are equal numbers ($eq matches both).
                values += [0.0, -0.0]
        if ftype == "string_list":
            return self.list_any(field, values, negate=op == "$nin")
        if not values:  # no stored value can equal any operand
            return op == "$nin"
        value_set = pa.array(values, type=FIELD_TYPES[ftype])
        isin = pc.is_in(pc.field(field), value_set=value_set)  # null input gives false, never null
        return _Node(~isin if op == "$nin" else isin, frozenset([field]))

    def list_any(self, field: str, values: list, negate: bool) -> _Node:
        name = f"$list{self.list_count}"
        self.list_count += 1
        derived = (name, field, pa.array(values, type=pa.string()), negate)
        return _Node(pc.field(name), frozenset([field]), (derived,))

    def int_vs_float(self, field: str, op: str, value: float) -> Any:
        """Compare an int64 column with a float exactly, by moving the bound to an integer."""
        if op in ("$eq", "$ne"):
            if _is_int_valued(value):
                return self.compare(field, op, int(value))
            return op == "$ne"  # no int equals a non-integral float
        bound = math.floor(value) if op in ("$gt", "$lte") else math.ceil(value)
        # x > 2.5 <=> x > 2;  x >= 2.5 <=> x >= 3;  x < 2.5 <=> x < 3;  x <= 2.5 <=> x <= 2
        if bound > _INT64_MAX:
            return False if op in ("$gt", "$gte") else self.exists(field)
        if bound < _INT64_MIN:
            return self.exists(field) if op in ("$gt", "$gte") else False
        return self.compare(field, op, bound)

    def float_vs_int(self, field: str, op: str, value: int) -> Any:
        """Compare a float64 column with an int exactly, also where the int has no exact float."""
        near = float(value)
        if int(near) == value:
            return self.compare(field, op, near)
        if op in ("$eq", "$ne"):
            return op == "$ne"  # no float64 equals this int
        # No float64 lies strictly between ``value`` and its nearest float ``near``.
        if near > value:
            op = {"$gt": "$gte", "$gte": "$gte", "$lt": "$lt", "$lte": "$lt"}[op]
        else:
            op = {"$gt": "$gt", "$gte": "$gt", "$lt": "$lte", "$lte": "$lte"}[op]
        return self.compare(field, op, near)

    def exists(self, field: str) -> _Node:
        return _Node(pc.is_valid(pc.field(field)), frozenset([field]))


def _operand_kind(value: Any) -> str | None:
    if isinstance(value, (bool, np.bool_)):  # before numbers: bool subclasses int
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, numbers.Real):
        return "number"
    return None


def _is_int_valued(value: Any) -> bool:
    if isinstance(value, int):
        return True
    return value.is_integer() and _INT64_MIN <= value <= _INT64_MAX


def filter_fields(filter: Any) -> set[str]:
    """The metadata fields a (well-formed) filter names.

    >>> sorted(filter_fields({"$or": [{"genre": "news"}, {"year": {"$gt": 2019}}], "lang": "en"}))
    ['genre', 'lang', 'year']
    """
    out: set[str] = set()
    if isinstance(filter, Mapping):
        for key, value in filter.items():
            if key in LOGICAL_OPERATORS and isinstance(value, (list, tuple)):
                for item in value:
                    out |= filter_fields(item)
            elif isinstance(key, str) and not key.startswith("$"):
                out.add(key)
    return out


def compile_filter(filter: Any, schema: Mapping[str, str]) -> CompiledFilter | None:
    """Check a Pinecone-style filter against ``schema`` and compile it.

    Parameters
    ----------
    filter : dict or None
        The filter (grammar and semantics in the module docstring).
    schema : mapping of str to str
        The collection's field types (see :data:`gpusearch.metadata.FIELD_TYPES`).

    Returns
    -------
    CompiledFilter or None
        ``None`` when ``filter`` is ``None`` or ``{}`` (no filtering).

    Raises
    ------
    TypeError
        The filter or an operand has the wrong type.
    ValueError
        An unknown operator or field, or an operand with a bad value.

    Examples
    --------
    >>> import pyarrow as pa
    >>> schema = {"genre": "string", "year": "int", "tags": "string_list"}
    >>> f = compile_filter({"genre": "drama", "year": {"$gte": 2019, "$lt": 2022}}, schema)
    >>> f.mask(pa.table({"genre": ["drama", "drama", "news"], "year": [2018, 2020, 2020]})).tolist()
    [False, True, False]
    >>> compile_filter({"year": {"$regex": "^19"}}, schema)
    Traceback (most recent call last):
    ...
    gpusearch.errors.InvalidArgumentError: unknown filter operator '$regex' for field 'year'; supported operators: $eq, $ne, $gt, $gte, $lt, $lte, $in, $nin, $exists, $and, $or
    """
    if filter is None:
        return None
    if not isinstance(filter, Mapping):
        raise InvalidTypeError(f"filter must be a dict, got {type(filter).__name__} {_show(filter)}")
    if not filter:
        return None
    schema = check_schema(schema)
    compiler = _Compiler(schema)
    node = compiler.filter(filter, 0, "filter")
    text = json.dumps(filter, sort_keys=True, separators=(",", ":"))
    if isinstance(node, bool):
        return CompiledFilter(pc.scalar(node), frozenset(), {}, (), node, key=(text, ()))
    children = compiler.children
    columns = sorted(node.fields | {f for _, f, _, _ in node.lists})
    types = {name: FIELD_TYPES[children[name][1] if name in children else schema[name]] for name in columns}
    fields = sorted({children[c][0] if c in children else c for c in columns})
    return CompiledFilter(node.expr, frozenset(fields), types, node.lists, None,
                          key=(text, tuple((f, schema[f]) for f in fields)),
                          children={c: children[c] for c in columns if c in children})
