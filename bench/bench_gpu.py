#!/usr/bin/env python3
"""GPU truth (issue 17): the device's ceilings, then every GPU path of gpusearch against them.

Sections, in order, each bounded by what is left of ``--budget-s`` (a case that would not fit is
recorded as skipped, and the run still writes its JSON and prints its table):

1. ceilings: device-to-device copy bandwidth (bytes read + written per second) and the GEMM rate in
   bf16, fp16, fp32 and tf32, measured here, now;
2. kernels: ``gpusearch.kernels.fused_search`` over N = 1M and (last of all) 10M rows, d = 128 and 384, fp32 and
   fp16, k = 10 and 100, nq = 1, 16 and 1024, against ``torch.matmul`` + ``torch.topk`` (column
   blocks when the score matrix would be large, then one more topk over the blocks' winners) and
   against the roofline: nq = 1 as a share of the copy bandwidth, nq = 1024 as a share of the GEMM rate;
3. topk: ``gpusearch.kernels.topk`` against ``torch.topk`` on 1M-wide rows, k = 10, 100 and 1024;
4. collection: ``Collection.search`` end to end (Flat, 1M x 384 on the device, fp32 and fp16; no
   filter, a filter keeping 10% of rows, and with 1% of rows deleted) against the bare kernel;
5. encoder: MiniLM on the device, batch 1 and 64: encoding alone against encoding + search of the
   1M-row collection with the encoder's tensor (it never leaves the device);
6. ivf: ``gpusearch.kernels.ivf_search`` (IVF-Flat in device memory, with a 10% filter and 1% deleted
   rows as a mask) against FAISS's CPU ``IndexIVFFlat`` with the same centroids, lists probed and
   selector, recall@10 of both against exact search.

Timing: CUDA events around each call after a warm-up (host clock on the CPU), the median of repeats.
Without a GPU (``--dry-run``, or no CUDA device), the same code runs on the CPU at tiny sizes, so the
command cannot rot between GPU runs; its numbers say nothing about a GPU.

Usage::

    python bench/bench_gpu.py [--out DIR] [--budget-s 330] [--dry-run]

Writes ``DIR/gpu-<GPU name>.json`` (``gpu-dry-run-cpu<N>.json`` without a GPU) and prints a table.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FULL = {
    "copy_bytes": 2 << 30, "gemm_n": 8192,
    "Ns": (1_000_000, 10_000_000), "ds": (128, 384), "dtypes": ("float32", "float16"),
    "ks": (10, 100), "nqs": (1, 16, 1024),
    "topk_width": 1_000_000, "topk_ks": (10, 100, 1024), "topk_nqs": (1, 16, 1024),
    "col_n": 1_000_000, "col_d": 384, "col_nqs": (1, 1024), "col_batch": 100_000,
    "enc_batches": (1, 64),
    "ivf_n": 1_000_000, "ivf_d": 128, "ivf_nlist": 1024, "ivf_nprobes": (8, 32), "ivf_nq": 1024,
    "ivf_train": 65536, "ivf_centres": 5000,
}
DRY = {
    "copy_bytes": 16 << 20, "gemm_n": 256,
    "Ns": (20_000,), "ds": (32,), "dtypes": ("float32", "float16"),
    "ks": (10,), "nqs": (1, 16, 64),
    "topk_width": 20_000, "topk_ks": (10, 100), "topk_nqs": (1, 16),
    "col_n": 4000, "col_d": 384, "col_nqs": (1, 16), "col_batch": 1000,
    "enc_batches": (1, 4),
    "ivf_n": 20_000, "ivf_d": 32, "ivf_nlist": 64, "ivf_nprobes": (4, 16), "ivf_nq": 64,
    "ivf_train": 5000, "ivf_centres": 200,
}

#: Issue 17's goals, checked in the same run.
GOALS = {
    "nq1_copy_share": 0.70,       # exact search, nq = 1: share of the measured copy bandwidth
    "nq1024_gemm_share": 0.50,    # exact search, nq = 1024: share of the measured GEMM rate
    "nq1024_vs_torch": 1.5,       # ... and speed over torch.matmul + torch.topk
    "topk_vs_torch": 1.5,         # topk alone over torch.topk, 1M-wide rows, k <= 1024
    "ivf_vs_cpu": 10.0,           # device IVF with deletes and filters over CPU IVF, same recall
    "text_vs_encoder": 1.2,       # encoder + search within this multiple of the encoder alone (batch 1)
}


class Bench:
    def __init__(self, *, cuda: bool, budget_s: float):
        import torch

        self.torch = torch
        self.cuda = cuda
        self.device = "cuda" if cuda else "cpu"
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget_s
        self.skipped: list[str] = []
        self.errors: list[dict] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def fits(self, what: str, need_s: float) -> bool:
        """True when ``need_s`` seconds are left; otherwise records ``what`` as skipped."""
        if self.left() >= need_s:
            return True
        self.skipped.append(f"{what}: out of time ({self.left():.0f} s left, wanted {need_s:.0f})")
        return False

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def time_ms(self, fn, *, min_reps: int = 3, max_reps: int = 25, max_s: float = 1.0) -> dict:
        """Median milliseconds of ``fn()`` after one warm-up call; repeats until ``max_reps`` or
        ``max_s`` seconds of timed work (at least ``min_reps``)."""
        fn()
        self.sync()
        times: list[float] = []
        while len(times) < max_reps and (len(times) < min_reps or sum(times) < max_s * 1000):
            if self.cuda:
                a, b = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                self.torch.cuda.synchronize()
                times.append(a.elapsed_time(b))
            else:
                s = time.perf_counter()
                fn()
                times.append((time.perf_counter() - s) * 1000)
        return {"ms": statistics.median(times), "min_ms": min(times), "reps": len(times)}

    def guard(self, section: str, case: str, fn):
        """Run one case; an exception is recorded (with its traceback) and the run goes on."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - one broken case must not lose the others' numbers
            self.errors.append({"section": section, "case": case, "error": f"{type(e).__name__}: {e}",
                                "traceback": traceback.format_exc(limit=6)})
            print(f"  ERROR {section} {case}: {type(e).__name__}: {e}", flush=True)
            if self.cuda:
                self.torch.cuda.empty_cache()
            return None


