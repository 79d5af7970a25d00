"""Durability beyond one node: the Writer's log and snapshots at a storage URI, and a Writer that
takes over from any node with every acknowledged write and without a split brain.

With ``storage_uri`` set (serve setting; see :class:`DurableStore`), a write is acknowledged only
once it is on the Writer's disk (its WAL, fsynced) **and** in an object at the storage URI, and
only while the Writer still holds the lease (its *term*). A Writer that starts anywhere (its node
died, Serve moved it) takes a new term first, which fences every older Writer (its next write
fails the lease check and is refused with a retryable error, never acknowledged), then rebuilds
every collection from the storage URI: the newest valid snapshot, then the log after it.

Layout at the storage URI::

    leases/<term>.json                         every term handed out (the lease's own record)
    terms/<term>.json                          where each term began: {"starts": {"<name>/<gen>": seq}}
    catalog/<term>-<n>.json                    collections (name -> generation), aliases, indexes
    collections/<name>/<gen>/blobs/...          snapshots: gpusearch.backup's layout (content-addressed
    collections/<name>/<gen>/backups/<id>.json  blobs, manifests written last; "extra": {"term": t})
    collections/<name>/<gen>/log/<first>-<last>-t<term>-p<prev>.log   shipped writes

A log object holds one or more writes (sequence numbers ``first``..``last``) exactly as the
Writer's WAL holds them (per shard payloads); ``prev`` is the last write shipped before it, so the
objects form a chain. Nothing needs a rename: every object is written once under its final name.

Why nothing acknowledged is lost and nothing void is replayed
--------------------------------------------------------------
A Writer of term ``t`` acknowledges a write after (1) its log object is stored and (2) the lease
still says ``t``. A new Writer (3) takes term ``t' > t`` and only then (4) lists the log; since
(2) came before (3), every acknowledged object is visible at (4) and lands in the rebuilt copy.
The new Writer records in ``terms/<t'>.json`` the last write it rebuilt (``start``); an object of
an older term whose ``prev`` is at or after ``start`` (one a fenced Writer stored after the
takeover) is void, and so is a snapshot of an older term taken after ``start``. The catalog with
the highest ``(term, n)`` is the current one (a new Writer writes one first). So two Writers can
both be running for a moment, but only one can acknowledge.
"""
from __future__ import annotations

import json
import logging
import re
import struct
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

from .errors import UnavailableError
from .storage import Location, join_uri

__all__ = ["DurableStore", "FencedError", "NotDurableError", "LocalLease", "RayLease", "encode_writes",
           "decode_writes", "seed_sources", "seed_replica", "SNAPSHOT_EVERY_BYTES"]

log = logging.getLogger(__name__)

_MAGIC = b"GSLOG1\n"
_LOG_RE = re.compile(r"^(\d{20})-(\d{20})-t(\d{8})-p(\d{20})\.log$")
#: A collection is snapshot to the storage URI after this many bytes of writes were shipped since
#: the last snapshot (the log after a snapshot is what a new Writer replays).
SNAPSHOT_EVERY_BYTES = 64 << 20


class FencedError(UnavailableError):
    """A newer Writer holds the lease: this one acknowledges nothing more (HTTP 503, retry)."""


class NotDurableError(UnavailableError):
    """The write is on this Writer's disk but not yet at the storage URI, so it is not acknowledged
    (HTTP 503). It is shipped before the next write; retrying it is safe."""


def encode_writes(writes: list[tuple[int, dict[int, bytes]]]) -> bytes:
    """One log object: ``writes`` as (sequence number, {shard: payload}), with a CRC-32 of it all."""
    out = [_MAGIC, struct.pack("<I", len(writes))]
    for seq, parts in writes:
        out.append(struct.pack("<QI", seq, len(parts)))
        for shard in sorted(parts):
            out.append(struct.pack("<II", shard, len(parts[shard])))
            out.append(parts[shard])
    body = b"".join(out)
    return body + struct.pack("<I", zlib.crc32(body))


