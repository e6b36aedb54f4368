"""The run logger: NAME.metrics.jsonl (strict JSON lines, resume rule, cut lines), TensorBoard
scalars read back with tensorboard's EventAccumulator, the missing-extra message, and the
history PNG redrawn every epoch, and the real training loop feeding a RunWatch across --resume."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from advcli.errors import UsageError
from advcli.train.metrics_log import (
    TENSORBOARD_HINT,
    HistoryPngSink,
    RunLogger,
    metrics_path_for,
    open_run_logger,
    read_metrics,
    require_tensorboard,
)

STEPS = 4  # steps per epoch in these synthetic runs


def record(epoch: int, *, adv: bool = False, shift: float = 0.0) -> dict:
    r = {"epoch": epoch, "lr": 0.1 / epoch, "train_loss": 1.0 / epoch + shift, "train_accuracy": 0.5,
         "test_accuracy": 0.4 + 0.1 * epoch, "seconds": 0.5}
    if adv:
        r.update(clean_loss=math.nan, adv_loss=1.0 / epoch, adv_accuracy=0.25)
    return r


def run(logger: RunLogger, epochs: range, *, shift: float = 0.0, adv: bool = False) -> None:
    """Log `epochs` (1-based) of a synthetic run; per-step values are tensors, like the loop's."""
    with logger:
        for e in epochs:
            for i in range(STEPS):
                step = (e - 1) * STEPS + i + 1
                extra = {"attack_success_rate": torch.tensor(0.75)} if adv else {}
                logger.step(epoch=e, step=step, loss=torch.tensor(10.0 / step + shift), lr=0.1, **extra)
            logger.epoch(record(e, adv=adv, shift=shift), step=e * STEPS)


def lines(path: Path) -> list[dict]:
    # json.loads rejects nothing here that strict JSON would accept; NaN must not appear at all.
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    return [json.loads(line) for line in text.splitlines()]


