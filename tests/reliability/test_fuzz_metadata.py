"""Fuzzing record metadata (gpusearch.metadata.normalize_metadata and Collection.upsert).

Properties:

1. Any JSON-like list of records (huge ints, NaN and infinities, nested objects,
   tuples, weird and non-string keys, lone surrogates) is either accepted or
   refused with a ``TypeError``/``ValueError`` whose message is ours: short, and
   never one of Python's or pyarrow's own messages leaking through (such as
   repr()'s "Exceeds the limit (4300 digits)" for a huge int).
2. Acceptance agrees with a reference written here from the module docstring
   of ``gpusearch.metadata``; an accepted batch reads back as given (ints of a
   float field as the nearest float, tuples as lists), and where every problem
   the reference sees is of one kind, the error is of that kind.
3. Through ``Collection.upsert`` and ``Collection.update``: a refused write
   leaves the collection as it was (len, schema, fetch of every id); an
   accepted one reads back as written.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import gpusearch as gs
from gpusearch.metadata import FIELD_TYPES, normalize_metadata, rows_to_dicts, schema_of

# Python's and pyarrow's own messages that would mean an input reached code that did not expect it.
LEAKED = ("Exceeds the limit", "object is not", "unhashable", "has no attribute", "not subscriptable",
          "maximum recursion", "Arrow", "arrow", "PyLong", "unsupported operand", "object of type",
          "argument", "codec", "surrogates not allowed", "Could not convert", "Expected bytes")
MAX_MESSAGE = 300

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
HUGE_INTS = [2**63, -(2**63) - 1, 2**64, 10**30, -(10**30), 10**400, 10**5000, -(10**5000)]


def _huge_int(i: int) -> int:
    return HUGE_INTS[i]


# Not sampled_from(HUGE_INTS): hypothesis reprs its strategies, and repr() refuses ints of
# more than 4300 digits.
huge_ints = st.integers(0, len(HUGE_INTS) - 1).map(_huge_int)
WEIRD_FLOATS = [math.nan, -math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324, 2.0**63, -(2.0**63)]
EDGE_INTS = [INT64_MIN, INT64_MAX, 2**53, 2**53 + 1, -(2**53) - 1, 0, -1]
FIELD_NAMES = ["a", "b", "c", "", "$a", "$", " ", "a.b", "\ud800", "日本", "\x00", "x\udfff"]

texts = st.one_of(st.text(max_size=5), st.sampled_from(["", "a", "\ud800", "\x00", "\U0010ffff", "b\udc80"]))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(EDGE_INTS),
    huge_ints,
    st.floats(),  # NaN and infinities included
    st.sampled_from(WEIRD_FLOATS),
    texts,
)
keys = st.one_of(
    st.sampled_from(FIELD_NAMES),
    st.text(max_size=4),
    st.integers(-2, 2),
    huge_ints,
    st.none(),
    st.floats(allow_nan=False),
    st.booleans(),
)


def _json_like(children):
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(keys, children, max_size=3),
    )


json_values = st.recursive(scalars, _json_like, max_leaves=12)
# Values that are mostly valid, so that batches often get past the first checks.
good_values = st.one_of(
    st.booleans(),
    st.integers(INT64_MIN, INT64_MAX),
    st.sampled_from(EDGE_INTS),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
    st.lists(st.text(max_size=3), max_size=3),
    st.lists(st.text(max_size=3), max_size=2).map(tuple),
)
values = st.one_of(good_values, good_values, json_values)
records = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["a", "b", "c"]), values, max_size=3),
    st.dictionaries(st.sampled_from(["a", "b", "c"]), values, max_size=3),
    st.dictionaries(keys, values, max_size=3),
    json_values,  # mostly not a dict at all
)
batches = st.lists(records, max_size=5)
schemas = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(list(FIELD_TYPES)), max_size=3)


# -- the reference, from the module docstring --------------------------------------

class Refused(Exception):
    def __init__(self, kinds: set):
        self.kinds = kinds


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _value_kind(v, problems: set) -> str | None:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        if not INT64_MIN <= v <= INT64_MAX:
            problems.add(ValueError)
        return "int"
    if isinstance(v, float):
        if not math.isfinite(v):
            problems.add(ValueError)
        return "float"
    if isinstance(v, str):
        if not _utf8(v):
            problems.add(ValueError)
        return "string"
    if isinstance(v, (list, tuple)):
        for x in v:
            if not isinstance(x, str):
                problems.add(TypeError)
            elif not _utf8(x):
                problems.add(ValueError)
        return "string_list"
    problems.add(TypeError)  # None, a dict, anything else
    return None


def reference(batch: list, schema: dict) -> tuple[list[dict], dict]:
    """The records as they should read back and the schema after, or Refused with the kinds of problem."""
    problems: set = set()
    recs = []
    for r in batch:
        if r is None:
            recs.append({})
        elif isinstance(r, dict):
            recs.append(r)
        else:
            problems.add(TypeError)
    kinds: dict = {}
    for r in recs:
        for k, v in r.items():
            if not isinstance(k, str):
                problems.add(TypeError)
            elif k == "" or k.startswith("$") or not _utf8(k):
                problems.add(ValueError)
            kinds.setdefault(k, set()).add(_value_kind(v, problems))
    out_schema = dict(schema)
    for k, ks in kinds.items():
        ks.discard(None)
        if not ks:
            continue
        if ks <= {"int", "float"}:
            kind = "float" if "float" in ks else "int"
        elif len(ks) > 1:
            kind = "mixed"  # values of several kinds: each keeps its own
        else:
            (kind,) = ks
        have = schema.get(k)
        if have is None or have == kind:
            out_schema[k] = kind
        elif {have, kind} <= {"int", "float"}:
            out_schema[k] = "float"
        else:
            out_schema[k] = "mixed"
    if problems:
        raise Refused(problems)

    def plain(k, v):
        if isinstance(v, tuple):
            return list(v)
        if out_schema[k] == "float":
            return float(v)
        return v

    return [{k: plain(k, v) for k, v in r.items()} for r in recs], out_schema


def check_refusal(exc: BaseException) -> None:
    assert isinstance(exc, (TypeError, ValueError)), f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert message, f"{type(exc).__name__} with an empty message"
    assert len(message) < MAX_MESSAGE, f"message of {len(message)} characters: {message[:400]!r}"
    assert not any(word in message for word in LEAKED), f"message leaks an internal error: {message!r}"


# -- 1 and 2: normalize_metadata -------------------------------------------------------

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(batch=batches, schema=schemas)
@example(batch=[{"x": 10**5000}], schema={})
@example(batch=[{"x": [10**5000]}], schema={})
@example(batch=[{"x": 1.5}, {"x": -(10**5000)}], schema={})
@example(batch=[{"x": 10**5000}], schema={"x": "float"})
@example(batch=[{"x": 10**5000}], schema={"x": "string"})
@example(batch=[{"x": "a"}, {"x": 10**5000}], schema={})
@example(batch=[{"x": {"y": 10**5000}}], schema={})
@example(batch=[{10**5000: 1}], schema={})
@example(batch=[[10**5000]], schema={})
@example(batch=[{"x": (10**5000,)}], schema={})
@example(batch=[{"x": math.nan}], schema={})
@example(batch=[{"x": ["\ud800"]}], schema={})
@example(batch=[{"\ud800": 1}], schema={})
def test_any_batch_is_accepted_as_given_or_refused_clearly(batch, schema):
    try:
        want, want_schema = reference(batch, schema)
    except Refused as refused:
        want, kinds = None, refused.kinds
    try:
        table, got_schema = normalize_metadata(batch, len(batch), schema)
    except Exception as exc:  # noqa: BLE001 - the point is to see which
        check_refusal(exc)
        assert want is None, f"refused a batch the reference accepts: {exc}"
        if len(kinds) == 1:
            assert isinstance(exc, next(iter(kinds))), (kinds, exc)
        return
    assert want is not None, f"accepted a batch the reference refuses ({kinds})"
    assert got_schema == want_schema
    assert table.num_rows == len(batch)
    assert schema_of(table) == {k: got_schema[k] for k in table.column_names}
    assert table.column_names == [k for k in got_schema if k in table.column_names]
    got = rows_to_dicts(table)
    for g, w in zip(got, want):
        assert g == w
        for k, v in w.items():  # == holds for 1 and 1.0; the types must match too
            assert type(g[k]) is type(v), (k, g[k], v)


@pytest.mark.parametrize("value", HUGE_INTS, ids=[f"huge{i}" for i in range(len(HUGE_INTS))])
@pytest.mark.parametrize("schema", [{}, {"x": "int"}, {"x": "float"}])
def test_ints_beyond_int64_are_value_errors_naming_the_field(value, schema):
    for batch, record in (([{"x": value}], 0), ([{"x": 1.5}, {"y": "a"}, {"x": value}], 2), ([{"x": 1}, {"x": value}], 1)):
        with pytest.raises(ValueError, match=rf"field 'x' in record {record} holds .* must fit in int64") as info:
            normalize_metadata(batch, len(batch), schema)
        check_refusal(info.value)


@pytest.mark.parametrize("value", HUGE_INTS, ids=[f"huge{i}" for i in range(len(HUGE_INTS))])
def test_huge_ints_where_a_type_is_wrong_are_type_errors_naming_the_field(value):
    cases = [
        ([{"x": [value]}], r"field 'x' in record 0 is a list holding int"),
        ([{"x": ["a", value]}], r"field 'x' in record 0 is a list holding int"),
        ([{"x": {"y": value}}], r"field 'x' in record 0 has a dict value .*nested objects"),
        ([{value: 1}], r"metadata keys must be strings, got int"),
        ([[value]], r"metadata record 0 must be a dict or None, got list"),
    ]
    for batch, pattern in cases:
        with pytest.raises(TypeError, match=pattern) as info:
            normalize_metadata(batch, len(batch), {})
        check_refusal(info.value)


def test_huge_ints_in_other_messages_are_shown_short():
    cases = [
        ([{"x": "a"}, {"x": 10**5000}], {}, r"field 'x' in record 1 holds <an int of 5001 digits>, outside the int64"),
        ([{"x": 10**5000}], {"x": "string"}, r"field 'x' in record 0 holds <an int of 5001 digits>, outside the int64"),
        (None, {"x": 10**5000}, r"schema field 'x' has unknown type <an int of 5001 digits>"),
        (None, {"x": ["int"]}, r"schema field 'x' has unknown type \['int'\]"),  # not 'unhashable type'
    ]
    for batch, schema, pattern in cases:
        with pytest.raises(ValueError, match=pattern) as info:
            normalize_metadata(batch, 0 if batch is None else len(batch), schema)
        check_refusal(info.value)
    with pytest.raises(ValueError, match=r"n must be >= 0, got -<an int of 5001 digits>"):
        normalize_metadata(None, -(10**5000), {})
    with pytest.raises(TypeError, match=r"schema field names must be strings, got int <an int"):
        normalize_metadata(None, 0, {10**5000: "int"})


# -- 3: through the Collection ---------------------------------------------------------

IDS = [f"r{i}" for i in range(6)]


def _snapshot(col):
    got = col.fetch(IDS)
    return len(col), dict(col.schema), got.ids, got.vectors.copy(), got.metadata, got.missing


def _assert_unchanged(col, before):
    after = _snapshot(col)
    assert after[:3] == before[:3]
    assert np.array_equal(after[3], before[3])
    assert after[4:] == before[4:]


def _as_stored(meta: dict, schema: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else float(v) if schema[k] == "float" else v) for k, v in meta.items()}


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    col = gs.Collection.create(tmp_path_factory.mktemp("fuzzmeta") / "c", dim=3, metric="l2", shards=2, device="cpu", fsync=False)
    col.upsert(IDS[:3], np.eye(3, dtype=np.float32), [{"a": 1}, {"b": "x"}, None])
    yield col
    col.close()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data(), batch=st.lists(records, min_size=1, max_size=4))
@example(data=None, batch=[{"x": 10**5000}])
@example(data=None, batch=[{"a": [10**5000]}])
@example(data=None, batch=[{"c": 1}, {"a": "not an int"}])
def test_a_refused_upsert_leaves_the_collection_unchanged(collection, data, batch):
    col = collection
    ids = [data.draw(st.sampled_from(IDS)) if data is not None else IDS[i % len(IDS)] for i in range(len(batch))]
    vecs = np.arange(len(batch) * 3, dtype=np.float32).reshape(-1, 3) + 1
    before = _snapshot(col)
    try:
        want, _ = reference(batch, dict(col.schema))
    except Refused:
        want = None
    try:
        col.upsert(ids, vecs, batch)
    except Exception as exc:  # noqa: BLE001
        check_refusal(exc)
        assert want is None, f"refused a batch the reference accepts: {exc}"
        _assert_unchanged(col, before)
        return
    assert want is not None, "accepted a batch the reference refuses"
    last = {i: pos for pos, i in enumerate(ids)}
    got = col.fetch(list(last))
    assert got.ids == list(last)
    assert np.array_equal(got.vectors, vecs[list(last.values())])
    assert got.metadata == [_as_stored(want[pos], col.schema) for pos in last.values()]
    assert len(col) == len(set(before[2]) | set(ids))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(rid=st.sampled_from(IDS[:3]), changes=st.dictionaries(st.sampled_from(["a", "b", "c"]) | keys, values, min_size=1, max_size=2))
@example(rid="r0", changes={"a": 10**5000})
@example(rid="r0", changes={"a": [10**5000]})
def test_a_refused_update_leaves_the_collection_unchanged(collection, rid, changes):
    col = collection
    before = _snapshot(col)
    try:
        col.update(rid, set_metadata=changes)
    except Exception as exc:  # noqa: BLE001
        check_refusal(exc)
        _assert_unchanged(col, before)
