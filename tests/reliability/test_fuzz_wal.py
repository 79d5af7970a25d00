"""Fuzzing WAL recovery (gpusearch.wal) and the collection replay built on it.

Every test compares what the code recovers with a reference reader written here
from the framing that the module docstring of ``gpusearch.wal`` documents
(magic, length, seq, CRC over length+seq+payload; files in name order; recovery
stops at the first invalid record, or at a seq not above the one before).

- Any bytes after valid records, as a later file or as a whole file: ``open``
  never raises (damage in a finished, sealed file is no tail: a ``WALCorruptError``), returns exactly the reference's prefix, cuts the files on disk
  to it, and the log takes appends afterwards. ``WALTail`` (which follows a
  live log and skips old seqs instead of stopping) reads the same records.
- A small valid log cut at every byte offset, in its newest and in an older file.
- A crashed ``Collection`` (two shards, a checkpoint, multi-shard batches) whose
  shard WALs or commit log get a damaged tail: it opens, holds exactly the batches
  the reference says survived (a batch spanning shards only with its commit
  record), and takes writes afterwards; or, where the damage would lose a
  committed batch's part or hits a sealed file, it refuses and changes nothing.
- A record that passes its CRC but holds no op: a clear ``ValueError``.
"""
from __future__ import annotations

import json
import logging
import shutil
import struct
import uuid
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpusearch as gs
from gpusearch import ops
from gpusearch.wal import WALCorruptError, WALRecord, WALTail, WriteAheadLog

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# -- the documented framing, written independently of gpusearch.wal ------------------

MAGIC = b"GWL1"
LIMIT = 2**30
MAX_SEQ = 2**64 - 1


def frame(seq: int, payload: bytes) -> bytes:
    body = struct.pack("<IQ", len(payload), seq)
    return MAGIC + body + struct.pack("<I", zlib.crc32(body + payload)) + payload


def file_name(first_seq: int) -> str:
    return f"wal-{first_seq:020d}.log"


def parse(files: list[bytes], *, old_seq: str = "stop"):
    """Records of a log given as the contents of its files in name order.

    Returns ``(records, cut)``: ``cut`` is None when every file is valid to its end,
    else ``(file index, offset)`` of the first invalid record. ``old_seq="skip"``
    reads as WALTail does: a valid frame whose seq is not above the last one is
    passed over, not a reason to stop.
    """
    records, last = [], 0
    for index, data in enumerate(files):
        pos = 0
        while pos < len(data):
            if len(data) - pos < 20:
                return records, (index, pos)
            magic, (length, seq, crc) = data[pos:pos + 4], struct.unpack_from("<IQI", data, pos + 4)
            end = pos + 20 + length
            if magic != MAGIC or length > LIMIT or end > len(data):
                return records, (index, pos)
            payload = data[pos + 20:end]
            if zlib.crc32(data[pos + 4:pos + 16] + payload) != crc:
                return records, (index, pos)
            if seq <= last:
                if old_seq == "stop":
                    return records, (index, pos)
            else:
                records.append(WALRecord(seq, payload))
                last = seq
            pos = end
    return records, None


def log_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith("wal-") and p.name.endswith(".log"))


def write_log(directory: Path, payloads: list[bytes], rotate_every: int) -> list[WALRecord]:
    wal, _ = WriteAheadLog.open(directory, fsync=False)
    written = []
    for i, payload in enumerate(payloads):
        if i and i % rotate_every == 0:
            wal.rotate()
        wal.append(i + 1, payload)
        written.append(WALRecord(i + 1, payload))
    wal.close()
    return written


def tail_read(directory: Path, max_bytes: int | None = None) -> list[WALRecord]:
    """Everything a fresh WALTail reads, in as many calls as it takes."""
    tail, out = WALTail(directory), []
    files = log_files(directory)
    for call in range(10_000):
        got = tail.read_new(max_bytes)
        # It may have missed records only when the first file starts after seq 1.
        assert tail.missed == (call == 0 and bool(files) and int(files[0].name[4:24]) > 1)
        if not got:
            return out
        out.extend(got)
    raise AssertionError("WALTail kept returning records")


