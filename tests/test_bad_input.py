"""Every bad input is refused with a ValueError/TypeError that names what was expected, and writes nothing."""
from __future__ import annotations

import json

import numpy as np
import pytest

import gpusearch as gs


@pytest.fixture
def col(tmp_path, rng):
    c = gs.Collection.create(tmp_path / "c", dim=4, metric="cosine", shards=2, device="cpu", fsync=False)
    c.upsert(["a", "b", "c"], rng.standard_normal((3, 4)).astype(np.float32), metadata=[{"genre": "x", "year": 1}] * 3)
    yield c
    c.close()


def unchanged(col, before):
    after = col.stats()
    assert after["records"] == before["records"] and after["sequence"] == before["sequence"]
    assert [s["rows"] for s in after["shards"]] == [s["rows"] for s in before["shards"]]


@pytest.mark.parametrize(
    "vectors, exc, match",
    [
        (np.ones((2, 5), np.float32), ValueError, "must have 4 columns.*got 5"),
        (np.ones((2, 4), np.int64), TypeError, "floating-point.*got int64"),
        (np.array([["a"] * 4] * 2), TypeError, "floating-point"),
        (np.array([[1, 2, np.nan, 4], [1, 1, 1, 1]], np.float32), ValueError, "finite.*row 0"),
        (np.array([[1, 1, 1, 1], [1, np.inf, 1, 1]], np.float32), ValueError, "finite.*row 1"),
        (np.ones((2, 4, 1), np.float32), ValueError, "2-D"),
        (np.zeros((2, 4), np.float32), ValueError, "all zeros; cosine"),
        # finite values whose squared length overflows float32: cosine used to store zeros, l2 lost the row
        (np.array([[1, 1, 1, 1], [3e38, 1, 1, 1]], np.float32), ValueError, "row 1 has squared length.*scale"),
        (np.full((2, 4), 1e19, np.float32), ValueError, "row 0 has squared length"),
    ],
)
def test_bad_vectors(col, vectors, exc, match):
    before = col.stats()
    with pytest.raises(exc, match=match):
        col.upsert(["p", "q"], vectors)
    unchanged(col, before)


def test_empty_batch(col):
    before = col.stats()
    with pytest.raises(ValueError, match="empty"):
        col.upsert([], np.empty((0, 4), np.float32))
    with pytest.raises(ValueError, match="empty batch"):
        col.search(np.empty((0, 4), np.float32))
    unchanged(col, before)


def test_length_mismatch(col):
    before = col.stats()
    with pytest.raises(ValueError, match="same length.*3 ids and 2 vectors"):
        col.upsert(["p", "q", "r"], np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="metadata"):
        col.upsert(["p", "q"], np.ones((2, 4), np.float32), metadata=[{"a": 1}])
    unchanged(col, before)


@pytest.mark.parametrize("ids, exc", [("abc", TypeError), ([1.5, 2.5], TypeError), (["", "x"], ValueError),
                                      ([None, "x"], TypeError), ([True, "x"], TypeError)])
def test_bad_ids(col, ids, exc):
    before = col.stats()
    with pytest.raises(exc, match="id"):
        col.upsert(ids, np.ones((2, 4), np.float32))
    unchanged(col, before)


def test_bad_metadata_rejects_whole_batch(col):
    before = col.stats()
    with pytest.raises(ValueError, match="genre"):
        col.upsert(["p", "q"], np.ones((2, 4), np.float32), metadata=[{"genre": "y"}, {"genre": float("nan")}])
    with pytest.raises((TypeError, ValueError), match="nested|dict|type"):
        col.upsert(["p"], np.ones((1, 4), np.float32), metadata=[{"deep": {"x": 1}}])
    unchanged(col, before)
    assert col.fetch(["p"]).missing == ["p"]


@pytest.mark.parametrize("k, exc", [(0, ValueError), (-1, ValueError), (gs.MAX_TOP_K + 1, ValueError),
                                    (2.0, TypeError), ("5", TypeError), (True, TypeError)])
def test_bad_k(col, k, exc):
    with pytest.raises(exc, match=f"k must be.*1 and {gs.MAX_TOP_K}"):
        col.search(np.ones(4, np.float32), k=k)


def test_bad_queries(col):
    with pytest.raises(ValueError, match="4 columns"):
        col.search(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="finite"):
        col.search(np.array([np.nan, 1, 1, 1], np.float32))
    with pytest.raises(TypeError, match="floating-point"):
        col.search(np.ones((1, 4), np.int32))


def test_unknown_filter_operator(col):
    with pytest.raises(ValueError, match=r"\$regex.*(supported|\$eq)"):
        col.search(np.ones(4, np.float32), filter={"genre": {"$regex": "x.*"}})
    before = col.stats()
    with pytest.raises(ValueError, match=r"\$foo"):
        col.delete(filter={"genre": {"$foo": 1}})
    unchanged(col, before)


