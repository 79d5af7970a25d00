"""Every ``>>>`` example in the library's docstrings runs and shows what it says."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import gpusearch
import gpusearch.kernels


def _modules():
    for pkg in (gpusearch, gpusearch.kernels):
        yield pkg.__name__
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name.startswith("gpusearch.serve"):
                continue
            yield info.name


@pytest.mark.parametrize("name", sorted(set(_modules())))
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
