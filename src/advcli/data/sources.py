"""Where streamed images come from: listings of image folders, zips and webdataset tar shards,
each item readable by index (random access: per-item seeded transforms, any epoch order and a
bit-identical mid-epoch resume need it).

A source is small to pickle (it travels to every DataLoader worker): file names are held in one
NumPy byte-string array, not a Python list of strings, so forked workers do not touch (and copy)
a million refcounts. Open zip and tar files are per process, opened on first use.

Layouts:
- folder (directory or .zip, optionally under one top folder): `train/<class>/*` and `test/<class>/*`,
  or ImageNet's `train/<wnid>/*` and `val/<wnid>/*` (`val` is the test split when there is no
  `test`); the test split is listed in sorted file-name order (ImageNet's val files are named in
  their official order), the training split class by class;
- shards (webdataset): `train-*.tar` and `val-*.tar` (or `test-*.tar`) in a directory, one `.tar`
  or a brace pattern (`train-{0000..0099}.tar`); a sample is the files sharing a key, an image
  (`.jpg/.jpeg/.png/.webp`) and a `.cls` (class index as text); class names from `classes.txt`
  beside the shards, else "0".."K-1". Shards are indexed once with `tarfile` (member offsets and
  sizes), cached, then read by seek.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import threading
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from advcli.data.transforms import decode
from advcli.errors import DataError


def cache_dir() -> Path:
    """Where decoded datasets, shard indices and channel statistics are cached (`ADVCLI_CACHE`)."""
    return Path(os.environ.get("ADVCLI_CACHE", Path.home() / ".cache" / "advcli"))


IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SHARD_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEST_SPLITS = ("test", "val")


class Source(ABC):
    """Images by index: `load(i)` decoded, `size(i)` their (height, width), `name(i)` what an
    error message calls them."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def name(self, i: int) -> str: ...

    @abstractmethod
    def load(self, i: int) -> torch.Tensor: ...

    @abstractmethod
    def size(self, i: int) -> tuple[int, int]: ...

    def key(self, i: int) -> str | None:
        """Item i's name within its split, as `--subset list:FILE` names it (None: no name)."""
        return None


class EncodedSource(Source):
    """Image files by index: `read(i)` their bytes, decoded on `load`."""

    @abstractmethod
    def read(self, i: int) -> bytes: ...

    def load(self, i: int) -> torch.Tensor:
        """Item i decoded: uint8 [3,H,W]."""
        name = self.name(i)
        try:
            data = self.read(i)
        except OSError as exc:
            raise DataError(f"could not read {name}: {exc}") from exc
        return decode(data, name)

    def size(self, i: int) -> tuple[int, int]:
        """(height, width) from the image's header only."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(self.read(i))) as im:
                return im.height, im.width
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{self.name(i)} is not a readable image ({exc}); remove it, or pass --skip-bad") from exc


class TensorSource(Source):
    """Already decoded images (uint8 [N,3,H,W]): in-memory datasets streamed on request."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def name(self, i: int) -> str:
        return f"image {i}"

    def load(self, i: int) -> torch.Tensor:
        return self.x[i]

    def size(self, i: int) -> tuple[int, int]:
        return int(self.x.shape[2]), int(self.x.shape[3])


class FileSource(EncodedSource):
    def __init__(self, root: str, rel: np.ndarray) -> None:
        self.root, self.rel = root, rel

    def __len__(self) -> int:
        return len(self.rel)

    def name(self, i: int) -> str:
        return os.path.join(self.root, self.rel[i].decode())

    def key(self, i: int) -> str:
        return _class_and_file(self.rel[i])

    def read(self, i: int) -> bytes:
        with open(self.name(i), "rb") as fh:
            return fh.read()


def _class_and_file(rel: bytes) -> str:
    # "[top/]split/class/file" -> "class/file"
    return "/".join(rel.decode().split("/")[-2:])


_OPEN_LOCK = threading.Lock()


