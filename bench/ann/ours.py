"""gpusearch in the recall-versus-speed suite: in-process (a Collection) and served (Ray Serve over HTTP).

Both follow the ``System`` protocol of ``bench/ann/__init__.py``. Ids are written as the
row number's decimal string (gpusearch ids are strings) and read back as ints.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from server_proc import free_port  # bench/server_proc.py (bench/ is on sys.path)

from . import pad_ids
from .systems import HNSW_EFS, IVF_NPROBES, K_FACTORS, child_pids, partition_steps


def ivf_nlist(n: int) -> int:
    """About 4 sqrt(n) lists, a multiple of 16: the usual starting point (FAISS wiki, "Guidelines to choose an index")."""
    return max(16, int(4 * np.sqrt(n)) // 16 * 16)


def sweep_for(spec: str) -> list[dict]:
    """Search settings to measure for index ``spec``, cheapest first: efSearch for an HNSW, nprobe for an
    IVF, and for an IVF with an exact refine stage (``...,RFlat``) the staircase of (nprobe, kFactor)
    pairs the raw FAISS system of the same string sweeps (``systems.FaissIVFPQRefine``)."""
    if spec.startswith("HNSW"):
        return [{"efSearch": e} for e in HNSW_EFS]
    if spec.startswith("IVF") and spec.endswith(",RFlat"):
        nlist = int(spec[3:].split(",")[0])
        return [{"nprobe": p, "kFactor": kf} for p, kf in zip(partition_steps(nlist), K_FACTORS)]
    if spec.startswith("IVF"):
        return [{"nprobe": p} for p in IVF_NPROBES]
    return [{}]


def default_ef_construction() -> int:
    """efConstruction a new gpusearch HNSW is built with when the user gives none."""
    from gpusearch.backends import DEFAULT_EF_CONSTRUCTION

    return DEFAULT_EF_CONSTRUCTION


def _kind(spec: str) -> str:
    if spec.startswith("IVF"):
        return "IVF-PQfs+refine" if "x4fs" in spec and spec.endswith(",RFlat") else "IVF"
    return spec.split(",")[0].rstrip("0123456789")


def _ints(ids) -> np.ndarray:
    return np.array(list(map(int, ids)), dtype=np.int64)


class GpusearchLocal:
    """A ``gpusearch.Collection`` in this process: one shard, cosine, the given FAISS spec
    (``Flat`` is our exact backend), durable writes (WAL with fsync, as by default).

    ``index_options`` go to ``Collection.create`` as a user would give them (``{"efConstruction":
    200}``; ``{"nprobe": 16}``); None builds at gpusearch's own defaults, what a user gets writing
    just ``index="HNSW32"``. After the build, ``build_params`` holds the options the collection
    stored (every default filled in), and for an HNSW the efConstruction is checked on each
    shard's FAISS index."""

    def __init__(self, spec: str = "HNSW32", *, shards: int = 1, fsync: bool = True,
                 index_options: dict | None = None):
        self.spec, self.shards, self.fsync = spec, shards, fsync
        self.index_options = dict(index_options) if index_options else None
        self.name = f"gpusearch {_kind(spec)}"
        self.index = self._describe(self.index_options or {})
        self.build_params = {"index": spec, "index_options": self.index_options}
        self._tmp = None
        self._col = None
        self._params: dict = {}

    def _describe(self, options: dict) -> str:
        label = self.spec if self.shards == 1 else f"{self.spec} x {self.shards} shards"
        if "efConstruction" in options:
            given = "efConstruction" in (self.index_options or {})
            label += f" efConstruction={options['efConstruction']}{'' if given else ' (default)'}"
        return label

    def build(self, x: np.ndarray) -> None:
        import gpusearch as gs

        n, d = x.shape
        if self.spec.startswith("IVF") and "," not in self.spec:
            self.spec = f"IVF{ivf_nlist(n // self.shards)},Flat"
            self.index = self.spec
        self._tmp = tempfile.mkdtemp(prefix="ann-gs-")
        self._col = gs.Collection.create(Path(self._tmp) / "c", dim=d, metric="cosine", index=self.spec,
                                         shards=self.shards, device="cpu", fsync=self.fsync,
                                         index_options=self.index_options)
        # One call: gpusearch batches internally; an IVF trains on the rows it is given first.
        self._col.upsert([str(i) for i in range(n)], x, batch_size=n)
        if any(s.backend.kind == "faiss" and not s.backend.is_trained for s in self._col._shards):
            self._col.train(x)  # fewer rows than the index asks for (39 per IVF list): train on all of them
        for s in self._col._shards:
            be = s.backend
            if be.kind == "faiss" and be.n_indexed != len(s.store):
                raise RuntimeError(f"{self.spec}: only {be.n_indexed} of {len(s.store)} rows indexed after build")
        stored = dict(self._col.stats()["index_options"])
        self.build_params = {"index": self.spec, "index_options": stored, "given": self.index_options}
        if "efConstruction" in stored:  # the graph was built with what the collection says
            import faiss

            for s in self._col._shards:
                ix = faiss.downcast_index(s.backend.index)
                if isinstance(ix, faiss.IndexPreTransform):
                    ix = faiss.downcast_index(ix.index)
                if ix.hnsw.efConstruction != stored["efConstruction"]:
                    raise RuntimeError(f"{self.spec}: shard built with efConstruction {ix.hnsw.efConstruction}, "
                                       f"the collection says {stored['efConstruction']}")
        self.index = self._describe(stored)

    def sweep(self) -> list[dict]:
        return sweep_for(self.spec)

    def set_params(self, params: dict) -> None:
        self._params = dict(params)

    def search_one(self, q: np.ndarray, k: int) -> np.ndarray:
        return _ints(self._col.search(q, k=k, params=self._params or None).ids[0])

    def search_batch(self, q: np.ndarray, k: int) -> np.ndarray:
        r = self._col.search(q, k=k, params=self._params or None)
        return pad_ids([list(map(int, row)) for row in r.ids], k)

    def server_pids(self) -> list[int]:
        return []

    def close(self) -> None:
        if self._col is not None:
            self._col.close()
            self._col = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


