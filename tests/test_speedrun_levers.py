"""benchmarks/speedrun_levers.py: each lever is a real adv-train run validated on a held-out split,
and its table reads the numbers back from the checkpoints."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speedrun_levers.py"


@pytest.fixture(scope="module")
def levers():
    spec = importlib.util.spec_from_file_location("advcli_speedrun_levers", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_lever_validates_on_a_held_out_split_never_the_test_set(levers):
    assert "--val-split" in levers.COMMON
    for name, (_, options) in levers.LEVERS.items():
        assert "--epochs" in options and "--arch" in options, name
        assert "--val-split" not in options and "--keep" not in options, name


def test_a_lever_runs_and_its_table_row_reads_the_checkpoint(levers, tmp_path, monkeypatch, capsys):
    # The real runner on the built-in data, with the model shrunk so that it takes seconds.
    monkeypatch.setattr(levers, "LEVERS", {"tiny": ("tiny-cnn, FGSM-RS, 2 epochs",
                                                    ["--arch", "tiny-cnn", "--epochs", "2", "--attack", "fgsm-rs",
                                                     "--n-train", "600", "--amp", "none", "--no-channels-last"])})
    monkeypatch.setattr(levers, "COMMON", [c if c != "5000" else "200" for c in levers.COMMON])
    assert levers.main(["--out", str(tmp_path), "--data", "synthetic"]) == 0
    out = capsys.readouterr().out
    row = [ln for ln in out.splitlines() if ln.startswith("| tiny-cnn")]
    assert len(row) == 1 and row[0].count("%") == 2, out
    from advcli.models.checkpoint import read_metadata
    meta = read_metadata(tmp_path / "tiny.safetensors")
    assert meta["config"]["val_split"] == 200 and len(meta["history"]) == 2
    assert f"{100 * meta['history'][-1]['val_robust_accuracy']:.1f} %" in row[0]
    # A second call re-runs nothing (the checkpoint exists) and prints the same table.
    before = (tmp_path / "tiny.safetensors").stat().st_mtime_ns
    assert levers.main(["--out", str(tmp_path), "--data", "synthetic"]) == 0
    assert (tmp_path / "tiny.safetensors").stat().st_mtime_ns == before
