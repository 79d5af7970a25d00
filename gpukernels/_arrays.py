"""Where an input array lives, and moving it to the library a kernel computes in.

Kernels compute in NumPy on the host and in CuPy on a CUDA device. Torch
tensors are viewed, never copied: CPU tensors as NumPy arrays, CUDA tensors as
CuPy arrays through DLPack, with the kernels run on torch's current stream.
Results go back as the caller's library on the caller's device.

Neither torch nor CuPy is imported here unless the caller already holds one
of their arrays, so NumPy callers never touch CUDA.
"""
from __future__ import annotations

import contextlib
import sys
from typing import NamedTuple

import numpy as np

__all__ = ["Placement", "placement_of", "common_placement", "to_compute", "from_compute", "compute_context"]


class Placement(NamedTuple):
    """The library an array belongs to and its CUDA device (``None`` on the host)."""

    library: str
    device: int | None

    @property
    def on_gpu(self) -> bool:
        return self.device is not None

    def describe(self) -> str:
        where = "host" if self.device is None else f"cuda:{self.device}"
        return f"{self.library} on {where}"


def placement_of(x, name: str) -> Placement:
    """Where ``x`` lives; ``TypeError`` for anything but NumPy, torch and CuPy arrays.

    Examples
    --------
    >>> placement_of(np.zeros(3), "scores")
    Placement(library='numpy', device=None)
    """
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(x, cupy.ndarray):
        return Placement("cupy", x.device.id)
    if isinstance(x, np.ndarray):
        return Placement("numpy", None)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        if x.device.type == "cpu":
            return Placement("torch", None)
        if x.device.type == "cuda":
            return Placement("torch", x.device.index if x.device.index is not None else torch.cuda.current_device())
        raise TypeError(f"{name} is a torch tensor on device {x.device}; expected a CPU or CUDA tensor")
    raise TypeError(f"{name} must be a NumPy array, torch tensor or CuPy array, got {type(x).__module__}.{type(x).__name__}")


def common_placement(arrays: dict) -> Placement:
    """The one placement shared by every non-None array in ``arrays`` (name -> array).

    Examples
    --------
    >>> common_placement({"queries": np.zeros((1, 2)), "mask": None})
    Placement(library='numpy', device=None)
    """
    first_name, first = None, None
    for name, x in arrays.items():
        if x is None:
            continue
        p = placement_of(x, name)
        if first is None:
            first_name, first = name, p
        elif p != first:
            raise TypeError(
                f"{name} must be in the same library and on the same device as {first_name} "
                f"({first.describe()}), got {p.describe()}; convert it first"
            )
    return first


def cupy_module():
    """CuPy, or an ImportError that says how to install it (the GPU kernels need it)."""
    try:
        import cupy
    except ImportError:
        raise ImportError(
            "GPU arrays need CuPy for the gpusearch kernels: pip install 'gpusearch[gpu]' "
            "(or cupy-cuda12x / cupy-cuda13x to match your CUDA)"
        ) from None
    return cupy


def to_compute(x, placement: Placement, name: str):
    """``x`` as a NumPy array (host) or CuPy array (device), sharing memory where possible."""
    if x is None or placement.library in ("numpy", "cupy"):
        return x
    try:
        if placement.device is None:
            return x.numpy(force=True)
        cupy = cupy_module()
        import torch

        x = x.detach()
        if x.dtype == torch.bool:  # DLPack bool support varies between versions; bytes do not
            return cupy.from_dlpack(x.contiguous().view(torch.uint8)).view(cupy.bool_)
        return cupy.from_dlpack(x)
    except (TypeError, RuntimeError, BufferError) as exc:
        raise TypeError(f"{name} has torch dtype {x.dtype}, which the kernels cannot read ({exc})") from None


def from_compute(a, placement: Placement):
    """Hand ``a`` (NumPy or CuPy) back in the caller's library."""
    if placement.library != "torch":
        return a
    import torch

    if placement.device is None:
        return torch.from_numpy(np.ascontiguousarray(a))
    return torch.from_dlpack(a)


@contextlib.contextmanager
def compute_context(placement: Placement):
    """Make the array's device current; for torch CUDA also torch's current stream."""
    if placement.device is None:
        yield
        return
    cupy = cupy_module()

    with cupy.cuda.Device(placement.device):
        if placement.library == "torch":
            import torch

            stream = torch.cuda.current_stream(placement.device)
            with cupy.cuda.ExternalStream(stream.cuda_stream):
                yield
        else:
            yield
