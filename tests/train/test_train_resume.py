"""Training survives any kill: `train` and `adv-train` stopped at chosen steps (before the first
epoch ends, inside an epoch with --save-every, during the state write itself) and by a real
SIGKILL, then rerun with the same command line: the final weights and history equal those of an
uninterrupted run, bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from advcli.cli.app import app
from advcli.data.loaders import train_batches
from advcli.models.checkpoint import load_checkpoint, read_metadata
from advcli.train.history import history_path_for
from advcli.train.state import STOP_AFTER_STEP_ENV, SaveEvery, state_path_for

runner = CliRunner()
# 640 images, batches of 64: 10 steps an epoch, 20 in a run.
BASE = ["--epochs", "2", "--n-train", "640", "--batch-size", "64", "--lr", "0.05", "--device", "cpu", "-q"]
ADV = ["--eps", "8/255", "--attack", "pgd", "--steps", "1", "--fraction", "0.5"]


def _run(cmd: str, out: Path, *extra: str, env: dict[str, str] | None = None):
    args = [cmd, *(ADV if cmd == "adv-train" else []), *BASE, "--out", str(out), *extra]
    return runner.invoke(app, args, env=env)


_REFERENCE: dict[tuple, Path] = {}


def _reference(tmp_path_factory, cmd: str, *extra: str) -> Path:
    """The uninterrupted run of these options (made once per module)."""
    key = (cmd, *extra)
    if key not in _REFERENCE:
        out = tmp_path_factory.mktemp("ref") / "ref.safetensors"
        r = _run(cmd, out, *extra)
        assert r.exit_code == 0, r.output
        _REFERENCE[key] = out
    return _REFERENCE[key]


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = load_checkpoint(a).model.state_dict(), load_checkpoint(b).model.state_dict()
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    # The history too (the epoch's metric sums survive a mid-epoch kill); only the times differ.
    ha, hb = (read_metadata(p)["history"] for p in (a, b))
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in ha] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in hb]


def _position(out: Path):
    return read_metadata(state_path_for(out)).get("position")


@pytest.mark.parametrize("cmd", ["train", "adv-train"])
def test_killed_in_the_first_epoch_then_the_same_command_finishes_the_run(tmp_path, tmp_path_factory, cmd):
    """No --save-every: a kill before the first epoch ends left no state; the job script passes
    --resume every time, and the rerun starts from scratch with a note."""
    out = tmp_path / "m.safetensors"
    killed = _run(cmd, out, "--resume", env={STOP_AFTER_STEP_ENV: "4"})
    assert killed.exit_code == 130, killed.output
    assert "no training state or checkpoint" in killed.output  # the note of a fresh start
    assert not out.exists() and not state_path_for(out).exists()
    done = _run(cmd, out, "--resume")
    assert done.exit_code == 0, done.output
    _assert_same_run(_reference(tmp_path_factory, cmd), out)


# The other augment modes' replay is checked batch by batch below (test_skipped_batches_...).
@pytest.mark.parametrize("cmd, options", [
    ("train", ("--augment", "fixed")),
    ("adv-train", ("--augment", "device")),
    ("adv-train", ("--augment", "device", "--ema", "0.9")),  # the weight average is in the state
], ids=["train-fixed", "adv-train-device", "adv-train-ema"])
def test_killed_inside_an_epoch_with_save_every_resumes_bit_identically(tmp_path, tmp_path_factory, cmd, options):
    out = tmp_path / "m.safetensors"
    extra = ("--save-every", "3", *options)
    # Step 14 is inside epoch 2; the last save was after step 12, 2 batches into the epoch.
    killed = _run(cmd, out, *extra, "--resume", env={STOP_AFTER_STEP_ENV: "14"})
    assert killed.exit_code == 130, killed.output
    assert (_position(out)["epoch"], _position(out)["batches"]) == (1, 2)
    # Disturb the global RNGs as a fresh process would have them: resume restores them.
    torch.manual_seed(4321)
    done = _run(cmd, out, *extra, "--resume")
    assert done.exit_code == 0, done.output
    _assert_same_run(_reference(tmp_path_factory, cmd, *options), out)
    assert _position(out) is None  # the last save is the end of the run's last epoch


def test_dataloader_workers_are_replayed_on_a_mid_epoch_resume(tmp_path, tmp_path_factory):
    """--augment fixed with 2 worker processes: each worker's NumPy stream is re-created by
    replaying the epoch's first batches, not saved."""
    out = tmp_path / "w.safetensors"
    extra = ("--save-every", "5", "--augment", "fixed", "--workers", "2", "--epochs", "1")
    assert _run("train", out, *extra, env={STOP_AFTER_STEP_ENV: "7"}).exit_code == 130
    assert _position(out)["batches"] == 5
    assert _run("train", out, *extra, "--resume").exit_code == 0
    ref = _reference(tmp_path_factory, "train", "--augment", "fixed", "--workers", "2", "--epochs", "1")
    _assert_same_run(ref, out)


def test_killed_during_the_state_write_keeps_the_previous_state(tmp_path, tmp_path_factory, monkeypatch):
    """A kill between writing the new state's temporary file and renaming it over the old one:
    the previous state stays (a real kill also leaves the temporary file, which is harmless)."""
    out = tmp_path / "m.safetensors"
    extra = ("--save-every", "4")
    real_replace, writes = os.replace, []

    def replace(src, dst):
        if Path(dst) == state_path_for(out):
            writes.append(dst)
            if len(writes) == 4:  # the save after step 12 (saves: steps 4, 8, epoch 1's end, 12)
                Path(src).with_name(Path(src).name + ".left-by-kill").write_bytes(Path(src).read_bytes()[:100])
                raise KeyboardInterrupt("killed during the state write")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    killed = _run("adv-train", out, *extra, "--resume")
    monkeypatch.setattr(os, "replace", real_replace)
    assert killed.exit_code == 130, killed.output
    # The end-of-epoch-1 state stays.
    assert _position(out) is None and read_metadata(state_path_for(out))["epoch"] == 1
    assert _run("adv-train", out, *extra, "--resume").exit_code == 0
    _assert_same_run(_reference(tmp_path_factory, "adv-train"), out)


