"""The ``gpusearch`` command line: ``demo``, ``stats``, ``compact``."""
from __future__ import annotations

import argparse
import json
import os
import sys
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


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(prog="gpusearch", description="GPU-accelerated similarity search")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="build a collection of standard-library docs with MiniLM and query it")
    d.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    d.add_argument("--device", default="auto")
    d.add_argument("--shards", type=int, default=2)
    d.set_defaults(fn=_demo)
    s = sub.add_parser("stats", help="print a collection's stats as JSON")
    s.add_argument("path")
    s.add_argument("--device", default="auto")
    s.set_defaults(fn=_stats)
    c = sub.add_parser("compact", help="reclaim deleted rows and rebuild indexes")
    c.add_argument("path")
    c.add_argument("--device", default="auto")
    c.set_defaults(fn=_compact)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, TypeError, ImportError) as e:
        print(f"gpusearch {args.cmd}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