def tdtype(torch, name: str):
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def unit_rows(torch, n: int, d: int, device: str, *, seed: int, block: int = 1 << 20):
    """n random unit rows, float32, made block by block on the device (never zeros)."""
    g = torch.Generator(device=device).manual_seed(seed)
    out = torch.empty((n, d), dtype=torch.float32, device=device)
    for i in range(0, n, block):
        x = torch.randn((min(block, n - i), d), generator=g, device=device)
        out[i:i + x.shape[0]] = x / x.norm(dim=1, keepdim=True)
    return out


# -- 1. ceilings ----------------------------------------------------------------------------------

def ceilings(b: Bench, p: dict) -> dict:
    torch = b.torch
    out = {}
    n = p["copy_bytes"] // 4
    src = torch.randn(n, device=b.device)
    dst = torch.empty_like(src)
    t = b.time_ms(lambda: dst.copy_(src), max_reps=50)
    out["copy_gbps"] = 2 * src.numel() * 4 / (t["ms"] / 1000) / 1e9  # bytes read + written
    del src, dst
    m = p["gemm_n"]
    for name in ("bfloat16", "float16", "float32", "tf32"):
        dt = torch.float32 if name == "tf32" else tdtype(torch, name)
        if not b.cuda and name in ("bfloat16", "tf32"):
            continue  # the CPU dry run checks the harness, not these units
        x = torch.randn((m, m), device=b.device).to(dt)
        y = torch.randn((m, m), device=b.device).to(dt)
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
        try:
            t = b.time_ms(lambda: x @ y, max_reps=20)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
        out[f"gemm_tflops_{name}"] = 2 * m ** 3 / (t["ms"] / 1000) / 1e12
        del x, y
    if b.cuda:
        torch.cuda.empty_cache()
    return out


