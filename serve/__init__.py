"""gpusearch on Ray Serve: sharded search behind a Pinecone-compatible HTTP API and Python handles.

Start it with ``gpusearch serve`` (local Ray, embedded default) or
``serve run gpusearch.serve.app:app_builder``; query it over HTTP, with the
``pinecone`` SDK, or from a Ray job with :func:`connect`. Needs the ``serve``
extra: ``pip install 'gpusearch[serve]'``.

The graph: Serve's HTTP proxy -> the **Aggregator** (the FastAPI ingress and the
target of Python handles: auth, limits, text embedding, the one validation of a
search, fan-out, merge) -> ``Shard0`` .. ``Shard<N-1>``; writes -> the **Writer**.

Modules: :mod:`.config` (settings), :mod:`.app` (building and starting),
:mod:`.deployments` (the deployments), :mod:`.http` (the routes), :mod:`.client`
(Python handles), :mod:`.batching` (the greedy batcher); private: ``_errors``
(exception class -> HTTP status), ``_auth`` (API keys and scopes), ``_limits``
(what HTTP checks itself), ``_metrics`` (Prometheus), ``_faults`` (test hooks).
"""
from __future__ import annotations

from .config import KeyGrant, ServeConfig

__all__ = ["ServeConfig", "KeyGrant", "Client", "connect", "build_app", "app_builder", "start", "load_demo"]


def __getattr__(name):
    # Ray is imported only when a Ray-facing name is used, so the config loads without it.
    if name in ("connect", "Client"):
        from . import client

        return getattr(client, name)
    if name in ("build_app", "app_builder", "start", "load_demo"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'gpusearch.serve' has no attribute {name!r}")
