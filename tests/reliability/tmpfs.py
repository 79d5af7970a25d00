"""A small tmpfs for the disk-full tests: mounted on an empty directory, unmounted whatever happens.

Mounting needs root (or CAP_SYS_ADMIN); without it the test skips, saying why.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(path: str | os.PathLike, size: str):
    """Mount a fresh tmpfs of ``size`` (``"3m"``) on the empty directory ``path`` and yield it as a
    Path; afterwards unmount it, detaching it lazily when files on it are still open elsewhere."""
    if os.geteuid() != 0:
        pytest.skip(f"mounting a tmpfs needs root (or CAP_SYS_ADMIN); running as uid {os.geteuid()}")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot run mount here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here (needs CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield Path(path)
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)  # still busy: detach it
