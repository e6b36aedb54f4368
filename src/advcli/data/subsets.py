"""Which examples a run uses: `--subset` for `--n` (`test_subset`, the one function that chooses
them; `check_subset` says where `first` applies) and `--n-train` (`train_subset`), both built on
`stratified_order`, a seeded class-interleaved order."""

from __future__ import annotations

import enum

import torch

from advcli.errors import UsageError
from advcli.rng import Stream, stream_seed


class Subset(str, enum.Enum):
    """`--subset`: how `--n` picks the examples of a split (see `test_subset`)."""

    first = "first"  # indices 0..n-1: the dataset's own order
    stratified = "stratified"  # the first n of stratified_order(labels, seed)


SUBSET_HELP = (
    "Which N examples --n takes: stratified (the first N of advcli's fixed, seeded, "
    "class-interleaved order, so any N is class-balanced) or first (indices 0..N-1, the split in "
    "the dataset's own order, as papers' 'first 1,000 test examples'; torchvision cifar10, "
    "cifar100, svhn and synthetic only). Recorded in the result's data block."
)


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
                subset: Subset | str = Subset.stratified, *, dataset: str | None = None,
                streamed: bool = False) -> torch.Tensor:
    """THE "first n test examples" (the indices into the split), as `subset` says:

    - `stratified`: the first n of `stratified_order(labels, seed)`;
    - `first`: 0..n-1, the dataset's own order; refused (UsageError) for `dataset` names
      without one (an in-memory `folder:PATH`: see `check_subset`). `seed` plays no part.

    n=None or n >= len(labels) takes every example (still in that order).
    """
    subset = Subset(subset)
    if n is not None and n <= 0:
        raise UsageError(f"--n must be a positive number of examples, got {n}")
    if subset is Subset.first:
        check_subset(subset, dataset, streamed=streamed)
        return torch.arange(len(labels) if n is None else min(n, len(labels)), dtype=torch.int64)
    order = stratified_order(labels, seed)
    return order if n is None else order[:n]


def check_subset(subset: Subset | str, dataset: str | None, *, streamed: bool = False) -> None:
    """`--subset first` only where the split's order is the dataset's own; a UsageError for an
    image folder or zip loaded into memory (`folder:PATH`), whose order is the folders'. A
    streamed folder lists its test split by file name (ImageNet val's official order:
    ILSVRC2012_val_00000001.JPEG, ...) and shards in their own order: both allowed. RobustBench's
    ImageNet set is not a prefix of that order but a fixed list of 5,000 files: `list:FILE`."""
    name = str(dataset).lower() if dataset is not None else ""
    if Subset(subset) is Subset.first and name.startswith("folder:") and not streamed:
        raise UsageError(
            f"--subset first takes a split in its dataset's own order, and {dataset} has none (an "
            "image folder lists class by class, so its first N hold one class; the CIFAR-10 JPEG "
            "zip does not keep CIFAR-10's order): use --subset stratified, or --dataset cifar10 --data-dir DIR "
            "(or stream the folder, --stream on, which lists its test split by file name)"
        )


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
