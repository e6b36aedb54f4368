"""Streamed datasets: listing, decoding, the eval transform, auto selection, views, shards, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import v2

from advcli.data import load_dataset
from advcli.data.datasets import rows
from advcli.data.sources import FileSource
from advcli.data.stream import LazyImages
from advcli.data.subsets import check_subset, train_subset
from advcli.data.transforms import crop_params, decode, train_view
from advcli.errors import DataError, UsageError
from tests.data.stream_trees import CLASSES, equal_size_tree, image_bytes, imagenet_tree, write_shards


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ADVCLI_STREAM_BYTES", raising=False)
    return tmp_path / "cache"


@pytest.fixture()
def tree(tmp_path, cache):
    return imagenet_tree(tmp_path / "imagenet")


def _reference_eval(path, r):
    # torchvision's own ops, as a user would write them: Resize(shorter side) + CenterCrop.
    img = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    return v2.Compose([v2.Resize(round(r / 0.875), antialias=True), v2.CenterCrop(r)])(img)


def test_auto_streams_varying_sizes_and_lists_imagenet_layout(tree):
    d = load_dataset(f"folder:{tree}", image_size=24)
    assert d.streamed and d.image_size == 24
    assert isinstance(d.train_x, LazyImages) and isinstance(d.test_x, LazyImages)
    assert d.classes == list(CLASSES)
    assert d.train_x.shape == (12, 3, 24, 24) and d.train_x.dtype == torch.uint8 and len(d.test_x) == 6
    # Training: class by class. val/ is the test split, in file-name order (interleaved classes).
    assert d.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    names = [d.test_x.name(i).rsplit("/", 1)[1] for i in range(len(d.test_x))]
    assert names == sorted(names) and d.test_y.tolist() == [0, 1, 2, 0, 1, 2]
    assert len(d.mean) == 3 and all(0 < s < 1 for s in d.std)


def test_eval_view_equals_torchvision_reference_ops(tree):
    d = load_dataset(f"folder:{tree}", image_size=24, stream="on")
    x = d.test_x
    batch = x[[0, 3, 5]]
    for j, i in enumerate([0, 3, 5]):
        ref = _reference_eval(x.name(i), 24)
        assert torch.equal(batch[j], ref)
        assert torch.equal(x[i], ref)


def test_lazy_indexing_matches_tensor_semantics(tree):
    x = load_dataset(f"folder:{tree}", image_size=16).train_x
    full = x[:]
    assert full.shape == (12, 3, 16, 16) and full.dtype == torch.uint8
    assert torch.equal(x[2:5], full[2:5])
    assert torch.equal(x[torch.tensor([7, 1])], full[torch.tensor([7, 1])])
    assert torch.equal(x[[-1]], full[[-1]])
    mask = torch.zeros(12, dtype=torch.bool)
    mask[[0, 9]] = True
    assert torch.equal(x[mask], full[mask])
    assert x[3].shape == (3, 16, 16) and torch.equal(x[3], full[3])
    assert torch.equal(x[np.int64(3)], full[3]) and torch.equal(x[torch.tensor(3)], full[3])
    view = x.take(torch.tensor([9, 4, 4]))
    assert len(view) == 3 and torch.equal(view[:], full[[9, 4, 4]])
    assert torch.equal(view.take([2])[:], full[[4]])
    assert torch.equal(rows(x, torch.tensor([1, 2]))[:], full[1:3])


@pytest.mark.parametrize("fmt,mode", [("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGBA"), ("PNG", "P"), ("BMP", "RGB"),
                                      ("WEBP", "RGB")])
def test_any_image_kind_decodes_to_three_channels(fmt, mode):
    img = decode(image_bytes(13, 21, seed=0, fmt=fmt, mode=mode), "x")
    assert img.shape == (3, 13, 21) and img.dtype == torch.uint8
    if mode == "L":
        assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])


def test_crop_params_keep_torchvision_ranges():
    g = torch.Generator().manual_seed(0)
    draw = lambda: float(torch.rand((), generator=g))  # noqa: E731
    for h, w in [(37, 53), (200, 40), (16, 16)]:
        for _ in range(200):
            top, left, ch, cw = crop_params(h, w, draw)
            assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0
    # Impossible draws (area 100 %, extreme ratio) fall back to the centre crop clamped to 4:3.
    top, left, ch, cw = crop_params(40, 200, lambda: 0.999999)
    assert (ch, cw) == (40, 53) and left == (200 - 53) // 2 and top == 0


def test_train_view_is_resized_crop_then_flip():
    img = decode(image_bytes(30, 40, seed=3), "x")
    draws = iter([0.5, 0.5, 0.25, 0.75, 0.9])  # scale, ratio, top, left, then flip's draw
    out = train_view(img, 12, lambda: next(draws))
    top, left, ch, cw = crop_params(30, 40, iter([0.5, 0.5, 0.25, 0.75]).__next__)
    ref = v2.functional.resized_crop(img, top, left, ch, cw, [12, 12], antialias=True)
    assert torch.equal(out, ref)  # 0.9 >= 0.5: no flip
    draws = iter([0.5, 0.5, 0.25, 0.75, 0.1])
    assert torch.equal(train_view(img, 12, lambda: next(draws)), ref.flip(-1))


def test_auto_keeps_equal_size_data_in_memory_byte_identical(tmp_path, cache, monkeypatch):
    root = equal_size_tree(tmp_path / "small")
    auto = load_dataset(f"folder:{root}", use_cache=False)
    off = load_dataset(f"folder:{root}", stream="off", use_cache=False)
    assert not auto.streamed and auto.image_size is None and isinstance(auto.train_x, torch.Tensor)
    assert torch.equal(auto.train_x, off.train_x) and torch.equal(auto.test_x, off.test_x)
    assert auto.mean == off.mean
    # Over the memory budget, the same data streams.
    monkeypatch.setenv("ADVCLI_STREAM_BYTES", "1000")
    big = load_dataset(f"folder:{root}", use_cache=False, image_size=16)
    assert big.streamed and isinstance(big.train_x, LazyImages)
    on = load_dataset(f"folder:{root}", stream="on", image_size=16)
    assert on.streamed


def test_hold_out_and_train_subset_take_views(tree):
    full = load_dataset(f"folder:{tree}", image_size=16, seed=0)
    d = load_dataset(f"folder:{tree}", image_size=16, seed=0, val_split=3)
    assert isinstance(d.val_x, LazyImages) and len(d.val_x) == 3 and len(d.train_x) == 9
    all_px = full.train_x[:]
    moved = {tuple(all_px[i].flatten().tolist()[:50]) for i in range(12)}
    for part, labels in ((d.val_x, d.val_y), (d.train_x, d.train_y)):
        px = part[:]
        for j in range(len(part)):
            k = next(i for i in range(12) if torch.equal(all_px[i], px[j]))
            assert full.train_y[k] == labels[j]
            assert tuple(all_px[k].flatten().tolist()[:50]) in moved
    keep = train_subset(d.train_y, 6)
    sub = rows(d.train_x, keep)
    assert isinstance(sub, LazyImages) and torch.equal(sub[:], d.train_x[keep])
    assert sorted(d.train_y[keep].tolist()) == [0, 0, 1, 1, 2, 2]


def test_channel_stats_are_cached(tree, monkeypatch):
    first = load_dataset(f"folder:{tree}", image_size=16)
    assert list(first_cache := sorted(p.name for p in tree.parent.joinpath("cache").iterdir()))
    assert any(name.endswith(".stats16.json") for name in first_cache)

    def no_decoding(*_a, **_k):
        raise AssertionError("channel stats recomputed")

    monkeypatch.setattr("advcli.data.datasets._channel_stats", no_decoding)
    again = load_dataset(f"folder:{tree}", image_size=16)
    assert (again.mean, again.std) == (first.mean, first.std)


def test_subset_first_is_allowed_on_a_streamed_folder():
    check_subset("first", "folder:imagenet", streamed=True)
    check_subset("first", "shards:imagenet")
    with pytest.raises(UsageError):
        check_subset("first", "folder:imagenet")


def test_zip_streams_like_the_directory(tree, tmp_path):
    import zipfile

    zpath = tmp_path / "imagenet.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(tree.rglob("*.JPEG")):
            zf.write(p, "top/" + p.relative_to(tree).as_posix())
    z = load_dataset(f"folder:{zpath}", image_size=16)
    d = load_dataset(f"folder:{tree}", image_size=16)
    assert z.streamed and z.classes == d.classes
    assert torch.equal(z.train_x[:], d.train_x[:]) and torch.equal(z.test_x[:], d.test_x[:])
    assert torch.equal(z.test_y, d.test_y)


def test_shards_round_trip_equals_the_folder(tree, tmp_path, cache):
    shards = write_shards(tree, tmp_path / "shards")
    d = load_dataset(f"folder:{tree}", image_size=16, stream="on")
    s = load_dataset(f"shards:{shards}", image_size=16)
    assert s.streamed and s.classes == d.classes
    assert torch.equal(s.train_y, d.train_y) and torch.equal(s.test_y, d.test_y)
    assert torch.equal(s.train_x[:], d.train_x[:]) and torch.equal(s.test_x[:], d.test_x[:])
    assert s.mean == d.mean
    assert any(p.name.endswith(".shards.safetensors") for p in cache.iterdir())
    # A brace pattern naming the same shards (classes.txt beside them), read from the cached index.
    pattern = f"shards:{shards}/{{train,val}}-{{000000..000002}}.tar"
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(pattern)
    b = load_dataset(f"shards:{shards}/{{train-{{000000..000002}},val-000000,val-000001}}.tar", image_size=16)
    assert b.classes == d.classes and torch.equal(b.train_x[:], s.train_x[:])
    with pytest.raises(UsageError, match="shards always stream"):
        load_dataset(f"shards:{shards}", stream="off")


def test_corrupt_file_is_named_or_skipped(tree):
    bad = tree / "val" / CLASSES[1] / "ILSVRC2012_val_00000099.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(DataError, match="ILSVRC2012_val_00000099.JPEG"):  # auto's header sample met it
        load_dataset(f"folder:{tree}", image_size=16)
    d = load_dataset(f"folder:{tree}", image_size=16, stream="on")
    i = next(i for i in range(len(d.test_x)) if d.test_x.name(i) == str(bad))
    with pytest.raises(DataError, match="ILSVRC2012_val_00000099.JPEG") as err:
        d.test_x[:]
    assert "\n" not in str(err.value) and "--skip-bad" in str(err.value)
    kept, names = d.test_x.decodable()
    assert names == [str(bad)] and kept.tolist() == [k for k in range(len(d.test_x)) if k != i]
    assert d.bad_count() == 1
    s = load_dataset(f"folder:{tree}", image_size=16, stream="on", skip_bad=True)
    assert s.bad_count() == 0  # nothing decoded yet
    kept, names = s.test_x.decodable(torch.arange(len(s.test_x)))
    assert len(kept) == len(s.test_x) - 1 and s.bad_count() == 1


def test_in_memory_corrupt_file_is_named_or_skipped(tmp_path, cache):
    root = equal_size_tree(tmp_path / "small")
    (root / "train" / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_dataset(f"folder:{root}", stream="off")
    d = load_dataset(f"folder:{root}", stream="off", skip_bad=True)
    assert d.bad_count() == 1 and len(d.train_x) == 6 and not d.streamed


def test_in_memory_path_reads_an_imagenet_val_folder(tmp_path, cache):
    root = equal_size_tree(tmp_path / "small")
    (root / "test").rename(root / "val")
    d = load_dataset(f"folder:{root}", stream="off")
    assert len(d.test_x) == 6 and d.test_y.tolist() == [0, 0, 0, 1, 1, 1]


def test_file_source_reads_by_index(tree):
    rel = np.array([b"train/n01440764/n01440764_0.JPEG"], dtype=np.bytes_)
    src = FileSource(str(tree), rel)
    assert len(src) == 1 and src.read(0) == (tree / rel[0].decode()).read_bytes()
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"folder:{tree / 'missing'}")
