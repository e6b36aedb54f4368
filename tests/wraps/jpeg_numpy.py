"""A masking defence for `advcli audit --wrap`: JPEG-style compression computed in numpy.

Each 8x8 block of each channel goes through the orthonormal DCT, its coefficients are rounded
to a grid of `step`, and back (the JPEG defences of Das et al. 2017 and Guo et al. 2018, without
the entropy coding). The step is fine enough to keep the model's clean accuracy. Because the
preprocessing leaves torch for numpy, the output has no autograd path to the input: a
non-differentiable step that blinds gradient attacks, while the unwrapped model's adversarial
examples (BPDA with the identity) go straight through.
Expected audit: fails `gradients` (no gradient path), `curve` (flat above the floor) and
`transfer` (BPDA).
"""

import numpy as np
import torch
from torch import nn


def _dct_matrix(k: int = 8) -> np.ndarray:
    i = np.arange(k)
    m = np.cos(np.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * k)) * np.sqrt(2 / k)
    m[0] /= np.sqrt(2)
    return m


class JpegNumpy(nn.Module):
    def __init__(self, model: nn.Module, step: float = 2 / 255) -> None:
        super().__init__()
        self.model = model
        self.step = step
        self.dct = _dct_matrix()

    def compress(self, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().cpu().numpy().astype(np.float64)
        n, c, h, w = a.shape
        blocks = a.reshape(n, c, h // 8, 8, w // 8, 8).transpose(0, 1, 2, 4, 3, 5)
        coef = self.dct @ blocks @ self.dct.T
        coef = np.round(coef / self.step) * self.step
        back = (self.dct.T @ coef @ self.dct).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)
        return torch.from_numpy(np.clip(back, 0, 1).astype(np.float32)).to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.compress(x))


def wrap(model: nn.Module) -> nn.Module:
    return JpegNumpy(model)
