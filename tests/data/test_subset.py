"""`--subset first|stratified` (issue 18 item 2): which n examples `--n` takes, in eval, attack,
audit and landscape; `first` refused where the dataset has no order of its own (image folders
and zips); recorded in every result's data block and in what `eval --resume` checks."""

from __future__ import annotations

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
