"""Per-record metadata to Arrow columns: accepted types, promotion, refusals, round trips."""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pyarrow as pa
import pytest

from gpusearch.metadata import (
    FIELD_TYPES,
    check_schema,
    concat,
    conform,
    empty_table,
    merge_schemas,
    normalize_metadata,
    rows_to_dicts,
    schema_of,
    take,
)


# -- accepted values -------------------------------------------------------------


@pytest.mark.parametrize(
    "value, ftype, stored",
    [
        ("drama", "string", "drama"),
        ("", "string", ""),
        ("日本語 ✓", "string", "日本語 ✓"),
        (2020, "int", 2020),
        (-(2**63), "int", -(2**63)),
        (2**63 - 1, "int", 2**63 - 1),
        (4.5, "float", 4.5),
        (-0.0, "float", -0.0),
        (True, "bool", True),
        (False, "bool", False),
        (["a", "b"], "string_list", ["a", "b"]),
        (("a", "b"), "string_list", ["a", "b"]),
        ([], "string_list", []),
        (np.int64(7), "int", 7),
        (np.float32(0.5), "float", 0.5),
        (np.bool_(True), "bool", True),
    ],
)
def test_each_type_is_stored_with_its_arrow_type(value, ftype, stored):
    table, schema = normalize_metadata([{"x": value}], 1, {})
    assert schema == {"x": ftype}
    assert table.schema.field("x").type == FIELD_TYPES[ftype]
    got = table.column("x").to_pylist()[0]
    assert got == stored and type(got) is type(stored)


def test_bool_is_not_taken_for_int():
    table, schema = normalize_metadata([{"b": True}, {"b": False}], 2, {})
    assert schema == {"b": "bool"}
    table, schema = normalize_metadata([{"b": 1}], 1, schema)  # a field of two kinds: each value keeps its own
    assert schema == {"b": "mixed"} and rows_to_dicts(table) == [{"b": 1}]
    assert type(rows_to_dicts(table)[0]["b"]) is int
    table, schema = normalize_metadata([{"n": 1}, {"n": True}], 2, {"n": "int"})
    assert schema == {"n": "mixed"} and [type(r["n"]) for r in rows_to_dicts(table)] == [int, bool]


@pytest.mark.parametrize(
    "records, schema",
    [
        ([{"genre": 5}], {"genre": "string"}),
        ([{}, {"year": "x"}], {"year": "int"}),
        ([{"t": ["a"]}], {"t": "string"}),
        ([{"a": "x"}, {"a": 1}], {}),
        ([{"a": "x"}, {"a": 1}, {"a": 2.5}, {"a": True}, {"a": ("p", "q")}, {}], {}),
        ([{"a": 1}, {"a": 2.5}], {"a": "mixed"}),
    ],
)
def test_a_field_holding_values_of_several_kinds_is_mixed_and_keeps_each_value(records, schema):
    table, out = normalize_metadata(records, len(records), schema)
    (name,) = {k for r in records for k in r}
    assert out[name] == "mixed" and schema_of(table) == out
    assert table.column(name).type == FIELD_TYPES["mixed"]
    got = rows_to_dicts(table)
    want = [{k: list(v) if isinstance(v, tuple) else v for k, v in r.items()} for r in records]
    assert got == want
    assert [type(g.get(name)) for g in got] == [type(w.get(name)) for w in want]  # 1 stays int beside 2.5


def test_a_typed_column_joins_a_mixed_field_as_it_was_written():
    ints, schema = normalize_metadata([{"x": 3}, {}], 2, {})
    floats, schema = normalize_metadata([{"x": 2.5}], 1, schema)  # int widens to float, as before
    assert schema == {"x": "float"}
    texts, schema = normalize_metadata([{"x": "three"}, {"x": 4}], 2, schema)
    assert schema == {"x": "mixed"}
    whole = concat([ints, floats, texts], schema)
    assert rows_to_dicts(whole) == [{"x": 3}, {}, {"x": 2.5}, {"x": "three"}, {"x": 4}]
    assert merge_schemas({"x": "int"}, {"x": "string"}) == {"x": "mixed"}
    assert merge_schemas({"x": "mixed"}, {"x": "float"}) == {"x": "mixed"}
    assert conform(ints, {"x": "mixed"}).column("x").null_count == 1  # missing stays missing


