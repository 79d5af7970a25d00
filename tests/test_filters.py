"""Filter compilation: every operator per field type, missing values, validation, and a
property test against a small pure-Python evaluator of the documented semantics."""
from __future__ import annotations

import json

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpusearch.filters import CompiledFilter, compile_filter
from gpusearch.metadata import concat, conform, empty_table, normalize_metadata, rows_to_dicts

SCHEMA = {"genre": "string", "year": "int", "rating": "float", "free": "bool", "tags": "string_list"}

# Row 3 has no metadata at all; every other row lacks at least one field.
RECORDS = [
    {"genre": "drama", "year": 2019, "rating": 4.5, "free": True, "tags": ["a", "b"]},
    {"genre": "news", "year": 2021, "rating": 3.0, "free": False, "tags": []},
    {"genre": "comedy", "rating": 5.0, "tags": ["c"]},
    None,
    {"year": 2020, "free": True},
]


@pytest.fixture(scope="module")
def table():
    table, schema = normalize_metadata(RECORDS, len(RECORDS), SCHEMA)
    assert schema == SCHEMA
    return table


def rows(flt, table, schema=SCHEMA):
    return np.flatnonzero(compile_filter(flt, schema).mask(table)).tolist()


# -- operators per field type -----------------------------------------------------

CASES = [
    # string
    ({"genre": "drama"}, [0]),
    ({"genre": {"$eq": "drama"}}, [0]),
    ({"genre": {"$ne": "drama"}}, [1, 2, 3, 4]),
    ({"genre": {"$gt": "drama"}}, [1]),
    ({"genre": {"$gte": "drama"}}, [0, 1]),
    ({"genre": {"$lt": "drama"}}, [2]),
    ({"genre": {"$lte": "drama"}}, [0, 2]),
    ({"genre": {"$in": ["drama", "news"]}}, [0, 1]),
    ({"genre": {"$nin": ["drama", "news"]}}, [2, 3, 4]),
    ({"genre": {"$exists": True}}, [0, 1, 2]),
    ({"genre": {"$exists": False}}, [3, 4]),
    # int
    ({"year": 2019}, [0]),
    ({"year": {"$ne": 2019}}, [1, 2, 3, 4]),
    ({"year": {"$gt": 2019}}, [1, 4]),
    ({"year": {"$gte": 2020}}, [1, 4]),
    ({"year": {"$lt": 2021}}, [0, 4]),
    ({"year": {"$lte": 2019}}, [0]),
    ({"year": {"$in": [2019, 2020]}}, [0, 4]),
    ({"year": {"$nin": [2019, 2020]}}, [1, 2, 3]),
    ({"year": {"$exists": True}}, [0, 1, 4]),
    # int field, float operands: compared as numbers
    ({"year": 2019.0}, [0]),
    ({"year": 2019.5}, []),
    ({"year": {"$ne": 2019.5}}, [0, 1, 2, 3, 4]),
    ({"year": {"$gt": 2019.5}}, [1, 4]),
    ({"year": {"$gte": 2019.5}}, [1, 4]),
    ({"year": {"$lt": 2020.5}}, [0, 4]),
    ({"year": {"$lte": 2020.5}}, [0, 4]),
    ({"year": {"$gt": -1e300}}, [0, 1, 4]),
    ({"year": {"$lt": 1e300}}, [0, 1, 4]),
    ({"year": {"$gt": 1e300}}, []),
    ({"year": {"$in": [2019.0, 2020.5]}}, [0]),
    ({"year": {"$nin": [2019.5]}}, [0, 1, 2, 3, 4]),
    # float
    ({"rating": 4.5}, [0]),
    ({"rating": 5}, [2]),
    ({"rating": {"$ne": 3}}, [0, 2, 3, 4]),
    ({"rating": {"$gt": 4.5}}, [2]),
    ({"rating": {"$gte": 4.5}}, [0, 2]),
    ({"rating": {"$lt": 4}}, [1]),
    ({"rating": {"$lte": 4.5}}, [0, 1]),
    ({"rating": {"$in": [3, 5.0]}}, [1, 2]),
    ({"rating": {"$nin": [3, 5.0]}}, [0, 3, 4]),
    ({"rating": {"$exists": False}}, [3, 4]),
    # bool
    ({"free": True}, [0, 4]),
    ({"free": {"$eq": False}}, [1]),
    ({"free": {"$ne": True}}, [1, 2, 3]),
    ({"free": {"$in": [True, False]}}, [0, 1, 4]),
    ({"free": {"$nin": [True]}}, [1, 2, 3]),
    ({"free": {"$exists": True}}, [0, 1, 4]),
    # string_list: any element
    ({"tags": "a"}, [0]),
    ({"tags": {"$eq": "c"}}, [2]),
    ({"tags": {"$ne": "a"}}, [1, 2, 3, 4]),
    ({"tags": {"$in": ["b", "c"]}}, [0, 2]),
    ({"tags": {"$nin": ["b", "c"]}}, [1, 3, 4]),
    ({"tags": {"$in": ["zzz"]}}, []),
    ({"tags": {"$exists": True}}, [0, 1, 2]),  # an empty list is present
    ({"tags": {"$exists": False}}, [3, 4]),
    # several operators on one field, implicit AND across fields
    ({"year": {"$gte": 2019, "$lt": 2021}}, [0, 4]),
    ({"year": {"$gt": 2018}, "free": True}, [0, 4]),
    ({"genre": {"$ne": "news"}, "year": {"$exists": True}}, [0, 4]),
    ({"tags": {"$in": ["a", "c"], "$ne": "b"}}, [2]),
    # $exists on a field the collection has never seen
    ({"director": {"$exists": True}}, []),
    ({"director": {"$exists": False}}, [0, 1, 2, 3, 4]),
    # logical operators
    ({"$or": [{"genre": "news"}, {"free": True}]}, [0, 1, 4]),
    ({"$and": [{"year": {"$gte": 2019}}, {"year": {"$lte": 2020}}]}, [0, 4]),
    ({"$or": [{"$and": [{"genre": "drama"}, {"free": True}]}, {"rating": {"$gte": 5}}]}, [0, 2]),
    ({"$and": [{"$or": [{"tags": "a"}, {"tags": "c"}]}, {"rating": {"$gt": 4.6}}]}, [2]),
    ({"$or": [{}, {"genre": "none"}]}, [0, 1, 2, 3, 4]),
    ({"$and": [{}]}, [0, 1, 2, 3, 4]),
    ({"genre": {"$exists": True}, "$or": [{"year": 2021}, {"rating": 5.0}]}, [1, 2]),
    ({"$or": [{"director": {"$exists": True}}, {"year": 2020}]}, [4]),
]


