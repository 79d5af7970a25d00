"""The ``gpusearch`` command line: ``serve``, ``demo``, ``join``, ``stats``, ``compact``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

DEFAULT_DATA_DIR = "gpusearch-data"


def _demo(args) -> int:
    import gpusearch as gs

    from .demo import DEMO_QUERIES, stdlib_docs
    from .encoders import SentenceEncoder

    path = Path(args.data_dir) / "demo"
    t0 = time.perf_counter()
    enc = SentenceEncoder(device=args.device)
    print(f"encoder: {enc.name} ({enc.dim} dims) on {enc.device}, loaded in {time.perf_counter() - t0:.1f} s")
    if (path / "collection.json").exists():
        col = gs.Collection.open(path, device=args.device)
        print(f"opened {col}")
    else:
        docs = stdlib_docs()
        print(f"building the demo collection from {len(docs)} standard-library docstrings ...")
        col = gs.Collection.create(path, dim=enc.dim, metric="cosine", shards=args.shards, device=args.device,
                                   lineage=enc.lineage)
        t0 = time.perf_counter()
        vectors = enc.encode([d["text"] for d in docs], show_progress=sys.stderr.isatty())
        t1 = time.perf_counter()
        col.upsert([d["id"] for d in docs], vectors, metadata=[{"module": d["module"], "kind": d["kind"]} for d in docs])
        col.checkpoint()
        print(f"encoded {len(docs)} texts in {t1 - t0:.1f} s, stored in {time.perf_counter() - t1:.2f} s -> {path}")
    queries = [q for q, _ in DEMO_QUERIES]
    qv = enc.encode(queries)
    for (text, flt), v in zip(DEMO_QUERIES, qv):
        t0 = time.perf_counter()
        res = col.search(v, k=3, filter=flt, include_metadata=True)
        ms = (time.perf_counter() - t0) * 1e3
        where = f"  filter={json.dumps(flt)}" if flt else ""
        print(f"\nquery: {text!r}{where}  ({ms:.1f} ms)")
        for rid, score in zip(res.ids[0], res.scores[0]):
            print(f"  {score:.3f}  {rid}")
    col.close()
    return 0


def _stats(args) -> int:
    import gpusearch as gs

    col = gs.Collection.open(args.path, device=args.device)
    print(json.dumps(col.stats(), indent=2))
    col.close()
    return 0


def _compact(args) -> int:
    import gpusearch as gs

    col = gs.Collection.open(args.path, device=args.device)
    before = col.stats()
    col.compact()
    after = col.stats()
    rows = lambda st: sum(s["rows"] for s in st["shards"])  # noqa: E731
    print(f"compacted {args.path}: {rows(before)} rows -> {rows(after)} rows ({after['records']} records)")
    col.close()
    return 0


def _backup(args) -> int:
    import gpusearch as gs

    col = gs.Collection.open(args.path, device="cpu")
    try:
        info = col.backup(args.uri, note=args.note)
    finally:
        col.close()
    print(f"backup {info['id']} of {args.path}: {info['records']} records at sequence {info['sequence']}, "
          f"{_mb(info['bytes'])} ({_mb(info['uploaded_bytes'])} copied, the rest already at {args.uri}) "
          f"in {info['seconds']:.1f} s")
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _backups(args) -> int:
    from .backup import list_backups

    found = list_backups(args.uri)
    if not found:
        print(f"no complete backup at {args.uri}")
        return 0
    print(f"{'id':<44} {'created (UTC)':<21} {'sequence':>9} {'records':>10} {'size':>10}  source")
    for b in found:
        print(f"{b['id']:<44} {b['created_at']:<21} {b['sequence']:>9} {b['records']:>10} {_mb(b['bytes']):>10}  "
              f"{b['source']}")
    return 0


def _restore(args) -> int:
    from .backup import restore

    info = restore(args.uri, args.path, backup_id=args.backup)
    print(f"restored backup {info['id']} ({info['records']} records, sequence {info['sequence']}) to {args.path} "
          f"in {info['seconds']:.1f} s")
    return 0


def _serve(args) -> int:
    from gpusearch.serve.config import ServeConfig

    from ._signals import Stop, on_signals

    cfg = ServeConfig.load(args.config, host=args.host, port=args.port, data_dir=args.data_dir, shards=args.shards,
                           replicas=args.replicas, device=args.device, drain_grace_s=args.drain_grace,
                           log_level=args.log_level, log_format=args.log_format, log_dir=args.log_dir)
    say = _sayer(cfg.log_format)
    if not cfg.api_keys:
        say(f"no API key configured: serving without auth on loopback only ({cfg.host})")
    else:
        say(f"API keys configured: {len(cfg.api_keys)}")

    at_once = "stopping at once (acknowledged writes are in the WAL; the next start replays them)"
    on_signals(at_once=at_once, say=say)
    up = False
    try:
        from gpusearch.serve.app import DEMO_QUERY, load_demo, serve_log_dir, start

        t0 = time.perf_counter()
        say(f"starting Ray and the gpusearch app (data in {cfg.data_dir}) ...")
        start(cfg, num_cpus=args.num_cpus, ray_temp_dir=args.ray_temp_dir)
        on_signals(at_once=at_once, say=say)  # again: ray.init installed its own SIGTERM handler
        up = True
        say(f"app up in {time.perf_counter() - t0:.1f} s; request logs in {serve_log_dir(cfg)}")
        if not args.no_demo and cfg.encoder_enabled:
            # the stdlib docstrings into 'default', embedded by the Aggregator, then one query
            r = load_demo(cfg, say=say)
            say(f"query {DEMO_QUERY!r} ->")
            for rid, score in zip(r.ids[0], r.scores[0]):
                say(f"  {score:.3f}  {rid}")
        url = f"http://{cfg.host}:{cfg.port}"
        key = f" -H 'Api-Key: {next(iter(cfg.api_keys))[:2]}...'" if cfg.api_keys else ""
        say(f"\ngpusearch is serving at {url}   (OpenAPI docs: {url}/docs, metrics: {url}/metrics)")
        say("try:\n  curl -s " + url + "/query -H 'Content-Type: application/json'" + key +
            " -d '{\"text\": \"" + DEMO_QUERY + "\", \"topK\": 3, \"includeMetadata\": true}'")
        if args.exit_after_start:
            return 0
        while True:
            time.sleep(3600)
    except Stop as stop_signal:
        name = stop_signal.name
        if not up:
            say(f"{name} while starting: stopping")
            _stop_ray()
            return 0
        from gpusearch.serve.app import stop

        say(f"{name}: stopping; requests under way have {cfg.drain_grace_s:g} s to finish, new ones get 503 "
            f"(a second signal stops at once)")
        # Whatever happens in there (a Ray process gone, a handle that never answers), the stop ends.
        limit = cfg.drain_grace_s + 60
        watchdog = threading.Timer(limit, lambda: (say(f"the stop did not finish in {limit:g} s: stopping at once "
                                                       f"(acknowledged writes are in the WAL)"), os._exit(1)))
        watchdog.daemon = True
        watchdog.start()
        out = stop(cfg, say=say)
        watchdog.cancel()
        unfinished = out["unfinished_requests"] + out.get("unfinished_writes", 0)
        say(f"stopped in {out['seconds']:.1f} s: " + (
            "the drain did not finish" if not out["drained"] else
            "every request under way finished" if not unfinished else
            f"{unfinished} requests were still running at the end of the grace period") +
            ("; collections checkpointed" if out.get("checkpointed") else
             "; the WAL keeps every acknowledged write for the next start"))
        return 0


def _stop_ray() -> None:
    try:
        import ray

        ray.shutdown()
    except Exception:  # noqa: BLE001 - nothing started
        pass


def _sayer(log_format: str):
    """How the serve command prints its own lines: plain text, or one JSON object a line (the shape
    of :class:`gpusearch.serve._logs.JsonLines`)."""
    if log_format != "json":
        return lambda msg: print(msg, flush=True)
    import logging

    from gpusearch.serve._logs import JsonLines

    fmt = JsonLines()

    def say(msg: str) -> None:
        for line in msg.strip("\n").splitlines():
            print(fmt.format(logging.LogRecord("gpusearch.cli", logging.INFO, __file__, 0, line, None, None)),
                  flush=True)
    return say


def _join(args) -> int:
    """The join, stopped in order on SIGTERM/SIGINT: the parts already written stay (each is whole),
    Ray stops, and the same command run again resumes; exit status 128 + the signal (not done)."""
    from ._signals import Stop, on_signals, signals_ignored

    at_once = "stopping at once (finished parts stay; the same command resumes)"
    say = _sayer("text")
    on_signals(at_once=at_once, say=say)
    try:
        from .join._joins import _ensure_ray

        with signals_ignored():  # Ray's processes leave the stopping to this one
            _ensure_ray()
        on_signals(at_once=at_once, say=say)  # again: ray.init installed its own SIGTERM handler
        return _run_join(args)
    except Stop as stop_signal:
        say(f"{stop_signal.name}: join stopped; the parts finished so far stay in {args.output}, and the same "
            f"command resumes from them")
        _stop_ray()
        return 128 + stop_signal.signum


def _run_join(args) -> int:
    from . import join

    flt = None
    if args.filter:
        try:
            flt = json.loads(args.filter)
        except json.JSONDecodeError as e:
            raise ValueError(f"--filter must be a JSON object such as '{{\"lang\": \"en\"}}': {e}") from None
    common = dict(metric=args.metric, text=args.text, workers=args.workers, partitions=args.partitions,
                  device=args.device, batch_size=args.batch_size, overwrite=args.overwrite)
    if args.text is None:
        common["vector"] = None if args.sparse_only else args.vector
    if args.sparse_only and not args.sparse:
        raise ValueError("--sparse-only needs --sparse COLUMN")
    t0 = time.perf_counter()
    if args.sparse:
        common["sparse"] = args.sparse
    if args.kind == "dedup":
        if args.threshold is None:
            raise ValueError("gpusearch join dedup needs --threshold")
        res = join.dedup(args.left, threshold=args.threshold, id=args.id, output=args.output, **common)
        df = res.to_pandas()
        print(f"dedup: {len(df)} rows in {df['cluster'].nunique()} clusters, written to {args.output} "
              f"in {time.perf_counter() - t0:.1f} s")
        return 0
    if args.right is None:
        raise ValueError(f"gpusearch join {args.kind} needs LEFT and RIGHT")
    ids = dict(left_id=args.left_id or args.id, right_id=args.right_id or args.id)
    if args.kind == "knn":
        if args.k is None:
            raise ValueError("gpusearch join knn needs --k")
        res = join.knn_join(args.left, args.right, k=args.k, filter=flt, exclude_self=args.exclude_self,
                            output=args.output, **ids, **common)
    else:
        if args.threshold is None:
            raise ValueError("gpusearch join range needs --threshold")
        res = join.range_join(args.left, args.right, threshold=args.threshold, max_per_row=args.max_per_row,
                              filter=flt, exclude_self=args.exclude_self, output=args.output, **ids, **common)
    print(f"{args.kind} join: {res.count()} pairs written to {args.output} in {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(prog="gpusearch", description="GPU-accelerated similarity search")
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("serve", help="serve collections over HTTP on a local Ray (the embedded default)")
    v.add_argument("--host", default=None, help="default 127.0.0.1")
    v.add_argument("--port", type=int, default=None, help="default 8000")
    v.add_argument("--data-dir", default=None, help="default ./gpusearch-data")
    v.add_argument("--config", default=None, help="a YAML file of settings (see serve/configs/)")
    v.add_argument("--shards", type=int, default=None)
    v.add_argument("--replicas", type=int, default=None)
    v.add_argument("--device", default=None)
    v.add_argument("--num-cpus", type=int, default=None, help="CPUs the local Ray may use")
    v.add_argument("--no-demo", action="store_true", help="do not load the demo corpus into 'default'")
    v.add_argument("--drain-grace", type=float, default=None, metavar="SECONDS",
                   help="on SIGTERM/SIGINT, how long requests under way may take to finish (default 5)")
    v.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="the replicas' log level (default INFO: one line per request)")
    v.add_argument("--log-format", default=None, choices=["text", "json"],
                   help="text (default) or json: one JSON object a line, for log shippers")
    v.add_argument("--log-dir", default=None, help="where the replicas write their logs "
                                                   "(default: the local Ray session's logs/serve)")
    v.add_argument("--exit-after-start", action="store_true", help=argparse.SUPPRESS)
    # Where the local Ray keeps its sockets and logs (short paths only: Unix sockets live there);
    # the fault tests use it to find, and kill -9, every process one server started.
    v.add_argument("--ray-temp-dir", default=None, help=argparse.SUPPRESS)
    v.set_defaults(fn=_serve)
    d = sub.add_parser("demo", help="build a collection of standard-library docs with MiniLM and query it")
    d.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    d.add_argument("--device", default="auto")
    d.add_argument("--shards", type=int, default=2)
    d.set_defaults(fn=_demo)
    j = sub.add_parser("join", help="batch similarity join on Ray Data: knn, range or dedup; writes Parquet",
                       description="LEFT and RIGHT are Parquet files/directories or URIs; RIGHT may also be a "
                                   "collection directory. A rerun into the same --output resumes.")
    j.add_argument("kind", choices=["knn", "range", "dedup"])
    j.add_argument("left", help="Parquet path or URI (for dedup: the table)")
    j.add_argument("right", nargs="?", default=None, help="Parquet path or URI, or a collection directory")
    j.add_argument("--output", required=True, help="directory (or URI) for the result's Parquet files")
    j.add_argument("--k", type=int, default=None, help="knn: neighbours per left row")
    j.add_argument("--threshold", type=float, default=None,
                   help="range/dedup: similarity at least this (cosine, ip) or squared distance at most (l2)")
    j.add_argument("--max-per-row", type=int, default=None, help="range: keep each left row's best N pairs")
    j.add_argument("--metric", default="cosine", choices=["cosine", "ip", "l2"])
    j.add_argument("--id", default="id", help="id column (both sides)")
    j.add_argument("--left-id", default=None)
    j.add_argument("--right-id", default=None)
    j.add_argument("--vector", default="vector", help="vector column (both sides)")
    j.add_argument("--text", default=None, help="join on this text column, encoded with MiniLM")
    j.add_argument("--sparse", default=None, metavar="COLUMN",
                   help="a sparse-vector column ({indices, values}); scores add dense and sparse (--metric ip)")
    j.add_argument("--sparse-only", action="store_true", help="with --sparse: no dense vectors (sparse alone)")
    j.add_argument("--filter", default=None, help="JSON filter on the right side's columns")
    j.add_argument("--exclude-self", action="store_true", help="drop pairs whose ids are equal (self-joins)")
    j.add_argument("--workers", type=int, default=None)
    j.add_argument("--partitions", type=int, default=None)
    j.add_argument("--device", default="auto")
    j.add_argument("--batch-size", type=int, default=4096)
    j.add_argument("--overwrite", action="store_true", help="start --output afresh instead of resuming")
    j.set_defaults(fn=_join)
    s = sub.add_parser("stats", help="print a collection's stats as JSON")
    s.add_argument("path")
    s.add_argument("--device", default="auto")
    s.set_defaults(fn=_stats)
    c = sub.add_parser("compact", help="reclaim deleted rows and rebuild indexes")
    c.add_argument("path")
    c.add_argument("--device", default="auto")
    c.set_defaults(fn=_compact)
    b = sub.add_parser("backup", help="copy a collection to a path or URI (file://, s3://, gs://) while it "
                                      "takes writes; incremental when the URI holds an older backup")
    b.add_argument("path", help="the collection's directory (not one a running server holds: use its "
                                "POST /collections/{name}/backup)")
    b.add_argument("uri")
    b.add_argument("--note", default=None, help="a note kept in the backup's manifest")
    b.set_defaults(fn=_backup)

    bl = sub.add_parser("backups", help="list the complete backups at a path or URI")
    bl.add_argument("uri")
    bl.set_defaults(fn=_backups)

    r = sub.add_parser("restore", help="make a new collection from a backup (the newest unless --backup)")
    r.add_argument("uri")
    r.add_argument("path", help="where the new collection goes; must not exist")
    r.add_argument("--backup", default=None, metavar="ID", help="which backup (see `gpusearch backups`)")
    r.set_defaults(fn=_restore)

    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, TypeError, ImportError, LookupError, OSError) as e:
        print(f"gpusearch {args.cmd}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
