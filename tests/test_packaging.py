"""gpukernels/, serve/ and join/ install as gpusearch.kernels, gpusearch.serve and gpusearch.join from a wheel too,
CUDA sources included."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_maps_kernels_serve_and_join_into_gpusearch(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(tmp_path.glob("gpusearch-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = sorted((ROOT / "gpukernels").glob("*.cu"))
    assert len(sources) >= 3, sources
    for cu in sources:
        assert f"gpusearch/kernels/{cu.name}" in names
    assert "gpusearch/serve/__init__.py" in names and "gpusearch/backends/faiss_backend.py" in names
    assert "gpusearch/join/__init__.py" in names and "gpusearch/join.py" not in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import gpusearch, gpusearch.kernels as k, gpusearch.serve, gpusearch.join;"
        "assert gpusearch.__file__.startswith(%r), gpusearch.__file__;"
        "assert gpusearch.join.__file__.startswith(gpusearch.__path__[0]), gpusearch.join.__file__;"
        "assert all(p.exists() for p in k.cuda_sources()) and len(k.cuda_sources()) >= 3" % str(site)
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]


def test_no_top_level_folder_shadows_an_installed_package():
    """Every Python process whose path holds the checkout (``python -m pytest`` and ``python -c`` run
    there, and every Ray worker of a server started there: Ray puts the driver's working directory on
    its workers' path) imports a top-level folder of ours before site-packages. A folder named like an
    installed distribution's module hides that module: ours was called ``kernels`` until
    transformers 5 began to depend on Hugging Face's ``kernels``, and sentence-transformers then
    failed to import in every served Aggregator."""
    from importlib.metadata import packages_distributions

    installed = packages_distributions()
    ours = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "gpusearch")
    assert ours, "found none of the package folders"
    clashes = {name: installed[name] for name in ours if name in installed}
    assert not clashes, f"top-level folders named like installed packages: {clashes}"
