"""Building and starting the application.

:func:`build_app` returns the Serve application (for ``serve run`` / ``serve deploy``
through ``gpusearch.serve.app:app_builder``); :func:`start` runs it on a local Ray
started in-process (the embedded default behind ``gpusearch serve``);
:func:`load_demo` fills the ``default`` collection with the demo corpus through it.

Deployment graph (shards are separate deployments, ``Shard0`` .. ``Shard<N-1>``, so
each shard number has its own replica set, placement and scaling)::

    HTTP -> Serve's proxy -> Aggregator (FastAPI ingress: limits, auth, text -> vector,
                                         one validation, fan-out, merge, rerank)
                               -> Shard0 .. Shard<N-1>   (reads, each with R replicas)
                               -> Writer                 (writes; one replica)
    Python handle (connect) -> Aggregator / Writer       (NumPy in, result objects out)

A query crosses two process hops (proxy -> Aggregator -> shards); text is embedded in
the Aggregator's own process, which takes a share of the GPUs when the encoder is on.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from typing import Any

from gpusearch._ray import local_ray_kwargs

from .config import ServeConfig, is_loopback

__all__ = ["build_app", "app_builder", "start", "stop", "load_demo", "serve_log_dir", "gpus_per_shard_replica"]

log = logging.getLogger("gpusearch.serve")

# Serve's controller learns that a replica's process died from the replica's next health check,
# so its default period (10 s) alone could cost a killed shard up to 10 s before a replacement
# even starts (measured: the new process appeared 11-12 s after kill -9). A shard's check is
# cheap (one stat of the data directory), so check every second. The timeout stays Serve's
# default (30 s): a replica slow to answer on a loaded machine is not killed for it.
SHARD_HEALTH_CHECK_PERIOD_S = 1.0


def gpus_per_shard_replica(cfg: ServeConfig, gpus_in_cluster: float) -> float:
    """GPUs each shard replica reserves: ``cfg.num_gpus_shard``, or the cluster's GPUs shared
    evenly among all shard replicas plus the Aggregator when it runs the encoder (at most one each)."""
    if cfg.num_gpus_shard is not None:
        return float(cfg.num_gpus_shard)
    if gpus_in_cluster <= 0:
        return 0.0
    users = cfg.shards * cfg.replicas + (1 if cfg.encoder_enabled else 0)
    return round(min(1.0, gpus_in_cluster / users), 4)


def _cluster_gpus() -> float:
    try:
        import ray

        if ray.is_initialized():
            return float(ray.cluster_resources().get("GPU", 0))
    except Exception:  # noqa: BLE001 - no cluster: count local GPUs
        pass
    try:
        import torch

        return float(torch.cuda.device_count())
    except Exception:  # noqa: BLE001
        return 0.0


def build_app(cfg: ServeConfig):
    """The deployment graph for ``cfg``: the Aggregator (HTTP ingress) over Shard<i> and the Writer."""
    from .deployments import Aggregator, ShardServer, Writer

    if not cfg.api_keys and not is_loopback(cfg.host):
        raise ValueError(f"no API key is configured, so the server only listens on loopback; got host {cfg.host!r}. "
                         f"Set GPUSEARCH_API_KEYS=key:rw (or api_keys in the config) to listen on {cfg.host}")
    d = cfg.to_dict()
    gpus = gpus_per_shard_replica(cfg, _cluster_gpus())
    shard_opts: dict[str, Any] = {"num_cpus": cfg.num_cpus_shard}
    if gpus:
        shard_opts["num_gpus"] = gpus
    if cfg.shard_resources:
        shard_opts["resources"] = dict(cfg.shard_resources)
    # The Writer on the node that holds data_dir when writer_resources pins it; with replication "shared" the
    # Aggregator too (it reads collection settings from data_dir). With replication "ray", shard replicas
    # and the Aggregator keep copies of what they need and run anywhere.
    near_data: dict[str, Any] = {"resources": dict(cfg.writer_resources)} if cfg.writer_resources else {}
    writer = Writer.options(ray_actor_options={"num_cpus": cfg.num_cpus_other, **near_data}).bind(d)
    shards = [
        ShardServer.options(name=f"Shard{i}", num_replicas=cfg.replicas, ray_actor_options=shard_opts,
                            max_ongoing_requests=256,
                            health_check_period_s=SHARD_HEALTH_CHECK_PERIOD_S).bind(
            d, i, *([writer] if cfg.replication == "ray" else []))
        for i in range(cfg.shards)
    ]
    # The encoder runs in the Aggregator's process: on the GPUs' share when there are GPUs.
    agg_opts: dict[str, Any] = {"num_cpus": cfg.num_cpus_other, **(near_data if cfg.replication == "shared" else {})}
    if gpus and cfg.encoder_enabled:
        agg_opts["num_gpus"] = gpus
    return Aggregator.options(ray_actor_options=agg_opts, max_ongoing_requests=256).bind(d, writer, *shards)


def app_builder(args: dict[str, Any]):
    """For ``serve run gpusearch.serve.app:app_builder config_file=...`` and ``serve deploy`` configs."""
    args = dict(args or {})
    path = args.pop("config_file", None)
    return build_app(ServeConfig.load(path, **args))


def start(cfg: ServeConfig, *, ray_temp_dir: str | None = None, num_cpus: int | None = None):
    """Start local Ray (dashboard off), Serve's HTTP proxy on ``cfg.host:cfg.port``, and the app.

    Refuses to listen beyond loopback with no API key configured. Returns the
    Aggregator's handle once every replica is up (each shard replica has replayed its WAL).
    """
    build_app(cfg)  # refuses a bad config before Ray starts
    import ray
    from ray import serve

    from gpusearch._signals import signals_ignored

    from ._logs import StartNoiseFilter, driver_logging, json_ray_driver_lines, serve_logging_config

    json_mode = cfg.log_format == "json"
    if json_mode:
        json_ray_driver_lines()  # ray.init's own lines ("Started a local Ray instance.") as JSON too
    if not ray.is_initialized():
        # Ray 2.60 turns token auth on by default; the in-process cluster is private to this machine.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # Ray's processes inherit ignored SIGINT/SIGTERM: a Ctrl-C to the terminal's process group
        # leaves them running for this process to drain and stop (gpusearch/_signals.py).
        with signals_ignored():
            ray.init(include_dashboard=False, num_cpus=num_cpus, log_to_driver=False, configure_logging=not json_mode,
                     _temp_dir=ray_temp_dir or tempfile.mkdtemp(prefix="gsray-"), **local_ray_kwargs())
    driver_logging(cfg.log_format, cfg.log_level)  # after ray.init, which sets Ray's handlers anew

    logging_config = serve_logging_config(cfg)
    serve_log = logging.getLogger("ray.serve")
    if not any(isinstance(f, StartNoiseFilter) for f in serve_log.filters):
        serve_log.addFilter(StartNoiseFilter())
    serve.start(http_options={"host": cfg.host, "port": cfg.port}, logging_config=logging_config)
    return serve.run(build_app(cfg), name=cfg.app_name, route_prefix="/", logging_config=logging_config)


def serve_log_dir(cfg: ServeConfig) -> str:
    """Where the replicas' logs are: ``cfg.log_dir``, or the local Ray session's ``logs/serve``."""
    if cfg.log_dir:
        return cfg.log_dir
    try:
        import ray

        return os.path.join(ray._private.worker._global_node.get_logs_dir_path(), "serve")
    except Exception:  # noqa: BLE001 - no local Ray node in this process
        return "(the Ray session's logs/serve)"


#: Seconds between the end of the drain and Ray's shutdown: the last answers are still on their way
#: from the Aggregator through Serve's proxy to their clients.
DRAIN_LINGER_S = 0.5


def _dead_ray_processes() -> list[str]:
    """The local Ray node's processes (GCS, raylet, ...) that have exited; [] when all run or no node is here."""
    try:
        import ray

        node = ray._private.worker._global_node
        return sorted({name for name, _ in node.dead_processes()}) if node is not None else []
    except Exception:  # noqa: BLE001 - a Ray without this private API: assume alive
        return []