def decode_writes(data: bytes, name: str = "log object") -> list[tuple[int, dict[int, bytes]]]:
    """The writes in a log object; ``ValueError`` naming ``name`` when it is damaged or cut short."""
    if len(data) < len(_MAGIC) + 8 or not data.startswith(_MAGIC):
        raise ValueError(f"{name} is not a gpusearch log object")
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    if zlib.crc32(body) != crc:
        raise ValueError(f"{name} fails its checksum: damaged or cut short")
    pos = len(_MAGIC)
    (n,) = struct.unpack_from("<I", body, pos)
    pos += 4
    writes = []
    for _ in range(n):
        seq, nparts = struct.unpack_from("<QI", body, pos)
        pos += 12
        parts = {}
        for _ in range(nparts):
            shard, length = struct.unpack_from("<II", body, pos)
            pos += 8
            parts[shard] = bytes(body[pos:pos + length])
            pos += length
        writes.append((seq, parts))
    if pos != len(body):
        raise ValueError(f"{name} holds {len(body) - pos} bytes after its last write")
    return writes


class _LeaseActor:
    """Holds the current term of one storage URI, on the head node (whose loss ends the Ray cluster
    anyway). Each term handed out is recorded at the URI first, so a restarted lease never hands
    one out twice."""

    def __init__(self, uri: str | None = None):
        self.loc = Location(uri) if uri is not None else None
        self.term = 0 if self.loc is None else max(
            (int(k[:8]) for k in self.loc.list("leases") if re.match(r"^\d{8}\.json$", k)), default=0)
        self._lock = threading.Lock()

    def acquire(self, owner: str = "") -> int:
        with self._lock:
            term = self.term + 1
            if self.loc is not None:
                self.loc.put_bytes(f"leases/{term:08d}.json", json.dumps({"owner": owner, "at": time.time()}).encode())
            self.term = term
            return term

    def current(self) -> int:
        return self.term


class LocalLease(_LeaseActor):
    """The lease in one process (tests, tools, a single node): terms from a counter, which starts after
    the terms already handed out at ``uri`` when given (and records its own there)."""


class RayLease:
    """The lease as a named, detached Ray actor on the head node: one per storage URI, shared by
    every Writer that ever serves it. A call that cannot reach it raises (nothing is acknowledged)."""

    def __init__(self, uri: str, timeout_s: float = 30.0):
        import hashlib

        import ray

        name = "gpusearch-lease-" + hashlib.sha256(uri.encode()).hexdigest()[:16]
        actor = ray.remote(_LeaseActor).options(
            name=name, namespace="gpusearch", lifetime="detached", get_if_exists=True, num_cpus=0,
            max_restarts=-1, max_task_retries=-1, resources={"node:__internal_head__": 0.001})
        self._actor = actor.remote(uri)
        self._ray, self.timeout_s = ray, timeout_s
        self._owner = uuid.uuid4().hex

    def acquire(self) -> int:
        return self._ray.get(self._actor.acquire.remote(self._owner), timeout=self.timeout_s)

    def current(self) -> int:
        return self._ray.get(self._actor.current.remote(), timeout=self.timeout_s)


def _parse_log(name: str) -> tuple[int, int, int, int] | None:
    m = _LOG_RE.match(name)
    return None if m is None else (int(m[1]), int(m[2]), int(m[3]), int(m[4]))


