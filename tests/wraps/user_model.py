"""Model files for `advcli audit --model FILE.py:CALLABLE` tests."""

import torch
from torch import nn

from advcli.models import build_model


def tiny() -> nn.Module:
    """The tiny-cnn architecture, untrained: weights come from a safetensors file."""
    return build_model("tiny-cnn", 10)


def wrong_shape() -> nn.Module:
    """Returns one number per image instead of one logit per class."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 1))


def raises() -> nn.Module:
    raise RuntimeError("weights.bin not found")


def not_a_module() -> object:
    return torch.zeros(3)
