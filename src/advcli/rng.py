"""Random streams: every random draw of a run comes from its own stream, seeded by
`SeedSequence([seed, epoch, rank, purpose])`.

Why one stream per purpose: two generators seeded with the same number draw the same numbers.
When the data order and the crop offsets of an epoch came from identically seeded generators,
an image's crop offset followed its position in the permutation (on the CPU the first image
of the epoch was always cropped by the offset equal to its index mod 9). Mixing the purpose
into the seed makes the streams independent, and SeedSequence's hashing makes the seeds of
different (seed, epoch, rank, purpose) keys distinct (`seed + 1`-style offsets collide across
seeds: seed 0's attack stream was seed 1's data stream).

`Stream` lists the purposes. Streams that must agree across torchrun ranks (the data order,
the validation and overfitting checks, whose results decide when to stop or what to keep) use
rank 0 on every rank; streams that must differ per rank (augmentation, training attacks) use
the rank.
"""

from __future__ import annotations

import enum

import numpy as np
import torch


class Stream(enum.IntEnum):
    """The purposes of random streams; the value is the last word of the SeedSequence entropy."""

    # 0 is `advcli eval`'s PGD random starts per batch: SeedSequence pads its entropy with
    # zeros, so [seed, batch, 0, 0] is the [seed, batch, 0] that eval has always used.
    eval_attack = 0
    init = 1  # weight initialisation and later draws from torch's global generator (dropout)
    numpy_global = 2  # NumPy's global state (not used by advcli's own augmentation modes)
    python_global = 3  # Python's `random` module
    shuffle = 4  # the epoch's permutation of the training set (shared by all ranks)
    augment = 5  # crop/flip offsets: `device` mode, and `fixed` mode without workers
    loader_workers = 6  # the DataLoader's base seed, from which each worker seeds itself
    buggy_numpy = 7  # `buggy` mode's NumPy seed, deliberately the same every epoch
    train_attack = 8  # random starts of the training attack
    val_attack = 9  # random starts of the validation PGD (`--val-every`)
    overfit_attack = 10  # random starts of the catastrophic-overfitting check
    attack = 11  # `advcli attack`'s random starts (one generator for the whole run)
    landscape_attack = 12  # `advcli landscape`'s attack at every point (the `epoch` word: the batch)
    landscape_directions = 13  # the raw random directions of a landscape (the seed: --directions-seed)
    hessian = 14  # the start vector of the landscape's Hessian power iteration
    train_subset = 15  # which --n-train images train and adv-train keep (seed 0: one fixed subset)
    val_split = 16  # which training images --val-split holds out
    channel_stats = 17  # which training images a streamed dataset's mean/std is measured on
    # A streamed training image's crop and flip: one stream per (seed, epoch, item), the item's
    # index in the rank word, so an image's augmentation does not depend on the batch, worker or
    # rank that loads it (and a mid-epoch resume redraws it exactly).
    item_augment = 18


def stream_seed(seed: int, epoch: int, rank: int, stream: Stream) -> int:
    """The 63-bit seed of one stream (non-negative, so it fits torch's and NumPy's seeding)."""
    words = [int(seed), int(epoch), int(rank), int(stream)]
    return int(np.random.SeedSequence(words).generate_state(2, np.uint64)[0] >> 1)


def stream_generator(
    seed: int, epoch: int, rank: int, stream: Stream, device: str | torch.device = "cpu"
) -> torch.Generator:
    """A `torch.Generator` on `device` seeded for one stream."""
    g = torch.Generator(device=device)
    g.manual_seed(stream_seed(seed, epoch, rank, stream))
    return g
