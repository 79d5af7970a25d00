"""Progress bars for long work (bulk upsert, index training, compaction), shown only to a person.

A bar appears when stderr is a terminal or when ``GPUSEARCH_PROGRESS=1``; CI
logs and services stay clean (``GPUSEARCH_PROGRESS=0`` turns bars off).
"""
from __future__ import annotations

import os
import sys

__all__ = ["progress", "progress_enabled"]


def progress_enabled() -> bool:
    setting = os.environ.get("GPUSEARCH_PROGRESS")
    if setting is not None:
        return setting not in ("0", "", "false", "no")
    return sys.stderr.isatty() and not os.environ.get("CI")


def progress(total: int, desc: str, unit: str = "vec", *, min_total: int = 0):
    """A tqdm bar over ``total`` units, or a silent stand-in when nobody watches."""
    from tqdm.auto import tqdm

    disable = not progress_enabled() or total < min_total
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=disable, leave=False)
