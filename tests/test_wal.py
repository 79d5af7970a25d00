"""Write-ahead log: round trips, torn-tail recovery, rotation, failure paths, kill -9."""
from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpusearch import wal as wal_module
from gpusearch.wal import HEADER_SIZE, WALRecord, WriteAheadLog, encode_record

PACKAGE_DIR = Path(wal_module.__file__).resolve().parent


def payload_for(seq: int) -> bytes:
    """Deterministic payloads of varied length (the crash test's child uses the same rule)."""
    return (f"record-{seq}:".encode() * (seq % 13 + 1))[: 10 + seq % 50]


def log_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("wal-*.log"))


def write_log(directory: Path, seqs, *, rotate_every: int | None = None) -> list[WALRecord]:
    wal, records = WriteAheadLog.open(directory, fsync=False)
    assert records == []
    written = []
    for i, seq in enumerate(seqs):
        if rotate_every and i and i % rotate_every == 0:
            wal.rotate()
        wal.append(seq, payload_for(seq))
        written.append(WALRecord(seq, payload_for(seq)))
    wal.close()
    return written


def record_offsets(records: list[WALRecord]) -> list[int]:
    """Start offset of each record, as if all lay in one file."""
    offsets, pos = [], 0
    for r in records:
        offsets.append(pos)
        pos += HEADER_SIZE + len(r.payload)
    return offsets


def reopen(directory: Path, **kwargs) -> list[WALRecord]:
    wal, records = WriteAheadLog.open(directory, **kwargs)
    wal.close()
    return records


def recovery_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gpusearch.wal" and r.levelno == logging.WARNING]


# --- basics ---------------------------------------------------------------------


def test_round_trip(tmp_path):
    payloads = [b"", b"\x00", b"hello", bytes(range(256)) * 40, bytearray(b"ba"), memoryview(b"mv")]
    with WriteAheadLog.open(tmp_path / "wal")[0] as wal:
        assert wal.last_seq == 0
        assert wal.size_bytes == 0
        for seq, p in zip([1, 2, 5, 9, 10**12, 2**64 - 1], payloads):
            wal.append(seq, p)
        assert wal.last_seq == 2**64 - 1
        size = wal.size_bytes
    assert size == sum(HEADER_SIZE + len(p) for p in payloads)
    records = reopen(tmp_path / "wal")
    assert records == [WALRecord(s, bytes(p)) for s, p in zip([1, 2, 5, 9, 10**12, 2**64 - 1], payloads)]
    assert all(type(r.payload) is bytes for r in records)
    assert [f.name for f in log_files(tmp_path / "wal")] == ["wal-00000000000000000001.log"]


def test_framing_is_the_documented_layout():
    frame = encode_record(0x0102030405060708, b"xyz")
    assert frame[:4] == b"GWL1"
    assert int.from_bytes(frame[4:8], "little") == 3
    assert int.from_bytes(frame[8:16], "little") == 0x0102030405060708
    import zlib

    assert int.from_bytes(frame[16:20], "little") == zlib.crc32(frame[4:16] + b"xyz")
    assert frame[20:] == b"xyz"


def test_reopen_and_continue_appending(tmp_path):
    d = tmp_path / "wal"
    written = write_log(d, [1, 2, 3])
    wal, records = WriteAheadLog.open(d)
    assert records == written
    assert wal.last_seq == 3
    wal.append(4, b"four")
    wal.close()
    assert reopen(d) == written + [WALRecord(4, b"four")]
    assert len(log_files(d)) == 1  # appends continue in the last file


def test_seq_must_increase(tmp_path):
    d = tmp_path / "wal"
    wal, _ = WriteAheadLog.open(d)
    wal.append(5, b"a")
    for bad in (5, 4, 0, -1):
        with pytest.raises(ValueError, match=f"greater than the last seq 5, got {bad}|got {bad}"):
            wal.append(bad, b"b")
    with pytest.raises(ValueError, match="2\\*\\*64"):
        wal.append(2**64, b"b")
    with pytest.raises(TypeError, match="seq must be an int, got float"):
        wal.append(6.0, b"b")
    with pytest.raises(TypeError, match="seq must be an int, got bool"):
        wal.append(True, b"b")
    with pytest.raises(TypeError, match="payload must be bytes, got str"):
        wal.append(6, "text")
    assert wal.last_seq == 5
    wal.close()
    wal, records = WriteAheadLog.open(d)
    with pytest.raises(ValueError, match="greater than the last seq 5, got 3"):
        wal.append(3, b"b")
    wal.close()
    assert records == [WALRecord(5, b"a")]