@pytest.mark.parametrize("flt, expected", CASES, ids=[str(c[0]) for c in CASES])
def test_operator_semantics(table, flt, expected):
    assert rows(flt, table) == expected


def test_none_and_empty_filter_mean_no_filtering():
    assert compile_filter(None, SCHEMA) is None
    assert compile_filter({}, SCHEMA) is None


def test_compiled_filter_exposes_expression_and_fields(table):
    f = compile_filter({"year": {"$gt": 2019}, "$or": [{"tags": "a"}, {"director": {"$exists": False}}]}, SCHEMA)
    assert isinstance(f, CompiledFilter)
    assert f.fields == frozenset({"year"})  # the $or folded to true; "director" has no column
    assert isinstance(f.expression, pa.compute.Expression)
    assert "year" in str(f.expression)
    g = compile_filter({"tags": {"$in": ["a"]}, "genre": "drama"}, SCHEMA)
    assert g.fields == frozenset({"tags", "genre"})
    assert "$list0" in str(g.expression)


def test_constant_filters_still_mask(table):
    f = compile_filter({"director": {"$exists": True}}, SCHEMA)
    assert f.mask(table).tolist() == [False] * 5
    assert f.mask(empty_table(3)).tolist() == [False] * 3


# -- tables that do not match the schema exactly ----------------------------------