class _Shipper:
    """The log sink of one collection (attached with :meth:`gpusearch.Collection.attach_log`)."""

    def __init__(self, store: "DurableStore", name: str, gen: str, last_shipped: int):
        self.store, self.name, self.gen = store, name, gen
        self.prefix = f"collections/{name}/{gen}"
        self.last_shipped = last_shipped
        self.pending: list[tuple[int, dict[int, bytes]]] = []
        self.since_snapshot = 0  # bytes shipped since the last snapshot
        self.shipped_writes = self.shipped_bytes = 0

    def _put(self) -> None:
        first, last = self.pending[0][0], self.pending[-1][0]
        data = encode_writes(self.pending)
        t = self.store.term
        self.store.loc.put_bytes(f"{self.prefix}/log/{first:020d}-{last:020d}-t{t:08d}-p{self.last_shipped:020d}.log",
                                 data)
        self.store.check_lease()
        self.last_shipped = last
        self.since_snapshot += len(data)
        self.shipped_writes += len(self.pending)
        self.shipped_bytes += len(data)
        self.pending = []

    def before_write(self) -> None:
        """Under the collection's write lock, before a write touches anything: refuse it when this
        Writer was fenced or an earlier write still waits to be shipped and cannot be."""
        self.store.check_not_fenced()
        if self.pending:
            try:
                self._put()
            except OSError as exc:
                raise NotDurableError(f"the storage URI cannot be written ({exc}); nothing was written, retry "
                                      f"once it is reachable") from exc

    def ship(self, seq: int, parts: dict[int, bytes]) -> Exception | None:
        """Ship write ``seq``; the error to raise once it is applied (None when it is acknowledged)."""
        self.pending.append((seq, dict(parts)))
        try:
            self._put()
        except FencedError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - kept in pending; shipped before the next write
            log.warning("collection %s: write %d is not at the storage URI yet (%s)", self.name, seq, exc)
            return NotDurableError(f"write {seq} is on the Writer but not yet at the storage URI ({exc}); it is "
                                   f"not acknowledged: retry (upserts and deletes are safe to repeat)")
        self.store.snapshot_due(self)
        return None


