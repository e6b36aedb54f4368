"""`--subset first|stratified` (issue 18 item 2): which n examples `--n` takes, in eval, attack,
audit and landscape; `first` refused where the dataset has no order of its own (image folders
and zips); recorded in every result's data block and in what `eval --resume` checks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from advcli.cli.app import app
from advcli.data import stratified_order, test_subset
from advcli.data.subsets import Subset
from advcli.errors import UsageError
from advcli.evaluate.progress_file import STOP_AFTER_ENV, load_progress, progress_path_for, start_progress
from advcli.formats.results import index_sha256

FOLDER_REFUSAL = "use --subset stratified, or --dataset cifar10 --data-dir DIR"


def _run(*args: object, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


@pytest.fixture
def decoded_once(synthetic_data, monkeypatch: pytest.MonkeyPatch) -> None:
    """CLI runs reuse the session's synthetic dataset (the tiny checkpoint's own)."""
    from advcli.data import for_checkpoint
    from advcli.landscape import run as landscape

    monkeypatch.setattr(for_checkpoint, "dataset_for_checkpoint", lambda *a, **k: synthetic_data)
    monkeypatch.setattr(landscape, "dataset_for_checkpoints", lambda *a, **k: synthetic_data)


# --------------------------------------------------------------------------- the indices

def test_first_and_stratified_give_the_documented_indices(synthetic_data) -> None:
    y = synthetic_data.test_y
    first = test_subset(y, 25, seed=3, subset=Subset.first, dataset="synthetic")
    torch.testing.assert_close(first, torch.arange(25))  # the dataset's own order, no seed
    assert torch.equal(test_subset(y, 25, seed=0, subset="first"), first)
    assert torch.equal(test_subset(y, None, subset="first"), torch.arange(len(y)))
    assert torch.equal(test_subset(y, 10 * len(y), subset="first"), torch.arange(len(y)))
    strat = test_subset(y, 25, seed=3)  # the default, as before
    assert torch.equal(strat, stratified_order(y, 3)[:25])
    assert torch.equal(test_subset(y, 25, seed=3, subset="stratified"), strat)
    # Class-interleaved: the first 10 hold every class once; the first 10 indices need not.
    assert sorted(y[strat[:10]].tolist()) == list(range(10))
    assert not torch.equal(first, strat)
    with pytest.raises(UsageError, match="--n must be a positive"):
        test_subset(y, 0, subset="first")


def test_first_is_refused_for_an_image_folder() -> None:
    y = torch.arange(4).repeat_interleave(5)  # an image folder lists class by class
    with pytest.raises(UsageError, match=FOLDER_REFUSAL) as err:
        test_subset(y, 5, subset="first", dataset="folder:data/cifar10-jpeg.zip")
    assert "\n" not in str(err.value)
    assert len(test_subset(y, 5, subset="stratified", dataset="folder:x")) == 5


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-class 32x32 image folder (1 train, 2 test images per class): tiny_ckpt's shape."""
    root = tmp_path_factory.mktemp("folder") / "images"
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 1), ("test", 2)):
        for c in range(10):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    root / split / f"c{c}" / f"{i}.png")
    return root