def test_columns_missing_from_the_table_count_as_missing_values():
    table = pa.table({"genre": ["drama", "news"]})
    assert rows({"year": {"$gt": 0}}, table) == []
    assert rows({"year": {"$ne": 1}}, table) == [0, 1]
    assert rows({"tags": {"$nin": ["a"]}}, table) == [0, 1]
    assert rows({"tags": "a"}, table) == []
    assert rows({"free": {"$exists": False}, "genre": "news"}, table) == [1]
    assert rows({"year": {"$exists": False}}, empty_table(4)) == [0, 1, 2, 3]


def test_int_column_of_a_field_now_float_is_read_as_float():
    table = pa.table({"rating": pa.array([1, 2**62 + 1, None], pa.int64())})
    assert rows({"rating": {"$gte": 2}}, table) == [1]
    assert rows({"rating": 1.0}, table) == [0]


def test_mask_takes_record_batches_chunked_tables_and_empty_tables(table):
    f = compile_filter({"year": {"$gte": 2020}, "tags": {"$nin": ["zzz"]}}, SCHEMA)
    assert f.mask(table.to_batches()[0]).tolist() == [False, True, False, False, True]
    chunked = pa.concat_tables([table.slice(0, 2), table.slice(2, 1), table.slice(3)])
    assert chunked.column("tags").num_chunks == 3
    assert f.mask(chunked).tolist() == [False, True, False, False, True]
    assert f.mask(table.slice(1, 0)).shape == (0,)
    assert f.mask(table).dtype == np.bool_
    with pytest.raises(TypeError, match=r"table must be a pyarrow.Table or RecordBatch, got dict"):
        f.mask({"year": [1]})


def test_list_predicates_on_sliced_and_chunked_lists():
    records = [{"t": ["x"]}, {"t": ["y", "z"]}, None, {"t": []}, {"t": ["z"]}, {"t": ["x", "x"]}]
    table, schema = normalize_metadata(records, len(records), {})
    chunked = pa.concat_tables([table.slice(0, 1), table.slice(1, 3), table.slice(4)])
    for t in (table, chunked, chunked.slice(1)):
        offset = len(records) - t.num_rows
        want = [i - offset for i in (1, 4) if i >= offset]
        assert rows({"t": {"$in": ["z"]}}, t, schema) == want
        want_not = [i - offset for i in (0, 2, 3, 5) if i >= offset]
        assert rows({"t": {"$nin": ["z"]}}, t, schema) == want_not


def test_exact_comparison_of_floats_with_ints_beyond_2_to_the_53():
    table = pa.table({"x": pa.array([2.0**53, 2.0**53 + 2, 2.0**53 + 4], pa.float64())})
    schema = {"x": "float"}
    below = 2**53 + 1  # not a float64; its nearest float, 2**53, lies below it
    assert rows({"x": below}, table, schema) == []
    assert rows({"x": {"$ne": below}}, table, schema) == [0, 1, 2]
    assert rows({"x": {"$gt": below}}, table, schema) == [1, 2]
    assert rows({"x": {"$gte": below}}, table, schema) == [1, 2]
    assert rows({"x": {"$lt": below}}, table, schema) == [0]
    assert rows({"x": {"$lte": below}}, table, schema) == [0]
    assert rows({"x": {"$in": [below, 2**53 + 2]}}, table, schema) == [1]
    above = 2**53 + 3  # nearest float is 2**53 + 4, above it
    assert rows({"x": {"$gt": above}}, table, schema) == [2]
    assert rows({"x": {"$gte": above}}, table, schema) == [2]
    assert rows({"x": {"$lt": above}}, table, schema) == [0, 1]
    assert rows({"x": {"$lte": above}}, table, schema) == [0, 1]
    assert rows({"x": {"$nin": [above]}}, table, schema) == [0, 1, 2]


