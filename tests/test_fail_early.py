"""Fail early: every input file a command needs is read and checked before its first attack,
training step or dataset decode, so a bad one costs a second, not the run.

Each test hands a command one corrupt or missing input and asserts the handled failure (exit 1
or 2, one line, no traceback, no file written) AND that the expensive entry point after the
input checks was never called: a spy replaces it and records every call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from advcli.advset import save_adv_set
from advcli.checkpoint import model_metadata, save_checkpoint
from advcli.cli.app import app
from advcli.models import build_model

runner = CliRunner()
BAD_CHECKPOINTS = ("random", "html", "truncated", "no-metadata", "missing", "classes", "shape")
NOT_SAFETENSORS = ("random", "html", "truncated", "no-metadata", "missing")


def make_bad(kind: str, folder: Path, good: Path | None = None) -> Path:
    """A file of `kind` that no advcli command can use where a checkpoint-like file is needed."""
    path = folder / f"{kind}.safetensors"
    if kind == "random":
        path.write_bytes(os.urandom(3000))
    elif kind == "html":
        path.write_text("<!DOCTYPE html><html><body>Sign in to download</body></html>\n")
    elif kind == "truncated":
        assert good is not None
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "no-metadata":
        save_file({"net.weight": torch.zeros(4, 3)}, str(path))
    elif kind == "classes":  # a checkpoint for another number of classes
        meta = model_metadata(arch="tiny-cnn", num_classes=3, dataset="synthetic",
                              mean=[0.5] * 3, std=[0.25] * 3)
        save_checkpoint(path, build_model("tiny-cnn", 3, [0.5] * 3, [0.25] * 3), meta)
    elif kind == "shape":  # a checkpoint for another input shape
        meta = model_metadata(arch="tiny-cnn", num_classes=10, dataset="synthetic",
                              mean=[0.5] * 3, std=[0.25] * 3, input_shape=(3, 16, 16))
        save_checkpoint(path, build_model("tiny-cnn", 10, [0.5] * 3, [0.25] * 3), meta)
    else:
        assert kind == "missing"
    return path


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Callable[[object, str], list]:
    """`spy(module, name)`: replace the function with one that records its calls and stops the
    run (so a test on the unfixed code fails on the record, not by running minutes)."""
    def install(module: object, name: str) -> list:
        calls: list = []

        def stand_in(*args, **kwargs):
            calls.append(name)
            raise RuntimeError(f"{name} ran before the bad input was found")

        monkeypatch.setattr(module, name, stand_in)
        return calls

    return install


def fails_cleanly(args: list[str], folder: Path, *, code: tuple[int, ...] = (1,)) -> str:
    """Run the CLI: a handled error (exit code in `code`, one line, no traceback) that wrote
    nothing into `folder`. Returns the error line."""
    before = sorted(folder.rglob("*"))
    res = runner.invoke(app, args)
    assert res.exit_code in code, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    # Progress lines logged before the failure may precede it; the error is one line, the last.
    assert len(errors) == 1 and lines[-1] == errors[0], res.output
    assert "Traceback" not in res.output
    assert sorted(folder.rglob("*")) == before, "a file was written"
    return errors[0]


def _py(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def bad_code(folder: Path) -> dict[str, str]:
    """`--wrap`/`--model` specs that cannot be used: a syntax error, no such callable, no file."""
    syntax = _py(folder, "syntax.py", "def wrap(model:\n    return model\n")
    other = _py(folder, "other.py", "def something_else(model):\n    return model\n")
    return {"syntax": f"{syntax}:wrap", "no-callable": f"{other}:wrap", "missing": f"{folder}/none.py:wrap"}


def _adv_set(path: Path, synthetic_data, *, labels_shift: int = 0, size: int = 32, split: str = "test") -> Path:
    xs, ys = synthetic_data.split(split)
    n = 8
    return save_adv_set(
        path, x_adv=torch.rand(n, 3, size, size), y=(ys[:n] + labels_shift) % synthetic_data.num_classes,
        index=torch.arange(n), attack={"name": "pgd", "norm": "linf", "eps": 8 / 255, "eps_text": "8/255"},
        meta={"checkpoint": None, "checkpoint_sha256": None, "label": "x", "dataset": "synthetic",
              "split": split, "seed": 0},
    )


def bad_adv_set(kind: str, folder: Path, good: Path, synthetic_data) -> Path:
    """`make_bad`'s files, or a well-formed test-split set made from other data: its labels
    differ at its indices ("labels") or its images are 16x16 ("shape")."""
    if kind == "labels":
        return _adv_set(folder / "labels.safetensors", synthetic_data, labels_shift=1)
    if kind == "shape":
        return _adv_set(folder / "small.safetensors", synthetic_data, size=16)
    return make_bad(kind, folder, good)


# ---------------------------------------------------------------------------------- audit

@pytest.mark.parametrize("kind", BAD_CHECKPOINTS)
def test_audit_bad_surrogate_fails_before_any_check(kind: str, tiny_ckpt: Path, tmp_path: Path, spy) -> None:
    from advcli.stages.audit import gradients

    probed = spy(gradients, "probe")  # the audit's first model work after the clean inputs
    bad = make_bad(kind, tmp_path, tiny_ckpt)
    out = tmp_path / "out"
    out.mkdir()
    line = fails_cleanly(["audit", str(tiny_ckpt), "--surrogate", str(bad), "--n", "16", "--device", "cpu",
                          "-o", str(out / "audit.yaml")], out)
    assert probed == []
    assert bad.name in line and "--surrogate" in line


@pytest.mark.parametrize("kind", NOT_SAFETENSORS)
def test_audit_bad_checkpoint_fails_before_any_check(kind: str, tiny_ckpt: Path, tmp_path: Path, spy) -> None:
    from advcli.stages.audit import gradients

    probed = spy(gradients, "probe")
    bad = make_bad(kind, tmp_path, tiny_ckpt)
    fails_cleanly(["audit", str(bad), "--n", "16", "--device", "cpu", "-o", str(tmp_path / "a.yaml")], tmp_path)
    assert probed == []


@pytest.mark.parametrize("case", ["syntax", "no-callable", "missing"])
@pytest.mark.parametrize("option", ["--wrap", "--model"])
def test_audit_bad_user_code_fails_before_any_check(case: str, option: str, tiny_ckpt: Path, tmp_path: Path,
                                                    spy) -> None:
    from advcli.stages.audit import gradients

    probed = spy(gradients, "probe")
    code, out = tmp_path / "code", tmp_path / "out"
    code.mkdir()
    out.mkdir()
    spec = bad_code(code)[case]
    fails_cleanly(["audit", str(tiny_ckpt), option, spec, "--n", "16", "--device", "cpu",
                   "-o", str(out / "a.yaml")], out, code=(1, 2))
    assert probed == []


def test_audit_bad_config_fails_before_any_check(tiny_ckpt: Path, tmp_path: Path, spy) -> None:
    from advcli.stages.audit import gradients

    probed = spy(gradients, "probe")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("n: [unclosed\n")
    fails_cleanly(["audit", str(tiny_ckpt), "--config", str(cfg), "--device", "cpu"], tmp_path, code=(2,))
    cfg.write_text("no_such_option: 1\n")
    fails_cleanly(["audit", str(tiny_ckpt), "--config", str(cfg), "--device", "cpu"], tmp_path, code=(2,))
    assert probed == []


# ----------------------------------------------------------------------------- eval, attack

@pytest.mark.parametrize("kind", NOT_SAFETENSORS + ("labels", "shape"))
def test_eval_bad_adv_data_fails_before_the_first_attack(kind: str, tiny_ckpt: Path, tmp_path: Path,
                                                         synthetic_data, spy) -> None:
    import advcli.stages.evaluate as evaluate

    attacked = spy(evaluate, "evaluate")
    bad = bad_adv_set(kind, tmp_path, tiny_ckpt, synthetic_data)
    out = tmp_path / "out"
    out.mkdir()
    line = fails_cleanly(["eval", str(tiny_ckpt), "--adv-data", str(bad), "--n", "16", "--device", "cpu",
                          "-o", str(out / "r.yaml")], out)
    assert attacked == [] and bad.name in line


@pytest.mark.parametrize("command", ["eval", "attack"])
@pytest.mark.parametrize("kind", NOT_SAFETENSORS)
def test_bad_checkpoint_fails_before_the_first_attack(command: str, kind: str, tiny_ckpt: Path, tmp_path: Path,
                                                      spy) -> None:
    import advcli.stages.attack as attack
    import advcli.stages.evaluate as evaluate

    calls = spy(evaluate, "evaluate") + spy(attack, "run_attack")
    bad = make_bad(kind, tmp_path, tiny_ckpt)
    fails_cleanly([command, str(bad), "--n", "16", "--device", "cpu", "--out", str(tmp_path / "r.safetensors")],
                  tmp_path)
    assert calls == []


@pytest.mark.parametrize("command", ["eval", "attack"])
@pytest.mark.parametrize("case", ["syntax", "no-callable", "missing"])
@pytest.mark.parametrize("option", ["--wrap", "--model"])
def test_bad_user_code_fails_before_the_data_and_the_attack(command: str, case: str, option: str,
                                                            tiny_ckpt: Path, tmp_path: Path, spy) -> None:
    import advcli.data.for_checkpoint as for_checkpoint
    import advcli.stages.attack as attack
    import advcli.stages.evaluate as evaluate

    calls = (spy(evaluate, "evaluate") + spy(attack, "run_attack")
             + spy(for_checkpoint, "dataset_for_checkpoint"))
    code = tmp_path / "code"
    code.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    fails_cleanly([command, str(tiny_ckpt), option, bad_code(code)[case], "--n", "16", "--device", "cpu",
                   "--out", str(out / "r.safetensors")], out, code=(1, 2))
    assert calls == []


# ------------------------------------------------------------------------------- landscape

@pytest.mark.parametrize("kind", ["random", "html", "no-metadata", "checkpoint"])
def test_landscape_bad_directions_fail_before_the_data_is_loaded(kind: str, tiny_ckpt: Path, tmp_path: Path,
                                                                 spy) -> None:
    import advcli.stages.landscape as landscape

    calls = spy(landscape, "dataset_for_checkpoints") + spy(landscape, "compute_landscapes")
    bad = tiny_ckpt if kind == "checkpoint" else make_bad(kind, tmp_path, tiny_ckpt)
    out = tmp_path / "out"
    out.mkdir()
    line = fails_cleanly(["landscape", str(tiny_ckpt), "--directions", str(bad), "--points", "3", "--n", "8",
                          "--device", "cpu", "--out", str(out / "l.yaml")], out, code=(1, 2))
    assert calls == [] and bad.name in line


@pytest.mark.parametrize("kind", ["random", "missing", "shape"])
def test_landscape_bad_adv_data_fails_before_any_point(kind: str, tiny_ckpt: Path, tmp_path: Path,
                                                       synthetic_data, spy) -> None:
    import advcli.stages.landscape as landscape

    computed = spy(landscape, "compute_landscapes")
    bad = bad_adv_set(kind, tmp_path, tiny_ckpt, synthetic_data)
    out = tmp_path / "out"
    out.mkdir()
    line = fails_cleanly(["landscape", str(tiny_ckpt), "--adv-data", str(bad), "--points", "3", "--n", "8",
                          "--device", "cpu", "--out", str(out / "l.yaml")], out)
    assert computed == [] and bad.name in line


@pytest.mark.parametrize("kind", NOT_SAFETENSORS)
def test_landscape_bad_checkpoint_fails_before_the_data(kind: str, tiny_ckpt: Path, tmp_path: Path, spy) -> None:
    import advcli.stages.landscape as landscape

    calls = spy(landscape, "dataset_for_checkpoints") + spy(landscape, "compute_landscapes")
    bad = make_bad(kind, tmp_path, tiny_ckpt)
    fails_cleanly(["landscape", str(tiny_ckpt), str(bad), "--points", "3", "--n", "8", "--device", "cpu",
                   "--out", str(tmp_path / "l.yaml")], tmp_path)
    assert calls == []


# ---------------------------------------------------------------------------- train, adv-train

TRAIN = ["--arch", "tiny-cnn", "--dataset", "synthetic", "--epochs", "1", "--device", "cpu", "--quiet"]


@pytest.mark.parametrize("command", ["train", "adv-train"])
@pytest.mark.parametrize("kind", NOT_SAFETENSORS + ("arch",))
def test_train_bad_init_from_fails_before_the_data_is_loaded(command: str, kind: str, tiny_ckpt: Path,
                                                             tmp_path: Path, spy) -> None:
    import advcli.stages.adv_train as adv_train
    import advcli.stages.train as train

    calls = spy(train, "load_training_data") + spy(adv_train, "load_training_data")
    bad = tiny_ckpt if kind == "arch" else make_bad(kind, tmp_path, tiny_ckpt)
    arch = ["--arch", "small-cnn"] if kind == "arch" else []  # tiny_ckpt is a tiny-cnn
    out = tmp_path / "out"
    out.mkdir()
    extra = ["--eps", "8/255"] if command == "adv-train" else []
    line = fails_cleanly([command, *TRAIN, *arch, *extra, "--init-from", str(bad), "--out",
                          str(out / "m.safetensors")], out, code=(1, 2))
    assert calls == [] and "--init-from" in line


@pytest.mark.parametrize("kind", ["random", "html", "checkpoint"])
def test_train_resume_from_a_bad_state_fails_before_the_data_is_loaded(kind: str, tiny_ckpt: Path,
                                                                       tmp_path: Path, spy) -> None:
    import advcli.stages.train as train

    calls = spy(train, "load_training_data")
    out = tmp_path / "m.safetensors"
    state = tmp_path / "m.state.safetensors"
    if kind == "checkpoint":  # a file of another kind where the state should be
        state.write_bytes(tiny_ckpt.read_bytes())
    else:
        make_bad(kind, tmp_path, tiny_ckpt).rename(state)
    line = fails_cleanly(["train", *TRAIN, "--out", str(out), "--resume"], tmp_path)
    assert calls == [] and state.name in line


@pytest.mark.parametrize("kind", NOT_SAFETENSORS + ("test-split",))
def test_adv_train_bad_static_set_fails_before_the_data_is_loaded(kind: str, tiny_ckpt: Path, tmp_path: Path,
                                                                  synthetic_data, spy) -> None:
    import advcli.stages.adv_train as adv_train

    calls = spy(adv_train, "load_training_data")
    if kind == "test-split":
        bad = _adv_set(tmp_path / "test.safetensors", synthetic_data, split="test")
    else:
        bad = make_bad(kind, tmp_path, tiny_ckpt)
    out = tmp_path / "out"
    out.mkdir()
    line = fails_cleanly(["adv-train", *TRAIN, "--adv-data", str(bad), "--out", str(out / "m.safetensors")],
                         out, code=(1, 2))
    assert calls == [] and bad.name in line


@pytest.mark.parametrize("kind", ["labels", "shape"])
def test_adv_train_foreign_static_set_fails_before_training(kind: str, tmp_path: Path, synthetic_data,
                                                            spy) -> None:
    import advcli.stages.adv_train as adv_train

    trained = spy(adv_train, "fit")
    bad = _adv_set(tmp_path / f"{kind}.safetensors", synthetic_data, split="train",
                   labels_shift=1 if kind == "labels" else 0, size=16 if kind == "shape" else 32)
    out = tmp_path / "out"
    out.mkdir()
    line = fails_cleanly(["adv-train", *TRAIN, "--adv-data", str(bad), "--out", str(out / "m.safetensors")], out)
    assert trained == [] and bad.name in line


# -------------------------------------------------- compare, plot, import, info, check-loader

def test_compare_bad_result_file_fails_before_any_table(tmp_path: Path, spy) -> None:
    import advcli.stages.compare as compare

    tabulated = spy(compare, "compare")
    html = tmp_path / "r.yaml"
    html.write_text("<!DOCTYPE html><html><body>404</body></html>\n")
    line = fails_cleanly(["compare", str(html), str(tmp_path / "missing.yaml")], tmp_path)
    assert tabulated == [] and "r.yaml" in line


def test_plot_bad_history_fails_before_drawing(tmp_path: Path, spy) -> None:
    import advcli.plots_history as plots_history

    drawn = spy(plots_history, "plot_history")
    bad = tmp_path / "run.history.yaml"
    bad.write_bytes(os.urandom(500))
    fails_cleanly(["plot", "history", str(bad), str(tmp_path / "none.history.yaml"), "-o",
                   str(tmp_path / "h.png")], tmp_path)
    assert drawn == []


@pytest.mark.parametrize("kind", ["random", "html", "missing"])
def test_import_bad_weights_writes_nothing(kind: str, tmp_path: Path) -> None:
    bad = tmp_path / f"{kind}.pt"
    if kind == "random":
        bad.write_bytes(os.urandom(2000))
    elif kind == "html":
        bad.write_text("<!DOCTYPE html><html></html>\n")
    fails_cleanly(["import", str(bad), "--arch", "tiny-cnn", "--dataset", "synthetic", "-o",
                   str(tmp_path / "m.safetensors")], tmp_path)


@pytest.mark.parametrize("kind", NOT_SAFETENSORS[:-2] + ("missing",))
def test_info_bad_file_is_one_line(kind: str, tiny_ckpt: Path, tmp_path: Path) -> None:
    bad = make_bad(kind, tmp_path, tiny_ckpt)
    fails_cleanly(["info", str(bad)], tmp_path)


@pytest.mark.parametrize("case", ["syntax", "no-callable", "missing"])
def test_check_loader_bad_pipeline_fails_before_any_loader_runs(case: str, tmp_path: Path, spy) -> None:
    import advcli.stages.check_loader.checks as checks

    ran = spy(checks, "call_pipeline")
    code, out = tmp_path / "code", tmp_path / "out"
    code.mkdir()
    out.mkdir()
    spec = bad_code(code)[case].replace(":wrap", ":make")
    fails_cleanly(["check-loader", "--pipeline", spec], out, code=(1, 2))
    assert ran == []
