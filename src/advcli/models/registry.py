"""Architecture names, the Normalize front layer and the Classifier wrapper."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

from advcli.errors import UsageError
from advcli.models import resnet, resnet9, small, torchvision_models, wide_resnet


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
    "resnet9": resnet9.resnet9,
}
# ResNet-9 of any width N: `resnet9-wN` (the checkpoint records the name, so loading needs no flag).
_RESNET9_WIDTH = re.compile(r"resnet9-w(\d+)")


def _constructor(key: str) -> Callable[[int], nn.Module]:
    m = _RESNET9_WIDTH.fullmatch(key)
    return partial(resnet9.resnet9, width=int(m.group(1))) if m else ARCHS[key]


def resolve_arch(name: str) -> str:
    if torchvision_models.is_torchvision_arch(name):
        return torchvision_models.resolve(name)  # torchvision's own spelling, `_` and all
    key = str(name).strip().lower().replace("_", "-")
    m = _RESNET9_WIDTH.fullmatch(key)
    if key not in ARCHS and not (m and int(m.group(1)) in resnet9.WIDTHS):
        widths = resnet9.WIDTHS
        raise UsageError(f"unknown arch {name!r}; valid values: {', '.join(ARCHS)}, "
                         f"resnet9-wN (width N from {widths.start} to {widths.stop - 1}), "
                         f"{torchvision_models.PREFIX}NAME (an ImageNet model of torchvision's)")
    return key


ZOO_ARCH_PREFIX = "robustbench:"


def outside_arch(arch: object) -> bool:
    """Whether a checkpoint's arch is built by code outside advcli (robustbench's model zoo):
    its model is a guest as `--model`'s module is, run in its own layout on NCHW inputs."""
    return str(arch or "").startswith(ZOO_ARCH_PREFIX)


def build_model(
    arch: str,
    num_classes: int = 10,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> Classifier:
    """A fresh, randomly initialised model (seed torch before calling for determinism); an
    arch `robustbench:DATASET/THREAT/NAME` is built by robustbench's model zoo, and
    `torchvision:NAME` by torchvision.models (advcli's own model all the same: it trains it)."""
    if outside_arch(arch):
        from advcli.models.robustbench.zoo import build_architecture

        return Classifier(build_architecture(arch), mean, std)
    if torchvision_models.is_torchvision_arch(arch):
        return Classifier(torchvision_models.build(arch, num_classes), mean, std)
    return Classifier(_constructor(resolve_arch(arch))(num_classes), mean, std)
