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

``rotate`` seals the file it finishes: after syncing it, it writes (atomically)
``wal-<first seq>.log.sealed``, a JSON object ``{"size": bytes, "last_seq": n}``.
A sealed file is never appended to again (a reopen starts a new file), and
recovery checks it against its seal, so a finished file that was cut, even on a
record boundary, or replaced is noticed. ``drop_through`` deletes a file, then
its seal. Older logs have no seals and open as before (their finished files are
not checked); older releases ignore seals, so the framing is unchanged.

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
:meth:`WriteAheadLog.open` reads every file in name order. A record is invalid
when it has a short header, a short payload, a bad magic, a length above
``MAX_PAYLOAD_BYTES``, a CRC mismatch, or a seq not greater than the one before
(across files too).

- In the newest file, when it is not sealed, an invalid record is a torn tail (a
  crash can only tear the append in progress): that record and everything after
  it is cut, the file truncated at the end of the last good record (removed when
  nothing good is left), and one warning says how many bytes were dropped, from
  which file and offset, and why.
- Anywhere else it is not a torn write: the file was finished (synced by
  ``rotate``) before the log went on, so an invalid record there is damage to
  acknowledged records, or a stray file named like a log file. Cutting it (and
  every later file) would lose them, so ``open`` raises :class:`WALCorruptError`
  naming the file and offset, and changes nothing. So it does when a sealed file
  does not match its seal, or a sealed file is missing while later files exist.
  (A seal left by a ``drop_through`` that crashed, older than every file, is removed.)

With ``repair=False`` the cut is not made yet (:attr:`WriteAheadLog.damage` says
what it would remove) until :meth:`WriteAheadLog.repair`; ``Collection.open``
uses this to first check that the cut loses no committed batch.

Durability
----------
With ``fsync=True`` an append writes the record and then ``fdatasync``s the file
(and fsyncs the directory after a new file was created) before it returns.
Concurrent appenders share fsyncs (group commit): records written while one
thread is syncing are all covered by the next single sync. A write that fails
part way (``ENOSPC``, say) is truncated away before the error is raised, so the
log stays valid and can take the next append; on a full disk (``ENOSPC``,
``EDQUOT``) the error is a :class:`gpusearch.fileio.DiskFullError` naming the file. A failed fsync leaves the
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

import contextlib
import errno
import logging
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from gpusearch.fileio import DiskFullError, atomic_write_json, fsync_dir, is_disk_full, read_json

from .errors import ClosedError, CorruptLogError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

__all__ = ["MAX_PAYLOAD_BYTES", "WALCorruptError", "WALCursor", "WALDamage", "WALRecord", "WALTail", "WriteAheadLog"]

logger = logging.getLogger(__name__)

MAGIC = 0x314C5747
HEADER = struct.Struct("<IIQI")
HEADER_SIZE = HEADER.size
_CRC_FIELDS = struct.Struct("<IQ")
MAX_PAYLOAD_BYTES = 1 << 30
MAX_SEQ = (1 << 64) - 1
LOCK_NAME = "LOCK"
_NAME_RE = re.compile(r"^wal-(\d{20})\.log$")
SEAL_SUFFIX = ".sealed"
_SEAL_RE = re.compile(r"^(wal-\d{20}\.log)\.sealed$")

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


class WALCorruptError(CorruptLogError):
    """The log holds damage that is not a torn tail, so cutting it would lose acknowledged records.

    Raised by :meth:`WriteAheadLog.open` (and by ``Collection.open``) without
    changing any file, so the damaged bytes stay for inspection or restore.

    Attributes
    ----------
    path : pathlib.Path
        The damaged (or missing) file.
    offset : int or None
        Byte offset of the first invalid record, when there is one.
    """


@dataclass(frozen=True)
class WALDamage:
    """A torn or corrupt tail found by :meth:`WriteAheadLog.open` (cut, or to be cut by ``repair``).

    Attributes
    ----------
    path : pathlib.Path
        The newest file, where the first invalid record is.
    offset : int
        Its byte offset: the file is cut there.
    problem : str
        What is wrong with the record there (``"CRC mismatch"``, ``"short header ..."``).
    bytes_dropped : int
        How many bytes the cut removes.
    """

    path: Path
    offset: int
    problem: str
    bytes_dropped: int


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
    sealed: bool = False  # finished by rotate: complete, never appended to again


def _seal_path(path: Path) -> Path:
    return path.with_name(path.name + SEAL_SUFFIX)