def test_int_bounds_at_the_edge_of_int64():
    table = pa.table({"n": pa.array([-(2**63), 0, 2**63 - 1], pa.int64())})
    schema = {"n": "int"}
    assert rows({"n": 2**63 - 1}, table, schema) == [2]
    assert rows({"n": {"$lt": -9.2e18}}, table, schema) == [0]
    assert rows({"n": {"$gte": 9.2e18}}, table, schema) == [2]
    assert rows({"n": {"$lt": 2.0**63}}, table, schema) == [0, 1, 2]  # 2.0**63 is just past int64
    # Bounds beyond int64 on either side:
    assert rows({"n": {"$lt": -9.3e18}}, table, schema) == []
    assert rows({"n": {"$gt": -9.3e18}}, table, schema) == [0, 1, 2]
    assert rows({"n": {"$gte": 9.3e18}}, table, schema) == []
    assert rows({"n": {"$lte": 9.3e18}}, table, schema) == [0, 1, 2]


# -- validation -----------------------------------------------------------------

ERRORS = [
    (["genre"], TypeError, r"filter must be a dict, got list"),
    ("genre", TypeError, r"filter must be a dict, got str"),
    ({"year": {"$regex": "^19"}}, ValueError,
     r"unknown filter operator '\$regex' for field 'year'; supported operators: \$eq, \$ne, \$gt, \$gte, \$lt, \$lte, \$in, \$nin, \$exists, \$and, \$or"),
    ({"$foo": []}, ValueError, r"unknown filter operator '\$foo'; supported operators: \$eq"),
    ({"$eq": 1}, ValueError, r"operator \$eq must be applied to a field"),
    # a field no record has still gets its operand checked
    ({"director": None}, TypeError, r"\$eq on field 'director' needs a string, number or bool, got NoneType None"),
    ({"$or": [{"director": {"$in": "x"}}]}, TypeError, r"\$in on field 'director' needs a list of values, got str"),
    ({"director": {"$in": []}}, ValueError, r"\$in on field 'director' needs a non-empty list"),
    ({"director": {"$gt": True}}, TypeError, r"\$gt on field 'director' needs a number or a string, got bool"),
    ({"director": {"$in": [1, "a"]}}, TypeError, r"\$in on field 'director' needs values of one kind"),
    ({"year": {"$gt": "x"}}, TypeError, r"\$gt on int field 'year' needs a number \(int or float\), got str 'x'"),
    ({"year": True}, TypeError, r"\$eq on int field 'year' needs a number \(int or float\), got bool True"),
    ({"genre": 5}, TypeError, r"\$eq on string field 'genre' needs a string, got int 5"),
    ({"genre": None}, TypeError, r"\$eq on string field 'genre' needs a string, got NoneType None"),
    ({"free": 1}, TypeError, r"\$eq on bool field 'free' needs a bool \(true or false\), got int 1"),
    ({"tags": ["a", "b"]}, TypeError, r"\$eq on string_list field 'tags' needs a string, got list .*use \$in"),
    ({"free": {"$gt": True}}, ValueError, r"\$gt is not supported on bool field 'free'; use \$eq, \$ne, \$in, \$nin or \$exists"),
    ({"tags": {"$lte": "a"}}, ValueError, r"\$lte is not supported on string_list field 'tags'"),
    ({"year": {"$in": 2019}}, TypeError, r"\$in on field 'year' needs a list of values, got int 2019"),
    ({"year": {"$nin": []}}, ValueError, r"\$nin on field 'year' needs a non-empty list of values, got \[\]"),
    ({"genre": {"$in": ["a", 1]}}, TypeError, r"\$in on field 'genre' needs values of one kind, got a mix of str, int"),
    ({"year": {"$in": [1, True]}}, TypeError, r"needs values of one kind, got a mix of int, bool"),
    ({"genre": {"$in": ["a", None]}}, TypeError, r"got a mix of str, NoneType"),
    ({"year": {"$in": ["a"]}}, TypeError, r"\$in on int field 'year' needs a number"),
    ({"$and": {"year": 1}}, TypeError, r"\$and needs a list of filters, got dict"),
    ({"$or": []}, ValueError, r"\$or needs a non-empty list of filters, got \[\]"),
    ({"$or": ["genre"]}, TypeError, r"each item of \$or must be a dict, got str 'genre'"),
    ({"$and": [{"year": {"$or": [{}]}}]}, ValueError, r"\$or cannot be used inside the condition for field 'year'"),
    ({"year": {"$eq": 1, "x": 2}}, ValueError, r"condition for field 'year' mixes operators \['\$eq'\] with other keys \['x'\]"),
    ({"year": {"x": 2}}, TypeError, r"field 'year' must map to a value or an object of operators.*nested objects are not supported"),
    ({"year": {}}, ValueError, r"condition for field 'year' is an empty object"),
    ({"year": {"$exists": 1}}, TypeError, r"\$exists for field 'year' needs true or false, got int 1"),
    ({"director": {"$exists": "yes"}}, TypeError, r"\$exists for field 'director' needs true or false, got str"),
    ({"rating": float("nan")}, ValueError, r"\$eq operand for field 'rating' must be a finite number, got nan"),
    ({"year": {"$lt": math.inf}}, ValueError, r"\$lt operand for field 'year' must be a finite number, got inf"),
    ({"rating": {"$in": [1.0, float("nan")]}}, ValueError, r"\$in operand for field 'rating' must be a finite number, got nan"),
    ({"year": 2**63}, ValueError, r"\$eq operand for field 'year' must fit in int64, got 9223372036854775808"),
    ({1: "x"}, TypeError, r"filter keys must be strings \(field names or operators\), got int 1"),
    ({"genre": "\ud800"}, ValueError, r"\$eq operand for field 'genre' is not valid UTF-8 text"),
]