class _PerProcess(EncodedSource):
    """Holds one open file handle per process (fork copies would share a file position)."""

    _handle: object | None = None
    _pid: int = -1

    @abstractmethod
    def _open(self) -> object: ...

    def handle(self) -> object:
        with _OPEN_LOCK:  # the indexing thread pool's first reads race to open it
            if self._pid != os.getpid() or self._handle is None:
                self._handle, self._pid = self._open(), os.getpid()
            return self._handle

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_handle", "_pid")}


class ZipSource(_PerProcess):
    def __init__(self, path: str, members: np.ndarray) -> None:
        self.path, self.members = path, members

    def __len__(self) -> int:
        return len(self.members)

    def _open(self) -> zipfile.ZipFile:
        return zipfile.ZipFile(self.path)

    def name(self, i: int) -> str:
        return f"{self.path}:{self.members[i].decode()}"

    def key(self, i: int) -> str:
        return _class_and_file(self.members[i])

    def read(self, i: int) -> bytes:
        return self.handle().read(self.members[i].decode())  # type: ignore[attr-defined]


class ShardSource(_PerProcess):
    """Members of tar shards at known (shard, byte offset, size)."""

    def __init__(self, shards: list[str], shard: np.ndarray, offset: np.ndarray, size: np.ndarray,
                 keys: np.ndarray) -> None:
        self.shards, self.shard, self.offset, self.nbytes, self.keys = shards, shard, offset, size, keys

    def __len__(self) -> int:
        return len(self.offset)

    def _open(self) -> dict[int, object]:
        return {}

    def name(self, i: int) -> str:
        return f"{self.shards[int(self.shard[i])]}:{self.keys[i].decode()}"

    def key(self, i: int) -> str:
        # The image member's name up to its first dot: the webdataset sample key.
        folder, _, base = self.keys[i].decode().rpartition("/")
        stem = base.partition(".")[0]
        return f"{folder}/{stem}" if folder else stem

    def read(self, i: int) -> bytes:
        # Positional reads (pread): the indexing thread pool reads one shard from several
        # threads at once, and a shared seek position would interleave them.
        files = self.handle()
        s = int(self.shard[i])
        if s not in files:  # type: ignore[operator]
            files[s] = os.open(self.shards[s], os.O_RDONLY | getattr(os, "O_BINARY", 0))  # type: ignore[index]
        fd, n = files[s], int(self.nbytes[i])  # type: ignore[index]
        data = _pread(fd, n, int(self.offset[i]))
        if len(data) != n:
            raise OSError("the shard is shorter than its index says (truncated or rewritten)")
        return data


_SEEK_LOCK = threading.Lock()


def _pread(fd: int, n: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, n, offset)
    with _SEEK_LOCK:  # Windows
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, n)


@dataclass
class Listing:
    """A dataset's splits as (source, labels), the class names, and the key of its cache entries."""

    classes: list[str]
    splits: dict[str, tuple[Source, torch.Tensor]]
    key: str


