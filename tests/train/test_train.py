"""The training loop, checkpoints, `advcli train`/`info`, config files and the error paths."""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from advcli.cli.app import app
from advcli.errors import CheckpointError, UsageError
from advcli.io import atomic_write_bytes
from advcli.models import ARCHS, build_model
from advcli.models.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from advcli.train.loop import TrainOptions, fit, lr_at, state_path_for

runner = CliRunner()
CPU = torch.device("cpu")


def _opts(out: Path, **kw) -> TrainOptions:
    base = dict(arch="tiny-cnn", epochs=2, batch_size=64, lr=0.05, augment="device", n_train=640, out=str(out))
    base.update(kw)
    return TrainOptions(**base)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).model.state_dict()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_is_bit_identical_for_a_seed(tmp_path, synthetic_data):
    fit(_opts(tmp_path / "a.safetensors"), synthetic_data, CPU)
    fit(_opts(tmp_path / "b.safetensors"), synthetic_data, CPU)
    fit(_opts(tmp_path / "c.safetensors", seed=1), synthetic_data, CPU)
    a, b, c = (_weights(tmp_path / f"{n}.safetensors") for n in "abc")
    assert _same(a, b)
    assert not _same(a, c)


class _KillAt:
    """A reporter that 'kills the process' (KeyboardInterrupt) mid-way through an epoch."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch, self.cur, self.n = epoch, batch, 0, 0

    def start(self, description, total):
        self.cur += 1
        self.n = 0

    def advance(self, n=1):
        self.n += n
        if self.cur == self.epoch and self.n == self.batch:
            raise KeyboardInterrupt

    def finish(self):
        pass

    def log(self, message):
        pass


@pytest.mark.parametrize("augment", ["device", "fixed"])
def test_resume_after_kill_is_bit_identical(tmp_path, synthetic_data, augment):
    full = tmp_path / "full.safetensors"
    fit(_opts(full, epochs=3, augment=augment), synthetic_data, CPU)
    part = tmp_path / "part.safetensors"
    with pytest.raises(KeyboardInterrupt):
        fit(_opts(part, epochs=3, augment=augment), synthetic_data, CPU, reporter=_KillAt(epoch=2, batch=4))
    assert not part.exists()  # killed before the end: no checkpoint, only the epoch-1 state
    assert read_metadata(state_path_for(part))["epoch"] == 1
    # Disturb the global RNGs as a fresh process would have them.
    torch.manual_seed(12345)
    res = fit(_opts(part, epochs=3, augment=augment), synthetic_data, CPU, resume=True)
    assert res.resumed_from_epoch == 1
    assert _same(_weights(full), _weights(part))
    assert [h.epoch for h in res.history] == [1, 2, 3]


def test_step_and_end_hooks_see_every_step_and_every_final_epoch(tmp_path, synthetic_data):
    steps, ends = [], []
    res = fit(_opts(tmp_path / "h.safetensors", n_train=256), synthetic_data, CPU,
              step_hooks=[steps.append], end_hooks=[ends.append])
    assert [s.step for s in steps] == list(range(1, 9)) and [s.epoch for s in steps] == [1] * 4 + [2] * 4
    assert all(s.loss.dim() == 0 and s.n_adv == 0 and int(s.adv_correct) == 0 for s in steps)
    assert steps[0].lr == 0.0 and steps[1].lr > 0  # onecycle warm-up starts at 0
    # End hooks see each epoch's final record: measured, timed, and the one kept in the history.
    assert ends == res.history and [e.epoch for e in ends] == [1, 2]
    assert all(0 <= e.test_accuracy <= 1 and e.seconds > 0 for e in ends)


def test_test_every_thins_the_test_pass_and_leaves_training_unchanged(tmp_path, synthetic_data):
    every = fit(_opts(tmp_path / "a.safetensors", epochs=5), synthetic_data, CPU)
    second = fit(_opts(tmp_path / "b.safetensors", epochs=5, test_every=2), synthetic_data, CPU)
    last = fit(_opts(tmp_path / "c.safetensors", epochs=5, test_every=0), synthetic_data, CPU)
    measured = [[h.test_accuracy is not None for h in r.history] for r in (every, second, last)]
    assert measured == [[True] * 5, [False, True, False, True, True], [False] * 4 + [True]]
    # The same updates: only the measurement is thinned, and what is measured agrees.
    assert _same(_weights(tmp_path / "a.safetensors"), _weights(tmp_path / "b.safetensors"))
    assert _same(_weights(tmp_path / "a.safetensors"), _weights(tmp_path / "c.safetensors"))
    assert second.history[1].test_accuracy == every.history[1].test_accuracy
    assert last.test_accuracy == every.test_accuracy == last.history[-1].test_accuracy
    # A skipped epoch's record has no test_accuracy (not NaN); the run's metric is the last epoch's.
    hist = yaml.safe_load((tmp_path / "c.history.yaml").read_text())["history"]
    assert ["test_accuracy" in h for h in hist] == [False] * 4 + [True]
    assert read_metadata(tmp_path / "c.safetensors")["metrics"]["test_accuracy"] == last.test_accuracy


def test_test_every_measures_an_epoch_a_hook_stops_at(tmp_path, synthetic_data):
    from advcli.train.loop import StopTraining

    def stop_at_2(end):
        if end.stats.epoch == 2:
            raise StopTraining("stopped at epoch 2")
        return {}

    res = fit(_opts(tmp_path / "s.safetensors", epochs=5, test_every=0), synthetic_data, CPU, epoch_hooks=[stop_at_2])
    assert [h.epoch for h in res.history] == [1, 2] and res.history[0].test_accuracy is None
    assert res.history[-1].test_accuracy == res.test_accuracy is not None
    hist = yaml.safe_load((tmp_path / "s.history.yaml").read_text())["history"]
    assert hist[-1]["test_accuracy"] == res.test_accuracy
    # Measured when the hook stopped the run, before the state was saved: its record has it too.
    from advcli.train.state import read_state_header

    saved = read_state_header(state_path_for(tmp_path / "s.safetensors"))["history"]
    assert "test_accuracy" not in saved[0] and saved[-1]["test_accuracy"] == res.test_accuracy


def test_test_every_may_change_on_resume(tmp_path, synthetic_data):
    out = tmp_path / "r.safetensors"
    fit(_opts(out, epochs=2), synthetic_data, CPU)
    res = fit(_opts(out, epochs=4, test_every=0), synthetic_data, CPU, resume=True)
    assert res.resumed_from_epoch == 2
    assert [h.test_accuracy is not None for h in res.history] == [True, True, False, True]


def test_cli_test_every_is_checked(tmp_path):
    r = runner.invoke(app, ["train", "--test-every", "-1", "--out", str(tmp_path / "x.safetensors")])
    assert r.exit_code == 2 and "--test-every" in r.output
    assert not (tmp_path / "x.safetensors").exists()
    for command in ("train", "adv-train"):
        assert "--test-every" in runner.invoke(app, [command, "--help"], terminal_width=200).output


def test_checkpoint_metadata_round_trip(tmp_path, synthetic_data):
    out = tmp_path / "m.safetensors"
    res = fit(_opts(out, label="mine"), synthetic_data, CPU)
    meta = read_metadata(out)
    assert meta["schema"] == "advcli.checkpoint/1"
    assert meta["arch"] == "tiny-cnn" and meta["num_classes"] == 10 and meta["dataset"] == "synthetic"
    assert meta["input_shape"] == [3, 32, 32] and meta["mean"] == synthetic_data.mean
    assert meta["config"]["lr"] == 0.05 and meta["seed"] == 0 and meta["label"] == "mine"
    assert meta["metrics"]["test_accuracy"] == pytest.approx(res.test_accuracy)
    assert len(meta["history"]) == 2 and meta["versions"]["torch"] == torch.__version__
    hist = yaml.safe_load(out.with_name("m.history.yaml").read_text())
    assert hist["history"][-1]["test_accuracy"] == pytest.approx(res.test_accuracy)
    loaded = load_checkpoint(out)
    assert not loaded.model.training and len(loaded.sha256) == 64
    # The normalisation is inside the model.
    assert torch.allclose(loaded.model.normalize.mean.flatten(), torch.tensor(synthetic_data.mean))


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_corrupt_and_truncated_checkpoints_are_clear_errors(tmp_path, tiny_ckpt):
    data = tiny_ckpt.read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(trunc)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError):
        load_checkpoint(junk)
    r = runner.invoke(app, ["info", str(trunc)])
    assert r.exit_code == 1 and "truncated or corrupt" in r.output and "Traceback" not in r.output


def test_every_arch_builds_and_runs():
    for name in ARCHS:
        if name in ("wrn-34-10", "resnet50"):
            continue  # same code paths as wrn-28-10 / resnet18, only slower
        m = build_model(name, 10).eval()
        with torch.no_grad():
            assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_checkpoint_reload_gives_same_predictions(tmp_path):
    torch.manual_seed(0)
    m = build_model("resnet32", 10, [0.5] * 3, [0.25] * 3).eval()
    from advcli.models.checkpoint import model_metadata

    p = save_checkpoint(tmp_path / "r.safetensors", m, model_metadata(arch="resnet32", num_classes=10, dataset="x", mean=[0.5] * 3, std=[0.25] * 3))
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(p).model(x), m(x))


def test_lr_schedules():
    assert lr_at(0, 100, 0.1, "onecycle") == 0.0
    assert lr_at(20, 100, 0.1, "onecycle") == pytest.approx(0.1)
    assert lr_at(100, 100, 0.1, "onecycle") == 0.0
    assert lr_at(50, 100, 0.1, "cosine") == pytest.approx(0.05)
    assert lr_at(80, 100, 0.1, "step") == pytest.approx(0.001)


# ---- the CLI -----------------------------------------------------------------------------

def test_cli_train_and_info(tmp_path):
    out = tmp_path / "cli.safetensors"
    r = runner.invoke(app, ["train", "--epochs", "1", "--n-train", "512", "--out", str(out), "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    assert "test accuracy" in r.output and out.is_file()
    r = runner.invoke(app, ["info", str(out), "--format", "yaml"])
    assert r.exit_code == 0 and yaml.safe_load(r.output)["arch"] == "tiny-cnn"


def test_cli_config_file_and_flags_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    out = tmp_path / "cfg.safetensors"
    cfg.write_text(yaml.safe_dump({"epochs": 1, "n-train": 256, "lr": 0.02, "out": str(out), "batch_size": 32}))
    r = runner.invoke(app, ["train", "--config", str(cfg), "--lr", "0.03", "-q"])
    assert r.exit_code == 0, r.output
    conf = read_metadata(out)["config"]
    assert conf["lr"] == 0.03 and conf["batch_size"] == 32 and conf["n_train"] == 256


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["train", "--arch", "resnet9000"], 2, "unknown arch 'resnet9000'; valid values: tiny-cnn"),
        (["train", "--dataset", "folder:/nonexistent/cifar.zip"], 1, "does not exist"),
        (["train", "--augment", "sometimes"], 2, "valid values: none, buggy, fixed, device"),
        (["train", "--amp", "fp8"], 2, "unknown --amp 'fp8'; valid values: none, bf16, fp16"),
        (["info", "/nonexistent.safetensors"], 1, "does not exist"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, code, message):
    r = runner.invoke(app, args + (["--out", str(tmp_path / "o.safetensors")] if args[0] == "train" else []))
    assert r.exit_code == code, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o.safetensors").exists()


def test_cli_bad_config_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    r = runner.invoke(app, ["train", "--config", str(bad)])
    assert r.exit_code == 2 and "not valid YAML" in r.output
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("epochs: 1\nlearning_rate: 0.1\n")
    r = runner.invoke(app, ["train", "--config", str(unknown)])
    assert r.exit_code == 2 and "unknown key(s) for `train`: learning-rate" in r.output
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- 1\n- 2\n")
    r = runner.invoke(app, ["train", "--config", str(notmap)])
    assert r.exit_code == 2 and "must be a mapping" in r.output


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile's CPU backend needs a C compiler")
def test_compile_trains_like_eager_and_reports_compilation(tmp_path, synthetic_data):
    eager = fit(_opts(tmp_path / "e.safetensors", epochs=1), synthetic_data, CPU)
    compiled = fit(_opts(tmp_path / "c.safetensors", epochs=1, compile=True), synthetic_data, CPU)
    assert any(n.startswith("--compile: the first step took") for n in compiled.notes)
    assert not any("--compile" in n for n in eager.notes)
    # Same seed, same data order: the compiled graph computes the same function (up to float
    # reassociation), so the trained weights agree closely.
    a, c = _weights(tmp_path / "e.safetensors"), _weights(tmp_path / "c.safetensors")
    assert a.keys() == c.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(c[k], a[k], rtol=1e-2, atol=2e-3)
    assert read_metadata(tmp_path / "c.safetensors")["config"]["compile"] is True


def test_n_train_is_class_balanced_even_when_the_split_is_sorted_by_class(tmp_path, synthetic_data, monkeypatch):
    import dataclasses

    import advcli.train.loop as train_mod
    from advcli.data.subsets import train_subset

    # Image folders list the training set class by class: a plain prefix is one class.
    order = torch.argsort(synthetic_data.train_y, stable=True)
    sorted_data = dataclasses.replace(synthetic_data, train_x=synthetic_data.train_x[order],
                                      train_y=synthetic_data.train_y[order])
    idx = train_subset(sorted_data.train_y, 200)
    counts = torch.bincount(sorted_data.train_y[idx], minlength=10)
    assert counts.tolist() == [20] * 10
    assert torch.equal(idx, idx.sort().values)
    assert torch.equal(train_subset(sorted_data.train_y, 10**9), torch.arange(len(sorted_data.train_y)))

    seen: list[torch.Tensor] = []
    real = train_mod.train_batches

    def spy(x, y, **kw):
        seen.append(y.clone())
        return real(x, y, **kw)

    monkeypatch.setattr(train_mod, "train_batches", spy)
    fit(_opts(tmp_path / "m.safetensors", epochs=1, n_train=200), sorted_data, CPU)
    assert torch.bincount(seen[0], minlength=10).tolist() == [20] * 10


def test_train_and_adv_train_declare_the_shared_options_alike():
    """Both commands list every training option (and the run options) with the same flag, help,
    type and default, and each default is the TrainOptions/RunOptions field of that name."""
    import dataclasses
    import inspect
    import typing

    import typer.main

    from advcli.cli.cmd_adv_train import adv_train
    from advcli.cli.cmd_train import train
    from advcli.cli.train_options import RUN, TRAIN

    shared = {f.name for f in dataclasses.fields(TRAIN)} | {f.name for f in dataclasses.fields(RUN)}
    sigs = {f.__name__: inspect.signature(f).parameters for f in (train, adv_train)}
    hints = {f.__name__: typing.get_type_hints(f, include_extras=True) for f in (train, adv_train)}
    for name in sorted(shared):
        assert name in sigs["train"] and name in sigs["adv_train"], name
        assert hints["train"][name] == hints["adv_train"][name], name  # the same Annotated declaration
        if name != "out":  # the checkpoint's default name differs: model vs robust
            default = getattr(TRAIN if hasattr(TRAIN, name) else RUN, name)
            assert sigs["train"][name].default == sigs["adv_train"][name].default == default, name
    # What users see: the click options of both commands agree too.
    group = typer.main.get_command(app)
    params = {cmd: {p.name: p for p in group.commands[cmd].params} for cmd in ("train", "adv-train")}
    for name in shared:
        a, b = params["train"][name], params["adv-train"][name]
        assert (a.opts, a.secondary_opts, a.help, a.min, a.max) == (b.opts, b.secondary_opts, b.help, b.min, b.max), name
        assert a.help and (name == "out" or a.default == b.default), name


def test_the_accuracies_of_an_amp_run_are_measured_in_fp32(tmp_path, synthetic_data):
    """--amp trains in bf16; the per-epoch test/validation accuracy and the checkpoint's
    test_accuracy are measurements, so they run in fp32: a spy on every evaluation forward (eval
    mode, no autograd: the training forward needs both) records the autocast state and the
    dtype its layers compute in."""
    import dataclasses

    from torch import nn

    from advcli.data import hold_out

    data = hold_out(dataclasses.replace(synthetic_data), 64, 0)
    seen = []

    def spy(module, args, output):
        if isinstance(module, (nn.Linear, nn.Conv2d)) and not module.training and not torch.is_grad_enabled():
            seen.append((torch.is_autocast_enabled("cpu"), output.dtype))

    handle = torch.nn.modules.module.register_module_forward_hook(spy)
    try:
        res = fit(_opts(tmp_path / "m.safetensors", epochs=1, n_train=128, amp="bf16"), data, CPU)
    finally:
        handle.remove()
    assert res.history[0].val_accuracy is not None  # the validation split was measured too
    assert seen and set(seen) == {(False, torch.float32)}


def test_no_nesterov_and_decay_all_give_the_reference_scripts_sgd(synthetic_data):
    """--no-nesterov --decay-all is `SGD(model.parameters(), lr, momentum, weight_decay)`, the
    optimizer of the TRADES, MART and AWP reference scripts: the same gradients give the same
    weights, bit for bit. The default decays the conv/linear weights only, with Nesterov."""
    from advcli.train.loop import setup

    def steps(opt: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        return {k: v.clone() for k, v in model.state_dict().items()}

    opts = _opts(Path("unused.safetensors"), lr=0.1, momentum=0.9, weight_decay=0.01)
    ref = setup(replace(opts, nesterov=False, decay_all=True), synthetic_data, CPU)
    model = copy.deepcopy(ref.model)
    plain = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    assert _same(steps(ref.opt, ref.model), steps(plain, model))

    default = setup(opts, synthetic_data, CPU)
    decayed = {id(p) for g in default.opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    params = dict(default.model.named_parameters())
    assert decayed == {id(p) for p in params.values() if p.ndim > 1} and len(decayed) < len(params)
    assert all(g["nesterov"] for g in default.opt.param_groups)


def test_optimizer_options_are_resume_checked_and_old_states_still_resume(tmp_path, synthetic_data):
    from advcli.train.loop import resume_config

    assert not {"nesterov", "decay_all"} & resume_config(TrainOptions(), None).keys()  # as states saved before them
    assert {"nesterov", "decay_all"} <= resume_config(TrainOptions(nesterov=False, decay_all=True), None).keys()
    out = tmp_path / "p.safetensors"
    fit(_opts(out, epochs=1, nesterov=False), synthetic_data, CPU)
    with pytest.raises(UsageError, match="--nesterov"):
        fit(_opts(out, epochs=2), synthetic_data, CPU, resume=True)
    assert fit(_opts(out, epochs=2, nesterov=False), synthetic_data, CPU, resume=True).resumed_from_epoch == 1


def test_cli_optimizer_options_from_a_config_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("nesterov: false\ndecay_all: true\nepochs: 1\nn_train: 128\n")
    out = tmp_path / "m.safetensors"
    r = runner.invoke(app, ["train", "--config", str(cfg), "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    config = read_metadata(out)["config"]
    assert config["nesterov"] is False and config["decay_all"] is True