@pytest.mark.parametrize("flt, error, pattern", ERRORS, ids=[str(e[0]) for e in ERRORS])
def test_bad_filters_are_refused_with_a_message(flt, error, pattern):
    with pytest.raises(error, match=pattern):
        compile_filter(flt, SCHEMA)


@pytest.mark.parametrize("flt, matches", [
    ({"director": "x"}, False), ({"director": {"$gt": 3}}, False), ({"director": {"$in": ["a", "b"]}}, False),
    ({"director": {"$exists": True}}, False), ({"director": {"$ne": "x"}}, True), ({"director": {"$nin": [1, 2]}}, True),
    ({"director": {"$exists": False}}, True), ({"$or": [{"director": "x"}, {"year": 2020}]}, [False, True, False]),
    ({"$and": [{"director": {"$ne": 1}}, {"year": 2020}]}, [False, True, False]),
])
def test_a_field_no_record_has_is_missing_everywhere(flt, matches):
    """Pinecone's answer (and the missing-value rule): $ne, $nin and $exists: false pass, the rest fail."""
    table = pa.table({"year": [2019, 2020, 2021]})
    for schema in (SCHEMA, {}):
        if schema == {} and "year" in json.dumps(flt):
            continue
        f = compile_filter(flt, schema)
        want = matches if isinstance(matches, list) else [matches] * 3
        assert f.mask(table).tolist() == want, (flt, schema)


def test_deep_nesting_is_refused():
    flt: dict = {"year": 1}
    for _ in range(40):
        flt = {"$and": [flt]}
    with pytest.raises(ValueError, match=r"nests \$and/\$or deeper than 32 levels"):
        compile_filter(flt, SCHEMA)


def test_bad_schema_is_refused():
    with pytest.raises(ValueError, match=r"schema field 'year' has unknown type 'integer'"):
        compile_filter({"year": 1}, {"year": "integer"})


