"""Research-style CIFAR-10 model code, written the way papers' repositories write it, for
`--model tests/research/models.py:CALLABLE` (tests/test_research_models.py).

Every network is the same classifier underneath, built by hand so that its behaviour on advcli's
`synthetic` data follows from its weights: a 1x1 convolution scores each pixel against the ten
class colours of the synthetic blobs, relu(r^2 - |pixel - colour_k|^2), the scores are averaged
over the image, and a constant bias `BIAS` on the last class stands for "no blob found". A
pixel within r of a class colour (the blob's texture and noise keep it ~0.045 away) scores,
so an image is classified by its blob's colour when the blob is large enough to beat the bias;
an Linf 8/255 attack can push each blob pixel ~0.054 further away, which costs small blobs
their class and leaves large ones robust (blob radii are drawn from 7 to 11 pixels). So some
images are clean-correct, some of those robust, some not: a mix of flags by construction.

Each callable wraps that classifier in one idiom of research code: flattening with `.view`,
in-place ReLUs, normalisation as the first layer or inside `forward`, `F.dropout(...,
training=self.training)`, BatchNorm, a tuple or dict output, and a model that expects
[0, 255] inputs.
"""

import torch
import torch.nn.functional as F
from torch import nn

# The synthetic data's class colours (advcli.data.synthetic._palette).
PALETTE = torch.tensor([
    [0.85, 0.20, 0.20], [0.20, 0.75, 0.25], [0.20, 0.30, 0.85], [0.85, 0.80, 0.20],
    [0.80, 0.25, 0.80], [0.20, 0.80, 0.80], [0.95, 0.55, 0.15], [0.55, 0.20, 0.95],
    [0.60, 0.60, 0.60], [0.15, 0.15, 0.15],
])
RADIUS = 0.15
SCALE = 100.0
BIAS = 0.35  # logit of the last class when no blob is found; see the module docstring
MEAN = torch.tensor([0.4914, 0.4822, 0.4465])
STD = torch.tensor([0.2471, 0.2435, 0.2616])


def _colour_conv(scale: float = 1.0) -> nn.Conv2d:
    """1x1 conv whose output plus -|x|^2 is r^2 - |x - colour_k|^2 (inputs in `scale` units)."""
    conv = nn.Conv2d(3, 10, kernel_size=1)
    colours = PALETTE * scale
    with torch.no_grad():
        conv.weight.copy_(2 * colours[:, :, None, None])
        conv.bias.copy_((RADIUS * scale) ** 2 - (colours**2).sum(1))
    return conv


def _head() -> nn.Linear:
    fc = nn.Linear(10, 10)
    with torch.no_grad():
        fc.weight.copy_(SCALE * torch.eye(10))
        fc.bias.zero_()
        fc.bias[-1] = BIAS
    return fc


class ViewFlatten(nn.Module):
    """Flattens a 2x2 feature map with `out.view(out.size(0), -1)`, as most research code does
    (which fails on a channels_last tensor); the head averages the four quadrants."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _colour_conv()
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.linear = nn.Linear(40, 10)
        with torch.no_grad():  # feature c * 4 + quadrant -> class c, a quarter each
            self.linear.weight.copy_(_head().weight.repeat_interleave(4, dim=1) / 4)
            self.linear.bias.copy_(_head().bias)

    def forward(self, x):
        out = self.conv1(x) - (x * x).sum(1, keepdim=True)
        out = self.pool(self.relu(out))
        out = out.view(out.size(0), -1)
        return self.linear(out)


class FunctionalInplace(nn.Module):
    """`F.relu(x, inplace=True)` and a flatten by `.view` after a strided reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _colour_conv()
        self.linear = _head()

    def forward(self, x):
        out = self.conv1(x)
        out -= (x * x).sum(1, keepdim=True)
        out = F.relu(out, inplace=True)
        out = F.avg_pool2d(out, out.size(3))
        return self.linear(out.view(-1, 10))


class Normalize(nn.Module):
    def __init__(self, mean, std) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.as_tensor(std).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class Unnormalize(nn.Module):
    """The classifier on normalised inputs: it maps them back with a 1x1 conv first."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 3, kernel_size=1)
        with torch.no_grad():
            self.conv0.weight.copy_(torch.diag(STD)[:, :, None, None])
            self.conv0.bias.copy_(MEAN)
        self.body = ViewFlatten()

    def forward(self, x):
        return self.body(self.conv0(x))


class NormInForward(nn.Module):
    """Normalisation inside `forward`: (x - mu) / sigma with a buffer and a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mu", MEAN.view(1, 3, 1, 1).clone())
        self.sigma = STD.view(1, 3, 1, 1).clone()  # a plain attribute, as papers often have it
        self.net = Unnormalize()

    def forward(self, x):
        x = (x - self.mu) / self.sigma
        return self.net(x)


class Dropout(nn.Module):
    """`F.dropout(x, p, training=self.training)`: random unless the module is in eval mode."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p
        self.conv1 = _colour_conv()
        self.linear = _head()

    def forward(self, x):
        out = F.relu(self.conv1(x) - (x * x).sum(1, keepdim=True))
        out = F.adaptive_avg_pool2d(out, 1).view(x.size(0), -1)
        out = F.dropout(out, self.p, training=self.training)
        return self.linear(out)


class BatchNormNet(nn.Module):
    """BatchNorm after the first conv; its running statistics and affine cancel out, so the
    function is the shared classifier (in eval mode only: batch statistics would change it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _colour_conv()
        self.bn1 = nn.BatchNorm2d(10)
        with torch.no_grad():
            self.bn1.running_mean.fill_(0.5)
            self.bn1.running_var.fill_(4.0 - self.bn1.eps)
            self.bn1.weight.fill_(2.0)
            self.bn1.bias.fill_(0.5)
        self.linear = _head()

    def forward(self, x):
        out = self.bn1(self.conv1(x)) - (x * x).sum(1, keepdim=True)
        out = F.relu(out)
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(out.view(out.size(0), -1))


class TupleOut(ViewFlatten):
    def forward(self, x):
        logits = super().forward(x)
        return logits, logits.detach()


class DictOut(ViewFlatten):
    def forward(self, x):
        return {"logits": super().forward(x), "features": x.mean((2, 3))}


class Scale255(nn.Module):
    """Trained on [0, 255] pixels (no division by 255 anywhere): on [0, 1] images no pixel is
    near any colour, every score is 0 and the bias answers the last class for every image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _colour_conv(255.0)
        self.linear = _head()

    def forward(self, x):
        out = F.relu(self.conv1(x) - (x * x).sum(1, keepdim=True))
        out = F.adaptive_avg_pool2d(out, 1).view(x.size(0), -1)
        return self.linear(out / 255**2)


def view_flatten():
    return ViewFlatten()


def functional_inplace():
    return FunctionalInplace()


def norm_first():
    return nn.Sequential(Normalize(MEAN, STD), Unnormalize())


def norm_in_forward():
    return NormInForward()


def dropout():
    return Dropout()


def batchnorm():
    return BatchNormNet()


def tuple_out():
    return TupleOut()


def dict_out():
    return DictOut()


def scale_255():
    return Scale255()
