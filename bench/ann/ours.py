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
from .systems import HNSW_EFS, IVF_NPROBES, child_pids


def ivf_nlist(n: int) -> int:
    """About 4 sqrt(n) lists, a multiple of 16: the usual starting point (FAISS wiki, "Guidelines to choose an index")."""
    return max(16, int(4 * np.sqrt(n)) // 16 * 16)


def sweep_for(spec: str) -> list[dict]:
    if spec.startswith("HNSW"):
        return [{"efSearch": e} for e in HNSW_EFS]
    if spec.startswith("IVF"):
        return [{"nprobe": p} for p in IVF_NPROBES]
    return [{}]


def _ints(ids) -> np.ndarray:
    return np.array(list(map(int, ids)), dtype=np.int64)


class GpusearchLocal:
    """A ``gpusearch.Collection`` in this process: one shard, cosine, the given FAISS spec
    (``Flat`` is our exact backend), durable writes (WAL with fsync, as by default)."""

    def __init__(self, spec: str = "HNSW32", *, shards: int = 1, fsync: bool = True, ef_construction: int = 40):
        self.spec, self.shards, self.fsync = spec, shards, fsync
        # gpusearch builds HNSW with FAISS's efConstruction (40) and has no setting for it yet; for another
        # value this adapter sets the field on each shard's (still empty) FAISS index before inserting.
        self.ef_construction = ef_construction
        kind = spec.split(",")[0].rstrip("0123456789") if not spec.startswith("IVF") else "IVF"
        self.name = f"gpusearch {kind}"
        self.index = spec if shards == 1 else f"{spec} x {shards} shards"
        if spec.startswith("HNSW"):
            self.index += f" efConstruction={ef_construction}"
        self._tmp = None
        self._col = None
        self._params: dict = {}

    def build(self, x: np.ndarray) -> None:
        import gpusearch as gs

        n, d = x.shape
        if self.spec.startswith("IVF") and "," not in self.spec:
            self.spec = f"IVF{ivf_nlist(n // self.shards)},Flat"
            self.index = self.spec
        self._tmp = tempfile.mkdtemp(prefix="ann-gs-")
        self._col = gs.Collection.create(Path(self._tmp) / "c", dim=d, metric="cosine", index=self.spec,
                                         shards=self.shards, device="cpu", fsync=self.fsync)
        if self.spec.startswith("HNSW") and self.ef_construction != 40:
            for s in self._col._shards:
                s.backend._hnsw().hnsw.efConstruction = self.ef_construction
        # One call: gpusearch batches internally; an IVF trains on the rows it is given first.
        self._col.upsert([str(i) for i in range(n)], x, batch_size=n)
        if any(s.backend.kind == "faiss" and not s.backend.is_trained for s in self._col._shards):
            self._col.train(x)  # fewer rows than the index asks for (39 per IVF list): train on all of them
        for s in self._col._shards:
            be = s.backend
            if be.kind == "faiss" and be.n_indexed != len(s.store):
                raise RuntimeError(f"{self.spec}: only {be.n_indexed} of {len(s.store)} rows indexed after build")

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
                 upsert_batch: int = 1000, ef_construction: int = 40):
        if spec.startswith("HNSW") and ef_construction != 40:
            raise ValueError("a served gpusearch builds HNSW with FAISS's efConstruction 40 (no setting for it yet); "
                             f"got ef_construction={ef_construction}")
        self.spec, self.shards, self.replicas, self.batch_size = spec, shards, replicas, batch_size
        self.upsert_batch = upsert_batch
        kind = spec.split(",")[0].rstrip("0123456789") if not spec.startswith("IVF") else "IVF"
        self.name = f"gpusearch served {kind}"
        self.index = f"{spec}{' efConstruction=40' if spec.startswith('HNSW') else ''}, HTTP, {shards} shard x {replicas} replica"
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
