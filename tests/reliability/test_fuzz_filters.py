"""Fuzzing the filter compiler (gpusearch.filters).

Two properties:

1. Any JSON-like value given as a filter either compiles (and then masks any
   table without raising) or is refused with a ``TypeError``/``ValueError``
   whose message is ours: never a ``KeyError``, ``RecursionError``, a pyarrow
   error, or one of Python's own messages leaking through.
2. Well-formed filters over metadata tables of many physical layouts (chunked,
   sliced, record batches, missing columns, null-typed and ``list<null>``
   columns, int columns of float fields) give exactly the mask of a pure-Python
   evaluator written here from the module docstring of ``gpusearch.filters``.

The evaluator here is written independently of the one in tests/test_filters.py,
and the value domains lean on the places where Arrow and Python part ways:
-0.0 against 0.0, ints beyond 2**53 against floats, the int64 edges, code points
beyond the BMP, NUL characters.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gpusearch.filters import FIELD_OPERATORS, MAX_DEPTH, CompiledFilter, compile_filter
from gpusearch.metadata import FIELD_TYPES, empty_table

# -- 1. arbitrary JSON-like input -------------------------------------------------

SCHEMA = {"s": "string", "i": "int", "f": "float", "b": "bool", "l": "string_list"}

# Python's own messages that would mean an input reached code that did not expect it.
LEAKED = ("Exceeds the limit", "object is not", "unhashable", "has no attribute", "not subscriptable",
          "maximum recursion", "Arrow", "arrow", "unsupported operand", "object of type", "argument")

HUGE_INTS = [2**63, -(2**63) - 1, 2**64, 10**30, -(10**30), 10**400, 10**5000, -(10**5000)]


def _huge_int(i: int) -> int:
    return HUGE_INTS[i]


# Not sampled_from(HUGE_INTS): hypothesis reprs its strategies, and repr() refuses ints of
# more than 4300 digits.
huge_ints = st.integers(0, len(HUGE_INTS) - 1).map(_huge_int)
WEIRD_FLOATS = [math.nan, -math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324, 2.0**63, -(2.0**63)]
OPERATOR_NAMES = list(FIELD_OPERATORS) + [
    "$and", "$or", "$not", "$nor", "$EQ", "$In", "$", "$$", "$eq ", " $eq", "$and\x00", "$regex", "$list0",
]
FIELD_NAMES = list(SCHEMA) + ["absent", "never", "", " ", "s.x", "\ud800", "日本", "\x00"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    huge_ints,
    st.floats(),  # NaN and infinities included
    st.sampled_from(WEIRD_FLOATS),
    st.text(max_size=6),  # surrogates included
    st.sampled_from(["", "a", "\ud800", "\x00", "\U0010ffff"]),
)
keys = st.one_of(st.sampled_from(OPERATOR_NAMES), st.sampled_from(FIELD_NAMES), st.text(max_size=5))


def _json_like(children):
    return st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=4),
    )


json_values = st.recursive(scalars, _json_like, max_leaves=25)

# Shaped like filters, so that most inputs get past the first checks and into the leaves.
conditions = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(OPERATOR_NAMES), json_values, min_size=1, max_size=3),
)


def _filter_like(children):
    return st.one_of(
        st.dictionaries(st.sampled_from(["$and", "$or"]), st.lists(children, max_size=3), min_size=1, max_size=2),
        st.dictionaries(st.sampled_from(FIELD_NAMES + OPERATOR_NAMES), children, max_size=2),
    )


filter_like = st.recursive(
    st.dictionaries(st.sampled_from(FIELD_NAMES), conditions, min_size=1, max_size=3),
    _filter_like,
    max_leaves=12,
)


def _mask_table() -> pa.Table:
    return pa.table({
        "s": pa.array(["a", None, "b"], pa.string()),
        "i": pa.array([1, 2, None], pa.int64()),
        "f": pa.array([None, -0.0, 2.5], pa.float64()),
        "b": pa.array([True, None, False], pa.bool_()),
        "l": pa.array([["a"], [], None], pa.list_(pa.string())),
    })


MASK_TABLE = _mask_table()


def compile_or_refuse(flt):
    """Compile ``flt``; on success also mask a table. Returns the exception our code raised, if any."""
    try:
        compiled = compile_filter(flt, SCHEMA)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        assert message, f"{type(exc).__name__} with an empty message for {flt!r}"
        assert not any(word in message for word in LEAKED), f"message leaks an internal error: {message!r}"
        return exc
    assert compiled is None or isinstance(compiled, CompiledFilter)
    if compiled is not None:
        mask = compiled.mask(MASK_TABLE)
        assert mask.dtype == np.bool_ and mask.shape == (MASK_TABLE.num_rows,)
    return None


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(json_values)
@example({"s": 10**5000})
@example({"i": {"$in": [10**5000]}})
@example({"s": {"$exists": 10**5000}})
@example({"i": {"$eq": 1, 10**5000: 2}})
def test_any_json_value_compiles_or_is_refused_clearly(flt):
    compile_or_refuse(flt)


@FUZZ
@given(filter_like)
def test_filter_shaped_values_compile_or_are_refused_clearly(flt):
    compile_or_refuse(flt)


@FUZZ
@given(field=st.sampled_from(list(SCHEMA)), op=st.sampled_from(["$eq", "$ne", "$gt", "$in", "$nin", "$exists"]),
       value=json_values)
@example(field="s", op="$eq", value=10**5000)
@example(field="b", op="$in", value=[True, 10**5000])
@example(field="s", op="$exists", value=-(10**5000))
def test_operand_of_the_wrong_kind_is_a_type_error(field, op, value):
    """The module's error rule: an operand of the wrong kind is a TypeError, whatever its size."""
    if op == "$gt" and field in ("b", "l"):
        op = "$eq"  # $gt there is an unsupported operator (a ValueError), whatever the operand
    kind = {"s": str, "l": str, "i": (int, float), "f": (int, float), "b": bool}[field]
    if op == "$exists":
        wrong = not isinstance(value, bool)
    elif op in ("$in", "$nin"):
        wrong = not isinstance(value, list) or any(
            isinstance(v, bool) != (field == "b") or not isinstance(v, kind) for v in value
        )
    else:
        wrong = isinstance(value, bool) != (field == "b") or not isinstance(value, kind)
    exc = compile_or_refuse({field: {op: value}})
    if wrong and not (op in ("$in", "$nin") and value == []):
        assert isinstance(exc, TypeError), (field, op, value, exc)