def test_filter_on_field_no_record_has(col):
    """Pinecone's answer: such a field is missing everywhere, so it matches nothing (or, for $ne, $nin and
    $exists: false, everything); a malformed operand is still refused."""
    q = np.ones(4, np.float32)
    assert col.search(q, k=5, filter={"colour": "red"}).ids == [[]]
    assert len(col.search(q, k=5, filter={"colour": {"$ne": "red"}}).ids[0]) == min(5, len(col))
    before = col.stats()
    assert col.delete(filter={"colour": "red"}).count == 0
    unchanged(col, before)
    with pytest.raises(TypeError, match="colour"):
        col.search(q, filter={"colour": {"$in": "red"}})


def test_bad_search_params(col, tmp_path):
    with pytest.raises(ValueError, match="no search params"):
        col.search(np.ones(4, np.float32), params={"nprobe": 4})
    ivf = gs.Collection.create(tmp_path / "ivf", dim=4, index="IVF4,Flat", device="cpu", fsync=False)
    ivf.upsert(range(10), np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32))
    with pytest.raises(ValueError, match="efSearch.*nprobe"):
        ivf.search(np.ones(4, np.float32), params={"efSearch": 4})
    with pytest.raises(ValueError, match="positive int"):
        ivf.search(np.ones(4, np.float32), params={"nprobe": 0})


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"dim": 0}, ValueError, "dim must be"),
        ({"dim": "8"}, TypeError, "dim must be an int"),
        ({"dim": 8, "metric": "dot"}, ValueError, "metric must be one of cosine, ip, l2"),
        ({"dim": 8, "index": "IVF,Nonsense"}, ValueError, "FAISS could not build"),
        ({"dim": 8, "shards": 0}, ValueError, "shards"),
        ({"dim": 8, "dtype": "int8"}, ValueError, "dtype"),
        ({"dim": 8, "device": "tpu"}, ValueError, "device must be"),
    ],
)
def test_bad_create(tmp_path, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        gs.Collection.create(tmp_path / "c", **kwargs)
    assert not (tmp_path / "c").exists()


def test_open_a_path_that_is_not_a_collection(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(ValueError, match="not a gpusearch collection"):
        gs.Collection.open(tmp_path / "junk")
    with pytest.raises(ValueError, match="not a gpusearch collection"):
        gs.Collection.open(tmp_path / "missing")


def test_open_a_newer_format_version(tmp_path):
    c = gs.Collection.create(tmp_path / "c", dim=2, device="cpu")
    c.close()
    manifest = tmp_path / "c" / "collection.json"
    data = json.loads(manifest.read_text())
    data["format_version"] = gs.FORMAT_VERSION + 1
    manifest.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="newer|upgrade"):
        gs.Collection.open(tmp_path / "c")


def test_create_on_a_file_or_a_non_empty_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        gs.Collection.create(tmp_path / "f", dim=2, device="cpu")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "other").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        gs.Collection.create(tmp_path / "d", dim=2, device="cpu")


def test_create_over_existing_collection(tmp_path):
    gs.Collection.create(tmp_path / "c", dim=2, device="cpu").close()
    with pytest.raises(ValueError, match="already holds a collection"):
        gs.Collection.create(tmp_path / "c", dim=2, device="cpu")


def test_delete_needs_exactly_one_selector(col):
    with pytest.raises(ValueError, match="exactly one"):
        col.delete()
    with pytest.raises(ValueError, match="exactly one"):
        col.delete(ids=["a"], filter={"genre": "x"})


def test_closed_collection(col):
    col.close()
    with pytest.raises(ValueError, match="closed"):
        col.search(np.ones(4, np.float32))


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_huge_vectors_are_refused_for_every_metric(tmp_path, metric):
    """A vector whose squared length is beyond a quarter of float32's range is refused on write and
    on search, so every score stays finite (just under the limit is accepted and found)."""
    c = gs.Collection.create(tmp_path / metric, dim=4, metric=metric, device="cpu", fsync=False)
    big = np.array([[1e19, 0, 0, 0]], np.float32)  # squared length 1e38 > 8.5e37
    with pytest.raises(ValueError, match="squared length"):
        c.upsert(["big"], big)
    with pytest.raises(ValueError, match="squared length"):
        c.search(big[0], k=1)
    ok = np.array([[4e18, 0, 0, 0], [0, 1, 0, 0]], np.float32)  # 1.6e37: accepted
    c.upsert(["near", "unit"], ok)
    r = c.search(np.array([0.5, 0, 0, 0], np.float32), k=2)
    assert sorted(r.ids[0]) == ["near", "unit"] and np.isfinite(r.scores).all()
    assert c.stats()["records"] == 2
    c.close()
