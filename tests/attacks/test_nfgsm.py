"""N-FGSM: a hand computation of the attack, its perturbations beyond eps in training, and its
refusal wherever robustness is measured (evaluation attacks stay inside the eps-ball)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from advcli.attacks import AttackSpec, build_attack
from advcli.attacks.base import lp_norms
from advcli.attacks.fgsm import FGSM
from advcli.attacks.nfgsm import NFGSM
from advcli.attacks.registry import build_training_attack
from advcli.cli.app import app
from advcli.config import Norm, parse_eps
from advcli.data import test_subset, to_float
from advcli.errors import UsageError
from advcli.models.checkpoint import load_checkpoint, read_metadata
from advcli.train.adversarial import AdvOptions, ThreatModel, adv_fit
from advcli.train.loop import TrainOptions

EPS = 8 / 255
CPU = torch.device("cpu")
runner = CliRunner()


@pytest.fixture(scope="module")
def batch(synthetic_data):
    idx = test_subset(synthetic_data.test_y, 64, seed=0)
    return to_float(synthetic_data.test_x[idx]), synthetic_data.test_y[idx]


def test_n_fgsm_is_noise_then_one_signed_step_without_projection(tiny_ckpt, batch):
    model = load_checkpoint(tiny_ckpt).model.train()
    x, y = batch
    attack = NFGSM("linf", EPS)
    assert (attack.noise, attack.step_size) == (2 * EPS, EPS)
    x_adv = attack.perturb(model, x, y, torch.Generator().manual_seed(3))
    assert model.training and all(p.requires_grad for p in model.parameters())  # restored
    # By hand: the same uniform draw, the gradient at the noisy point in eval mode, one step.
    noise = torch.empty(x.shape).uniform_(-2 * EPS, 2 * EPS, generator=torch.Generator().manual_seed(3))
    noisy = (x + noise).clamp(0, 1).requires_grad_(True)
    model.eval()
    (grad,) = torch.autograd.grad(F.cross_entropy(model(noisy), y, reduction="sum"), noisy)
    model.train()
    expected = (noisy.detach() + EPS * grad.sign()).clamp(0, 1)
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-6)
    # Beyond the eps-ball (no projection), within noise + step, inside the image box.
    linf, _ = lp_norms(x_adv - x)
    assert float(linf.max()) > 2 * EPS and float(linf.max()) <= 3 * EPS + 1e-6
    assert float((linf > EPS + 1e-6).float().mean()) > 0.9
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


def test_without_noise_n_fgsm_is_fgsm(tiny_ckpt, batch):
    model = load_checkpoint(tiny_ckpt).model
    x, y = batch
    a = NFGSM("linf", EPS, noise=0.0).perturb(model, x, y, torch.Generator().manual_seed(0))
    assert torch.equal(a, FGSM("linf", EPS).perturb(model, x, y))


def test_n_fgsm_is_refused_as_an_evaluation_attack(tiny_ckpt, tmp_path):
    with pytest.raises(UsageError, match="training-only attack"):
        build_attack(AttackSpec("n-fgsm", Norm.linf, EPS))
    with pytest.raises(UsageError, match="--noise is n-fgsm's"):
        build_attack(AttackSpec("pgd", Norm.linf, EPS, noise=EPS))
    with pytest.raises(UsageError, match="linf"):
        build_training_attack(AttackSpec("n-fgsm", Norm.l2, 0.5))
    assert isinstance(build_training_attack(AttackSpec("n-fgsm", Norm.linf, EPS)), NFGSM)
    assert type(build_training_attack(AttackSpec("pgd", Norm.linf, EPS))) is type(build_attack(
        AttackSpec("pgd", Norm.linf, EPS)))
    out = tmp_path / "adv.safetensors"
    r = runner.invoke(app, ["attack", str(tiny_ckpt), "--attack", "n-fgsm", "--eps", "8/255", "--n", "16", "--out", str(out)])
    assert r.exit_code == 2 and "training-only attack" in r.output and "Traceback" not in r.output, r.output
    assert not out.exists()
    r = runner.invoke(app, ["eval", str(tiny_ckpt), "--attack", "n-fgsm"])  # eval has no attack choice
    assert r.exit_code == 2
    r = runner.invoke(app, ["adv-train", "--eps", "8/255", "--attack", "pgd", "--noise", "16/255",
                            "--epochs", "1", "--n-train", "64", "--out", str(tmp_path / "o.safetensors")])
    assert r.exit_code == 2 and "--noise is n-fgsm's noise box" in r.output, r.output


def test_adv_train_with_n_fgsm_exceeds_eps_in_training_and_never_in_validation(tmp_path, monkeypatch):
    import advcli.train.adversarial as at
    from advcli.data import load_dataset

    trained_on, validated_on = [], []
    real_perturb, real_correct = at.AttackPerturber.perturb, at.robust_correct

    def perturb(self, model, x, y, generator):
        x_adv = real_perturb(self, model, x, y, generator)
        trained_on.append(float(lp_norms(x_adv - x)[0].max()))
        return x_adv

    def correct(model, attack, x, y, generator):
        validated_on.append(float(lp_norms(attack.run(model, x, y, generator).x_adv - x)[0].max()))
        return real_correct(model, attack, x, y, generator)

    monkeypatch.setattr(at.AttackPerturber, "perturb", perturb)
    monkeypatch.setattr(at, "robust_correct", correct)
    data = load_dataset("synthetic", seed=0, val_split=100)
    out = tmp_path / "n.safetensors"
    opts = TrainOptions(arch="tiny-cnn", epochs=1, batch_size=64, lr=0.05, n_train=128, out=str(out))
    threat = ThreatModel(norm=Norm.linf, eps=parse_eps("8/255"), attack="n-fgsm", noise=parse_eps("12/255"))
    res = adv_fit(opts, AdvOptions(threat=threat, val_every=1, val_n=50, val_pgd_steps=2), data, CPU)
    assert len(trained_on) == 2 and min(trained_on) > EPS + 1e-6 and max(trained_on) <= 20 / 255 + 1e-6
    assert validated_on and max(validated_on) <= EPS + 1e-6  # the validation PGD and the overfitting check
    assert "train_batch_pgd_accuracy" in res.history[0].extra  # single-step training: the check is on
    meta = read_metadata(out)["threat_model"]
    assert meta["attack"] == "n-fgsm" and meta["noise"] == pytest.approx(12 / 255)
    assert meta["step_size"] == pytest.approx(EPS) and meta["steps"] == 1
