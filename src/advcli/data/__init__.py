"""Datasets as decoded uint8 tensors, augmentation modes and seeded training batches.

`load_dataset` and `test_subset` are the face; `loaders` makes seeded training batches and
`for_checkpoint` rebuilds the dataset a checkpoint was trained on. Streamed datasets: `sources`
(folders, zips, shards), `transforms` (decode, eval and train views), `stream` (`LazyImages`),
`stream_loader` (their training batches).
"""

from advcli.data.datasets import (
    ImageData,
    StreamMode,
    hold_out,
    load_dataset,
    rows,
    to_float,
)
from advcli.data.stream import LazyImages
from advcli.data.subsets import stratified_order, test_subset

__all__ = [
    "ImageData", "LazyImages", "StreamMode", "hold_out", "load_dataset", "rows", "stratified_order",
    "test_subset", "to_float",
]
