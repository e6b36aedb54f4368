"""The dataset a checkpoint was trained on, rebuilt the way training built it.

Every stage that evaluates a checkpoint (eval, attack, landscape, audit) asks this module which
data to use: the dataset recorded in the checkpoint (or the one the user names), with the
training run's seed (`synthetic` is generated from it), its held-out validation split (so
the test set and the validation indices match training) and its view of the images (streamed
or in memory, at which `--image-size`), checked against the checkpoint's class count and input
shape.

How the stages read the images (`--stream`, `--image-size`, `--skip-bad`) is a `DataView`
(data/view.py); this module rebuilds a training run's view and drops undecodable examples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from advcli.data.datasets import ImageData, StreamMode, load_dataset
from advcli.data.view import DataView
from advcli.errors import DataError, UsageError


def recorded_view(data: ImageData) -> dict[str, Any]:
    """What a checkpoint records of the view it was trained on (config keys stream, image_size):
    the resolved one, so that `auto` cannot resolve otherwise on another machine."""
    return {"stream": StreamMode.on.value if data.streamed else StreamMode.off.value,
            "image_size": data.image_size if data.streamed else None}


def dataset_for_checkpoints(
    metas: Sequence[Mapping[str, Any]],
    *,
    names: Sequence[str],
    dataset: str | None = None,
    data_dir: str | None = None,
    view: DataView | None = None,
) -> ImageData:
    """The data the checkpoints (`metas`, described in errors by `names`) are evaluated on.

    `dataset` overrides what the checkpoints record; without it they must agree. The first
    checkpoint's training seed, validation split and view (stream, image size) rebuild the
    split when its dataset is used; `view`'s options, where given, override the recorded view.
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
    view = view or DataView()
    if same:
        view = view.given(stream=cfg.get("stream"), image_size=cfg.get("image_size"))
    data = load_dataset(
        str(chosen),
        data_dir=data_dir or cfg.get("data_dir"),
        download=False,
        # `synthetic` is generated from the training seed: rebuild the same test set.
        seed=int(cfg.get("seed", meta.get("seed", 0)) or 0),
        val_split=int(cfg.get("val_split", 0) or 0) if same else 0,
        **view.load_kwargs(str(chosen)),
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
        if data.streamed and len(shape) == 3 and shape[1] == shape[2]:
            # Streamed images are resized: the size is a choice, not a property of the data.
            hint = f"pass --image-size {shape[1]}"
        raise DataError(f"{name!r} expects images of shape {list(shape)} but {data.name} has "
                        f"{list(data.input_shape)}; {hint}")


def dataset_for_checkpoint(
    meta: Mapping[str, Any], *, name: str, dataset: str | None = None, data_dir: str | None = None,
    view: DataView | None = None,
) -> ImageData:
    """`dataset_for_checkpoints` for one checkpoint."""
    return dataset_for_checkpoints([meta], names=[name], dataset=dataset, data_dir=data_dir, view=view)


def drop_undecodable(xs: Any, index: torch.Tensor, skip_bad: bool) -> tuple[torch.Tensor, list[str]]:
    """(index, skipped file names): `index` without the examples whose files do not decode, with
    `skip_bad` on a streamed split (`LazyImages.decodable`); else `index` as it is (an undecodable
    file then stops the stage with a DataError naming it)."""
    if not skip_bad or isinstance(xs, torch.Tensor):
        return index, []
    kept, bad = xs.decodable(index)
    return torch.as_tensor(kept, dtype=torch.int64), list(bad)


def is_lazy(x: Any) -> bool:
    """True for a streamed split (decoded on access), False for an in-memory tensor."""
    return not isinstance(x, torch.Tensor)


def skipped_files(data: ImageData) -> int:
    """How many undecodable training files a streamed run under --skip-bad has skipped so far
    (`ImageData.bad_count()`, counted by the streaming loader); 0 for in-memory data."""
    count = getattr(data, "bad_count", None)
    return int(count()) if data.streamed and callable(count) else 0


def skipped_line(skipped: Sequence[str]) -> str:
    """The log line of an evaluation stage that left out undecodable files (--skip-bad)."""
    shown = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    return f"skipped {len(skipped)} undecodable files (--skip-bad): {shown}"


def view_record(data: ImageData, skipped: Sequence[str]) -> dict[str, Any]:
    """What a result's data block records of the view: the size of a streamed dataset and the
    files --skip-bad left out (keys absent when in memory / none, as in files before streaming)."""
    record: dict[str, Any] = {}
    if data.streamed and data.image_size is not None:
        record["image_size"] = int(data.image_size)
    if skipped:
        record["skipped_bad"] = list(skipped)
    return record