# -- 2. fused_search against torch and the roofline ------------------------------------------------

def torch_search(torch, q, base, k: int, *, block_bytes: int = 2 << 30):
    """torch.matmul + torch.topk; the base in column blocks when the score matrix would pass
    ``block_bytes``, then a topk over the blocks' winners (what a user of torch alone would write)."""
    nq, n = q.shape[0], base.shape[0]
    step = max(k, block_bytes // (4 * max(nq, 1)))
    if step >= n:
        return torch.topk(q @ base.T, k, dim=1)
    vals, idx = [], []
    for s in range(0, n, step):
        v, i = torch.topk(q @ base[s:s + step].T, min(k, min(step, n - s)), dim=1)
        vals.append(v)
        idx.append(i + s)
    v, j = torch.topk(torch.cat(vals, 1), k, dim=1)
    return v, torch.cat(idx, 1).gather(1, j)


def kernels_section(b: Bench, p: dict, ceil: dict, Ns) -> list[dict]:
    from gpusearch.kernels import fused_search

    torch = b.torch
    rows = []
    for n in Ns:
        for d in p["ds"]:
            if not b.fits(f"kernels N={n} d={d}", 20 if b.cuda else 2):
                continue
            base32 = unit_rows(torch, n, d, b.device, seed=n + d)
            qs = unit_rows(torch, max(p["nqs"]), d, b.device, seed=7)
            for dt in p["dtypes"]:
                base = base32 if dt == "float32" else base32.to(torch.float16)
                for nq in p["nqs"]:
                    q = qs[:nq].to(base.dtype)
                    for k in p["ks"]:
                        case = f"N={n} d={d} {dt} nq={nq} k={k}"
                        if not b.fits(f"kernels {case}", 3 if b.cuda else 0.5):
                            continue

                        def one(q=q, base=base, k=k):
                            ours = b.time_ms(lambda: fused_search(q, base, k))
                            ref = b.time_ms(lambda: torch_search(torch, q, base, k))
                            D, I = fused_search(q, base, k)
                            _, It = torch_search(torch, q, base, k)
                            agree = float((I[:, :1] == It[:, :1]).float().mean())  # best hit, ties aside
                            return ours, ref, agree

                        r = b.guard("kernels", case, one)
                        if r is None:
                            continue
                        ours, ref, agree = r
                        bytes_read = n * d * base.element_size()
                        flops = 2 * nq * n * d
                        gemm = ceil.get("gemm_tflops_float16" if dt == "float16" else "gemm_tflops_float32")
                        row = {"N": n, "d": d, "dtype": dt, "nq": nq, "k": k, "ours_ms": ours["ms"],
                               "torch_ms": ref["ms"], "speedup_vs_torch": ref["ms"] / ours["ms"],
                               "scan_gbps": bytes_read / (ours["ms"] / 1000) / 1e9,
                               "tflops": flops / (ours["ms"] / 1000) / 1e12, "top1_agrees_with_torch": agree}
                        if ceil.get("copy_gbps"):
                            row["copy_share"] = row["scan_gbps"] / ceil["copy_gbps"]
                        if gemm:
                            row["gemm_share"] = row["tflops"] / gemm
                        if ceil.get("gemm_tflops_tf32") and dt == "float32":
                            row["tf32_share"] = row["tflops"] / ceil["gemm_tflops_tf32"]
                        rows.append(row)
                        print(f"  fused_search {case}: {ours['ms']:.3f} ms, torch {ref['ms']:.3f} ms "
                              f"({row['speedup_vs_torch']:.2f}x), {row['scan_gbps']:.0f} GB/s, "
                              f"{row['tflops']:.1f} TFLOP/s", flush=True)
                del base
            del base32, qs
            gc.collect()
            if b.cuda:
                torch.cuda.empty_cache()
    return rows


# -- 3. topk alone ---------------------------------------------------------------------------------

def topk_section(b: Bench, p: dict) -> list[dict]:
    from gpusearch.kernels import topk

    torch = b.torch
    rows = []
    w = p["topk_width"]
    for nq in p["topk_nqs"]:
        if not b.fits(f"topk nq={nq}", 5 if b.cuda else 0.5):
            continue
        g = torch.Generator(device=b.device).manual_seed(nq)
        s = torch.randn((nq, w), generator=g, device=b.device)
        for k in p["topk_ks"]:
            case = f"width={w} nq={nq} k={k}"

            def one(s=s, k=k):
                ours = b.time_ms(lambda: topk(s, k))
                ref = b.time_ms(lambda: torch.topk(s, k, dim=1))
                D, _ = topk(s, k)
                Dt, _ = torch.topk(s, k, dim=1)
                same = bool(torch.equal(D, Dt))  # values, best first (indices may differ only at ties)
                return ours, ref, same

            r = b.guard("topk", case, one)
            if r is None:
                continue
            ours, ref, same = r
            rows.append({"width": w, "nq": nq, "k": k, "ours_ms": ours["ms"], "torch_ms": ref["ms"],
                         "speedup_vs_torch": ref["ms"] / ours["ms"], "same_values": same})
            print(f"  topk {case}: {ours['ms']:.3f} ms, torch {ref['ms']:.3f} ms ({ref['ms'] / ours['ms']:.2f}x)",
                  flush=True)
        del s
    return rows


# -- 4. Collection.search end to end ---------------------------------------------------------------

def collection_section(b: Bench, p: dict, workdir: Path) -> tuple[list[dict], object]:
    import gpusearch as gs
    from gpusearch.kernels import fused_search

    torch = b.torch
    rows, keep = [], None
    n, d, step = p["col_n"], p["col_d"], p["col_batch"]
    for dt in ("float32", "float16"):
        if not b.fits(f"collection {dt}", 60 if b.cuda else 5):
            continue

        def build(dt=dt):
            x = unit_rows(torch, n, d, b.device, seed=11)
            col = gs.Collection.create(workdir / f"col-{dt}", dim=d, metric="cosine", device=b.device, dtype=dt,
                                       fsync=False)
            t = time.perf_counter()
            for i in range(0, n, step):
                j = min(n, i + step)
                col.upsert(range(i, j), x[i:j], metadata=[{"b": r % 10} for r in range(i, j)])
            return col, x, time.perf_counter() - t

        built = b.guard("collection", f"build {dt}", build)
        if built is None:
            continue
        col, x, ingest_s = built
        print(f"  collection {dt}: {n} rows in {ingest_s:.1f} s ({n / ingest_s:,.0f} rows/s)", flush=True)
        qs = unit_rows(torch, max(p["col_nqs"]), d, b.device, seed=12)
        base = x if dt == "float32" else x.to(torch.float16)
        for stage in ("plain", "deleted 1%"):
            if stage == "deleted 1%":
                col.delete(ids=[str(i) for i in range(0, n, 100)])
            for flt_name, flt in (("no filter", None), ("filter 10%", {"b": 0})):
                for nq in p["col_nqs"]:
                    case = f"{dt} {stage} {flt_name} nq={nq} k=10"
                    if not b.fits(f"collection {case}", 3 if b.cuda else 0.3):
                        continue
                    q = qs[:nq]

                    def one(q=q, flt=flt):
                        t_col = b.time_ms(lambda: col.search(q, k=10, filter=flt), max_reps=15)
                        qb = q.to(base.dtype)
                        t_raw = b.time_ms(lambda: fused_search(qb, base, 10), max_reps=15)
                        return t_col, t_raw

                    r = b.guard("collection", case, one)
                    if r is None:
                        continue
                    t_col, t_raw = r
                    rows.append({"dtype": dt, "n": n, "d": d, "stage": stage, "filter": flt_name, "nq": nq, "k": 10,
                                 "search_ms": t_col["ms"], "bare_kernel_ms": t_raw["ms"],
                                 "overhead_ms": t_col["ms"] - t_raw["ms"], "ingest_rows_per_s": n / ingest_s})
                    print(f"  Collection.search {case}: {t_col['ms']:.3f} ms (bare kernel {t_raw['ms']:.3f} ms)",
                          flush=True)
        del base, x, qs
        if keep is not None:
            keep.close()
        keep = col  # the last one built serves the encoder section
        gc.collect()
        if b.cuda:
            torch.cuda.empty_cache()
    return rows, keep


# -- 5. text queries: encoder -> search on the device ----------------------------------------------

def queries_text(count: int) -> list[str]:
    topics = ["graphics cards", "river boats", "green tea", "sorting algorithms", "mountain weather", "jazz records",
              "database indexes", "solar panels"]
    return [f"what is known about {topics[i % len(topics)]} number {i}?" for i in range(count)]


def encoder_section(b: Bench, p: dict, col, workdir: Path) -> list[dict]:
    import gpusearch as gs
    from gpusearch.encoders import SentenceEncoder

    torch = b.torch
    rows = []
    if not b.fits("encoder", 20 if b.cuda else 10):
        return rows
    enc = b.guard("encoder", "load", lambda: SentenceEncoder(device=b.device))
    if enc is None:
        return rows
    if col is None:  # the collection section did not run: a small one still shows the hand-off
        col = gs.Collection.create(workdir / "col-enc", dim=enc.dim, metric="cosine", device=b.device, fsync=False)
        col.upsert(range(1000), unit_rows(torch, 1000, enc.dim, b.device, seed=5))
    for batch in p["enc_batches"]:
        texts = queries_text(batch)
        case = f"batch={batch}"

        def one(texts=texts):
            v = enc.encode(texts)
            assert v.device.type == b.device, f"encoder output on {v.device}, expected {b.device}"
            alone = b.time_ms(lambda: enc.encode(texts), max_reps=30)
            both = b.time_ms(lambda: col.search(enc.encode(texts), k=10), max_reps=30)
            search = b.time_ms(lambda: col.search(v, k=10), max_reps=30)
            return alone, both, search

        r = b.guard("encoder", case, one)
        if r is None:
            continue
        alone, both, search = r
        rows.append({"batch": batch, "collection_rows": len(col), "encoder_ms": alone["ms"],
                     "encoder_plus_search_ms": both["ms"], "search_ms": search["ms"],
                     "ratio": both["ms"] / alone["ms"], "model": enc.name})
        print(f"  text {case}: encoder {alone['ms']:.2f} ms, encoder + search {both['ms']:.2f} ms "
              f"({both['ms'] / alone['ms']:.2f}x)", flush=True)
    return rows


# -- 6. IVF on the device against FAISS's CPU IVF ---------------------------------------------------

def clustered_rows(torch, n: int, d: int, centres: int, device: str, *, seed: int):
    g = torch.Generator(device=device).manual_seed(seed)
    c = torch.randn((centres, d), generator=g, device=device)
    out = torch.empty((n, d), dtype=torch.float32, device=device)
    for i in range(0, n, 1 << 20):
        m = min(1 << 20, n - i)
        pick = torch.randint(0, centres, (m,), generator=g, device=device)
        x = c[pick] + 0.35 * torch.randn((m, d), generator=g, device=device)
        out[i:i + m] = x / x.norm(dim=1, keepdim=True)
    return out


def ivf_section(b: Bench, p: dict) -> list[dict]:
    import faiss

    from gpusearch.kernels import fused_search, ivf_build, ivf_search, ivf_train

    torch = b.torch
    rows = []
    if not b.fits("ivf", 40 if b.cuda else 5):
        return rows
    n, d, nlist = p["ivf_n"], p["ivf_d"], p["ivf_nlist"]
    x = clustered_rows(torch, n, d, p["ivf_centres"], b.device, seed=21)
    q = clustered_rows(torch, p["ivf_nq"], d, p["ivf_centres"], b.device, seed=21).flip(0).contiguous()
    q = (q + 0.05 * torch.randn_like(q))
    q = q / q.norm(dim=1, keepdim=True)
    ids = torch.arange(n, device=b.device)
    allow = (ids % 10 == 3) & (ids % 1000 != 3)  # a filter keeping 10%, and 1% of those deleted
    t = time.perf_counter()
    cent = ivf_train(x[torch.randperm(n, device=b.device)[:p["ivf_train"]]], nlist, iters=10, seed=0)
    lists = {"float32": ivf_build(x, cent)}
    b.sync()
    build_s = time.perf_counter() - t
    _, truth = fused_search(q, x, 10, mask=allow)
    truth = truth.cpu().numpy()

    xh, qh, cent_h = x.cpu().numpy(), q.cpu().numpy(), cent.cpu().numpy()
    bitmap = np.packbits(allow.cpu().numpy(), bitorder="little")
    sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bitmap))
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(cent_h)
    cpu = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    cpu.is_trained = True
    t = time.perf_counter()
    cpu.add(xh)
    cpu_build_s = time.perf_counter() - t
    lists["float16"] = ivf_build(x.to(torch.float16), cent)  # half the bytes gathered per candidate

    def recall(I) -> float:
        return float(np.mean([len(set(a[a >= 0]) & set(r[r >= 0])) / max(1, (r >= 0).sum()) for a, r in zip(I, truth)]))

    for dt, nprobe in [(dt, npb) for npb in p["ivf_nprobes"] for dt in ("float32", "float16")]:
        case = f"{dt} n={n} d={d} nlist={nlist} nprobe={nprobe} nq={len(qh)} k=10"
        if not b.fits(f"ivf {case}", 10 if b.cuda else 1):
            continue

        def one(nprobe=nprobe, lists=lists[dt]):
            params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
            search_cpu = getattr(cpu, "search_numpy", None) or cpu.search  # torch_utils wraps search()
            t_gpu = b.time_ms(lambda: ivf_search(q.to(lists.vectors.dtype), lists, 10, nprobe=nprobe, mask=allow),
                                max_reps=15)
            s = time.perf_counter()
            _, Ic = search_cpu(qh, 10, params=params)
            first_cpu = time.perf_counter() - s
            reps = [first_cpu]
            while len(reps) < 5 and sum(reps) < 3:
                s = time.perf_counter()
                search_cpu(qh, 10, params=params)
                reps.append(time.perf_counter() - s)
            _, Ig = ivf_search(q.to(lists.vectors.dtype), lists, 10, nprobe=nprobe, mask=allow)
            assert allow.cpu().numpy()[Ig.cpu().numpy()[Ig.cpu().numpy() >= 0]].all(), "a masked row came back"
            return t_gpu, statistics.median(reps) * 1000, recall(Ig.cpu().numpy()), recall(Ic)

        r = b.guard("ivf", case, one)
        if r is None:
            continue
        t_gpu, cpu_ms, rec_gpu, rec_cpu = r
        rows.append({"dtype": dt, "n": n, "d": d, "nlist": nlist, "nprobe": nprobe, "nq": len(qh), "k": 10,
                     "filter_keeps": 0.1, "deleted_share_of_kept": 0.01,
                     "device_ms": t_gpu["ms"], "faiss_cpu_ms": cpu_ms, "speedup_vs_cpu": cpu_ms / t_gpu["ms"],
                     "device_recall": rec_gpu, "faiss_cpu_recall": rec_cpu, "faiss_threads": faiss.omp_get_max_threads(),
                     "device_build_s": build_s, "faiss_cpu_add_s": cpu_build_s})
        print(f"  ivf {case}: device {t_gpu['ms']:.2f} ms (recall {rec_gpu:.3f}), FAISS CPU {cpu_ms:.2f} ms "
              f"(recall {rec_cpu:.3f}): {cpu_ms / t_gpu['ms']:.1f}x", flush=True)
    return rows


