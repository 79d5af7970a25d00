"""Read-only followers of one shard of a collection that another process writes: what a replica holds.

One writer process holds the writable :class:`gpusearch.Collection` (and its WAL
locks). A replica holds one shard in memory with :class:`ShardFollower`, which
loads the shard's snapshot and catches up by reading the writer's files on the
same file system; it never writes, locks or deletes anything there.

>>> import numpy as np, tempfile, gpusearch as gs
>>> col = gs.Collection.create(tempfile.mkdtemp() + "/docs", dim=2, shards=1, device="cpu", fsync=False)
>>> _ = col.upsert(["a"], np.array([[1, 0]], "float32"))
>>> f = ShardFollower.open(col.path, 0, device="cpu")
>>> _ = col.upsert(["b"], np.array([[0, 1]], "float32"))
>>> f.refresh() == col.stats()["sequence"], f.search([0, 1], k=1).ids.tolist()
(True, [['b']])
>>> f.close(); col.close()

Following the writer
--------------------
What the writer does (see ``Collection._commit`` and ``Shard.checkpoint``): a
batch gets the next sequence number ``s``; each shard part is appended to that
shard's WAL; a batch spanning several shards is then committed by appending
``s`` to the collection's commit log (``<collection>/commits/``); only then does
the writer allocate ``s + 1``. A checkpoint writes a new ``manifest.json``
(covering every write through its ``applied_seq``, with the snapshot segments
listed) and then deletes the WAL files it covers; compaction rewrites the
segments (a new list, rows renumbered).

What :meth:`ShardFollower.refresh` does, in this order, so that each reading
sees everything the previous one implies: read the new WAL records, read the
commit log (when a record waits on it), look at the manifest (a few ``stat``
calls; parsed only when it changed). A record of a one-shard batch is applied;
one of a multi-shard batch only once its seq is in the commit log. An
uncommitted batch blocks everything after it until either its commit arrives or
a later seq shows up in this shard's WAL or in the commit log, which proves a
crashed writer dropped it: it is then skipped with a warning.

The follower rebuilds from the snapshot (a fresh shard loaded and caught up on
the side, then swapped in while searches finish on the old one) when the
manifest's segments are not an extension of those it was built from
(compaction), when WAL files it had not read were dropped (the manifest covers
a seq it has not reached), or when whether a batch was committed can only be
learnt from the snapshot. Otherwise new records are applied to the shard in place.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import metadata as md
from . import ops as ops_mod
from .arrays import as_ids
from .collection import index_options_of, read_config
from .devices import resolve_device
from .errors import ClosedError, CollectionReplacedError, InvalidTypeError
from .fileio import read_json
from .filters import compile_filter
from .hits import Hits
from .request import build_request
from .shard import SHARD_FORMAT_VERSION, Shard
from .wal import WALTail

__all__ = ["ShardFollower"]

log = logging.getLogger(__name__)
# Segment names Shard.compact writes: "seg-<seq>-c.arrow" (before generations) or "seg-<seq>-c<gen>.arrow".
_COMPACTED = re.compile(r"-c\d*\.arrow$")

_CONFIG = "collection.json"
_MANIFEST = "manifest.json"
# A backlog is applied in steps of about this many WAL bytes, so a 256 MB log is never all in memory at once.
READ_CHUNK_BYTES = 64 << 20
# Rebuilds in a row before giving up: each one means the writer replaced the snapshot while it was being read.
BUILD_ATTEMPTS = 8
# A manifest modified this recently is parsed again even when its stat looks unchanged: file times are
# coarse (a few ms, seconds on some file systems), so a replacement within one tick could look identical.
_RACY_NS = 2_000_000_000


class _Stale(Exception):
    """The follower's state cannot be brought up to date from the WAL; rebuild it from the snapshot."""