def test_a_real_sigkill_then_the_same_command_finishes_the_run(tmp_path, tmp_path_factory):
    out = tmp_path / "k.safetensors"
    args = ["train", *BASE, "--save-every", "2", "--resume", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", ADVCLI_NO_PROGRESS="1")
    proc = subprocess.Popen([sys.executable, "-m", "advcli", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        # The first save is after step 2 of 20: kill right after it, wherever the run then is.
        while not state_path_for(out).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill"
    assert not out.exists()
    r = runner.invoke(app, args)  # the same command line
    assert r.exit_code == 0, r.output
    _assert_same_run(_reference(tmp_path_factory, "train"), out)


def test_resume_refuses_a_checkpoint_without_state_and_changed_options(tmp_path):
    out = tmp_path / "m.safetensors"
    assert _run("train", out, "--epochs", "1").exit_code == 0
    state_path_for(out).rename(tmp_path / "elsewhere.safetensors")
    before = out.read_bytes()
    r = _run("train", out, "--epochs", "1", "--resume")
    assert r.exit_code == 2 and "exists but has no training state" in r.output and "Traceback" not in r.output
    assert out.read_bytes() == before  # not silently retrained
    (tmp_path / "elsewhere.safetensors").rename(state_path_for(out))
    r = _run("train", out, "--epochs", "1", "--resume", "--batch-size", "32")
    assert r.exit_code == 2 and "--batch-size 64" in r.output and "32" in r.output, r.output
    # Options that do not change the numbers may change: --save-every, --label.
    r = _run("train", out, "--epochs", "1", "--resume", "--save-every", "2", "--label", "x")
    assert r.exit_code == 0, r.output
    assert history_path_for(out).is_file()
    # --epochs may change: a finished run is extended, with a note on the schedule.
    r = _run("train", out, "--epochs", "2", "--resume")
    assert r.exit_code == 0 and "schedule now spans 2" in r.output, r.output
    assert read_metadata(out)["metrics"]["epochs_run"] == 2


@pytest.mark.parametrize("bad", ["0", "10x", "-3", "m"])
def test_save_every_values(tmp_path, bad):
    r = _run("train", tmp_path / "o.safetensors", "--save-every", bad)
    assert r.exit_code == 2 and "--save-every" in r.output and "Traceback" not in r.output, r.output
    assert SaveEvery.parse("200") == SaveEvery(steps=200)
    assert SaveEvery.parse("10m") == SaveEvery(seconds=600.0)
    assert SaveEvery.parse("1h") == SaveEvery(seconds=3600.0) and SaveEvery.parse(None) is None


def test_save_every_minutes_follows_the_clock():
    cpu = torch.device("cpu")
    every = SaveEvery.parse("1m")
    assert not every.due(5, cpu)
    every.last -= 61  # a minute after the last save
    assert every.due(6, cpu)
    every.saved()
    assert not every.due(7, cpu)


@pytest.mark.parametrize("mode, workers", [("none", 0), ("device", 0), ("fixed", 0), ("buggy", 0), ("fixed", 2)])
def test_skipped_batches_leave_the_rest_of_the_epoch_unchanged(mode, workers):
    x = torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(100)

    def epoch(skip):
        return list(train_batches(x, y, augment=mode, batch_size=16, workers=workers, seed=3, epoch=1,
                                  device=torch.device("cpu"), skip=skip))

    full, rest = epoch(0), epoch(3)
    assert len(rest) == len(full) - 3
    for (xa, ya), (xb, yb) in zip(full[3:], rest, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("cmd, extra, saved", [
    ("train", (), {"epoch": 1, "position": None}),
    # --save-every 3: saves after steps 3, 6, 9, 10 (the epoch's end) and 12, 2 batches into epoch
    # 2; the loss turns NaN at step 14 and the save due after step 15 is refused.
    ("adv-train", ("--save-every", "3"), {"epoch": 1, "position": {"epoch": 1, "batches": 2}}),
], ids=["train-epoch-saves", "adv-train-save-every"])
def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_state(tmp_path, monkeypatch, cmd, extra, saved):
    from advcli.train import loop

    calls = {"n": 0}
    real = loop.mixed_cross_entropy

    def nan_from_step_14(*args, **kwargs):  # the outer loss of both commands' 20 steps
        calls["n"] += 1
        bl = real(*args, **kwargs)
        if calls["n"] >= 14:
            bl.loss = bl.loss * float("nan")
        return bl

    monkeypatch.setattr(loop, "mixed_cross_entropy", nan_from_step_14)
    out = tmp_path / "m.safetensors"
    result = _run(cmd, out, *extra)
    assert result.exit_code == 1, result.output
    assert "training diverged" in result.output and "step 14 (epoch 2)" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()  # no checkpoint of NaN weights
    meta = read_metadata(state_path_for(out))
    assert int(meta["epoch"]) == saved["epoch"]
    position = meta.get("position")
    assert (position and {k: int(position[k]) for k in ("epoch", "batches")}) == (saved["position"] or None)
    # The kept state holds finite weights: the first epoch's.
    from safetensors.torch import load_file
    assert all(torch.isfinite(t).all() for t in load_file(state_path_for(out)).values() if t.is_floating_point())
