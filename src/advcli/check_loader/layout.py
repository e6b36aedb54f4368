"""The probe's layout: which distinct items every stream loads, in which order, and where each
item sits in the other order. Shared by the probe (what to load) and the analysis (what to
compare with what)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """What every stream loads: the same distinct items in the same order in every worker, epoch,
    rank and run, in passes that alternate order A (`items` as listed) and order B (reversed).

    The same order everywhere lines up a shared random stream position by position; the second
    order puts each item at another position, so a pipeline whose output follows the item (an
    RNG seeded per item) can be told from one whose output follows the position (a stream)."""

    items: tuple[int, ...]  # dataset indices, order A
    positions: tuple[int, ...]  # per load of a stream: the index into `items`
    partners: tuple[int, ...]  # per load: the load of the same item in the other order, or -1

    @property
    def loads(self) -> list[int]:
        """The dataset index of each load of a stream."""
        return [self.items[j] for j in self.positions]

    def control_positions(self, run: int, runs: int, loads: int) -> list[int]:
        """Control run `run`'s `loads` loads: passes over order A rotated so that no item sits
        where it sits in another run (given at least `runs` items); run 0's first pass is order A
        itself."""
        n = len(self.items)
        shift = (run * n) // runs
        rotated = [(j + shift) % n for j in range(n)]
        return (rotated * -(-loads // n))[:loads]


def make_layout(first: int, n_items: int | None, samples: int) -> Layout:
    """`samples` loads per stream over min(samples // 2, n_items) items from `first` on (wrapping
    at the dataset's end), so that each item is loaded at least once in each order."""
    count = max(1, samples // 2)
    if n_items is not None:
        count = min(count, n_items)
    items = tuple((first + j) % n_items if n_items else first + j for j in range(count))
    forward, backward = list(range(count)), list(range(count))[::-1]
    positions: list[int] = []
    for k in range(-(-samples // count)):
        positions.extend(forward if k % 2 == 0 else backward)
    positions = positions[:samples]
    where = {(p // count, j): p for p, j in enumerate(positions)}
    partners = [where.get(((p // count) ^ 1, j), -1) for p, j in enumerate(positions)]
    return Layout(items, tuple(positions), tuple(partners))