def test_payload_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(wal_module, "MAX_PAYLOAD_BYTES", 100)
    with WriteAheadLog.open(tmp_path)[0] as wal:
        with pytest.raises(ValueError, match="at most 100 bytes, got 101"):
            wal.append(1, b"x" * 101)


def test_closed_log_refuses(tmp_path):
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.close()
    wal.close()
    with pytest.raises(ValueError, match="closed"):
        wal.append(1, b"x")


def test_second_writer_is_refused(tmp_path):
    wal, _ = WriteAheadLog.open(tmp_path)
    with pytest.raises(RuntimeError, match="already open"):
        WriteAheadLog.open(tmp_path)
    wal.close()
    reopen(tmp_path)


def test_open_creates_missing_parents(tmp_path):
    d = tmp_path / "a" / "b" / "wal"
    wal, records = WriteAheadLog.open(d)
    wal.close()
    assert d.is_dir() and records == []


def test_ignores_unrelated_files(tmp_path):
    write_log(tmp_path, [1, 2])
    (tmp_path / "notes.txt").write_bytes(b"junk")
    (tmp_path / "wal-1.log").write_bytes(b"junk")  # wrong width: not a log file
    assert [r.seq for r in reopen(tmp_path)] == [1, 2]


# --- durability ------------------------------------------------------------------


