"""A masking defence for `advcli audit --wrap`: a random input transformation, random
dithering x + a*sin(w*x + phase) with a fresh random phase per image and pass (an extreme form
of the randomised input transformations of Xie et al. 2018 and Guo et al. 2018).

The dither is below one grey level (a = 1/255), so clean accuracy is the model's own, but its
derivative 1 + a*w*cos(w*x + phase) swings by about +-8 with the random phase: the sign of one
pass's input gradient is mostly noise, so a plain attack wanders. Averaged over passes
(Expectation over Transformation) the swings cancel and the model's own gradient comes back.
Expected audit: `gradients` warns (outputs change between passes), `transfer` fails (EoT and
the unwrapped model beat the plain attack), `curve` fails (verdicts flip when asked again),
`convergence` fails (more steps and restarts average the noise); precision is skipped.
"""

import math

import torch
from torch import nn


class RandomDither(nn.Module):
    def __init__(self, model: nn.Module, amplitude: float = 1 / 255, frequency: float = 2000.0) -> None:
        super().__init__()
        self.model = model
        self.amplitude = amplitude
        self.frequency = frequency

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phase = torch.rand(x.shape[0], 1, 1, 1, device=x.device) * 2 * math.pi
        return self.model((x + self.amplitude * torch.sin(self.frequency * x + phase)).clamp(0, 1))


def wrap(model: nn.Module) -> nn.Module:
    return RandomDither(model)