def check_open(directory: Path, files_before: list[bytes], names_before: list[str]) -> list[WALRecord]:
    """Open the log and check it against the reference; returns the records."""
    expected, cut = parse(files_before)
    # A follower reads the same bytes before recovery touches them (skipping, not stopping at, old seqs).
    followed = parse(files_before, old_seq="skip")[0]
    assert tail_read(directory) == followed
    assert tail_read(directory, max_bytes=1) == followed

    wal, records = WriteAheadLog.open(directory, fsync=False)
    try:
        assert records == expected
        assert wal.last_seq == (expected[-1].seq if expected else 0)
        # On disk: files before the cut untouched, the cut file truncated (gone when nothing good
        # is left in it), every later file removed; files valid to their end but empty removed.
        want = {}
        for index, (name, data) in enumerate(zip(names_before, files_before)):
            if cut is not None and index > cut[0]:
                break
            keep = data if cut is None or index < cut[0] else data[:cut[1]]
            if keep:
                want[name] = keep
        assert {p.name: p.read_bytes() for p in log_files(directory)} == want
        if wal.last_seq < MAX_SEQ:
            wal.append(wal.last_seq + 1, b"after recovery")
    finally:
        wal.close()
    again, _ = parse([p.read_bytes() for p in log_files(directory)])
    wal, reread = WriteAheadLog.open(directory, fsync=False)
    wal.close()
    assert reread == again
    if expected and expected[-1].seq < MAX_SEQ or not expected:
        assert reread == expected + [WALRecord((expected[-1].seq if expected else 0) + 1, b"after recovery")]
    return records


# -- damage --------------------------------------------------------------------------


def tails(last_seq: int, *, stale_only: bool = False):
    """Bytes to put after a log whose last seq is ``last_seq``: noise and near-misses of records.

    With ``stale_only`` the only valid frames have seqs not above ``last_seq``.
    """
    if stale_only:
        seqs = st.sampled_from(sorted({0, max(last_seq - 1, 0), last_seq}))
    else:
        seqs = st.sampled_from(sorted({0, max(last_seq - 1, 0), last_seq, last_seq + 1, last_seq + 2, MAX_SEQ}))
    payloads = st.binary(max_size=40)
    valid = st.builds(frame, seqs, payloads)

    def broken(args):
        data, where, value = args
        data = bytearray(data)
        if where == "magic":
            data[0] ^= value or 1
        elif where == "length":
            data[4:8] = struct.pack("<I", LIMIT + 1 + value)
        elif where == "crc":
            data[16] ^= value or 1
        elif where == "payload" and len(data) > 20:
            data[20 + value % (len(data) - 20)] ^= 0xFF
        elif where == "long":
            data[4:8] = struct.pack("<I", len(data) - 20 + 1 + value)
        return bytes(data)

    near_misses = st.tuples(valid, st.sampled_from(["magic", "length", "crc", "payload", "long"]),
                            st.integers(0, 255)).map(broken)
    torn = st.tuples(valid, st.integers(0, 60)).map(lambda a: a[0][:a[1]])
    piece = st.one_of(st.binary(min_size=1, max_size=64), valid, near_misses, torn,
                      st.sampled_from([bytes(20), bytes(4096), MAGIC, MAGIC + bytes(16), b"\xff" * 24]))
    return st.lists(piece, min_size=1, max_size=4).map(b"".join)


@FUZZ
@given(data=st.data())
def test_any_tail_after_valid_records(tmp_path, data):
    directory = tmp_path / uuid.uuid4().hex
    payloads = data.draw(st.lists(st.binary(max_size=40), max_size=6), label="payloads")
    written = write_log(directory, payloads, rotate_every=data.draw(st.integers(1, 4), label="rotate_every"))
    tail = data.draw(tails(len(written)), label="tail")
    where = data.draw(st.sampled_from(["append", "new file", "whole file"]), label="where")
    if where == "append" and written:
        newest = log_files(directory)[-1]
        newest.write_bytes(newest.read_bytes() + tail)
    elif where == "new file" or where == "append":
        # A later file, as a rotation leaves one, named at or after the next seq.
        first = len(written) + 1 + data.draw(st.integers(0, 3), label="name gap")
        (directory / file_name(first)).write_bytes(tail)
    else:
        for p in log_files(directory) + sorted(directory.glob("*.sealed")):
            p.unlink()
        (directory / file_name(1)).write_bytes(tail)
    files = log_files(directory)
    records = check_open(directory, [p.read_bytes() for p in files], [p.name for p in files])
    if where != "whole file":
        assert records[:len(written)] == written  # nothing before the damage is lost


