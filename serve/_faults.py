"""Fault-injection hooks for tests. Each does nothing unless a test sets its environment variable.

``GPUSEARCH_FAULT_HOLD_SHARD_START`` (a test hook, not a setting): the path of a file. While that
file exists, a shard replica that is starting (:class:`~gpusearch.serve.deployments.ShardServer`)
waits in its constructor, before it opens anything, and goes on once the file is removed. A test
that kills a shard's only replica creates the file first, so Serve's replacement cannot come up
until the test has seen the outage it is about to check (partial answers, writes still
acknowledged), instead of racing the restart. The variable reaches the replicas through the
environment of the process that starts the local Ray (Ray's workers inherit it). The wait is
bounded (:data:`MAX_HOLD_S`) so that a forgotten file delays a replica but never wedges it.
"""
from __future__ import annotations

import logging
import os
import time

__all__ = ["HOLD_SHARD_START", "HOLD_WRITE", "HOLD_JOIN_PART", "MAX_HOLD_S", "hold_while_file_exists"]

HOLD_SHARD_START = "GPUSEARCH_FAULT_HOLD_SHARD_START"
# The same for a write: the Writer's upsert waits (in its worker thread, before it touches the WAL)
# while the file exists, so a stop test can have writes under way for as long as it needs.
HOLD_WRITE = "GPUSEARCH_FAULT_HOLD_WRITE"
# And for a join: a join worker waits after each part it has written, so a stop test can signal a
# join that has finished some parts and cannot have finished them all.
HOLD_JOIN_PART = "GPUSEARCH_FAULT_HOLD_JOIN_PART"
MAX_HOLD_S = 600.0
POLL_S = 0.05

log = logging.getLogger("gpusearch.serve")


def hold_while_file_exists(variable: str = HOLD_SHARD_START, *, max_s: float = MAX_HOLD_S,
                           poll_s: float = POLL_S) -> float:
    """Block while the file named by the environment variable ``variable`` exists.

    Returns the seconds spent waiting: 0.0 at once when the variable is unset or empty or the
    file is absent. Gives up after ``max_s`` seconds, says so in the log, and returns.

    >>> hold_while_file_exists("GPUSEARCH_NO_SUCH_HOOK")
    0.0
    """
    path = os.environ.get(variable)
    if not path or not os.path.exists(path):
        return 0.0
    t0 = time.monotonic()
    log.warning("%s: holding while %s exists (pid %d)", variable, path, os.getpid())
    while os.path.exists(path):
        if time.monotonic() - t0 > max_s:
            log.warning("%s: %s still exists after %.0f s; going on", variable, path, max_s)
            break
        time.sleep(poll_s)
    waited = time.monotonic() - t0
    log.warning("%s: released after %.2f s (pid %d)", variable, waited, os.getpid())
    return waited
