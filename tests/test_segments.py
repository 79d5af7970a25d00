"""Snapshot segments (Arrow IPC files) and the atomic-write layer under them."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from gpusearch import segments as segments_module
from gpusearch.fileio import (
    atomic_write_bytes,
    atomic_write_json,
    is_temp_file,
    read_json,
    remove_stale_temp_files,
    temp_path_for,
)
from gpusearch.segments import META_PREFIX, read_segment, write_segment


def make_rows(rng, n: int, dim: int, dtype=np.float32):
    ids = [f"id-{i:05d}" for i in range(n)]
    vectors = rng.standard_normal((n, dim)).astype(dtype)
    return ids, vectors


def rich_metadata(rng, n: int) -> pa.Table:
    """String, float, bool, int and list<string> columns, each with nulls."""
    def some_null(values):
        return [None if i % 4 == 1 else v for i, v in enumerate(values)]

    return pa.table(
        {
            "title": pa.array(some_null([f"title {i} é" for i in range(n)]), pa.string()),
            "price": pa.array(some_null(rng.random(n).tolist()), pa.float64()),
            "in_stock": pa.array(some_null([i % 3 == 0 for i in range(n)]), pa.bool_()),
            "year": pa.array(some_null([1990 + i for i in range(n)]), pa.int64()),
            "tags": pa.array(some_null([[f"t{i}", "x"] if i % 2 else [] for i in range(n)]), pa.list_(pa.string())),
        }
    )


def no_temp_files(directory: Path) -> bool:
    return not any(is_temp_file(p) for p in directory.iterdir())


# --- round trips -----------------------------------------------------------------


@pytest.mark.parametrize("memory_map", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_round_trip(tmp_path, rng, dtype, memory_map):
    ids, vectors = make_rows(rng, 37, 12, dtype)
    metadata = rich_metadata(rng, 37)
    path = tmp_path / "seg.arrow"
    size = write_segment(path, ids, vectors, metadata, extra={"wal_seq": "42", "model": "minilm"})
    assert size == path.stat().st_size
    assert no_temp_files(tmp_path)

    seg = read_segment(path, memory_map=memory_map)
    assert isinstance(seg.ids, pa.StringArray)
    assert seg.ids.to_pylist() == ids
    assert seg.vectors.dtype == dtype and seg.vectors.shape == (37, 12)
    np.testing.assert_array_equal(seg.vectors, vectors)
    assert not seg.vectors.flags.writeable
    assert seg.metadata.equals(metadata)
    assert seg.extra == {"wal_seq": "42", "model": "minilm"}
    assert len(seg) == 37 and seg.dim == 12


@pytest.mark.parametrize("with_metadata", [False, True])
def test_zero_rows_keep_dim_and_types(tmp_path, rng, with_metadata):
    metadata = rich_metadata(rng, 0) if with_metadata else None
    path = tmp_path / "empty.arrow"
    write_segment(path, [], np.empty((0, 384), np.float16), metadata)
    seg = read_segment(path)
    assert seg.vectors.shape == (0, 384) and seg.vectors.dtype == np.float16
    assert len(seg) == 0 and seg.dim == 384
    if with_metadata:
        assert seg.metadata.schema.equals(metadata.schema)
        assert seg.metadata.num_rows == 0
    else:
        assert seg.metadata.num_columns == 0


@pytest.mark.parametrize("metadata", [None, pa.table({})], ids=["none", "no-columns"])
def test_no_metadata_columns(tmp_path, rng, metadata):
    ids, vectors = make_rows(rng, 5, 3)
    path = tmp_path / "seg.arrow"
    write_segment(path, ids, vectors, metadata)
    seg = read_segment(path)
    assert seg.metadata.num_columns == 0
    assert seg.metadata.num_rows == 5
    assert seg.extra == {}
    # What is in the file: just the two fixed columns and the markers.
    schema = pa.ipc.open_file(pa.memory_map(str(path))).schema
    assert schema.names == ["id", "vector"]
    assert schema.metadata[b"gpusearch.format"] == b"gpusearch-segment"
    assert schema.metadata[b"gpusearch.version"] == b"1"


def test_metadata_names_cannot_clash(tmp_path, rng):
    ids, vectors = make_rows(rng, 4, 2)
    metadata = pa.table({"id": ["w", "x", "y", "z"], "vector": [1, 2, 3, 4], "meta.x": [True] * 4})
    path = tmp_path / "seg.arrow"
    write_segment(path, ids, vectors, metadata)
    names = pa.ipc.open_file(pa.memory_map(str(path))).schema.names
    assert names == ["id", "vector", META_PREFIX + "id", META_PREFIX + "vector", META_PREFIX + "meta.x"]
    seg = read_segment(path)
    assert seg.ids.to_pylist() == ids
    assert seg.metadata.equals(metadata)


@pytest.mark.parametrize("kind", ["list", "numpy", "arrow", "large_string", "chunked"])
def test_id_containers(tmp_path, rng, kind):
    ids, vectors = make_rows(rng, 6, 4)
    given = {
        "list": ids,
        "numpy": np.array(ids),
        "arrow": pa.array(ids),
        "large_string": pa.array(ids, pa.large_string()),
        "chunked": pa.chunked_array([ids[:2], ids[2:]]),
    }[kind]
    write_segment(tmp_path / "s", given, vectors)
    assert read_segment(tmp_path / "s").ids.to_pylist() == ids


def test_non_contiguous_vectors_and_chunked_metadata(tmp_path, rng):
    ids, wide = make_rows(rng, 10, 8)
    vectors = wide[:, ::2]
    assert not vectors.flags.c_contiguous
    metadata = pa.concat_tables([pa.table({"k": list(range(4))}), pa.table({"k": list(range(4, 10))})])
    assert metadata.column("k").num_chunks == 2
    write_segment(tmp_path / "s", ids, vectors, metadata)
    seg = read_segment(tmp_path / "s")
    np.testing.assert_array_equal(seg.vectors, vectors)
    assert seg.metadata.column("k").to_pylist() == list(range(10))


def test_overwrite_is_atomic_for_readers(tmp_path, rng):
    path = tmp_path / "seg.arrow"
    ids, old = make_rows(rng, 8, 4)
    write_segment(path, ids, old)
    before = read_segment(path)  # maps the old file
    new = old + 1
    write_segment(path, ids, new)
    np.testing.assert_array_equal(before.vectors, old)  # the old inode is untouched
    np.testing.assert_array_equal(read_segment(path).vectors, new)
    assert no_temp_files(tmp_path)


def test_failed_write_leaves_target_and_no_temp(tmp_path, rng, monkeypatch):
    path = tmp_path / "seg.arrow"
    ids, vectors = make_rows(rng, 8, 4)
    write_segment(path, ids, vectors)
    original = path.read_bytes()

    def broken_writer(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(segments_module.pa.ipc, "new_file", broken_writer)
    with pytest.raises(OSError):
        write_segment(path, ids, vectors + 1)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert no_temp_files(tmp_path)


def test_zero_copy_read(tmp_path, rng):
    path = tmp_path / "seg.arrow"
    ids, vectors = make_rows(rng, 2000, 64)
    write_segment(path, ids, vectors)

    allocated = pa.total_allocated_bytes()
    seg = read_segment(path, memory_map=True)
    assert pa.total_allocated_bytes() - allocated < vectors.nbytes // 10
    assert not seg.vectors.flags.owndata and not seg.vectors.flags.writeable
    # The array is a view of the mapped file: a change to the file shows through it.
    raw = path.read_bytes()
    offset = raw.find(vectors[0].tobytes())
    assert offset > 0 and offset % 4 == 0
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(np.float32(12345.0).tobytes())
    assert seg.vectors[0, 0] == np.float32(12345.0)
    np.testing.assert_array_equal(seg.vectors[1:], vectors[1:])

    read_all = read_segment(path, memory_map=False)  # read once into memory: not a view of the file
    assert pa.total_allocated_bytes() - allocated >= vectors.nbytes
    assert read_all.vectors[0, 0] == np.float32(12345.0)


# --- invalid input ---------------------------------------------------------------


@pytest.mark.parametrize(
    "ids, vectors, metadata, extra, error, match",
    [
        (["a"], np.zeros((1, 3)), None, None, TypeError, "float32 or float16, got float64"),
        (["a"], [[0.0, 1.0]], None, None, TypeError, "numpy.ndarray, got list"),
        (["a"], np.zeros(3, np.float32), None, None, ValueError, r"shape \(n, dim\).*got \(3,\)"),
        (["a", "b"], np.zeros((1, 3), np.float32), None, None, ValueError, r"one entry per vector \(1\), got 2"),
        (["a", None], np.zeros((2, 3), np.float32), None, None, ValueError, "null"),
        (["a", 7], np.zeros((2, 3), np.float32), None, None, TypeError, r"ids must be str, got int"),
        ("ab", np.zeros((2, 3), np.float32), None, None, TypeError, "sequence of str, got str"),
        (pa.array([1, 2]), np.zeros((2, 3), np.float32), None, None, TypeError, "strings, got an Arrow array of int64"),
        (["a"], np.zeros((1, 3), np.float32), {"x": [1]}, None, TypeError, "pyarrow.Table or None, got dict"),
        (["a"], np.zeros((1, 3), np.float32), pa.table({"x": [1, 2]}), None, ValueError, r"one row per vector \(1\), got 2"),
        (["a"], np.zeros((1, 3), np.float32), None, {"seq": 5}, TypeError, "str to str"),
        (["a"], np.zeros((1, 3), np.float32), None, ["x"], TypeError, "dict of str to str, got list"),
    ],
)
def test_write_rejects_bad_input(tmp_path, ids, vectors, metadata, extra, error, match):
    with pytest.raises(error, match=match):
        write_segment(tmp_path / "s", ids, vectors, metadata, extra=extra)
    assert list(tmp_path.iterdir()) == []


# --- bad files -------------------------------------------------------------------


@pytest.mark.parametrize("memory_map", [True, False])
@pytest.mark.parametrize(
    "contents",
    [b"", b"not an arrow file at all", b"ARROW1" + bytes(100), np.random.default_rng(0).bytes(4096)],
    ids=["empty", "text", "magic-only", "random"],
)
def test_garbage_file_is_a_value_error(tmp_path, contents, memory_map):
    path = tmp_path / "bad.arrow"
    path.write_bytes(contents)
    with pytest.raises(ValueError, match=str(path)):
        read_segment(path, memory_map=memory_map)


def test_plain_arrow_file_is_not_a_segment(tmp_path):
    path = tmp_path / "plain.arrow"
    table = pa.table({"id": ["a"], "vector": pa.array([[1.0, 2.0]], pa.list_(pa.float32(), 2))})
    with pa.ipc.new_file(str(path), table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(ValueError, match=f"{path} is not a gpusearch segment"):
        read_segment(path)


def _rewrite_schema_metadata(path: Path, **changes) -> None:
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    meta = dict(table.schema.metadata)
    meta.update({k.encode(): v.encode() for k, v in changes.items()})
    table = table.replace_schema_metadata(meta)
    data = pa.BufferOutputStream()
    with pa.ipc.new_file(data, table.schema) as writer:
        writer.write_table(table)
    path.write_bytes(data.getvalue().to_pybytes())


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"gpusearch.version": "4"}, "version 4.*upgrade gpusearch"),
        ({"gpusearch.version": "one"}, "unreadable segment version"),
        ({"gpusearch.extra": "{not json"}, "corrupt segment annotations"),
    ],
)
def test_bad_markers(tmp_path, rng, changes, match):
    path = tmp_path / "seg.arrow"
    write_segment(path, *make_rows(rng, 3, 2))
    _rewrite_schema_metadata(path, **changes)
    with pytest.raises(ValueError, match=match):
        read_segment(path)


@pytest.mark.parametrize("memory_map", [True, False])
@pytest.mark.parametrize("keep", [0.05, 0.3, 0.6, 0.95, -1])
def test_truncated_file_is_a_value_error(tmp_path, rng, keep, memory_map):
    path = tmp_path / "seg.arrow"
    ids, vectors = make_rows(rng, 200, 16)
    size = write_segment(path, ids, vectors, rich_metadata(rng, 200))
    cut = size - 1 if keep == -1 else int(size * keep)
    with open(path, "r+b") as f:
        f.truncate(cut)
    with pytest.raises(ValueError, match=str(path)):
        read_segment(path, memory_map=memory_map)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_segment(tmp_path / "nope.arrow")


# --- fileio: the atomic-write layer segments rely on ------------------------------


def test_json_round_trip_sorted_and_indented(tmp_path):
    path = tmp_path / "manifest.json"
    atomic_write_json(path, {"b": [1, 2], "a": {"z": None, "y": "é"}})
    assert read_json(path) == {"a": {"y": "é", "z": None}, "b": [1, 2]}
    text = path.read_text("utf-8")
    assert text.index('"a"') < text.index('"b"') and '\n  "a"' in text
    assert no_temp_files(tmp_path)
    with pytest.raises(ValueError):
        atomic_write_json(path, {"x": math.nan})
    assert read_json(path)["b"] == [1, 2]  # a refused write leaves the old file


@pytest.mark.parametrize("contents", [b"{", b"", b"\xff\xfe", b'{"a": 1} trailing'])
def test_read_json_names_the_path(tmp_path, contents):
    path = tmp_path / "bad.json"
    path.write_bytes(contents)
    with pytest.raises(ValueError, match=f"{path} is not a valid JSON file"):
        read_json(path)


def test_atomic_write_bytes(tmp_path):
    path = tmp_path / "blob"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, bytearray(b"two"))
    assert path.read_bytes() == b"two"
    with pytest.raises(TypeError, match="data must be bytes, got str"):
        atomic_write_bytes(path, "three")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob"]


def test_stale_temp_files_are_recognised_and_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".seg.arrow.tmp-{dead_pid}-0123abcd"
    mine = temp_path_for(tmp_path / "seg.arrow")
    for p in (stale, mine, tmp_path / "seg.arrow", tmp_path / ".hidden"):
        p.write_bytes(b"x")
    assert is_temp_file(stale) and is_temp_file(mine)
    assert not is_temp_file(tmp_path / "seg.arrow") and not is_temp_file(tmp_path / ".hidden")
    assert remove_stale_temp_files(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, "seg.arrow", ".hidden"])


def test_json_is_plain_json(tmp_path):
    atomic_write_json(tmp_path / "m.json", [1, "x"])
    assert json.loads((tmp_path / "m.json").read_text()) == [1, "x"]