# -- goals and the table ----------------------------------------------------------------------------

def goals(res: dict) -> list[dict]:
    """Each goal of issue 17 with its measured value; ``met`` is None in a dry run (CPU numbers
    judge nothing about a GPU)."""
    out = []
    judged = res["mode"] == "gpu"

    def add(name, value, goal, higher=True, detail=""):
        if value is None:
            return
        met = (value >= goal if higher else value <= goal) if judged else None
        out.append({"goal": name, "value": value, "target": goal, "met": met, "detail": detail})

    ks = res.get("kernels", [])
    for dt in ("float32", "float16"):
        one = [r for r in ks if r["nq"] == 1 and r["dtype"] == dt and "copy_share" in r]
        if one:
            worst = min(one, key=lambda r: r["copy_share"])
            add(f"nq=1 {dt}: share of copy bandwidth (worst case)", worst["copy_share"], GOALS["nq1_copy_share"],
                detail=f"N={worst['N']} d={worst['d']} k={worst['k']}")
        big = [r for r in ks if r["nq"] == max(x["nq"] for x in ks) and r["dtype"] == dt]
        if big:
            worst = min(big, key=lambda r: r.get("gemm_share", 0))
            if "gemm_share" in worst:
                add(f"nq={worst['nq']} {dt}: share of GEMM rate (worst case)", worst["gemm_share"],
                    GOALS["nq1024_gemm_share"], detail=f"N={worst['N']} d={worst['d']} k={worst['k']}")
            worst = min(big, key=lambda r: r["speedup_vs_torch"])
            add(f"nq={worst['nq']} {dt}: over torch.matmul + topk (worst case)", worst["speedup_vs_torch"],
                GOALS["nq1024_vs_torch"], detail=f"N={worst['N']} d={worst['d']} k={worst['k']}")
    tk = res.get("topk", [])
    if tk:
        worst = min(tk, key=lambda r: r["speedup_vs_torch"])
        add("topk over torch.topk (worst case)", worst["speedup_vs_torch"], GOALS["topk_vs_torch"],
            detail=f"nq={worst['nq']} k={worst['k']}")
    for r in res.get("ivf", []):
        add(f"IVF {r['dtype']} nprobe={r['nprobe']} over FAISS CPU", r["speedup_vs_cpu"], GOALS["ivf_vs_cpu"],
            detail=f"recall {r['device_recall']:.3f} vs {r['faiss_cpu_recall']:.3f}")
    for r in res.get("encoder", []):
        if r["batch"] == 1:
            add("text batch 1: encoder + search / encoder", r["ratio"], GOALS["text_vs_encoder"], higher=False)
    return out


