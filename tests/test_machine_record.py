"""Checkpoints and result files say where they were made (CPU model, cores, torch threads) and
a training checkpoint how long its epochs took, so speed claims carry their machine."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from advcli.checkpoint import read_metadata
from advcli.cli.app import app
from advcli.provenance import cpu_model, machine, provenance

runner = CliRunner()


def test_machine_names_the_cpu_and_the_thread_count(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    info = machine()
    assert info["torch_threads"] == 3
    assert isinstance(info["cpu"], str) and info["cpu"] and info["cpu"] == cpu_model()
    assert info["cpu_count"] is None or info["cpu_count"] >= 1
    assert provenance(0)["machine"]["torch_threads"] == 3


def test_a_training_checkpoint_records_its_machine_and_training_time(tmp_path):
    out = tmp_path / "m.safetensors"
    r = runner.invoke(app, ["train", "--arch", "tiny-cnn", "--dataset", "synthetic", "--epochs", "2",
                            "--n-train", "256", "--batch-size", "64", "--augment", "none", "-q",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    meta = read_metadata(out)
    assert meta["machine"]["torch_threads"] == torch.get_num_threads()
    assert meta["machine"]["cpu"] == cpu_model()
    epochs = meta["history"]
    seconds = sum(e["seconds"] for e in epochs)
    assert meta["metrics"]["train_seconds"] > 0
    assert abs(meta["metrics"]["train_seconds"] - seconds) < 1e-2
