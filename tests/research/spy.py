"""A guest model that records what advcli hands it (tests/test_research_models.py).

`build()` returns a small CNN, in eval mode but for one submodule deliberately left in train
mode (a p=0 dropout: harmless, but its flag must come back as it was). Every forward pass
appends to `SEEN` the input's layout and dtype and the layout of the first conv's weight, as
the module saw them; `BUILT` holds every module built, so a test can inspect it afterwards.
"""

import torch
import torch.nn.functional as F
from torch import nn

SEEN: list[dict] = []
BUILT: list[nn.Module] = []


def _layout(t: torch.Tensor) -> str:
    if t.is_contiguous():
        return "nchw"
    if t.is_contiguous(memory_format=torch.channels_last):
        return "nhwc"
    return "strided"


class Spy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.keep_training = nn.Dropout(0.0)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        SEEN.append({"input": _layout(x), "dtype": x.dtype, "shape": tuple(x.shape),
                     "weight": _layout(self.conv1.weight), "training": self.training})
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.keep_training(F.adaptive_avg_pool2d(out, 1))
        return self.fc(out.reshape(out.size(0), -1))


def build():
    model = Spy().eval()
    model.keep_training.train()
    BUILT.append(model)
    return model
