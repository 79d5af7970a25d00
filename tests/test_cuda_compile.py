"""Every CUDA source compiles on its own with nvcc (no GPU needed)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from gpusearch.kernels import _cuda, cuda_sources

NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH (install the CUDA toolkit to compile-check the kernels)")
@pytest.mark.parametrize("source", cuda_sources(), ids=lambda p: p.name)
def test_nvcc_compiles(source, tmp_path):
    proc = subprocess.run(
        [NVCC, "-arch=sm_90", "-c", str(source), "-o", str(tmp_path / "x.o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"nvcc failed on {source.name}:\n{proc.stderr}"


@pytest.mark.parametrize("source", cuda_sources(), ids=lambda p: p.name)
def test_runtime_source_needs_no_include_path(source):
    """What CuPy hands NVRTC has the shared header pasted in and includes nothing else."""
    text = _cuda.source_text(source.name)
    assert "#include" not in text
    assert "GPUSEARCH_COMMON_CUH" in text
    assert 'extern "C" __global__' in text