def source_key(kind: str, paths: list[Path]) -> str:
    """Cache key from each path's absolute name, size and mtime (the in-memory cache's rule)."""
    h = hashlib.sha256(kind.encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


# Folders


def _split_dirs(names: set[str]) -> tuple[str, str] | None:
    if "train" not in names:
        return None
    test = next((t for t in TEST_SPLITS if t in names), None)
    return ("train", test) if test else None


def _dir_files(root: Path, split: str) -> list[tuple[str, str]]:
    """(class, file name) of root/split/<class>/<file> images."""
    out = []
    with os.scandir(root / split) as classes:
        for c in classes:
            if not c.is_dir():
                continue
            with os.scandir(c.path) as files:
                out.extend((c.name, f.name) for f in files
                           if f.name.lower().endswith(IMAGE_EXTS) and f.is_file())
    return out


def _zip_files(zf: zipfile.ZipFile) -> tuple[str, dict[str, list[tuple[str, str]]]]:
    """The prefix ("" or "top/") and {split: [(class, file name)]} of a zip's images."""
    found: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for name in zf.namelist():
        parts = [p for p in name.split("/") if p]
        if not name.lower().endswith(IMAGE_EXTS) or len(parts) not in (3, 4):
            continue
        prefix = parts[0] + "/" if len(parts) == 4 else ""
        found.setdefault((prefix, parts[-3]), []).append((parts[-2], parts[-1]))
    for prefix in sorted({p for p, _ in found}):
        dirs = _split_dirs({s for p, s in found if p == prefix})
        if dirs:
            return prefix, {s: found[(prefix, s)] for s in dirs}
    return "", {}


def _ordered(files: list[tuple[str, str]], test: bool) -> list[tuple[str, str]]:
    # Training: class by class. Test: by file name (ImageNet val's official order), class last.
    return sorted(files, key=(lambda cf: (cf[1], cf[0])) if test else None)


def list_folder(path_text: str) -> Listing:
    """The splits of `folder:PATH` (a directory or a zip) as lazily read sources."""
    root = Path(path_text).expanduser()
    if not root.exists():
        raise DataError(
            f"dataset folder {path_text!r} does not exist; --dataset folder:PATH takes a directory "
            "or a .zip holding train/<class>/ and test/<class>/ (or val/<class>/)"
        )
    if root.is_dir():
        dirs = _split_dirs({p.name for p in root.iterdir() if p.is_dir()})
        per_split = {s: _dir_files(root, s) for s in dirs} if dirs else {}
        prefix = ""
    else:
        try:
            with zipfile.ZipFile(root) as zf:
                prefix, per_split = _zip_files(zf)
        except zipfile.BadZipFile as exc:
            raise DataError(f"{path_text!r} is not a readable zip file; check the file or extract it") from exc
    names = list(per_split)
    classes = sorted({c for c, _ in per_split.get("train", [])})
    if len(names) != 2 or not classes or not per_split[names[1]]:
        raise DataError(
            f"{path_text!r} has no train/<class>/ and test/<class>/ (or val/<class>/) image folders; "
            "expected PATH/train/<class>/*.jpg and PATH/val/<class>/*.jpg"
        )
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({c for c, _ in per_split[names[1]] if c not in index})
    if unknown:
        raise DataError(f"{path_text!r}: {names[1]} classes {unknown[:5]} have no train folder")
    splits = {}
    for split, out in zip(names, ("train", "test"), strict=True):
        files = _ordered(per_split[split], test=out == "test")
        rel = np.array([f"{prefix}{split}/{c}/{f}".encode() for c, f in files], dtype=np.bytes_)
        labels = torch.tensor([index[c] for c, _ in files], dtype=torch.int64)
        src: Source = FileSource(str(root), rel) if root.is_dir() else ZipSource(str(root), rel)
        splits[out] = (src, labels)
    return Listing(classes, splits, source_key("folder", [root]))


# Shards


def _expand_braces(pattern: str) -> list[str]:
    """`a-{000..012}.tar` and `a-{x,y}.tar` (webdataset's shard patterns), nested left to right."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        options = [str(k).zfill(len(lo)) for k in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [s for o in options for s in _expand_braces(head + o + tail)]


def _shard_files(path_text: str) -> tuple[Path, dict[str, list[Path]]]:
    """The folder holding the shards and {split: shard paths}, sorted."""
    p = Path(path_text).expanduser()
    if p.is_dir():
        folder, paths = p, sorted(p.glob("*.tar"))
    else:
        paths = [Path(s) for s in _expand_braces(str(p))]
        missing = [str(s) for s in paths if not s.is_file()]
        if missing:
            raise DataError(f"shard {missing[0]!r} does not exist; --dataset shards:PATH takes a directory "
                            "of train-*.tar and val-*.tar, one .tar, or a brace pattern")
        folder = paths[0].parent if paths else p
    per_split: dict[str, list[Path]] = {}
    for s in paths:
        split = s.name.split("-", 1)[0].split(".", 1)[0]
        if split in ("train", *TEST_SPLITS):
            per_split.setdefault(split, []).append(s)
    return folder, per_split


def _index_shard(path: Path) -> list[tuple[str, int, int, int]]:
    """(image member name, offset, size, label) of one shard's samples, in tar order."""
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    labels: dict[str, int] = {}
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                folder, _, base = m.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                if not dot:
                    continue
                key = f"{folder}/{stem}" if folder else stem
                ext = ext.lower()
                if ext == "cls":
                    fh = tf.extractfile(m)
                    text = fh.read().decode().strip() if fh else ""
                    try:
                        labels[key] = int(text)
                    except ValueError as exc:
                        raise DataError(f"{path}:{m.name} holds {text[:20]!r}, not a class index") from exc
                elif ext in SHARD_IMAGE_EXTS:
                    samples.setdefault(key, {})[m.name] = (m.offset_data, m.size)
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{path} is not a readable tar shard ({exc})") from exc
    out = []
    for key, images in samples.items():
        if key not in labels:
            raise DataError(f"{path}:{key} has an image but no .cls label")
        member = min(images)
        out.append((member, *images[member], labels[key]))
    return out


def _shard_split(shards: list[Path], key: str) -> tuple[ShardSource, torch.Tensor]:
    from advcli.formats.tensorfile import load_tensors, save_tensors

    path = cache_dir() / f"{key}.shards.safetensors"
    try:
        t, meta = load_tensors(path)
    except Exception:  # noqa: BLE001 - a missing or broken index is rebuilt
        rows = [(s, *r) for s, shard in enumerate(shards) for r in _index_shard(shard)]
        blob = "\n".join(r[1] for r in rows).encode()
        t = {
            "shard": torch.tensor([r[0] for r in rows], dtype=torch.int32),
            "offset": torch.tensor([r[2] for r in rows], dtype=torch.int64),
            "size": torch.tensor([r[3] for r in rows], dtype=torch.int64),
            "label": torch.tensor([r[4] for r in rows], dtype=torch.int64),
            "keys": torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8),
        }
        meta = {"shards": [str(s) for s in shards]}
        try:
            save_tensors(path, t, meta)
        except Exception:  # noqa: BLE001 - caching is an optimisation
            pass
    keys = np.array(bytes(t["keys"].numpy()).split(b"\n") if len(t["keys"]) else [], dtype=np.bytes_)
    src = ShardSource(list(meta["shards"]), t["shard"].numpy(), t["offset"].numpy(), t["size"].numpy(), keys)
    return src, t["label"]