def test_column_of_an_incompatible_type_is_refused():
    f = compile_filter({"year": 1}, SCHEMA)
    with pytest.raises(ValueError, match=r"metadata column 'year' has type string, but the filter was compiled for int64"):
        f.mask(pa.table({"year": ["1"]}))


# -- property test against a pure-Python evaluator --------------------------------


def reference(flt: dict, record: dict) -> bool:
    """The documented semantics, on plain Python values."""
    for key, cond in flt.items():
        if key == "$and":
            ok = all(reference(f, record) for f in cond)
        elif key == "$or":
            ok = any(reference(f, record) for f in cond)
        else:
            ops = cond if isinstance(cond, dict) else {"$eq": cond}
            ok = all(leaf(record, key, op, operand) for op, operand in ops.items())
        if not ok:
            return False
    return True


def _kind(v) -> str:
    return "bool" if isinstance(v, bool) else "string" if isinstance(v, str) else "number"


def _equal(x, v) -> bool:
    """Values of different kinds never match (True is not 1, "5" is not 5): a mixed field's rule."""
    return _kind(x) == _kind(v) and x == v


def leaf(record: dict, field: str, op: str, operand) -> bool:
    if op == "$exists":
        return (field in record) == operand
    if field not in record:
        return op in ("$ne", "$nin")
    x = record[field]
    if isinstance(x, list):  # any element
        values = [operand] if op in ("$eq", "$ne") else operand
        hit = any(_equal(e, v) for e in x for v in values)
        return hit if op in ("$eq", "$in") else not hit
    if op == "$eq":
        return _equal(x, operand)
    if op == "$ne":
        return not _equal(x, operand)
    if op == "$in":
        return any(_equal(x, v) for v in operand)
    if op == "$nin":
        return not any(_equal(x, v) for v in operand)
    if _kind(x) != _kind(operand):
        return False
    return {"$gt": x > operand, "$gte": x >= operand, "$lt": x < operand, "$lte": x <= operand}[op]


# "absent" is in the schema but no record ever has it; "never" is not in the schema.
PROP_SCHEMA = {"s": "string", "i": "int", "f": "float", "b": "bool", "l": "string_list", "m": "mixed", "absent": "int"}
STRINGS = st.sampled_from(["", "a", "ab", "b", "B", "é", "日本", "a\x00"])
# Small domains so that values collide with operands; edge values where ints and floats part ways.
INTS = st.one_of(st.integers(-3, 3), st.sampled_from([-(2**63), 2**63 - 1, 2**53 + 1, 2**53 + 3, -(2**53) - 1]))
FLOATS = st.one_of(
    st.sampled_from([-2.5, -1.0, -0.0, 0.0, 0.5, 1.0, 2.0, 2.5, 2.0**53, 2.0**53 + 2, 2.0**53 + 4, 9.3e18, -9.3e18]),
    st.floats(allow_nan=False, allow_infinity=False),
)
NUMBERS = st.one_of(INTS, FLOATS)
STORED = {
    "s": STRINGS,
    "i": INTS,
    "f": st.one_of(FLOATS, st.integers(-3, 3)),  # ints in a float field are stored as floats
    "b": st.booleans(),
    "l": st.lists(STRINGS, max_size=3),
    "m": st.one_of(STRINGS, INTS, FLOATS, st.booleans(), st.lists(STRINGS, max_size=3)),  # each keeps its kind
}
OPERAND = {"s": STRINGS, "i": NUMBERS, "f": NUMBERS, "absent": NUMBERS, "b": st.booleans(), "l": STRINGS,
           "m": st.one_of(STRINGS, NUMBERS, st.booleans())}
