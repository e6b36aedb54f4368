"""Architecture names, the Normalize front layer and the Classifier wrapper."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from advcli.errors import UsageError
from advcli.models import resnet, small, wide_resnet


class Normalize(nn.Module):
    """(x - mean) / std per channel, with mean/std as buffers saved in the checkpoint."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """`normalize` then `net`; the net's own state-dict keys sit under `net.`."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


ARCHS: dict[str, Callable[[int], nn.Module]] = {
    "tiny-cnn": small.tiny_cnn,
    "small-cnn": small.small_cnn,
    "simplenet": small.simplenet,
    "resnet18": resnet.resnet18,
    "resnet50": resnet.resnet50,
    "preact-resnet18": resnet.preact_resnet18,
    "resnet32": resnet.resnet32,
    "wrn-28-10": wide_resnet.wrn_28_10,
    "wrn-34-10": wide_resnet.wrn_34_10,
}


def resolve_arch(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key not in ARCHS:
        raise UsageError(f"unknown arch {name!r}; valid values: {', '.join(ARCHS)}")
    return key


def build_model(
    arch: str,
    num_classes: int = 10,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> Classifier:
    """A fresh, randomly initialised model (seed torch before calling for determinism)."""
    return Classifier(ARCHS[resolve_arch(arch)](num_classes), mean, std)
