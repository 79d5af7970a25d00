"""Every ``>>>`` example in the library's docstrings runs and shows what it says.

One case per docstring that has examples (found with :class:`doctest.DocTestFinder`), named by the
doctest's name (``gpusearch.merge.merge_hits``), so no case passes for want of an example. Modules
under ``gpusearch.serve`` are left out: importing them needs Ray.
"""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import gpusearch
import gpusearch.kernels

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_names():
    for pkg in (gpusearch, gpusearch.kernels):
        yield pkg.__name__
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if not info.name.startswith("gpusearch.serve"):
                yield info.name


def _collect() -> tuple[list[doctest.DocTest], dict[str, str]]:
    """The docstrings with examples, by name, and the modules that failed to import (name -> error)."""
    finder = doctest.DocTestFinder()
    tests, broken = [], {}
    for name in sorted(set(_module_names())):
        try:
            module = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - reported as that module's failing case, not a collection error
            broken[name] = f"{type(e).__name__}: {e}"
            continue
        tests += [t for t in finder.find(module) if t.examples]
    return sorted(tests, key=lambda t: t.name), broken


DOCTESTS, BROKEN = _collect()


def test_every_module_was_searched():
    assert not BROKEN, f"modules that do not import, so their examples cannot run: {BROKEN}"
    assert DOCTESTS, "no docstring with a >>> example was found"


@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_docstring_examples(test):
    # A fresh copy of the globals: a run clears the ones it was given.
    test = doctest.DocTest(test.examples, dict(test.globs), test.name, test.filename, test.lineno, test.docstring)
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    result = runner.run(test, out=report.append)
    assert result.failed == 0, "".join(report)
