"""Training batches from streamed data: per-item seeding, resume, rank sharding, bad files in
workers, and check-loader's verdict on the streamed pipeline."""

from __future__ import annotations

import textwrap

import pytest
import torch

from advcli.data import load_dataset
from advcli.data.loaders import train_batches
from advcli.data.sources import TensorSource
from advcli.data.stream import LazyImages
from advcli.data.stream_loader import item_view
from advcli.errors import DataError
from tests.data.stream_trees import imagenet_tree

CPU = torch.device("cpu")
R = 12


@pytest.fixture()
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVCLI_CACHE", str(tmp_path / "cache"))
    return load_dataset(f"folder:{imagenet_tree(tmp_path / 'imagenet', n_train=5)}", image_size=R, stream="on")


def _epoch(x, n, **kw):
    """{item index: pixels} and the item order of one epoch (labels = item indices)."""
    args = {"augment": "fixed", "batch_size": 4, "workers": 0, "seed": 3, "epoch": 1, "device": CPU} | kw
    items, order = {}, []
    for xb, yb in train_batches(x, torch.arange(n), **args):
        assert xb.dtype == torch.float32 and xb.shape[1:] == (3, R, R)
        assert 0 <= float(xb.min()) and float(xb.max()) <= 1
        for img, i in zip(xb, yb.tolist(), strict=True):
            items[i], order = img, order + [i]
    return items, order


def test_item_pixels_depend_only_on_seed_epoch_and_item(data):
    x, n = data.train_x, len(data.train_x)
    base, order = _epoch(x, n)
    assert sorted(order) == list(range(n))
    for kw in ({"batch_size": 3}, {"workers": 2}, {"workers": 2, "batch_size": 5}):
        other, other_order = _epoch(x, n, **kw)
        assert other_order == order
        assert all(torch.equal(other[i], base[i]) for i in range(n)), kw
    for i in (0, 7):
        assert torch.equal(base[i], item_view(x, i, _mode("fixed"), 3, 1).float() / 255)
    # Another epoch or seed: other crops (and another order).
    for kw in ({"epoch": 2}, {"seed": 4}):
        other, other_order = _epoch(x, n, **kw)
        assert other_order != order
        assert sum(torch.equal(other[i], base[i]) for i in range(n)) <= 1


def _mode(name):
    from advcli.config import Augment

    return Augment(name)


def test_none_mode_is_the_eval_view(data):
    x, n = data.train_x, len(data.train_x)
    items, _ = _epoch(x, n, augment="none", workers=2)
    full = x[:]
    assert all(torch.equal(items[i], full[i].float() / 255) for i in range(n))


def test_mid_epoch_resume_is_bit_identical(data):
    x, n = data.train_x, len(data.train_x)
    args = {"augment": "fixed", "batch_size": 4, "workers": 0, "seed": 1, "epoch": 2, "device": CPU}
    full = list(train_batches(x, torch.arange(n), **args))
    resumed = list(train_batches(x, torch.arange(n), skip=2, **(args | {"workers": 2})))
    assert len(resumed) == len(full) - 2
    for (xa, ya), (xb, yb) in zip(full[2:], resumed, strict=True):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    dropped = list(train_batches(x, torch.arange(n), drop_last=True, **args))
    assert [len(y) for _, y in dropped] == [4] * (n // 4)


def test_two_ranks_split_the_single_process_epoch(data):
    x, n = data.train_x, len(data.train_x)  # 15 items: one is the remainder with 2 ranks
    single, order = _epoch(x, n)
    ranks = [_epoch(x, n, rank=r, world_size=2) for r in (0, 1)]
    union = [i for items, _ in ranks for i in items]
    assert len(union) == len(set(union)) == n - n % 2
    assert set(union) == set(order[: n - n % 2])
    for items, rank_order in ranks:
        assert all(torch.equal(items[i], single[i]) for i in rank_order)


def test_buggy_mode_duplicates_workers_and_fixed_does_not():
    # Every item is the same image, so only the augmentation can tell batches apart.
    img = torch.arange(3 * 20 * 20, dtype=torch.int64).remainder(251).to(torch.uint8).view(1, 3, 20, 20)
    x = LazyImages(TensorSource(img.expand(8, -1, -1, -1)), image_size=R)
    args = {"batch_size": 4, "workers": 2, "seed": 0, "device": CPU}
    b0, b1 = (xb for xb, _ in train_batches(x, torch.zeros(8, dtype=torch.int64), augment="buggy", epoch=0, **args))
    assert torch.equal(b0, b1)  # worker 0 and worker 1 drew the same crops
    again = next(iter(train_batches(x, torch.zeros(8, dtype=torch.int64), augment="buggy", epoch=1, **args)))[0]
    assert torch.equal(again, b0)  # and every epoch repeats them
    f0, f1 = (xb for xb, _ in train_batches(x, torch.zeros(8, dtype=torch.int64), augment="fixed", epoch=0, **args))
    assert not torch.equal(f0, f1)


def test_corrupt_training_file_fails_in_a_worker_naming_it_or_is_skipped(data, tmp_path):
    x, n = data.train_x, len(data.train_x)
    bad = x.name(6)
    with open(bad, "wb") as fh:
        fh.write(b"GIF89a broken")
    args = {"augment": "fixed", "batch_size": 4, "workers": 2, "seed": 0, "epoch": 0, "device": CPU}
    with pytest.raises(DataError) as err:
        list(train_batches(x, torch.arange(n), **args))
    assert bad in str(err.value) and "\n" not in str(err.value)
    skipping = load_dataset(data.name, image_size=R, stream="on", skip_bad=True)
    seen = [i for _, yb in train_batches(skipping.train_x, torch.arange(n), **args) for i in yb.tolist()]
    assert sorted(seen) == [i for i in range(n) if i != 6]
    assert skipping.bad_count() == 1 and list(skipping.train_x.bad) == [bad]


@pytest.mark.parametrize("mode,verdict", [("fixed", "clean"), ("buggy", "bug")])
def test_check_loader_judges_the_streamed_pipeline(data, tmp_path, monkeypatch, mode, verdict):
    """check-loader on the streaming path's DataLoader as train_batches builds it (per-item seeds
    from seed, epoch, index; set_epoch for a loader kept across epochs): clean for `fixed`, a
    bug for `buggy` (its workers restore the parent's NumPy state)."""
    from advcli.check_loader import Verdict, check_pipeline

    root = data.name.split(":", 1)[1]
    # One module name per mode: an imported module stays in sys.modules for the next test.
    (tmp_path / f"streamed_{mode}.py").write_text(textwrap.dedent(f"""
        from functools import partial

        import numpy as np
        import torch
        from advcli.config import Augment
        from advcli.data import load_dataset
        from advcli.data.loaders import _buggy_init
        from advcli.data.stream_loader import stream_loader

        def pipeline():
            d = load_dataset({"folder:" + root!r}, image_size=8, stream="on")
            mode = Augment({mode!r})
            init = partial(_buggy_init, np.random.get_state()) if mode is Augment.buggy else None
            return stream_loader(d.train_x, d.train_y, torch.arange(len(d.train_x)), mode=mode,
                                 batch_size=4, workers=2, seed=0, epoch=0, rank=0, worker_init=init)
    """))
    monkeypatch.chdir(tmp_path)
    report = check_pipeline(f"streamed_{mode}:pipeline", workers=2, epochs=2, samples=8, persistent=[False])
    assert report.verdict is Verdict(verdict), repr(report)[:4000]
