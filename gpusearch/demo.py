"""The demo corpus: docstrings of the Python standard library installed on this machine.

Read at run time from the interpreter itself, so nothing third-party is
copied into the project: each record is one public function or class,
its id is the dotted name (``json.loads``), its text the first paragraph of
its docstring, and its metadata the module and kind.
"""
from __future__ import annotations

import importlib
import inspect

__all__ = ["stdlib_docs", "DEMO_MODULES", "DEMO_QUERIES"]

DEMO_MODULES = (
    "json", "os", "os.path", "re", "shutil", "subprocess", "random", "math", "statistics", "itertools",
    "functools", "collections", "datetime", "time", "pathlib", "glob", "tempfile", "csv", "zipfile",
    "tarfile", "gzip", "hashlib", "base64", "urllib.parse", "http.client", "socket", "threading",
    "queue", "asyncio", "logging", "argparse", "textwrap", "string", "difflib", "heapq", "bisect",
    "copy", "pickle", "sqlite3", "uuid", "decimal", "fractions", "struct", "io", "contextlib",
    "inspect", "traceback", "unittest", "email.message", "smtplib", "html", "xml.etree.ElementTree",
)

DEMO_QUERIES = (
    ("parse a JSON string into Python objects", None),
    ("run an external program and capture its output", None),
    ("pick a random element from a list", None),
    ("compute the SHA-256 digest of some bytes", None),
    ("delete a directory and everything inside it", {"module": {"$in": ["os", "shutil", "pathlib"]}}),
)


def stdlib_docs(modules=DEMO_MODULES) -> list[dict]:
    """One record per public, documented function or class of ``modules``."""
    seen, out = set(), []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        for attr, obj in sorted(vars(mod).items()):
            if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj)):
                continue
            doc = inspect.getdoc(obj)
            if not doc:
                continue
            text = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
            rid = f"{name}.{attr}"
            if len(text) < 12 or rid in seen:
                continue
            seen.add(rid)
            out.append({"id": rid, "text": f"{rid}: {text}"[:512], "module": name,
                        "kind": "class" if inspect.isclass(obj) else "function"})
    return out
