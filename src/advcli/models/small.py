"""Small CNNs for CPU work, and the SimpleNet of D. Stutz's PGD adversarial-training article."""

from __future__ import annotations

from torch import nn


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    """~20k parameters; for unit tests and the synthetic demo (seconds per epoch on a CPU)."""
    return nn.Sequential(
        *_conv_bn(3, 16), nn.MaxPool2d(2),
        *_conv_bn(16, 32), nn.MaxPool2d(2),
        *_conv_bn(32, 32), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, num_classes),
    )


def small_cnn(num_classes: int = 10) -> nn.Module:
    """A fast CIFAR net (airbench-like widths, scaled for 2 CPU cores): ~80% CIFAR-10 in 10 epochs."""
    return nn.Sequential(
        *_conv_bn(3, 32),
        *_conv_bn(32, 64), nn.MaxPool2d(2),
        *_conv_bn(64, 128), nn.MaxPool2d(2),
        *_conv_bn(128, 256), nn.MaxPool2d(2),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(256, num_classes, bias=False),
    )


def simplenet(num_classes: int = 10) -> nn.Module:
    """SimpleNet as in the Stutz article: four conv stages (64-128-256-512), BN, ReLU, max-pool."""
    layers: list[nn.Module] = []
    cin = 3
    for cout in (64, 128, 256, 512):
        layers += _conv_bn(cin, cout) + _conv_bn(cout, cout) + [nn.MaxPool2d(2)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)
