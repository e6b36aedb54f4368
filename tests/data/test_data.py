"""Datasets (every offline kind), the cache, test subsets, validation split, augment modes."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advcli.data import load_dataset, stratified_order, test_subset
from advcli.data.augment import device_augment, numpy_crop_flip
from advcli.data.loaders import train_batches
from advcli.errors import DataError, UsageError
from advcli.rng import Stream, stream_generator


def _write_tree(root: Path, n_per_class: int = 3, classes=("cat", "airplane", "dog")) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n_per_class):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")


def test_synthetic_is_seeded_and_balanced(synthetic_data):
    again = load_dataset("synthetic", seed=0)
    assert torch.equal(again.train_x, synthetic_data.train_x)
    other = load_dataset("synthetic", seed=1)
    assert not torch.equal(other.train_x, synthetic_data.train_x)
    assert synthetic_data.train_x.dtype == torch.uint8 and synthetic_data.train_x.shape[1:] == (3, 32, 32)
    counts = torch.bincount(synthetic_data.train_y, minlength=10)
    assert counts.min() > 0.07 * len(synthetic_data.train_y)
    assert len(synthetic_data.mean) == 3 and all(0 < s < 1 for s in synthetic_data.std)


def test_folder_directory_and_zip_agree(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVCLI_CACHE", str(tmp_path / "cache"))
    _write_tree(tmp_path / "tree")
    d = load_dataset(f"folder:{tmp_path / 'tree'}")
    assert d.classes == ["airplane", "cat", "dog"]  # sorted folder names
    assert d.train_x.shape == (9, 3, 32, 32) and d.test_x.shape == (9, 3, 32, 32)
    zpath = tmp_path / "tree.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted((tmp_path / "tree").rglob("*.png")):
            zf.write(p, p.relative_to(tmp_path / "tree").as_posix())
    z = load_dataset(f"folder:{zpath}")
    assert z.classes == d.classes
    assert torch.equal(z.train_x, d.train_x) and torch.equal(z.test_y, d.test_y)
    # Second load comes from the cache and is identical.
    assert any((tmp_path / "cache").iterdir())
    z2 = load_dataset(f"folder:{zpath}")
    assert torch.equal(z2.train_x, z.train_x)


def test_missing_and_unknown_datasets_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope.zip'}")
    with pytest.raises(UsageError, match="valid values"):
        load_dataset("imagenet-9000")
    with pytest.raises(DataError, match="--download"):
        load_dataset("cifar10", data_dir=str(tmp_path))
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="zip"):
        load_dataset(f"folder:{bad}")


@pytest.mark.cifar
def test_cifar_zip_slice_reads_like_imagefolder(cifar_zip, tmp_path):
    """A slice of the real JPEG zip, read the way the full one is (same decoder, same order)."""
    small = tmp_path / "slice.zip"
    with zipfile.ZipFile(cifar_zip) as src, zipfile.ZipFile(small, "w") as dst:
        names = [n for n in src.namelist() if n.lower().endswith(".jpg")]
        keep = {}
        for n in sorted(names):
            parts = n.split("/")
            key = (parts[-3], parts[-2])
            if keep.get(key, 0) < 2:
                keep[key] = keep.get(key, 0) + 1
                dst.writestr("/".join(parts[-3:]), src.read(n))
    d = load_dataset(f"folder:{small}", use_cache=False)
    assert d.classes[0] == "airplane" and d.classes[-1] == "truck" and d.num_classes == 10
    assert d.train_x.shape == (20, 3, 32, 32)
    first = sorted(n for n in zipfile.ZipFile(small).namelist() if "/train/" in "/" + n)[0]
    ref = np.asarray(Image.open(io.BytesIO(zipfile.ZipFile(small).read(first))).convert("RGB")).transpose(2, 0, 1).copy()
    assert torch.equal(d.train_x[0], torch.from_numpy(ref))


def test_test_subset_is_deterministic_and_stratified(synthetic_data):
    y = synthetic_data.test_y
    a, b = test_subset(y, 100, seed=0), test_subset(y, 100, seed=0)
    assert torch.equal(a, b)
    assert len(set(a.tolist())) == 100
    assert torch.bincount(y[a], minlength=10).tolist() == [10] * 10
    assert not torch.equal(test_subset(y, 100, seed=1), a)
    assert torch.equal(test_subset(y, 50, seed=0), a[:50])  # prefixes are consistent
    assert sorted(stratified_order(y, 3).tolist()) == list(range(len(y)))


def test_val_split_is_held_out_from_train_only():
    d = load_dataset("synthetic", seed=0, val_split=500)
    full = load_dataset("synthetic", seed=0)
    assert len(d.val_y) == 500 and len(d.train_y) == len(full.train_y) - 500
    assert torch.equal(d.test_x, full.test_x)
    # The validation images are training images, none of them kept for training.
    train_set = {bytes(x.numpy()) for x in d.train_x[:2000]}
    assert not any(bytes(v.numpy()) in train_set for v in d.val_x[:200])


def test_device_augment_is_crop_and_flip():
    x = torch.rand(64, 3, 32, 32)
    g = stream_generator(0, 0, 0, Stream.augment)
    out = device_augment(x, g)
    assert out.shape == x.shape
    # Every output is a shifted (and maybe flipped) copy: its centre 24x24 appears in the
    # zero-padded input at some offset.
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(8):
        found = False
        for flip in (False, True):
            o = out[i].flip(-1) if flip else out[i]
            for dy in range(9):
                for dx in range(9):
                    if torch.equal(padded[i, :, dy : dy + 32, dx : dx + 32], o):
                        found = True
        assert found
    assert torch.equal(device_augment(x, stream_generator(0, 0, 0, Stream.augment)), out)  # seeded
    assert not torch.equal(device_augment(x, stream_generator(0, 1, 0, Stream.augment)), out)


def test_numpy_crop_flip_shape_and_content():
    np.random.seed(0)
    img = np.arange(3 * 32 * 32, dtype=np.int64).reshape(3, 32, 32).astype(np.uint8)
    out = numpy_crop_flip(img)
    assert out.shape == img.shape and out.dtype == np.uint8


@pytest.mark.parametrize("mode", ["none", "device", "fixed", "buggy"])
def test_every_augment_mode_yields_the_whole_epoch(mode, synthetic_data):
    x, y = synthetic_data.train_x[:300], synthetic_data.train_y[:300]
    seen = []
    for xb, yb in train_batches(x, y, augment=mode, batch_size=64, workers=0, seed=0, epoch=0, device=torch.device("cpu")):
        assert xb.dtype == torch.float32 and 0 <= xb.min() and xb.max() <= 1
        seen.append(yb)
    ys = torch.cat(seen)
    assert len(ys) == 300 and torch.equal(torch.bincount(ys, minlength=10), torch.bincount(y, minlength=10))


def _epoch_images(mode, workers, epoch, x, y):
    return torch.cat([
        xb for xb, _ in train_batches(x, y, augment=mode, batch_size=16, workers=workers, seed=0, epoch=epoch,
                                      device=torch.device("cpu"))
    ])


def test_buggy_mode_repeats_draws_across_workers_and_fixed_does_not():
    # All-identical images make the augmentation the only thing that differs between items.
    x = torch.full((64, 3, 32, 32), 200, dtype=torch.uint8)
    x[:, :, :, :16] = 50  # asymmetric, so a flip is visible
    y = torch.zeros(64, dtype=torch.int64)
    buggy = _epoch_images("buggy", 2, 0, x, y)
    # Worker 0 makes batch 0, worker 1 batch 1: with the bug they draw the same numbers.
    assert torch.equal(buggy[:16], buggy[16:32])
    # ... and every epoch repeats the last.
    assert torch.equal(_epoch_images("buggy", 2, 1, x, y), buggy)
    fixed = _epoch_images("fixed", 2, 0, x, y)
    assert not torch.equal(fixed[:16], fixed[16:32])
    assert not torch.equal(_epoch_images("fixed", 2, 1, x, y), fixed)


def _row_shift(img: torch.Tensor) -> int:
    """The vertical crop offset (0..8) of an all-bright image: the zero rows the padding left."""
    empty = (img == 0).all(dim=(0, 2)).tolist()
    top = next((i for i, e in enumerate(empty) if not e), len(empty))
    bottom = next((i for i, e in enumerate(reversed(empty)) if not e), len(empty))
    return 4 - top if top else 4 + bottom


def test_crop_offsets_are_not_a_function_of_the_permutation():
    # On the CPU, identically seeded generators for the data order and the crops made the
    # first image's crop offset equal to its index mod 9: with 9 images, (first image, offset)
    # took 9 values only. With independent streams an image's offset varies between epochs.
    n = 9
    x = torch.full((n, 3, 8, 8), 255, dtype=torch.uint8)
    ids = torch.arange(n)
    pairs = set()
    for epoch in range(60):
        (xb, yb), = train_batches(x, ids, augment="device", batch_size=n, workers=0, seed=0, epoch=epoch,
                                  device=torch.device("cpu"))
        pairs.add((int(yb[0]), _row_shift(xb[0])))
    firsts = {i for i, _ in pairs}
    assert len(firsts) > 1  # the permutation does change
    assert len(pairs) > 2 * len(firsts)  # ... and, for a given first image, so does its crop