@FUZZ
@given(data=st.binary(max_size=600), name_seq=st.integers(0, 50))
def test_a_file_of_arbitrary_bytes_never_breaks_open(tmp_path, data, name_seq):
    directory = tmp_path / uuid.uuid4().hex
    directory.mkdir()
    (directory / file_name(name_seq)).write_bytes(data)
    check_open(directory, [data], [file_name(name_seq)])


def test_truncation_at_every_offset(tmp_path):
    payloads = [b"", b"x", bytes(range(17)), b"y" * 40, b"z" * 3]
    pristine = tmp_path / "pristine"
    written = write_log(pristine, payloads, rotate_every=3)  # files of seqs 1-3 and 4-5
    names = [p.name for p in log_files(pristine)]
    contents = [p.read_bytes() for p in log_files(pristine)]
    assert len(names) == 2
    cases = 0
    for index in range(len(names)):  # the newest file (a torn append) and an older one (corruption)
        for offset in range(len(contents[index]) + 1):
            directory = tmp_path / f"cut-{index}-{offset}"
            shutil.copytree(pristine, directory)
            damaged = list(contents)
            damaged[index] = contents[index][:offset]
            (directory / names[index]).write_bytes(damaged[index])
            if index < len(names) - 1 and offset < len(contents[index]):
                # An older file was finished (and sealed) when the log rotated: a cut there, even on a
                # record boundary, loses acknowledged records. Refused, naming the file; nothing changes.
                before = {p.name: p.read_bytes() for p in log_files(directory)}
                with pytest.raises(WALCorruptError, match=names[index]):
                    WriteAheadLog.open(directory, fsync=False)
                assert {p.name: p.read_bytes() for p in log_files(directory)} == before
            else:
                records = check_open(directory, damaged, names)
                ends = np.cumsum([20 + len(r.payload) for r in written[3 * index:3 * index + 3]])
                kept = written[:3 * index + int(np.sum(ends <= offset))]
                if offset == len(contents[index]):
                    kept += written[3 * (index + 1):]
                assert records == kept
            shutil.rmtree(directory)
            cases += 1
    assert cases == sum(len(c) + 1 for c in contents)


# -- a crashed collection --------------------------------------------------------------

DIM = 4