def test_append_syncs_before_returning(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(wal_module, "_fdatasync", lambda fd: calls.append(("file", fd)))
    monkeypatch.setattr(wal_module, "fsync_dir", lambda path: calls.append(("dir", str(path))))
    wal, _ = WriteAheadLog.open(tmp_path / "wal")
    calls.clear()
    wal.append(1, b"a")
    assert [c[0] for c in calls] == ["file", "dir"]  # a new file's directory entry is synced too
    wal.append(2, b"b")
    assert [c[0] for c in calls] == ["file", "dir", "file"]
    wal.close()

    calls.clear()
    wal, _ = WriteAheadLog.open(tmp_path / "wal", fsync=False)
    wal.append(3, b"c")
    assert calls == []
    wal.sync()
    assert [c[0] for c in calls] == ["file"]
    wal.close()


def test_group_commit_shares_one_sync(tmp_path, monkeypatch):
    """Appends written while a sync is running are all covered by the next single sync."""
    n_threads = 6
    first_sync_entered = threading.Event()
    release_first_sync = threading.Event()
    syncs = []

    def slow_first_fdatasync(fd):
        syncs.append(fd)
        if len(syncs) == 1:
            first_sync_entered.set()
            assert release_first_sync.wait(10)

    monkeypatch.setattr(wal_module, "_fdatasync", slow_first_fdatasync)
    wal, _ = WriteAheadLog.open(tmp_path, fsync=False)
    order_lock = threading.Lock()
    counter = iter(range(1, 1000))
    errors = []

    def writer():
        try:
            with order_lock:
                wal.append(next(counter), b"payload")
            wal.sync()
        except Exception as exc:  # surfaced below
            errors.append(exc)

    first = threading.Thread(target=writer)
    first.start()
    assert first_sync_entered.wait(10)
    others = [threading.Thread(target=writer) for _ in range(n_threads - 1)]
    for t in others:
        t.start()
    deadline = time.monotonic() + 10
    while wal._written < n_threads and time.monotonic() < deadline:
        time.sleep(0.001)
    release_first_sync.set()
    for t in [first, *others]:
        t.join(10)
    assert errors == []
    assert len(syncs) == 2  # one for the first record, one shared by the five others
    wal.close()
    assert [r.seq for r in reopen(tmp_path)] == list(range(1, n_threads + 1))


def test_concurrent_appends_keep_order(tmp_path):
    wal, _ = WriteAheadLog.open(tmp_path)
    order_lock = threading.Lock()
    state = {"seq": 0}

    def writer():
        for _ in range(25):
            with order_lock:
                state["seq"] += 1
                wal.append(state["seq"], payload_for(state["seq"]))

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    wal.close()
    assert reopen(tmp_path) == [WALRecord(s, payload_for(s)) for s in range(1, 101)]


# --- torn and corrupt tails --------------------------------------------------------


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _set_length(path: Path, offset: int, length: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset + 4: offset + 8] = length.to_bytes(4, "little")
    path.write_bytes(bytes(data))


# name -> (damage(path, offsets of the 5 records), records kept, words in the warning)
TAIL_DAMAGE = {
    "cut mid-header": (lambda p, o: _truncate(p, o[4] + 7), 4, "short header"),
    "cut mid-payload": (lambda p, o: _truncate(p, o[4] + HEADER_SIZE + 3), 4, "short payload"),
    "flipped payload byte": (lambda p, o: _flip(p, o[4] + HEADER_SIZE + 1), 4, "CRC mismatch"),
    "flipped CRC": (lambda p, o: _flip(p, o[4] + 16), 4, "CRC mismatch"),
    "flipped seq": (lambda p, o: _flip(p, o[4] + 9), 4, "CRC mismatch"),
    "bad magic": (lambda p, o: _flip(p, o[4]), 4, "bad magic"),
    "absurd length": (lambda p, o: _set_length(p, o[4], 0xFFFFFFF0), 4, "above the limit"),
    "length past the end": (lambda p, o: _set_length(p, o[4], 10_000), 4, "short payload"),
    "garbage appended": (lambda p, o: _append(p, b"\x07garbage that is not a record"), 5, "bad magic"),
    "zeros appended": (lambda p, o: _append(p, bytes(4096)), 5, "bad magic"),
    "seq not increasing": (lambda p, o: _append(p, encode_record(3, b"old")), 5, "not greater"),
    "corrupt middle record": (lambda p, o: _flip(p, o[2] + HEADER_SIZE + 2), 2, "CRC mismatch"),
}


@pytest.mark.parametrize("damage", list(TAIL_DAMAGE))
def test_torn_tail_is_cut(tmp_path, caplog, damage):
    mutate, kept, reason = TAIL_DAMAGE[damage]
    written = write_log(tmp_path, [1, 2, 3, 4, 5])
    (path,) = log_files(tmp_path)
    offsets = record_offsets(written)
    good_end = (offsets + [path.stat().st_size])[kept]
    mutate(path, offsets)
    caplog.set_level(logging.WARNING, logger="gpusearch.wal")

    wal, records = WriteAheadLog.open(tmp_path)
    assert records == written[:kept]
    assert wal.last_seq == written[kept - 1].seq
    (message,) = recovery_warnings(caplog)
    assert path.name in message and f"offset {good_end}" in message and reason in message
    assert path.stat().st_size == good_end  # cut on disk, not just skipped

    wal.append(100, b"after")
    wal.close()
    caplog.clear()
    assert reopen(tmp_path) == written[:kept] + [WALRecord(100, b"after")]
    assert recovery_warnings(caplog) == []


def test_first_record_corrupt_removes_the_file(tmp_path, caplog):
    write_log(tmp_path, [1, 2, 3], rotate_every=2)  # files starting at 1 and 3
    first, second = log_files(tmp_path)
    _flip(second, 0)
    caplog.set_level(logging.WARNING, logger="gpusearch.wal")
    wal, records = WriteAheadLog.open(tmp_path)
    assert [r.seq for r in records] == [1, 2]
    assert log_files(tmp_path) == [first]
    wal.append(3, b"again")  # a new file: the first one was sealed when the log rotated
    wal.close()
    assert log_files(tmp_path) == [first, second]
    assert [r.seq for r in reopen(tmp_path)] == [1, 2, 3]


def test_corruption_in_an_earlier_file_is_an_error_that_changes_nothing(tmp_path):
    """Damage in a file the log moved on from is no torn tail: cutting it would lose acknowledged records
    (and, before, every later file with them). ``open`` refuses, naming the file, and leaves every byte."""
    write_log(tmp_path, range(1, 10), rotate_every=3)  # files at 1, 4, 7
    files = log_files(tmp_path)
    assert [f.name for f in files] == [f"wal-{s:020d}.log" for s in (1, 4, 7)]
    raw = files[1].read_bytes()
    pos = 20 + len(payload_for(4))  # record seq 5 starts here
    _flip(files[1], pos + HEADER_SIZE)
    before = {p.name: p.read_bytes() for p in log_files(tmp_path)}
    with pytest.raises(wal_module.WALCorruptError) as info:
        WriteAheadLog.open(tmp_path)
    message = str(info.value)
    assert files[1].name in message and f"offset {pos}" in message and "CRC mismatch" in message
    assert "not the newest" in message and files[2].name in message
    assert info.value.path == files[1] and info.value.offset == pos
    assert {p.name: p.read_bytes() for p in log_files(tmp_path)} == before
    assert len(raw) == files[1].stat().st_size


def test_empty_file_from_a_dead_append_is_removed(tmp_path):
    write_log(tmp_path, [1, 2])
    (tmp_path / "wal-00000000000000000003.log").write_bytes(b"")
    wal, records = WriteAheadLog.open(tmp_path)
    assert [r.seq for r in records] == [1, 2]
    assert len(log_files(tmp_path)) == 1
    wal.append(3, b"x")
    wal.close()
    assert [r.seq for r in reopen(tmp_path)] == [1, 2, 3]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payloads=st.lists(st.binary(max_size=40), min_size=0, max_size=6),
    tail=st.binary(min_size=1, max_size=300),
)
def test_arbitrary_tail_bytes_never_break_open(tmp_path, payloads, tail):
    d = tmp_path / uuid.uuid4().hex
    wal, _ = WriteAheadLog.open(d, fsync=False)
    good = []
    for seq, p in enumerate(payloads, start=1):
        wal.append(seq, p)
        good.append(WALRecord(seq, p))
    if not good:
        wal.append(1, b"one")
        good.append(WALRecord(1, b"one"))
    wal.close()
    (path,) = log_files(d)
    _append(path, tail)

    wal, records = WriteAheadLog.open(d, fsync=False)
    assert records == good[: len(records)]
    assert records == good  # the good records are intact, so all of them come back
    next_seq = wal.last_seq + 1
    wal.append(next_seq, b"later")
    wal.close()
    assert reopen(d, fsync=False) == records + [WALRecord(next_seq, b"later")]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_damage_yields_a_prefix(tmp_path, data):
    """A flipped byte or a cut anywhere in the newest file keeps exactly the records before it; a flipped
    byte in an older file is an error (see test_corruption_in_an_earlier_file_is_an_error_that_changes_nothing)."""
    d = tmp_path / uuid.uuid4().hex
    n = data.draw(st.integers(1, 9), label="records")
    rotate_every = data.draw(st.integers(1, 5), label="rotate_every")
    written = write_log(d, range(1, n + 1), rotate_every=rotate_every)
    files = log_files(d)
    groups = [written[i: i + rotate_every] for i in range(0, n, rotate_every)]
    assert len(groups) == len(files)
    before = [sum(len(g) for g in groups[:i]) for i in range(len(groups))]

    if data.draw(st.booleans(), label="flip"):
        fi = data.draw(st.integers(0, len(files) - 1), label="file")
        pos = data.draw(st.integers(0, files[fi].stat().st_size - 1), label="offset")
        bits = data.draw(st.integers(1, 255), label="xor")
        raw = bytearray(files[fi].read_bytes())
        raw[pos] ^= bits
        files[fi].write_bytes(bytes(raw))
    else:
        fi = len(files) - 1
        pos = data.draw(st.integers(0, files[fi].stat().st_size - 1), label="cut")
        _truncate(files[fi], pos)
    hit = sum(1 for o in record_offsets(groups[fi]) if o <= pos) - 1  # record holding the damage
    expected = written[: before[fi] + hit]

    if fi < len(files) - 1:
        # Not the newest file: finished and synced when the log rotated, so no torn tail: refused, untouched.
        with pytest.raises(wal_module.WALCorruptError, match=files[fi].name):
            WriteAheadLog.open(d, fsync=False)
        return
    wal, records = WriteAheadLog.open(d, fsync=False)
    assert records == expected
    wal.append(1000, b"after")
    wal.close()
    assert reopen(d, fsync=False) == expected + [WALRecord(1000, b"after")]


