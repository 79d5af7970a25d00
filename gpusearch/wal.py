"""Write-ahead log of one shard, kept in a directory of its own.

The log is a sequence of records ``(seq, payload)``. The caller chooses ``seq``
(a strictly increasing unsigned 64-bit integer, at least 1) and the payload (opaque
bytes: the WAL does not know what they mean). :meth:`WriteAheadLog.append`
returns only once the record is durable.

Files
-----
The directory holds files named ``wal-<first seq, 20 digits>.log`` (zero padded,
so name order is seq order) plus a ``LOCK`` file that one open log holds with
``flock`` so two writers never share a directory. Files are read in name order.
A new file is started by the first append after :meth:`WriteAheadLog.rotate`,
named after that append's seq. :meth:`WriteAheadLog.drop_through` deletes whole
files once a checkpoint covers them, but never the newest file, so the last seq
survives a reopen. Other names in the directory are ignored.

Record framing
--------------
Each record is a 20-byte header followed by the payload, all little-endian::

    offset  size  field
         0     4  magic    u32  0x314C5747 (the bytes b"GWL1")
         4     4  length   u32  payload length in bytes, at most MAX_PAYLOAD_BYTES (2**30)
         8     8  seq      u64
        16     4  crc      u32  zlib.crc32 over bytes 4..16 (length, seq), then the payload
        20  length payload

Records follow each other with no padding; a file is nothing but records.

Recovery
--------
:meth:`WriteAheadLog.open` reads every file and stops at the first record that is
not valid: a short header, a short payload, a bad magic, a length above
``MAX_PAYLOAD_BYTES``, a CRC mismatch, or a seq not greater than the one before
(across files too). That record and everything after it -- the rest of its file
and all later files -- is cut: the file is truncated at the end of the last good
record (removed when nothing good is left), later files are removed, and one
warning says how many bytes were dropped, from which file and offset, and why.
A crash can only tear the tail of the newest file, so in practice a cut only
removes a record whose append never returned. ``open`` never raises on the
contents of the files.

Durability
----------
With ``fsync=True`` an append writes the record and then ``fdatasync``s the file
(and fsyncs the directory after a new file was created) before it returns.
Concurrent appenders share fsyncs (group commit): records written while one
thread is syncing are all covered by the next single sync. A write that fails
part way (``ENOSPC``, say) is truncated away before the ``OSError`` is re-raised,
so the log stays valid and can take the next append. A failed fsync leaves the
state of the written data unknown; the log then refuses further appends and must
be reopened (recovery keeps whatever reached the disk intact). With
``fsync=False`` a record survives the death of the process (it is in the page
cache) but not a power cut until :meth:`WriteAheadLog.sync`, ``rotate`` or
``close``. A caller that orders its appends under its own lock gets group commit
by opening with ``fsync=False``, appending under that lock and calling ``sync()``
after releasing it.

Following a live log
--------------------
:class:`WALTail` reads a log that another process (or object) is appending to,
without taking the lock and without ever truncating or deleting anything. It
keeps a cursor (file, byte offset, last seq) so each call reads only the bytes
appended since the previous one. An incomplete or invalid frame at the cursor is
taken to be a write still in progress: the tail stops there and retries on the
next call. Files that the writer deletes (:meth:`WriteAheadLog.drop_through`)
may vanish at any moment; the tail then says that records may have been missed
(:attr:`WALTail.missed`), and the caller recovers them from its snapshot.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from gpusearch.fileio import fsync_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

__all__ = ["MAX_PAYLOAD_BYTES", "WALCursor", "WALRecord", "WALTail", "WriteAheadLog"]

logger = logging.getLogger(__name__)

MAGIC = 0x314C5747
HEADER = struct.Struct("<IIQI")
HEADER_SIZE = HEADER.size
_CRC_FIELDS = struct.Struct("<IQ")
MAX_PAYLOAD_BYTES = 1 << 30
MAX_SEQ = (1 << 64) - 1
LOCK_NAME = "LOCK"
_NAME_RE = re.compile(r"^wal-(\d{20})\.log$")

_fdatasync = getattr(os, "fdatasync", os.fsync)


@dataclass(frozen=True)
class WALRecord:
    """One log record.

    Attributes
    ----------
    seq : int
        Caller-chosen sequence number, strictly increasing through the log.
    payload : bytes
        Opaque contents.
    """

    seq: int
    payload: bytes


def _file_name(first_seq: int) -> str:
    return f"wal-{first_seq:020d}.log"


def _crc(length: int, seq: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(_CRC_FIELDS.pack(length, seq)))


def encode_record(seq: int, payload: bytes) -> bytes:
    """Frame one record as it is stored on disk (see the module docstring).

    Examples
    --------
    >>> frame = encode_record(7, b"abc")
    >>> len(frame), frame[:4]
    (23, b'GWL1')
    """
    length = len(payload)
    return HEADER.pack(MAGIC, length, seq, _crc(length, seq, payload)) + payload


@dataclass
class _LogFile:
    path: Path
    last_seq: int | None  # None while the file holds no record
    size: int


@dataclass
class _Scan:
    records: list[WALRecord]
    good_end: int
    size: int
    problem: str | None


def _scan_file(path: Path, prev_seq: int) -> _Scan:
    """Read the valid records of one file, stopping at the first invalid one."""
    records: list[WALRecord] = []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        pos = 0
        while True:
            header = f.read(HEADER_SIZE)
            if not header:
                return _Scan(records, pos, size, None)
            if len(header) < HEADER_SIZE:
                problem = f"short header ({len(header)} of {HEADER_SIZE} bytes)"
                break
            magic, length, seq, crc = HEADER.unpack(header)
            if magic != MAGIC:
                problem = f"bad magic 0x{magic:08x}"
                break
            if length > MAX_PAYLOAD_BYTES:
                problem = f"payload length {length} above the limit {MAX_PAYLOAD_BYTES}"
                break
            # Compare with the file size before reading, so a torn length never allocates.
            if pos + HEADER_SIZE + length > size:
                problem = f"short payload ({size - pos - HEADER_SIZE} of {length} bytes)"
                break
            payload = f.read(length)
            if len(payload) < length:
                problem = f"short payload ({len(payload)} of {length} bytes)"
                break
            if _crc(length, seq, payload) != crc:
                problem = "CRC mismatch"
                break
            if seq <= prev_seq:
                problem = f"seq {seq} not greater than the previous seq {prev_seq}"
                break
            records.append(WALRecord(seq, payload))
            prev_seq = seq
            pos += HEADER_SIZE + length
    return _Scan(records, pos, size, problem)


def _lock_directory(directory: Path) -> int:
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is None:  # pragma: no cover - not POSIX
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise RuntimeError(
                f"WAL directory {directory} is already open in another WriteAheadLog "
                f"(held lock {directory / LOCK_NAME}); close that one first"
            ) from None
        # A file system without flock (some network mounts): go on unprotected.
        logger.warning("cannot lock WAL directory %s (%s); not protected against a second writer", directory, exc)
    return fd


class WriteAheadLog:
    """Append-only, crash-safe log of ``(seq, payload)`` records in one directory.

    Create one with :meth:`open`, which also returns the records already stored.
    All methods are thread-safe. See the module docstring for the file format,
    recovery and durability rules.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     wal, records = WriteAheadLog.open(d)
    ...     wal.append(1, b"first")
    ...     wal.append(2, b"second")
    ...     wal.close()
    ...     wal, records = WriteAheadLog.open(d)
    ...     wal.close()
    >>> [(r.seq, r.payload) for r in records]
    [(1, b'first'), (2, b'second')]
    """

    def __init__(self, directory: Path, files: list[_LogFile], last_seq: int, lock_fd: int, *, fsync: bool):
        """Private: use :meth:`open`."""
        self._dir = directory
        self._fsync = fsync
        self._files = files
        self._last_seq = last_seq
        self._lock_fd = lock_fd
        self._lock = threading.Lock()  # guards the state below and every write
        self._sync_lock = threading.Lock()  # one syncer at a time; taken before _lock, never after
        self._fd: int | None = None
        self._written = 0  # tickets: records written so far by this object
        self._synced = 0  # highest ticket known durable
        self._dir_dirty = False  # a file was created since the directory was last fsynced
        self._failed: OSError | None = None
        self._closed = False
        if files:
            current = files[-1]
            self._fd = os.open(current.path, os.O_WRONLY)
            os.lseek(self._fd, current.size, os.SEEK_SET)

    @classmethod
    def open(cls, directory: str | os.PathLike, *, fsync: bool = True) -> tuple[WriteAheadLog, list[WALRecord]]:
        """Open (or create) the log in ``directory`` and recover its records.

        A torn or corrupt tail is cut and logged as a warning (see the module
        docstring); the contents of the files never make this raise.

        Parameters
        ----------
        directory : str or os.PathLike
            The log's own directory; created (with parents) when missing.
        fsync : bool, default True
            Make every append durable against power loss before it returns.
            ``False`` still survives the death of the process.

        Returns
        -------
        wal : WriteAheadLog
            The open log; appends continue in its newest file.
        records : list of WALRecord
            Every valid record, in seq order.

        Raises
        ------
        RuntimeError
            If another open ``WriteAheadLog`` (in this or another process) holds the directory.
        OSError
            If the directory or its files cannot be read, created or repaired.
        """
        if not isinstance(fsync, bool):
            raise TypeError(f"fsync must be a bool, got {type(fsync).__name__}")
        directory = Path(directory)
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            if fsync:
                fsync_dir(directory.parent)
        lock_fd = _lock_directory(directory)
        try:
            files, records = cls._recover(directory, fsync=fsync)
            last_seq = records[-1].seq if records else 0
            for f in files:
                if f.last_seq is not None:
                    last_seq = max(last_seq, f.last_seq)
            return cls(directory, files, last_seq, lock_fd, fsync=fsync), records
        except BaseException:
            os.close(lock_fd)
            raise

    @staticmethod
    def _recover(directory: Path, *, fsync: bool) -> tuple[list[_LogFile], list[WALRecord]]:
        paths = sorted(directory / name for name in os.listdir(directory) if _NAME_RE.match(name))
        files: list[_LogFile] = []
        records: list[WALRecord] = []
        dir_changed = False
        prev_seq = 0
        for i, path in enumerate(paths):
            scan = _scan_file(path, prev_seq)
            records.extend(scan.records)
            if scan.records:
                prev_seq = scan.records[-1].seq
            if scan.problem is None:
                if scan.records:
                    files.append(_LogFile(path, prev_seq, scan.size))
                else:
                    # Created by an append that died before writing: holds nothing.
                    os.unlink(path)
                    dir_changed = True
                continue
            later = paths[i + 1:]
            dropped = scan.size - scan.good_end + sum(p.stat().st_size for p in later)
            logger.warning(
                "WAL %s: %s at offset %d; cutting %d bytes (the rest of this file%s), keeping %d records",
                path,
                scan.problem,
                scan.good_end,
                dropped,
                f" and {len(later)} later files" if later else "",
                len(records),
            )
            if scan.good_end == 0:
                os.unlink(path)
                dir_changed = True
            else:
                with open(path, "r+b") as f:
                    f.truncate(scan.good_end)
                    if fsync:
                        os.fsync(f.fileno())
                files.append(_LogFile(path, prev_seq, scan.good_end))
            for p in later:
                os.unlink(p)
                dir_changed = True
            break
        if dir_changed and fsync:
            fsync_dir(directory)
        return files, records

    @property
    def directory(self) -> Path:
        """The log's directory."""
        return self._dir

    @property
    def last_seq(self) -> int:
        """Seq of the newest record written (0 when the log has never held one)."""
        return self._last_seq

    @property
    def size_bytes(self) -> int:
        """Total size of the log's files in bytes."""
        with self._lock:
            return sum(f.size for f in self._files)

    def _check_usable(self) -> None:
        if self._closed:
            raise ValueError(f"WAL {self._dir} is closed")
        if self._failed is not None:
            raise OSError(
                self._failed.errno,
                f"WAL {self._dir} failed earlier ({self._failed}); reopen it to recover",
            )

    def append(self, seq: int, payload: bytes) -> None:
        """Append one record and return once it is durable.

        Parameters
        ----------
        seq : int
            Greater than :attr:`last_seq`, at most ``2**64 - 1``.
        payload : bytes-like
            At most ``MAX_PAYLOAD_BYTES`` bytes.

        Raises
        ------
        TypeError
            If ``seq`` is not an int or ``payload`` not bytes-like.
        ValueError
            If ``seq`` does not increase or is out of range, the payload is too
            large, or the log is closed.
        OSError
            If writing or syncing fails. A failed write is truncated away and the
            log stays usable; after a failed sync the record may or may not
            survive, and the log refuses further appends until reopened.
        """
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise TypeError(f"seq must be an int, got {type(seq).__name__}")
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
        payload = bytes(payload)
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload must be at most {MAX_PAYLOAD_BYTES} bytes, got {len(payload)}")
        if not 1 <= seq <= MAX_SEQ:
            raise ValueError(f"seq must be in [1, 2**64 - 1], got {seq}")
        frame = encode_record(seq, payload)
        with self._lock:
            self._check_usable()
            if seq <= self._last_seq:
                raise ValueError(f"seq must be greater than the last seq {self._last_seq}, got {seq}")
            if self._fd is None:
                self._start_file(seq)
            current = self._files[-1]
            self._write_frame(current, frame)
            current.last_seq = seq
            current.size += len(frame)
            self._last_seq = seq
            self._written += 1
            ticket = self._written
        if self._fsync:
            self._sync_through(ticket)

    def _start_file(self, first_seq: int) -> None:
        path = self._dir / _file_name(first_seq)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._files.append(_LogFile(path, None, 0))
        self._dir_dirty = True

    def _write_frame(self, current: _LogFile, frame: bytes) -> None:
        fd = self._fd
        view = memoryview(frame)
        done = 0
        try:
            while done < len(view):
                done += os.write(fd, view[done:])
        except BaseException as exc:
            # Leave no partial record behind, so the next append lands on a valid file.
            try:
                os.ftruncate(fd, current.size)
                os.lseek(fd, current.size, os.SEEK_SET)
                if self._fsync and done:
                    os.fsync(fd)
            except OSError as repair_exc:
                self._failed = repair_exc
                logger.error("WAL %s: cannot truncate a failed write (%s); the log needs reopening", current.path, repair_exc)
            else:
                logger.warning(
                    "WAL %s: write of %d bytes failed after %d (%s); truncated back to %d",
                    current.path, len(frame), done, exc, current.size,
                )
            raise

    def sync(self) -> None:
        """Make every record appended so far durable, even when opened with ``fsync=False``.

        With ``fsync=True`` appends are durable already and this returns at once.
        With ``fsync=False`` it lets a caller batch fsyncs: append under its own
        ordering lock, then call ``sync()`` outside that lock; concurrent callers
        share one fsync (group commit).

        Raises
        ------
        OSError
            If the sync fails; the log then refuses appends until reopened.
        """
        with self._lock:
            self._check_usable()
            ticket = self._written
        self._sync_through(ticket)

    def _sync_through(self, ticket: int) -> None:
        with self._sync_lock:
            if self._synced >= ticket:
                return  # another thread's sync covered this record
            with self._lock:
                self._check_usable()
                target = self._written
                fd = self._fd
                dir_dirty = self._dir_dirty
                self._dir_dirty = False
            try:
                # fd cannot be closed meanwhile: rotate and close take _sync_lock first.
                if fd is not None:
                    _fdatasync(fd)
                if dir_dirty:
                    fsync_dir(self._dir)
            except OSError as exc:
                self._failed = exc
                raise
            self._synced = target

    def _sync_all_locked(self) -> None:
        """Make everything written durable; caller holds _sync_lock and _lock."""
        if self._failed is not None or (self._synced >= self._written and not self._dir_dirty):
            return
        try:
            if self._fd is not None:
                _fdatasync(self._fd)
            if self._dir_dirty:
                fsync_dir(self._dir)
        except OSError as exc:
            self._failed = exc
            raise
        self._dir_dirty = False
        self._synced = self._written

    def rotate(self) -> None:
        """Close the current file; the next append starts a new file named after its seq.

        Call after a checkpoint, so that :meth:`drop_through` can later delete the
        files the checkpoint covers. The closed file is synced first (whatever
        ``fsync`` was given to :meth:`open`).
        """
        with self._sync_lock, self._lock:
            if self._closed:
                raise ValueError(f"WAL {self._dir} is closed")
            if self._fd is None:
                return
            self._sync_all_locked()
            os.close(self._fd)
            self._fd = None
            current = self._files[-1]
            if current.last_seq is None:  # created, but its only write failed
                os.unlink(current.path)
                self._files.pop()

    def drop_through(self, seq: int, *, keep_newest: bool = True) -> None:
        """Delete the files all of whose records have seq <= ``seq``.

        The file being appended to is never deleted. By default neither is the
        newest file (even after :meth:`rotate`), so :attr:`last_seq` survives a
        reopen; a caller that keeps its own high-water mark (a checkpoint
        manifest) passes ``keep_newest=False`` to reclaim that file too once it
        has rotated.

        Parameters
        ----------
        seq : int
            Records up to and including this seq are no longer needed (e.g. a
            checkpoint covers them).
        keep_newest : bool, default True
            Keep the newest file even when it is covered and not being appended to.
        """
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise TypeError(f"seq must be an int, got {type(seq).__name__}")
        with self._lock:
            if self._closed:
                raise ValueError(f"WAL {self._dir} is closed")
            doomed = []
            candidates = self._files if not keep_newest and self._fd is None else self._files[:-1]
            for f in candidates:
                if f.last_seq is None or f.last_seq > seq:
                    break
                doomed.append(f)
            if not doomed:
                return
            for f in doomed:
                os.unlink(f.path)
            del self._files[: len(doomed)]
            logger.debug("WAL %s: dropped %d files through seq %d", self._dir, len(doomed), seq)
            if self._fsync:
                fsync_dir(self._dir)

    def close(self) -> None:
        """Sync what was written and close the log; further calls do nothing."""
        with self._sync_lock, self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._sync_all_locked()
            except OSError as exc:
                logger.error("WAL %s: sync on close failed (%s)", self._dir, exc)
            finally:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                os.close(self._lock_fd)

    def __enter__(self) -> WriteAheadLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WriteAheadLog({str(self._dir)!r}, last_seq={self._last_seq}, files={len(self._files)})"


