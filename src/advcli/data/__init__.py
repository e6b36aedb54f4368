"""Datasets as decoded uint8 tensors, augmentation modes and seeded training batches.

`load_dataset` and `test_subset` are the face; `loaders` makes seeded training batches and
`for_checkpoint` rebuilds the dataset a checkpoint was trained on.
"""

from advcli.data.datasets import (
    ImageData,
    hold_out,
    load_dataset,
    stratified_order,
    test_subset,
    to_float,
)

__all__ = ["ImageData", "hold_out", "load_dataset", "stratified_order", "test_subset", "to_float"]
