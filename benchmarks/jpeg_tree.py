"""Generate an ImageNet-layout folder of variable-size JPEGs (and webdataset shards of them).

For the streaming data path's tests, its memory and throughput benchmarks, and recipes/imagenet's
quick scale, which need ImageNet's shape (a folder per class, JPEGs of many sizes and aspect
ratios) without ImageNet's 150 GB:

    OUT/train/<wnid>/<wnid>_<j>.JPEG      OUT/val/<wnid>/val_<i>.JPEG
    OUT/classes.txt   (one wnid a line, in class-index order: the shards' class names)
    OUT/synsets.txt   ("<wnid> <name>" a line, as ImageNet's synset mapping)
    OUT/train-000000.tar ... OUT/val-000000.tar   (with --shards N: samples KEY.jpg + KEY.cls)

Each image's width and height are drawn independently and uniformly from [--min-size,
--max-size] (pixels), so sizes and aspect ratios vary as ImageNet's do. With `--source` (a zip or
folder of `train/<class>/*` and `test/<class>/*`, such as the CIFAR-10 JPEG zip) each image is a
source image of its class upscaled (bicubic) to its drawn size, so the data stays learnable:
training images come from the source's train split, validation images from its test split.
Without a source the content is synthetic: a per-class colour under smooth noise.

Validation files are numbered in a seeded shuffled order, so their sorted file names interleave
the classes as ImageNet's validation set does (the order `--subset first` takes). Everything is
a function of --seed: each image's draws come from its own generator seeded by (seed, split,
index), so --workers does not change a byte.

    python benchmarks/jpeg_tree.py OUT --n-train 5000 --n-val 500 --classes 10 \\
        --min-size 64 --max-size 160 --source ../shared/data/cifar10-jpeg.zip --seed 0
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = {"train": 0, "val": 1}
SOURCE_SPLIT = {"train": "train", "val": "test"}  # the source's held-out split feeds val
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
QUALITY = 90  # JPEG quality (libjpeg scale 1-95); ImageNet's files are mostly near it


def wnid(k: int) -> str:
    """A WordNet-id-like folder name for class k (not a real synset)."""
    return f"n{k:08d}"


@dataclass
class Item:
    split: str
    index: int  # position in the split's write order (the shards' order)
    cls: int
    stem: str  # file name without extension; also the shard sample key (no dots)
    source: bytes | None = None  # the source image's encoded bytes, when there is a source
    origin: str | None = None  # the source image's name in its zip or folder


@dataclass
class Summary:
    out: Path
    classes: list[str]
    counts: dict[str, int]
    shards: dict[str, list[Path]] = field(default_factory=dict)
    bytes_written: int = 0


# --------------------------------------------------------------------------- sources

class Source:
    """Encoded images of a zip or folder laid out `train/<class>/*` + `test/<class>/*`
    (optionally under one top folder; `val/` stands in for `test/`)."""

    def __init__(self, path: str) -> None:
        text = path[len("folder:"):] if path.startswith("folder:") else path
        self.path = Path(text)
        if not self.path.exists():
            raise SystemExit(f"--source {path!r}: no such file or folder")
        self._zip = zipfile.ZipFile(self.path) if self.path.is_file() else None
        names = self._zip.namelist() if self._zip else [
            p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()]
        self.files: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
        for name in sorted(names):
            parts = name.split("/")
            if not name.lower().endswith(IMAGE_EXTS) or len(parts) < 3:
                continue
            split = {"val": "test"}.get(parts[-3], parts[-3])
            if split in self.files:
                self.files[split].setdefault(parts[-2], []).append(name)
        if not self.files["train"] or not self.files["test"]:
            raise SystemExit(f"--source {path!r} has no train/<class>/ and test/<class>/ images")
        self.classes = sorted(self.files["train"])

    def read(self, name: str) -> bytes:
        return self._zip.read(name) if self._zip else (self.path / name).read_bytes()


# --------------------------------------------------------------------------- the plan

def _per_class(n: int, k: int) -> list[int]:
    return [n // k + (1 if c < n % k else 0) for c in range(k)]


def plan(n_train: int, n_val: int, k: int, seed: int, source: Source | None) -> list[Item]:
    """Every image to write, in write order: each split class-balanced and shuffled."""
    rng = np.random.default_rng([seed, 7])
    items: list[Item] = []
    for split, n in (("train", n_train), ("val", n_val)):
        pairs = [(c, j) for c, m in enumerate(_per_class(n, k)) for j in range(m)]
        order = rng.permutation(len(pairs))
        picks: dict[int, list[str]] = {}
        if source is not None:
            for c, m in enumerate(_per_class(n, k)):
                files = source.files[SOURCE_SPLIT[split]][source.classes[c]]
                if m > len(files):
                    raise SystemExit(f"--source has {len(files)} {SOURCE_SPLIT[split]} images of class "
                                     f"{source.classes[c]!r}; {m} asked for")
                picks[c] = [files[i] for i in sorted(rng.choice(len(files), m, replace=False))]
        for pos, p in enumerate(order):
            c, j = pairs[p]
            stem = f"{wnid(c)}_{j}" if split == "train" else f"val_{pos + 1:08d}"
            origin = picks[c][j] if source else None
            items.append(Item(split, pos, c, stem, source.read(origin) if origin else None, origin))
    return items


# --------------------------------------------------------------------------- one image

def _synthetic(rng: np.random.Generator, cls: int, k: int, w: int, h: int) -> Image.Image:
    # The class's hue (evenly spaced around the colour wheel) under smooth random texture: easy to
    # learn, not trivially constant, and cheap at any size.
    hue = np.array([np.cos(2 * np.pi * (cls / k + t / 3)) for t in range(3)])
    base = 127.5 + 80.0 * hue
    texture = rng.normal(0.0, 40.0, size=(8, 8, 3))
    small = np.clip(base + texture, 0, 255).astype(np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


def encode(item: Item, seed: int, k: int, min_size: int, max_size: int) -> bytes:
    """The JPEG bytes of one item: a function of (seed, split, index) and its source image."""
    rng = np.random.default_rng([seed, SPLITS[item.split], item.index])
    w, h = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    if item.source is None:
        image = _synthetic(rng, item.cls, k, w, h)
    else:
        with Image.open(io.BytesIO(item.source)) as src:
            image = src.convert("RGB").resize((w, h), Image.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=QUALITY)
    return buf.getvalue()


def _encode_star(args: tuple[Item, int, int, int, int]) -> bytes:
    return encode(*args)


# --------------------------------------------------------------------------- writing

def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: byte-identical shards
    tar.addfile(info, io.BytesIO(data))


class ShardWriter:
    """Items of a split into `count` contiguous shards `<split>-NNNNNN.tar`."""

    def __init__(self, out: Path, split: str, total: int, count: int) -> None:
        self.out, self.split, self.total, self.count = out, split, total, max(1, min(count, total))
        self.paths: list[Path] = []
        self._tar: tarfile.TarFile | None = None

    def add(self, item: Item, data: bytes) -> None:
        shard = item.index * self.count // self.total
        if shard == len(self.paths):
            self.close()
            self.paths.append(self.out / f"{self.split}-{shard:06d}.tar")
            self._tar = tarfile.open(self.paths[-1], "w", format=tarfile.USTAR_FORMAT)
        assert self._tar is not None
        _tar_add(self._tar, f"{item.stem}.jpg", data)
        _tar_add(self._tar, f"{item.stem}.cls", str(item.cls).encode())

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None


def _encoded(items: list[Item], args: tuple[int, int, int, int], workers: int) -> Iterator[bytes]:
    jobs = ((item, *args) for item in items)
    if workers <= 1:
        yield from map(_encode_star, jobs)
        return
    with Pool(workers) as pool:
        yield from pool.imap(_encode_star, jobs, chunksize=16)


def write_tree(
    out: str | Path,
    *,
    n_train: int = 2000,
    n_val: int = 200,
    classes: int = 10,
    min_size: int = 100,
    max_size: int = 500,
    seed: int = 0,
    source: str | None = None,
    shards: int = 0,
    folder: bool = True,
    workers: int = 1,
) -> Summary:
    """Write the folder (and/or shards) under `out`; returns what was written."""
    if not 8 <= min_size <= max_size:
        raise SystemExit(f"need 8 <= --min-size <= --max-size, got {min_size} and {max_size}")
    if classes < 2 or n_train < classes or n_val < 1:
        raise SystemExit("need --classes >= 2, --n-train >= --classes and --n-val >= 1")
    if not folder and shards < 1:
        raise SystemExit("--no-folder writes nothing without --shards N")
    src = Source(source) if source else None
    if src is not None and classes > len(src.classes):
        raise SystemExit(f"--source has {len(src.classes)} classes; --classes {classes} asked for")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        # Stale files of another --n or --seed would silently join the dataset.
        raise SystemExit(f"{out} is not empty; remove it or choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    names = src.classes[:classes] if src else [f"class{c}" for c in range(classes)]
    (out / "classes.txt").write_text("".join(f"{wnid(c)}\n" for c in range(classes)))
    (out / "synsets.txt").write_text("".join(f"{wnid(c)} {n}\n" for c, n in enumerate(names)))
    items = plan(n_train, n_val, classes, seed, src)
    counts = {"train": n_train, "val": n_val}
    writers = {s: ShardWriter(out, s, n, round(shards * n / n_train) if s == "val" else shards)
               for s, n in counts.items()} if shards else {}
    summary = Summary(out, [wnid(c) for c in range(classes)], counts)
    try:
        for item, data in zip(items, _encoded(items, (seed, classes, min_size, max_size), workers), strict=True):
            if folder:
                path = out / item.split / wnid(item.cls) / f"{item.stem}.JPEG"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            if item.split in writers:
                writers[item.split].add(item, data)
            summary.bytes_written += len(data)
    finally:
        for w in writers.values():
            w.close()
    summary.shards = {s: w.paths for s, w in writers.items()}
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output folder (created)")
    p.add_argument("--n-train", type=int, default=2000, help="training images (count, class-balanced)")
    p.add_argument("--n-val", type=int, default=200, help="validation images (count, class-balanced)")
    p.add_argument("--classes", type=int, default=10, help="class count (<= the source's)")
    p.add_argument("--min-size", type=int, default=100, help="smallest width/height (pixels)")
    p.add_argument("--max-size", type=int, default=500, help="largest width/height (pixels)")
    p.add_argument("--seed", type=int, default=0, help="every draw follows from it")
    p.add_argument("--source", default=None,
                   help="zip or folder of train/<class>/* + test/<class>/* images to upscale "
                        "(folder:PATH accepted); default: synthetic content")
    p.add_argument("--shards", type=int, default=0,
                   help="also write N webdataset training shards (validation: in proportion, >= 1)")
    p.add_argument("--no-folder", action="store_true", help="write only the shards")
    p.add_argument("--workers", type=int, default=1, help="encoding processes (output does not depend on it)")
    a = p.parse_args(argv)
    s = write_tree(a.out, n_train=a.n_train, n_val=a.n_val, classes=a.classes, min_size=a.min_size,
                   max_size=a.max_size, seed=a.seed, source=a.source, shards=a.shards,
                   folder=not a.no_folder, workers=a.workers)
    shards = ", ".join(f"{len(v)} {k} shards" for k, v in s.shards.items())
    print(f"wrote {s.counts['train']} train + {s.counts['val']} val JPEGs of {len(s.classes)} classes "
          f"({s.bytes_written / 2**20:.1f} MiB){', ' + shards if shards else ''} under {s.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
