"""`--device auto|cpu|cuda[:N]` resolution."""

from __future__ import annotations

import ctypes
import os
import sys

import torch

from advcli.errors import UsageError


def resolve_device(name: str = "auto") -> torch.device:
    """auto -> cuda when a GPU is present, else cpu; asking for cuda without one is an error."""
    key = (name or "auto").strip().lower()
    if key == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if key == "cpu":
        return torch.device("cpu")
    if key.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        return torch.device(key)
    raise UsageError(f"unknown device {name!r}; valid values: auto, cpu, cuda, cuda:N")


def tune_allocator() -> bool:
    """glibc malloc: keep freed memory in the process instead of handing it back to the kernel.

    By default glibc serves big blocks with mmap and trims the heap top on free, so every
    forward/backward pass maps fresh pages for its activations and gradients and pays a page
    fault (and zeroing) per 4 KiB. Raising the mmap threshold to its maximum (32 MiB) and the
    trim threshold out of reach lets those blocks be reused: benchmarks/run.py measured ~19,000
    page faults per PGD step on small-cnn going to 0, and the PGD-step / forward ratio from
    1.96-2.16 to 1.89-1.99. Memory stays reserved after peaks. `ADVCLI_MALLOC=default` opts out.
    """
    if os.environ.get("ADVCLI_MALLOC") == "default":
        return False
    return _mallopt(mmap_threshold=32 * 2**20, trim_threshold=2**31 - 1)


def release_allocator() -> bool:
    """glibc malloc back to handing big blocks to the kernel, for processes whose allocations vary
    in size (decoding images of any size): fixed 128 KiB mmap and trim thresholds. Undoes
    `tune_allocator` in a DataLoader worker, which inherits it through fork: there, decoded images
    of every size fragment a heap that is never trimmed, and a worker's memory grew with the
    number of images it had decoded (benchmarks/stream_data.py memory)."""
    return _mallopt(mmap_threshold=128 * 2**10, trim_threshold=128 * 2**10)


def _mallopt(*, mmap_threshold: int, trim_threshold: int) -> bool:
    """Set glibc's mmap and trim thresholds (bytes); False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, mmap_threshold)) and bool(libc.mallopt(m_trim_threshold, trim_threshold))

