"""Stopping on SIGTERM/SIGINT: what ``gpusearch serve`` and ``gpusearch join`` share.

:func:`signals_ignored` wraps ``ray.init``: Ray starts GCS, raylet and its helpers in this
process's process group, so a terminal's Ctrl-C (SIGINT to the whole foreground group) would stop
them under the work still running, before this process could stop it in order. Processes
started while SIGINT and SIGTERM are ignored inherit that (GCS and raylet keep ignoring SIGINT;
they install their own SIGTERM handling), and leave the stopping to this process.

:func:`on_signals` installs the two-step handler: the first signal calls ``first(signum)`` (the
commands raise :class:`Stop` from it, so the main thread unwinds to its stop path), a second one
ends the process at once with status 128 + signum. Install it again after ``ray.init``: Ray's core
worker installs a SIGTERM handler of its own that prints a native stack dump.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

__all__ = ["Stop", "on_signals", "signals_ignored"]


class Stop(BaseException):
    """Raised in the main thread by the first SIGTERM/SIGINT (a BaseException: no ``except Exception`` eats it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _raise_stop(signum: int) -> None:
    raise Stop(signum)


def on_signals(first=_raise_stop, *, at_once: str = "stopping at once", say=None) -> None:
    """SIGTERM and SIGINT: the first calls ``first(signum)``; a second says so (``say``, the command's own
    output) and exits 128 + signum."""
    seen: list[int] = []

    def handler(signum, _frame):
        if seen:
            if say is not None:
                say(f"second {signal.Signals(signum).name}: {at_once}")
            os._exit(128 + signum)
        seen.append(signum)
        first(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


@contextlib.contextmanager
def signals_ignored():
    """SIGINT and SIGTERM ignored (in the main thread; elsewhere a no-op) while the body runs, then restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
