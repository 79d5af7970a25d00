"""Logs an operator can read: one line per request, no traceback for a client's mistake, no noise at start.

Where the lines go. Each replica writes Serve's own log file (``<log_dir>/replica_<app>_<deployment>_<id>.log``,
by default the Ray session's ``logs/serve/``), in Serve's text format or, with ``log_format: json``,
one JSON object a line (Serve's own JSON formatter: timestamp, level, message, replica, request id).
:func:`replica_logging` sends this package's loggers (``gpusearch.*``) through the same handlers, so
the engine's warnings land in that file with the replica's name, at the configured level.

What is logged at INFO. The Aggregator writes one line per HTTP request (:func:`access_line`):
method, route, status, milliseconds and the collection (and one per Python handle read, method
``HANDLE`` and the call's name: ``HANDLE query 200 2.1ms collection=docs``), never a vector, text, id or metadata
value (the route is the path alone, never its query string). Serve's own access lines (one per
hop: proxy, Aggregator, every shard and the Writer) are turned off (``enable_access_log=False``).

Tracebacks. Serve logs every exception a replica's method raises as ``Request failed.`` with its
traceback. :class:`ClientErrorFilter` drops that record when the exception is the client's
mistake (a 4xx by :mod:`._errors`'s table: bad argument, not found, no permission, ...) and keeps
a traceback-free line for a retryable refusal (503 while the server stops); anything else (a
5xx, a bug) keeps its traceback.

>>> from gpusearch.errors import InvalidArgumentError, UnavailableError
>>> f = ClientErrorFilter()
>>> def record(exc):
...     return logging.LogRecord("ray.serve", logging.ERROR, __file__, 1, "Request failed.", None,
...                              (type(exc), exc, None))
>>> f.filter(record(InvalidArgumentError("k must be at least 1")))
False
>>> r = record(UnavailableError("the server is stopping"))
>>> f.filter(r), r.exc_info, r.getMessage()
(True, None, 'Request refused (503, UnavailableError): the server is stopping')
>>> r = record(RuntimeError("boom"))
>>> f.filter(r), r.exc_info[0].__name__
(True, 'RuntimeError')
"""
from __future__ import annotations

import contextvars
import json
import logging
from typing import Any

from gpusearch.errors import UnavailableError

from ._errors import _BY_CLASS, unwrap

__all__ = ["ClientErrorFilter", "StartNoiseFilter", "JsonLines", "access_line", "serve_logging_config",
           "replica_logging", "driver_logging", "COLLECTION"]

ACCESS = logging.getLogger("gpusearch.access")
SERVE_LOGGER = "ray.serve"

#: The collection the current request uses (set by the route once it has resolved it; read by the access line).
COLLECTION: contextvars.ContextVar[str | None] = contextvars.ContextVar("gpusearch_collection", default=None)

# The client's mistakes: the classes the HTTP error table answers with a 4xx.
_CLIENT = tuple(cls for cls, status in _BY_CLASS if status < 500)


class ClientErrorFilter(logging.Filter):
    """On Serve's logger: no record for a client's mistake, no traceback for a retryable refusal."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        e = unwrap(exc)
        if isinstance(e, _CLIENT):
            return False
        if isinstance(e, UnavailableError):
            record.msg, record.args = f"Request refused (503, {type(e).__name__}): {e}", None
            record.exc_info, record.exc_text = None, None
        return True


class StartNoiseFilter(logging.Filter):
    """Drop Serve's lines that mislead or say nothing to a user (driver and replicas).

    ``serve.run`` after ``serve.start`` logs that it connects to the running Serve and that "new
    http_options will not be applied", which reads as if ``--port`` were ignored (it was applied, by
    ``serve.start``); and each new handle logs the repr of its router's poll client.
    """

    NOISE = ("Connecting to existing Serve app", "Started <ray.serve._private.router")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(msg.startswith(n) for n in self.NOISE)


def serve_logging_config(cfg) -> Any:
    """Serve's ``LoggingConfig`` for the app and for the controller and proxy: level, format, folder,
    and Serve's per-hop access lines off (the Aggregator writes one line per request itself)."""
    from ray.serve.schema import LoggingConfig

    opts: dict[str, Any] = {"log_level": cfg.log_level, "encoding": "JSON" if cfg.log_format == "json" else "TEXT",
                            "enable_access_log": False}
    if cfg.log_dir:
        opts["logs_dir"] = cfg.log_dir
    return LoggingConfig(**opts)


def replica_logging(level: str = "INFO") -> None:
    """In a replica's constructor: ``gpusearch.*`` through Serve's handlers at ``level``, and
    :class:`ClientErrorFilter` and :class:`StartNoiseFilter` on Serve's logger (once)."""
    serve_log = logging.getLogger(SERVE_LOGGER)
    for kind in (ClientErrorFilter, StartNoiseFilter):
        if not any(isinstance(f, kind) for f in serve_log.filters):
            serve_log.addFilter(kind())
    ours = logging.getLogger("gpusearch")
    if serve_log.handlers:
        ours.handlers[:] = list(serve_log.handlers)
        ours.propagate = False
    ours.setLevel(level)


class JsonLines(logging.Formatter):
    """One JSON object a line: ``ts``, ``level``, ``logger``, ``message`` (and ``exc`` with a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def json_ray_driver_lines() -> None:
    """With ``log_format: json``, before ``ray.init(configure_logging=False)``: Ray's own driver lines
    ("Started a local Ray instance.") come out as JSON lines too. Ray then leaves the ``ray`` logger
    without handlers, so its records reach the root logger; one handler there, for ``ray`` records
    only, writes them with :class:`JsonLines` (installed once)."""
    import sys

    root = logging.getLogger()
    if any(getattr(h, "_gpusearch_ray_json", False) for h in root.handlers):
        return
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JsonLines())
    h.addFilter(logging.Filter("ray"))
    h._gpusearch_ray_json = True
    root.addHandler(h)
    ray_log = logging.getLogger("ray")
    ray_log.propagate = True  # Ray's import-time set-up turns it off, and ray.init then leaves no handler
    if ray_log.level == logging.NOTSET or ray_log.level > logging.INFO:
        ray_log.setLevel(logging.INFO)


def driver_logging(log_format: str, level: str = "INFO") -> None:
    """The ``gpusearch serve`` process's own lines (Ray's and Serve's loggers there) in ``log_format``.

    The replicas are configured through Serve (:func:`serve_logging_config`); this is the driver,
    whose output an operator sees first (``docker logs``, ``journalctl``)."""
    for name in ("ray", "ray.serve"):
        lg = logging.getLogger(name)
        if log_format == "json":
            for h in lg.handlers:
                h.setFormatter(JsonLines())
        if level != "INFO":
            lg.setLevel(level)


def access_line(method: str, path: str, status: int, seconds: float, collection: str | None = None) -> None:
    """The request's one INFO line: ``POST /query 200 3.1ms collection=docs``; with ``log_format: json``
    its facts are fields of their own too (``http_method``, ``path``, ``http_status``, ``latency_ms``,
    ``collection``), beside Serve's ``route`` and ``request_id``. The collection is ``collection`` or
    else the request's (:data:`COLLECTION`)."""
    if ACCESS.isEnabledFor(logging.INFO):
        col = collection if collection is not None else COLLECTION.get()
        ms = round(seconds * 1e3, 1)
        ACCESS.info("%s %s %d %.1fms%s", method, path, status, ms, f" collection={col}" if col else "",
                    extra={"http_method": method, "path": path, "http_status": status, "latency_ms": ms,
                           "collection": col})
