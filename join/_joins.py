"""Driving a join: check everything, load the partitions, stream the left side through the workers."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpusearch import metadata as md
from gpusearch.errors import GpusearchError
from gpusearch.filters import compile_filter, filter_fields
from gpusearch.progress import progress
from gpusearch.request import MAX_TOP_K, check_top_k

from . import _inputs as inputs
from ._output import filesystem, prepare_output, write_stats
from ._partition import Partition, encoder_dim
from ._spec import (MAX_POOL, Spec, check_column_name, check_count, check_metric, check_threshold)
from ._worker import JoinWorker

__all__ = ["knn_join", "range_join", "dedup", "connected_components"]

log = logging.getLogger("gpusearch.join")


def _check_filter(filter, schema: dict) -> None:
    """Refuse a bad filter before any work, naming what was expected. Unlike a query (where a field no
    record has matches nothing, as in Pinecone), a join refuses a field the right side lacks: an hours-long
    join that silently finds nothing for a misspelt field is worse than an error."""
    compile_filter(filter, schema)
    unknown = sorted(filter_fields(filter) - set(schema))
    if unknown:
        known = ", ".join(repr(f) for f in sorted(schema)) or "none"
        raise ValueError(f"unknown metadata field {unknown[0]!r} in filter; the right side's fields are: {known}")


def _ensure_ray() -> None:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError(f"gpusearch.join runs on Ray Data, which is not installed ({e}); "
                          "pip install 'gpusearch[join]'") from None

    if not ray.is_initialized():
        import tempfile

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        from gpusearch._ray import local_ray_kwargs

        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
                 _temp_dir=tempfile.mkdtemp(prefix="gsjoin-"), **local_ray_kwargs())


def _plan_resources(workers: int | None, partitions: int | None, device: str):
    """How many partitions and join workers, and what each reserves."""
    import ray

    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    cpus = float(res.get("CPU", 1))
    on_gpu = device != "cpu" and gpus > 0
    if device.startswith("cuda") and not on_gpu:
        raise ValueError(f"device {device!r} was asked for but the Ray cluster has no GPUs")
    if partitions is not None:
        partitions = check_count(partitions, "partitions", limit=MAX_POOL)
    if workers is not None:
        workers = check_count(workers, "workers", limit=MAX_POOL)
    default = gpus if on_gpu else max(1, min(int(cpus), 8))
    partitions = partitions or workers or default
    workers = workers or partitions
    if on_gpu:
        # Partitions hold the data; join workers take a slice of the GPUs to encode text there.
        part_opts = {"num_gpus": min(1.0, 0.8 * gpus / partitions), "num_cpus": 0.25}
        worker_opts = {"num_gpus": min(1.0, 0.2 * gpus / workers), "num_cpus": 0.25}
        threads = None
    else:
        # Fractional reservations so everything schedules on a small machine; the threads carry the work.
        part_opts = {"num_cpus": 0.25}
        worker_opts = {"num_cpus": 0.25}
        threads = max(1, int(cpus) // partitions)
    return partitions, workers, part_opts, worker_opts, threads, ("cuda" if on_gpu else "cpu")


def _probe_dim(ds, vector: str, side: str, id_col: str) -> int:
    """The vectors' dimension: from the column type when it says (fixed-size lists, tensors), else the first row."""
    t = inputs.columns(ds).get(vector)
    if t is not None and pa.types.is_fixed_size_list(t):
        return t.list_size
    shape = getattr(t, "shape", None)
    if isinstance(t, pa.ExtensionType) and isinstance(shape, tuple) and len(shape) == 1 and shape[0]:
        return int(shape[0])
    rows = ds.select_columns([id_col, vector]).limit(1).to_arrow_refs()
    import ray

    tables = [t for t in ray.get(rows) if t.num_rows]
    if not tables:
        raise ValueError(f"{side} is empty: nothing to join")
    return inputs.vectors(tables[0].column(vector), None, where=side, name=vector).shape[1]


