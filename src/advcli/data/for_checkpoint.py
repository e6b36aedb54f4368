"""The dataset a checkpoint was trained on, rebuilt the way training built it.

Every stage that evaluates a checkpoint (eval, attack, landscape, audit) asks this module which
data to use: the dataset recorded in the checkpoint (or the one the user names), with the
training run's seed (`synthetic` is generated from it) and its held-out validation split (so
the test set and the validation indices match training), checked against the checkpoint's
class count and input shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from advcli.data.datasets import ImageData, load_dataset
from advcli.errors import DataError, UsageError


def dataset_for_checkpoints(
    metas: Sequence[Mapping[str, Any]],
    *,
    names: Sequence[str],
    dataset: str | None = None,
    data_dir: str | None = None,
) -> ImageData:
    """The data the checkpoints (`metas`, described in errors by `names`) are evaluated on.

    `dataset` overrides what the checkpoints record; without it they must agree. The first
    checkpoint's training seed and validation split rebuild the split when its dataset is used.
    """
    recorded = {str(m.get("dataset")) for m in metas if m.get("dataset")}
    chosen = dataset
    if not chosen:
        if len(recorded) > 1:
            raise UsageError(
                f"the checkpoints were trained on different datasets ({', '.join(sorted(recorded))}); "
                "pass --dataset to pick the one to evaluate on"
            )
        if not recorded:
            raise DataError(f"{names[0]!r} does not record its dataset; pass --dataset")
        chosen = recorded.pop()
    meta = metas[0]
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    same = meta.get("dataset") is not None and str(chosen) == str(meta.get("dataset"))
    data = load_dataset(
        str(chosen),
        data_dir=data_dir or cfg.get("data_dir"),
        download=False,
        # `synthetic` is generated from the training seed: rebuild the same test set.
        seed=int(cfg.get("seed", meta.get("seed", 0)) or 0),
        val_split=int(cfg.get("val_split", 0) or 0) if same else 0,
    )
    for m, name in zip(metas, names, strict=True):
        check_fits(m, name, data)
    return data


def check_fits(
    meta: Mapping[str, Any], name: str, data: ImageData, *, hint: str = "pass the matching --dataset"
) -> None:
    """A DataError unless the checkpoint (`meta`, named `name`) was made for `data`'s class count
    and image shape: checked from the metadata, before any image goes through the model."""
    classes = int(meta.get("num_classes", data.num_classes))
    if classes != data.num_classes:
        raise DataError(f"{name!r} was trained on {classes} classes but {data.name} has "
                        f"{data.num_classes}; {hint}")
    shape = meta.get("input_shape")
    if shape and list(shape) != list(data.input_shape):
        raise DataError(f"{name!r} expects images of shape {list(shape)} but {data.name} has "
                        f"{list(data.input_shape)}; {hint}")


def dataset_for_checkpoint(
    meta: Mapping[str, Any], *, name: str, dataset: str | None = None, data_dir: str | None = None
) -> ImageData:
    """`dataset_for_checkpoints` for one checkpoint."""
    return dataset_for_checkpoints([meta], names=[name], dataset=dataset, data_dir=data_dir)