def _read_seal(seal: Path, log_path: Path) -> dict:
    try:
        info = read_json(seal)
    except ValueError as exc:
        raise WALCorruptError(f"WAL seal {seal} is unreadable ({exc}); it records the size of the finished "
                              f"file {log_path.name}. Restore it from a backup; nothing was changed",
                              seal) from None
    if (not isinstance(info, dict) or not isinstance(info.get("size"), int)
            or not isinstance(info.get("last_seq"), int)):
        raise WALCorruptError(f"WAL seal {seal} is not a seal (expected {{\"size\": int, \"last_seq\": int}}, "
                              f"got {info!r}); restore it from a backup; nothing was changed", seal)
    return info


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

    def __init__(self, directory: Path, files: list[_LogFile], last_seq: int, lock_fd: int, *, fsync: bool,
                 plan: list | None = None, damage: WALDamage | None = None):
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
        self._plan = list(plan or [])  # recovery's cuts and deletions, until repair() carries them out
        self._kept = 0  # records recovery kept (for the warning)
        self._damage = damage
        if files and not files[-1].sealed:  # a sealed file is finished: the next append starts a new one
            current = files[-1]
            self._fd = os.open(current.path, os.O_WRONLY)
            os.lseek(self._fd, current.size, os.SEEK_SET)

    @classmethod
    def open(cls, directory: str | os.PathLike, *, fsync: bool = True,
             repair: bool = True) -> tuple[WriteAheadLog, list[WALRecord]]:
        """Open (or create) the log in ``directory`` and recover its records.

        A torn or corrupt tail of the newest file is cut and logged as a warning
        (see the module docstring). Damage anywhere else is not a torn write and
        raises :class:`WALCorruptError` without changing any file.

        Parameters
        ----------
        directory : str or os.PathLike
            The log's own directory; created (with parents) when missing.
        fsync : bool, default True
            Make every append durable against power loss before it returns.
            ``False`` still survives the death of the process.
        repair : bool, default True
            Cut the torn tail on disk now. ``False`` leaves every file as it is:
            :attr:`damage` says what a cut would remove, and the log refuses
            writes until :meth:`repair` is called (a caller that must first check
            the cut against other logs closes it instead, leaving the files intact).

        Returns
        -------
        wal : WriteAheadLog
            The open log; appends continue in its newest file (or a new one when
            the newest is sealed).
        records : list of WALRecord
            Every valid record, in seq order (those before the cut).

        Raises
        ------
        WALCorruptError
            If a file other than the newest (or any sealed file) holds an invalid
            record, does not match its seal, or a sealed file is missing. The
            message names the file; nothing was changed on disk.
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
            files, records, plan, damage = cls._recover(directory)
            last_seq = records[-1].seq if records else 0
            for f in files:
                if f.last_seq is not None:
                    last_seq = max(last_seq, f.last_seq)
            wal = cls(directory, files, last_seq, lock_fd, fsync=fsync, plan=plan, damage=damage)
            wal._kept = len(records)
        except BaseException:
            os.close(lock_fd)
            raise
        if repair:
            try:
                wal.repair()
            except BaseException:
                wal.close()
                raise
        return wal, records

    @staticmethod
    def _recover(directory: Path) -> tuple[list[_LogFile], list[WALRecord], list, WALDamage | None]:
        """Read every file; return the files kept, the records, the repair plan and the tail damage.

        Changes nothing on disk. Only the newest file may have a torn tail; any
        invalid record elsewhere, a file that does not match its seal, or a sealed
        file that is missing raises :class:`WALCorruptError`.
        """
        names = set(os.listdir(directory))
        paths = sorted(directory / name for name in names if _NAME_RE.match(name))
        present = {p.name for p in paths}
        plan: list[tuple[str, Path, int]] = []  # ("unlink", path, 0) or ("truncate", path, size)
        for seal in sorted(n for n in names if _SEAL_RE.match(n)):
            log_name = _SEAL_RE.match(seal).group(1)
            if log_name in present:
                continue
            if not paths or log_name < paths[0].name:
                # drop_through deletes a file before its seal: a crash in between leaves the seal.
                plan.append(("unlink", directory / seal, 0))
                continue
            raise WALCorruptError(
                f"WAL {directory / log_name} is missing: it was sealed as a finished file of the log "
                f"({seal} is still there) and later files follow it, so the records it held are lost. "
                f"Restore it from a backup; nothing was changed", directory / log_name)
        files: list[_LogFile] = []
        records: list[WALRecord] = []
        damage = None
        prev_seq = 0
        for i, path in enumerate(paths):
            newest = i == len(paths) - 1
            seal = _read_seal(_seal_path(path), path) if path.name + SEAL_SUFFIX in names else None
            scan = _scan_file(path, prev_seq)
            last = scan.records[-1].seq if scan.records else prev_seq
            if seal is not None or not newest:
                # A finished file: rotate synced it before the log went on, so it cannot be torn.
                if scan.problem is not None:
                    where = (f"in a file that is not the newest (the log went on in {paths[i + 1].name})"
                             if not newest else "in a sealed (finished) file")
                    raise WALCorruptError(
                        f"WAL {path}: {scan.problem} at offset {scan.good_end} {where}. That is not a torn "
                        f"write but damage to records already acknowledged, or a stray file named like a log "
                        f"file; cutting it would lose them and every later file, so nothing was changed. "
                        f"Restore {path.name} from a backup, or move it out of {directory} if it is not part "
                        f"of this log", path, scan.good_end)
                if seal is not None and (scan.size != seal["size"] or last != seal["last_seq"]):
                    raise WALCorruptError(
                        f"WAL {path} is {scan.size} bytes holding records through seq {last}, but it was "
                        f"sealed at {seal['size']} bytes through seq {seal['last_seq']} when the log moved on: "
                        f"records were lost (the file was cut or replaced). Restore it from a backup; nothing "
                        f"was changed", path)
            records.extend(scan.records)
            prev_seq = last
            if scan.problem is None:
                if scan.records:
                    files.append(_LogFile(path, last, scan.size, sealed=seal is not None))
                else:
                    # Created by an append that died before writing: holds nothing.
                    plan.append(("unlink", path, 0))
                continue
            damage = WALDamage(path, scan.good_end, scan.problem, scan.size - scan.good_end)
            if scan.good_end == 0:
                plan.append(("unlink", path, 0))
            else:
                plan.append(("truncate", path, scan.good_end))
                files.append(_LogFile(path, last, scan.good_end))
        return files, records, plan, damage

    @property
    def damage(self) -> WALDamage | None:
        """The torn tail that :meth:`open` found (already cut unless opened with ``repair=False``)."""
        return self._damage

    def repair(self) -> None:
        """Carry out recovery's cuts and deletions (a no-op when :meth:`open` did, or there are none)."""
        with self._lock:
            if self._closed:
                raise ClosedError(f"WAL {self._dir} is closed")
            if not self._plan:
                return
            d = self._damage
            if d is not None:
                logger.warning("WAL %s: %s at offset %d; cutting %d bytes (the rest of this file), keeping %d records",
                               d.path, d.problem, d.offset, d.bytes_dropped, self._kept)
            changed = False
            for action, path, size in self._plan:
                if action == "unlink":
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
                    changed = True
                else:
                    with open(path, "r+b") as f:
                        f.truncate(size)
                        if self._fsync:
                            os.fsync(f.fileno())
            if changed and self._fsync:
                fsync_dir(self._dir)
            self._plan = []

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

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"WAL {self._dir} is closed")
        if self._plan:
            raise ValueError(f"WAL {self._dir} was opened with repair=False and its damaged tail is not cut yet; "
                             f"call repair() before writing")

    def _check_usable(self) -> None:
        self._check_open()
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
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFullError(exc.errno, f"no space left on device: cannot create WAL file (the disk is "
                                    f"full); nothing was written, free space and retry", str(path)) from exc
            raise
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
            if isinstance(exc, OSError) and is_disk_full(exc) and not isinstance(exc, DiskFullError):
                cut = "cut back to" if self._failed is None else "could not be cut back to"
                raise DiskFullError(exc.errno, f"no space left on device: appending a record of {len(frame)} bytes "
                                    f"to the WAL failed (the disk is full); the partial record was {cut} "
                                    f"{current.size} bytes, so nothing of it is kept; free space and retry",
                                    str(current.path)) from exc
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
                if is_disk_full(exc) and not isinstance(exc, DiskFullError):
                    raise DiskFullError(exc.errno, f"no space left on device: syncing the WAL failed (the disk is "
                                        f"full); the last record may or may not have reached the disk, and the log "
                                        f"takes no more appends until reopened", str(self._dir)) from exc
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
            self._check_open()
            if self._fd is None:
                return
            self._sync_all_locked()
            current = self._files[-1]
            if current.last_seq is None:  # created, but its only write failed
                os.close(self._fd)
                self._fd = None
                os.unlink(current.path)
                self._files.pop()
                return
            try:
                # The seal says the file is finished and how long it is, so that recovery can tell a
                # finished file cut on a record boundary (records lost) from a complete one.
                atomic_write_json(_seal_path(current.path), {"size": current.size, "last_seq": current.last_seq})
            except OSError as exc:
                # Unsealed, the file stays the current one: appends go on in it, nothing is lost.
                logger.warning("WAL %s: cannot seal %s (%s); appends go on in it", self._dir, current.path.name, exc)
                return
            os.close(self._fd)
            self._fd = None
            current.sealed = True

    def files(self) -> list[tuple[Path, int]]:
        """The log's files, oldest first, with the bytes written to each so far (a record boundary:
        an append in progress is not counted until it is complete). A backup copies these prefixes."""
        with self._lock:
            return [(f.path, f.size) for f in self._files]

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
            self._check_open()
            doomed = []
            candidates = self._files if not keep_newest and self._fd is None else self._files[:-1]
            for f in candidates:
                if f.last_seq is None or f.last_seq > seq:
                    break
                doomed.append(f)
            if not doomed:
                return
            for f in doomed:  # the file before its seal: recovery clears a seal left alone by a crash
                os.unlink(f.path)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(_seal_path(f.path))
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