def test_missing_values_are_null_and_columns_follow_the_schema_order():
    records = [{"genre": "drama"}, None, {}, {"year": 2020, "genre": "news"}]
    table, schema = normalize_metadata(records, 4, {"year": "int", "other": "string"})
    assert schema == {"year": "int", "other": "string", "genre": "string"}
    assert table.column_names == ["year", "genre"]  # only fields present in this batch
    assert table.to_pylist() == [
        {"year": None, "genre": "drama"},
        {"year": None, "genre": None},
        {"year": None, "genre": None},
        {"year": 2020, "genre": "news"},
    ]


def test_non_dict_mappings_and_tuple_input_are_accepted():
    table, schema = normalize_metadata((OrderedDict(a=1), None), 2, {})
    assert schema == {"a": "int"} and table.column("a").to_pylist() == [1, None]


# -- int/float compatibility -----------------------------------------------------


def test_int_field_receiving_a_float_becomes_float():
    schema = {"year": "int"}
    table, out = normalize_metadata([{"year": 2020.5}, {"year": 2021}], 2, schema)
    assert out == {"year": "float"}
    assert schema == {"year": "int"}  # the caller's schema is left alone
    assert table.column("year").type == pa.float64()
    assert table.column("year").to_pylist() == [2020.5, 2021.0]


def test_ints_and_floats_in_one_batch_make_a_float_field():
    table, out = normalize_metadata([{"x": 1}, {"x": 2.5}], 2, {})
    assert out == {"x": "float"} and table.column("x").to_pylist() == [1.0, 2.5]


def test_ints_written_to_a_float_field_are_stored_as_floats():
    table, out = normalize_metadata([{"x": 3}, {"x": 2**60 + 1}], 2, {"x": "float"})
    assert out == {"x": "float"}
    assert table.column("x").to_pylist() == [3.0, float(2**60 + 1)]


# -- refusals -------------------------------------------------------------------


@pytest.mark.parametrize(
    "records, schema, error, pattern",
    [
        ([{"a": None}], {}, TypeError, r"field 'a' in record 0 is None; null values are not stored"),
        ([{"b": 1}, {"a": 1, "c": None}], {}, TypeError, r"field 'c' in record 1 is None"),
        ([{"a": float("nan")}], {}, ValueError, r"field 'a' in record 0 holds nan; float values must be finite"),
        ([{"a": 1.0}, {"a": float("inf")}], {}, ValueError, r"field 'a' in record 1 holds inf"),
        ([{"a": 1}, {"a": -math.inf}], {}, ValueError, r"field 'a' in record 1 holds -inf"),
        ([{"a": 2**63}], {}, ValueError, r"field 'a' in record 0 holds 9223372036854775808, outside the int64 range"),
        ([{"a": 1.5}, {"a": -(2**63) - 1}], {}, ValueError, r"field 'a' in record 1 holds -9223372036854775809, outside"),
        ([{"a": {"b": 1}}], {}, TypeError, r"field 'a' in record 0 has a dict value .*nested objects are not supported"),
        ([{"a": {1, 2}}], {}, TypeError, r"field 'a' in record 0 has a set value"),
        ([{"a": b"x"}], {}, TypeError, r"field 'a' in record 0 has a bytes value"),
        ([{"a": ["x"]}, {"a": ["y", 3]}], {}, TypeError, r"field 'a' in record 1 is a list holding int 3; lists may only hold strings"),
        ([{"a": [["x"]]}], {}, TypeError, r"lists may only hold strings"),
        ([{"a": [None]}], {}, TypeError, r"is a list holding NoneType"),
        ([{1: "x"}], {}, TypeError, r"metadata keys must be strings, got int 1 in record 0"),
        ([{}, {"": "x"}], {}, ValueError, r"keys must be non-empty strings, got '' in record 1"),
        ([{"$eq": "x"}], {}, ValueError, r"must not start with '\$'.*got '\$eq' in record 0"),
        ([{"a": "\ud800"}], {}, ValueError, r"field 'a' in record 0 holds text that is not valid UTF-8"),
        (["genre"], {}, TypeError, r"metadata record 0 must be a dict or None, got str"),
        ([{"a": 1}, [("a", 1)]], {}, TypeError, r"metadata record 1 must be a dict or None, got list"),
    ],
)
def test_bad_metadata_is_refused_with_a_message(records, schema, error, pattern):
    with pytest.raises(error, match=pattern):
        normalize_metadata(records, len(records), schema)