class GpusearchServed:
    """gpusearch served by Ray Serve on loopback, driven over HTTP as a user's client would.

    The app runs on a local Ray started in this process (``gpusearch.serve.app.start``),
    ``shards`` Shard deployments with ``replicas`` replicas each, no encoder. Vectors go in
    through ``POST /vectors/upsert`` (1,000 per request; bodies JSON-encoded before the
    clock starts, that time recorded separately in ``client_encode_s``), the collection made
    first with ``POST /collections`` naming the index. Single queries are ``POST /query``
    from one blocking ``httpx.Client``; batches are ``POST /query`` with ``queries`` (ours: up to
    ``batch_size`` vectors per request, the server's ``max_batch``), encoded inside the timing.
    """

    COLLECTION = "ann"

    def __init__(self, spec: str = "HNSW32", *, shards: int = 1, replicas: int = 1, batch_size: int = 1000,
                 upsert_batch: int = 1000, ef_construction: int | None = None):
        # The served app creates its collection without index options (no way to send them yet), so an
        # HNSW gets gpusearch's default efConstruction; asking for another value is refused, not ignored.
        efc = default_ef_construction()
        if spec.startswith("HNSW") and ef_construction not in (None, efc):
            raise ValueError(f"a served gpusearch builds HNSW with gpusearch's default efConstruction {efc} (no "
                             f"setting for it over HTTP yet); got ef_construction={ef_construction}")
        self.spec, self.shards, self.replicas, self.batch_size = spec, shards, replicas, batch_size
        self.upsert_batch = upsert_batch
        self.name = f"gpusearch served {_kind(spec)}"
        self.index = (f"{spec}{f' efConstruction={efc}' if spec.startswith('HNSW') else ''}, HTTP, "
                      f"{shards} shard x {replicas} replica")
        self.build_params = {"index": spec, "index_options": {"efConstruction": efc} if spec.startswith("HNSW") else None,
                             "given": None, "shards": shards, "replicas": replicas}
        self.batch_label = f"POST /query with queries, {batch_size} per request"
        self._tmp = None
        self._http = None
        self._params: dict = {}
        self.client_encode_s = 0.0
        self.start_s = 0.0
        self._seq = 0

    def build(self, x: np.ndarray) -> None:
        import httpx

        from gpusearch.serve import ServeConfig
        from gpusearch.serve.app import start

        n, d = x.shape
        if self.spec.startswith("IVF") and "," not in self.spec:
            self.spec = f"IVF{ivf_nlist(n // self.shards)},Flat"
        self._tmp = tempfile.mkdtemp(prefix="ann-served-")
        cfg = ServeConfig(data_dir=str(Path(self._tmp) / "data"), port=free_port(), shards=self.shards,
                          replicas=self.replicas, device="cpu", encoder_enabled=False, index=self.spec)
        self._base = f"http://{cfg.host}:{cfg.port}"
        t = time.perf_counter()
        start(cfg, ray_temp_dir=str(Path(self._tmp) / "ray"))
        self.start_s = time.perf_counter() - t
        # Encode the upsert bodies before the clock (the user's own serialisation cost, recorded apart).
        t = time.perf_counter()
        bodies = []
        for lo in range(0, n, self.upsert_batch):
            vecs = [{"id": str(i), "values": x[i].tolist()} for i in range(lo, min(lo + self.upsert_batch, n))]
            bodies.append(json.dumps({"vectors": vecs, "namespace": self.COLLECTION}).encode())
        self.client_encode_s = time.perf_counter() - t
        self._http = httpx.Client(timeout=600)
        h = {"content-type": "application/json"}
        r = self._http.post(self._base + "/collections", headers=h,
                            json={"name": self.COLLECTION, "dimension": d, "metric": "cosine", "index": self.spec})
        r.raise_for_status()
        for b in bodies:
            r = self._http.post(self._base + "/vectors/upsert", content=b, headers=h)
            if r.status_code != 200:
                raise RuntimeError(f"upsert answered {r.status_code}: {r.text[:300]}")
            self._seq = r.json()["sequence"]
        # Acknowledged is durable; wait until the shard replicas serve it (their WAL followers catch up).
        deadline = time.monotonic() + 600
        while True:
            # A shard replica catching up (replaying the WAL into its index) may not answer within the
            # server's shard timeout: a 504 here means "not yet", so ask again.
            r = self._http.post(self._base + "/query", content=self._body(x[0], 1),
                                headers={"content-type": "application/json"})
            if r.status_code not in (200, 503, 504):
                raise RuntimeError(f"/query answered {r.status_code}: {r.text[:300]}")
            ans = r.json() if r.status_code == 200 else {"sequence": -1}
            if ans["sequence"] >= self._seq and not ans.get("partial"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"shards still at sequence {ans['sequence']} < {self._seq} after 600 s")
            time.sleep(0.2)
        # Every record is found from here on, but the rows the Writer has not built into a saved index
        # yet are searched exactly: the build is done once the replicas hold none outside their index.
        while True:
            text = self._http.get(self._base + "/metrics").text
            waiting = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith(f'gpusearch_unindexed_rows{{collection="{self.COLLECTION}"')]
            if waiting and sum(waiting) == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"rows still outside the index after 600 s: {waiting}")
            time.sleep(0.2)

    def _body(self, q: np.ndarray, k: int) -> bytes:
        body = {"namespace": self.COLLECTION, "topK": k, "vector": q.tolist()}
        if self._params:
            body["params"] = self._params
        return json.dumps(body).encode()

    def _query(self, q: np.ndarray, k: int) -> dict:
        r = self._http.post(self._base + "/query", content=self._body(q, k), headers={"content-type": "application/json"})
        if r.status_code != 200:
            raise RuntimeError(f"/query answered {r.status_code}: {r.text[:300]}")
        return r.json()

    def sweep(self) -> list[dict]:
        return sweep_for(self.spec)

    def set_params(self, params: dict) -> None:
        self._params = dict(params)

    def search_one(self, q: np.ndarray, k: int) -> np.ndarray:
        return np.array([int(m["id"]) for m in self._query(q, k)["matches"]], dtype=np.int64)

    def search_batch(self, q: np.ndarray, k: int) -> np.ndarray:
        out: list = []
        for lo in range(0, len(q), self.batch_size):
            body = {"namespace": self.COLLECTION, "topK": k, "queries": q[lo : lo + self.batch_size].tolist()}
            if self._params:
                body["params"] = self._params
            r = self._http.post(self._base + "/query", content=json.dumps(body).encode(),
                                headers={"content-type": "application/json"})
            if r.status_code != 200:
                raise RuntimeError(f"/query answered {r.status_code}: {r.text[:300]}")
            out += [[int(m["id"]) for m in res["matches"]] for res in r.json()["results"]]
        return pad_ids(out, k)

    def server_pids(self) -> list[int]:
        return child_pids()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        try:
            import ray
            from ray import serve

            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
