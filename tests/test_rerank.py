"""gpusearch.rerank: a cross-encoder's scores and order, checked against the model run directly.

The model is MiniLM with a seeded, untrained one-label head (tests/cross_encoder_model.py): built
offline once per run, loaded by ``sentence_transformers.CrossEncoder`` with its real loading code.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

pytest.importorskip("sentence_transformers", reason="needs sentence-transformers: pip install 'gpusearch[embed]'")

from cross_encoder_model import build_cross_encoder  # noqa: E402  (tests/cross_encoder_model.py)

from gpusearch.errors import InvalidArgumentError, InvalidTypeError, LimitExceededError  # noqa: E402
from gpusearch.rerank import MAX_RERANK_TEXT_CHARS, CrossEncoderReranker  # noqa: E402

QUERY = "what do cats eat"
DOCS = [
    "The cat sat on the mat.",
    "Stock markets fell sharply on Monday.",
    "Cats are small domesticated carnivorous mammals.",
    "A recipe for lemon cake with icing.",
    "The GPU computes matrix products quickly.",
    "Felines sleep for most of the day.",
    "Paris is the capital of France.",
    "dogs and cats",
]
# Scores of one pair computed two ways differ only by padding and summation order.
RTOL, ATOL = 1e-4, 1e-6


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_cross_encoder(tmp_path_factory.mktemp("cross-encoder") / "minilm-ce")


@pytest.fixture(scope="module")
def reranker(model_dir):
    return CrossEncoderReranker(model_dir, device="cpu")


@functools.lru_cache(maxsize=None)
def _direct_model(model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return tok, AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True).eval()


def direct_scores(model_dir, pairs, *, max_length=None):
    """The model run by hand with transformers, one pair at a time (no padding): sigmoid of the logit,
    the activation sentence-transformers gives a one-label model."""
    tok, model = _direct_model(str(model_dir))
    out = []
    with torch.inference_mode():
        for q, d in pairs:
            features = tok(q, d, truncation="longest_first", max_length=max_length or 512, return_tensors="pt")
            out.append(torch.sigmoid(model(**features).logits[0, 0]).item())
    return np.array(out, dtype=np.float32)


@pytest.fixture(scope="module")
def expected(model_dir):
    """Reference scores of QUERY against each of DOCS."""
    scores = direct_scores(model_dir, [(QUERY, d) for d in DOCS])
    # The documents' scores must be far enough apart for an order to be a real check.
    assert np.min(np.diff(np.sort(scores))) > 1e-4
    return scores


@pytest.fixture(scope="module")
def full_ranking(reranker):
    return reranker.rerank(QUERY, DOCS)


def test_scores_and_order_equal_the_model_run_directly(reranker, expected, full_ranking):
    scores = reranker.score(QUERY, DOCS)
    assert scores.dtype == np.float32 and scores.shape == (len(DOCS),)
    np.testing.assert_allclose(scores, expected, rtol=RTOL, atol=ATOL)

    assert [i for i, _ in full_ranking] == np.argsort(-expected, kind="stable").tolist()
    np.testing.assert_allclose([s for _, s in full_ranking], np.sort(expected)[::-1], rtol=RTOL, atol=ATOL)
    assert full_ranking[0].index == full_ranking[0][0] and full_ranking[0].score == full_ranking[0][1]


def test_scores_equal_cross_encoder_predict(model_dir, reranker):
    from sentence_transformers import CrossEncoder

    pairs = [(QUERY, DOCS[2]), ("capital of France", DOCS[6]), ("cake", DOCS[3])]
    predicted = CrossEncoder(model_dir, device="cpu", local_files_only=True).predict(pairs)
    np.testing.assert_allclose(reranker.score_pairs(pairs), predicted, rtol=RTOL, atol=ATOL)


def test_score_many_equals_separate_calls_in_one_model_call(reranker, monkeypatch):
    items = [(QUERY, DOCS[:3]), ("capital of France", []), ("fast matrix products", DOCS[5:]), ("cake", DOCS[3:4])]
    separate = [reranker.score(q, docs) for q, docs in items]

    calls = []
    predict = reranker.model.predict
    monkeypatch.setattr(reranker.model, "predict", lambda pairs, **kw: calls.append((len(pairs), kw["convert_to_tensor"])) or predict(pairs, **kw))
    together = reranker.score_many(items)

    assert calls == [(sum(len(docs) for _, docs in items), True)]
    assert [len(s) for s in together] == [3, 0, 3, 1]
    for got, want in zip(together, separate):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert reranker.score_many([]) == []


def count_copies_to_host(monkeypatch, *, device_type):
    """A list that grows by one each time a tensor on ``device_type`` is copied to the host with ``.cpu()``."""
    copies, cpu = [], torch.Tensor.cpu

    def counting(t, *args, **kwargs):
        if t.device.type == device_type:
            copies.append(tuple(t.shape))
        return cpu(t, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counting)
    return copies


def test_scores_reach_the_host_once_per_call(model_dir, monkeypatch):
    """Several forward passes (batch_size 2), one copy of all the scores."""
    small_batches = CrossEncoderReranker(model_dir, device="cpu", batch_size=2)
    copies = count_copies_to_host(monkeypatch, device_type="cpu")
    small_batches.score_many([(QUERY, DOCS[:3]), ("cake", DOCS[3:5])])
    assert copies == [(5,)]


def test_top_n(reranker, full_ranking):
    assert reranker.rerank(QUERY, DOCS, top_n=3) == full_ranking[:3]
    scores = np.array([s for _, s in sorted(full_ranking)], dtype=np.float32)
    assert CrossEncoderReranker.order(scores, 1) == full_ranking[:1]
    assert CrossEncoderReranker.order(scores, 100) == full_ranking
    with pytest.raises(InvalidArgumentError, match="top_n must be at least 1, got 0"):
        reranker.rerank(QUERY, DOCS, top_n=0)
    with pytest.raises(InvalidTypeError, match="top_n"):
        reranker.rerank(QUERY, DOCS, top_n=2.5)


def test_max_length_truncates(model_dir):
    short = CrossEncoderReranker(model_dir, device="cpu", max_length=16)
    assert short.max_length == 16
    head = "cats eat fish and mice and birds and insects and also dry food from a bag " * 2
    docs = [head + "every single day", head + "the stock market closed lower on friday"]
    s = short.score(QUERY, docs)
    assert s[0] == pytest.approx(s[1], abs=1e-6)  # only the first 16 tokens were read
    np.testing.assert_allclose(s, direct_scores(model_dir, [(QUERY, d) for d in docs], max_length=16),
                               rtol=RTOL, atol=ATOL)


def test_ties_go_to_the_smaller_index():
    flat = CrossEncoderReranker(lambda queries, documents: torch.zeros(len(documents)), device="cpu")
    assert flat.rerank("q", ["a", "b", "c", "d"]) == [(0, 0.0), (1, 0.0), (2, 0.0), (3, 0.0)]
    table = {"a": 1.0, "b": 3.0, "c": 3.0, "d": 1.0, "e": 2.0, "f": float("nan")}
    mixed = CrossEncoderReranker(lambda qs, ds: np.array([table[d] for d in ds]), device="cpu")
    ranked = mixed.rerank("q", ["f", "a", "b", "c", "d", "e"])
    assert [i for i, _ in ranked] == [2, 3, 5, 1, 4, 0]
    assert mixed.rerank("q", ["a", "b", "c", "d", "e"], top_n=2) == [(1, 3.0), (2, 3.0)]


class _Overlap(torch.nn.Module):
    """A torch scorer: a learned weight times the number of words a pair shares."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, queries, documents):
        shared = [len(set(q.split()) & set(d.split())) for q, d in zip(queries, documents)]
        return self.weight * torch.tensor(shared, dtype=torch.float32, device=self.weight.device)


