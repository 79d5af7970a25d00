"""Where `gpusearch serve`'s start-up time goes (issue 19): the app, then the demo corpus.

    python bench/bench_start.py [--repeats 3] [--out bench/results/start-<machine>.json]

Each repeat runs the README's main command (``gpusearch serve``, fresh data directory, loopback,
2 CPUs for Ray) in a subprocess and times its phases from the moment the process is started:

- ``ray_up_s``: the local Ray is up (Ray's own cost: GCS, raylet, agents, the driver's connection);
- ``serve_up_s``: Serve's controller and HTTP proxy are up (Ray's own cost);
- ``app_up_s``: every replica constructed and the app ready (its line ``app up in``);
- ``demo_s``: the demo corpus embedded by the Aggregator and written (its line ``loaded in``), and
  that line's parts: waiting for the encoder's background load, embedding, writing;
- per replica, from Serve's controller log: seconds from "starting" to "started", and the share of
  it spent in our constructor (the rest is a Ray worker process starting and importing);

then sends SIGTERM and times the graceful stop (``stop_s``). Next to it, in this process, the same
work without Ray: ``import ray`` + ``ray.init`` alone, the encoder's load, and the demo corpus
embedded with 1 thread (what a replica with a fractional CPU gets by default) and with every core.
Medians over the repeats; the machine is recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from server_proc import free_port  # noqa: E402

MARKS = {
    "ray_up_s": "Started a local Ray instance",
    "serve_up_s": "Started Serve in namespace",
    "app_up_s": "app up in",
    "demo_s": "loaded in",
    "ready_s": "gpusearch is serving at",
}
_DEMO_PARTS = re.compile(r"waiting for the encoder's load ([\d.]+) s, embedding ([\d.]+) s, writing ([\d.]+) s")
_STARTED = re.compile(r"Replica\(id='\w+', deployment='(\w+)', app='\w+'\) started successfully .* after "
                      r"([\d.]+)s .* constructor, reconfigure method, and initial health check took ([\d.]+)s")


def machine() -> dict:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "python": platform.python_version()}


def one_start(timeout: float = 600.0, precision: str | None = None) -> dict:
    """One ``gpusearch serve`` from nothing to the demo's answer, then SIGTERM; seconds per phase.
    ``precision``: the encoder's ``encoder_precision`` (None: the server's default)."""
    data = tempfile.mkdtemp(prefix="gs-start-")
    ray_dir = tempfile.mkdtemp(prefix="gsb-", dir="/tmp")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", GPUSEARCH_API_KEYS="",
               PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "gpusearch.cli", "serve", "--port", str(free_port()), "--data-dir",
           os.path.join(data, "data"), "--num-cpus", "2", "--device", "cpu", "--ray-temp-dir", ray_dir]
    if precision is not None:
        config = os.path.join(data, "serve.yaml")
        Path(config).write_text(f"encoder_precision: {precision}\n")
        cmd += ["--config", config]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    out: dict = {}
    lines = []
    try:
        while time.monotonic() - t0 < timeout:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            now = time.monotonic() - t0
            for key, mark in MARKS.items():
                if mark in line and key not in out:
                    out[key] = round(now, 2)
            m = _DEMO_PARTS.search(line)
            if m:
                out.update(demo_wait_encoder_s=float(m.group(1)), demo_embed_s=float(m.group(2)),
                           demo_write_s=float(m.group(3)))
            if "ready_s" in out and line.startswith("  curl"):
                break
        if "ready_s" not in out:
            raise RuntimeError("gpusearch serve did not get ready:\n" + "".join(lines[-30:]))
        t1 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=300)
        out["stop_s"] = round(time.monotonic() - t1, 2)
        out["stop_status"] = proc.returncode
        out["stop_line"] = next((ln for ln in rest.splitlines() if ln.startswith("stopped in")), None)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    replicas = {}
    for log in Path(ray_dir).glob("session_*/logs/serve/controller_*.log"):
        for m in _STARTED.finditer(log.read_text(errors="replace")):
            replicas[m.group(1)] = {"start_s": float(m.group(2)), "constructor_s": float(m.group(3))}
    out["replicas"] = replicas
    return out


def in_process(threads: list[int]) -> dict:
    """The same work without Ray's processes: Ray's start alone, the encoder's load, the demo's encode."""
    out = {}
    code = ("import time,os; t=time.perf_counter(); import ray; t1=time.perf_counter(); "
            "from gpusearch._ray import local_ray_kwargs; "
            "ray.init(include_dashboard=False, num_cpus=2, log_to_driver=False, _temp_dir=os.environ['T'], "
            "**local_ray_kwargs()); "
            "t2=time.perf_counter(); print(round(t1-t,2), round(t2-t1,2)); ray.shutdown()")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", T=tempfile.mkdtemp(prefix="gsb-", dir="/tmp"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    imp, init = r.stdout.split()[-2:]
    out["import_ray_s"], out["ray_init_s"] = float(imp), float(init)

    import torch

    from gpusearch.demo import stdlib_docs
    from gpusearch.encoders import SentenceEncoder

    t = time.perf_counter()
    enc = SentenceEncoder(device="cpu")
    out["encoder_load_s"] = round(time.perf_counter() - t, 2)
    texts = [d["text"] for d in stdlib_docs()]
    out["demo_texts"] = len(texts)
    out["encoder_bulk_bfloat16"] = enc.bulk_bfloat16  # what precision "auto" chose on this CPU
    enc.encode(texts[:64])  # warm
    for n in threads:
        torch.set_num_threads(n)
        t = time.perf_counter()
        enc.encode(texts)
        s = time.perf_counter() - t
        out[f"demo_encode_{n}_threads_s"] = round(s, 2)
        out[f"demo_texts_per_s_{n}_threads"] = round(len(texts) / s, 1)
    # The demo's own calls (256 texts each) on every core, float32 against bfloat16, alternating.
    f32, bf16 = SentenceEncoder(device="cpu", precision="float32"), SentenceEncoder(device="cpu", precision="bfloat16")
    bf16.encode(texts[:64])
    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for _ in range(3):
        for name, e in (("float32", f32), ("bfloat16", bf16)):
            t = time.perf_counter()
            for lo in range(0, len(texts), 256):
                e.encode(texts[lo:lo + 256])
            times[name].append(time.perf_counter() - t)
    for name, ts in times.items():
        out[f"demo_encode_{name}_s"] = round(statistics.median(ts), 2)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    p.add_argument("--encoder-precision", default=None, help="the server's encoder_precision; several, comma-"
                   "separated (e.g. auto,float32), alternate run by run and get a median each (default: the "
                   "server's default)")
    args = p.parse_args(argv)
    precisions = [v.strip() for v in args.encoder_precision.split(",")] if args.encoder_precision else [None]
    runs = []
    for i in range(args.repeats):
        for prec in precisions:
            runs.append(one_start(precision=prec))
            runs[-1]["encoder_precision"] = prec or "default"
            print(f"run {i + 1}/{args.repeats} ({prec or 'default'}): " + ", ".join(
                f"{k} {v}" for k, v in runs[-1].items() if k.endswith("_s")), flush=True)
    by_precision = {}
    for prec in precisions:
        mine = [r for r in runs if r["encoder_precision"] == (prec or "default")]
        by_precision[prec or "default"] = {k: round(statistics.median(r[k] for r in mine if k in r), 2)
                                           for k in mine[0] if k.endswith("_s")}
    med = by_precision[precisions[0] or "default"]
    names = sorted({n for r in runs for n in r["replicas"]})
    med_replicas = {n: {f: round(statistics.median(r["replicas"][n][f] for r in runs if n in r["replicas"]), 2)
                        for f in ("start_s", "constructor_s")} for n in names}
    ref = in_process([1, os.cpu_count() or 1])
    result = {"bench": "start", "machine": machine(), "date": time.strftime("%Y-%m-%d"), "repeats": args.repeats,
              "median": med, "median_by_encoder_precision": by_precision, "replicas_median": med_replicas,
              "in_process": ref, "runs": runs, "command": "python bench/bench_start.py --repeats %d%s" % (
                  args.repeats, f" --encoder-precision {args.encoder_precision}" if args.encoder_precision else "")}
    print(json.dumps({"median_by_encoder_precision": by_precision, "replicas_median": med_replicas,
                      "in_process": ref}, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
