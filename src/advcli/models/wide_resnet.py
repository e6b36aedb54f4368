"""Wide ResNets (Zagoruyko & Komodakis) in the layout used by RobustBench/TRADES checkpoints."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(o))))
        return out + (x if self.convShortcut is None else self.convShortcut(o))


class _Stage(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[_WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int) -> None:
        super().__init__()
        n = (depth - 4) // 6
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.block1 = _Stage(n, ch[0], ch[1], 1)
        self.block2 = _Stage(n, ch[1], ch[2], 2)
        self.block3 = _Stage(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def wrn_28_10(num_classes: int = 10) -> nn.Module:
    return WideResNet(28, 10, num_classes)


def wrn_34_10(num_classes: int = 10) -> nn.Module:
    return WideResNet(34, 10, num_classes)