# --- rotation --------------------------------------------------------------------


def test_rotate_and_drop_through(tmp_path):
    wal, _ = WriteAheadLog.open(tmp_path)
    for s in (1, 2, 3):
        wal.append(s, payload_for(s))
    wal.rotate()
    wal.rotate()  # nothing open: no-op
    for s in (10, 11):
        wal.append(s, payload_for(s))
    wal.rotate()
    wal.append(20, payload_for(20))
    names = [f.name for f in log_files(tmp_path)]
    assert names == [f"wal-{s:020d}.log" for s in (1, 10, 20)]
    total = wal.size_bytes
    assert total == sum(f.stat().st_size for f in log_files(tmp_path))

    wal.drop_through(2)  # file 1 still holds seq 3
    assert len(log_files(tmp_path)) == 3
    wal.drop_through(3)
    assert [f.name for f in log_files(tmp_path)] == names[1:]
    assert wal.size_bytes == total - sum(HEADER_SIZE + len(payload_for(s)) for s in (1, 2, 3))
    wal.drop_through(10**6)  # never the file being appended to
    assert [f.name for f in log_files(tmp_path)] == names[2:]
    wal.append(21, b"x")
    wal.close()
    assert [r.seq for r in reopen(tmp_path)] == [20, 21]


def test_drop_through_keeps_newest_file_after_rotate(tmp_path):
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(1, b"a")
    wal.rotate()
    wal.append(2, b"b")
    wal.rotate()
    wal.drop_through(2)
    assert [f.name for f in log_files(tmp_path)] == ["wal-00000000000000000002.log"]
    wal.close()
    wal, records = WriteAheadLog.open(tmp_path)
    assert wal.last_seq == 2  # survives: the newest file is kept
    with pytest.raises(ValueError, match="greater than the last seq 2"):
        wal.append(2, b"again")
    wal.close()