def _validate_left_values(ds, spec: Spec, where: str = "left") -> int:
    """Read the left side's ids and vectors once: every row has an id and a vector the engine takes
    (the right dim, finite, not too long, not all zeros under cosine), before any output."""
    cols = [spec.left_id] + [c for c in (spec.text or spec.vector, spec.sparse) if c]

    def check(batch: pa.Table) -> pa.Table:
        # A bad value comes back as data (kind, message): Ray wraps exceptions raised in tasks.
        try:
            ids = inputs.ids(batch.column(spec.left_id), where=where, name=spec.left_id)
            if spec.sparse:
                inputs.sparse_vectors(batch.column(spec.sparse), where=where, name=spec.sparse, ids=ids)
            if spec.text:
                inputs.texts(batch.column(spec.text), where=where, name=spec.text)
            elif spec.vector:
                m = inputs.vectors(batch.column(spec.vector), spec.dim, where=where, name=spec.vector, ids=ids)
                if len(m):
                    inputs.prepare(m, dim=spec.dim, metric=spec.metric, where=where, ids=ids)
        except (ValueError, TypeError) as e:
            return pa.table({"n": [0], "error": [type(e).__name__], "message": [str(e)]})
        return pa.table({"n": [len(ids)], "error": pa.array([None], pa.string()),
                         "message": pa.array([None], pa.string())})

    n = 0
    checked = ds.select_columns(cols).map_batches(check, batch_format="pyarrow", num_cpus=0.25)
    for b in checked.iter_batches(batch_format="pyarrow", batch_size=None):
        for kind, message in zip(b.column("error").to_pylist(), b.column("message").to_pylist()):
            if kind is not None:
                raise (TypeError if kind == "TypeError" else ValueError)(message)
        n += int(pc.sum(b.column("n")).as_py() or 0)
    return n


def _raise_user_error(e: BaseException) -> None:
    """Re-raise the ValueError/TypeError our checks raised inside a Ray task, without Ray's wrapping."""
    from ray.exceptions import RayError

    seen = set()
    stack = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, (ValueError, TypeError)) and not isinstance(x, RayError):
            if isinstance(x, GpusearchError):
                raise x.with_traceback(None) from None  # the engine's class, fields and all
            raise type(x)(str(x)) from None
        stack.extend([getattr(x, "cause", None), x.__cause__, x.__context__])