def table(res: dict) -> str:
    lines = [f"gpusearch GPU check: {res['gpu'] or 'no GPU (CPU dry run at tiny sizes; numbers say nothing of a GPU)'}"]
    c = res.get("ceilings", {})
    if c:
        lines.append("ceilings: copy {:.0f} GB/s; GEMM TFLOP/s ".format(c.get("copy_gbps", 0)) + ", ".join(
            f"{k.split('_')[-1]} {v:.1f}" for k, v in c.items() if k.startswith("gemm")))
    for g in res.get("goals", []):
        verdict = {True: "MET ", False: "MISS", None: "----"}[g["met"]]
        lines.append(f"{verdict} {g['goal']}: {g['value']:.2f} (goal {g['target']}) {g['detail']}")
    for r in res.get("collection", []):
        if r["nq"] == 1:
            lines.append(f"Collection.search {r['dtype']} {r['stage']}, {r['filter']}, nq=1: {r['search_ms']:.3f} ms "
                         f"(bare kernel {r['bare_kernel_ms']:.3f})")
    for s in res.get("skipped", []):
        lines.append(f"skipped {s}")
    for e in res.get("errors", []):
        lines.append(f"ERROR {e['section']} {e['case']}: {e['error']}")
    lines.append(f"{res['elapsed_s']:.0f} s of a {res['budget_s']:.0f} s budget")
    return "\n".join(lines)


