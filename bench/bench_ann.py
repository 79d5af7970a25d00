"""Recall@10 versus queries per second: gpusearch beside raw FAISS, ScaNN, hnswlib, usearch, Milvus Lite and Chroma.

    .venv/bin/python bench/bench_ann.py                          # WordNet glosses (MiniLM), every system
    .venv/bin/python bench/bench_ann.py --dataset synthetic:1000000 --systems faiss-flat,gpusearch-flat,...
    .venv/bin/python bench/bench_ann.py --dataset hdf5:glove-100-angular.hdf5   # an ann-benchmarks file
    .venv/bin/python bench/bench_ann.py --write-hdf5 wordnet-384-angular.hdf5  # export the data set, then stop
    .venv/bin/python bench/bench_ann.py --dataset synthetic:20000 --nq 100 --systems scann,faiss-ivfpq-refine,faiss-hnsw

Every HNSW is built alike: M=--hnsw-m, efConstruction=--hnsw-efc (default: gpusearch's own default,
``gpusearch.backends.DEFAULT_EF_CONSTRUCTION``). Without --hnsw-efc the gpusearch systems are
created with no index options at all (what a user writing ``index="HNSW32"`` gets); with it, with
``index_options={"efConstruction": ...}``. Each system's build parameters are recorded in the JSON
(``build_params``).

Every system runs in this one process, one after another, on the same vectors and queries
(each built, measured and closed before the next starts, so an idle server never steals
cycles from another system's timing). For each system: build (insert + index) time,
memory (this process's resident-set growth over the build, plus the resident set of any
server process the system started), and for each search setting of its sweep: recall@1,
@10 (k=10) and @100 (k=100) against exact search, QPS for single queries (one call per
query, one client, ``--single-queries`` of them) and for batches (all queries in one call
where the system has such a call; the served system sends them from concurrent HTTP
clients). QPS is the median of ``--repeats`` timed passes after a warm-up pass. A drift
check times FAISS's exact search at the start and at the end.

Writes bench/results/ann-<data set>-<cpuN or GPU name>.json, a recall@10-versus-QPS plot
(.png, log QPS axis, one line per system; single queries left, batches right) and a
Markdown table (.md) of each system's fastest setting at recall@10 >= --target.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
from machine import machine_info, result_path  # noqa: E402

from ann import data as D  # noqa: E402


def trim_heap() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so resident-set differences measure
    what a build keeps (glibc otherwise keeps an earlier system's freed memory, and reuses it)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def rss_bytes(pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def default_efc() -> int:
    from gpusearch.backends import DEFAULT_EF_CONSTRUCTION

    return DEFAULT_EF_CONSTRUCTION


SYSTEMS = ("gpusearch-flat", "gpusearch-ivf", "gpusearch-hnsw", "gpusearch-ivfpq-refine", "gpusearch-served-hnsw",
           "faiss-flat", "faiss-ivf", "faiss-hnsw", "faiss-ivfpq-refine", "scann", "hnswlib", "usearch",
           "milvus-lite", "chroma")


def make_system(key: str, n: int, dim: int, m: int, efc: int | None, *, ivfpq_nlist: int | None = None,
                scann_leaves: int | None = None):
    """The system called ``key`` on the command line. Every HNSW gets the same graph: ``m`` links per node
    and ``efc`` candidates while building (None: gpusearch's default, and the gpusearch systems then get
    no index options, as a user who sets none); every IVF the same number of lists; the IVF over fast-scan
    PQ the same factory string in FAISS and in gpusearch."""
    from ann import ours, systems as S

    if key not in SYSTEMS:
        raise SystemExit(f"unknown system {key!r}; expected one of {', '.join(SYSTEMS)}")
    gs_options = None if efc is None else {"efConstruction": efc}
    efc = default_efc() if efc is None else efc
    nlist = ours.ivf_nlist(n)
    pq_spec = S.FaissIVFPQRefine.factory(n, dim, ivfpq_nlist)
    table = {
        "gpusearch-flat": lambda: ours.GpusearchLocal("Flat"),
        "gpusearch-ivf": lambda: ours.GpusearchLocal(f"IVF{nlist},Flat"),
        "gpusearch-hnsw": lambda: ours.GpusearchLocal(f"HNSW{m}", index_options=gs_options),
        "gpusearch-ivfpq-refine": lambda: ours.GpusearchLocal(pq_spec),
        "gpusearch-served-hnsw": lambda: ours.GpusearchServed(f"HNSW{m}", ef_construction=efc),
        "faiss-flat": lambda: S.FaissFlat(),
        "faiss-ivf": lambda: S.FaissIVF(nlist=nlist),
        "faiss-hnsw": lambda: S.FaissHNSW(M=m, efConstruction=efc),
        "faiss-ivfpq-refine": lambda: S.FaissIVFPQRefine(nlist=ivfpq_nlist),
        "scann": lambda: S.ScaNN(num_leaves=scann_leaves),
        "hnswlib": lambda: S.Hnswlib(M=m, ef_construction=efc),
        "usearch": lambda: S.USearch(connectivity=m, expansion_add=efc),
        "milvus-lite": lambda: S.MilvusLite(index_type="HNSW", M=m, efConstruction=efc),
        "chroma": lambda: S.Chroma(M=m, construction_ef=efc),
    }
    return table[key]()


ALL = ("faiss-flat,gpusearch-flat,faiss-ivf,gpusearch-ivf,faiss-hnsw,gpusearch-hnsw,scann,faiss-ivfpq-refine,"
       "gpusearch-ivfpq-refine,hnswlib,usearch,chroma,milvus-lite,gpusearch-served-hnsw")


def timed(fn, repeats: int, warm: bool = True) -> tuple[float, list[float]]:
    """Median seconds of ``repeats`` calls of fn (after one warm-up call), and all of them."""
    if warm:
        fn()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs), runs


def measure_system(sys_, ds, gt, args) -> dict:
    k, nq = args.k, len(ds.test)
    single_q = ds.test[: args.single_queries]
    rec: dict = {"name": sys_.name, "index": sys_.index, "points": []}
    trim_heap()
    rss0 = rss_bytes()
    t = time.perf_counter()
    sys_.build(ds.train)
    rec["build_s"] = time.perf_counter() - t
    rec["index"] = sys_.index  # some systems size their index at build time
    rec["build_params"] = getattr(sys_, "build_params", None)
    trim_heap()
    rec["memory_mb_in_process"] = (rss_bytes() - rss0) / 2**20
    pids = sys_.server_pids() if hasattr(sys_, "server_pids") else []
    rec["memory_mb_servers"] = sum(rss_bytes(p) for p in pids) / 2**20
    rec["server_processes"] = len(pids)
    for extra in ("start_s", "client_encode_s", "batch_label"):
        if hasattr(sys_, extra):
            rec[extra] = getattr(sys_, extra)
    print(f"[{sys_.name}] {sys_.index}: built in {rec['build_s']:.1f} s, "
          f"+{rec['memory_mb_in_process']:.0f} MiB here, {rec['memory_mb_servers']:.0f} MiB in "
          f"{len(pids)} server processes", flush=True)
    t_sys = time.perf_counter()
    for params in sys_.sweep():
        sys_.set_params(params)
        got10 = sys_.search_batch(ds.test, k)
        got100 = sys_.search_batch(ds.test, 100)
        # Single queries: as many of the queries as one untimed pass gets through in --single-budget-s
        # (at least 20), then --repeats timed passes over those.
        t0, m = time.perf_counter(), 0
        while m < len(single_q) and (m < 20 or time.perf_counter() - t0 < args.single_budget_s):
            sys_.search_one(single_q[m], k)
            m += 1
        single_ids = []
        def singles():
            single_ids.clear()
            for v in single_q[:m]:
                single_ids.append(sys_.search_one(v, k))
        s_single, runs_single = timed(singles, args.repeats, warm=False)
        s_batch, runs_batch = timed(lambda: sys_.search_batch(ds.test, k), args.repeats)
        single = np.stack([np.pad(r[:k], (0, k - len(r[:k])), constant_values=-1) for r in single_ids])
        p = {"params": params,
             "recall1": D.recall(got10, gt, 1), "recall10": D.recall(got10, gt, 10), "recall100": D.recall(got100, gt, 100),
             "recall10_single": D.recall(single, gt[: len(single)], 10),
             "single_queries_timed": m, "qps_single": m / s_single, "qps_single_runs": [m / r for r in runs_single],
             "qps_batch": nq / s_batch, "qps_batch_runs": [nq / r for r in runs_batch],
             "latency_ms_single_mean": 1e3 * s_single / m}
        if len(ds.paraphrase):
            para = sys_.search_batch(ds.paraphrase, k)
            p["paraphrase_recall10"] = D.recall(para, ds.paraphrase_gt, 10)
            p["paraphrase_source_in_top10"] = float(np.mean([src in row for src, row in
                                                             zip(ds.paraphrase_source_rows, para)]))
        rec["points"].append(p)
        print(f"[{sys_.name}] {json.dumps(params):20s} recall@1 {p['recall1']:.3f} @10 {p['recall10']:.3f} "
              f"@100 {p['recall100']:.3f}  single {p['qps_single']:8.0f} qps  batch {p['qps_batch']:9.0f} qps",
              flush=True)
        if time.perf_counter() - t_sys > args.max_system_s:
            rec["sweep_cut_short"] = f"stopped after {args.max_system_s:.0f} s of searching"
            print(f"[{sys_.name}] sweep cut short: over {args.max_system_s:.0f} s", flush=True)
            break
        if p["recall10"] >= 0.999 and params != sys_.sweep()[-1]:
            rec["sweep_stopped_at_recall"] = p["recall10"]  # higher settings cost more for nothing
            break
    return rec


def best_at(rec: dict, target: float, key: str) -> dict | None:
    ok = [p for p in rec["points"] if p["recall10"] >= target]
    return max(ok, key=lambda p: p[key]) if ok else None


def table(res: dict, target: float) -> str:
    lines = [f"# {res['dataset']['name']}: fastest setting at recall@10 >= {target}", "",
             f"{res['dataset']['n']:,} vectors x {res['dataset']['dim']}, {res['dataset']['nq']:,} queries, k=10, "
             f"machine: {res['machine']['cpu']} ({res['machine']['cores']} cores"
             f"{', ' + res['machine']['gpu'] if res['machine']['gpu'] else ''}), {res['date']}", "",
             "| system | index | build s | memory MiB | single: setting | recall@10 | QPS | batch: setting | recall@10 | QPS |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["systems"]:
        if "error" in r:
            lines.append(f"| {r['name']} | {r.get('index', '')} | failed: {r['error'][:80]} | | | | | | | |")
            continue
        mem = r["memory_mb_in_process"] + r["memory_mb_servers"]
        s, b = best_at(r, target, "qps_single"), best_at(r, target, "qps_batch")
        fmt = lambda p, key: (f"{json.dumps(p['params'])} | {p['recall10']:.3f} | {p[key]:,.0f}" if p
                              else f"not reached (best {max(q['recall10'] for q in r['points']):.3f}) | | ")
        # A negative growth means the build freed memory held from before (it cannot be read as a size).
        mem_s = f"{mem:,.0f}" if mem > 0 else f"n/a ({mem:,.0f})"
        lines.append(f"| {r['name']} | {r['index']} | {r['build_s']:.1f} | {mem_s} | "
                     f"{fmt(s, 'qps_single')} | {fmt(b, 'qps_batch')} |")
    return "\n".join(lines) + "\n"


def pareto(points: list[dict], key: str) -> list[dict]:
    """The settings no other setting of the system beats on both recall@10 and ``key`` (QPS), by
    recall: the line drawn for a system (a sweep over two parameters, or timing noise, leaves
    some settings below it; they are drawn as faint dots)."""
    front, best = [], -1.0
    for p in sorted(points, key=lambda p: (-p["recall10"], -p[key])):
        if p[key] > best:
            front.append(p)
            best = p[key]
    return front[::-1]


def plot(res: dict, path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 7.5), sharey=False)
    markers = "os^vD<>pP*hXd"
    colours = plt.get_cmap("tab20").colors
    for ax, key, title in ((axes[0], "qps_single", "single queries (one per call)"),
                           (axes[1], "qps_batch", "batches (all queries per call; served: 1,000 per HTTP request)")):
        for i, r in enumerate(s for s in res["systems"] if "error" not in s):
            colour = colours[(2 * i) % 20 + (2 * i) // 20]
            front = pareto(r["points"], key)
            ax.plot([p["recall10"] for p in front], [p[key] for p in front], marker=markers[i % len(markers)],
                    color=colour,
                    label=f"{r['name']} ({r['index']})", linewidth=1.5 if r["name"].startswith("gpusearch") else 1,
                    linestyle="-" if r["name"].startswith("gpusearch") else "--")
            rest = [p for p in r["points"] if not any(p is f for f in front)]
            if rest:  # settings beaten on both recall and speed by another of the same system
                ax.plot([p["recall10"] for p in rest], [p[key] for p in rest], marker=markers[i % len(markers)],
                        color=colour, linestyle="none", markersize=3, alpha=0.35)
        ax.axvline(target, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlim(0.85, 1.002)  # the useful end of the curves; the JSON holds every point
        ax.set_yscale("log")
        ax.set_xlabel("recall@10")
        ax.set_ylabel("queries per second (log)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=2, frameon=False)
    m = res["machine"]
    fig.suptitle(f"{res['dataset']['name']}: {res['dataset']['n']:,} x {res['dataset']['dim']}, "
                 f"{res['dataset']['nq']:,} queries, k=10 -- {m['gpu'] or m['cpu']} ({m['cores']} cores), {res['date']}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    fig.savefig(path, dpi=110, bbox_inches="tight")  # long labels must not run off the edge
    plt.close(fig)


def merge(paths: list[str], target: float) -> None:
    """Systems re-measured in a later run (e.g. after a fix) replace their entries in the first result;
    each merged file's date and drift check are kept under ``merged``."""
    first = Path(paths[0])
    res = json.loads(first.read_text())
    for p in paths[1:]:
        other = json.loads(Path(p).read_text())
        if other["dataset"] != res["dataset"]:
            raise SystemExit(f"{p} measured {other['dataset']}, not {res['dataset']}")
        keys = {s["key"] for s in other["systems"]}
        res["systems"] = [s for s in res["systems"] if s["key"] not in keys] + other["systems"]
        res.setdefault("merged", []).append({"file": Path(p).name, "date": other["date"], "systems": sorted(keys),
                                             "drift_check_faiss_flat_batch_s": other.get("drift_check_faiss_flat_batch_s")})
    first.write_text(json.dumps(res, indent=1))
    first.with_suffix(".md").write_text(table(res, target))
    plot(res, first.with_suffix(".png"), target)
    print(table(res, target))