@pytest.mark.parametrize("value", HUGE_INTS, ids=[f"{len(str(abs(v))) if v.bit_length() < 10000 else 'many'}-digits" for v in HUGE_INTS])
@pytest.mark.parametrize("field", ["i", "f"])
def test_ints_beyond_int64_are_value_errors_naming_the_field(field, value):
    for flt in ({field: value}, {field: {"$lt": value}}, {field: {"$nin": [1, value]}}):
        with pytest.raises(ValueError, match=rf"operand for field '{field}' must fit in int64") as info:
            compile_filter(flt, SCHEMA)
        assert len(str(info.value)) < 300  # the value is shown abbreviated, not as thousands of digits


def test_deep_nesting_everywhere_is_refused_without_recursion_errors():
    limit = sys.getrecursionlimit() * 3
    deep_and: dict = {"s": "a"}
    for _ in range(limit):
        deep_and = {"$and": [deep_and]}
    deep_or: dict = {"s": "a"}
    for _ in range(limit):
        deep_or = {"$or": [deep_or, {}]}
    deep_list: list = []
    for _ in range(limit):
        deep_list = [deep_list]
    deep_dict: dict = {}
    for _ in range(limit):
        deep_dict = {"$eq": deep_dict}
    with pytest.raises(ValueError, match=rf"deeper than {MAX_DEPTH} levels"):
        compile_filter(deep_and, SCHEMA)
    with pytest.raises(ValueError, match=rf"deeper than {MAX_DEPTH} levels"):
        compile_filter(deep_or, SCHEMA)
    for flt in ({"s": {"$in": deep_list}}, {"s": deep_list}, {"s": deep_dict}, {"$or": deep_list}, deep_list):
        assert isinstance(compile_or_refuse(flt), TypeError)
    # The deepest nesting allowed still compiles and evaluates.
    ok: dict = {"i": 1}
    for _ in range(MAX_DEPTH):
        ok = {"$or": [ok]}
    assert compile_filter(ok, SCHEMA).mask(MASK_TABLE).tolist() == [True, False, False]


# -- 2. well-formed filters against a reference evaluator --------------------------

# "a" is a field of a random type that no generated record has (it may still have a
# column of nulls); "never" is not in the schema at all ($exists only).
TYPES = ("string", "int", "float", "bool", "string_list")

STRINGS = st.sampled_from(["", "a", "A", "ab", "b", "a\x00", "\x00", "é", "e\u0301", "\uffff", "\U00010000",
                           "\U0010ffff", "日本", "z"])
