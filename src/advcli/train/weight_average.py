"""`--ema DECAY`: an exponential moving average of the weights, updated after every optimizer
step (Polyak averaging; in adversarial training, Gowal et al. 2020 "Uncovering the limits of
adversarial training against norm-bounded adversarial examples", and Rebuffi et al. 2021).

Update t (1-based) sets `avg <- d_t·avg + (1 - d_t)·w` with the decay warmed up as
`d_t = min(DECAY, t / (t + 9))` (TensorFlow's `ExponentialMovingAverage(num_updates=)` rule:
0.1, 0.18, 0.25, ...): the initial, random weights fade out within tens of steps instead of
weighing on the average for ~1/(1-DECAY) steps, which a short run would not outlast.

BatchNorm's running statistics are averaged with the same decay (their integer step counter
is copied): statistics recomputed with the averaged weights would cost a pass over the
training data, and the average of statistics that each match the weights of their step is what
the averaged model sees at test time when the weights change slowly.

The average is a separate copy of the model, always in eval mode, with no parameter gradients.
It is what `fit` tests, validates, keeps under `--keep best` and writes to the checkpoint; the
trained (raw) weights stay what the optimizer updates and what the catastrophic-overfitting
check attacks. Both are in the training state, with the update count, so `--resume` continues
the average bit-identically.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from advcli.errors import UsageError


def check_decay(decay: float) -> float:
    """--ema's value, checked: a decay strictly between 0 and 1."""
    if not 0.0 < decay < 1.0:
        raise UsageError(f"--ema must be a decay between 0 and 1 (exclusive), e.g. 0.999; got {decay}")
    return float(decay)


class WeightAverage:
    """The running average of a model's weights and buffers (see the module docstring)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = check_decay(decay)
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, update: int) -> float:
        """The decay of update number `update` (1-based)."""
        return min(self.decay, update / (update + 9))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s current weights and buffers."""
        self.updates += 1
        d = self.decay_at(self.updates)
        avg, now = self.model.state_dict(), model.state_dict()
        floats = [k for k, v in avg.items() if v.is_floating_point()]
        torch._foreach_lerp_([avg[k] for k in floats], [now[k] for k in floats], 1.0 - d)
        for k, v in avg.items():
            if not v.is_floating_point():
                v.copy_(now[k])
