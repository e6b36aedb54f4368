"""Checkpoints and result files say where they were made (CPU model, cores, torch threads) and
a training checkpoint how long its epochs took, so speed claims carry their machine."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from advcli.cli.app import app
from advcli.models.checkpoint import read_metadata
from advcli.provenance import cpu_model, cpu_model_from, machine, provenance

runner = CliRunner()


def test_machine_names_the_cpu_and_the_thread_count(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    info = machine()
    assert info["torch_threads"] == 3
    assert isinstance(info["cpu"], str) and info["cpu"] and info["cpu"] == cpu_model()
    assert info["cpu_count"] is None or info["cpu_count"] >= 1
    assert provenance(0)["machine"]["torch_threads"] == 3


def test_the_cpu_model_is_read_from_cpuinfo_on_x86_and_arm():
    x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel\t\t: 17\nmodel name\t: AMD EPYC 9R14\nflags\t: avx\n"
    assert cpu_model_from(x86) == "AMD EPYC 9R14"  # not the numeric `model` line
    assert cpu_model_from("processor\t: 0\nBogoMIPS\t: 50.00\n\nModel\t: Raspberry Pi 4 Model B\n") == (
        "Raspberry Pi 4 Model B")
    assert cpu_model_from("processor\t: 0\nmodel name\t:\n") is None  # empty: fall back to platform


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