@pytest.mark.parametrize(
    "metadata, n, error, pattern",
    [
        ([{"a": 1}], 2, ValueError, r"one entry per record \(2\), got 1"),
        ({"a": 1}, 1, TypeError, r"metadata must be a list with one dict \(or None\) per record, got dict"),
        ("abc", 3, TypeError, r"got str"),
        ([{}], -1, ValueError, r"n must be >= 0, got -1"),
        ([{}], 1.0, TypeError, r"n must be an int, got float"),
    ],
)
def test_bad_batch_shape_is_refused(metadata, n, error, pattern):
    with pytest.raises(error, match=pattern):
        normalize_metadata(metadata, n, {})


def test_bad_schema_is_refused():
    with pytest.raises(ValueError, match=r"schema field 'a' has unknown type 'integer'; expected one of 'string', 'int'"):
        normalize_metadata([{"a": 1}], 1, {"a": "integer"})
    with pytest.raises(TypeError, match=r"schema must be a mapping"):
        check_schema(["a"])


def test_input_schema_is_never_mutated_even_on_error():
    schema = {"year": "int"}
    normalize_metadata([{"year": 1.5, "genre": "x"}], 1, schema)
    with pytest.raises(ValueError):
        normalize_metadata([{"new": "x", "year": float("nan")}], 1, schema)
    normalize_metadata([{"year": "now mixed"}], 1, schema)
    assert schema == {"year": "int"}


# -- zero columns ---------------------------------------------------------------


@pytest.mark.parametrize("metadata", [None, [None, None, None], [{}, {}, None]])
def test_no_metadata_gives_n_rows_and_no_columns(metadata):
    table, schema = normalize_metadata(metadata, 3, {"year": "int"})
    assert (table.num_rows, table.num_columns) == (3, 0)
    assert schema == {"year": "int"}
    assert rows_to_dicts(table, [0, 2]) == [{}, {}]
    assert conform(table, schema).to_pylist() == [{"year": None}] * 3


def test_zero_column_tables_keep_their_rows_through_take_slice_and_concat():
    t = empty_table(5)
    assert take(t, [0, 4, 4]).num_rows == 3
    assert t.slice(1, 2).num_rows == 2
    assert concat([t, empty_table(2)], {}).num_rows == 7
    both = concat([t, normalize_metadata([{"a": 1}], 1, {})[0]], {"a": "int"})
    assert both.column("a").to_pylist() == [None] * 5 + [1]
    assert normalize_metadata([], 0, {})[0].num_rows == 0


# -- conform, concat, merge -------------------------------------------------------


def test_concat_of_tables_with_different_columns():
    a, s = normalize_metadata([{"year": 2020}, {"genre": "drama"}], 2, {})
    b, s = normalize_metadata([{"year": 2.5, "tags": ["x"]}], 1, s)
    c, s = normalize_metadata(None, 2, s)
    out = concat([a, b, c], s)
    assert s == {"year": "float", "genre": "string", "tags": "string_list"}
    assert out.schema == pa.schema([("year", pa.float64()), ("genre", pa.string()), ("tags", pa.list_(pa.string()))])
    assert rows_to_dicts(out, range(5)) == [{"year": 2020.0}, {"genre": "drama"}, {"year": 2.5, "tags": ["x"]}, {}, {}]
    assert concat([], s).num_rows == 0 and concat([], s).column_names == list(s)