def load(spec: str, args) -> D.Dataset:
    if spec == "wordnet":
        return D.wordnet_dataset(progress=True)
    if spec.startswith("synthetic:"):
        n = int(float(spec.split(":", 1)[1]))
        return D.synthetic_dataset(n, dim=args.dim, nq=args.nq)
    if spec.startswith("hdf5:"):
        ds, _, _ = D.read_hdf5(spec.split(":", 1)[1])
        return ds
    raise SystemExit(f"--dataset must be wordnet, synthetic:N or hdf5:PATH, got {spec!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="wordnet", help="wordnet | synthetic:N | hdf5:PATH (default wordnet)")
    ap.add_argument("--systems", default=ALL, help=f"comma-separated (default: {ALL})")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--single-queries", type=int, default=1000, help="at most this many queries timed one call "
                    "each (default 1000)")
    ap.add_argument("--dim", type=int, default=384, help="synthetic data only")
    ap.add_argument("--nq", type=int, default=1000, help="synthetic data only")
    ap.add_argument("--hnsw-m", type=int, default=32, help="links per node of every HNSW graph (default 32)")
    ap.add_argument("--hnsw-efc", type=int, default=None, help="efConstruction of every HNSW graph (default: "
                    "gpusearch's default, gpusearch.backends.DEFAULT_EF_CONSTRUCTION, and the gpusearch systems "
                    "are then built with no index options)")
    ap.add_argument("--ivfpq-nlist", type=int, default=None, help="lists of the IVF over fast-scan PQ "
                    "(faiss-ivfpq-refine, gpusearch-ivfpq-refine; default about sqrt(n))")
    ap.add_argument("--scann-leaves", type=int, default=None, help="ScaNN's num_leaves (default about sqrt(n))")
    ap.add_argument("--single-budget-s", type=float, default=5.0, help="time single queries on as many of the "
                    "queries as one pass gets through in about this long (at least 20)")
    ap.add_argument("--target", type=float, default=0.95, help="recall@10 the table compares at")
    ap.add_argument("--max-system-s", type=float, default=600, help="stop a system's sweep after this long")
    ap.add_argument("--write-hdf5", default=None, help="write the data set and its ground truth in the "
                    "ann-benchmarks layout to this path, then stop")
    ap.add_argument("--out", default=None, help="result path stem (default bench/results/ann-<data>-<machine>)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="instead of measuring: put the systems of the later result files (same data set) into "
                         "the first, replacing systems measured again, and rewrite its .md and .png")
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, args.target)
        return
    keys = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [k for k in keys if k not in SYSTEMS]
    if unknown:  # before loading anything
        raise SystemExit(f"unknown system {unknown[0]!r}; expected one of {', '.join(SYSTEMS)}")

    t = time.perf_counter()
    ds = load(args.dataset, args)
    print(f"data set {ds.name}: {len(ds.train):,} x {ds.train.shape[1]}, {len(ds.test):,} queries "
          f"({time.perf_counter() - t:.1f} s)", flush=True)
    t = time.perf_counter()
    gt, gt_sims = D.ground_truth(ds.train, ds.test, k=100)
    ds.paraphrase_gt = D.ground_truth(ds.train, ds.paraphrase, k=10)[0] if len(ds.paraphrase) else None
    print(f"exact ground truth (k=100) in {time.perf_counter() - t:.1f} s", flush=True)
    if args.write_hdf5:
        D.write_hdf5(args.write_hdf5, ds, gt, 1.0 - gt_sims)
        print(f"wrote {args.write_hdf5}")
        return

    import faiss

    ref = faiss.IndexFlatIP(ds.train.shape[1])
    ref.add(ds.train)
    drift_start, _ = timed(lambda: ref.search(ds.test, args.k), 3)
    del ref
    res = {"benchmark": "ann", "dataset": {"name": ds.name, "n": len(ds.train), "dim": int(ds.train.shape[1]),
                                           "nq": len(ds.test), "paraphrases": len(ds.paraphrase), "metric": "cosine"},
           "k": args.k, "repeats": args.repeats, "single_queries": min(args.single_queries, len(ds.test)),
           "target_recall10": args.target, "machine": machine_info(), "date": time.strftime("%Y-%m-%d"),
           "build": {"hnsw_m": args.hnsw_m, "hnsw_efc": args.hnsw_efc or default_efc(),
                     "hnsw_efc_given": args.hnsw_efc is not None, "ivf_nlist": None,
                     "ivfpq_nlist": args.ivfpq_nlist, "scann_leaves": args.scann_leaves},
           "systems": []}
    from ann import ours
    res["build"]["ivf_nlist"] = ours.ivf_nlist(len(ds.train))
    for key in keys:
        sys_ = None
        try:
            sys_ = make_system(key, len(ds.train), ds.train.shape[1], args.hnsw_m, args.hnsw_efc,
                               ivfpq_nlist=args.ivfpq_nlist, scann_leaves=args.scann_leaves)
            rec = measure_system(sys_, ds, gt, args)
        except Exception as e:  # noqa: BLE001 - one system failing must not lose the others' results
            traceback.print_exc()
            rec = {"name": getattr(sys_, "name", key), "index": getattr(sys_, "index", ""), "error": repr(e)}
        finally:
            if sys_ is not None:
                sys_.close()
            del sys_
            gc.collect()
        rec["key"] = key
        res["systems"].append(rec)
    ref = faiss.IndexFlatIP(ds.train.shape[1])
    ref.add(ds.train)
    drift_end, _ = timed(lambda: ref.search(ds.test, args.k), 3)
    res["drift_check_faiss_flat_batch_s"] = {"start": drift_start, "end": drift_end, "ratio": drift_end / drift_start}
    stem = Path(args.out) if args.out else result_path(f"ann-{ds.name}", res["machine"]).with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1))
    stem.with_suffix(".md").write_text(table(res, args.target))
    try:
        plot(res, stem.with_suffix(".png"), args.target)
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[bench]')")
    print(table(res, args.target))
    print(f"drift check (FAISS exact, batch): start {drift_start:.3f} s, end {drift_end:.3f} s")
    print(f"wrote {stem}.json/.md/.png")


if __name__ == "__main__":
    main()
