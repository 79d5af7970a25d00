"""Device math on plain arrays: top-k selection, fused distance + top-k, k-way merge,
and an IVF-Flat index searched with torch on the device that holds it.

Arrays in, arrays out: NumPy arrays, torch tensors (CPU or CUDA) or CuPy
arrays, answered in the same library on the same device. Host inputs run on
NumPy and never touch CUDA; device inputs run CUDA C kernels (``*.cu`` in this
folder) that CuPy compiles on first use. Each kernel has a NumPy reference
that defines its exact result.

Examples
--------
>>> import numpy as np
>>> from gpusearch import kernels
>>> D, I = kernels.topk(np.array([[0.1, 0.9, 0.5]], np.float32), 2)
>>> I
array([[1, 2]])
"""
from ._checks import KERNEL_K, MAX_K
from ._cuda import cuda_sources
from .fused import fused_search, fused_search_reference
from .ivf import IvfLists, ivf_build, ivf_search, ivf_search_reference, ivf_train
from .merge import merge_topk, merge_topk_reference
from .topk import topk, topk_reference

__all__ = [
    "MAX_K",
    "KERNEL_K",
    "topk",
    "topk_reference",
    "fused_search",
    "fused_search_reference",
    "merge_topk",
    "merge_topk_reference",
    "cuda_sources",
    "IvfLists",
    "ivf_train",
    "ivf_build",
    "ivf_search",
    "ivf_search_reference",
]
