"""Dataset sources -> `ImageData` (decoded uint8 tensors), with an on-disk cache.

Sources (`--dataset`):
- `synthetic`: generated from the seed (see synthetic.py);
- `folder:PATH`: `PATH/train/<class>/*` and `PATH/test/<class>/*` (or ImageNet's `val/<wnid>/*`),
  a directory or a `.zip` of one (class order = sorted folder names);
- `shards:PATH`: webdataset tar shards (`sources.py`), always streamed.

`--stream` (`StreamMode`) decides between decoding a folder into memory (below) and streaming it
(`LazyImages` splits, decoded and resized on access: `stream.py`, `stream_loader.py`); `auto`
streams what is too large to cache or mixes image sizes, so CIFAR-size data stays in memory.
- `cifar10`, `cifar100`, `svhn`: torchvision, under `--data-dir`, fetched only with `--download`.

Which n examples `--n` takes (`--subset`, `Subset`): `stratified`, the default, the first n of a
seeded, class-interleaved order (`stratified_order`), on any dataset; `first`, indices
0..n-1, the split in the dataset's own order, where that order means something (torchvision
datasets, `synthetic`, streamed folders and shards; papers' "first 1,000 CIFAR-10 test
examples" are torchvision's order); or the files a list names (`list:FILE`, `robustbench`:
streamed folders and shards). `test_subset` (subsets.py) is the one function that chooses them.

Decoded tensors (and a streamed dataset's channel stats, and shard indexes) are cached under
`$ADVCLI_CACHE` (default `~/.cache/advcli`), keyed by the
source's absolute path, size and mtime, so a second run starts in well under a second. The
cache files are written and read by `advcli.formats.tensorfile` (data/ never imports models/checkpoint.py).
"""

from __future__ import annotations

import enum
import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from advcli.data.sources import Listing, TensorSource, cache_dir, list_folder, list_shards
from advcli.data.stream import DEFAULT_IMAGE_SIZE, LazyImages
from advcli.data.subsets import stratified_order
from advcli.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from advcli.data.synthetic import make_synthetic
from advcli.errors import DataError, UsageError
from advcli.formats.tensorfile import load_tensors, save_tensors
from advcli.rng import Stream, stream_seed

TORCHVISION = ("cifar10", "cifar100", "svhn")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# `--stream auto` streams a dataset whose decoded images would take more than this share of RAM
# (or ADVCLI_STREAM_BYTES bytes), judged from this many images' headers.
STREAM_RAM_SHARE = 0.25
SIZE_SAMPLE = 16
# Channel mean/std of a streamed dataset: from this many training images (class-balanced).
STATS_SAMPLE = 1000


class StreamMode(str, enum.Enum):
    """`--stream`: decode images on the fly in DataLoader workers (`on`), decode the whole dataset
    into memory once (`off`), or choose by the dataset (`auto`: streamed when it is too large to
    cache or its images differ in size)."""

    auto = "auto"
    on = "on"
    off = "off"


@dataclass
class ImageData:
    """A train and a test split as uint8 [N,3,H,W] tensors and int64 labels."""

    name: str
    classes: list[str]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    # Streamed datasets: the x fields are lazy image sequences (advcli.data.stream) decoded and
    # resized to image_size x image_size on access.
    streamed: bool = False
    image_size: int | None = None
    # Files dropped by skip_bad while loading into memory (name -> reason); streamed splits keep
    # their own record (LazyImages.bad), filled as batches are decoded.
    bad_files: dict[str, str] = field(default_factory=dict)

    def bad_count(self) -> int:
        """How many distinct unreadable files were skipped so far (skip_bad)."""
        names = set(self.bad_files)
        for x in (self.train_x, self.test_x, self.val_x):
            if isinstance(x, LazyImages):
                names.update(x.bad)
        return len(names)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> list[int]:
        return list(self.train_x.shape[1:])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name == "train":
            return self.train_x, self.train_y
        if name == "test":
            return self.test_x, self.test_y
        if name == "val":
            if self.val_x is None or self.val_y is None:
                raise UsageError("there is no validation split: pass --val-split N")
            return self.val_x, self.val_y
        raise UsageError(f"unknown split {name!r}; valid values: train, test, val")