def test_reopen_after_rotate_starts_the_named_file(tmp_path):
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(1, b"a")
    wal.rotate()
    wal.close()
    wal, records = WriteAheadLog.open(tmp_path)
    wal.rotate()
    wal.append(7, b"b")
    wal.close()
    assert [f.name for f in log_files(tmp_path)] == [f"wal-{s:020d}.log" for s in (1, 7)]
    assert [r.seq for r in reopen(tmp_path)] == [1, 7]


# --- failed writes ---------------------------------------------------------------


def _failing_write(wal, *, fail_after: int, err: int = errno.ENOSPC):
    """An os.write that lets ``fail_after`` bytes of the log's next record through, then fails."""
    real_write = os.write
    state = {"written": 0, "failed": False}

    def fake_write(fd, data):
        if fd != wal._fd or state["failed"]:
            return real_write(fd, data)
        if state["written"] < fail_after:
            n = real_write(fd, bytes(data)[: fail_after - state["written"]])
            state["written"] += n
            return n
        state["failed"] = True
        raise OSError(err, os.strerror(err))

    return fake_write


@pytest.mark.parametrize("fail_after", [0, 5, 23])
def test_enospc_partial_write_leaves_log_valid(tmp_path, monkeypatch, caplog, fail_after):
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(1, b"first record")
    size = wal.size_bytes
    (path,) = log_files(tmp_path)
    monkeypatch.setattr(os, "write", _failing_write(wal, fail_after=fail_after))
    with pytest.raises(OSError) as info:
        wal.append(2, b"this write runs out of space")
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert path.stat().st_size == size == wal.size_bytes
    assert wal.last_seq == 1
    wal.append(2, b"retried")  # the log is still usable
    wal.close()
    caplog.set_level(logging.WARNING, logger="gpusearch.wal")
    caplog.clear()
    assert reopen(tmp_path) == [WALRecord(1, b"first record"), WALRecord(2, b"retried")]
    assert recovery_warnings(caplog) == []  # nothing to cut: the partial bytes were already gone


def test_enospc_in_a_new_file(tmp_path, monkeypatch):
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(1, b"a")
    wal.rotate()
    monkeypatch.setattr(os, "write", _failing_write(wal, fail_after=3))
    with pytest.raises(OSError):
        wal.append(2, b"b")
    monkeypatch.undo()
    wal.close()  # the empty new file stays until the next open removes it
    wal, records = WriteAheadLog.open(tmp_path)
    assert records == [WALRecord(1, b"a")]
    assert [f.name for f in log_files(tmp_path)] == ["wal-00000000000000000001.log"]
    wal.append(5, b"c")
    wal.close()
    assert [r.seq for r in reopen(tmp_path)] == [1, 5]


