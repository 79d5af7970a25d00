"""Python handles: query and write a running gpusearch app from a Ray job with NumPy, no JSON.

>>> client = connect("gpusearch")                                   # doctest: +SKIP
>>> client.upsert("docs", ["a", "b"], np.eye(2, 384, dtype="float32"))  # doctest: +SKIP
WriteResult(count=2, sequence=1)
>>> client.query("docs", np.eye(1, 384, dtype="float32"), k=1).ids  # doctest: +SKIP
[['a']]

Results are the same objects the in-process :class:`gpusearch.Collection` returns
(``SearchResult``, ``WriteResult``, ``FetchResult``), with the same answers as HTTP: a
query goes to the same Aggregator methods the HTTP routes call (one hop, then the shards),
a write to the Writer (one hop; like a read, it is refused with 503 once the server is
stopping and leaves one access line in the replica's log). The Aggregator checks the request once (the engine's
:func:`~gpusearch.request.build_request`, ``k`` against the server's ``max_top_k``); its
errors are raised here as the :mod:`gpusearch.errors` class it raised, not Ray's wrapper.

A handle skips HTTP, so no API key, collection scope or request-size limit applies:
whoever can submit a job to the Ray cluster is trusted with every collection. Keep the
cluster's ports private and give outside clients HTTP with keys.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from gpusearch.results import FetchResult, SearchResult, WriteResult

__all__ = ["Client", "connect"]


def connect(app_name: str = "gpusearch") -> "Client":
    """A client for the app ``app_name`` on the Ray cluster this process is connected to."""
    return Client(app_name)


def _host(x):
    """Arrays on a GPU come to the host before they travel (a handle pickles its arguments)."""
    if type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    if hasattr(x, "__cuda_array_interface__") and hasattr(x, "get"):  # CuPy
        return x.get()
    return x


def _result(response):
    """The answer of a handle call, or the exception the deployment raised (not Ray's wrapper,
    whose text holds a remote traceback)."""
    try:
        return response.result()
    except Exception as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise


class Client:
    def __init__(self, app_name: str = "gpusearch"):
        from ray import serve

        self.app_name = app_name
        self._aggregator = serve.get_deployment_handle("Aggregator", app_name=app_name)
        self._writer = serve.get_deployment_handle("Writer", app_name=app_name)

    # -- reads -------------------------------------------------------------------
    def query(self, collection: str, queries, k: int = 10, *, filter: Mapping | None = None,
              include_metadata: bool = False, include_vectors: bool = False,
              params: Mapping[str, int] | None = None, sparse_vector=None) -> SearchResult:
        """The ``k`` best records of ``collection`` (a name or alias) for each query row; with
        ``sparse_vector`` (``{"indices": [...], "values": [...]}``) a hybrid query of one row, or alone
        (``queries`` None) on a sparse collection."""
        return _result(self._aggregator.query.remote(collection, None if queries is None else _host(queries), k,
                                                     filter=filter, include_metadata=include_metadata,
                                                     include_vectors=include_vectors, params=params,
                                                     sparse_vector=sparse_vector))

    def query_text(self, collection: str, texts, k: int = 10, *, filter: Mapping | None = None,
                   include_metadata: bool = False, include_vectors: bool = False,
                   params: Mapping[str, int] | None = None, mode: str = "dense", fusion=None) -> SearchResult:
        """Embed ``texts`` (a str or a list) with the server's encoder, in the Aggregator, and search;
        ``mode="keyword"`` searches one text with BM25, ``"hybrid"`` both, fused by ``fusion``."""
        return _result(self._aggregator.query_text.remote(collection, texts, k, filter=filter,
                                                          include_metadata=include_metadata,
                                                          include_vectors=include_vectors, params=params,
                                                          mode=mode, fusion=fusion))

    def encode(self, texts) -> np.ndarray:
        """``texts`` embedded with the server's encoder: an (n, dim) float32 array."""
        return _result(self._aggregator.encode.remote(texts))

    def encoder_lineage(self) -> dict | None:
        """The lineage (model, version, dim) to record in a collection made of :meth:`encode`'s vectors."""
        return _result(self._aggregator.encoder_lineage.remote())

    def fetch(self, collection: str, ids) -> FetchResult:
        return _result(self._aggregator.fetch.remote(collection, _host(ids)))

    # -- writes ------------------------------------------------------------------
    def upsert(self, collection: str, ids, vectors, metadata=None, *, sparse_values=None) -> WriteResult:
        """Acknowledged (fsynced, visible to every later query) when it returns. ``sparse_values``: one
        sparse vector (or None) per record, as for :meth:`gpusearch.Collection.upsert`."""
        r = _result(self._writer.handle_call.remote("upsert", collection, _host(ids),
                                                    None if vectors is None else _host(vectors), metadata,
                                                    sparse_values=sparse_values))
        return WriteResult(r["count"], r["sequence"])

    def delete(self, collection: str, ids=None, *, filter: Mapping | None = None,
               delete_all: bool = False) -> WriteResult:
        r = _result(self._writer.handle_call.remote("delete", collection, _host(ids), filter, delete_all))
        return WriteResult(r["count"], r["sequence"])

    def create(self, collection: str, *, dim: int | None = None, metric: str | None = None,
               index: str | None = None, lineage: Mapping | None = None, index_options: Mapping | None = None,
               vector_type: str = "dense", bm25_field: str | None = None) -> dict:
        """Make a collection; ``index_options``, ``vector_type`` and ``bm25_field`` as for
        :meth:`gpusearch.Collection.create`."""
        return _result(self._writer.handle_call.remote("create", collection, dim, metric, index, lineage,
                                                       None if index_options is None else dict(index_options),
                                                       vector_type=vector_type, bm25_field=bm25_field))

    def drop(self, collection: str) -> None:
        _result(self._writer.handle_call.remote("drop", collection))

    def set_alias(self, alias: str, collection: str) -> None:
        """Point ``alias`` at ``collection`` atomically (queries in flight see the old or the new one)."""
        _result(self._writer.handle_call.remote("set_alias", alias, collection))

    def collections(self) -> dict:
        return _result(self._writer.handle_call.remote("list"))
