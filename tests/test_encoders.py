"""The sentence encoder's precision setting: bulk calls in bfloat16 where asked (or where the CPU has AMX),
queries always in float32, vectors of unit length within a hair of float32's, bad settings refused."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")

from gpusearch._meanpool import MeanPoolingModel, is_mean_pooling_folder  # noqa: E402
from gpusearch.encoders import BULK_TEXTS, PRECISIONS, SentenceEncoder, default_model_path  # noqa: E402
from gpusearch.errors import InvalidArgumentError  # noqa: E402

# Sentences of the kind the demo embeds (written here), repeated to make a bulk call.
SENTENCES = [
    "Return the number of items in a container.",
    "Open a file and return a stream for reading or writing.",
    "Split a string on a separator and return the parts as a list.",
    "Sleep for the given number of seconds.",
    "Compute the greatest common divisor of two integers.",
    "Serialize an object to a JSON formatted string.",
    "Create a temporary directory that is removed when closed.",
    "Run a command in a subprocess and wait for it to finish.",
]


@pytest.fixture(scope="module")
def encoders():
    return SentenceEncoder(device="cpu", precision="float32"), SentenceEncoder(device="cpu", precision="bfloat16")


def test_bulk_calls_in_bfloat16_stay_within_a_hair_of_float32(encoders):
    f32, bf16 = encoders
    assert not f32.bulk_bfloat16 and bf16.bulk_bfloat16
    texts = (SENTENCES * (BULK_TEXTS // len(SENTENCES) + 1))[:BULK_TEXTS]
    a = f32.encode(texts).cpu().numpy()
    b = bf16.encode(texts)
    assert b.dtype.is_floating_point and str(b.dtype) == "torch.float32"
    b = b.cpu().numpy()
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    cos = (a * b).sum(1)
    assert cos.min() > 0.999, cos.min()
    assert not np.array_equal(a, b)  # bfloat16 really ran: not the float32 path under another name
    # the same order of neighbours among the sentences themselves
    assert ((a[:8] @ a[:8].T).argsort(1)[:, -2] == (b[:8] @ b[:8].T).argsort(1)[:, -2]).all()


def test_queries_are_float32_whatever_the_precision(encoders):
    f32, bf16 = encoders
    few = SENTENCES[:3]
    assert len(few) < BULK_TEXTS
    np.testing.assert_array_equal(f32.encode(few).cpu().numpy(), bf16.encode(few).cpu().numpy())


def test_a_bad_precision_is_refused_naming_the_choices():
    with pytest.raises(InvalidArgumentError, match="precision must be one of auto, float32, bfloat16, got 'fp8'"):
        SentenceEncoder(device="cpu", precision="fp8")
    assert PRECISIONS == ("auto", "float32", "bfloat16")


def test_the_serve_setting_is_checked_at_start():
    from serve.config import ServeConfig

    with pytest.raises(ValueError, match="encoder_precision must be 'auto', 'float32' or 'bfloat16', got 'half'"):
        ServeConfig(encoder_precision="half")
    assert ServeConfig().encoder_precision == "auto"


def test_minilm_without_sentence_transformers_gives_sentence_transformers_vectors():
    """The default folder loads through transformers alone, and its vectors are the ones
    SentenceTransformer computes: texts of every length (one past the 256-token cut), stray
    whitespace, capitals, accents, in batches that mix lengths."""
    from sentence_transformers import SentenceTransformer

    path = default_model_path()
    assert is_mean_pooling_folder(path)
    enc = SentenceEncoder(device="cpu", precision="float32")
    assert isinstance(enc.model, MeanPoolingModel) and enc.dim == 384 and enc.model.max_seq_length == 256
    texts = SENTENCES + ["  padded on both sides  ", "UPPER CASE WORDS", "café, naïve, über",
                         "word " * 400, "x", "Two sentences. The second one is longer than the first one."]
    ref = SentenceTransformer(path, device="cpu")
    want = ref.encode(texts, batch_size=4, convert_to_numpy=True, normalize_embeddings=True)
    got = enc.model.encode(texts, batch_size=4).cpu().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert [len(x) for x in enc.model.tokenizer(texts[:2])["input_ids"]] == \
        [len(x) for x in ref.tokenizer(texts[:2])["input_ids"]]


def test_other_folders_keep_sentence_transformers(tmp_path):
    """A folder whose pooling is not the mean alone (or that lacks a part) is not taken for one."""
    import json
    import shutil

    src = default_model_path()
    for name, change in (("cls", {"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}),
                         ("both", {"pooling_mode_max_tokens": True})):
        dst = tmp_path / name
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
        cfg = json.loads((dst / "1_Pooling" / "config.json").read_text())
        (dst / "1_Pooling" / "config.json").write_text(json.dumps({**cfg, **change}))
        assert not is_mean_pooling_folder(dst)
    (tmp_path / "both" / "modules.json").unlink()
    assert not is_mean_pooling_folder(tmp_path / "both")
    assert not is_mean_pooling_folder(tmp_path / "nowhere")
