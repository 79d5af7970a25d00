"""Three WAL faults that once lost acknowledged writes silently, each now a clear error.

a. A shard's WAL damaged *inside* a batch that the commit log says was committed:
   the other shards used to replay their parts of it (a half-applied batch, and the
   records after the damage on that shard gone). Now ``Collection.open`` refuses,
   naming the damaged file and the batch, and changes nothing on disk.
b. A finished (rotated) WAL file cut exactly on a record boundary: recovery used to
   read it as complete and lose the cut records without a word. Now every rotated
   file is sealed (a ``wal-<seq>.log.sealed`` side file with its size and last seq)
   and a sealed file that does not match, or a sealed file that is missing, is an
   error naming it.
c. A stray file whose name sorts first in ``wal/``: recovery used to take it for a
   torn tail and delete it *and every later file*. Damage in a file that is not the
   newest is never a torn tail, so it is now an error naming the file; nothing is
   deleted.

Each test costs well under a second.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import gpusearch as gs
from gpusearch.wal import WALCorruptError, WALRecord, WriteAheadLog

DIM = 8


def log_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith("wal-") and p.name.endswith(".log"))


def record_spans(path: Path) -> list[tuple[int, int, int]]:
    """(seq, start offset, end offset) of each record of a valid WAL file (framing per gpusearch.wal)."""
    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        length, seq = struct.unpack_from("<IQ", data, pos + 4)
        out.append((seq, pos, pos + 20 + length))
        pos += 20 + length
    return out


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != "LOCK"}


def vectors(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def write_log(directory: Path, seqs, rotate_after=()) -> list[WALRecord]:
    wal, _ = WriteAheadLog.open(directory)
    written = []
    for s in seqs:
        wal.append(s, f"payload {s}".encode())
        written.append(WALRecord(s, f"payload {s}".encode()))
        if s in rotate_after:
            wal.rotate()
    wal.close()
    return written


# -- a. a committed batch damaged on one shard ----------------------------------------


def _two_shard_collection(path: Path):
    col = gs.Collection.create(path, dim=DIM, metric="l2", shards=2, device="cpu", fsync=True)
    batches = []
    for b in range(3):
        ids = [f"b{b}-{i}" for i in range(8)]  # 8 ids: both shards get some (checked below)
        seq = col.upsert(ids, vectors(b, 8)).sequence
        batches.append((seq, ids))
    col._commits.close()  # "crash": leave the WALs as they are, no checkpoint on close
    for s in col._shards:
        s.close()
    return batches


def test_a_committed_batch_damaged_on_one_shard_refuses_to_open(tmp_path):
    path = tmp_path / "col"
    batches = _two_shard_collection(path)
    (wal_file,) = log_files(path / "shard-001" / "wal")
    spans = {seq: (start, end) for seq, start, end in record_spans(wal_file)}
    assert all(seq in spans for seq, _ in batches)  # every batch spans both shards
    seq, ids = batches[1]
    start, end = spans[seq]
    data = bytearray(wal_file.read_bytes())
    data[(start + end) // 2] ^= 0x5A  # a flipped byte inside the batch's part, after it was committed
    wal_file.write_bytes(bytes(data))
    before = snapshot(path)

    for _ in range(2):  # a refused open lets go of its locks: the next one says the same
        with pytest.raises(WALCorruptError) as info:
            gs.Collection.open(path, device="cpu")
        message = str(info.value)
        assert f"batch {seq}" in message and "committed" in message
        assert str(wal_file) in message and f"offset {start}" in message and "CRC mismatch" in message
        assert "shard 1" in message
        assert snapshot(path) == before  # nothing cut, nothing deleted: the evidence stays

    # With the file restored the collection opens whole.
    data[(start + end) // 2] ^= 0x5A
    wal_file.write_bytes(bytes(data))
    col = gs.Collection.open(path, device="cpu")
    try:
        for b, (_, ids) in enumerate(batches):
            got = col.fetch(ids)
            assert got.ids == ids
            np.testing.assert_array_equal(got.vectors, vectors(b, 8))
    finally:
        col.close()


def test_a_commit_records_of_older_releases_still_catch_it(tmp_path):
    """Older commit records are empty (they do not name their shards): the parts' own count is used."""
    path = tmp_path / "col"
    batches = _two_shard_collection(path)
    for commit_file in log_files(path / "commits"):
        frames = b""
        for seq, _, _ in record_spans(commit_file):
            body = struct.pack("<IQ", 0, seq)
            frames += b"GWL1" + body + struct.pack("<I", zlib.crc32(body))
        commit_file.write_bytes(frames)
    (wal_file,) = log_files(path / "shard-001" / "wal")
    seq, start, end = record_spans(wal_file)[1]
    assert seq == batches[1][0]
    wal_file.write_bytes(wal_file.read_bytes()[:start] + b"\x00" * (end - start) + wal_file.read_bytes()[end:])
    with pytest.raises(WALCorruptError, match=rf"batch {seq} was committed across several shards.*shard 1"):
        gs.Collection.open(path, device="cpu")