def list_shards(path_text: str) -> Listing:
    """The splits of `shards:PATH` (indexed once, cached by the shards' names, sizes and mtimes)."""
    folder, per_split = _shard_files(path_text)
    test = next((t for t in TEST_SPLITS if t in per_split), None)
    if "train" not in per_split or test is None:
        raise DataError(
            f"{path_text!r} has no train-*.tar and val-*.tar (or test-*.tar) shards; --dataset shards:PATH "
            "takes a directory of webdataset shards, one .tar, or a brace pattern"
        )
    splits = {}
    for split, out in (("train", "train"), (test, "test")):
        shards = per_split[split]
        splits[out] = _shard_split(shards, source_key("shards", shards))
        if len(splits[out][1]) == 0:
            raise DataError(f"the {split} shards of {path_text!r} hold no image samples")
    names_file = folder / "classes.txt"
    k = int(max(int(splits["train"][1].max()), int(splits["test"][1].max()))) + 1
    if names_file.is_file():
        classes = [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()]
        if len(classes) < k:
            raise DataError(f"{names_file} names {len(classes)} classes, but the shards use class index {k - 1}")
    else:
        classes = [str(i) for i in range(k)]
    every = per_split["train"] + per_split[test]
    return Listing(classes, splits, source_key("shards", every))
