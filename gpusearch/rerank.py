"""Re-ranking: score (query, document) pairs with a cross-encoder, best first.

A cross-encoder reads a query and one document together and gives one relevance score, so it orders
a search's hits better than vector similarity can, at the cost of one model pass per pair. The usual
use is to fetch a few dozen hits with :meth:`gpusearch.Collection.search` and reorder them here.

Pointing it at a model
----------------------
Nothing is downloaded at run time: models load with ``local_files_only=True`` (and ``HF_HUB_OFFLINE=1``
is set when the environment has not set it). For ``cross-encoder/ms-marco-MiniLM-L-6-v2``, fetch the
model once on a machine with network::

    hf download cross-encoder/ms-marco-MiniLM-L-6-v2 --local-dir /models/ms-marco-MiniLM-L-6-v2

(``huggingface-cli download ...`` with the same arguments on older ``huggingface_hub`` releases),
copy the folder to the serving machine if that is another one, and pass the folder::

    reranker = CrossEncoderReranker("/models/ms-marco-MiniLM-L-6-v2", device="auto")

Any folder that ``sentence_transformers.CrossEncoder`` loads and whose model gives one score per
pair works the same way. A hub name (``"cross-encoder/ms-marco-MiniLM-L-6-v2"``) is accepted too,
and found only when it is already in the local Hugging Face cache (a download without
``--local-dir``). A model that is not there is a :class:`FileNotFoundError` naming what was asked
for. Instead of a model, any callable ``fn(queries, documents) -> scores`` can score the pairs
(a ``torch.nn.Module`` is moved to the reranker's device).

Scores are what the model gives: ``CrossEncoder.predict`` with the model's own activation (a sigmoid
for most one-label models; raw logits for models whose config says so, as the ms-marco ones do).

Batching
--------
:meth:`CrossEncoderReranker.score_many` scores the pairs of several queries in one model call and
splits the scores back per query; a server's aggregator batches concurrent requests through it
(with :class:`gpusearch.serve.batching.GreedyBatcher`, for one). Text is tokenised on the CPU, the
model stays on its device between calls, and the scores come to the host once per call.
Call :meth:`~CrossEncoderReranker.validate` on each request before queuing it, so that one bad
request is refused alone instead of failing the batch it would have joined.

*Experimental*: the API may change while issue 16 is open.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from .devices import resolve_device
from .errors import InvalidArgumentError, InvalidTypeError, LimitExceededError

__all__ = ["CrossEncoderReranker", "RerankHit", "MAX_RERANK_TEXT_CHARS"]

# Longest query or document accepted, in characters. A cross-encoder reads at most max_length tokens
# (512 for BERT-sized ones, a few thousand characters), so the rest of a longer text is cut anyway;
# the limit bounds what one request can make the CPU tokenise and hold before that cut.
MAX_RERANK_TEXT_CHARS = 20_000


class RerankHit(NamedTuple):
    """One re-ranked document: its position in the list given, and its score."""

    index: int
    score: float


def _is_cross_encoder(obj: Any) -> bool:
    # Only an imported sentence_transformers can have made a CrossEncoder; never import it for this.
    st = sys.modules.get("sentence_transformers")
    return st is not None and isinstance(obj, st.CrossEncoder)


def _looks_like_path(name: str) -> bool:
    """True for what can only be a local path; False for what may also be a hub name (``org/model``)."""
    return (
        os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name)
        or name.count("/") > 1 or (os.sep != "/" and os.sep in name)
    )


def _load_cross_encoder(source: str, device: str, max_length: int | None):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from sentence_transformers import CrossEncoder
    except ImportError:
        raise ImportError("a cross-encoder model needs sentence-transformers: pip install 'gpusearch[embed]'") from None
    how = (
        "download it once on a machine with network (hf download ORG/MODEL --local-dir DIR) "
        "and pass the folder DIR; see gpusearch.rerank"
    )
    if _looks_like_path(source):
        folder = os.path.expanduser(source)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"no cross-encoder model at {source!r}: that folder does not exist; {how}")
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise FileNotFoundError(f"{source!r} is not a model folder (no config.json in it); {how}")
        source = folder
    try:
        return CrossEncoder(source, device=device, local_files_only=True, max_length=max_length)
    except OSError:  # not in the Hugging Face cache, and downloads are off
        raise FileNotFoundError(
            f"no cross-encoder model {source!r}: it is not a local folder and not in the Hugging Face cache "
            f"(nothing is downloaded); {how}"
        ) from None


class CrossEncoderReranker:
    """Scores (query, document) pairs with a cross-encoder on one device and orders documents by score.

    Parameters
    ----------
    model
        A local folder of a ``sentence_transformers.CrossEncoder`` (or a hub name already in the local
        cache), a loaded ``CrossEncoder``, or a callable ``fn(queries, documents)`` that returns one score
        per pair as a torch tensor, NumPy array or list.
    device
        ``"auto"`` (the first CUDA device when torch sees one, else the CPU), ``"cpu"`` or ``"cuda:N"``.
        A model, or a callable that is a ``torch.nn.Module``, is moved there once; any other callable
        places its own work.
    max_length
        Tokens read per pair; the rest of a longer pair is cut (the longer of query and document first).
        ``None``: the model's own limit. Only for a model: a callable truncates its own input.
    batch_size
        Pairs per forward pass inside one call. ``None``: 16 on the CPU, 64 on a GPU.
    max_chars
        Longest query or document accepted, in characters (:data:`MAX_RERANK_TEXT_CHARS`).

    Examples
    --------
    >>> def shared_words(queries, documents):
    ...     return [float(len(set(q.split()) & set(d.split()))) for q, d in zip(queries, documents)]
    >>> reranker = CrossEncoderReranker(shared_words, device="cpu")
    >>> reranker.rerank("red fox", ["a dog", "the red fox", "red hat", "fox"], top_n=3)
    [RerankHit(index=1, score=2.0), RerankHit(index=2, score=1.0), RerankHit(index=3, score=1.0)]
    >>> [s.tolist() for s in reranker.score_many([("red fox", ["fox", "red fox"]), ("dog", ["a dog"])])]
    [[1.0, 2.0], [1.0]]
    """

    def __init__(self, model: str | os.PathLike | Callable[[list[str], list[str]], Any], *, device: str = "auto",
                 max_length: int | None = None, batch_size: int | None = None,
                 max_chars: int = MAX_RERANK_TEXT_CHARS):
        import torch

        self.device = resolve_device(device)
        for name, value in (("max_length", max_length), ("batch_size", batch_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidArgumentError(f"{name} must be a positive int or None, got {value!r}", field=name)
        if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
            raise InvalidArgumentError(f"max_chars must be a positive int, got {max_chars!r}", field="max_chars")
        self.max_chars = max_chars
        # The encoder's batch sizes (gpusearch.encoders); not measured separately for pairs.
        self.batch_size = batch_size or (16 if self.device == "cpu" else 64)
        self.model = None
        self._fn = None

        if isinstance(model, (str, os.PathLike)):
            source = os.fspath(model)
            self.model = _load_cross_encoder(source, self.device, max_length)
            self.name = os.path.basename(source.rstrip("/\\")) or source
        elif _is_cross_encoder(model):
            self.model = model.to(self.device)
            if max_length is not None:
                self.model.max_seq_length = max_length
            source = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
            self.name = os.path.basename(str(source).rstrip("/\\")) or str(source)
        elif callable(model):
            if max_length is not None:
                raise InvalidArgumentError(
                    "max_length applies to a cross-encoder model; a callable must truncate its own input",
                    field="max_length",
                )
            if isinstance(model, torch.nn.Module):
                model = model.to(self.device).eval()
            self._fn = model
            self.name = getattr(model, "__name__", None) or type(model).__name__
        else:
            raise InvalidTypeError(
                "model must be a model folder or name (str or path), a sentence_transformers.CrossEncoder, "
                f"or a callable fn(queries, documents) -> scores; got {type(model).__name__}",
                field="model",
            )
        if self.model is not None:
            self.model.eval()
            if self.model.num_labels != 1:
                raise ValueError(
                    f"cross-encoder {self.name!r} gives {self.model.num_labels} scores per pair; "
                    "re-ranking needs a model with one (num_labels=1)"
                )

    def __repr__(self) -> str:
        return f"CrossEncoderReranker({self.name!r}, device={self.device!r})"

    @property
    def lineage(self) -> dict:
        """What to record alongside results re-ranked by this model."""
        return {"model": self.name, "kind": "cross-encoder"}

    @property
    def max_length(self) -> int | None:
        """Tokens the model reads per pair (``None`` for a callable)."""
        return None if self.model is None else self.model.max_seq_length

    # -- checking input ------------------------------------------------------------------------

    def _check_text(self, text: Any, name: str) -> str:
        if not isinstance(text, str):
            raise InvalidTypeError(f"{name} must be str, got {type(text).__name__}", field=name.split("[")[0])
        if len(text) > self.max_chars:
            raise LimitExceededError(
                f"{name} is {len(text)} characters long; the limit is {self.max_chars} characters "
                "(MAX_RERANK_TEXT_CHARS): send a shorter text, such as the passage that matched",
                limit_name="MAX_RERANK_TEXT_CHARS", limit=self.max_chars, value=len(text), field=name.split("[")[0],
            )
        return text

    def validate(self, query: str, documents: Sequence[str]) -> list[str]:
        """Check one request without scoring it; return its documents as a list.

        Raises :class:`~gpusearch.errors.InvalidTypeError` for a query or document that is not a
        string, and :class:`~gpusearch.errors.LimitExceededError` (a ``ValueError``) for one longer
        than ``max_chars``.
        """
        self._check_text(query, "query")
        if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
            raise InvalidTypeError(
                f"documents must be a list of strings, got {type(documents).__name__}; "
                "wrap a single document in a list", field="documents",
            )
        documents = list(documents)
        for i, d in enumerate(documents):
            self._check_text(d, f"documents[{i}]")
        return documents

    # -- scoring -------------------------------------------------------------------------------

    def _scores(self, queries: list[str], documents: list[str]) -> np.ndarray:
        """One model call over the pairs; one copy of the scores to the host."""
        import torch

        n = len(queries)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        with torch.inference_mode():
            if self.model is not None:
                out = self.model.predict(list(zip(queries, documents)), batch_size=self.batch_size,
                                         convert_to_tensor=True, show_progress_bar=False)
            else:
                out = self._fn(queries, documents)
                if not isinstance(out, (torch.Tensor, np.ndarray)) and (
                        hasattr(out, "__cuda_array_interface__") or hasattr(out, "__dlpack__")):
                    out = torch.from_dlpack(out)  # CuPy and friends: NumPy cannot read device memory
            if isinstance(out, torch.Tensor):
                out = out.detach().float().cpu().numpy()
        scores = np.asarray(out, dtype=np.float32)
        if scores.ndim == 2 and scores.shape[1] == 1:
            scores = scores[:, 0]
        if scores.shape != (n,):
            raise ValueError(
                f"the scoring model {self.name!r} returned scores of shape {scores.shape} for {n} pairs; "
                "it must return one score per pair"
            )
        return scores

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """Scores of ``query`` against each document: float32, one per document, in their order."""
        documents = self.validate(query, documents)
        return self._scores([query] * len(documents), documents)

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Scores of (query, document) pairs, float32, one per pair."""
        if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
            raise InvalidTypeError(f"pairs must be a list of (query, document) pairs, got {type(pairs).__name__}",
                                   field="pairs")
        queries, documents = [], []
        for i, pair in enumerate(pairs):
            if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise InvalidTypeError(f"pairs[{i}] must be a (query, document) pair of strings, got {pair!r:.80}",
                                       field="pairs")
            queries.append(self._check_text(pair[0], f"pairs[{i}][0]"))
            documents.append(self._check_text(pair[1], f"pairs[{i}][1]"))
        return self._scores(queries, documents)

    def score_many(self, items: Sequence[tuple[str, Sequence[str]]]) -> list[np.ndarray]:
        """Scores for several queries, each with its documents, from one model call.

        ``items`` is a list of ``(query, documents)``; the result holds one float32 array per item,
        equal to what :meth:`score` gives for that item alone (up to padding noise in the last bits).
        Every item is checked before anything is scored: a bad one fails the call, naming its position.
        """
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise InvalidTypeError(f"items must be a list of (query, documents), got {type(items).__name__}",
                                   field="items")
        queries, documents, counts = [], [], []
        for i, item in enumerate(items):
            if isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) != 2:
                raise InvalidTypeError(f"items[{i}] must be a (query, documents) pair, got {type(item).__name__}",
                                       field="items")
            try:
                docs = self.validate(item[0], item[1])
            except InvalidArgumentError as e:
                e.args = (f"items[{i}]: {e.args[0]}", *e.args[1:])
                raise
            queries += [item[0]] * len(docs)
            documents += docs
            counts.append(len(docs))
        scores = self._scores(queries, documents)
        return np.split(scores, np.cumsum(counts)[:-1]) if counts else []

    def rerank(self, query: str, documents: Sequence[str], top_n: int | None = None) -> list[RerankHit]:
        """The ``top_n`` best documents (all when ``None``) as ``(index, score)``, best first.

        ``index`` is the document's position in ``documents``; equal scores go to the smaller index,
        and NaN scores come last.
        """
        if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer))):
            raise InvalidTypeError(f"top_n must be an int or None, got {type(top_n).__name__}", field="top_n")
        if top_n is not None and top_n < 1:
            raise InvalidArgumentError(f"top_n must be at least 1, got {top_n}", field="top_n")
        return self.order(self.score(query, documents), top_n)

    @staticmethod
    def order(scores: np.ndarray, top_n: int | None = None) -> list[RerankHit]:
        """``(index, score)`` of ``scores`` best first, ties to the smaller index, NaN last.

        >>> CrossEncoderReranker.order(np.array([1.0, 3.0, 3.0, 2.0]), 3)
        [RerankHit(index=1, score=3.0), RerankHit(index=2, score=3.0), RerankHit(index=3, score=2.0)]
        """
        scores = np.asarray(scores, dtype=np.float32)
        # A stable sort keeps equal scores in index order; NumPy sorts NaN after every number.
        idx = np.argsort(-scores, kind="stable")[:top_n]
        return [RerankHit(int(i), float(scores[i])) for i in idx]
