"""Datasets as decoded uint8 tensors, augmentation modes and seeded training batches."""

from advcli.data.datasets import (
    ImageData,
    hold_out,
    load_dataset,
    stratified_order,
    test_subset,
    to_float,
)

__all__ = ["ImageData", "hold_out", "load_dataset", "stratified_order", "test_subset", "to_float"]