def _run(mode: str, left, right, *, k=0, threshold=0.0, max_per_row=None, metric="cosine", left_id="id",
         right_id="id", vector="vector", text=None, encoder=None, filter=None, exclude_self=False, output=None,
         overwrite=False, workers=None, partitions=None, device="auto", batch_size=4096, threads=None, sparse=None):
    metric = check_metric(metric)
    if sparse is not None:
        sparse = check_column_name(sparse, "sparse")
        if metric != "ip":
            raise ValueError(f"a join with sparse vectors scores dense inner product + sparse dot product "
                             f"(Pinecone's dotproduct): pass metric='ip', got {metric!r}")
    if threads is not None:
        threads = check_count(threads, "threads", limit=MAX_POOL)
    if mode == "knn":
        k = check_top_k(k)  # the one limit of every edge, with its one message
    else:
        threshold = check_threshold(threshold, metric)
        max_per_row = check_count(max_per_row, "max_per_row", limit=MAX_TOP_K, allow_none=True)
    left_id = check_column_name(left_id, "left_id")
    right_id = check_column_name(right_id, "right_id")
    if text is not None:
        text = check_column_name(text, "text")
        vector = None
    elif vector is not None or sparse is None:  # vector=None: sparse vectors alone
        vector = check_column_name(vector, "vector")
    if encoder is not None and not isinstance(encoder, (str, os.PathLike)):
        raise TypeError(f"encoder must be a sentence-transformers model path or name, got {type(encoder).__name__}")
    if filter is not None and not isinstance(filter, Mapping):
        raise TypeError(f"filter must be a dict such as {{'lang': 'en'}}, got {type(filter).__name__}")
    if not isinstance(exclude_self, bool):
        raise TypeError(f"exclude_self must be True or False, got {exclude_self!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if output is not None and not isinstance(output, (str, os.PathLike)):
        raise TypeError(f"output must be a directory path or URI, got {type(output).__name__}")
    output = None if output is None else os.fspath(output)
    device = "auto" if device is None else device
    if device not in ("auto", "cpu") and not str(device).startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")

    _ensure_ray()
    lsrc = inputs.source(left, "left", allow_collection=False)
    rsrc = inputs.source(right, "right", allow_collection=True)

    # Columns and dimensions, from schemas and one row per side.
    lcols = inputs.columns(lsrc.dataset)
    inputs.need_column(lcols, left_id, "left", "left_id")
    if text or vector:
        inputs.need_column(lcols, text or vector, "left", "text" if text else "vector")
    if sparse:
        inputs.need_column(lcols, sparse, "left", "sparse")
        inputs.check_sparse_type(lcols[sparse], "left", sparse)
    fields = inputs.filter_fields(filter) if filter else set()
    schema: dict[str, str] = {}
    if rsrc.kind == "collection":
        cfg = rsrc.config
        if cfg["metric"] != metric:
            raise ValueError(f"right is a collection with metric {cfg['metric']!r}, but the join asks for "
                             f"{metric!r}; pass metric={cfg['metric']!r}")
        rdim = int(cfg["dim"])
        if not sparse and not rdim:
            raise ValueError("right is a collection of sparse vectors only; pass sparse= (the left side's sparse "
                             "column) and vector=None")
        if rdim and not (text or vector):
            raise ValueError(f"right is a collection of {rdim}-dim dense vectors (with sparse ones beside them if "
                             f"it has any): pass vector= (or text=) for the left side's dense part")
        if sparse and text is None and vector is not None and not rdim:
            raise ValueError("right is a collection of sparse vectors only; pass vector=None")
        n_shards = int(cfg["shards"])
        rtype = "string"
        # The filter's field types are the shards' (known once they are loaded, below).
    else:
        rcols = inputs.columns(rsrc.dataset)
        inputs.need_column(rcols, right_id, "right", "right_id")
        if text or vector:
            inputs.need_column(rcols, text or vector, "right", "text" if text else "vector")
        if sparse:
            inputs.need_column(rcols, sparse, "right", "sparse")
            inputs.check_sparse_type(rcols[sparse], "right", sparse)
        schema = {c: t for c, t in ((c, inputs.field_type(t)) for c, t in rcols.items()
                                    if c not in (right_id, vector, text, sparse)) if t is not None}
        rdim = None if text or not vector else _probe_dim(rsrc.dataset, vector, "right", right_id)
        rtype = inputs.id_type(rcols[right_id])
        if filter:
            _check_filter(filter, schema)
            fields &= set(schema)
    if text:
        enc_dim = encoder_dim(None if encoder is None else os.fspath(encoder))
        if rsrc.kind == "collection" and rdim != enc_dim:
            raise ValueError(f"the encoder makes {enc_dim}-dim vectors but the right collection holds {rdim}-dim")
        dim = enc_dim
    elif not vector:  # sparse vectors alone
        dim = 0
    else:
        ldim = _probe_dim(lsrc.dataset, vector, "left", left_id)
        if rdim is not None and ldim != rdim:
            raise ValueError(f"left vectors have {ldim} dims but right vectors have {rdim}; both sides must match")
        dim = ldim
    spec = Spec(mode=mode, metric=metric, dim=dim, left_id=left_id, right_id=right_id, vector=vector, text=text,
                k=k, threshold=threshold, max_per_row=max_per_row, exclude_self=exclude_self,
                filter=dict(filter) if filter else None, filter_fields=sorted(fields), schema=schema,
                encoder=None if encoder is None else os.fspath(encoder), right_id_type=rtype, sparse=sparse)
    n_left = _validate_left_values(lsrc.dataset, spec)

    # The right side, loaded into the partitions (its values are checked as it loads).
    import ray

    n_part, n_work, part_opts, worker_opts, auto_threads, dev = _plan_resources(workers, partitions, str(device))
    threads = threads or auto_threads
    if rsrc.kind == "collection":
        n_part = min(n_part, n_shards)
    actor = ray.remote(Partition)
    parts = [actor.options(**part_opts).remote(i, spec, device=dev, threads=threads) for i in range(n_part)]
    t0 = time.perf_counter()
    if rsrc.kind == "collection":
        groups = [list(range(n_shards))[i::n_part] for i in range(n_part)]
        loads = [p.load_collection.remote(rsrc.path, g) for p, g in zip(parts, groups)]
    else:
        rds = rsrc.dataset.select_columns(sorted({right_id, *(c for c in (text or vector, sparse) if c),
                                                  *spec.filter_fields}))
        splits = rds.streaming_split(n_part, equal=False)
        loads = [p.load_split.remote(s) for p, s in zip(parts, splits)]
    try:
        loaded = ray.get(loads)
        n_right = sum(x["rows"] for x in loaded)
        if filter:
            if rsrc.kind == "collection":
                # The collection's field types: the union of its shards', as the engine's Collection makes it.
                for x in loaded:
                    schema = md.merge_schemas(schema, x["schema"])
                _check_filter(filter, schema)
                spec.schema = schema
            ray.get([p.set_filter.remote(spec.filter, schema) for p in parts])
    except Exception as e:
        for p in parts:
            ray.kill(p)
        _raise_user_error(e)
        raise
    log.info("join: %d right rows in %d partitions in %.1f s", n_right, n_part, time.perf_counter() - t0)

    done = None
    if output is not None:
        plan = {"spec": spec.describe(), "left": lsrc.describe, "right": rsrc.describe}
        plan = json.loads(json.dumps(plan, default=str))
        try:
            done = prepare_output(output, plan, overwrite=overwrite)
        except Exception:
            for p in parts:
                ray.kill(p)
            raise

    done_ref = ray.put(done if done is not None else pa.array([], pa.string()))
    lds = lsrc.dataset.select_columns(sorted({left_id, *(c for c in (text or vector, sparse) if c)}))
    joined = lds.map_batches(
        JoinWorker, batch_size=batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=n_work),
        fn_constructor_kwargs={"partitions": parts, "spec": spec, "device": dev, "output": output,
                               "done_ref": done_ref},
        **worker_opts)
    if output is None:
        return joined
    todo = n_left - (0 if done is None else len(done))
    t1 = time.perf_counter()
    rows = pairs = 0
    with progress(max(todo, 0), f"{mode} join", unit="row") as bar:
        for b in joined.iter_batches(batch_format="pyarrow", batch_size=None):
            n = int(pc.sum(b.column("rows")).as_py() or 0)
            rows += n
            pairs += int(pc.sum(b.column("pairs")).as_py() or 0)
            bar.update(n)
    t2 = time.perf_counter()
    for p in parts:
        ray.kill(p)
    write_stats(output, {"left_rows": n_left, "right_rows": n_right, "rows_this_run": rows,
                         "pairs_this_run": pairs, "resumed_rows": 0 if done is None else len(done),
                         "partitions": n_part, "workers": n_work, "threads_per_partition": threads,
                         "device": dev, "load_s": round(t1 - t0, 3), "join_s": round(t2 - t1, 3)})
    return inputs.read_parquet(output if "://" in output else os.path.abspath(output))