def test_conform_promotes_large_ints_and_refuses_incompatible_columns():
    table = pa.table({"x": pa.array([2**62 + 1, None], pa.int64())})
    assert conform(table, {"x": "float"}).column("x").to_pylist() == [float(2**62 + 1), None]
    with pytest.raises(ValueError, match=r"column 'x' has type int64, which cannot become the schema's 'string'"):
        conform(table, {"x": "string"})
    with pytest.raises(ValueError, match=r"columns \['x'\] that are not in the schema"):
        conform(table, {"y": "int"})
    with pytest.raises(TypeError, match=r"table must be a pyarrow.Table, got list"):
        conform([], {})


def test_merge_schemas_and_schema_of():
    assert merge_schemas({"a": "int", "b": "string"}, {"a": "float", "c": "bool"}) == {"a": "float", "b": "string", "c": "bool"}
    assert merge_schemas({"b": "string"}, {"b": "bool"}) == {"b": "mixed"}
    table, schema = normalize_metadata([{"s": "x", "i": 1, "f": 1.5, "b": True, "l": ["x"]}], 1, {})
    assert schema_of(table) == schema
    parquet_style = pa.table({"l": pa.array([["x"]], pa.list_(pa.field("element", pa.string())))})
    assert schema_of(parquet_style) == {"l": "string_list"}
    assert conform(parquet_style, {"l": "string_list"}).column("l").type == FIELD_TYPES["string_list"]
    with pytest.raises(ValueError, match=r"column 'x' has Arrow type int32"):
        schema_of(pa.table({"x": pa.array([1], pa.int32())}))


# -- rows_to_dicts ----------------------------------------------------------------


def test_rows_to_dicts_round_trips_plain_python_values(rng):
    genres = ["drama", "news", "ä"]
    records = []
    for i in range(200):
        r = {}
        if rng.random() < 0.7:
            r["genre"] = genres[int(rng.integers(3))]
        if rng.random() < 0.7:
            r["year"] = int(rng.integers(-(2**40), 2**40))
        if rng.random() < 0.7:
            r["score"] = float(rng.normal())
        if rng.random() < 0.7:
            r["ok"] = bool(rng.random() < 0.5)
        if rng.random() < 0.7:
            r["tags"] = [genres[int(j)] for j in rng.integers(3, size=int(rng.integers(4)))]
        records.append(r or None)
    table, _ = normalize_metadata(records, len(records), {})
    rows = rng.permutation(len(records))[:50]
    got = rows_to_dicts(table, rows)
    assert got == [records[i] or {} for i in rows]
    for d in got:
        for key, ftype in (("year", int), ("score", float), ("ok", bool), ("tags", list)):
            if key in d:
                assert type(d[key]) is ftype
    assert rows_to_dicts(table, None) == [r or {} for r in records]
    assert rows_to_dicts(table, np.array([], dtype=np.int64)) == []


def test_rows_to_dicts_refuses_bad_positions():
    table, _ = normalize_metadata([{"a": 1}], 1, {})
    with pytest.raises(ValueError, match=r"row positions must be in \[0, 1\), got 1"):
        rows_to_dicts(table, [0, 1])
    with pytest.raises(ValueError, match=r"got -1"):
        rows_to_dicts(table, [-1])
    with pytest.raises(TypeError, match=r"integer row positions, got bool"):
        rows_to_dicts(table, [True])


def test_a_large_batch_builds_every_column(rng):
    n = 20_000
    years = rng.integers(1990, 2025, n)
    records = [{"genre": "drama" if i % 3 else "news", "year": int(years[i]), "score": i / 7} for i in range(n)]
    records[17] = None
    table, schema = normalize_metadata(records, n, {})
    assert schema == {"genre": "string", "year": "int", "score": "float"}
    assert table.num_rows == n and table.column("year").null_count == 1
    assert table.column("year").to_pylist()[18] == int(years[18])