def test_every_line_is_json_with_epoch_and_step(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    run(open_run_logger(out, label="m", png=False), range(1, 3), adv=True)
    rows = lines(metrics_path_for(out))
    assert metrics_path_for(out).name == "m.metrics.jsonl"
    assert [r["kind"] for r in rows] == ["run"] + ["step"] * 4 + ["epoch"] + ["step"] * 4 + ["epoch"]
    assert rows[0]["resumed_from_epoch"] == 0 and rows[0]["schema"] == "advcli.metrics/1"
    steps = [r for r in rows if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert [r["epoch"] for r in steps] == [1] * 4 + [2] * 4
    assert steps[1]["loss"] == pytest.approx(5.0) and steps[0]["attack_success_rate"] == 0.75
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [(r["epoch"], r["step"]) for r in epochs] == [(1, 4), (2, 8)]
    assert epochs[0]["clean_loss"] is None  # NaN written as null
    assert epochs[1]["attack_success_rate"] == pytest.approx(0.75)  # 1 - adv_accuracy
    assert all(isinstance(r["time"], float) for r in rows)


def test_steps_are_buffered_then_written_in_one_batch(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    logger = open_run_logger(out, label="m", png=False)
    logger.flush_every = 3
    for s in (1, 2):
        logger.step(epoch=1, step=s, loss=torch.tensor(1.0), lr=0.1)
    assert [r["kind"] for r in lines(metrics_path_for(out))] == ["run"]
    logger.step(epoch=1, step=3, loss=torch.tensor(1.0), lr=0.1)
    assert len(lines(metrics_path_for(out))) == 4
    logger.step(epoch=1, step=4, loss=torch.tensor(1.0), lr=0.1)
    logger.close()  # buffered steps are not lost
    assert lines(metrics_path_for(out))[-1]["step"] == 4


def test_a_resumed_run_supersedes_the_interrupted_epochs(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    log = metrics_path_for(out)
    # The interrupted run did 3 epochs; its state was saved after epoch 2, so --resume redoes 3-4.
    run(open_run_logger(out, label="m", png=False), range(1, 4), shift=100.0)
    run(open_run_logger(out, label="m", resumed_from_epoch=2, first_step=2 * STEPS + 1, png=False), range(3, 5))
    raw = lines(log)
    assert [r["epoch"] for r in raw if r["kind"] == "epoch"] == [1, 2, 3, 3, 4]  # appended, not rewritten
    m = read_metrics(log)
    assert m.runs == 2 and m.skipped == 0
    assert [r["epoch"] for r in m.epochs] == [1, 2, 3, 4]
    assert [r["step"] for r in m.steps] == list(range(1, 17))
    assert m.epochs[1]["train_loss"] == pytest.approx(100.5)  # kept from the first run
    assert m.epochs[2]["train_loss"] == pytest.approx(1 / 3)  # epoch 3 from the resumed run
    # The documented rule for other tools gives the same lines: the last per (kind, step).
    last = {(r["kind"], r["step"]): r for r in raw if r["kind"] != "run"}
    assert [last["epoch", 4 * e]["train_loss"] for e in (1, 2, 3, 4)] == [r["train_loss"] for r in m.epochs]
    # A fresh run (not --resume) over the same file starts the history again.
    run(open_run_logger(out, label="m", png=False), range(1, 2))
    assert [r["epoch"] for r in read_metrics(log).epochs] == [1]


def test_a_cut_last_line_is_skipped_and_not_glued_to_the_next_run(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    log = metrics_path_for(out)
    run(open_run_logger(out, label="m", png=False), range(1, 2))
    with open(log, "a") as fh:
        fh.write('{"kind": "step", "epoch": 2, "st')  # killed mid-write
    run(open_run_logger(out, label="m", resumed_from_epoch=1, first_step=STEPS + 1, png=False), range(2, 3))
    m = read_metrics(log)
    assert m.skipped == 1 and m.runs == 2
    assert [r["epoch"] for r in m.epochs] == [1, 2]


def test_no_sinks_is_a_no_op() -> None:
    logger = RunLogger()
    logger.step(epoch=1, step=1, loss=torch.tensor(1.0))
    logger.epoch(record(1), step=1)
    logger.close()
    assert logger._buffer == []


def test_history_png_is_redrawn_every_epoch_with_the_resumed_epochs(tmp_path: Path) -> None:
    from matplotlib.image import imread

    png = tmp_path / "m.history.png"
    sink = HistoryPngSink(png, label="m", history=[record(1), record(2)])
    logger = RunLogger([sink])
    logger.epoch(record(3), step=12)
    first = png.read_bytes()
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and imread(png).ndim == 3
    assert [r["epoch"] for r in sink.records] == [1, 2, 3]
    logger.epoch(record(4), step=16)
    assert png.read_bytes() != first  # the fourth epoch changed the picture
    assert "step" not in sink.records[-1] and "time" not in sink.records[-1]


def test_missing_tensorboard_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # None in sys.modules makes `import tensorboard` raise ImportError, as when it is absent.
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith(("tensorboard.", "torch.utils.tensorboard"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(UsageError) as err:
        require_tensorboard()
    assert TENSORBOARD_HINT in str(err.value) and "\n" not in str(err.value)
    assert err.value.exit_code == 2
    with pytest.raises(UsageError):
        open_run_logger(tmp_path / "m.safetensors", label="m", tensorboard=tmp_path / "tb")
    assert not (tmp_path / "m.metrics.jsonl").exists()


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_event_files_hold_the_scalars(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    tb = tmp_path / "tb"
    run(open_run_logger(tmp_path / "m.safetensors", label="m", tensorboard=tb, png=False),
        range(1, 3), adv=True)
    s = scalars(tb)
    assert [step for step, _ in s["step/loss"]] == list(range(1, 9))
    assert s["step/loss"][1][1] == pytest.approx(5.0)
    assert [v for _, v in s["step/lr"]] == pytest.approx([0.1] * 8)
    assert s["step/attack_success_rate"][0][1] == pytest.approx(0.75)
    assert [step for step, _ in s["epoch/test_accuracy"]] == [4, 8]
    assert [v for _, v in s["epoch/test_accuracy"]] == pytest.approx([0.5, 0.6])
    assert [v for _, v in s["epoch/lr"]] == pytest.approx([0.1, 0.05])
    assert [v for _, v in s["epoch/attack_success_rate"]] == pytest.approx([0.75, 0.75])
    assert "epoch/clean_loss" not in s and "epoch/epoch" not in s  # NaN and bookkeeping are not scalars


def test_tensorboard_shows_each_step_once_after_resume(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    tb = tmp_path / "tb"
    out = tmp_path / "m.safetensors"
    run(open_run_logger(out, label="m", tensorboard=tb, png=False), range(1, 4), shift=100.0)
    run(open_run_logger(out, label="m", tensorboard=tb, resumed_from_epoch=2, first_step=2 * STEPS + 1, png=False),
        range(3, 5))
    s = scalars(tb)
    assert [step for step, _ in s["step/loss"]] == list(range(1, 17))
    assert [step for step, _ in s["epoch/train_loss"]] == [4, 8, 12, 16]
    assert s["epoch/train_loss"][2][1] == pytest.approx(1 / 3)  # the resumed run's epoch 3


class FakeStep:
    """The fields of train.loop.StepStats a RunWatch reads."""

    def __init__(self, epoch: int, step: int, *, n_adv: int = 0, adv_correct: int = 0) -> None:
        self.epoch, self.step, self.lr = epoch, step, 0.1
        self.loss = torch.tensor(1.0 / step)
        self.n_adv, self.adv_correct = n_adv, torch.tensor(adv_correct)


def test_run_watch_logs_attack_success_per_step(tmp_path: Path) -> None:
    from advcli.train.metrics_log import RunWatch

    out = tmp_path / "m.safetensors"
    watch = RunWatch(out, label="m", png=False)
    watch.on_step(FakeStep(1, 1, n_adv=8, adv_correct=2))
    watch.on_step(FakeStep(1, 2))  # a clean batch: no attack, no rate
    watch.close()
    steps = read_metrics(metrics_path_for(out)).steps
    assert steps[0]["attack_success_rate"] == pytest.approx(0.75)
    assert "attack_success_rate" not in steps[1]


def test_the_training_loop_feeds_the_watch_and_resume_continues_it(tmp_path: Path, synthetic_data) -> None:
    from advcli.train.loop import TrainOptions, fit
    from advcli.train.metrics_log import RunWatch

    out = tmp_path / "m.safetensors"
    tb = tmp_path / "tb" if _has_tensorboard() else None
    opts = TrainOptions(arch="tiny-cnn", epochs=2, batch_size=128, n_train=256, augment="none", out=str(out))

    def killed_after_epoch_1(stats) -> None:
        if stats.epoch == 1:
            raise KeyboardInterrupt  # after the state of epoch 1 is saved, as a kill would be

    watch = RunWatch(out, label="m", tensorboard=tb)
    with pytest.raises(KeyboardInterrupt):
        try:
            fit(opts, synthetic_data, torch.device("cpu"), step_hooks=[watch.on_step],
                end_hooks=[watch.on_epoch, killed_after_epoch_1])
        finally:
            watch.close()
    watch = RunWatch(out, label="m", tensorboard=tb)
    try:
        res = fit(opts, synthetic_data, torch.device("cpu"), resume=True, step_hooks=[watch.on_step],
                  end_hooks=[watch.on_epoch])
        png_sink = watch.logger.sinks[-1]
    finally:
        watch.close()

    m = read_metrics(metrics_path_for(out))
    assert m.runs == 2 and [r["epoch"] for r in m.epochs] == [1, 2]
    assert [r["step"] for r in m.steps] == [1, 2, 3, 4]  # 256 / 128 = 2 steps per epoch
    assert [r["test_accuracy"] for r in m.epochs] == pytest.approx([h.test_accuracy for h in res.history])
    png = out.with_name("m.history.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["epoch"] for r in png_sink.records] == [1, 2]  # drawn with the resumed epoch
    if tb is not None:
        s = scalars(tb)
        assert [step for step, _ in s["step/loss"]] == [1, 2, 3, 4]
        assert [step for step, _ in s["epoch/test_accuracy"]] == [2, 4]


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def test_a_mid_epoch_resume_keeps_the_steps_before_the_save(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from advcli.cli.app import app
    from advcli.train.state import STOP_AFTER_STEP_ENV

    out = tmp_path / "m.safetensors"
    # 4 steps an epoch, 8 in the run; saves after steps 3 and 6 (inside epoch 2), stopped after
    # step 7 as a kill would: the resume redoes step 7 from the save after step 6.
    args = ["train", "--epochs", "2", "--n-train", "256", "--batch-size", "64", "--augment", "none",
            "--save-every", "3", "--resume", "--out", str(out), "--device", "cpu", "-q"]
    killed = CliRunner().invoke(app, args, env={STOP_AFTER_STEP_ENV: "7"})
    assert killed.exit_code == 130, killed.output
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    m = read_metrics(metrics_path_for(out))
    assert m.runs == 2
    assert [(r["epoch"], r["step"]) for r in m.steps] == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 5), (2, 6), (2, 7), (2, 8)]
    assert [r["epoch"] for r in m.epochs] == [1, 2]
    runs = [r for r in lines(metrics_path_for(out)) if r["kind"] == "run"]
    assert [(r["resumed_from_epoch"], r["first_step"]) for r in runs] == [(0, 1), (1, 7)]


def test_a_file_without_first_step_keeps_the_old_rule(tmp_path: Path) -> None:
    path = tmp_path / "old.metrics.jsonl"
    rows = [{"kind": "run", "resumed_from_epoch": 0}, *({"kind": "step", "epoch": 1 + (s > 2), "step": s}
            for s in (1, 2, 3)), {"kind": "run", "resumed_from_epoch": 1}, {"kind": "step", "epoch": 2, "step": 3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["step"] for r in read_metrics(path).steps] == [1, 2, 3]


def test_adv_train_cli_writes_metrics_png_and_tensorboard(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from advcli.cli.app import app

    out = tmp_path / "r.safetensors"
    tb = tmp_path / "tb"
    args = ["adv-train", "--eps", "8/255", "--attack", "fgsm", "--epochs", "2", "--n-train", "128",
            "--batch-size", "64", "--augment", "none", "--on-overfit", "off", "--out", str(out), "--device", "cpu", "-q"]
    if _has_tensorboard():
        args += ["--tensorboard", str(tb)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    m = read_metrics(tmp_path / "r.metrics.jsonl")
    assert [r["step"] for r in m.steps] == [1, 2, 3, 4]
    assert all(0.0 <= r["attack_success_rate"] <= 1.0 for r in m.steps)
    assert [r["epoch"] for r in m.epochs] == [1, 2]
    assert m.epochs[-1]["attack_success_rate"] == pytest.approx(1 - m.epochs[-1]["adv_accuracy"])
    assert (tmp_path / "r.history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if _has_tensorboard():
        s = scalars(tb)
        assert [step for step, _ in s["step/attack_success_rate"]] == [1, 2, 3, 4]
        assert [step for step, _ in s["epoch/adv_accuracy"]] == [2, 4]
        assert "step/lr" in s and "epoch/test_accuracy" in s


def test_train_cli_without_the_extra_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from advcli.cli.app import app

    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith(("tensorboard.", "torch.utils.tensorboard"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    res = CliRunner().invoke(app, ["train", "--epochs", "1", "--out", str(tmp_path / "m.safetensors"),
                                   "--tensorboard", str(tmp_path / "tb")])
    assert res.exit_code == 2
    assert TENSORBOARD_HINT in res.output and "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []  # failed before any work
