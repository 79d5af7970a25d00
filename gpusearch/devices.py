"""Which device a collection runs on, and what the machine can do.

``device="auto"`` picks the first CUDA device when torch sees one and the CPU
otherwise, so the same code runs on a laptop and on a GPU server.
"""
from __future__ import annotations

import functools

__all__ = ["resolve_device", "cuda_available", "faiss_gpu_count", "is_cuda"]


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when torch can use a CUDA device."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # a broken driver is the same as no GPU for us
        return False


@functools.lru_cache(maxsize=1)
def faiss_gpu_count() -> int:
    """Number of GPUs FAISS itself can use (0 with faiss-cpu)."""
    try:
        import faiss

        return int(faiss.get_num_gpus())
    except Exception:
        return 0


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def resolve_device(device: str | None) -> str:
    """Turn a user's device choice into ``"cpu"`` or ``"cuda:N"``.

    >>> resolve_device("cpu")
    'cpu'
    """
    if device is None or device == "auto":
        return "cuda:0" if cuda_available() else "cpu"
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda:0', got {type(device).__name__}")
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not cuda_available():
            raise ValueError(
                f"device {device!r} was asked for but no CUDA device is visible; "
                "use device='auto' or 'cpu', or install a CUDA build of torch"
            )
        import torch

        index = 0 if device == "cuda" else device.split(":", 1)[1]
        try:
            index = int(index)
        except ValueError:
            raise ValueError(f"device must look like 'cuda:0', got {device!r}") from None
        if not 0 <= index < torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist; this machine has {torch.cuda.device_count()} CUDA devices")
        return f"cuda:{index}"
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