def test_failed_repair_poisons_the_log(tmp_path, monkeypatch):
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(1, b"a")
    monkeypatch.setattr(os, "write", _failing_write(wal, fail_after=4, err=errno.EIO))
    monkeypatch.setattr(os, "ftruncate", lambda fd, size: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError):
        wal.append(2, b"bb")
    monkeypatch.undo()
    with pytest.raises(OSError, match="reopen"):
        wal.append(3, b"c")
    wal.close()
    wal, records = WriteAheadLog.open(tmp_path)  # recovery cuts the 4 stray bytes
    wal.close()
    assert records == [WALRecord(1, b"a")]


def test_failed_fsync_poisons_the_log(tmp_path, monkeypatch):
    wal, _ = WriteAheadLog.open(tmp_path)
    wal.append(1, b"a")

    def broken(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(wal_module, "_fdatasync", broken)
    with pytest.raises(OSError):
        wal.append(2, b"b")
    monkeypatch.undo()
    with pytest.raises(OSError, match="reopen"):
        wal.append(3, b"c")
    wal.close()
    # The record whose sync failed reached the page cache, so it may well survive.
    assert [r.seq for r in reopen(tmp_path)] == [1, 2]


# --- kill -9 ---------------------------------------------------------------------

# The child imports the WAL alone: a bare package object stands in for gpusearch/__init__.py,
# so its start-up does not pay for (or depend on) the rest of the engine.
CHILD = """
import sys, types
package = types.ModuleType("gpusearch")
package.__path__ = [sys.argv[3]]
sys.modules["gpusearch"] = package
from gpusearch.wal import WriteAheadLog

def payload_for(seq):
    return (f"record-{seq}:".encode() * (seq % 13 + 1))[: 10 + seq % 50]

wal, records = WriteAheadLog.open(sys.argv[1], fsync=sys.argv[2] == "1")
seq = records[-1].seq if records else 0
while True:
    seq += 1
    wal.append(seq, payload_for(seq))
    sys.stdout.write(f"{seq}\\n")
    sys.stdout.flush()
    if seq % 17 == 0:
        wal.rotate()
"""


@pytest.mark.parametrize("fsync", [True, False])
def test_kill_9_keeps_every_acknowledged_record(tmp_path, fsync):
    d = tmp_path / "wal"
    acked: list[int] = []
    for round_ in range(2):  # the second round recovers and continues after the first kill
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(d), "1" if fsync else "0", str(PACKAGE_DIR)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        target = len(acked) + 60
        deadline = time.monotonic() + 60
        try:
            while len(acked) < target and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                acked.append(int(line))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            # Read through the buffered pipe (communicate() would skip what readline() buffered).
            out, err = proc.stdout.read(), proc.stderr.read()
            proc.stdout.close()
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL, err.decode()
        acked.extend(int(x) for x in out.decode().split("\n")[:-1])  # complete lines only
        assert len(acked) >= target, err.decode()

        records = reopen(d, fsync=fsync)
        seqs = [r.seq for r in records]
        assert seqs == list(range(1, len(seqs) + 1))  # a contiguous prefix of what was attempted
        assert seqs[-1] >= acked[-1]  # every acknowledged record survived
        assert seqs[-1] <= acked[-1] + 1  # at most the one append in flight when killed
        assert all(r.payload == payload_for(r.seq) for r in records)
        acked = seqs  # the in-flight record, if it landed, is now part of the log


def test_drop_through_can_reclaim_the_newest_file_after_rotate(tmp_path):
    from gpusearch.wal import WriteAheadLog

    wal, _ = WriteAheadLog.open(tmp_path / "w")
    wal.append(1, b"a")
    wal.append(2, b"b")
    wal.drop_through(2, keep_newest=False)  # still being appended to: kept
    assert wal.size_bytes > 0
    wal.rotate()
    wal.drop_through(2)  # default: the newest file stays
    assert wal.size_bytes > 0
    wal.drop_through(2, keep_newest=False)
    assert wal.size_bytes == 0 and not list((tmp_path / "w").glob("wal-*.log"))
    wal.append(3, b"c")  # seq still has to increase past what was dropped
    with pytest.raises(ValueError, match="greater"):
        wal.append(3, b"d")
    wal.close()
    again, records = WriteAheadLog.open(tmp_path / "w")
    assert [(r.seq, r.payload) for r in records] == [(3, b"c")]
    again.close()