def test_a_damage_after_the_last_commit_is_still_a_cut_tail(tmp_path):
    """A torn part of a batch that never got its commit is dropped everywhere, as before."""
    path = tmp_path / "col"
    batches = _two_shard_collection(path)
    (wal_file,) = log_files(path / "shard-001" / "wal")
    seq, start, end = record_spans(wal_file)[-1]
    commit_file = log_files(path / "commits")[-1]
    c_seq, c_start, _ = record_spans(commit_file)[-1]
    assert c_seq == seq
    commit_file.write_bytes(commit_file.read_bytes()[:c_start])  # the commit never made it
    wal_file.write_bytes(wal_file.read_bytes()[: end - 3])  # and this part was torn
    col = gs.Collection.open(path, device="cpu")
    try:
        assert col.fetch(batches[2][1]).ids == []  # not on either shard
        for b in range(2):
            assert col.fetch(batches[b][1]).ids == batches[b][1]
    finally:
        col.close()


# -- b. a finished file cut on a record boundary -------------------------------------


def test_b_finished_file_cut_on_a_record_boundary_is_an_error(tmp_path):
    write_log(tmp_path, range(1, 7), rotate_after={3})  # wal-1 (seqs 1-3, sealed), wal-4 (4-6)
    first, second = log_files(tmp_path)
    spans = record_spans(first)
    first.write_bytes(first.read_bytes()[: spans[1][2]])  # drop seq 3 exactly at its start
    before = snapshot(tmp_path)
    with pytest.raises(WALCorruptError) as info:
        WriteAheadLog.open(tmp_path)
    message = str(info.value)
    assert str(first) in message and "sealed" in message
    assert f"{spans[1][2]} bytes" in message and f"{spans[2][2]} bytes" in message
    assert "through seq 2" in message and "through seq 3" in message
    assert snapshot(tmp_path) == before


def test_b_the_newest_file_when_sealed_is_checked_too(tmp_path):
    write_log(tmp_path, [1, 2, 3], rotate_after={3})  # rotated, nothing appended since
    (only,) = log_files(tmp_path)
    only.write_bytes(only.read_bytes()[: record_spans(only)[1][2]])
    with pytest.raises(WALCorruptError, match="sealed"):
        WriteAheadLog.open(tmp_path)


def test_b_a_missing_finished_file_is_an_error(tmp_path):
    write_log(tmp_path, range(1, 10), rotate_after={3, 6})  # wal-1, wal-4, wal-7
    files = log_files(tmp_path)
    files[1].unlink()  # seqs 4-6 gone; its seal is still there
    with pytest.raises(WALCorruptError, match=r"wal-00000000000000000004\.log.*missing"):
        WriteAheadLog.open(tmp_path)


def test_b_a_sealed_file_takes_no_more_appends(tmp_path):
    write_log(tmp_path, [1, 2], rotate_after={2})
    wal, records = WriteAheadLog.open(tmp_path)
    wal.append(3, b"three")  # goes to a new file: the sealed one is finished
    wal.close()
    assert [p.name for p in log_files(tmp_path)] == ["wal-00000000000000000001.log", "wal-00000000000000000003.log"]
    wal, records = WriteAheadLog.open(tmp_path)
    wal.close()
    assert [r.seq for r in records] == [1, 2, 3]


