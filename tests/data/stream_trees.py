"""Tiny image trees for the streaming tests: ImageNet layout, images of varying size, and the
same samples written as webdataset shards."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("n01440764", "n01443537", "n01484850")


def image_bytes(h: int, w: int, seed: int, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    # Smooth content (a gradient plus noise) so JPEG keeps it recognisable at any size.
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([yy * 255 // max(h - 1, 1), xx * 255 // max(w - 1, 1), (yy + xx) % 256], -1)
    noise = rng.integers(0, 40, (h, w, 3))
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


def imagenet_tree(root: Path, n_train: int = 4, n_val: int = 2, sizes: tuple[int, int] = (20, 48)) -> Path:
    """root/train/<wnid>/<wnid>_<i>.JPEG and root/val/<wnid>/ILSVRC2012_val_<k>.JPEG, sizes varying.

    Val file numbers are interleaved across classes (as ImageNet's are), so sorting by file name
    is not class by class."""
    rng = np.random.default_rng(1)
    k = 0
    for c_i, c in enumerate(CLASSES):
        for split, n in (("train", n_train), ("val", n_val)):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(sizes[0], sizes[1], 2))
                name = f"{c}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{i * len(CLASSES) + c_i + 1:08d}.JPEG"
                (d / name).write_bytes(image_bytes(h, w, seed=k))
                k += 1
    return root


def equal_size_tree(root: Path, n: int = 3, size: int = 16) -> Path:
    """train/ and test/ of equal-size PNGs: the CIFAR-like case that stays in memory."""
    for split in ("train", "test"):
        for c_i, c in enumerate(("cat", "dog")):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i}.png").write_bytes(image_bytes(size, size, seed=100 * c_i + i, fmt="PNG"))
    return root


def write_shards(tree: Path, out: Path, per_shard: int = 5) -> Path:
    """The tree's samples as webdataset shards (train-*.tar, val-*.tar) in the listing order of a
    streamed folder (train class by class, val by file name), plus classes.txt."""
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    classes = sorted(p.name for p in (tree / "train").iterdir())
    (out / "classes.txt").write_text("\n".join(classes) + "\n")
    for split in ("train", "val"):
        files = sorted((tree / split).glob("*/*"))
        if split == "val":
            files.sort(key=lambda p: p.name)
        for s in range(0, len(files), per_shard):
            with wds.TarWriter(str(out / f"{split}-{s // per_shard:06d}.tar")) as sink:
                for k, p in enumerate(files[s : s + per_shard]):
                    sink.write({"__key__": f"{split}{s + k:06d}", "jpg": p.read_bytes(),
                                "cls": str(classes.index(p.parent.name))})
    return out