def stop(cfg: ServeConfig, *, grace_s: float | None = None, say=log.info) -> dict:
    """The graceful half of stopping: refuse new requests (503; ``/healthz`` says draining), give
    those under way ``grace_s`` (``cfg.drain_grace_s``) to finish, close the Writer's collections
    (each checkpoints what its WAL holds), then shut Serve's app and the local Ray down.

    Every acknowledged write is in the WAL before its answer, so a stop cut short (a second signal,
    a kill) loses nothing either: the next start replays it. Returns what happened, for the log line.
    """
    import ray
    from ray import serve

    grace = cfg.drain_grace_s if grace_s is None else grace_s
    out: dict[str, Any] = {"drained": False, "unfinished_requests": 0, "checkpointed": False}
    t0 = time.monotonic()

    def drain():
        aggregator = serve.get_deployment_handle("Aggregator", app_name=cfg.app_name)
        writer = serve.get_deployment_handle("Writer", app_name=cfg.app_name)
        # A Python handle's writes get 503 from now on; sent beside the Aggregator's drain, not before it,
        # since the call may queue behind the writes the Writer is running.
        writer_drained = writer.drain.remote()
        out["unfinished_requests"] = aggregator.drain.remote(grace).result(timeout_s=grace + 30)
        writer_drained.result(timeout_s=grace + 30)
        left = max(1.0, grace - (time.monotonic() - t0))
        out.update(writer.close.remote(left).result(timeout_s=left + 120))
        # The last answers are counted done when the Aggregator returns them; let them cross the proxy
        # to their clients before Ray goes.
        time.sleep(DRAIN_LINGER_S)
        out["drained"] = True

    # In a thread, watched: if Ray's own processes die meanwhile (a supervisor signalled all of them),
    # no drain is possible and a handle would wait for them for ever.
    failed: list[BaseException] = []
    worker = threading.Thread(target=lambda: _capture(drain, failed), daemon=True, name="gpusearch-drain")
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
        dead = _dead_ray_processes()
        if dead:
            say(f"Ray's own processes were stopped from outside ({', '.join(dead)}); stopping without "
                f"finishing the drain (acknowledged writes are in the WAL)")
            break
    if failed:
        say(f"could not drain the app ({type(failed[0]).__name__}); stopping Ray (acknowledged writes are in "
            f"the WAL)")
    ray.shutdown()
    out["seconds"] = round(time.monotonic() - t0, 2)
    return out


