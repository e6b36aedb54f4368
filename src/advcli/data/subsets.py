"""Which examples a run uses: `--subset` for `--n` (`test_subset`, the one function that chooses
them; `check_subset` says where `first` and file lists apply) and `--n-train` (`train_subset`),
both built on `stratified_order`, a seeded class-interleaved order.

`--subset list:FILE` names the examples by file (`FileList`, `parse_subset`): a streamed split's
items are matched by `<class folder>/<file name>` (shards: by their sample key), in the list's
order. `--subset robustbench` is the list RobustBench evaluates ImageNet on: 5,000 validation
files, read from the installed robustbench package rather than shipped again."""

from __future__ import annotations

import enum
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from advcli.errors import DataError, UsageError
from advcli.rng import Stream, stream_seed


class Subset(str, enum.Enum):
    """`--subset`: how `--n` picks the examples of a split (see `test_subset`)."""

    first = "first"  # indices 0..n-1: the dataset's own order
    stratified = "stratified"  # the first n of stratified_order(labels, seed)


SUBSET_HELP = (
    "Which N examples --n takes: stratified (the first N of advcli's fixed, seeded, "
    "class-interleaved order, so any N is class-balanced); first (indices 0..N-1, the split in "
    "the dataset's own order, as papers' 'first 1,000 test examples'; torchvision cifar10, "
    "cifar100, svhn, synthetic, and streamed folders and shards, whose test split is in sorted "
    "file-name order); list:FILE (the files FILE names, one '<class folder>/<file name>' a line, "
    "in its order; streamed folders and shards); robustbench (RobustBench's 5,000 ImageNet "
    "validation files, from the installed robustbench package). Recorded in the result's data "
    "block (a list with its sha256)."
)

ROBUSTBENCH_LIST = "helper_files/imagenet_test_image_ids.txt"  # inside the robustbench package
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class FileList:
    """`--subset list:FILE` or `robustbench`: the examples named by file, in the list's order."""

    value: str  # as recorded: "list:FILE" or "robustbench"
    entries: tuple[str, ...]  # "<class folder>/<file name>", one per example
    sha256: str  # of the list file's bytes: which list, whatever its path

    @property
    def robustbench(self) -> bool:
        return self.value == "robustbench"


def parse_subset(value: Any) -> Subset | FileList:
    """`--subset`'s text at the boundary: first, stratified, list:FILE or robustbench."""
    if isinstance(value, Subset | FileList):
        return value
    text = str(value).strip()
    if text.lower().startswith("list:"):
        return read_list(text.split(":", 1)[1], value=text)
    if text.lower() == "robustbench":
        return robustbench_list()
    try:
        return Subset(text.lower())
    except ValueError:
        raise UsageError(f"unknown --subset {text!r}; valid values: first, stratified, list:FILE, "
                         "robustbench") from None


def read_list(path_text: str, *, value: str | None = None) -> FileList:
    """A list file: one relative path a line (blank lines and surrounding spaces ignored)."""
    path = Path(path_text).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--subset list:{path_text}: cannot read the list file ({exc.strerror or exc})") from exc
    try:
        lines = raw.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise UsageError(f"--subset list:{path_text} is not a text file of file names") from exc
    entries = tuple(e.replace("\\", "/").strip("/") for e in (ln.strip() for ln in lines) if e)
    if not entries:
        raise UsageError(f"--subset list:{path_text} names no files; write one '<class folder>/<file name>' a line")
    if len(set(entries)) != len(entries):
        twice = next(e for i, e in enumerate(entries) if e in entries[:i])
        raise UsageError(f"--subset list:{path_text} names {twice!r} twice; an example is evaluated once")
    return FileList(value or f"list:{path_text}", entries, hashlib.sha256(raw).hexdigest())


def robustbench_list() -> FileList:
    """RobustBench's ImageNet evaluation set, from the installed package (not imported: importing
    robustbench loads its whole model zoo)."""
    spec = importlib.util.find_spec("robustbench")
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = next((Path(d) / ROBUSTBENCH_LIST for d in locations if (Path(d) / ROBUSTBENCH_LIST).is_file()), None)
    if path is None:
        raise UsageError("--subset robustbench reads RobustBench's list of ImageNet validation files from "
                         "the robustbench package, which is not installed: pip install advcli[robustbench]")
    return read_list(str(path), value="robustbench")


def subset_record(subset: Subset | FileList | str) -> dict[str, str]:
    """What a result's data block (and a resume's fingerprint) records of `--subset`: its text,
    and for a file list the list's sha256 (which examples, whatever the file is called)."""
    s = parse_subset(subset)
    return {"subset": s.value, **({"subset_sha256": s.sha256} if isinstance(s, FileList) else {})}