INT_EDGES = [0, 1, -1, 2, 2**53, 2**53 + 1, -(2**53) - 1, 2**62 + 1, 2**63 - 1, -(2**63), -(2**63) + 1]
FLOAT_EDGES = [0.0, -0.0, 0.5, -0.5, 1.0, 2.0, 1.5, 2.0**53, 2.0**53 + 2, -(2.0**53), 2.0**63, -(2.0**63),
               9.2e18, 9.3e18, -9.3e18, 5e-324, -5e-324, 1e308, -1e308, 4503599627370495.5]
INTS = st.one_of(st.integers(-2, 2), st.sampled_from(INT_EDGES))
FLOATS = st.one_of(st.sampled_from([0.0, -0.0]), st.sampled_from(FLOAT_EDGES), st.floats(-3, 3, allow_nan=False).map(lambda x: round(x * 2) / 2),
                   st.floats(allow_nan=False, allow_infinity=False))
NUMBERS = st.one_of(INTS, FLOATS)
LISTS = st.lists(STRINGS, max_size=3)

STORED = {"string": STRINGS, "int": INTS, "float": st.one_of(FLOATS, INTS), "bool": st.booleans(), "string_list": LISTS}
OPERANDS = {"string": STRINGS, "int": NUMBERS, "float": NUMBERS, "bool": st.booleans(), "string_list": STRINGS}
OPS_BY_TYPE = {
    "string": FIELD_OPERATORS,
    "int": FIELD_OPERATORS,
    "float": FIELD_OPERATORS,
    "bool": ("$eq", "$ne", "$in", "$nin", "$exists"),
    "string_list": ("$eq", "$ne", "$in", "$nin", "$exists"),
}


def reference_mask(flt: dict, records: list[dict], schema: dict) -> list[bool]:
    return [matches(flt, record, schema) for record in records]


def matches(flt: dict, record: dict, schema: dict) -> bool:
    """The semantics the module docstring describes, on plain Python values."""
    results = []
    for key, cond in flt.items():
        if key == "$and":
            results.append(all(matches(sub, record, schema) for sub in cond))
        elif key == "$or":
            results.append(any(matches(sub, record, schema) for sub in cond))
        elif isinstance(cond, dict):
            results.append(all(leaf_matches(record.get(key), op, operand, schema.get(key)) for op, operand in cond.items()))
        else:
            results.append(leaf_matches(record.get(key), "$eq", cond, schema.get(key)))
    return all(results)


def leaf_matches(value, op: str, operand, ftype) -> bool:
    present = value is not None
    if op == "$exists":
        return present == operand
    if not present:  # MongoDB rules: a missing field fails everything but $ne and $nin
        return op in ("$ne", "$nin")
    if ftype == "float":
        value = float(value)  # stored as (or read as) the nearest float64
    if ftype == "string_list":
        wanted = operand if op in ("$in", "$nin") else [operand]
        hit = any(element == w for element in value for w in wanted)
        return not hit if op in ("$ne", "$nin") else hit
    if op == "$in":
        return any(value == v for v in operand)
    if op == "$nin":
        return all(value != v for v in operand)
    compare = {
        "$eq": lambda a, b: a == b, "$ne": lambda a, b: a != b,
        "$gt": lambda a, b: a > b, "$gte": lambda a, b: a >= b,
        "$lt": lambda a, b: a < b, "$lte": lambda a, b: a <= b,
    }[op]
    return compare(value, operand)


@st.composite
def schemas(draw):
    schema = {"s": "string", "i": "int", "f": "float", "b": "bool", "l": "string_list"}
    schema["a"] = draw(st.sampled_from(TYPES))
    return schema


def condition(draw, field: str, ftype: str | None):
    if ftype is None:  # a field the collection has never seen: only $exists is well formed
        return {"$exists": draw(st.booleans())}
    ops = draw(st.lists(st.sampled_from(OPS_BY_TYPE[ftype]), min_size=1, max_size=2, unique=True))
    if len(ops) == 1 and ops[0] == "$eq" and draw(st.booleans()):
        return draw(OPERANDS[ftype])  # a bare value is $eq
    cond = {}
    for op in ops:
        if op == "$exists":
            cond[op] = draw(st.booleans())
        elif op in ("$in", "$nin"):
            cond[op] = draw(st.lists(OPERANDS[ftype], min_size=1, max_size=4))
        else:
            cond[op] = draw(OPERANDS[ftype])
    return cond