OPS = {
    "s": ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"],
    "i": ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"],
    "f": ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"],
    "absent": ["$eq", "$ne", "$gt", "$lt", "$in", "$nin", "$exists"],
    "b": ["$eq", "$ne", "$in", "$nin", "$exists"],
    "l": ["$eq", "$ne", "$in", "$nin", "$exists"],
    "m": ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"],
    "never": ["$exists"],
}

records_strategy = st.lists(
    st.one_of(st.none(), st.fixed_dictionaries({}, optional=STORED)), min_size=0, max_size=40
)


def operand_for(field: str, op: str):
    if op == "$exists":
        return st.booleans()
    if field == "m" and op in ("$in", "$nin"):  # one kind per list
        return st.one_of(*(st.lists(kind, min_size=1, max_size=4) for kind in (STRINGS, NUMBERS, st.booleans())))
    if field == "m" and op in ("$gt", "$gte", "$lt", "$lte"):  # ordered kinds only
        return st.one_of(STRINGS, NUMBERS)
    if op in ("$in", "$nin"):
        return st.lists(OPERAND[field], min_size=1, max_size=4)
    return OPERAND[field]


def condition_for(field: str, max_ops: int = 2):
    ops = st.lists(st.sampled_from(OPS[field]), min_size=1, max_size=max_ops, unique=True)
    as_object = ops.flatmap(lambda chosen: st.fixed_dictionaries({op: operand_for(field, op) for op in chosen}))
    if field == "never":
        return as_object
    return st.one_of(OPERAND[field], as_object)  # a bare value is $eq


# One field, one operator: every leaf's semantics gets checked on its own.
leaf_filters = st.sampled_from(list(OPS)).flatmap(lambda f: st.fixed_dictionaries({f: condition_for(f, max_ops=1)}))

field_filters = st.lists(st.sampled_from(list(OPS)), min_size=1, max_size=2, unique=True).flatmap(
    lambda fields: st.fixed_dictionaries({f: condition_for(f) for f in fields})
)


def _extend(children):
    items = st.lists(st.one_of(children, st.just({})), min_size=1, max_size=3)
    return st.one_of(
        st.fixed_dictionaries({"$and": items}),
        st.fixed_dictionaries({"$or": items}),
        st.tuples(field_filters, items).map(lambda ab: {**ab[0], "$or": ab[1]}),
    )


filters_strategy = st.recursive(field_filters, _extend, max_leaves=8)


def check_against_reference(records, flt, split, full):
    n = len(records)
    split = min(split, n)
    # Two batches, so columns are chunked and may differ between the parts.
    a, schema = normalize_metadata(records[:split], split, PROP_SCHEMA)
    b, schema = normalize_metadata(records[split:], n - split, schema)
    assert schema == PROP_SCHEMA
    if full:
        table = concat([a, b], schema)
    else:  # only the columns some record has; "absent" is never among them
        present = [name for name in schema if name in a.column_names or name in b.column_names]
        table = concat([a, b], {name: schema[name] for name in present})
        assert "absent" not in table.column_names
    stored = rows_to_dicts(table, None)
    expected = [reference(flt, r) for r in stored]
    got = compile_filter(flt, schema).mask(table)
    assert got.dtype == np.bool_ and got.shape == (n,)
    assert got.tolist() == expected, (flt, stored)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=records_strategy, flt=leaf_filters, split=st.integers(0, 40), full=st.booleans())
def test_single_operator_masks_match_the_reference_evaluator(records, flt, split, full):
    check_against_reference(records, flt, split, full)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=records_strategy, flt=filters_strategy, split=st.integers(0, 40), full=st.booleans())
def test_nested_filter_masks_match_the_reference_evaluator(records, flt, split, full):
    check_against_reference(records, flt, split, full)


def test_reference_evaluator_agrees_on_the_fixed_cases(table):
    # Keeps the reference honest: it must reproduce the hand-written expectations.
    stored = rows_to_dicts(conform(table, SCHEMA), None)
    for flt, expected in CASES:
        assert [i for i, r in enumerate(stored) if reference(flt, r)] == expected, flt
