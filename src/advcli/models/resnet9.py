"""ResNet-9 with a configurable width: the fast CIFAR net of the speed-run line (D. Page's
DAWNBench ResNet-9, 2018; the layout KellerJordan/cifar10-airbench refined), sized for CPUs.

Layout, with width w (Page's net is w = 64):
    prep   conv 3->w
    layer1 conv w->2w, max-pool 2, then a residual pair of convs 2w->2w
    layer2 conv 2w->4w, max-pool 2
    layer3 conv 4w->8w, max-pool 2, then a residual pair of convs 8w->8w
    head   global max-pool, linear 8w->classes (no bias), logits x 0.125
Every conv is 3x3 without bias, followed by BatchNorm and ReLU.

Why this shape on a CPU: 8 convolutions, half of them on 16x16 maps or smaller, and no
1x1 shortcuts; pooling right after the convolution that widens (before BatchNorm and ReLU)
runs those two on a quarter of the pixels; max-pooling everything at the end needs no
flattening of large maps. The fixed 1/8 logit scale (Page) keeps the early softmax soft, which
lets the net train at the high learning rates short schedules use. It runs in NHWC
(`--channels-last`) and bf16 (`--amp bf16`) like every model here.

Names: `resnet9` (the default width, `DEFAULT_WIDTH`) and `resnet9-wN` for width N (4 to 128).
`DEFAULT_WIDTH` was chosen from the time of one training step of candidate widths on 2 CPU
cores (batch 128, 32x32, fp32; measured with `benchmarks`-style warm-up excluded): see the
commit that added this file. The accuracy per second of each width is a measurement still to
be made.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_WIDTH = 16
WIDTHS = range(4, 129)


def _conv(cin: int, cout: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """x + f(x), f two convolutions of the same width."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.f = nn.Sequential(_conv(width, width), _conv(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def resnet9(num_classes: int = 10, width: int = DEFAULT_WIDTH) -> nn.Module:
    w = int(width)
    return nn.Sequential(
        _conv(3, w),
        _conv(w, 2 * w, pool=True), Residual(2 * w),
        _conv(2 * w, 4 * w, pool=True),
        _conv(4 * w, 8 * w, pool=True), Residual(8 * w),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8 * w, num_classes, bias=False), Scale(0.125),
    )