def gpu_name(torch) -> str | None:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON (default bench/results)")
    ap.add_argument("--budget-s", type=float, default=330.0, help="stop starting new cases after this many seconds")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, even where a GPU is visible")
    ap.add_argument("--sections", default="ceilings,kernels,topk,collection,encoder,ivf")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    name = gpu_name(torch)
    cuda = name is not None and not args.dry_run
    if name is None:
        print("no GPU: torch sees no CUDA device; running every section on the CPU at tiny sizes (a dry run)",
              flush=True)
    p = FULL if cuda else DRY
    b = Bench(cuda=cuda, budget_s=args.budget_s)
    from machine import machine_info

    res = {"benchmark": "bench_gpu", "mode": "gpu" if cuda else "dry-run", "gpu": name if cuda else None,
           "machine": machine_info(), "budget_s": args.budget_s, "sizes": p,
           "torch": torch.__version__, "goals_asked": GOALS}
    try:
        import cupy

        res["cupy"] = cupy.__version__
    except Exception as e:  # noqa: BLE001
        res["cupy"] = f"unavailable: {type(e).__name__}"
    if cuda:
        props = torch.cuda.get_device_properties(0)
        res["device"] = {"name": props.name, "sms": props.multi_processor_count,
                         "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}
    sections = set(args.sections.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        ceil = {}
        if "ceilings" in sections:
            print("ceilings", flush=True)
            ceil = b.guard("ceilings", "all", lambda: ceilings(b, p)) or {}
            res["ceilings"] = ceil
            print("  " + json.dumps({k: round(v, 1) for k, v in ceil.items()}), flush=True)
        if "kernels" in sections:
            print("kernels: fused_search against torch.matmul + torch.topk", flush=True)
            res["kernels"] = kernels_section(b, p, ceil, p["Ns"][:1])  # the largest N comes last
        if "topk" in sections:
            print("topk against torch.topk", flush=True)
            res["topk"] = topk_section(b, p)
        col = None
        if "collection" in sections:
            print("Collection.search end to end", flush=True)
            res["collection"], col = collection_section(b, p, Path(tmp))
        if "encoder" in sections:
            print("text queries: encoder -> search", flush=True)
            res["encoder"] = encoder_section(b, p, col, Path(tmp))
        if col is not None:
            col.close()
        if "ivf" in sections:
            print("IVF on the device against FAISS CPU IVF", flush=True)
            res["ivf"] = b.guard("ivf", "setup", lambda: ivf_section(b, p)) or []
        if "kernels" in sections and len(p["Ns"]) > 1:
            print("kernels, larger N", flush=True)
            res["kernels"] += kernels_section(b, p, ceil, p["Ns"][1:])
    res["skipped"], res["errors"] = b.skipped, b.errors
    res["goals"] = goals(res)
    res["elapsed_s"] = time.monotonic() - b.t0
    args.out.mkdir(parents=True, exist_ok=True)
    tag = name.replace(" ", "-") if cuda else f"dry-run-cpu{os.cpu_count()}"
    path = args.out / f"gpu-{tag}.json"
    path.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(f"wrote {path}")
    print(table(res))
    return 1 if b.errors else 0


if __name__ == "__main__":
    sys.exit(main())