def test_b_logs_without_seals_still_open(tmp_path):
    """Logs written before seals existed: older files are read as before (no seal to check)."""
    written = write_log(tmp_path, range(1, 7), rotate_after={3})
    for p in tmp_path.glob("*.sealed"):
        p.unlink()
    wal, records = WriteAheadLog.open(tmp_path)
    wal.close()
    assert records == written


def test_b_a_seal_left_by_an_interrupted_drop_is_cleared(tmp_path):
    write_log(tmp_path, range(1, 7), rotate_after={3})
    first, _ = log_files(tmp_path)
    first.unlink()  # drop_through removes the file, then its seal; a crash in between leaves the seal
    wal, records = WriteAheadLog.open(tmp_path)
    wal.close()
    assert [r.seq for r in records] == [4, 5, 6]
    assert not (tmp_path / (first.name + ".sealed")).exists()


def test_b_drop_through_removes_seals(tmp_path):
    wal, _ = WriteAheadLog.open(tmp_path)
    for s in range(1, 7):
        wal.append(s, b"x")
        if s % 2 == 0:
            wal.rotate()
    assert len(list(tmp_path.glob("*.sealed"))) == 3
    wal.drop_through(4)
    wal.close()
    assert sorted(p.name for p in tmp_path.glob("*.sealed")) == ["wal-00000000000000000005.log.sealed"]


# -- c. a stray file sorting first -----------------------------------------------------


def test_c_a_stray_file_sorting_first_loses_nothing(tmp_path):
    written = write_log(tmp_path, [5, 6, 7])
    stray = tmp_path / "wal-00000000000000000001.log"
    stray.write_bytes(b"not a WAL file at all, but named like one\n")
    before = snapshot(tmp_path)
    with pytest.raises(WALCorruptError) as info:
        WriteAheadLog.open(tmp_path)
    message = str(info.value)
    assert str(stray) in message and "offset 0" in message and "bad magic" in message
    assert "not the newest" in message and "stray" in message
    assert snapshot(tmp_path) == before  # the real log is untouched
    stray.unlink()
    wal, records = WriteAheadLog.open(tmp_path)
    wal.close()
    assert records == written


def test_c_a_stray_file_in_a_shard_wal(tmp_path):
    path = tmp_path / "col"
    col = gs.Collection.create(path, dim=DIM, metric="l2", shards=1, device="cpu")
    col.upsert([f"r{i}" for i in range(20)], vectors(1, 20))
    col.upsert(["late"], vectors(2, 1))
    col._commits.close()
    col._shards[0].close()  # a crash: everything is in the WAL
    stray = path / "shard-000" / "wal" / "wal-00000000000000000000.log"
    stray.write_bytes(b"\x00" * 100)
    with pytest.raises(WALCorruptError, match=r"wal-00000000000000000000\.log"):
        gs.Collection.open(path, device="cpu")
    stray.unlink()
    col = gs.Collection.open(path, device="cpu")
    try:
        assert len(col) == 21
        np.testing.assert_array_equal(col.fetch(["late"]).vectors, vectors(2, 1))
    finally:
        col.close()


def test_the_errors_cross_process_boundaries_whole():
    """Ray pickles a deployment's exception to send it to the caller: type, message and fields must survive."""
    import errno
    import pickle

    from gpusearch.fileio import DiskFullError

    e = pickle.loads(pickle.dumps(WALCorruptError("WAL x: CRC mismatch at offset 7", Path("/data/x"), 7)))
    assert type(e) is WALCorruptError and str(e) == "WAL x: CRC mismatch at offset 7"
    assert e.path == Path("/data/x") and e.offset == 7 and isinstance(e, ValueError)
    d = pickle.loads(pickle.dumps(DiskFullError(errno.ENOSPC, "no space left on device: x (the disk is full)", "/d/f")))
    assert type(d) is DiskFullError and d.errno == errno.ENOSPC and d.filename == "/d/f"
    assert "the disk is full" in str(d)