def _capture(fn, errors: list) -> None:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - reported by the caller
        errors.append(e)


DEMO_QUERY = "run an external program and capture its output"


def load_demo(cfg: ServeConfig, *, say=log.info):
    """Fill the ``default`` collection of the running app with standard-library docstrings embedded
    by the Aggregator's encoder (once), then run :data:`DEMO_QUERY` and return its top 3 (a
    ``SearchResult``). Progress goes to ``say`` (this module's logger unless the caller, the CLI,
    passes ``print``)."""
    from ray import serve

    from gpusearch.demo import stdlib_docs

    writer = serve.get_deployment_handle("Writer", app_name=cfg.app_name)
    aggregator = serve.get_deployment_handle("Aggregator", app_name=cfg.app_name)
    have = writer.list.remote().result()["collections"].get("default")
    if have is None or have["records"] == 0:
        docs = stdlib_docs()
        say(f"loading the demo corpus into 'default': {len(docs)} standard-library docstrings ...")
        t0 = time.perf_counter()
        lineage = aggregator.encoder_lineage.remote().result()  # waits for the model's background load
        waited = time.perf_counter() - t0
        if have is None:
            writer.create.remote("default", lineage["dim"], "cosine", None, lineage).result()
        parts = [docs[lo:lo + 256] for lo in range(0, len(docs), 256)]
        encoding = aggregator.encode.remote([d["text"] for d in parts[0]])
        embed_s = write_s = 0.0
        for i, part in enumerate(parts):
            t = time.perf_counter()
            vecs = encoding.result()
            embed_s += time.perf_counter() - t
            if i + 1 < len(parts):  # the next part embeds while this one is written
                encoding = aggregator.encode.remote([d["text"] for d in parts[i + 1]])
            t = time.perf_counter()
            writer.upsert.remote("default", [d["id"] for d in part], vecs,
                                 [{"module": d["module"], "kind": d["kind"]} for d in part]).result()
            write_s += time.perf_counter() - t
            say(f"  {min(len(docs), (i + 1) * 256)}/{len(docs)} docstrings")
        say(f"loaded in {time.perf_counter() - t0:.1f} s (waiting for the encoder's load {waited:.1f} s, "
            f"embedding {embed_s:.1f} s, writing {write_s:.1f} s)")
    return aggregator.query_text.remote("default", [DEMO_QUERY], 3).result()
