"""A sentence-transformers folder of the common shape (a BERT transformer, mean pooling, L2
normalisation), run with torch, ``safetensors`` and ``tokenizers`` alone.

Loading MiniLM through ``sentence_transformers`` took 6.0-6.7 s on the 2-core Xeon VM, nearly all
of it importing that package and the parts of ``transformers`` and ``torch`` it pulls in (dynamo,
distributed tensors, SciPy's optimisers for detection losses); ``transformers``' ``AutoModel`` alone
still took 5.1-5.7 s. A plain BERT encoder (``model_type: bert``, absolute positions, GELU: MiniLM
and many sentence-transformers models) is a few dozen lines of torch over the folder's safetensors
weights, with the folder's ``tokenizer.json`` read by ``tokenizers``. The arithmetic is sentence-transformers' for such a folder: texts
sorted by length into batches, each stripped (and lower-cased when the folder says so), tokenised
with padding and truncation at the folder's ``max_seq_length``, the token states averaged over the
attention mask and scaled to unit length (``tests/test_encoders.py`` holds the two to 1e-5). Any
other folder goes to ``sentence_transformers.SentenceTransformer``.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["MeanPoolingModel", "is_mean_pooling_folder"]

_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_mean_pooling_folder(folder) -> bool:
    """Whether ``folder`` is a plain BERT at its root (see :meth:`_Bert.fits`), mean pooling only, then
    normalisation."""
    folder = Path(folder)
    modules = _read(folder / "modules.json")
    if not isinstance(modules, list) or len(modules) != 3:
        return False
    kinds = [(m.get("type"), m.get("path")) for m in modules if isinstance(m, dict)]
    if len(kinds) != 3 or kinds[0] != (_TRANSFORMER, "") or kinds[1][0] != _POOLING or kinds[2][0] != _NORMALIZE:
        return False
    pooling = _read(folder / str(kinds[1][1]) / "config.json")
    if not isinstance(pooling, dict) or pooling.get("pooling_mode_mean_tokens") is not True:
        return False
    others = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens" and v]
    config = _read(folder / "sentence_bert_config.json")
    return (not others and isinstance(config, dict) and isinstance(config.get("max_seq_length"), int)
            and _Bert.fits(folder, _read(folder / "config.json") or {}))


class _Tokenizer:
    """The folder's ``tokenizer.json`` through ``tokenizers``: called like a Hugging Face tokenizer
    on a list of texts (``["input_ids"]``: every token, special ones included, nothing cut)."""

    def __init__(self, path: Path, max_length: int):
        from tokenizers import Tokenizer

        self._plain = Tokenizer.from_file(str(path))
        self._plain.no_truncation()
        self._plain.no_padding()
        self._batch = Tokenizer.from_file(str(path))
        self._batch.enable_truncation(max_length=max_length, strategy="longest_first")
        pad = self._batch.padding or {}
        self._batch.enable_padding(pad_id=pad.get("pad_id", 0), pad_type_id=pad.get("pad_type_id", 0),
                                   pad_token=pad.get("pad_token", "[PAD]"))

    def __call__(self, texts):
        return {"input_ids": [e.ids for e in self._plain.encode_batch(list(texts))]}

    def batch(self, texts: list[str], device):
        import torch

        enc = self._batch.encode_batch(texts)
        return {"input_ids": torch.tensor([e.ids for e in enc], device=device),
                "token_type_ids": torch.tensor([e.type_ids for e in enc], device=device),
                "attention_mask": torch.tensor([e.attention_mask for e in enc], device=device)}


class _Bert:
    """A BERT encoder's forward pass (inference) over its safetensors weights: embeddings, then
    ``num_hidden_layers`` x (self-attention, feed-forward), each with a residual and LayerNorm."""

    def __init__(self, folder: Path, config: dict, device: str):
        import torch
        from safetensors.torch import load_file

        weights = load_file(str(folder / "model.safetensors"), device="cpu")
        prefix = "bert." if any(k.startswith("bert.") for k in weights) else ""
        self.w = {k[len(prefix):]: v.to(device=device, dtype=torch.float32) for k, v in weights.items()
                  if k.startswith(prefix)}
        self.layers = int(config["num_hidden_layers"])
        self.heads = int(config["num_attention_heads"])
        self.hidden = int(config["hidden_size"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))

    @staticmethod
    def fits(folder: Path, config: dict) -> bool:
        """Whether this forward pass is the folder's model."""
        return (config.get("model_type") == "bert" and config.get("hidden_act") == "gelu"
                and config.get("position_embedding_type", "absolute") == "absolute"
                and (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file())

    def __call__(self, input_ids, token_type_ids, attention_mask):
        import torch
        import torch.nn.functional as F

        w, H, nh = self.w, self.hidden, self.heads
        B, T = input_ids.shape
        pos = torch.arange(T, device=input_ids.device)
        h = (w["embeddings.word_embeddings.weight"][input_ids] + w["embeddings.position_embeddings.weight"][pos]
             + w["embeddings.token_type_embeddings.weight"][token_type_ids])
        h = F.layer_norm(h, (H,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): which keys a token may attend to

        def heads(x):
            return x.view(B, T, nh, H // nh).transpose(1, 2)

        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            q = heads(F.linear(h, w[p + "attention.self.query.weight"], w[p + "attention.self.query.bias"]))
            k = heads(F.linear(h, w[p + "attention.self.key.weight"], w[p + "attention.self.key.bias"]))
            v = heads(F.linear(h, w[p + "attention.self.value.weight"], w[p + "attention.self.value.bias"]))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(B, T, H)
            a = F.linear(a, w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"])
            h = F.layer_norm(a + h, (H,), w[p + "attention.output.LayerNorm.weight"],
                             w[p + "attention.output.LayerNorm.bias"], self.eps)
            f = F.gelu(F.linear(h, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"]))
            f = F.linear(f, w[p + "output.dense.weight"], w[p + "output.dense.bias"])
            h = F.layer_norm(f + h, (H,), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], self.eps)
        return h


class MeanPoolingModel:
    """The part of ``SentenceTransformer``'s interface the encoder uses: ``encode``, ``tokenizer``,
    ``max_seq_length`` and the embedding dimension."""

    def __init__(self, folder, device: str):
        folder = Path(folder)
        config = _read(folder / "sentence_bert_config.json")
        self.max_seq_length = int(config["max_seq_length"])
        self.do_lower_case = bool(config.get("do_lower_case", False))
        self.device = device
        self.tokenizer = _Tokenizer(folder / "tokenizer.json", self.max_seq_length)
        self.model = _Bert(folder, _read(folder / "config.json"), device)

    def get_sentence_embedding_dimension(self) -> int:
        return self.model.hidden

    def encode(self, texts, batch_size: int = 32, convert_to_tensor: bool = True, normalize_embeddings: bool = True,
               show_progress_bar: bool = False):
        """Unit-length embeddings of ``texts`` (a torch tensor on the model's device), in their order."""
        import numpy as np
        import torch

        order = np.argsort([-len(t) for t in texts], kind="stable")  # longest first: less padding per batch
        out = [None] * len(texts)
        starts = range(0, len(texts), batch_size)
        if show_progress_bar:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="Batches")
        with torch.inference_mode():
            for lo in starts:
                idx = order[lo:lo + batch_size].tolist()
                batch = [texts[i].strip() for i in idx]
                if self.do_lower_case:
                    batch = [t.lower() for t in batch]
                enc = self.tokenizer.batch(batch, self.device)
                states = self.model(**enc)
                mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
                emb = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                if normalize_embeddings:
                    emb = torch.nn.functional.normalize(emb, p=2, dim=1)
                for j, i in enumerate(idx):
                    out[i] = emb[j]
        result = torch.stack(out)
        return result if convert_to_tensor else result.float().cpu().numpy()