@pytest.mark.parametrize("command", ["eval", "attack", "audit", "landscape"])
def test_every_command_refuses_first_on_a_folder_in_one_line(
    command: str, tiny_ckpt: Path, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADVCLI_CACHE", str(tmp_path / "cache"))
    out = tmp_path / ("out.safetensors" if command == "attack" else "out.yaml")
    r = _run(command, tiny_ckpt, "--dataset", f"folder:{folder}", "--subset", "first", "--n", "4",
             "--device", "cpu", "--out", out)
    assert r.exit_code == 2, r.output
    assert FOLDER_REFUSAL in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists()


def test_a_checkpoint_trained_on_a_folder_is_refused_before_its_data_is_loaded(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    from advcli.models.checkpoint import load_tensors, save_tensors

    tensors, meta = load_tensors(tiny_ckpt)
    ckpt = save_tensors(tmp_path / "zip.safetensors", tensors, {**meta, "dataset": "folder:gone.zip"})
    r = _run("eval", ckpt, "--subset", "first", "--device", "cpu")
    assert r.exit_code == 2 and FOLDER_REFUSAL in r.output, r.output  # not "gone.zip does not exist"


def test_unknown_subset_and_first_of_an_adversarial_set_are_usage_errors(tiny_ckpt: Path) -> None:
    r = _run("eval", tiny_ckpt, "--subset", "random", "--device", "cpu")
    assert r.exit_code == 2 and "valid values: first, stratified" in r.output, r.output
    # landscape --adv-data takes the set's own first N: `first` would not choose anything.
    r = _run("landscape", tiny_ckpt, "--adv-data", "adv.safetensors", "--subset", "first")
    assert r.exit_code == 2 and "drop --subset" in r.output, r.output


# --------------------------------------------------------------------------- recorded

def test_every_result_records_its_subset(tiny_ckpt: Path, tmp_path: Path, decoded_once) -> None:
    n = 16
    first = index_sha256(np.arange(n))
    common = ["--n", n, "--device", "cpu"]

    def data_of(path: Path) -> dict:
        return yaml.safe_load(path.read_text())["data"]

    for subset, expected in (("first", first), ("stratified", None)):
        out = tmp_path / f"eval-{subset}.yaml"
        r = _run("eval", tiny_ckpt, *common, "--no-pgd", "--subset", subset, "-o", out, "-q")
        assert r.exit_code == 0, r.output
        d = data_of(out)
        assert d["subset"] == subset and (expected is None or d["index_sha256"] == expected)
    assert data_of(tmp_path / "eval-stratified.yaml")["index_sha256"] != first
    cfg = tmp_path / "eval.yaml"  # the --config key
    cfg.write_text("subset: first\npgd: false\n")
    r = _run("eval", tiny_ckpt, *common, "--config", cfg, "-o", tmp_path / "cfg.yaml", "-q")
    assert r.exit_code == 0, r.output
    assert data_of(tmp_path / "cfg.yaml")["index_sha256"] == first

    adv = tmp_path / "adv.safetensors"
    r = _run("attack", tiny_ckpt, *common, "--steps", "1", "--subset", "first", "--out", adv)
    assert r.exit_code == 0, r.output
    d = data_of(adv.with_suffix(".yaml"))
    assert d["subset"] == "first" and d["index_sha256"] == first

    out = tmp_path / "audit.yaml"
    r = _run("audit", tiny_ckpt, *common, "--checks", "gradients", "--subset", "first", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    d = data_of(out)
    assert d["subset"] == "first" and d["index_sha256"] == first

    out = tmp_path / "landscape.yaml"
    r = _run("landscape", tiny_ckpt, *common, "--points", "3", "--subset", "first", "--out", out)
    assert r.exit_code == 0, r.output
    d = data_of(out)
    assert d["subset"] == "first" and d["index_sha256"] == first


# --------------------------------------------------------------------------- resume

def test_resume_is_refused_when_the_subset_changed(tiny_ckpt: Path, tmp_path: Path, decoded_once) -> None:
    out = tmp_path / "r.yaml"
    args = ["eval", tiny_ckpt, "--n", "16", "--eps", "8/255", "--pgd-steps", "1", "--batch-size", "4",
            "--device", "cpu", "-q", "-o", out]
    assert _run(*args, env={STOP_AFTER_ENV: "1"}).exit_code == 130
    assert load_progress(progress_path_for(out)).fingerprint["data"]["subset"] == "stratified"
    r = _run(*args, "--resume", "--subset", "first")
    assert r.exit_code == 2, r.output
    assert "other examples (subset: stratified there, first here)" in " ".join(r.output.split())
    r = _run(*args, "--resume")
    assert r.exit_code == 0, r.output


def test_a_progress_file_from_before_subset_resumes_as_stratified(tmp_path: Path) -> None:
    path = tmp_path / "r.progress.yaml"
    old = {"checkpoint": {"sha256": "a" * 64},
           "data": {"dataset": "synthetic", "split": "test", "index_sha256": "b" * 64}}
    start_progress(path, old, resume=False).save()
    now = {"checkpoint": old["checkpoint"], "data": {**old["data"], "subset": "stratified"}}
    assert start_progress(path, now, resume=True).path == path
    now["data"]["subset"] = "first"
    with pytest.raises(UsageError, match=r"subset: stratified there, first here"):
        start_progress(path, now, resume=True)


# --------------------------------------------------------------------------- list:FILE, robustbench

def _stem_shards(tree: Path, out: Path) -> Path:
    """The tree's val images as one webdataset shard keyed by file stem (as ImageNet shards often
    are), in the tree's sorted file-name order; train as another."""
    import webdataset as wds

    out.mkdir()
    classes = sorted(p.name for p in (tree / "train").iterdir())
    (out / "classes.txt").write_text("\n".join(classes))
    for split in ("train", "val"):
        with wds.TarWriter(str(out / f"{split}-000000.tar")) as sink:
            for p in sorted((tree / split).glob("*/*"), key=lambda p: p.name):
                sink.write({"__key__": p.name.split(".")[0], "jpg": p.read_bytes(),
                            "cls": str(classes.index(p.parent.name))})
    return out


def test_a_list_picks_the_named_files_of_a_streamed_folder_and_of_shards(tmp_path: Path, monkeypatch) -> None:
    from advcli.data import load_dataset
    from advcli.data.subsets import parse_subset, subset_record
    from advcli.errors import DataError
    from tests.data.stream_trees import imagenet_tree

    monkeypatch.setenv("ADVCLI_CACHE", str(tmp_path / "cache"))
    tree = imagenet_tree(tmp_path / "imagenet", n_train=2, n_val=3)
    picked = ["n01484850/ILSVRC2012_val_00000006.JPEG", "n01440764/ILSVRC2012_val_00000001.JPEG",
              "n01443537/ILSVRC2012_val_00000008.JPEG"]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(picked) + "\n\n")  # a trailing blank line is no entry
    flist = parse_subset(f"list:{listing}")
    assert flist.entries == tuple(picked)
    assert subset_record(flist) == {"subset": f"list:{listing}",
                                    "subset_sha256": hashlib.sha256(listing.read_bytes()).hexdigest()}
    pixels = []
    for spec in (f"folder:{tree}", f"shards:{_stem_shards(tree, tmp_path / 'shards')}"):
        d = load_dataset(spec, image_size=16, stream="on")
        idx = test_subset(d.test_y, None, subset=flist, dataset=d.name, streamed=True, x=d.test_x)
        # Val files are numbered 1.. in sorted order: the list's files are positions 5, 0, 7.
        assert idx.tolist() == [5, 0, 7]
        assert [d.classes[int(c)] for c in d.test_y[idx]] == [p.split("/")[0] for p in picked]
        assert test_subset(d.test_y, 2, subset=flist, dataset=d.name, streamed=True, x=d.test_x).tolist() == [5, 0]
        pixels.append(d.test_x[idx])
        missing = parse_subset(f"list:{_write(tmp_path / 'm.txt', [*picked, 'n01440764/a.JPEG', 'b/c.JPEG'])}")
        with pytest.raises(DataError, match=r"2 of 5 .*: n01440764/a.JPEG, b/c.JPEG$"):
            test_subset(d.test_y, None, subset=missing, dataset=d.name, streamed=True, x=d.test_x)
    assert torch.equal(pixels[0], pixels[1])
    # Names only where the files are streamed.
    with pytest.raises(UsageError, match=r"read into memory keeps no names: stream it \(--stream on\)"):
        test_subset(torch.zeros(3), None, subset=flist, dataset=f"folder:{tree}", streamed=False)
    with pytest.raises(UsageError, match="has no files"):
        test_subset(torch.zeros(3), None, subset=flist, dataset="synthetic")


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines))
    return path


