"""A join's output: one Parquet file per left batch, resumable after a crash.

Layout of an output directory (local path or pyarrow filesystem URI)::

    part-<uuid>.parquet          one left batch's pairs: left_id, right_id, score, rank
    _gpusearch_done/part-<uuid>.parquet   the left ids that part finished
    _gpusearch_join.json         the join's parameters (a rerun must match them to resume)
    _gpusearch_stats.json        what the last run did and how long its phases took

A part is written under a hidden name and renamed; its id file is renamed just
before it, so a part that landed always has its ids, and an id file without its
part (a crash between the two renames) is dropped on the next run.
"""
from __future__ import annotations

import json
import os
import uuid
from typing import Mapping

import pyarrow as pa

__all__ = ["PLAN_FILE", "DONE_DIR", "STATS_FILE", "write_part", "write_stats", "read_stats", "prepare_output", "filesystem"]

#: In an output directory: the join's parameters, and one file of finished left ids per part.
PLAN_FILE = "_gpusearch_join.json"
DONE_DIR = "_gpusearch_done"
STATS_FILE = "_gpusearch_stats.json"


def filesystem(path: str):
    """The pyarrow filesystem of a local path or URI, and the path inside it."""
    import pyarrow.fs as pafs

    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def write_part(output: str, table: pa.Table, left_ids: pa.Array) -> None:
    """Write a part and its finished left ids; the part's rename is the commit."""
    import pyarrow.parquet as pq

    fs, root = filesystem(output)
    name = f"part-{uuid.uuid4().hex}.parquet"
    done_tmp, done = f"{root}/{DONE_DIR}/.{name}.tmp", f"{root}/{DONE_DIR}/{name}"
    part_tmp, part = f"{root}/.{name}.tmp", f"{root}/{name}"
    pq.write_table(pa.table({"left_id": left_ids}), done_tmp, filesystem=fs)
    fs.move(done_tmp, done)
    pq.write_table(table, part_tmp, filesystem=fs)
    fs.move(part_tmp, part)


def write_stats(output: str, stats: dict) -> None:
    """``output/_gpusearch_stats.json``: what the last run did and how long its phases took."""
    fs, root = filesystem(output)
    with fs.open_output_stream(f"{root}/{STATS_FILE}.tmp") as f:
        f.write(json.dumps(stats, indent=1).encode())
    fs.move(f"{root}/{STATS_FILE}.tmp", f"{root}/{STATS_FILE}")


def read_stats(output) -> dict:
    """The stats the last join into ``output`` wrote: rows, pairs, partitions, load and join seconds."""
    fs, root = filesystem(os.fspath(output))
    with fs.open_input_stream(f"{root}/{STATS_FILE}") as f:
        return json.loads(f.read().decode())


def _flatten(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and k != "filter":
            out.update(_flatten(v, f"{k}."))
        else:
            out[prefix + k] = v
    return out


def prepare_output(output: str, plan: dict, *, overwrite: bool) -> pa.Array | None:
    """Create or reopen an output directory; the left ids it already finished (None when new)."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, root = filesystem(output)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise ValueError(f"output {output!r} is a file; expected a directory for the join's Parquet parts")
    plan_path = f"{root}/{PLAN_FILE}"
    if info.type == pafs.FileType.Directory:
        entries = fs.get_file_info(pafs.FileSelector(root))
        if overwrite:
            fs.delete_dir_contents(root)
        elif fs.get_file_info(plan_path).type == pafs.FileType.File:
            with fs.open_input_stream(plan_path) as f:
                old = json.loads(f.read().decode())
            if old != plan:
                flat_old, flat_new = _flatten(old), _flatten(plan)
                changed = sorted(k for k in set(flat_old) | set(flat_new) if flat_old.get(k) != flat_new.get(k))
                raise ValueError(f"output {output!r} holds a different join (it differs in {', '.join(changed)}); "
                                 "use a new output path, or overwrite=True to start again")
        elif entries:
            raise ValueError(f"output {output!r} is a non-empty directory that is not a gpusearch join output; "
                             "use a new or empty path")
    fs.create_dir(f"{root}/{DONE_DIR}", recursive=True)
    if fs.get_file_info(plan_path).type != pafs.FileType.File:
        with fs.open_output_stream(plan_path + ".tmp") as f:
            f.write(json.dumps(plan, sort_keys=True).encode())
        fs.move(plan_path + ".tmp", plan_path)
    # Leftovers of an interrupted run: hidden temporaries, and id files whose part never landed.
    parts = {i.base_name for i in fs.get_file_info(pafs.FileSelector(root)) if i.type == pafs.FileType.File}
    for name in list(parts):
        if name.startswith(".") and name.endswith(".tmp"):
            fs.delete_file(f"{root}/{name}")
    done = []
    for i in fs.get_file_info(pafs.FileSelector(f"{root}/{DONE_DIR}")):
        if i.type != pafs.FileType.File:
            continue
        if i.base_name.startswith(".") or i.base_name not in parts:
            fs.delete_file(i.path)
            continue
        done.append(pq.read_table(i.path, filesystem=fs).column("left_id"))
    if not done:
        return None
    return pa.chunked_array(done).combine_chunks()