class DurableStore:
    """The Writer's side of a storage URI: the lease, the catalog, each collection's log and snapshots.

    ``uri``: where (see :mod:`gpusearch.storage`). ``lease``: a :class:`RayLease` (served) or a
    :class:`LocalLease` (one process). Call :meth:`take_over` once, before anything else: it takes a
    term and rebuilds every collection the URI holds under ``data_dir`` (which must be empty or
    missing). Then hand the store to :class:`gpusearch.catalog.Catalog` (``durable=``), which calls
    :meth:`attach`, :meth:`created`, :meth:`dropped` and :meth:`publish`.
    """

    def __init__(self, uri: str, lease, *, shards: int, snapshot_every_bytes: int = SNAPSHOT_EVERY_BYTES,
                 background_snapshots: bool = True):
        self.uri, self.loc, self.lease, self.shards = str(uri), Location(uri), lease, int(shards)
        self.term = 0
        self.fenced = False
        self.snapshot_every_bytes = int(snapshot_every_bytes)
        self.background_snapshots = background_snapshots
        self.catalog: dict[str, Any] = {"shards": self.shards, "collections": {}, "aliases": {}, "indexes": {}}
        self._n = 0
        self._lock = threading.RLock()
        self._snapshotting: set[str] = set()
        self._collections: dict[str, Any] = {}  # name -> open Collection (for snapshots)
        self.shippers: dict[str, _Shipper] = {}
        self.recovery: dict[str, Any] = {}
        self._known: dict[str, dict] = {}  # name -> SHA-256 of rebuilt files, for the collection's backup cache

    # -- the lease -------------------------------------------------------------
    def check_not_fenced(self) -> None:
        if self.fenced:
            raise FencedError("a newer Writer took over this data; this one takes no more writes (retry: the "
                              "request goes to the new one)")

    def check_lease(self) -> None:
        """Raise :class:`FencedError` (and take no more writes) unless this store's term is current."""
        current = self.lease.current()
        if current != self.term:
            self.fenced = True
            log.error("term %d was taken over by term %d: this Writer takes no more writes", self.term, current)
            self.check_not_fenced()

    # -- reading the URI -------------------------------------------------------
    def _terms(self) -> dict[int, dict[str, int]]:
        out = {}
        for k in self.loc.list("terms"):
            if re.match(r"^\d{8}\.json$", k):
                try:
                    out[int(k[:8])] = dict(json.loads(self.loc.get_bytes(f"terms/{k}"))["starts"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{self.uri}: terms/{k} is damaged ({exc})") from None
        return out

    def _latest_catalog(self) -> dict | None:
        keys = sorted(k for k in self.loc.list("catalog") if re.match(r"^\d{8}-\d{10}\.json$", k))
        for k in reversed(keys):
            try:
                return json.loads(self.loc.get_bytes(f"catalog/{k}"))
            except ValueError:  # a put cut short on a store without atomic puts: never acknowledged
                log.warning("%s: skipping catalog/%s, which does not parse", self.uri, k)
        return None

    @staticmethod
    def _void(term: int, at: int, key: str, terms: dict[int, dict[str, int]]) -> bool:
        """Whether something of ``term`` at or after write ``at`` came after a newer term began."""
        return any(t > term and key in starts and at >= starts[key] for t, starts in terms.items())

    def _rebuild(self, name: str, gen: str, path: Path, terms, device: str, fsync: bool, index_role: str = "inline"):
        from .backup import _manifests, restore
        from .collection import Collection

        key, prefix = f"{name}/{gen}", f"collections/{name}/{gen}"
        gen_loc = join_uri(self.uri, prefix)
        snaps = [m for m in _manifests(Location(gen_loc))
                 if not self._void(int((m.get("extra") or {}).get("term", 0)), int(m["sequence"]), key, terms)]
        if not snaps:
            raise ValueError(f"{self.uri}: collection {name!r} ({gen}) has no valid snapshot")
        snap = max(snaps, key=lambda m: (m["sequence"], m["id"]))
        restore(gen_loc, path, backup_id=snap["id"], shards=self.shards, work_dir=path.parent.parent / "restoring")
        # The restored files' SHA-256 (checked by the restore): a shard replica seeded from the same
        # snapshot (seed_sources) is told it has them without the Writer reading them again.
        known = {}
        for e in snap["files"]:
            if e["path"].rsplit("/", 1)[-1].startswith(("seg-", "alive-", "index-")):
                st = (path / e["path"]).stat()
                known[(e["path"], e["size"], st.st_ino, st.st_mtime_ns)] = e["sha256"]
        self._known[name] = known
        col = Collection.open(path, device=device, fsync=fsync, index_role=index_role)
        cur, applied, objects = int(snap["sequence"]), 0, []
        for k, size in self.loc.list(f"{prefix}/log").items():
            parsed = _parse_log(k)
            if parsed is not None and not self._void(parsed[2], parsed[3] + 1, key, terms):
                objects.append((parsed, k))
        for (first, last, _t, prev), k in sorted(objects):
            if last <= cur:
                continue
            if prev > cur:  # a gap: nothing after it was acknowledged (each object waits for the one before)
                log.warning("%s: collection %s: the log stops at write %d (next object %s starts after %d)",
                            self.uri, name, cur, k, prev)
                break
            for seq, parts in decode_writes(self.loc.get_bytes(f"{prefix}/log/{k}"), f"{prefix}/log/{k}"):
                if seq > cur:
                    col.apply_logged(seq, parts)
                    cur, applied = seq, applied + 1
        return col, cur, {"snapshot": snap["id"], "snapshot_sequence": int(snap["sequence"]),
                          "log_writes": applied, "sequence": cur}

    # -- taking over -----------------------------------------------------------
    def take_over(self, data_dir, *, device: str = "cpu", fsync: bool = True,
                  index_role: str = "inline") -> dict[str, Any]:
        """Take a new term, then rebuild every collection of the current catalog under ``data_dir``
        (``collections/``, ``aliases.json``; which must hold no collection yet), and record where
        this term starts. Returns what it did per collection. ``index_role``: see
        :meth:`gpusearch.Collection.create`."""
        from .fileio import atomic_write_json

        t0 = time.perf_counter()
        data_dir = Path(data_dir)
        (data_dir / "collections").mkdir(parents=True, exist_ok=True)
        if any((data_dir / "collections").iterdir()):
            raise ValueError(f"{data_dir}: a Writer rebuilds from the storage URI into an empty directory")
        self.term = self.lease.acquire()  # from here on, every older Writer is fenced
        terms = self._terms()
        current = self._latest_catalog()
        if current is not None:
            if int(current.get("shards", self.shards)) != self.shards:
                raise ValueError(f"{self.uri} holds collections with {current.get('shards')} shards; serve it with "
                                 f"shards={current.get('shards')} (got shards={self.shards})")
            self.catalog = {"shards": self.shards, "collections": dict(current.get("collections") or {}),
                            "aliases": dict(current.get("aliases") or {}), "indexes": dict(current.get("indexes") or {})}
        starts, report = {}, {}
        for name, gen in sorted(self.catalog["collections"].items()):
            col, last, info = self._rebuild(name, gen, data_dir / "collections" / name, terms, device, fsync,
                                             index_role)
            col.close()
            starts[f"{name}/{gen}"] = last + 1
            report[name] = info
        atomic_write_json(data_dir / "aliases.json", self.catalog["aliases"])
        self.loc.put_bytes(f"terms/{self.term:08d}.json", json.dumps({"starts": starts}).encode())
        self.publish()
        self.recovery = {"term": self.term, "collections": report, "seconds": round(time.perf_counter() - t0, 3)}
        log.info("took over as term %d: %d collections rebuilt from %s in %.1f s", self.term, len(report),
                 self.uri, self.recovery["seconds"])
        return self.recovery

    # -- the catalog -----------------------------------------------------------
    def publish(self, **changes) -> None:
        """Store the catalog with ``changes`` (``aliases=``, ``indexes=``) as the current one. Raises
        (changing nothing) when the URI cannot be written or this Writer was fenced."""
        with self._lock:
            self.check_not_fenced()
            doc = {**self.catalog, **changes}
            self._n += 1
            self.loc.put_bytes(f"catalog/{self.term:08d}-{self._n:010d}.json", json.dumps(doc).encode())
            self.check_lease()
            self.catalog = doc

    def attach(self, name: str, col) -> None:
        """Ship ``col``'s writes from now on (a collection this Writer rebuilt or made)."""
        with self._lock:
            gen = self.catalog["collections"].get(name)
            if gen is None:
                raise ValueError(f"collection {name!r} is not in the catalog at {self.uri}")
            shipper = _Shipper(self, name, gen, col._seq)
            self.shippers[name] = shipper
            self._collections[name] = col
            col._backup_hashes.update(self._known.pop(name, {}))
        col.attach_log(shipper)

    def created(self, name: str, col) -> None:
        """A collection made here (created or restored): snapshot it, then make it current. Raises
        (and the caller removes the collection) when either fails."""
        gen = uuid.uuid4().hex[:16]
        self._snapshot_to(col, f"collections/{name}/{gen}")
        with self._lock:
            self.publish(collections={**self.catalog["collections"], name: gen})
        self.attach(name, col)

    def dropped(self, name: str) -> None:
        """Before a drop: the catalog without ``name`` becomes current (the drop's commit point)."""
        with self._lock:
            gens = dict(self.catalog["collections"])
            gens.pop(name, None)
            self.publish(collections=gens)
            self.shippers.pop(name, None)
            self._collections.pop(name, None)

    # -- snapshots -------------------------------------------------------------
    def _snapshot_to(self, col, prefix: str) -> dict:
        from .backup import backup

        info = backup(col, join_uri(self.uri, prefix), extra={"term": self.term})
        self.check_lease()
        return info

    def snapshot(self, name: str) -> dict | None:
        """Snapshot collection ``name`` to the URI now, then remove the log objects it makes unneeded."""
        with self._lock:
            col, shipper = self._collections.get(name), self.shippers.get(name)
        if col is None or shipper is None:
            return None
        before = shipper.since_snapshot
        info = self._snapshot_to(col, shipper.prefix)
        shipper.since_snapshot = max(0, shipper.since_snapshot - before)
        for k in self.loc.list(f"{shipper.prefix}/log"):
            parsed = _parse_log(k)
            if parsed is not None and parsed[1] <= info["sequence"]:
                self.loc.delete(f"{shipper.prefix}/log/{k}")
        return info

    def snapshot_due(self, shipper: _Shipper) -> None:
        """After a shipped write: snapshot its collection in the background once enough was shipped."""
        if shipper.since_snapshot < self.snapshot_every_bytes or not self.background_snapshots:
            return
        with self._lock:
            if shipper.name in self._snapshotting:
                return
            self._snapshotting.add(shipper.name)

        def run():
            try:
                self.snapshot(shipper.name)
            except Exception as exc:  # noqa: BLE001 - the log keeps everything; tried again later
                log.warning("collection %s: snapshot to %s failed (%s); the log keeps every write", shipper.name,
                            self.uri, exc)
            finally:
                with self._lock:
                    self._snapshotting.discard(shipper.name)

        threading.Thread(target=run, daemon=True, name=f"gpusearch-snapshot-{shipper.name}").start()

    def stats(self) -> dict[str, Any]:
        return {"uri": self.uri, "term": self.term, "fenced": self.fenced,
                "shipped_writes": sum(s.shipped_writes for s in self.shippers.values()),
                "shipped_bytes": sum(s.shipped_bytes for s in self.shippers.values()), "recovery": self.recovery}


def seed_sources(uri: str, shard: int) -> dict[str, dict[str, Any]]:
    """What a new replica of shard ``shard`` can copy from the storage URI instead of from the Writer:
    per collection of the current catalog, the location of its newest snapshot and that shard's
    segments, bitmaps and indexes in it (``{"uri", "files": [(path, size, sha256, blob key)]}``). A
    replica offers what it copied to the Writer (:meth:`gpusearch.mirror.ShardMirror.seed`), which
    takes a file only when it has one of that name, size and SHA-256, so a stale or void snapshot
    costs a copy, never a wrong answer."""
    from .backup import _blob_key, _manifests

    store = DurableStore(uri, LocalLease(), shards=0)
    current = store._latest_catalog() or {}
    base = f"shard-{int(shard):03d}/"
    out = {}
    for name, gen in sorted((current.get("collections") or {}).items()):
        gen_uri = join_uri(uri, f"collections/{name}/{gen}")
        snaps = _manifests(Location(gen_uri))
        if not snaps:
            continue
        snap = max(snaps, key=lambda m: (m["sequence"], m["id"]))
        files = [(e["path"], int(e["size"]), e["sha256"], _blob_key(e["sha256"])) for e in snap["files"]
                 if e["path"].startswith(base) and e["path"][len(base):].startswith(("seg-", "alive-", "index-"))]
        out[name] = {"uri": gen_uri, "files": files, "snapshot": snap["id"]}
    return out


def seed_replica(catalog, uri: str, shard: int) -> dict[str, Any]:
    """Copy shard ``shard``'s files of each collection's newest snapshot at ``uri`` (SHA-256 checked) into
    ``catalog`` (a :class:`gpusearch.catalog.ShardCatalog` that copies from its writer), which offers
    them to the writer on its first sync. A failure costs only speed: the writer then sends everything.
    No fsync: a replica's copy is a cache, made again from the URI or the writer after a crash."""
    t0, n, nbytes = time.perf_counter(), 0, 0
    try:
        for name, src in seed_sources(uri, shard).items():
            loc = Location(src["uri"])
            for rel, size, sha, key in src["files"]:
                loc.download(key, catalog.seed(name, rel, size, sha), size=size, sha256=sha, fsync=False)
                n, nbytes = n + 1, nbytes + size
    except Exception as exc:  # noqa: BLE001 - the writer sends what is missing
        log.warning("shard %d: copying from the storage URI failed (%s); the writer sends everything", shard, exc)
    return {"files": n, "bytes": nbytes, "seconds": round(time.perf_counter() - t0, 3)}