def test_list_files_that_cannot_name_examples_are_usage_errors(tmp_path: Path) -> None:
    from advcli.data.subsets import parse_subset

    with pytest.raises(UsageError, match="cannot read the list file"):
        parse_subset(f"list:{tmp_path / 'absent.txt'}")
    with pytest.raises(UsageError, match="names no files"):
        parse_subset(f"list:{_write(tmp_path / 'empty.txt', ['', '  '])}")
    with pytest.raises(UsageError, match="names 'a/b.JPEG' twice"):
        parse_subset(f"list:{_write(tmp_path / 'twice.txt', ['a/b.JPEG', 'a/c.JPEG', 'a/b.JPEG'])}")
    with pytest.raises(UsageError, match="valid values: first, stratified, list:FILE, robustbench"):
        parse_subset("lisst:x")


class _Named:
    """A split with names but no files: where a list is checked before it is matched."""

    def __len__(self) -> int:
        return 0

    def key(self, position: int) -> str:
        raise AssertionError("matched before the class count was checked")


def test_robustbench_is_the_packages_5000_file_list_or_says_how_to_install_it(monkeypatch) -> None:
    import importlib.util

    from advcli.data import subsets

    if importlib.util.find_spec("robustbench") is not None:
        rb = subsets.parse_subset("robustbench")
        assert rb.value == "robustbench" and len(rb.entries) == len(set(rb.entries)) == 5000
        assert rb.entries[0] == "n09468604/ILSVRC2012_val_00015253.JPEG"
        assert all(e.startswith("n") and "/ILSVRC2012_val_" in e for e in rb.entries)
        assert subsets.subset_record(rb)["subset_sha256"] == rb.sha256
        with pytest.raises(UsageError, match="ImageNet's 1000 sorted class folders; shards:x has 3 classes"):
            subsets.list_positions(_Named(), rb, dataset="shards:x", classes=["a", "b", "c"])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match=r"pip install advcli\[robustbench\]"):
        subsets.parse_subset("robustbench")


def test_resume_is_refused_when_the_list_changed(tmp_path: Path) -> None:
    path = tmp_path / "r.progress.yaml"
    fp = {"checkpoint": {"sha256": "a" * 64},
          "data": {"dataset": "folder:x", "split": "test", "subset": "list:l.txt", "subset_sha256": "c" * 64,
                   "index_sha256": "b" * 64}}
    start_progress(path, fp, resume=False).save()
    assert start_progress(path, fp, resume=True).path == path
    other = {**fp, "data": {**fp["data"], "subset_sha256": "d" * 64}}
    with pytest.raises(UsageError, match="other examples .subset_sha256"):
        start_progress(path, other, resume=True)