def _vectors(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """A collection copied while open (as a crash leaves it), with what its snapshot holds.

    Two shards; batches before a checkpoint (in the snapshot), then single-shard and
    multi-shard upserts and deletes that only the WALs and the commit log hold.
    """
    root = tmp_path_factory.mktemp("crashed")
    col = gs.Collection.create(root / "live", dim=DIM, metric="l2", shards=2, device="cpu", fsync=False)
    ids = [f"r{i}" for i in range(12)]
    col.upsert(ids[:6], _vectors(1, 6), metadata=[{"n": i, "tag": "old"} for i in range(6)])
    col.delete(ids=["r0"])
    col.checkpoint()
    snapshot = col.fetch(ids)
    base = {i: (v, {k: x for k, x in m.items() if x is not None})
            for i, v, m in zip(snapshot.ids, snapshot.vectors, snapshot.metadata)}
    col.upsert(ids[6:10], _vectors(2, 4), metadata=[{"n": i, "tag": "new"} for i in range(6, 10)])
    col.upsert(["r1"], _vectors(3, 1), metadata=[{"n": 100, "tags": ["a", "b"]}])
    col.delete(ids=["r2", "r7"])
    col.upsert(["r3", "r10", "r11"], _vectors(4, 3), metadata=[{"score": 0.5}, None, {"tag": "late"}])
    col.delete(ids=["r11"])
    col.upsert(["r4"], _vectors(5, 1))
    shutil.copytree(root / "live", root / "pristine")  # the crash: nothing more reaches the copy
    col.close()
    pristine = root / "pristine"
    targets = [p.relative_to(pristine) for p in sorted(pristine.rglob("wal-*.log"))]
    assert {t.parts[0] for t in targets} == {"shard-000", "shard-001", "commits"}
    shard_records = {}
    for s in range(2):
        recs, cut = parse([p.read_bytes() for p in log_files(pristine / f"shard-{s:03d}" / "wal")])
        assert cut is None and recs
        shard_records[s] = recs
    assert any(ops.decode(r.payload).participants > 1 for r in shard_records[0])
    return pristine, base, targets, ids


def expected_state(directory: Path, base: dict) -> dict | None:
    """Replay what the reference reader finds, by the rules of Collection.open; None when it must refuse.

    It refuses when a sealed (finished) file no longer matches its seal or holds an invalid
    record, or when a batch that a commit record names the shards of lacks its part on a
    shard whose snapshot does not cover it (the damage would lose an acknowledged write).
    """
    for log_dir in [directory / "commits"] + [directory / f"shard-{s:03d}" / "wal" for s in range(2)]:
        for p in log_files(log_dir):
            seal = p.with_name(p.name + ".sealed")
            if seal.exists():
                info = json.loads(seal.read_text())
                records, cut = parse([p.read_bytes()])
                if cut is not None or p.stat().st_size != info["size"]:
                    return None
    commit_records = parse([p.read_bytes() for p in log_files(directory / "commits")])[0]
    committed = {r.seq for r in commit_records}
    shard_seqs, applied = {}, {}
    for s in range(2):
        shard_seqs[s] = {r.seq for r in parse([p.read_bytes() for p in log_files(directory / f"shard-{s:03d}" / "wal")])[0]}
        applied[s] = json.loads((directory / f"shard-{s:03d}" / "manifest.json").read_text())["applied_seq"]
    for r in commit_records:
        assert r.payload.startswith(b"shards ")  # this release names the shards of every commit
        for s in map(int, r.payload[7:].split(b",")):
            if r.seq > applied[s] and r.seq not in shard_seqs[s]:
                return None
    state = dict(base)
    for s in range(2):
        records, _ = parse([p.read_bytes() for p in log_files(directory / f"shard-{s:03d}" / "wal")])
        for r in records:
            op = ops.decode(r.payload)
            if op.participants > 1 and r.seq not in committed:
                continue
            if op.kind == ops.DELETE:
                for i in op.ids:
                    state.pop(i, None)
            else:
                metas = op.metadata.to_pylist() if op.metadata.num_columns else [{}] * len(op.ids)
                for i, v, m in zip(op.ids, op.vectors, metas):
                    state[i] = (v, {k: x for k, x in m.items() if x is not None})
    return state


def check_collection(directory: Path, base: dict, ids: list[str]) -> None:
    expected = expected_state(directory, base)
    if expected is None:
        before = {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file() and p.name != "LOCK"}
        with pytest.raises(WALCorruptError):
            gs.Collection.open(directory, device="cpu", fsync=False)
        after = {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file() and p.name != "LOCK"}
        assert after == before  # a refused open changes nothing
        return
    col = gs.Collection.open(directory, device="cpu", fsync=False)
    try:
        got = col.fetch(ids)
        assert len(col) == len(expected)
        assert got.ids == [i for i in ids if i in expected]
        for i, v, m in zip(got.ids, got.vectors, got.metadata):
            np.testing.assert_array_equal(v, expected[i][0])
            assert {k: x for k, x in m.items() if x is not None} == expected[i][1], i
        col.upsert(["fresh", "r0"], _vectors(9, 2))  # the recovered log takes writes
    finally:
        col.close()
    col = gs.Collection.open(directory, device="cpu", fsync=False)
    try:
        assert len(col) == len(set(expected) | {"fresh", "r0"})
        np.testing.assert_array_equal(col.fetch(["fresh", "r0"]).vectors, _vectors(9, 2))
    finally:
        col.close()


@FUZZ
@given(data=st.data())
def test_damaged_tails_of_a_crashed_collection(crashed, tmp_path, data):
    pristine, base, targets, ids = crashed
    directory = tmp_path / uuid.uuid4().hex
    shutil.copytree(pristine, directory)
    target = directory / data.draw(st.sampled_from(targets), label="file")
    content = target.read_bytes()
    mode = data.draw(st.sampled_from(["append", "truncate", "overwrite", "flip"]), label="mode")
    if mode == "append":
        records, _ = parse([content])
        # Noise and near-misses; valid frames only as replays of a record already there
        # (a valid new frame would be a new op, tested below).
        noise = data.draw(tails(records[-1].seq, stale_only=True), label="tail")
        replay = frame(records[-1].seq, records[-1].payload) if data.draw(st.booleans(), label="replay") else b""
        content += replay + noise
    else:
        offset = data.draw(st.integers(0, len(content) - 1), label="offset")
        if mode == "truncate":
            content = content[:offset]
        elif mode == "overwrite":
            content = content[:offset] + data.draw(st.binary(min_size=1, max_size=200), label="garbage")
        else:
            flipped = bytearray(content)
            flipped[offset] ^= data.draw(st.integers(1, 255), label="xor")
            content = bytes(flipped)
    target.write_bytes(content)
    check_collection(directory, base, ids + ["never-written"])
    shutil.rmtree(directory)


def test_commit_log_cut_at_every_record_boundary(crashed, tmp_path):
    """A batch spanning both shards is there only while its commit record is."""
    pristine, base, targets, ids = crashed
    commits = [t for t in targets if t.parts[0] == "commits"][-1]  # the newest: batches after the checkpoint
    content = (pristine / commits).read_bytes()
    assert len(content) >= 40  # at least two commit records (20-byte frames naming their shards)
    for offset in range(0, len(content) + 1, 4):
        directory = tmp_path / f"cut-{offset}"
        shutil.copytree(pristine, directory)
        (directory / commits).write_bytes(content[:offset])
        check_collection(directory, base, ids)
        shutil.rmtree(directory)


def _not_quite_ops() -> list[bytes]:
    head = struct.pack("<4sBBH", b"GSop", 1, ops.UPSERT, 1)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, pa.schema([("x", pa.int64())])) as w:
        w.write_table(pa.table({"x": [1]}))
    return [
        b"",
        head,  # the op header and no table
        head + b"\xff" * 40,  # no Arrow stream after the header
        head[:4] + b"\x09" + head[5:] + sink.getvalue().to_pybytes(),  # a future format version
        head + sink.getvalue().to_pybytes(),  # a table without the id column
        ops.encode_upsert(["x"], np.ones((1, DIM + 1), np.float32), pa.table({}), 1),  # the wrong dim
    ]


@FUZZ
@given(payload=st.one_of(st.binary(max_size=300), st.sampled_from(_not_quite_ops())), shard=st.integers(0, 1))
def test_a_record_with_a_valid_crc_but_no_op_is_a_clear_error(crashed, tmp_path, payload, shard):
    """Recovery cannot tell such a record from a real op by its framing; replay refuses it by name."""
    pristine, base, targets, ids = crashed
    directory = tmp_path / uuid.uuid4().hex
    shutil.copytree(pristine, directory)
    wal_dir = directory / f"shard-{shard:03d}" / "wal"
    newest = log_files(wal_dir)[-1]
    seq = parse([p.read_bytes() for p in log_files(wal_dir)])[0][-1].seq + 100
    newest.write_bytes(newest.read_bytes() + frame(seq, payload))
    for _ in range(2):  # a failed open lets go of the files it locked: the second fails the same way
        with pytest.raises(ValueError, match=rf"shard {shard} of .*WAL record {seq} .*not a gpusearch op"):
            gs.Collection.open(directory, device="cpu", fsync=False)
    shutil.rmtree(directory)


@pytest.fixture(autouse=True)
def _quiet_recovery_warnings(caplog):
    caplog.set_level(logging.ERROR, logger="gpusearch")