def knn_join(left, right, *, k: int, metric: str = "cosine", left_id: str = "id", right_id: str = "id",
             vector: str | None = "vector", text: str | None = None, encoder=None, filter: Mapping | None = None,
             exclude_self: bool = False, output=None, overwrite: bool = False, workers: int | None = None,
             partitions: int | None = None, device: str = "auto", batch_size: int = 4096,
             threads: int | None = None, sparse: str | None = None):
    """The ``k`` nearest right rows of every left row.

    Parameters
    ----------
    left : ray.data.Dataset, str or list of str
        A dataset, or Parquet files/directories (local paths or pyarrow filesystem URIs).
    right : ray.data.Dataset, str or list of str
        As ``left``, or the directory of a gpusearch collection.
    k : int
        Neighbours per left row, 1..10000 (``gpusearch.MAX_TOP_K``, the limit every edge shares).
    metric : {"cosine", "ip", "l2"}
        Must be the collection's metric when ``right`` is a collection.
    left_id, right_id : str
        The id columns (strings or integers).
    vector : str or None
        The vector column on both sides (fixed-size or variable lists of floats, or a Ray tensor column);
        None with ``sparse`` to join on sparse vectors alone.
    text : str, optional
        Join on a text column instead, encoded with ``encoder`` (default all-MiniLM-L6-v2).
    sparse : str, optional
        A sparse-vector column on both sides (a struct of ``indices`` and ``values`` lists, Pinecone's
        sparse values; null where a row has none), or on the left only when ``right`` is a collection
        (its records' own sparse values). A pair's score is then the dense inner product plus the sparse
        dot product, exactly, as the engine's hybrid search scores it (``metric="ip"``); with sparse
        vectors alone a left row pairs only with right rows that share a term with it.
    filter : dict, optional
        A Pinecone-style filter on the right side's other columns (or the collection's metadata).
    exclude_self : bool
        Leave out pairs whose right id equals the left id (self-joins).
    output : str, optional
        A directory (or URI) to write the result to as Parquet; a rerun into it resumes.
    overwrite : bool
        Start ``output`` afresh instead of resuming.
    workers, partitions : int, optional
        Join workers and right partitions (default: one per GPU, or per CPU core up to 8).
    device : {"auto", "cpu", "cuda"}
    batch_size : int
        Left rows per batch.
    threads : int, optional
        BLAS/OpenMP threads per partition on the CPU (default: the cluster's CPUs / partitions).

    Returns
    -------
    ray.data.Dataset
        Columns ``left_id, right_id, score, rank`` (rank 0 is the best). Lazy when
        ``output`` is None; otherwise read back from ``output``.
    """
    return _run("knn", left, right, k=k, metric=metric, left_id=left_id, right_id=right_id, vector=vector,
                text=text, encoder=encoder, filter=filter, exclude_self=exclude_self, output=output,
                overwrite=overwrite, workers=workers, partitions=partitions, device=device, batch_size=batch_size,
                threads=threads, sparse=sparse)


