"""What outside code a model came from and what it built: `UserCode` records, the built
module's `state_dict_sha256`, and `seeded_build` (user code builds with torch seeded to 0).

Kept apart from `models.user` (which loads the code) so that every way of building outside
code (`--model`, `--wrap`, the RobustBench zoo) records it the same way without importing
the loader back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class UserCode:
    """Where a user callable came from: `path:callable` and the file's sha256, and what it
    built: `weights_sha256` of the module its role produced (`state_dict_sha256`)."""

    path: str
    callable: str
    sha256: str
    role: str  # "model" or "wrap"
    weights_sha256: str | None = None

    @property
    def spec(self) -> str:
        return f"{self.path}:{self.callable}"

    @property
    def short(self) -> str:
        """How labels name the code: the file's stem and the callable, `net:build`."""
        return f"{Path(self.path).stem}:{self.callable}"

    def to_dict(self) -> dict[str, str]:
        """The record results keep (`user_code:` of eval, attack and audit files)."""
        d = {"role": self.role, "file": self.path, "callable": self.callable, "sha256": self.sha256}
        if self.weights_sha256 is not None:
            d["weights_sha256"] = self.weights_sha256
        return d


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over `module.state_dict()`: each entry's name, dtype, shape and bytes, in order.

    Two modules with equal hashes hold the same parameters and buffers bit for bit, whatever
    device they live on."""
    h = hashlib.sha256()
    for name, value in module.state_dict().items():
        if not isinstance(value, torch.Tensor):  # `get_extra_state` may return anything
            h.update(f"{name}\0extra\0{value!r}\0".encode())
            continue
        if isinstance(value, nn.parameter.UninitializedTensorMixin):  # lazy modules before use
            h.update(f"{name}\0uninitialized\0".encode())
            continue
        t = value.detach()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        # Raw bytes of any dtype (bfloat16 and bool included) without going through numpy's types.
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextmanager
def seeded_build(device: torch.device | str = "cpu") -> Iterator[None]:
    """Run user code with torch seeded to 0, so random initialisation is reproducible, and
    leave the caller's random state as it was (the CPU's and the target CUDA device's)."""
    dev = torch.device(device)
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(0)
        yield
