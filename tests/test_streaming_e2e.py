"""The streaming path end to end through the CLI, on a generated ImageNet-layout folder of
variable-size JPEGs (benchmarks/jpeg_tree.py): train with --stream on, then eval rebuilds the
same view from the checkpoint, refuses another --image-size, takes --subset first and list:FILE
on the streamed folder, skips (or names) a corrupt file, and check-loader judges the pipeline."""

from __future__ import annotations

import hashlib
import importlib
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from advcli.cli.app import app
from advcli.formats.advset import load_adv_set
from advcli.formats.results import index_sha256

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SIZE = 32


def _run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line_refusal(r, *needles: str) -> None:
    assert r.exit_code in (1, 2) and isinstance(r.exception, SystemExit), r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output  # no traceback
    for needle in needles:
        assert needle in lines[0], r.output


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    """The generated folder (3 classes, 120 train / 30 val JPEGs of 40-90 px) and a tiny-cnn
    trained one epoch on it, streamed at 32 px; the cache in a temporary folder."""
    tmp = tmp_path_factory.mktemp("stream_e2e")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADVCLI_CACHE", str(tmp / "cache"))
        mp.setenv("ADVCLI_NO_PROGRESS", "1")
        mp.syspath_prepend(str(BENCHMARKS))
        jpeg_tree = importlib.import_module("jpeg_tree")
        root = jpeg_tree.write_tree(tmp / "tree", n_train=120, n_val=30, classes=3, min_size=40,
                                    max_size=90, seed=0).out
        ckpt = tmp / "model.safetensors"
        r = _run("train", "--dataset", f"folder:{root}", "--stream", "on", "--image-size", SIZE,
                 "--arch", "tiny-cnn", "--epochs", 1, "--batch-size", 32, "--workers", 0,
                 "--device", "cpu", "--out", ckpt)
        assert r.exit_code == 0, r.output
        yield tmp, root, ckpt


def _val_names(root: Path) -> list[str]:
    """The streamed test split's order: `<class>/<file>` sorted by file name, then class."""
    files = [p.relative_to(root / "val").as_posix() for p in (root / "val").rglob("*.JPEG")]
    return sorted(files, key=lambda f: (f.split("/")[1], f.split("/")[0]))


def _result(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_eval_rebuilds_the_training_view_and_refuses_another_size(env) -> None:
    tmp, root, ckpt = env
    out = tmp / "plain.yaml"
    r = _run("eval", ckpt, "--no-pgd", "--n", 30, "--device", "cpu", "-o", out)
    assert r.exit_code == 0, r.output
    data = _result(out)["data"]
    assert data["dataset"] == f"folder:{root}" and data["image_size"] == SIZE and data["n"] == 30
    r = _run("eval", ckpt, "--no-pgd", "--n", 5, "--image-size", 48, "--device", "cpu")
    _one_line_refusal(r, f"--image-size {SIZE}")


def test_subset_first_on_the_streamed_folder_refused_in_memory(env) -> None:
    tmp, root, ckpt = env
    out = tmp / "first.yaml"
    r = _run("eval", ckpt, "--no-pgd", "--subset", "first", "--n", 7, "--device", "cpu", "-o", out)
    assert r.exit_code == 0, r.output
    data = _result(out)["data"]
    assert data["subset"] == "first" and data["index_sha256"] == index_sha256(torch.arange(7).numpy())
    r = _run("eval", ckpt, "--no-pgd", "--subset", "first", "--n", 7, "--stream", "off", "--device", "cpu")
    _one_line_refusal(r, "use --subset stratified")


def test_subset_list_takes_exactly_the_listed_files_in_their_order(env) -> None:
    tmp, root, ckpt = env
    names = _val_names(root)
    picked = [names[i] for i in (17, 3, 29, 0, 11)]
    listing = tmp / "list.txt"
    listing.write_text("\n".join(picked) + "\n")
    expected = torch.tensor([names.index(p) for p in picked])
    out = tmp / "list.yaml"
    r = _run("eval", ckpt, "--no-pgd", "--subset", f"list:{listing}", "--device", "cpu", "-o", out)
    assert r.exit_code == 0, r.output
    data = _result(out)["data"]
    assert data["n"] == len(picked) and data["index_sha256"] == index_sha256(expected.numpy())
    assert data["subset"] == f"list:{listing}"
    assert data["subset_sha256"] == hashlib.sha256(listing.read_bytes()).hexdigest()
    # The attack's adversarial set stores the examples' positions: the list's, in its order; --n
    # takes the first N of the list.
    adv = tmp / "adv.safetensors"
    r = _run("attack", ckpt, "--subset", f"list:{listing}", "--n", 4, "--attack", "fgsm", "--eps", "2/255",
             "--device", "cpu", "--out", adv)
    assert r.exit_code == 0, r.output
    assert load_adv_set(adv).index.tolist() == expected[:4].tolist()
    # landscape chooses its examples the same way (and takes a streamed folder's names).
    out = tmp / "landscape.yaml"
    r = _run("landscape", ckpt, "--subset", f"list:{listing}", "--points", 3, "--device", "cpu", "--out", out)
    assert r.exit_code == 0, r.output
    data = _result(out)["data"]
    assert data["index_sha256"] == index_sha256(expected.numpy()) and data["subset"] == f"list:{listing}"
    # An entry that is not in the split: one line naming it and the count.
    listing.write_text("\n".join([*picked, "n00000001/nope.JPEG"]))
    r = _run("eval", ckpt, "--no-pgd", "--subset", f"list:{listing}", "--device", "cpu")
    _one_line_refusal(r, "1 of 6", "n00000001/nope.JPEG")
    # RobustBench's list is ImageNet's: refused on a 3-class folder.
    r = _run("eval", ckpt, "--no-pgd", "--subset", "robustbench", "--device", "cpu")
    _one_line_refusal(r, "ImageNet")


def test_a_corrupt_file_is_named_or_skipped_with_skip_bad(env) -> None:
    tmp, root, ckpt = env
    broken = tmp / "broken"
    if not broken.exists():
        shutil.copytree(root, broken)
    bad = _val_names(broken)[4]
    (broken / "val" / bad).write_bytes(b"not a jpeg at all" * 20)
    args = ("eval", ckpt, "--no-pgd", "--dataset", f"folder:{broken}", "--stream", "on", "--image-size", SIZE,
            "--n", 30, "--subset", "first", "--device", "cpu")
    r = _run(*args)
    _one_line_refusal(r, bad.split("/")[1])
    out = tmp / "skipped.yaml"
    r = _run(*args, "--skip-bad", "-o", out)
    assert r.exit_code == 0, r.output
    data = _result(out)["data"]
    assert data["n"] == 29 and [Path(f).name for f in data["skipped_bad"]] == [bad.split("/")[1]]
    assert "skipped 1 undecodable files (--skip-bad)" in r.output, r.output


@pytest.mark.parametrize("augment,verdict,code", [("fixed", "clean", 0), ("buggy", "bug", 1)])
def test_check_loader_on_the_streamed_folder(env, augment: str, verdict: str, code: int) -> None:
    _tmp, root, _ckpt = env
    r = _run("check-loader", "--dataset", f"folder:{root}", "--stream", "on", "--image-size", 16,
             "--workers", 2, "--augment", augment, "--samples", 8, "--format", "yaml")
    assert r.exit_code == code, r.output
    assert yaml.safe_load(r.output)["verdict"] == verdict, r.output