def test_torch_callable_reranker():
    module = _Overlap().train()
    rr = CrossEncoderReranker(module, device="cpu")
    assert rr.lineage == {"model": "_Overlap", "kind": "cross-encoder"}
    assert not module.training and rr.max_length is None
    docs = ["red hat", "the red fox", "a dog", "fox"]
    scores = rr.score("red fox", docs)
    assert scores.dtype == np.float32
    np.testing.assert_array_equal(scores, [0.5, 1.0, 0.0, 0.5])
    assert rr.rerank("red fox", docs) == [(1, 1.0), (0, 0.5), (3, 0.5), (2, 0.0)]
    assert [s.tolist() for s in rr.score_many([("red fox", docs[:2]), ("a dog", docs[2:])])] == [[0.5, 1.0], [1.0, 0.0]]
    with pytest.raises(InvalidArgumentError, match="max_length"):
        CrossEncoderReranker(module, device="cpu", max_length=8)


def test_a_callable_must_return_one_score_per_pair():
    calls = []
    rr = CrossEncoderReranker(lambda qs, ds: calls.append(1) or [1.0, 2.0], device="cpu")
    with pytest.raises(ValueError, match=r"shape \(2,\) for 3 pairs; it must return one score per pair"):
        rr.score("q", ["a", "b", "c"])
    assert calls == [1]


