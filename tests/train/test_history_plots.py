"""Training-history pictures: the PNG is valid and shows what the runs measured; the history
reader's errors; `advcli plot history` end to end on synthetic histories (no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from advcli.errors import ResultsError
from advcli.train.history import SCHEMA, read_history
from advcli.train.plot import history_figure, plot_history, series, size_px

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def clean_records(n: int, *, start: float = 0.5) -> list[dict]:
    return [
        {"epoch": e, "lr": 0.1, "train_loss": 2.0 / e, "train_accuracy": start + 0.04 * e,
         "test_accuracy": start - 0.05 + 0.04 * e, "seconds": 1.0}
        for e in range(1, n + 1)
    ]


def adv_records(n: int, *, val_every: int = 2) -> list[dict]:
    """Adversarial training with fraction 1: no clean part, train_* is the adversarial part."""
    out = []
    for r in clean_records(n, start=0.3):
        r.update(clean_loss=math.nan, clean_accuracy=math.nan, adv_loss=r["train_loss"], adv_accuracy=r["train_accuracy"])
        if r["epoch"] % val_every == 0:
            r["val_robust_accuracy"] = 0.2 + 0.01 * r["epoch"]
        out.append(r)
    return out


def write_history(path: Path, records: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"schema": SCHEMA, "checkpoint": "x.safetensors", "sha256": "0" * 64,
                                    "history": records}, sort_keys=False))
    return path


def read_png(path: Path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return imread(path)


def test_png_is_written_and_valid(tmp_path: Path) -> None:
    out = plot_history([("clean", clean_records(5))], tmp_path / "sub" / "m.history.png")
    img = read_png(out)
    width, height = size_px()
    assert img.shape[:2] == (height, width)
    assert img[..., :3].std() > 0.05  # something is drawn, not a blank canvas
    assert [p.name for p in out.parent.iterdir()] == ["m.history.png"]  # no temp file left


def test_one_epoch_is_drawn_as_a_point(tmp_path: Path) -> None:
    fig = history_figure([("one", clean_records(1))])
    ax_loss, ax_acc = fig.axes
    assert [line.get_marker() for line in ax_loss.lines] == ["o"]
    assert list(ax_acc.lines[0].get_xdata()) == [1]


def test_adversarial_run_shows_adversarial_test_and_val_robust_at_measured_epochs() -> None:
    fig = history_figure([("robust", adv_records(6, val_every=3))])
    ax_loss, ax_acc = fig.axes
    labels = {line.get_label(): line for line in ax_acc.lines}
    # fraction 1: no clean part, so no "train" line (train_accuracy is the adversarial part).
    assert set(labels) == {"train adversarial", "test", "val robust"}
    assert list(labels["val robust"].get_xdata()) == [3, 6]
    assert labels["val robust"].get_ydata()[0] == pytest.approx(100 * (0.2 + 0.03))
    assert [line.get_label() for line in ax_loss.lines] == ["train adversarial"]


def test_series_prefers_the_clean_part_and_drops_missing_values() -> None:
    recs = adv_records(4)
    recs[1]["clean_accuracy"] = 0.7  # a clean part exists in epoch 2 only
    epochs, values = series(recs, ("clean_accuracy", "train_accuracy"))
    assert (epochs, values) == ([2], [0.7])
    assert series(clean_records(3), ("clean_accuracy", "train_accuracy"))[0] == [1, 2, 3]
    assert series(clean_records(3), ("val_robust_accuracy",)) == ([], [])


def test_several_runs_get_one_colour_each() -> None:
    fig = history_figure([("a", clean_records(3)), ("b", adv_records(4))])
    ax_acc = fig.axes[1]
    colours = {line.get_label(): line.get_color() for line in ax_acc.lines}
    assert {"a: train", "a: test", "b: train adversarial", "b: test", "b: val robust"} == set(colours)
    assert colours["a: train"] == colours["a: test"] != colours["b: test"]


def test_nothing_to_draw_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        plot_history([("empty", [])], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_read_history_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="does not exist"):
        read_history(tmp_path / "missing.history.yaml")
    bad = tmp_path / "bad.history.yaml"
    bad.write_text(yaml.safe_dump({"schema": "advcli.results/1", "history": []}))
    with pytest.raises(ResultsError, match="not an advcli training history"):
        read_history(bad)
    bad.write_text(yaml.safe_dump({"schema": SCHEMA, "history": [{"lr": 0.1}]}))
    with pytest.raises(ResultsError, match="no positive integer 'epoch'"):
        read_history(bad)
    h = read_history(write_history(tmp_path / "ok.history.yaml", clean_records(2)))
    assert h.label == "ok" and [r["epoch"] for r in h.records] == [1, 2]


def test_plot_history_cli_overlays_runs(tmp_path: Path) -> None:
    from advcli.cli.app import app

    a = write_history(tmp_path / "clean.history.yaml", clean_records(4))
    b = write_history(tmp_path / "robust.history.yaml", adv_records(4))
    out = tmp_path / "runs.png"
    res = CliRunner().invoke(app, ["plot", "history", str(a), str(b), "-o", str(out), "--format", "json"])
    assert res.exit_code == 0, res.output
    read_png(out)
    doc = json.loads(res.stdout)
    assert [r["label"] for r in doc["runs"]] == ["clean", "robust"]
    assert doc["runs"][1]["val_robust_accuracy"] == pytest.approx(0.24)
    assert doc["runs"][0]["val_robust_accuracy"] is None and doc["runs"][0]["best_test_epoch"] == 4

    # One run, no -o: NAME.history.png beside it; the table names the run.
    res = CliRunner().invoke(app, ["plot", "history", str(a)])
    assert res.exit_code == 0, res.output
    read_png(tmp_path / "clean.history.png")
    assert "clean" in res.stdout


def test_plot_history_cli_reads_a_metrics_log(tmp_path: Path) -> None:
    from advcli.cli.app import app

    log = tmp_path / "live.metrics.jsonl"
    lines = [{"kind": "run", "resumed_from_epoch": 0}]
    lines += [{"kind": "epoch", "step": 10 * r["epoch"], **r} for r in clean_records(3)]
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    res = CliRunner().invoke(app, ["plot", "history", str(log), "--format", "yaml"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(res.stdout)["runs"][0]["epochs"] == 3
    read_png(tmp_path / "live.history.png")


def test_plot_history_cli_errors(tmp_path: Path) -> None:
    from advcli.cli.app import app

    a = write_history(tmp_path / "a.history.yaml", clean_records(2))
    res = CliRunner().invoke(app, ["plot", "history", str(a), "-o", str(tmp_path / "a.jpg")])
    assert res.exit_code == 2 and "must end in .png" in res.output
    res = CliRunner().invoke(app, ["plot", "history", str(tmp_path / "nope.history.yaml")])
    assert res.exit_code == 1 and "does not exist" in res.output and "Traceback" not in res.output
    empty = write_history(tmp_path / "empty.history.yaml", [])
    res = CliRunner().invoke(app, ["plot", "history", str(empty)])
    assert res.exit_code == 1 and "no finished epoch" in res.output
