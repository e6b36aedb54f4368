"""Decoding and the two image transforms of streamed data (torchvision.io + transforms.v2).

- `decode`: bytes -> uint8 RGB [3,H,W] (JPEG/PNG/WEBP/GIF by torchvision.io; grayscale, CMYK,
  palette and alpha images become 3 channels; other formats, e.g. BMP, through Pillow);
- `eval_view`: resize the shorter side to round(R / 0.875), centre-crop R x R (the ImageNet
  evaluation convention: 224 from 256);
- `train_view`: RandomResizedCrop(R) + horizontal flip, every parameter drawn from a `uniform`
  callable, so the same code serves a per-item `torch.Generator` and the global NumPy RNG (the
  `buggy` mode).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from advcli.errors import DataError

# RandomResizedCrop's defaults (torchvision's, the ImageNet recipe's).
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
# The eval resize: the shorter side to R / CROP_FRACTION, then the centre R x R.
CROP_FRACTION = 0.875


def decode(data: bytes, name: str) -> torch.Tensor:
    """uint8 [3,H,W] RGB; a DataError naming `name` when the bytes are no readable image."""
    try:
        img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        img = _decode_pil(data, name)
    if img.dtype != torch.uint8:  # 16-bit PNGs
        img = F.to_dtype(img, torch.uint8, scale=True)
    return img


def _decode_pil(data: bytes, name: str) -> torch.Tensor:
    # Formats torchvision.io does not read (BMP, TIFF), and its error text for broken files is a
    # C++ source location: Pillow's is the one to show.
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = im.convert("RGB")
            return torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(
                rgb.height, rgb.width, 3).permute(2, 0, 1).contiguous()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{name} is not a readable image ({exc}); remove it, or pass --skip-bad") from exc


def resize_side(image_size: int) -> int:
    return round(image_size / CROP_FRACTION)


def eval_view(img: torch.Tensor, image_size: int) -> torch.Tensor:
    """Resize (shorter side, antialiased) + centre crop to image_size x image_size."""
    img = F.resize(img, [resize_side(image_size)], antialias=True)
    return F.center_crop(img, [image_size, image_size])


def crop_params(height: int, width: int, uniform: Callable[[], float]) -> tuple[int, int, int, int]:
    """RandomResizedCrop's (top, left, h, w): a box of a random area fraction and aspect ratio,
    ten tries, then the centre crop clamped to the ratio range (torchvision's rule)."""
    area = height * width
    log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
    for _ in range(10):
        target = area * (SCALE[0] + (SCALE[1] - SCALE[0]) * uniform())
        ratio = math.exp(log_lo + (log_hi - log_lo) * uniform())
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(uniform() * (height - h + 1)), height - h)
            left = min(int(uniform() * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        w, h = width, round(width / RATIO[0])
    elif in_ratio > RATIO[1]:
        h, w = height, round(height * RATIO[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_view(img: torch.Tensor, image_size: int, uniform: Callable[[], float]) -> torch.Tensor:
    """RandomResizedCrop(image_size) + horizontal flip with p = 0.5, drawn from `uniform`."""
    top, left, h, w = crop_params(img.shape[-2], img.shape[-1], uniform)
    out = F.resized_crop(img, top, left, h, w, [image_size, image_size], antialias=True)
    return F.horizontal_flip(out) if uniform() < 0.5 else out


def torch_uniform(generator: torch.Generator) -> Callable[[], float]:
    return lambda: float(torch.rand((), generator=generator))