def test_lineage(reranker, model_dir):
    assert reranker.lineage == {"model": "minilm-ce", "kind": "cross-encoder"}
    assert reranker.max_length == 512 and reranker.device == "cpu"
    assert next(reranker.model.parameters()).device.type == "cpu"


def test_missing_model_is_a_clear_error_naming_it(tmp_path):
    missing = tmp_path / "no-such-cross-encoder"
    with pytest.raises(FileNotFoundError, match="no-such-cross-encoder") as e:
        CrossEncoderReranker(str(missing), device="cpu")
    assert str(missing) in str(e.value) and "download" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        CrossEncoderReranker(tmp_path / "empty", device="cpu")
    # A hub name that is not in the local cache: nothing is downloaded.
    with pytest.raises(FileNotFoundError, match="'gpusearch-tests/no-such-model'.*not in the Hugging Face cache"):
        CrossEncoderReranker("gpusearch-tests/no-such-model", device="cpu")
    with pytest.raises(InvalidTypeError, match="model must be"):
        CrossEncoderReranker(42, device="cpu")


def test_overlong_text_is_refused_naming_the_limit(reranker, monkeypatch):
    calls = []
    monkeypatch.setattr(reranker.model, "predict", lambda *a, **kw: calls.append(1))
    long_doc = "x" * (MAX_RERANK_TEXT_CHARS + 1)
    with pytest.raises(LimitExceededError, match=rf"documents\[1\] is {MAX_RERANK_TEXT_CHARS + 1} characters long; "
                                                 rf"the limit is {MAX_RERANK_TEXT_CHARS} characters") as e:
        reranker.rerank(QUERY, ["fine", long_doc])
    assert isinstance(e.value, ValueError) and e.value.limit == MAX_RERANK_TEXT_CHARS
    with pytest.raises(LimitExceededError, match="query is"):
        reranker.score(long_doc, ["fine"])
    with pytest.raises(LimitExceededError, match=r"items\[1\]: documents\[0\] is"):
        reranker.score_many([(QUERY, ["fine"]), (QUERY, [long_doc])])
    assert calls == []  # refused before the model ran

    small = CrossEncoderReranker(lambda qs, ds: np.zeros(len(ds)), device="cpu", max_chars=10)
    with pytest.raises(LimitExceededError, match="the limit is 10 characters"):
        small.score("q", ["x" * 11])
    assert small.score("q", ["x" * 10]).tolist() == [0.0]


def test_bad_input_types(reranker):
    with pytest.raises(InvalidTypeError, match="wrap a single document in a list"):
        reranker.score(QUERY, "just one string")
    with pytest.raises(InvalidTypeError, match=r"documents\[1\] must be str, got int"):
        reranker.score(QUERY, ["ok", 3])
    with pytest.raises(InvalidTypeError, match="query must be str"):
        reranker.rerank(None, ["ok"])
    with pytest.raises(InvalidTypeError, match=r"pairs\[0\]"):
        reranker.score_pairs([("only a query",)])


def test_empty_documents(reranker):
    scores = reranker.score(QUERY, [])
    assert scores.dtype == np.float32 and scores.shape == (0,)
    assert reranker.rerank(QUERY, []) == []
    assert reranker.score_pairs([]).shape == (0,)


@pytest.mark.gpu
def test_gpu_scores_equal_cpu_and_model_stays_on_device(model_dir, reranker, monkeypatch):
    gpu = CrossEncoderReranker(model_dir, device="auto")
    assert gpu.device == "cuda:0"
    assert next(gpu.model.parameters()).device.type == "cuda"
    assert CrossEncoderReranker(model_dir, device="cuda:0").device == "cuda:0"
    items = [(QUERY, DOCS), ("capital of France", DOCS[2:])]
    gpu.batch_size = 4  # several forward passes, still one copy of the scores to the host
    with monkeypatch.context() as m:
        copies = count_copies_to_host(m, device_type="cuda")
        on_gpu = gpu.score_many(items)
    assert copies == [(len(DOCS) * 2 - 2,)]
    for got, want in zip(on_gpu, reranker.score_many(items)):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)
    assert next(gpu.model.parameters()).device.type == "cuda"
    assert [i for i, _ in gpu.rerank(QUERY, DOCS)] == [i for i, _ in reranker.rerank(QUERY, DOCS)]