def range_join(left, right, *, threshold: float, max_per_row: int | None = None, metric: str = "cosine",
               left_id: str = "id", right_id: str = "id", vector: str | None = "vector", text: str | None = None,
               encoder=None, filter: Mapping | None = None, exclude_self: bool = False, output=None,
               overwrite: bool = False, workers: int | None = None, partitions: int | None = None,
               device: str = "auto", batch_size: int = 4096, threads: int | None = None, sparse: str | None = None):
    """Every (left, right) pair at or above a similarity (cosine, ip) or within a squared distance (l2).

    ``max_per_row`` keeps only each left row's best that many pairs. Other
    parameters and the result are as for :func:`knn_join`; ``rank`` numbers
    each left row's pairs best first.
    """
    return _run("range", left, right, threshold=threshold, max_per_row=max_per_row, metric=metric,
                left_id=left_id, right_id=right_id, vector=vector, text=text, encoder=encoder, filter=filter,
                exclude_self=exclude_self, output=output, overwrite=overwrite, workers=workers,
                partitions=partitions, device=device, batch_size=batch_size, threads=threads, sparse=sparse)


def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Label each of ``n`` nodes with the smallest node number of its component, given edges ``a[i]-b[i]``.

    >>> connected_components(5, np.array([0, 3]), np.array([1, 4])).tolist()
    [0, 0, 2, 3, 3]
    """
    labels = np.arange(n, dtype=np.int64)
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    while True:
        m = np.minimum(labels[a], labels[b])
        new = labels.copy()
        np.minimum.at(new, a, m)
        np.minimum.at(new, b, m)
        while True:  # pointer jumping: every node to its label's label
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, labels):
            return labels
        labels = new


def dedup(table, *, threshold: float, metric: str = "cosine", id: str = "id", vector: str | None = "vector",
          text: str | None = None, encoder=None, output=None, overwrite: bool = False, workers: int | None = None,
          partitions: int | None = None, device: str = "auto", batch_size: int = 4096, sparse: str | None = None):
    """Cluster near-duplicates: a self range join, then connected components.

    Two rows are linked when their similarity is at least ``threshold``
    (cosine, ip) or their squared distance at most ``threshold`` (l2); a
    cluster is a connected group of linked rows. With ``sparse`` the similarity
    is hybrid (dense + sparse, ``metric="ip"``; ``vector=None``: sparse alone),
    as in :func:`knn_join`.

    Returns
    -------
    ray.data.Dataset
        One row per input row: ``id``, ``cluster`` (the smallest id in its
        cluster) and ``cluster_size``. Written to ``output`` as Parquet when given
        (the pairs of the range join go to ``output/pairs``, resumable).
    """
    import ray

    _id = check_column_name(id, "id")
    pairs_out = None if output is None else os.path.join(os.fspath(output), "pairs")
    pairs = range_join(table, table, threshold=threshold, metric=metric, left_id=_id, right_id=_id, vector=vector,
                       text=text, encoder=encoder, exclude_self=True, output=pairs_out, overwrite=overwrite,
                       workers=workers, partitions=partitions, device=device, batch_size=batch_size, sparse=sparse)
    edges = pairs.select_columns(["left_id", "right_id"]).to_arrow_refs()
    edges = [t for t in ray.get(edges) if t.num_rows]
    src = inputs.source(table, "table", allow_collection=False)
    ids = pa.chunked_array([inputs.ids(t.column(_id), where="table", name=_id)
                            for t in ray.get(src.dataset.select_columns([_id]).to_arrow_refs()) if t.num_rows])
    ids = inputs.as_array(ids)
    order = np.asarray(pc.sort_indices(ids))
    sorted_ids = ids.take(pa.array(order))
    uniq = sorted_ids.to_numpy(zero_copy_only=False)
    if len(uniq) > 1 and (uniq[1:] == uniq[:-1]).any():
        dup = uniq[1:][uniq[1:] == uniq[:-1]][0]
        raise ValueError(f"table has id {dup!r} more than once; dedup needs unique ids")
    if edges:
        e = pa.concat_tables(edges)
        a = np.searchsorted(uniq, e.column("left_id").to_numpy(zero_copy_only=False))
        b = np.searchsorted(uniq, e.column("right_id").to_numpy(zero_copy_only=False))
    else:
        a = b = np.empty(0, np.int64)
    labels = connected_components(len(uniq), a, b)
    sizes = np.bincount(labels, minlength=len(uniq))
    result = pa.table({"id": sorted_ids, "cluster": sorted_ids.take(pa.array(labels)),
                       "cluster_size": pa.array(sizes[labels], pa.int64())})
    if output is None:
        return ray.data.from_arrow(result)
    import pyarrow.parquet as pq

    fs, root = filesystem(os.fspath(output))
    fs.create_dir(f"{root}/clusters", recursive=True)
    pq.write_table(result, f"{root}/clusters/.clusters.parquet.tmp", filesystem=fs)
    fs.move(f"{root}/clusters/.clusters.parquet.tmp", f"{root}/clusters/clusters.parquet")
    return inputs.read_parquet(f"{output}/clusters" if "://" in os.fspath(output)
                         else os.path.join(os.path.abspath(output), "clusters"))
