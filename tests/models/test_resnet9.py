"""resnet9 / resnet9-wN: names, shapes and widths, a training step in NHWC + bf16, and the
round trip through a checkpoint (the width lives in the arch name)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from advcli.cli.app import app
from advcli.errors import UsageError
from advcli.models import build_model, resolve_arch
from advcli.models.checkpoint import load_checkpoint, read_metadata
from advcli.models.resnet9 import DEFAULT_WIDTH, Scale
from advcli.train.loop import TrainOptions, fit

CPU = torch.device("cpu")


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_names_and_widths():
    assert resolve_arch("ResNet9_W8") == "resnet9-w8" and resolve_arch("resnet9") == "resnet9"
    for bad in ("resnet9-w3", "resnet9-w200", "resnet9-w", "resnet9-x8"):
        with pytest.raises(UsageError, match="resnet9-wN"):
            resolve_arch(bad)
    default, w8 = build_model("resnet9", 10), build_model("resnet9-w8", 10)
    assert _params(default) == _params(build_model(f"resnet9-w{DEFAULT_WIDTH}", 10))
    # Every conv grows with width^2 (the 3-channel input conv and the head with width): ~4x.
    assert 3.8 < _params(build_model("resnet9-w16", 10)) / _params(w8) < 4.0
    with torch.no_grad():
        assert w8.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)
        assert build_model("resnet9-w4", 100).eval()(torch.rand(1, 3, 32, 32)).shape == (1, 100)
    assert isinstance(w8.net[-1], Scale) and w8.net[-1].factor == 0.125 and w8.net[-2].bias is None


def test_a_training_step_in_nhwc_and_bf16_and_the_checkpoint_round_trip(tmp_path, synthetic_data):
    out = tmp_path / "r9.safetensors"
    torch.manual_seed(0)
    before = build_model("resnet9-w8", 10, synthetic_data.mean, synthetic_data.std).state_dict()
    res = fit(TrainOptions(arch="resnet9-w8", epochs=1, batch_size=32, lr=0.05, n_train=64, augment="device",
                           channels_last=True, amp="bf16", out=str(out)), synthetic_data, CPU)
    assert len(res.history) == 1 and res.history[0].train_loss == res.history[0].train_loss  # not NaN
    meta = read_metadata(out)
    assert meta["arch"] == "resnet9-w8" and meta["config"]["channels_last"] is True
    loaded = load_checkpoint(out).model
    after = loaded.state_dict()
    assert after.keys() == before.keys()
    assert not torch.equal(after["net.0.0.weight"], before["net.0.0.weight"])  # the step changed the weights
    # The loaded model is the trained one: its predictions are those of a model built from the
    # name alone and given the saved tensors.
    rebuilt = build_model(meta["arch"], 10, meta["mean"], meta["std"])
    rebuilt.load_state_dict(after)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), loaded(x))
    assert all(t.is_contiguous() for t in after.values())  # saved NCHW whatever it trained in


def test_the_cli_accepts_a_width(tmp_path):
    out = tmp_path / "w.safetensors"
    r = CliRunner().invoke(app, ["train", "--arch", "resnet9-w4", "--epochs", "1", "--n-train", "64", "--device", "cpu",
                                 "-q", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert read_metadata(out)["arch"] == "resnet9-w4"
    r = CliRunner().invoke(app, ["train", "--arch", "resnet9-w2", "--out", str(tmp_path / "x.safetensors")])
    assert r.exit_code == 2 and "resnet9-wN (width N from 4 to 128)" in r.output