def _channel_stats(x: torch.Tensor | LazyImages, chunk: int = 8192) -> tuple[list[float], list[float]]:
    # Mean/std in [0,1] units per channel, from the training images (chunked: no big float copy;
    # a lazy split decodes one chunk at a time).
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    total_sq = torch.zeros(x.shape[1], dtype=torch.float64)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].to(torch.float64) / 255
        total += part.sum(dim=(0, 2, 3))
        total_sq += (part**2).sum(dim=(0, 2, 3))
    count = len(x) * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(1e-12).sqrt()
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def _synthetic(seed: int, n_train: int = 10_000, n_test: int = 2_000) -> ImageData:
    xtr, ytr = make_synthetic(n_train, seed=2 * seed)
    xte, yte = make_synthetic(n_test, seed=2 * seed + 1)
    return ImageData(
        "synthetic", list(SYNTHETIC_CLASSES),
        torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte),
    )


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)


def _test_split(splits: set[str]) -> str:
    # ImageNet's layout names its test split val/; a tree with both keeps test/.
    return "test" if "test" in splits or "val" not in splits else "val"


def _folder_entries(root: Path) -> tuple[list[tuple[str, str, str]], zipfile.ZipFile | None]:
    """(split, class, member) triples from a directory or a zip, plus the open zip if any; the
    split is "train" or "test" (a val/ folder is the test split when there is no test/)."""
    entries: list[tuple[str, str, str]] = []
    zf = None
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).parts
            if path.is_file() and len(rel) == 3 and path.suffix.lower() in IMAGE_EXTS:
                entries.append((rel[0], rel[1], str(path)))
    else:
        try:
            zf = zipfile.ZipFile(root)
        except zipfile.BadZipFile as exc:
            raise DataError(f"{str(root)!r} is not a readable zip file; check the file or extract it") from exc
        for name in sorted(zf.namelist()):
            parts = [p for p in name.split("/") if p]
            # Accept an optional top-level folder: [top/]split/class/file
            if len(parts) == 4 and parts[1] in ("train", "test", "val"):
                parts = parts[1:]
            if len(parts) == 3 and parts[0] in ("train", "test", "val") and name.lower().endswith(IMAGE_EXTS):
                entries.append((parts[0], parts[1], name))
    test = _test_split({s for s, _, _ in entries})
    return [(("test" if s == test else s), c, m) for s, c, m in entries if s in ("train", test)], zf


def _folder(path_text: str, skip_bad: bool = False) -> ImageData:
    root = Path(path_text).expanduser()
    if not root.exists():
        raise DataError(
            f"dataset folder {path_text!r} does not exist; --dataset folder:PATH takes a directory "
            "or a .zip holding train/<class>/ and test/<class>/ (or val/<class>/)"
        )
    entries, zf = _folder_entries(root)
    classes = sorted({c for s, c, _ in entries if s == "train"})
    if not classes or not any(s == "test" for s, _, _ in entries):
        raise DataError(
            f"{path_text!r} has no train/<class>/ and test/<class>/ image folders; "
            "expected PATH/train/<class>/*.jpg and PATH/test/<class>/*.jpg"
        )
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({c for s, c, _ in entries if s == "test" and c not in index})
    if unknown:
        raise DataError(f"{path_text!r}: test classes {unknown} have no train folder")
    splits: dict[str, tuple[list[np.ndarray], list[int]]] = {"train": ([], []), "test": ([], [])}
    bad: dict[str, str] = {}
    try:
        for split, cls, member in entries:
            name = member if zf is None else f"{root}:{member}"
            try:
                raw = zf.read(member) if zf is not None else Path(member).read_bytes()
                img = _decode(raw)
            except (OSError, ValueError, zipfile.BadZipFile) as exc:
                if not skip_bad:
                    raise DataError(f"{name} is not a readable image ({exc}); remove it, or pass --skip-bad") from exc
                bad[name] = str(exc)
                continue
            splits[split][0].append(img)
            splits[split][1].append(index[cls])
    finally:
        if zf is not None:
            zf.close()
    shapes = {im.shape for im in splits["train"][0] + splits["test"][0]}
    if len(shapes) != 1:
        raise DataError(f"{path_text!r} mixes image sizes {sorted(shapes)[:3]}; resize them to one size, "
                        "or stream it (--stream on)")

    def stack(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        imgs, labels = splits[split]
        return torch.from_numpy(np.stack(imgs)), torch.tensor(labels, dtype=torch.int64)

    (trx, try_), (tex, tey) = stack("train"), stack("test")
    return ImageData(f"folder:{path_text}", classes, trx, try_, tex, tey, bad_files=bad)


def _stream_budget() -> int:
    env = os.environ.get("ADVCLI_STREAM_BYTES")
    if env:
        try:
            return int(float(env))
        except ValueError as exc:
            raise UsageError(f"ADVCLI_STREAM_BYTES must be a number of bytes, got {env!r}") from exc
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * STREAM_RAM_SHARE)
    except (AttributeError, ValueError, OSError):
        return 8 << 30


