"""gpusearch on Ray Serve: sharded search behind a Pinecone-compatible HTTP API and Python handles.

Start it with ``gpusearch serve`` (local Ray, embedded default) or
``serve run gpusearch.serve.app:app_builder``; query it over HTTP, with the
``pinecone`` SDK, or from a Ray job with :func:`connect`. Needs the ``serve``
extra: ``pip install 'gpusearch[serve]'``.
"""
from __future__ import annotations

from .config import ServeConfig

__all__ = ["ServeConfig", "connect", "build_app", "start"]


def __getattr__(name):
    # Ray is imported only when a Ray-facing name is used, so the config loads without it.
    if name == "connect":
        from .client import connect

        return connect
    if name in ("build_app", "start"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'gpusearch.serve' has no attribute {name!r}")