def _first_seq(name: str) -> int:
    """The seq a log file is named after (the first record it was started with)."""
    return int(_NAME_RE.match(name).group(1))


@dataclass(frozen=True)
class WALCursor:
    """Where a :class:`WALTail` stands.

    Attributes
    ----------
    file : str or None
        Name of the file the tail reads next; ``None`` before it has found one,
        or after that file vanished with no later file to move on to.
    offset : int
        Byte offset in ``file`` of the first byte not yet consumed.
    last_seq : int
        Seq of the last record returned (the ``after_seq`` the tail started from
        until it returns one).
    """

    file: str | None
    offset: int
    last_seq: int


class WALTail:
    """Read-only follower of a log that a :class:`WriteAheadLog` elsewhere appends to.

    It takes no lock, never truncates or deletes, and keeps a cursor so that each
    :meth:`read_new` reads only the bytes appended since the previous call. Files
    are read in name order. A frame that is short or fails its checks at the
    cursor is a write still in progress (or a torn tail the writer's recovery will
    cut): the tail stops there and retries on the next call, never skipping it.

    Files may be created (rotation) and deleted (:meth:`WriteAheadLog.drop_through`)
    at any time. When the file under the cursor vanishes, or the first file found
    starts later than the cursor, records in between may have been deleted unread;
    :attr:`missed` then says so, and the caller recovers them from whatever
    snapshot covered them (the writer only drops files a checkpoint covers).

    Parameters
    ----------
    directory : str or os.PathLike
        The log's directory. It may not exist yet (nothing is read until it does).
    after_seq : int, default 0
        Return only records with a greater seq (e.g. the seq a snapshot covers);
        files holding only older records are not read.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     wal, _ = WriteAheadLog.open(d, fsync=False)
    ...     tail = WALTail(d)
    ...     wal.append(1, b"a")
    ...     first = tail.read_new()
    ...     wal.append(2, b"b")
    ...     second, third = tail.read_new(), tail.read_new()
    ...     wal.close()
    >>> [r.seq for r in first], [r.seq for r in second], third
    ([1], [2], [])
    """

    def __init__(self, directory: str | os.PathLike, *, after_seq: int = 0):
        if isinstance(after_seq, bool) or not isinstance(after_seq, int) or not 0 <= after_seq <= MAX_SEQ:
            raise ValueError(f"after_seq must be an int in [0, 2**64 - 1], got {after_seq!r}")
        self._dir = Path(directory)
        self._dir_str = os.fspath(self._dir)  # str paths: pathlib costs more than the stat calls themselves
        self._file: str | None = None
        self._offset = 0
        self._last_seq = after_seq
        self._missed = False
        self._stall: tuple | None = None  # the (file, offset, problem) last logged, so a stall logs once
        self._lock = threading.Lock()
        self.files_opened = 0  # counters: a call that finds nothing new opens no file and reads no byte
        self.bytes_read = 0

    @property
    def directory(self) -> Path:
        """The log's directory."""
        return self._dir

    @property
    def last_seq(self) -> int:
        """Seq of the last record returned (``after_seq`` until one is)."""
        return self._last_seq

    @property
    def cursor(self) -> WALCursor:
        """Where the next :meth:`read_new` starts."""
        with self._lock:
            return WALCursor(self._file, self._offset, self._last_seq)

    @property
    def missed(self) -> bool:
        """Whether the latest :meth:`read_new` may have skipped records.

        True when the file under the cursor vanished (the writer dropped it,
        perhaps before the tail read it through), or when the first file found
        starts after ``last_seq + 1`` (earlier files may have been dropped). The
        records returned are valid either way; what may be missing are records
        with seqs between the previous :attr:`last_seq` and the first one returned.
        """
        return self._missed

    def read_new(self, max_bytes: int | None = None) -> list[WALRecord]:
        """Every complete, valid record appended since the previous call, in seq order.

        Parameters
        ----------
        max_bytes : int, optional
            Stop once records of at least this many bytes were returned (at least
            one record is); the next call goes on from there. Bounds the memory a
            large backlog takes. ``None`` reads everything there is.

        Returns
        -------
        list of WALRecord
            Possibly empty. Records with a seq not above :attr:`last_seq` are
            skipped, never returned twice.
        """
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
            raise ValueError(f"max_bytes must be a positive int or None, got {max_bytes!r}")
        with self._lock:
            return self._read(max_bytes)

    def _read(self, max_bytes: int | None) -> list[WALRecord]:
        self._missed = False
        try:
            names = sorted(n for n in os.listdir(self._dir_str) if _NAME_RE.match(n))
        except FileNotFoundError:
            names = []  # not created yet, or the whole log was removed
        if self._file is not None and self._file in names:
            todo = names[names.index(self._file):]
        else:
            vanished = self._file is not None
            if vanished:
                names = [n for n in names if n > self._file]
                self._file, self._offset = None, 0
            # Files named at or below last_seq + 1 hold nothing newer than last_seq except
            # in the last of them; start there. When no file starts that early, records
            # between last_seq and the first file may have been dropped unread.
            early = [i for i, n in enumerate(names) if _first_seq(n) <= self._last_seq + 1]
            todo = names[early[-1]:] if early else names
            self._missed = not early and (vanished or bool(names))
        records: list[WALRecord] = []
        budget = [max_bytes]
        for i, name in enumerate(todo):
            offset = self._offset if name == self._file else 0
            self._file, self._offset = name, offset
            path = os.path.join(self._dir_str, name)
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                # Dropped between the listing and now: whatever it held past the cursor is lost to us.
                self._file, self._offset = None, 0
                self._missed = True
                continue
            if size < offset:
                # Only a writer's recovery rewrites a file, and it cuts invalid bytes only; read it again.
                logger.warning("WAL tail %s: shrank from %d to %d bytes; reading it again", path, offset, size)
                self._missed = True
                self._offset = offset = 0
            if size > offset:
                try:
                    stopped = self._read_file(path, offset, size, records, budget, last=i == len(todo) - 1)
                except FileNotFoundError:
                    self._file, self._offset = None, 0
                    self._missed = True
                    continue
                if stopped:
                    break
        return records

    def _read_file(self, path: str, offset: int, size: int, out: list[WALRecord], budget: list,
                   *, last: bool) -> bool:
        """Consume the records of one file from ``offset`` up to ``size``; True when the tail must stop here."""
        with open(path, "rb") as f:
            self.files_opened += 1
            f.seek(offset)
            pos = offset
            while pos < size:
                if budget[0] is not None and budget[0] <= 0:
                    return True
                problem = None
                header = f.read(HEADER_SIZE) if pos + HEADER_SIZE <= size else b""
                if len(header) < HEADER_SIZE:
                    problem = "incomplete header"
                else:
                    magic, length, seq, crc = HEADER.unpack(header)
                    if magic != MAGIC:
                        problem = f"bad magic 0x{magic:08x}"
                    elif length > MAX_PAYLOAD_BYTES:
                        problem = f"payload length {length} above the limit {MAX_PAYLOAD_BYTES}"
                    elif pos + HEADER_SIZE + length > size:
                        problem = "incomplete payload"
                    else:
                        payload = f.read(length)
                        if len(payload) < length:
                            problem = "incomplete payload"
                        elif _crc(length, seq, payload) != crc:
                            problem = "CRC mismatch"
                if problem is not None:
                    self._note_stall(path, pos, problem, last=last)
                    return True
                pos += HEADER_SIZE + length
                self.bytes_read += HEADER_SIZE + length
                if seq > self._last_seq:
                    out.append(WALRecord(seq, payload))
                    self._last_seq = seq
                    if budget[0] is not None:
                        budget[0] -= HEADER_SIZE + length
                self._offset = pos
        self._stall = None
        return False

    def _note_stall(self, path: str, pos: int, problem: str, *, last: bool) -> None:
        key = (path, pos, problem)
        if key == self._stall:
            return
        self._stall = key
        if last:
            # The newest file: most likely a write in progress; try again next call.
            logger.debug("WAL tail %s: %s at offset %d; waiting for the writer", path, problem, pos)
        else:
            # A file the writer has moved on from never changes again; only its recovery
            # after a crash can repair this, so say so once.
            logger.warning("WAL tail %s: %s at offset %d in a finished file; stopping here until the "
                           "writer's recovery repairs it", path, problem, pos)

    def __repr__(self) -> str:
        return (f"WALTail({str(self._dir)!r}, file={self._file!r}, offset={self._offset}, "
                f"last_seq={self._last_seq})")
