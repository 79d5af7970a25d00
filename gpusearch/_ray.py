"""How gpusearch starts a Ray of its own (``gpusearch serve``, a join, with no cluster given): on the
loopback address only.

Ray turns a node address of 127.0.0.1 into the machine's address (``resolve_ip_for_localhost``), and
its GCS, raylets, workers and agents then listen on every interface (measured with Ray 2.60 on Linux:
``::``, ``0.0.0.0`` and the machine's address), reachable from the network with no authentication
in a local cluster. Ray keeps everything on the loopback address where it does not support clusters
(macOS, Windows); ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` asks for that mode on Linux too, and a
local, single-machine Ray is all gpusearch starts itself. A real cluster is named by
``RAY_ADDRESS`` (``ray.init`` connects to it) and is left as its operator set it up.
"""
from __future__ import annotations

import os
import sys

__all__ = ["LOOPBACK", "SINGLE_MACHINE_VAR", "local_ray_kwargs"]

LOOPBACK = "127.0.0.1"
SINGLE_MACHINE_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def local_ray_kwargs() -> dict:
    """Call right before ``ray.init`` of a local cluster: extra arguments for it, and Ray's
    single-machine mode set for this process and the ones Ray starts (the environment they inherit;
    Ray's constant read at its import, when ray is imported already). A ``RAY_ADDRESS`` (a cluster
    to connect to) gets nothing; so does a ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` set by the user."""
    if os.environ.get("RAY_ADDRESS"):
        return {}
    if os.environ.setdefault(SINGLE_MACHINE_VAR, "0") != "0":
        return {}
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False
    return {"_node_ip_address": LOOPBACK}