def should_stream(listing: Listing, skip_bad: bool = False) -> bool:
    """`--stream auto`'s choice: stream when the sampled images differ in size (from their headers
    only) or when all images decoded at the sampled size would exceed the budget."""
    sizes: set[tuple[int, int]] = set()
    total = 0
    for src, _labels in listing.splits.values():
        total += len(src)
        for i in sorted({int(v) for v in np.linspace(0, len(src) - 1, min(SIZE_SAMPLE, len(src))).round()}):
            try:
                sizes.add(src.size(i))
            except DataError:
                if not skip_bad:
                    raise
    if len(sizes) != 1:
        return len(sizes) > 1
    h, w = next(iter(sizes))
    return total * 3 * h * w > _stream_budget()


def _lazy_stats(key: str | None, x: LazyImages, labels: torch.Tensor) -> tuple[list[float], list[float]]:
    """Channel mean/std of a streamed training set from a seeded class-balanced sample, cached."""
    path = cache_dir() / f"{key}.stats{x.image_size}.json" if key else None
    if path is not None and path.is_file():
        try:
            saved = json.loads(path.read_text())
            return list(saved["mean"]), list(saved["std"])
        except (ValueError, KeyError, OSError):
            pass
    sample = x.take(stratified_order(labels, stream_seed(0, 0, 0, Stream.channel_stats))[:STATS_SAMPLE].sort().values)
    if x.skip_bad:
        sample = sample.take(sample.decodable()[0])
    mean, std = _channel_stats(sample, chunk=256)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"mean": mean, "std": std}))
        except OSError:  # caching is an optimisation
            pass
    return mean, std


def _streamed(name: str, listing: Listing, image_size: int | None, skip_bad: bool, use_cache: bool) -> ImageData:
    r = image_size or DEFAULT_IMAGE_SIZE
    (trs, try_), (tes, tey) = listing.splits["train"], listing.splits["test"]
    trx = LazyImages(trs, image_size=r, skip_bad=skip_bad)
    tex = LazyImages(tes, image_size=r, skip_bad=skip_bad)
    data = ImageData(name, listing.classes, trx, try_, tex, tey, streamed=True, image_size=r)
    data.mean, data.std = _lazy_stats(listing.key if use_cache else None, trx, try_)
    return data


def _streamed_tensors(data: ImageData, image_size: int | None, skip_bad: bool) -> ImageData:
    # `--stream on` for a dataset that is in memory anyway: the same images through the streamed
    # transforms (what a CIFAR-size check of the streaming path needs).
    splits = {"train": (TensorSource(data.train_x), data.train_y), "test": (TensorSource(data.test_x), data.test_y)}
    return _streamed(data.name, Listing(data.classes, splits, ""), image_size, skip_bad, use_cache=False)


def _torchvision(name: str, data_dir: str, download: bool) -> ImageData:
    import torchvision.datasets as tvd

    root = Path(data_dir).expanduser()
    try:
        if name == "svhn":
            tr = tvd.SVHN(str(root), split="train", download=download)
            te = tvd.SVHN(str(root), split="test", download=download)
            trx, tex = torch.from_numpy(tr.data), torch.from_numpy(te.data)
            try_, tey = torch.as_tensor(tr.labels), torch.as_tensor(te.labels)
            classes = [str(i) for i in range(10)]
        else:
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            tr = cls(str(root), train=True, download=download)
            te = cls(str(root), train=False, download=download)
            trx = torch.from_numpy(tr.data).permute(0, 3, 1, 2).contiguous()
            tex = torch.from_numpy(te.data).permute(0, 3, 1, 2).contiguous()
            try_, tey = torch.as_tensor(tr.targets), torch.as_tensor(te.targets)
            classes = list(tr.classes)
    except RuntimeError as exc:
        if not download:
            raise DataError(
                f"{name} is not in {str(root)!r}; pass --download to fetch it, or point --data-dir at it"
            ) from exc
        raise DataError(f"could not download {name} into {str(root)!r}: {exc}") from exc
    return ImageData(name, classes, trx, try_.long(), tex, tey.long())


