"""benchmarks/jpeg_tree.py writes the ImageNet-layout folder and shards it says it writes."""

from __future__ import annotations

import importlib
import io
import tarfile
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def jt() -> ModuleType:
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCHMARKS))
        return importlib.import_module("jpeg_tree")


def _files(root: Path, split: str) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / split).rglob("*"))
            if p.is_file()}


def test_folder_layout_sizes_and_classes(jt: ModuleType, tmp_path: Path) -> None:
    s = jt.write_tree(tmp_path / "t", n_train=23, n_val=7, classes=3, min_size=40, max_size=90, seed=1)
    root = s.out
    assert (root / "classes.txt").read_text().split() == ["n00000000", "n00000001", "n00000002"]
    train, val = _files(root, "train"), _files(root, "val")
    assert len(train) == 23 and len(val) == 7
    # class-balanced: 8, 8, 7 training images; 3, 2, 2 validation images
    assert sorted(Counter(n.split("/")[1] for n in train).values()) == [7, 8, 8]
    assert sorted(Counter(n.split("/")[1] for n in val).values()) == [2, 2, 3]
    assert all(n.endswith(".JPEG") for n in [*train, *val])
    sizes = []
    for data in [*train.values(), *val.values()]:
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            sizes.append(im.size)
    assert all(40 <= w <= 90 and 40 <= h <= 90 for w, h in sizes)
    assert len(set(sizes)) > 20 and len({round(w / h, 2) for w, h in sizes}) > 10
    # validation files are numbered across classes: their sorted names interleave the classes
    by_name = sorted(val, key=lambda n: n.split("/")[-1])
    assert [n.split("/")[-1] for n in by_name] == [f"val_{i:08d}.JPEG" for i in range(1, 8)]
    assert [n.split("/")[1] for n in by_name] != sorted(n.split("/")[1] for n in by_name)


def test_deterministic_from_the_seed_and_independent_of_workers(jt: ModuleType, tmp_path: Path) -> None:
    args = dict(n_train=12, n_val=4, classes=2, min_size=16, max_size=48)
    a = jt.write_tree(tmp_path / "a", seed=5, **args).out
    b = jt.write_tree(tmp_path / "b", seed=5, workers=2, **args).out
    c = jt.write_tree(tmp_path / "c", seed=6, **args).out
    for split in ("train", "val"):
        assert _files(a, split) == _files(b, split)
        assert _files(a, split) != _files(c, split)
    with pytest.raises(SystemExit, match="not empty"):
        jt.write_tree(a, seed=5, **args)


def test_shards_hold_the_folders_images_and_labels(jt: ModuleType, tmp_path: Path) -> None:
    s = jt.write_tree(tmp_path / "t", n_train=20, n_val=6, classes=4, min_size=16, max_size=40,
                      seed=2, shards=3)
    assert [p.name for p in s.shards["train"]] == [f"train-00000{i}.tar" for i in range(3)]
    assert [p.name for p in s.shards["val"]] == ["val-000000.tar"]
    for split in ("train", "val"):
        folder = {Path(n).stem: (Path(n).parts[1], data) for n, data in _files(s.out, split).items()}
        samples: dict[str, dict[str, bytes]] = {}
        for shard in s.shards[split]:
            with tarfile.open(shard) as tar:
                for m in tar.getmembers():
                    key, ext = m.name.split(".")
                    samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
        assert set(samples) == set(folder)
        for key, sample in samples.items():
            wnid, data = folder[key]
            assert sample["jpg"] == data
            assert int(sample["cls"]) == int(wnid[1:])
    only = jt.write_tree(tmp_path / "only", n_train=20, n_val=6, classes=4, min_size=16, max_size=40,
                         seed=2, shards=3, folder=False)
    assert sorted(p.name for p in only.out.iterdir()) == sorted(
        ["classes.txt", "synsets.txt", *(p.name for v in s.shards.values() for p in v)])
    assert (only.out / "train-000001.tar").read_bytes() == (s.out / "train-000001.tar").read_bytes()


def test_source_images_keep_their_class(jt: ModuleType, tmp_path: Path, cifar_zip: Path) -> None:
    import numpy as np

    s = jt.write_tree(tmp_path / "t", n_train=20, n_val=10, classes=10, min_size=64, max_size=96,
                      seed=0, source=f"folder:{cifar_zip}")
    synsets = [ln.split() for ln in (s.out / "synsets.txt").read_text().splitlines()]
    assert synsets[0] == ["n00000000", "airplane"] and synsets[9] == ["n00000009", "truck"]
    items = jt.plan(20, 10, 10, 0, jt.Source(str(cifar_zip)))
    assert len({i.origin for i in items}) == 30  # no source image used twice
    for item in items:
        # training images from the source's train split, validation from its held-out test split
        split, name = item.origin.split("/")[-3:-1]
        assert split == {"train": "train", "val": "test"}[item.split] and name == synsets[item.cls][1]

    def pixels(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB").resize((32, 32), Image.BICUBIC), dtype=np.float32)

    # Each written image, shrunk back to 32 x 32, is nearest to its own source image.
    sources = [pixels(i.source) for i in items]
    for k, item in enumerate(items):
        folder = s.out / item.split / synsets[item.cls][0]
        written = pixels((folder / f"{item.stem}.JPEG").read_bytes())
        distances = [float(np.abs(written - src).mean()) for src in sources]
        assert int(np.argmin(distances)) == k
