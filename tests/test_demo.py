"""The demo's point holds on `synthetic`, and the demo pipeline runs end to end at a tiny size."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advcli.attacks import AttackSpec, build_attack
from advcli.config import Norm, parse_eps
from advcli.data import test_subset, to_float
from advcli.models.checkpoint import load_checkpoint
from advcli.train.adversarial import AdvOptions, ThreatModel, adv_fit
from advcli.train.loop import TrainOptions

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _clean_and_pgd(path, data, n=300):
    model = load_checkpoint(path).model
    idx = test_subset(data.test_y, n)
    x, y = to_float(data.test_x[idx]), data.test_y[idx]
    attack = build_attack(AttackSpec(name="pgd", norm=Norm.linf, eps=parse_eps("8/255"), steps=10))
    x_adv = attack.perturb(model, x, y, torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean()), float((model(x_adv).argmax(1) == y).float().mean())


def test_synthetic_shows_the_robustness_tradeoff(tmp_path, synthetic_data, tiny_ckpt):
    """Standard: accurate but not robust. PGD-trained: robust, at a visible clean-accuracy cost."""
    robust = tmp_path / "robust.safetensors"
    adv_fit(
        TrainOptions(arch="tiny-cnn", epochs=3, batch_size=128, lr=0.1, augment="none", n_train=6000, out=str(robust)),
        AdvOptions(threat=ThreatModel(norm=Norm.linf, eps=parse_eps("8/255"), attack="pgd", steps=3, fraction=1.0)),
        synthetic_data, CPU,
    )
    std_clean, std_rob = _clean_and_pgd(tiny_ckpt, synthetic_data)
    rob_clean, rob_rob = _clean_and_pgd(robust, synthetic_data)
    assert std_clean >= 0.9 and std_rob <= 0.1
    assert rob_rob >= std_rob + 0.4
    assert rob_clean <= std_clean - 0.05


@pytest.mark.slow
def test_demo_pipeline_runs_end_to_end(tmp_path):
    advcli = shutil.which("advcli", path=str(Path(sys.executable).parent)) or "advcli"
    env = dict(os.environ, ADVCLI=advcli, DEMO_DIR=str(tmp_path / "demo"), DEMO_N="48", DEMO_EPOCHS="1",
               DEMO_N_TRAIN="1024", ADVCLI_NO_PROGRESS="1", COLUMNS="160")
    r = subprocess.run(["bash", str(REPO / "recipes" / "demo.sh")], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "Standard" in out and "Robust" in out and "Accuracy" in out
    for name in ("standard.safetensors", "robust.safetensors", "robust-pgd.safetensors", "robust-pgd.png",
                 "results/standard.yaml", "results/robust.yaml"):
        assert (tmp_path / "demo" / name).is_file(), name