def _cache_key(spec: str, source: Path | None) -> str:
    h = hashlib.sha256(spec.encode())
    if source is not None:
        st = source.stat()
        h.update(f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _load_cached(key: str) -> ImageData | None:
    path = cache_dir() / f"{key}.safetensors"
    if not path.is_file():
        return None
    try:
        t, meta = load_tensors(path)
        return ImageData(
            meta["name"], list(meta["classes"]), t["train_x"], t["train_y"], t["test_x"], t["test_y"],
            list(meta["mean"]), list(meta["std"]),
        )
    except Exception:  # noqa: BLE001 - a broken cache entry is rebuilt, never fatal
        return None


def _store_cached(key: str, data: ImageData) -> None:
    try:
        save_tensors(
            cache_dir() / f"{key}.safetensors",
            {"train_x": data.train_x, "train_y": data.train_y, "test_x": data.test_x, "test_y": data.test_y},
            {"name": data.name, "classes": data.classes, "mean": data.mean, "std": data.std},
        )
    except Exception:  # noqa: BLE001 - caching is an optimisation; a read-only home must not fail a run
        pass


def load_dataset(
    spec: str,
    data_dir: str | None = None,
    download: bool = False,
    seed: int = 0,
    *,
    val_split: int = 0,
    use_cache: bool = True,
    stream: StreamMode | str = StreamMode.auto,
    image_size: int | None = None,
    skip_bad: bool = False,
) -> ImageData:
    """Load a dataset by its `--dataset` spec; hold out `val_split` training images (seeded).

    `stream` (`StreamMode`): `off` decodes every image into memory (cached); `on` gives lazy
    splits (`LazyImages`, image_size x image_size, default 224); `auto` streams image folders
    that are too large to cache or whose images differ in size, and shards always. `skip_bad`
    drops unreadable files (counted: `ImageData.bad_count`) instead of failing on them."""
    spec = str(spec).strip()
    key_l = spec.lower()
    mode = StreamMode(stream)
    if image_size is not None and image_size < 8:
        raise UsageError(f"--image-size must be at least 8 pixels, got {image_size}")
    if key_l == "synthetic":
        data = _synthetic(seed)
    elif key_l.startswith("folder:"):
        data = _load_folder(spec.split(":", 1)[1], mode, image_size, skip_bad, use_cache)
    elif key_l.startswith("shards:"):
        if mode is StreamMode.off:
            raise UsageError("shards always stream: use --stream auto or on with --dataset shards:PATH")
        path_text = spec.split(":", 1)[1]
        data = _streamed(f"shards:{path_text}", list_shards(path_text), image_size, skip_bad, use_cache)
    elif key_l in TORCHVISION:
        data = _torchvision(key_l, data_dir or "./data", download)
    else:
        raise UsageError(
            f"unknown dataset {spec!r}; valid values: synthetic, cifar10, cifar100, svhn, folder:PATH, shards:PATH"
        )
    if mode is StreamMode.on and not data.streamed:
        data = _streamed_tensors(data, image_size, skip_bad)
    if not data.mean:
        data.mean, data.std = _channel_stats(data.train_x)
    if val_split:
        data = hold_out(data, val_split, seed)
    return data


def _load_folder(path_text: str, mode: StreamMode, image_size: int | None, skip_bad: bool,
                 use_cache: bool) -> ImageData:
    src = Path(path_text).expanduser()
    name = f"folder:{path_text}"
    key = _cache_key("folder", src) if src.exists() else None
    if mode is not StreamMode.on:
        cached = _load_cached(key) if (use_cache and key) else None
        if cached is not None:
            cached.name = name
            return cached
    if mode is not StreamMode.off:
        listing = list_folder(path_text)
        if mode is StreamMode.on or should_stream(listing, skip_bad):
            return _streamed(name, listing, image_size, skip_bad, use_cache)
    data = _folder(path_text, skip_bad)
    data.mean, data.std = _channel_stats(data.train_x)
    # A copy with files skipped is not cached: the next run must see (and count) them again.
    if use_cache and key and not data.bad_files:
        _store_cached(key, data)
    return data


def rows(x: torch.Tensor | LazyImages, index: torch.Tensor) -> torch.Tensor | LazyImages:
    """x[index] for a tensor; for a lazy split a view (`LazyImages.take`), nothing decoded."""
    return x.take(index) if isinstance(x, LazyImages) else x[index]


def hold_out(data: ImageData, n: int, seed: int) -> ImageData:
    """Move n seeded, stratified training images into a validation split (never the test set)."""
    if n < 0 or n >= len(data.train_y):
        raise UsageError(f"--val-split must be between 0 and {len(data.train_y) - 1}, got {n}")
    idx = stratified_order(data.train_y, stream_seed(seed, 0, 0, Stream.val_split))
    val, keep = idx[:n], idx[n:].sort().values
    data.val_x, data.val_y = rows(data.train_x, val), data.train_y[val]
    data.train_x, data.train_y = rows(data.train_x, keep), data.train_y[keep]
    return data


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] -> float32 [0,1]."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()
