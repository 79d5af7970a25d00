"""What replicas that share no file system with the Writer cost: replication "ray" against "shared".

    RAY_AUTH_MODE=disabled .venv/bin/python bench/bench_replication.py [--n 20000] [--dim 384] [--repeats 2]

One local Ray (a single node: what is measured is the log shipping and the per-query sync, not a
network), the app with 2 shards x 1 replica, Flat, served over HTTP, for each mode in turn (alternating,
``--repeats`` rounds, medians):

- ingest: ``--n`` x ``--dim`` records upserted in batches of 1,000 (records/s);
- query: 200 one-at-a-time top-10 queries after the ingest (p50 ms);
- read-your-writes: 100 times an upsert of one record, then a query that must see it (p50 of the query, ms);
- catch-up: an upsert of 10,000 records in 10 batches, then the time of the first query, which must see
  them (with "ray", each shard replica copies its part of the log, about 7.7 MB at 384 dims).

With ``--rehydrate-n N`` (e.g. 1000000), also: a collection of N x ``--dim`` in one shard, served
by one replica; its replica is killed and the time until Serve's replacement answers is measured
(``replaced_replica_s``; not for "shared"): with "ray" the new replica copies the whole shard from the
Writer through Ray (about 1.5 GB at 1M x 384) and loads it, with "storage" (``--rehydrate-modes``) it
copies the shard's files from the newest snapshot at the storage URI and only the rest from the Writer
(goal: at most 10 s). Then a second replica is added (``serve.run`` with 2 replicas, which returns once
it is ready; this redeploys every deployment, the Writer included, since their settings changed).

In "shared" the replicas read the Writer's files; in "ray" each keeps its own copy, synced from the
Writer through a Ray call before every search (gpusearch.mirror). Writes bench/results/replication-<cpuN>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info, result_path  # noqa: E402
from server_proc import free_port  # noqa: E402


def measure(http, rng, n: int, dim: int) -> dict:
    ns = "bench"
    t = time.perf_counter()
    for lo in range(0, n, 1000):
        X = rng.standard_normal((min(1000, n - lo), dim)).astype(np.float32)
        body = {"namespace": ns, "vectors": [{"id": f"r{lo + j}", "values": X[j].tolist()} for j in range(len(X))]}
        r = http.post("/vectors/upsert", json=body)
        assert r.status_code == 200, r.text
    ingest_s = time.perf_counter() - t
    lat = []
    for q in rng.standard_normal((200, dim)).astype(np.float32):
        t = time.perf_counter()
        r = http.post("/query", json={"namespace": ns, "vector": q.tolist(), "topK": 10})
        lat.append(time.perf_counter() - t)
        assert r.status_code == 200 and not r.json()["partial"], r.text
    ryw = []
    for i in range(100):
        v = rng.standard_normal(dim).astype(np.float32)
        r = http.post("/vectors/upsert", json={"namespace": ns, "vectors": [{"id": f"w{i}", "values": v.tolist()}]})
        assert r.status_code == 200, r.text
        t = time.perf_counter()
        r = http.post("/query", json={"namespace": ns, "vector": v.tolist(), "topK": 1})
        ryw.append(time.perf_counter() - t)
        assert r.json()["matches"][0]["id"] == f"w{i}", r.text
    last = None
    for b in range(10):
        X = rng.standard_normal((1000, dim)).astype(np.float32)
        body = {"namespace": ns, "vectors": [{"id": f"c{b}-{j}", "values": X[j].tolist()} for j in range(1000)]}
        assert http.post("/vectors/upsert", json=body).status_code == 200
        last = (f"c{b}-999", X[999])
    t = time.perf_counter()
    r = http.post("/query", json={"namespace": ns, "vector": last[1].tolist(), "topK": 1})
    catch_up = time.perf_counter() - t
    assert r.json()["matches"][0]["id"] == last[0], r.text
    ms = lambda xs: round(statistics.median(xs) * 1000, 2)  # noqa: E731
    return {"ingest_records_s": round(n / ingest_s, 1), "query_p50_ms": ms(lat),
            "query_p90_ms": round(float(np.percentile(lat, 90)) * 1000, 2), "ryw_query_p50_ms": ms(ryw),
            "catch_up_10k_ms": round(catch_up * 1000, 1)}


def build_catalog(data_dir: Path, n: int, dim: int) -> None:
    from gpusearch.catalog import Catalog

    if (data_dir / "collections" / "big" / "collection.json").exists():
        return
    cat = Catalog(data_dir, shards=1, metric="cosine", device="cpu", fsync=False)
    rng = np.random.default_rng(0)
    cat.create("big", dim=dim)
    for lo in range(0, n, 50_000):
        hi = min(lo + 50_000, n)
        cat.upsert("big", [f"v{i}" for i in range(lo, hi)], rng.standard_normal((hi - lo, dim), dtype=np.float32))
    cat.close()


def build_at_uri(uri: str, n: int, dim: int, work: Path) -> None:
    """The same collection written by a Writer whose log and snapshots live at ``uri`` (gpusearch.durable),
    checkpointed and snapshot there: what a served Writer with ``storage_uri`` rebuilds from."""
    import shutil

    from gpusearch.catalog import Catalog
    from gpusearch.durable import DurableStore, LocalLease

    tmp = work / "build-at-uri"
    store = DurableStore(uri, LocalLease(uri), shards=1, background_snapshots=False)
    store.take_over(tmp)
    cat = Catalog(tmp, shards=1, metric="cosine", device="cpu", fsync=False, durable=store)
    rng = np.random.default_rng(0)
    cat.create("big", dim=dim)
    for lo in range(0, n, 50_000):
        hi = min(lo + 50_000, n)
        cat.upsert("big", [f"v{i}" for i in range(lo, hi)], rng.standard_normal((hi - lo, dim), dtype=np.float32))
    cat.get("big").checkpoint()
    store.snapshot("big")
    cat.close()
    shutil.rmtree(tmp, ignore_errors=True)


def replace_replica(serve) -> dict:
    """Kill Shard0's only replica (its process, as a lost node would) and time until Serve's replacement
    answers: a fresh replica that makes its copy of the shard (from the Writer, or from the snapshot at the
    storage URI and the rest from the Writer) and loads it. The Writer is not touched."""
    import ray

    h = serve.get_deployment_handle("Shard0", app_name="gpusearch")
    old = h.where.remote().result(timeout_s=120)
    victim = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                  if "Shard0" in a["name"] and a["namespace"] == "serve")
    t = time.perf_counter()
    ray.kill(ray.get_actor(victim["name"], namespace="serve"), no_restart=True)
    while True:  # the handle holds the call until a live replica takes it
        now = h.where.remote().result(timeout_s=600)
        if now["pid"] != old["pid"]:
            break
        time.sleep(0.05)
    secs = time.perf_counter() - t
    return {"seconds": round(secs, 2), "seeded": now.get("seeded"), "load_s": now.get("load_s"),
            "seeded_bytes_used": now.get("seeded_bytes_used"), "bytes_from_writer": now.get("bytes_from_writer")}


def rehydrate(serve, build_app, ServeConfig, work: Path, port: int, n: int, dim: int, repeats: int,
              modes=("shared", "ray")) -> dict:
    import httpx

    data_dir = work / f"big-{n}x{dim}"
    t = time.perf_counter()
    if "storage" in modes:
        build_at_uri(str(work / "bucket"), n, dim, work)
    if {"shared", "ray"} & set(modes):
        build_catalog(data_dir, n, dim)
    print(f"built {n} x {dim} in {time.perf_counter() - t:.1f} s", flush=True)
    out: dict[str, list] = {m: [] for m in modes}
    for r in range(repeats):
        for mode in modes:
            kw = dict(data_dir=str(data_dir), host="127.0.0.1", port=port, shards=1, device="cpu", fsync=False,
                      encoder_enabled=False, replication=mode, replica_dir=str(work / f"rehydrate-{mode}-{r}"),
                      shard_timeout_s=60.0)
            if mode == "storage":  # replication "ray" with the Writer's log and snapshots at a storage URI
                kw.update(replication="ray", storage_uri=str(work / "bucket"), data_dir=str(work / f"writer-{r}"))
            t = time.perf_counter()
            serve.run(build_app(ServeConfig(replicas=1, **kw)), name="gpusearch", route_prefix="/")
            first = time.perf_counter() - t
            replaced = replace_replica(serve) if mode != "shared" else None
            t = time.perf_counter()
            serve.run(build_app(ServeConfig(replicas=2, **kw)), name="gpusearch", route_prefix="/")
            second = time.perf_counter() - t
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
                q = np.ones(dim, dtype=np.float32).tolist()
                assert all(not http.post("/query", json={"namespace": "big", "vector": q, "topK": 10}).json()["partial"]
                           for _ in range(4))
            run = {"app_start_s": round(first, 2), "added_replica_s": round(second, 2)}
            if replaced is not None:
                run["replaced_replica"] = replaced
            if mode != "shared":
                h = serve.get_deployment_handle("Shard0", app_name="gpusearch")
                seen = {}
                for _ in range(20):  # both replicas' own account of where their copy came from
                    w = h.where.remote().result(timeout_s=60)
                    seen[w["pid"]] = w
                    if len(seen) == 2:
                        break
                run["replicas"] = [{k: w.get(k) for k in ("seeded", "load_s", "seeded_bytes_used", "bytes_from_writer")}
                                   for w in seen.values()]
            serve.delete("gpusearch")
            out[mode].append(run)
            print(f"rehydrate round {r} {mode}: app up in {first:.1f} s, a second replica ready in {second:.1f} s",
                  flush=True)
    med = {m: {k: statistics.median(x[k] for x in rs) for k in ("app_start_s", "added_replica_s")}
           for m, rs in out.items()}
    for m, rs in out.items():
        if m != "shared":
            med[m]["replaced_replica_s"] = statistics.median(x["replaced_replica"]["seconds"] for x in rs)
    return {"n": n, "dim": dim, "median": med, "runs": out, "goal_s": 10.0,
            **{f"goal_met_{m}": med[m]["replaced_replica_s"] <= 10.0 for m in modes if m != "shared"}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rehydrate-n", type=int, default=0, help="rows of the rehydration run (0: skip it)")
    ap.add_argument("--rehydrate-modes", default="shared,ray",
                    help="comma-separated: shared, ray, storage (ray with storage_uri: the new replica copies "
                         "its shard from the snapshot at the URI and only the rest from the Writer)")
    ap.add_argument("--modes", default="shared,ray",
                    help="comma-separated: shared, ray, storage (ray with storage_uri: each write also stored "
                         "in the log at a local storage URI before it is acknowledged)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import httpx
    import ray
    from ray import serve

    from gpusearch.serve.app import build_app
    from gpusearch.serve.config import ServeConfig

    work = Path(tempfile.mkdtemp(prefix="gs-repl-"))
    from gpusearch._ray import local_ray_kwargs

    ray.init(include_dashboard=False, num_cpus=os.cpu_count(), log_to_driver=False, **local_ray_kwargs(),
             _temp_dir=tempfile.mkdtemp(prefix="gsray-", dir="/tmp"))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    modes = tuple(args.modes.split(","))
    runs: dict[str, list] = {m: [] for m in modes}
    rehydration = None
    try:
        if args.rehydrate_n:
            rehydration = rehydrate(serve, build_app, ServeConfig, work, port, args.rehydrate_n, args.dim,
                                    args.repeats, tuple(args.rehydrate_modes.split(",")))
        for r in range(args.repeats):
            for mode in modes:
                extra = {"replication": mode}
                if mode == "storage":  # replication "ray" and every write also in the log at a storage URI
                    extra = {"replication": "ray", "storage_uri": str(work / f"bucket-{r}")}
                cfg = ServeConfig(data_dir=str(work / f"{mode}-{r}"), host="127.0.0.1", port=port, shards=2,
                                  replicas=1, device="cpu", fsync=True, encoder_enabled=False,
                                  replica_dir=str(work / f"replicas-{mode}-{r}"), shard_timeout_s=30.0, **extra)
                serve.run(build_app(cfg), name="gpusearch", route_prefix="/")
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
                    res = measure(http, np.random.default_rng(r), args.n, args.dim)
                serve.delete("gpusearch")
                runs[mode].append(res)
                print(f"round {r} {mode}: {res}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    med = {m: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for m, rs in runs.items()}
    out = {"benchmark": "replication", "n": args.n, "dim": args.dim, "shards": 2, "replicas": 1,
           "machine": machine_info(), "date": time.strftime("%Y-%m-%d"), "loadavg_1min_after": os.getloadavg()[0],
           "command": "bench/bench_replication.py " + " ".join(sys.argv[1:]), "median": med, "runs": runs,
           "ray_over_shared": ({k: round(med["ray"][k] / med["shared"][k], 3) for k in med["ray"]}
                               if {"ray", "shared"} <= set(med) else None),
           "storage_over_ray": ({k: round(med["storage"][k] / med["ray"][k], 3) for k in med["storage"]}
                                if {"ray", "storage"} <= set(med) else None),
           "rehydration": rehydration}
    path = Path(args.out) if args.out else result_path("replication", out["machine"])
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({"median": med, "ray_over_shared": out["ray_over_shared"],
                      "storage_over_ray": out["storage_over_ray"]}))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
