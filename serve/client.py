"""Python handles: query and write a running gpusearch app from a Ray job with NumPy, no JSON.

>>> client = connect("gpusearch")                                   # doctest: +SKIP
>>> client.upsert("docs", ["a", "b"], np.eye(2, 384, dtype="float32"))  # doctest: +SKIP
WriteResult(count=2, sequence=1)
>>> client.query("docs", np.eye(1, 384, dtype="float32"), k=1).ids  # doctest: +SKIP
[['a']]

Results are the same objects the in-process :class:`gpusearch.Collection` returns
(``SearchResult``, ``WriteResult``, ``FetchResult``), with the same answers as HTTP:
both go through the same Aggregator and Writer deployments.

A handle skips the HTTP ingress, so no API key, collection scope or request-size limit applies:
whoever can submit a job to the Ray cluster is trusted with every collection. Keep the cluster's
ports private and give outside clients HTTP with keys.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from gpusearch.arrays import as_ids, as_matrix
from gpusearch.results import FetchResult, SearchResult, WriteResult

__all__ = ["Client", "connect"]


def connect(app_name: str = "gpusearch") -> "Client":
    """A client for the app ``app_name`` on the Ray cluster this process is connected to."""
    return Client(app_name)


class Client:
    def __init__(self, app_name: str = "gpusearch"):
        from ray import serve

        self.app_name = app_name
        self._aggregator = serve.get_deployment_handle("Aggregator", app_name=app_name)
        self._writer = serve.get_deployment_handle("Writer", app_name=app_name)
        self._app_name = app_name

    def _encoder(self):
        from ray import serve

        return serve.get_deployment_handle("Encoder", app_name=self._app_name)

    # -- reads -------------------------------------------------------------------
    def query(self, collection: str, queries, k: int = 10, *, filter: Mapping | None = None,
              include_metadata: bool = False, include_vectors: bool = False,
              params: Mapping[str, int] | None = None) -> SearchResult:
        """The ``k`` best records of ``collection`` (a name or alias) for each query row."""
        q = np.ascontiguousarray(as_matrix(queries, name="queries"), dtype=np.float32)
        r = self._aggregator.query.remote(collection, q, k, filter=filter, include_metadata=include_metadata,
                                          include_vectors=include_vectors, params=params).result()
        return _result(r)

    def query_text(self, collection: str, texts, k: int = 10, **kw) -> SearchResult:
        """Embed ``texts`` with the app's encoder, then :meth:`query`."""
        if isinstance(texts, str):
            texts = [texts]
        vecs = [self._encoder().encode.remote(t) for t in texts]
        return self.query(collection, np.stack([v.result() for v in vecs]), k, **kw)

    def fetch(self, collection: str, ids) -> FetchResult:
        wanted = list(dict.fromkeys(as_ids(ids)))
        r = self._aggregator.fetch.remote(collection, wanted).result()
        found = [i for i in wanted if i in r["records"]]
        vecs = np.stack([r["records"][i][0] for i in found]) if found else np.empty((0, 0), np.float32)
        return FetchResult(found, vecs, [r["records"][i][1] for i in found], [i for i in wanted if i not in found])

    # -- writes ------------------------------------------------------------------
    def upsert(self, collection: str, ids, vectors, metadata=None) -> WriteResult:
        """Acknowledged (fsynced, visible to every later query) when it returns."""
        v = np.ascontiguousarray(as_matrix(vectors, name="vectors"), dtype=np.float32)
        r = self._writer.upsert.remote(collection, as_ids(ids), v, metadata).result()
        return WriteResult(r["count"], r["sequence"])

    def delete(self, collection: str, ids=None, *, filter: Mapping | None = None,
               delete_all: bool = False) -> WriteResult:
        r = self._writer.delete.remote(collection, None if ids is None else as_ids(ids), filter, delete_all).result()
        return WriteResult(r["count"], r["sequence"])

    def create(self, collection: str, *, dim: int, metric: str | None = None, index: str | None = None,
               lineage: Mapping | None = None) -> dict:
        return self._writer.create.remote(collection, dim, metric, index, lineage).result()

    def drop(self, collection: str) -> None:
        self._writer.drop.remote(collection).result()

    def set_alias(self, alias: str, collection: str) -> None:
        """Point ``alias`` at ``collection`` atomically (queries in flight see the old or the new one)."""
        self._writer.set_alias.remote(alias, collection).result()

    def collections(self) -> dict:
        return self._writer.list.remote().result()


def _result(r: dict) -> SearchResult:
    info = {k: r[k] for k in ("collection", "sequence", "index", "lineage", "partial", "missing_shards")}
    return SearchResult(r["ids"], r["scores"], r["metadata"], r["vectors"], info)
