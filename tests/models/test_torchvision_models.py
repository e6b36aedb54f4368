"""`--arch torchvision:NAME`: ImageNet models built by torchvision.models inside advcli's Classifier,
saved and rebuilt from the checkpoint's arch string alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from advcli.cli.app import app
from advcli.errors import UsageError
from advcli.models import Classifier, build_model, resolve_arch
from advcli.models.checkpoint import load_checkpoint, model_metadata, save_checkpoint
from advcli.models.layout import model_layout, use_channels_last
from advcli.models.registry import outside_arch

runner = CliRunner()
NAMES = ["resnet18", "resnet50", "wide_resnet50_2"]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.mark.parametrize("name", NAMES)
def test_builds_torchvisions_own_net_round_trips_through_the_checkpoint(name: str, tmp_path: Path) -> None:
    import torchvision.models as tvm

    arch = f"torchvision:{name}"
    assert resolve_arch(arch) == arch  # underscores kept: torchvision's exact spelling
    torch.manual_seed(0)
    model = build_model(arch, 10, MEAN, STD).eval()
    assert isinstance(model, Classifier)
    # torchvision's own class (not a re-implementation), with K outputs.
    assert type(model.net) is type(tvm.get_model(name, weights=None, num_classes=10))
    assert model.net.fc.out_features == 10
    assert torch.equal(model.normalize.mean.flatten(), torch.tensor(MEAN))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (1, 10)

    path = tmp_path / "m.safetensors"
    meta = model_metadata(arch=arch, num_classes=10, dataset="folder:x", mean=MEAN, std=STD,
                          input_shape=[3, 64, 64])
    save_checkpoint(path, model, meta)
    loaded = load_checkpoint(path)
    assert loaded.meta["arch"] == arch
    assert not loaded.model.training
    with torch.no_grad():
        again = loaded.model(x)
    assert torch.equal(again, logits)


def test_unknown_name_says_how_to_list_the_valid_ones() -> None:
    with pytest.raises(UsageError, match=r"torchvision:resnet50.*list_models"):
        resolve_arch("torchvision:resnet5O")
    # Names are torchvision's exactly: advcli's own `-` spelling is not theirs.
    with pytest.raises(UsageError, match="torchvision:wide_resnet50_2"):
        resolve_arch("torchvision:wide-resnet50-2")
    with pytest.raises(UsageError, match="torchvision:NAME"):
        resolve_arch("resnet-5000")
    r = runner.invoke(app, ["train", "--arch", "torchvision:nope", "--epochs", "1", "-q"])
    assert r.exit_code == 2
    assert "unknown torchvision model 'nope'" in r.output and "Traceback" not in r.output


def test_runs_channels_last_as_advclis_own_models_do() -> None:
    arch = "torchvision:resnet18"
    assert not outside_arch(arch)
    assert use_channels_last(None, outside=outside_arch(arch))
    torch.manual_seed(0)
    model = build_model(arch, 10).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        nchw = model(x)
        with model_layout(model, True):
            nhwc = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(nhwc, nchw, rtol=1e-4, atol=1e-4)
    assert all(p.is_contiguous() for p in model.parameters())  # layout restored afterwards


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torchvision's note on GoogLeNet's init
def test_inception_builds_without_auxiliary_heads() -> None:
    # A training-mode forward must give one logits tensor, as the training loop expects.
    model = build_model("torchvision:googlenet", 5).train()
    out = model(torch.rand(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5)


def test_cli_trains_then_eval_and_info_rebuild_it_with_no_flag(tmp_path: Path) -> None:
    ckpt, result = tmp_path / "tv.safetensors", tmp_path / "eval.yaml"
    r = runner.invoke(app, ["train", "--arch", "torchvision:resnet18", "--dataset", "synthetic",
                            "--epochs", "1", "--n-train", "64", "--batch-size", "32",
                            "--out", str(ckpt), "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["info", str(ckpt)])
    assert r.exit_code == 0, r.output
    assert "torchvision:resnet18" in r.output
    r = runner.invoke(app, ["eval", str(ckpt), "--n", "16", "--no-pgd", "-o", str(result), "-q"])
    assert r.exit_code == 0, r.output
    saved = yaml.safe_load(result.read_text())
    assert saved["model"]["arch"] == "torchvision:resnet18"
    assert saved["data"]["n"] == 16


def test_imports_torchvisions_own_state_dict(tmp_path: Path) -> None:
    """A torchvision state dict (the form its pretrained ImageNet weights take) imports as-is,
    class count read from `fc`, and gives the torchvision model's logits."""
    import torchvision.models as tvm

    torch.manual_seed(3)
    net = tvm.get_model("resnet18", weights=None, num_classes=7).eval()
    weights, ckpt = tmp_path / "r18.pth", tmp_path / "r18.safetensors"
    torch.save(net.state_dict(), weights)
    r = runner.invoke(app, ["import", str(weights), "--arch", "torchvision:resnet18",
                            "--dataset", "folder:x", "-o", str(ckpt)])
    assert r.exit_code == 0, r.output
    loaded = load_checkpoint(ckpt)
    assert loaded.meta["arch"] == "torchvision:resnet18" and loaded.meta["num_classes"] == 7
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), net(x))  # mean 0, std 1: Normalize is the identity
