"""What machine a result was measured on (recorded with every result)."""
from __future__ import annotations

import os
import platform
import subprocess


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "gpu": None}
    try:
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            info["gpu"] = out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    import faiss
    import numpy
    import torch

    info.update(faiss=faiss.__version__, numpy=numpy.__version__, torch=torch.__version__)
    return info


def result_path(kind: str, machine: dict):
    """bench/results/<kind>-<GPU name, or cpuN>.json for a result measured on ``machine``."""
    from pathlib import Path

    tag = machine["gpu"].split(",")[0].replace(" ", "-") if machine["gpu"] else f"cpu{machine['cores']}"
    return Path(__file__).resolve().parent / "results" / f"{kind}-{tag}.json"