@dataclass(eq=False)
class _State:
    """One in-memory shard and how far it has followed the writer."""

    shard: Shard
    wal: WALTail
    covered: int  # every record of this shard's WAL with seq <= covered is applied (or skipped) in `shard`
    segments: list[str]  # the snapshot segments `shard` was loaded from, extended by later checkpoints
    manifest_seq: int  # applied_seq of the newest manifest seen
    manifest_sig: tuple | None
    manifest_racy: bool
    manifest_rows: int  # rows that manifest's segments hold (dead ones included)
    manifest_index: tuple = (None, 0)  # the FAISS index file that manifest names, and the rows it holds
    pending: deque = field(default_factory=deque)  # (seq, Op) read but waiting for their commit
    stale: bool = False


def _stat_sig(st: os.stat_result) -> tuple:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _config_sig(path: str) -> tuple | None:
    """Identity of a collection.json: written once, by Collection.create, so a new one is a new collection."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns)


def _read_config(path: Path) -> dict:
    config = read_config(path)
    mpath = path / _CONFIG
    missing = [k for k in ("dim", "metric", "index", "dtype", "shards") if k not in config]
    if missing:
        raise ValueError(f"{mpath} lacks {', '.join(missing)}; expected a manifest written by Collection.create")
    shards = config["shards"]
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"{mpath}: shards must be a positive int, got {shards!r}")
    return config


class ShardFollower:
    """One shard of a collection, loaded read-only and kept up to date with the writer's files.

    Create one with :meth:`open`; call :meth:`refresh` to catch up (cheap when
    nothing changed). Searches, fetches and refreshes may run in any threads:
    refreshes run one at a time, and a search sees the shard as it was when it
    started (a rebuilt shard is swapped in whole). See the module docstring for
    how records are chosen and when the shard is rebuilt.
    """

    def __init__(self, path: Path, config: dict, number: int, device: str, index_role: str = "inline"):
        """Private: use :meth:`open`."""
        self.path = path
        self.index_role = index_role
        self.number = number
        self.device = device
        self._config = config
        self._config_path = os.fspath(path / _CONFIG)
        self._config_sig = _config_sig(self._config_path)
        self._shard_dir = path / f"shard-{number:03d}"
        self._manifest_path = os.fspath(self._shard_dir / _MANIFEST)  # a str: stat'ed on every refresh
        self._commits = WALTail(path / "commits")
        self._committed: set[int] = set()
        self._commit_order: deque[int] = deque()  # the seqs in _committed, oldest first, for forgetting
        self._commit_floor = 0  # commits at or below this seq have been forgotten (the snapshot covers them)
        self._lock = threading.Lock()  # one refresh at a time
        self._state: _State | None = None
        self._closed = False
        self._refreshes = 0
        self._rebuilds = 0
        self._manifest_reads = 0  # parses in refreshes (builds not counted): a no-op refresh makes none
        self._indexes_loaded = 0  # newer saved indexes taken in place (load_indexes)
        self._unloadable: str | None = None  # an index file that could not be read: not tried again

    # -- construction --------------------------------------------------------
    @classmethod
    def open(cls, collection_path, shard: int, *, device: str = "auto",
             load_indexes: bool = False) -> "ShardFollower":
        """Load shard ``shard`` of the collection at ``collection_path`` and catch up with its writer.

        Parameters
        ----------
        collection_path : str or os.PathLike
            The collection's directory (where ``collection.json`` is).
        shard : int
            Which shard, in ``[0, shards)``.
        device : str, default "auto"
            ``"auto"`` (a GPU when torch sees one), ``"cpu"`` or ``"cuda:N"``.
        load_indexes : bool, default False
            False: add every new row to this follower's own FAISS index, as the writer does.
            True (a served replica, whose Writer builds the index: see :mod:`gpusearch.shard`):
            build nothing; load each newer index a checkpoint saves, and search the rows after
            it exactly.

        Returns
        -------
        ShardFollower
            Caught up with everything the writer had made durable.

        Raises
        ------
        ValueError
            If the path holds no collection, a newer format, or ``shard`` is out of range.
        RuntimeError
            If no consistent snapshot could be read (the writer kept replacing it, or it is damaged).
        """
        path = Path(collection_path)
        config = _read_config(path)
        n = config["shards"]
        if isinstance(shard, bool) or not isinstance(shard, (int, np.integer)) or not 0 <= int(shard) < n:
            raise ValueError(f"shard must be an int in [0, {n}) for {path}, which has {n} shards; got {shard!r}")
        follower = cls(path, config, int(shard), resolve_device(device), "loader" if load_indexes else "inline")
        with follower._lock:
            follower._state = follower._catch_up(follower._build())
        return follower

    def _build(self) -> _State:
        """A fresh shard loaded from the current snapshot, not yet caught up with the WAL."""
        last_error: Exception | None = None
        for attempt in range(BUILD_ATTEMPTS):
            if attempt:
                time.sleep(0.005 * attempt)  # a checkpoint or compaction in flight: let it finish
            try:
                st = os.stat(self._manifest_path)
            except FileNotFoundError:
                m, sig, racy = None, None, False  # no checkpoint yet: everything is in the WAL
            else:
                sig, racy = _stat_sig(st), time.time_ns() - st.st_mtime_ns < _RACY_NS
                try:
                    m = read_json(self._manifest_path)
                except FileNotFoundError as e:
                    last_error = e
                    continue
            shard = Shard(self._shard_dir, number=self.number, dim=self.dim, metric=self.metric,
                          index=self._config["index"], device=self.device, dtype=self._config["dtype"], fsync=False,
                          index_options=index_options_of(self._config), index_role=self.index_role)
            seq, segments, rows, index = 0, [], 0, (None, 0)
            if m is not None:
                version = m.get("format_version")
                if not isinstance(version, int) or version > SHARD_FORMAT_VERSION:
                    raise ValueError(f"{self._manifest_path} is in shard format {version!r}; this gpusearch reads "
                                     f"format {SHARD_FORMAT_VERSION} or older: upgrade gpusearch")
                try:
                    # Shard's own loader, without opening its WAL: shard.wal stays None (never written to).
                    shard._load_snapshot(m)
                    if shard.n_rows != int(m.get("rows", shard.n_rows)):
                        raise ValueError(f"segments hold {shard.n_rows} rows, the manifest says {m['rows']}")
                    # A compaction at the seq of the last checkpoint rewrites alive-<seq> under the same
                    # name before it writes its manifest: a bitmap of another length is that one.
                    if m.get("alive") and os.stat(self._shard_dir / m["alive"]).st_size != (shard.n_rows + 7) // 8:
                        raise ValueError(f"{m['alive']} does not hold {shard.n_rows} bits")
                except (OSError, ValueError) as e:
                    # Files named by this manifest were deleted or replaced while being read (a newer
                    # checkpoint or compaction); a later manifest names a consistent set.
                    last_error = e
                    continue
                seq, segments = int(m["applied_seq"]), list(m["segments"])
                rows = shard.n_rows
                index = (m.get("index"), int(m.get("n_indexed") or 0))
            try:
                unchanged = sig == (_stat_sig(os.stat(self._manifest_path)) if sig is not None else None)
            except FileNotFoundError:
                unchanged = sig is None
            if not unchanged:
                last_error = RuntimeError("the manifest changed while the snapshot was read")
                continue
            if seq < self._commit_floor:
                # A snapshot older than commits already forgotten (the writer's data was restored?): reread them.
                self._commits = WALTail(self.path / "commits")
                self._committed.clear()
                self._commit_order.clear()
                self._commit_floor = 0
            return _State(shard, WALTail(self._shard_dir / "wal", after_seq=seq), covered=seq, segments=segments,
                          manifest_seq=seq, manifest_sig=sig, manifest_racy=racy,
                          manifest_rows=rows, manifest_index=index)
        raise RuntimeError(f"shard {self.number} of {self.path}: no consistent snapshot after {BUILD_ATTEMPTS} "
                           f"attempts; last problem: {last_error}") from last_error

    # -- following -----------------------------------------------------------
    def refresh(self, load_index: bool = True) -> int:
        """Catch up with what the writer has made durable; return :attr:`applied_seq`.

        Costs a few ``stat`` calls and a directory listing when nothing changed.
        Applies new records in place, or rebuilds the shard from the snapshot
        on the side and swaps it in (see the module docstring). If a rebuild
        fails, the previous state keeps serving and the error is raised; the
        next call tries again. With ``load_indexes`` (see :meth:`open`), then
        :meth:`load_index` unless ``load_index`` is False (a caller that loads
        them elsewhere, off its query path).

        Returns
        -------
        int
            Every write with a seq up to this one that touched this shard is reflected.
        """
        with self._lock:
            self._check_open()
            self._check_replaced()
            current = self._state
            new = self._catch_up(current)
            if new is not current:
                self._state = new  # searches holding the old shard's read lock finish on it
            self._refreshes += 1
        if load_index:
            self.load_index()
        return new.covered

    def load_index(self) -> bool:
        """With ``load_indexes``: search the index the newest manifest seen names, once it holds more rows
        than the one searched (and this follower holds them all); until then the rows after it are
        searched exactly. The file is read and decoded while refreshes and searches go on; the swap
        takes the shard's lock briefly. True when it loaded one."""
        st = self._state
        if st is None or self.index_role != "loader":
            return False
        name, n = st.manifest_index
        shard = st.shard
        if (not name or name == self._unloadable or shard.backend.kind != "faiss" or n <= shard.backend.n_indexed
                or n > shard.n_rows):  # (rows not applied yet: the next call)
            return False
        try:
            loaded = shard.adopt_index(name, n)
        except FileNotFoundError:
            return False  # a newer checkpoint removed it (its manifest names the next one)
        except (OSError, ValueError, RuntimeError) as e:  # unreadable, or not the index it should be
            log.warning("shard %d of %s: index %s not loaded (%s); its rows are searched exactly until the next "
                        "one", self.number, self.path, name, e)
            self._unloadable = name
            return False
        self._indexes_loaded += loaded
        return loaded

    def reload(self) -> int:
        """Rebuild from the snapshot now, whatever refresh would decide; return :attr:`applied_seq`.

        For changes the WAL does not carry: after ``Collection.train`` on the
        writer, say (its new index reaches the snapshot at the next checkpoint).
        """
        with self._lock:
            self._check_open()
            self._check_replaced()
            self._rebuilds += 1
            new = self._catch_up(self._build())
            self._state = new
            self._refreshes += 1
            return new.covered

    def _check_replaced(self) -> None:
        """Follow a collection created anew at this path (dropped, then created again under its name)."""
        sig = _config_sig(self._config_path)
        if sig is None or sig == self._config_sig:
            return  # unchanged; or dropped, and the old state serves until its owner closes it
        config = _read_config(self.path)
        changed = [f"{k} {self._config[k]!r} -> {config[k]!r}" for k in ("dim", "metric", "index", "dtype", "shards")
                   if config[k] != self._config[k]]
        if changed:
            raise CollectionReplacedError(f"collection {self.path.name!r} was created anew as another collection "
                                          f"({', '.join(changed)}); open a new follower for it")
        log.info("shard %d of %s: the collection was created anew; loading it", self.number, self.path)
        self._config, self._config_sig = config, sig
        # Its seqs start again from 1: forget every commit and cursor of the old one.
        self._commits = WALTail(self.path / "commits")
        self._committed.clear()
        self._commit_order.clear()
        self._commit_floor = 0
        self._state.stale = True

    def _catch_up(self, st: _State) -> _State:
        """Apply steps until nothing new is found; rebuild whenever a step says the state is stale."""
        for _ in range(BUILD_ATTEMPTS + 1):
            try:
                while self._step(st):
                    pass
                return st
            except _Stale as why:
                st.stale = True  # a later refresh on it must not apply records after what it lost
                self._rebuilds += 1
                log.info("shard %d of %s: rebuilding from the snapshot (%s)", self.number, self.path, why)
                st = self._build()
        raise RuntimeError(f"shard {self.number} of {self.path}: still out of date after {BUILD_ATTEMPTS} "
                           f"rebuilds in a row (the writer checkpoints faster than a snapshot loads?)")

    def _step(self, st: _State) -> bool:
        """Read and apply one chunk of new records; True when there may be more."""
        if st.stale:
            raise _Stale("an earlier refresh found this state out of date")
        read_before = st.wal.last_seq
        records = st.wal.read_new(max_bytes=READ_CHUNK_BYTES)
        missed = st.wal.missed
        for r in records:
            if r.seq > st.covered:
                st.pending.append((r.seq, self._decode(r)))
        # Commits are read after the WAL: a commit is written before the next seq exists, so
        # everything the WAL showed has its commit (if any) in the log by now.
        if any(op.participants > 1 for _, op in st.pending):
            self._read_commits()
        # The manifest is read after both: WAL and commit files are deleted only after a manifest
        # covering them is written, so this manifest covers whatever was deleted before we read.
        self._check_manifest(st)
        if missed and st.manifest_seq > read_before:
            raise _Stale(f"WAL files up to seq {st.manifest_seq} were dropped before this follower read "
                         f"them (it had read through seq {read_before})")
        self._apply_pending(st)
        if st.covered < st.manifest_seq:
            raise _Stale(f"the snapshot covers seq {st.manifest_seq}, this follower is at seq {st.covered}")
        if st.covered == st.manifest_seq and st.shard.n_rows != st.manifest_rows:
            # Following the same records from the same start numbers rows as the writer did; a
            # difference means the snapshot was rewritten in a way the WAL does not show.
            raise _Stale(f"the snapshot at seq {st.covered} holds {st.manifest_rows} rows, this follower "
                         f"{st.shard.n_rows}")
        backend = st.shard.backend
        # (A loader takes a newly trained index in with the next load_index: it searches exactly till then.)
        trained = bool(st.manifest_index[0]) and st.manifest_index[1] > 0  # a saved index holding rows
        if trained and backend.kind == "faiss" and not backend.is_trained and self.index_role != "loader":
            raise _Stale("the writer trained the index outside the WAL (Collection.train)")
        return bool(records)

    def _decode(self, record) -> ops_mod.Op:
        try:
            return ops_mod.decode(record.payload)
        except Exception as e:  # a record that passed its CRC but is no op: a bug or a foreign file
            raise ValueError(f"shard {self.number} of {self.path}: WAL record {record.seq} is not a gpusearch "
                             f"op ({e})") from e

    def _read_commits(self) -> None:
        for r in self._commits.read_new():
            if r.seq > self._commit_floor:
                self._committed.add(r.seq)
                self._commit_order.append(r.seq)

    def _forget_commits(self, through: int) -> None:
        """Drop commits no state will ask about again: at or below both the applied and the snapshot seq."""
        order = self._commit_order
        while order and order[0] <= through:
            self._committed.discard(order.popleft())
        self._commit_floor = max(self._commit_floor, through)

    def _check_manifest(self, st: _State) -> None:
        """Take in a new manifest: an extension of the segments goes on in place; anything else is stale."""
        try:
            stat = os.stat(self._manifest_path)
        except FileNotFoundError:
            return  # no checkpoint yet (or the collection is being removed): nothing to take in
        sig = _stat_sig(stat)
        if sig == st.manifest_sig and not st.manifest_racy:
            return
        try:
            m = read_json(self._manifest_path)
        except FileNotFoundError:
            return
        self._manifest_reads += 1
        st.manifest_sig = sig
        st.manifest_racy = time.time_ns() - stat.st_mtime_ns < _RACY_NS
        seq, segments = int(m["applied_seq"]), list(m["segments"])
        if seq < st.manifest_seq:
            raise _Stale(f"the snapshot went back from seq {st.manifest_seq} to {seq}")
        added = segments[len(st.segments):]
        # Shard.compact writes one "-c" segment in place of all; renumbered rows cannot be followed in place.
        if segments[: len(st.segments)] != st.segments or any(_COMPACTED.search(name) for name in added):
            raise _Stale(f"the snapshot's segments were rewritten at seq {seq} (compaction)")
        st.segments, st.manifest_seq = segments, seq
        st.manifest_rows = int(m.get("rows", 0))
        st.manifest_index = (m.get("index"), int(m.get("n_indexed") or 0))

    def _apply_pending(self, st: _State) -> None:
        reread = False
        while st.pending:
            seq, op = st.pending[0]
            if op.participants > 1 and seq not in self._committed:
                if seq <= st.manifest_seq:
                    if not reread:
                        # Its commit may have landed after the commit log was read and before the
                        # checkpoint that covers it: look once more (now after the manifest).
                        self._read_commits()
                        reread = True
                        continue
                    break  # committed or not, the snapshot knows: the caller rebuilds
                if st.wal.last_seq > seq or self._commits.last_seq > seq:
                    log.warning("shard %d of %s: skipping batch %d, which spans %d shards and was never "
                                "committed (its writer died first)", self.number, self.path, seq, op.participants)
                    st.pending.popleft()
                    st.covered = seq
                    continue
                break  # not committed yet: nothing after it may be applied before it
            st.shard.apply(seq, op)
            st.pending.popleft()
            st.covered = seq
        self._forget_commits(min(st.covered, st.manifest_seq))

    # -- reads ---------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"follower of shard {self.number} of {self.path} is closed; open a new one")

    def _current(self) -> _State:
        st = self._state  # one read: a concurrent rebuild or close swaps the attribute, never mutates it
        if st is None:
            raise ClosedError(f"follower of shard {self.number} of {self.path} is closed; open a new one")
        return st

    def _schema_for(self, shard: Shard, schema: Mapping[str, str] | None) -> dict[str, str]:
        if schema is None:
            return dict(shard.schema)
        if not isinstance(schema, Mapping):
            raise InvalidTypeError(f"schema must be a dict of field name to type such as {{'year': 'int'}}, "
                            f"got {type(schema).__name__}")
        return md.merge_schemas(schema, shard.schema)

    def search(self, queries=None, k: int = 10, *, filter: Mapping | None = None, include_metadata: bool = False,
               include_vectors: bool = False, params: Mapping[str, int] | None = None,
               schema: Mapping[str, str] | None = None, sparse_vector=None) -> Hits:
        """This shard's ``k`` best records per query, best first; ties go to the smaller id.

        Inputs are checked as ``Collection.search`` checks them (the same
        :func:`~gpusearch.request.build_request`), so bad input raises the same
        ``ValueError`` / ``TypeError``.

        Parameters
        ----------
        queries : array-like
            (nq, dim) or one (dim,) vector: NumPy, torch, CuPy or lists.
        k : int, default 10
            Between 1 and ``MAX_TOP_K``.
        filter : dict, optional
            Pinecone-style metadata filter (see :mod:`gpusearch.filters`).
        include_metadata, include_vectors : bool, default False
            Also return each hit's metadata dict / stored vector.
        params : dict, optional
            Search parameters of the index's family, e.g. ``{"nprobe": 32}``.
        schema : dict, optional
            The collection-wide field types (the union over shards). The filter is
            checked against it merged with this shard's own, so a field only other
            shards hold is valid here (no record here has it). Default: this shard's.
        sparse_vector : dict, optional
            A hybrid (or, on a sparse collection, sparse-only) query, as for ``Collection.search``.

        Returns
        -------
        Hits
            Keys are this shard's rows; the hits carry their ``ids`` (and metadata or
            vectors when asked), so they stay right after the follower moves on.
        """
        shard = self._current().shard
        sch = self._schema_for(shard, schema)
        request = build_request(queries, k, dim=self.dim, metric=self.metric, device=self.device,
                                family=shard.backend.family, schema=sch, filter=filter, params=params,
                                include_metadata=include_metadata, include_vectors=include_vectors,
                                sparse_vector=sparse_vector)
        return self.search_request(request, schema=None if schema is None else sch)

    def search_request(self, request, schema: Mapping[str, str] | None = None) -> Hits:
        """Answer a checked :class:`~gpusearch.request.SearchRequest` (built at an edge) with hits
        that carry their ids. ``schema``: the collection-wide field types, for metadata."""
        # Without a caller's schema the shard reads its own under its lock, which stays right even
        # if a refresh adds a field between here and there.
        hits, ids = self._current().shard.search(request, None if schema is None else dict(schema))
        keys = hits.keys
        out = np.empty(keys.shape, dtype=object)
        for q, row in enumerate(keys.tolist()):
            for j, r in enumerate(row):
                if r >= 0:
                    out[q, j] = ids[r]
        hits.ids = out
        return hits

    def fetch(self, ids) -> list[tuple[str, np.ndarray, dict, Any]]:
        """The records among ``ids`` that this shard holds, in the order asked (duplicates once).

        Returns
        -------
        list of (str, numpy.ndarray, dict, SparseVector or None)
            ``(id, vector, metadata, sparse)``; ids this shard does not hold are left out.
        """
        shard = self._current().shard
        wanted = list(dict.fromkeys(as_ids(ids)))
        with shard.lock.read():
            found = [(i, r) for i in wanted if (r := shard.id_to_row.get(i)) is not None]
            metas = shard.metadata_of([r for _, r in found], None)
            rows = [r for _, r in found]
            values = shard.values_of(rows) if found else ()
            sparse = shard.sparse_of(rows)
            return [(i, v, meta, sv) for (i, _), v, meta, sv in zip(found, values, metas, sparse)]

    def ids_matching(self, filter: Mapping | None = None, *, schema: Mapping[str, str] | None = None) -> list[str]:
        """Ids of this shard's live records that pass ``filter`` (every record for ``None`` or ``{}``).

        ``schema`` is as for :meth:`search`.
        """
        shard = self._current().shard
        sch = self._schema_for(shard, schema)
        return shard.ids_matching(compile_filter(filter, sch), None if schema is None else sch)

    # -- properties ------------------------------------------------------------
    @property
    def shard(self) -> Shard:
        """The current in-memory shard (replaced whole by a rebuild; never write to it)."""
        return self._current().shard

    @property
    def applied_seq(self) -> int:
        """Every write with a seq up to this one that touched this shard is reflected."""
        return self._current().covered

    @property
    def config(self) -> dict:
        """The collection's ``collection.json``."""
        return dict(self._config)

    @property
    def dim(self) -> int:
        return self._config["dim"]

    @property
    def metric(self) -> str:
        return self._config["metric"]

    @property
    def index(self) -> str:
        return self._config["index"]

    @property
    def lineage(self) -> dict:
        return dict(self._config.get("lineage") or {})

    @property
    def schema(self) -> dict[str, str]:
        """This shard's metadata field types (merge the shards' to get the collection's)."""
        return dict(self._current().shard.schema)

    def __len__(self) -> int:
        return len(self.shard)

    def stats(self) -> dict:
        """The shard's counts and sizes, plus how far it has followed the writer."""
        st = self._current()
        out = st.shard.stats()
        out.pop("wal_bytes", None)  # the follower has no WAL of its own
        out.update({
            "collection": str(self.path),
            "applied_seq": st.covered,
            "snapshot_seq": st.manifest_seq,
            "pending": len(st.pending),
            "refreshes": self._refreshes,
            "rebuilds": self._rebuilds,
            "wal_cursor": dataclasses.asdict(st.wal.cursor),
            "wal_files_opened": st.wal.files_opened,  # since the last rebuild
            "wal_bytes_read": st.wal.bytes_read,
            "manifest_reads": self._manifest_reads,
            "indexes_loaded": self._indexes_loaded,
            "dim": self.dim,
            "metric": self.metric,
            "index": self.index,
            "device": self.device,
            "lineage": self.lineage,
            "schema": dict(st.shard.schema),
        })
        return out

    def close(self) -> None:
        """Release the shard's memory. Safe to call twice; other methods then raise ``ValueError``."""
        with self._lock:
            self._closed = True
            self._state = None

    def __enter__(self) -> "ShardFollower":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"applied_seq={self._state.covered if self._state else None}"
        return f"ShardFollower({str(self.path)!r}, shard={self.number}, {state})"