def stratified_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded permutation that interleaves the classes: any prefix is (nearly) class-balanced.

    Each class's indices are shuffled with the seed; then the classes take turns (class 0's
    first, class 1's first, ..., class 0's second, ...).
    """
    g = torch.Generator().manual_seed(seed)
    per_class = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        per_class.append(idx[torch.randperm(len(idx), generator=g)])
    order: list[int] = []
    depth = max((len(p) for p in per_class), default=0)
    for r in range(depth):
        order.extend(int(p[r]) for p in per_class if r < len(p))
    return torch.tensor(order, dtype=torch.int64)


def test_subset(labels: torch.Tensor, n: int | None, seed: int = 0,
                subset: Subset | FileList | str = Subset.stratified, *, dataset: str | None = None,
                streamed: bool = False, x: Any = None, classes: list[str] | None = None) -> torch.Tensor:
    """THE "first n test examples" (the indices into the split), as `subset` says:

    - `stratified`: the first n of `stratified_order(labels, seed)`;
    - `first`: 0..n-1, the dataset's own order; refused (UsageError) for `dataset` names
      without one (an in-memory `folder:PATH`: see `check_subset`). `seed` plays no part;
    - a `FileList` (`list:FILE`, `robustbench`): the split's items that the list names, in its
      order (`list_positions`; `x` is the split's images, a streamed `LazyImages`).

    n=None or n >= len(labels) takes every example (still in that order).
    """
    subset = parse_subset(subset)
    if n is not None and n <= 0:
        raise UsageError(f"--n must be a positive number of examples, got {n}")
    if isinstance(subset, FileList):
        check_subset(subset, dataset, streamed=streamed)
        return list_positions(x, subset, dataset=dataset, classes=classes)[:n]
    if subset is Subset.first:
        check_subset(subset, dataset, streamed=streamed)
        return torch.arange(len(labels) if n is None else min(n, len(labels)), dtype=torch.int64)
    order = stratified_order(labels, seed)
    return order if n is None else order[:n]


def check_subset(subset: Subset | FileList | str, dataset: str | None, *, streamed: bool = False) -> None:
    """`--subset first` only where the split's order is the dataset's own; a UsageError for an
    image folder or zip loaded into memory (`folder:PATH`), whose order is the folders'. A
    streamed folder lists its test split by file name (ImageNet val's official order:
    ILSVRC2012_val_00000001.JPEG, ...) and shards in their own order: both allowed. RobustBench's
    ImageNet set is not a prefix of that order but a fixed list of 5,000 files: `robustbench`.

    A file list needs the files' names, which only a streamed folder or shards keep (a folder
    read into memory, or its cache, keeps the pixels alone)."""
    name = str(dataset).lower() if dataset is not None else ""
    subset = parse_subset(subset)
    if isinstance(subset, FileList):
        flag = "robustbench" if subset.robustbench else "list:FILE"
        if not name.startswith(("folder:", "shards:")):
            raise UsageError(f"--subset {flag} picks examples by file name, and {dataset or 'this dataset'} "
                             "has no files: use it with --dataset folder:PATH or shards:PATH")
        if name.startswith("folder:") and not streamed:
            raise UsageError(f"--subset {flag} picks examples by file name, and {dataset} read into memory "
                             "keeps no names: stream it (--stream on)")
        return
    if subset is Subset.first and name.startswith("folder:") and not streamed:
        raise UsageError(
            f"--subset first takes a split in its dataset's own order, and {dataset} has none (an "
            "image folder lists class by class, so its first N hold one class; the CIFAR-10 JPEG "
            "zip does not keep CIFAR-10's order): use --subset stratified, or --dataset cifar10 --data-dir DIR "
            "(or stream the folder, --stream on, which lists its test split by file name)"
        )


def list_positions(x: Any, flist: FileList, *, dataset: str | None = None,
                   classes: list[str] | None = None) -> torch.Tensor:
    """The positions in the split `x` (a `LazyImages`) of `flist`'s entries, in the list's order.

    An entry `<class>/<file>` matches a folder's file by those two names; a shard's sample by its
    key (`<class>/<stem>`, or `<stem>` alone: shards are often keyed by file stem). A DataError
    names the first few entries that match nothing."""
    key = getattr(x, "key", None)
    if key is None:
        raise UsageError(f"--subset {flist.value} picks examples by file name, and this split is in "
                         "memory: stream it (--stream on)")
    if flist.robustbench and classes is not None and len(classes) != IMAGENET_CLASSES:
        raise UsageError(f"--subset robustbench is RobustBench's ImageNet validation list and labels by "
                         f"ImageNet's {IMAGENET_CLASSES} sorted class folders; {dataset} has "
                         f"{len(classes)} classes")
    where: dict[str, int] = {}
    for pos in range(len(x)):
        k = key(pos)
        if k is not None:
            where.setdefault(k, pos)
    out, missing = [], []
    for entry in flist.entries:
        stem = entry.rsplit(".", 1)[0] if "." in entry.rsplit("/", 1)[-1] else entry
        pos = next((where[c] for c in (entry, stem, stem.rsplit("/", 1)[-1]) if c in where), None)
        if pos is None:
            missing.append(entry)
        else:
            out.append(pos)
    if missing:
        what = "RobustBench's ImageNet validation files (--subset robustbench)" if flist.robustbench \
            else f"the files of {flist.value}"
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise DataError(f"{len(missing)} of {len(flist.entries)} of {what} are not in the split of "
                        f"{dataset or 'the dataset'}: {shown}")
    return torch.tensor(out, dtype=torch.int64)


def train_subset(labels: torch.Tensor, n: int) -> torch.Tensor:
    """`--n-train N`: N training examples, class-balanced, the same for every `--seed` (the first
    N of `stratified_order` seeded with seed 0's `train_subset` stream, `advcli.rng`), in their
    original order. Image folders list the training set class by class, so a plain prefix would
    hold one class only."""
    if n <= 0:
        raise UsageError(f"--n-train must be a positive number of examples, got {n}")
    if n >= len(labels):
        return torch.arange(len(labels))
    return stratified_order(labels, stream_seed(0, 0, 0, Stream.train_subset))[:n].sort().values


# pytest would otherwise collect `test_subset` from modules that import it.
test_subset.__test__ = False  # type: ignore[attr-defined]