@st.composite
def filters(draw, schema, depth=0):
    fields = list(schema)
    if draw(st.integers(0, 9)) == 0:
        fields.append("never")
    out = {}
    for field in draw(st.lists(st.sampled_from(fields), min_size=0 if depth else 1, max_size=2, unique=True)):
        out[field] = condition(draw, field, schema.get(field))
    if depth < 3:
        for op in draw(st.lists(st.sampled_from(["$and", "$or"]), max_size=2 - depth // 2, unique=True)):
            out[op] = draw(st.lists(filters(schema, depth + 1), min_size=1, max_size=3))
    return out


@st.composite
def records_for(draw, schema):
    n = draw(st.integers(0, 30))
    records = []
    for _ in range(n):
        record = {}
        for field, ftype in schema.items():
            if field != "a" and draw(st.integers(0, 3)):  # present in 3 records of 4
                record[field] = draw(STORED[ftype])
        records.append(record)
    return records


def column(field: str, ftype: str, values: list, layout: dict) -> pa.ChunkedArray | pa.Array:
    """One metadata column, in one of the physical forms mask() must accept."""
    if all(v is None for v in values) and layout["null_typed"]:
        return pa.nulls(len(values))  # a column Arrow built from nothing but missing values
    if ftype == "float" and layout["float_as_int"] and all(v is None or isinstance(v, int) for v in values):
        return pa.array(values, pa.int64())  # written while the field was still an int field
    if ftype == "float":
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if ftype == "string_list" and layout["list_null"] and all(v is None or v == [] for v in values):
        return pa.array(values, pa.list_(pa.null()))
    return pa.array(values, FIELD_TYPES[ftype])


@st.composite
def tables(draw, schema, records):
    """The records as a pyarrow Table or RecordBatch, laid out in some way that must not matter."""
    n = len(records)
    layout = {
        "null_typed": draw(st.booleans()),
        "float_as_int": draw(st.booleans()),
        "list_null": draw(st.booleans()),
    }
    arrays, names = [], []
    for field, ftype in schema.items():
        values = [r.get(field) for r in records]
        if all(v is None for v in values) and draw(st.booleans()):
            continue  # no column at all: every row lacks the field
        names.append(field)
        arrays.append(column(field, ftype, values, layout))
    if draw(st.booleans()):
        names.append("extra")  # a column no filter names is ignored
        arrays.append(pa.array(range(n), pa.int64()))
    order = draw(st.permutations(range(len(names))))
    names, arrays = [names[i] for i in order], [arrays[i] for i in order]
    table = pa.Table.from_arrays(arrays, names=names) if names else empty_table(n)
    # Cut into chunks (each a zero-copy slice with its own offset), maybe with empty chunks.
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=4)))
    if cuts and names:
        bounds = [0, *cuts, n]
        table = pa.concat_tables([table.slice(lo, hi - lo) for lo, hi in zip(bounds, bounds[1:])])
    offset = draw(st.integers(0, 2))  # rows the caller sliced off the front
    if offset and names:
        pad = pa.Table.from_arrays([pa.nulls(offset, table.schema.field(i).type) for i in range(len(names))], names=names)
        table = pa.concat_tables([pad, table]).slice(offset)
    if draw(st.booleans()) and names:
        combined = table.combine_chunks()
        batches = combined.to_batches()
        if len(batches) == 1:
            return batches[0]
    return table


@st.composite
def cases(draw):
    schema = draw(schemas())
    records = draw(records_for(schema))
    table = draw(tables(schema, records))
    flt = draw(filters(schema))
    return schema, records, table, flt


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
@example((dict(SCHEMA, a="int"), [{"f": -0.0}, {"f": 0.0}, {}], pa.table({"f": [-0.0, 0.0, None]}), {"f": {"$in": [0.0]}}))
@example((dict(SCHEMA, a="int"), [{"f": -0.0}, {"f": 0.0}, {}], pa.table({"f": [-0.0, 0.0, None]}), {"f": {"$nin": [-0.0]}}))
@example((dict(SCHEMA, a="int"), [{"i": 0}, {}], pa.table({"i": [0, None]}), {"i": {"$in": [-0.0]}}))
def test_masks_match_the_reference_evaluator(case):
    schema, records, table, flt = case
    compiled = compile_filter(flt, schema)
    got = compiled.mask(table) if compiled is not None else np.ones(len(records), dtype=bool)
    assert got.dtype == np.bool_ and got.shape == (len(records),)
    assert got.tolist() == reference_mask(flt, records, schema), (flt, records)
