"""`advcli import`: outside state dicts -> advcli checkpoints, weights_only loading only."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from advcli.cli.app import app
from advcli.errors import CheckpointError
from advcli.models import build_model
from advcli.models.checkpoint import load_checkpoint, read_metadata
from advcli.models.import_weights import import_weights, save_import

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2471, 0.2435, 0.2616]


def _outside_net(arch: str, seed: int = 0, num_classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_model(arch, num_classes).net
    # Non-trivial BatchNorm statistics, so a mix-up of buffers would change the outputs.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def test_robustbench_style_resnet18_with_wrappers_and_module_prefix(tmp_path: Path) -> None:
    net = _outside_net("resnet18")
    state = net.state_dict()
    # The CIFAR ResNet-18 layout of AutoAttack's and RobustBench's examples.
    for key in ("conv1.weight", "bn1.running_mean", "layer2.0.shortcut.0.weight",
                "layer4.1.conv2.weight", "linear.weight", "linear.bias"):
        assert key in state
    src = tmp_path / "rb.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 99}, src)
    res = import_weights(src, arch="resnet18", dataset="cifar10")
    assert res.wrapper_key == "state_dict" and res.stripped_prefix == "module."
    out = save_import(tmp_path / "rb.safetensors", res)
    meta = read_metadata(out)
    assert meta["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert meta["mean"] == [0.0, 0.0, 0.0] and meta["std"] == [1.0, 1.0, 1.0]
    assert meta["threat_model"] is None
    loaded = load_checkpoint(out)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), net(x))


def test_normalisation_is_recorded_and_applied(tmp_path: Path) -> None:
    net = _outside_net("tiny-cnn", num_classes=7)
    src = tmp_path / "tiny.pth"
    torch.save({"model": net.state_dict()}, src)
    res = import_weights(src, arch="tiny-cnn", dataset="cifar10", mean=CIFAR_MEAN, std=CIFAR_STD)
    assert res.num_classes == 7  # read from the final layer
    loaded = load_checkpoint(save_import(tmp_path / "t.safetensors", res))
    x = torch.rand(5, 3, 32, 32)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), net((x - mean) / std))


def test_old_checkpoints_without_num_batches_tracked_load(tmp_path: Path) -> None:
    net = _outside_net("tiny-cnn")
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pt")
    res = import_weights(tmp_path / "old.pt", arch="tiny-cnn", dataset="synthetic")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), net(x))


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path: Path) -> None:
    state = _outside_net("tiny-cnn").state_dict()
    state.pop("0.weight")
    state["extra.weight"] = torch.zeros(3)
    state["13.bias"] = torch.zeros(5)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as info:
        import_weights(tmp_path / "bad.pt", arch="tiny-cnn", dataset="synthetic")
    msg = str(info.value)
    assert "1 missing: 0.weight" in msg
    assert "1 unexpected: extra.weight" in msg
    assert "1 shape: 13.bias (5,) vs (10,)" in msg
    assert "\n" not in msg


class _Evil:
    """Unpickling this would create a file: it must never be unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (os.mkdir, (self.marker,))


def test_pickled_objects_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"state_dict": _outside_net("tiny-cnn").state_dict(), "hook": _Evil(str(marker))},
               tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        import_weights(tmp_path / "evil.pt", arch="tiny-cnn", dataset="synthetic")
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(b"\x00not a torch file")
    with pytest.raises(CheckpointError, match="junk.pt"):
        import_weights(tmp_path / "junk.pt", arch="tiny-cnn", dataset="synthetic")


def test_cli_import(tmp_path: Path) -> None:
    src = tmp_path / "w.pt"
    torch.save(_outside_net("tiny-cnn").state_dict(), src)
    out = tmp_path / "imported.safetensors"
    runner = CliRunner()
    res = runner.invoke(app, ["import", str(src), "--arch", "tiny-cnn", "--dataset", "synthetic",
                              "-o", str(out), "--mean", "0.5", "--std", "0.25",
                              "--norm", "linf", "--eps", "8/255"])
    assert res.exit_code == 0, res.output
    meta = read_metadata(out)
    assert meta["label"] == "imported"
    assert meta["mean"] == [0.5] * 3 and meta["std"] == [0.25] * 3
    assert meta["threat_model"]["eps_text"] == "8/255"
    assert meta["source"]["loader"] == "torch.load(weights_only=True)"
    # usage errors exit 2, failures exit 1, and nothing is written
    bad_out = tmp_path / "never.safetensors"
    res = runner.invoke(app, ["import", str(src), "--arch", "resnet7", "--dataset", "synthetic",
                              "-o", str(bad_out)])
    assert res.exit_code == 2 and "valid values" in res.output
    res = runner.invoke(app, ["import", str(src), "--arch", "resnet18", "--dataset", "synthetic",
                              "-o", str(bad_out)])
    assert res.exit_code == 1 and "do not match arch 'resnet18'" in res.output
    res = runner.invoke(app, ["import", str(src), "--arch", "tiny-cnn", "--dataset", "synthetic",
                              "-o", str(bad_out), "--norm", "linf"])
    assert res.exit_code == 2
    assert not bad_out.exists()
