"""Adversarial training: fraction semantics, BatchNorm during the attack, resume, fine-tuning,
static augmented sets, keep-best and the CLI."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from advcli.attacks import AttackSpec, build_attack
from advcli.cli.app import app
from advcli.config import Norm, parse_eps
from advcli.models import build_model
from advcli.models.checkpoint import load_checkpoint, read_metadata, save_tensors
from advcli.train.adversarial import AdvOptions, AttackPerturber, ThreatModel, adv_fit, static_union
from advcli.train.loop import TrainOptions, batch_loss, fit

CPU = torch.device("cpu")
runner = CliRunner()
EPS = parse_eps("8/255")


def _opts(out, **kw) -> TrainOptions:
    base = dict(arch="tiny-cnn", epochs=2, batch_size=64, lr=0.05, augment="device", n_train=384, out=str(out))
    base.update(kw)
    return TrainOptions(**base)


def _adv(fraction=1.0, steps=2, **kw) -> AdvOptions:
    return AdvOptions(threat=ThreatModel(norm=Norm.linf, eps=EPS, attack="pgd", steps=steps, fraction=fraction), **kw)


def _w(path):
    return load_checkpoint(path).model.state_dict()


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


class Spy:
    """Records what the training loop asks it to perturb; perturbs by a fixed, visible shift."""

    def __init__(self, fraction):
        self.fraction, self.calls = fraction, []

    def perturb(self, model, x, y, generator):
        self.calls.append((x.clone(), y.clone(), model.training))
        return (x + 0.01).clamp(0, 1)


def test_fraction_zero_is_standard_training_bit_for_bit(tmp_path, synthetic_data):
    fit(_opts(tmp_path / "std.safetensors"), synthetic_data, CPU)
    adv_fit(_opts(tmp_path / "f0.safetensors"), _adv(fraction=0.0), synthetic_data, CPU)
    assert _same(_w(tmp_path / "std.safetensors"), _w(tmp_path / "f0.safetensors"))


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.25])
def test_fraction_splits_the_batch_and_weights_the_loss(fraction):
    torch.manual_seed(0)
    model = build_model("tiny-cnn").train()
    x, y = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
    spy = Spy(fraction)
    bl = batch_loss(model, x, y, perturber=spy, generator=None, device=CPU)
    loss, n_clean = bl.loss, bl.n_clean
    n_adv = int(round(fraction * 32))
    assert n_clean == 32 - n_adv
    (xa, ya, _), = spy.calls
    assert torch.equal(xa, x[n_clean:]) and torch.equal(ya, y[n_clean:])  # the LAST f·B examples
    assert model.training  # back in train mode for the update
    # The reference: one batch through the model, loss (1-f)·CE(clean) + f·CE(adv).
    model2 = build_model("tiny-cnn").train()
    model2.load_state_dict(model.state_dict())
    xin = torch.cat([x[:n_clean], (x[n_clean:] + 0.01).clamp(0, 1)])
    ref_logits = model2(xin)
    if n_clean:
        ref = (1 - fraction) * F.cross_entropy(ref_logits[:n_clean], y[:n_clean]) + fraction * F.cross_entropy(ref_logits[n_clean:], y[n_clean:])
    else:
        ref = F.cross_entropy(ref_logits, y)
    assert torch.allclose(loss, ref, atol=1e-6)


def test_attack_runs_in_eval_mode_and_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    model = build_model("tiny-cnn").train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    attack = build_attack(AttackSpec(name="pgd", norm=Norm.linf, eps=EPS, steps=3))
    seen = []
    hook = model.net[1].register_forward_hook(lambda m, i, o: seen.append(m.training))
    x_adv = AttackPerturber(attack, 1.0).perturb(model, torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,)), torch.Generator().manual_seed(0))
    hook.remove()
    assert seen and not any(seen)  # every forward of the attack saw BatchNorm in eval mode
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert x_adv.shape == (16, 3, 32, 32)


def test_fraction_one_attacks_every_example(tmp_path, synthetic_data, monkeypatch):
    import advcli.train.adversarial as at

    seen = []
    real = at.AttackPerturber.perturb

    def spy(self, model, x, y, generator):
        seen.append(len(y))
        return real(self, model, x, y, generator)

    monkeypatch.setattr(at.AttackPerturber, "perturb", spy)
    steps = []
    res = adv_fit(_opts(tmp_path / "f1.safetensors", epochs=1), _adv(fraction=1.0, steps=1), synthetic_data, CPU,
                  step_hooks=[steps.append])
    assert sum(seen) == 384 and seen[0] == 64
    assert [s.n_adv for s in steps] == seen  # the step hook sees each batch's adversarial count
    assert sum(int(s.adv_correct) for s in steps) == round(res.history[0].extra["adv_accuracy"] * 384)
    h = res.history[0].as_dict()
    assert h["adv_accuracy"] == pytest.approx(h["train_accuracy"])  # nothing clean was left
    assert "train_batch_pgd_accuracy" not in h  # the overfitting check is off by default for PGD
    meta = read_metadata(tmp_path / "f1.safetensors")
    assert meta["threat_model"]["fraction"] == 1.0 and meta["threat_model"]["eps_text"] == "8/255"
    # Nothing clean was measured: null in the history file and the checkpoint, never NaN.
    written = yaml.safe_load((tmp_path / "f1.history.yaml").read_text())["history"][0]
    for record in (h, meta["history"][0], written):
        assert record["clean_loss"] is None and record["clean_accuracy"] is None
        assert all(v == v for v in record.values() if isinstance(v, float))  # no NaN anywhere


def test_adv_train_resume_is_bit_identical(tmp_path, synthetic_data):
    from tests.train.test_train import _KillAt  # the same simulated kill as train's test

    full = tmp_path / "full.safetensors"
    adv_fit(_opts(full, epochs=2), _adv(fraction=0.5), synthetic_data, CPU)
    part = tmp_path / "part.safetensors"
    with pytest.raises(KeyboardInterrupt):
        adv_fit(_opts(part, epochs=2), _adv(fraction=0.5), synthetic_data, CPU, reporter=_KillAt(2, 3))
    torch.manual_seed(999)
    adv_fit(_opts(part, epochs=2), _adv(fraction=0.5), synthetic_data, CPU, resume=True)
    assert _same(_w(full), _w(part))


def test_the_overfitting_check_remembers_earlier_epochs_through_the_history(synthetic_data, monkeypatch):
    """The check compares with the best PGD accuracy of earlier epochs: it reads them from the
    history (which --resume restores), so a resumed run still sees a collapse. Accuracies are
    faked: PGD 10/256, FGSM 200/256 on the fixed training batch."""
    import advcli.train.adversarial as at
    from advcli.train.loop import EpochEnd, EpochStats, StopTraining

    monkeypatch.setattr(at, "robust_correct", lambda model, attack, x, y, g: torch.tensor(
        10 if attack.name == "pgd" else 200))
    hook = at._overfit_hook(_adv().threat, synthetic_data, CPU, at.OnOverfit.stop, at.NullReporter(), seed=0)
    model = build_model("tiny-cnn", 10)
    now = EpochStats(epoch=3, lr=0.1, train_loss=1.0, train_accuracy=0.5)
    # No earlier robust epoch (a fresh run): nothing collapsed.
    assert hook(EpochEnd(model, model, now, history=[]))["train_batch_pgd_accuracy"] == 10 / 256
    earlier = [EpochStats(epoch=e, lr=0.1, train_loss=1.0, train_accuracy=0.5,
                          extra={"train_batch_pgd_accuracy": a}) for e, a in ((1, 0.3), (2, 0.6))]
    with pytest.raises(StopTraining, match="catastrophic overfitting at epoch 3.*best 60.0%"):
        hook(EpochEnd(model, model, now, history=earlier))


def test_init_from_starts_from_the_given_weights(tmp_path, synthetic_data, tiny_ckpt):
    out = tmp_path / "ft.safetensors"
    adv_fit(_opts(out, epochs=1, lr=1e-12, momentum=0.0, weight_decay=0.0, init_from=str(tiny_ckpt)), _adv(steps=1), synthetic_data, CPU)
    parent, child = _w(tiny_ckpt), _w(out)
    for k, v in parent.items():
        if v.is_floating_point() and "running" not in k:
            assert torch.allclose(v, child[k], atol=1e-6), k
    assert read_metadata(out)["parent_sha256"] == load_checkpoint(tiny_ckpt).sha256


def test_static_adv_data_mixes_one_to_one(tmp_path, synthetic_data):
    idx = torch.arange(10, 74)
    path = _static_set(tmp_path, synthetic_data, idx)
    x_adv = synthetic_data.train_x[idx].float() / 255 * 0.5
    x, y, _ = static_union(synthetic_data, path)
    assert len(y) == 128
    assert torch.equal(x[:64], synthetic_data.train_x[idx].float() / 255) and torch.equal(x[64:], x_adv)
    assert torch.equal(y[:64], y[64:])
    out = tmp_path / "static.safetensors"
    res = adv_fit(_opts(out, epochs=1, n_train=None), AdvOptions(threat=ThreatModel(), adv_data=str(path)), synthetic_data, CPU)
    assert res.history and read_metadata(out)["threat_model"]["attack"] == "static:fgsm"
    bad = save_tensors(tmp_path / "test.safetensors", {"x_adv": x_adv, "y": synthetic_data.train_y[idx], "index": idx},
                       {"schema": "advcli.advset/1", "data": {"split": "test"}})
    r = runner.invoke(app, ["adv-train", "--adv-data", str(bad), "--out", str(tmp_path / "o.safetensors")])
    assert r.exit_code == 2 and "--split train" in r.output


def test_keep_best_needs_a_validation_split_and_uses_it(tmp_path):
    from advcli.data import load_dataset

    r = runner.invoke(app, ["adv-train", "--eps", "8/255", "--keep", "best", "--val-every", "1", "--out", str(tmp_path / "x.safetensors")])
    assert r.exit_code == 2 and "--val-split" in r.output
    data = load_dataset("synthetic", seed=0, val_split=200)
    res = adv_fit(_opts(tmp_path / "best.safetensors", epochs=2),
                  _adv(steps=1, val_every=1, val_n=100, keep="best", on_overfit="warn"), data, CPU)
    scores = [h.extra["val_robust_accuracy"] for h in res.history]
    assert len(scores) == 2 and all(0 <= s <= 1 for s in scores)
    assert any("kept epoch" in n for n in res.notes)
    # --on-overfit given explicitly runs the check for PGD training too (it used to be ignored).
    assert all("train_batch_pgd_accuracy" in h.extra for h in res.history)


def test_cli_adv_train_errors(tmp_path):
    for args, msg in [
        (["--eps", "8/0"], "divides by zero"),
        (["--eps", "-1"], "eps"),
        (["--eps", "8/255", "--attack", "cw"], "valid values: pgd, fgsm, fgsm-rs"),
        (["--eps", "8/255", "--fraction", "1.5"], "between 0 and 1"),
        (["--eps", "8/255", "--keep", "sometimes"], "valid values: last, best"),
        (["--eps", "8/255", "--on-overfit", "maybe"], "valid values: warn, stop, off"),
        ([], "needs --eps"),
    ]:
        r = runner.invoke(app, ["adv-train", *args, "--out", str(tmp_path / "o.safetensors"), "--epochs", "1", "--n-train", "64"])
        assert r.exit_code in (1, 2), (args, r.output)
        assert msg in r.output and "Traceback" not in r.output, (args, r.output)
    assert not (tmp_path / "o.safetensors").exists()


def test_validation_pgd_runs_in_fp32_under_bf16_amp(tmp_path, monkeypatch):
    """--keep best picks the epoch by the validation PGD: a bf16 attack is weaker, so it runs in
    fp32; the training attack keeps the AMP precision. Observed as the dtype of the logits the
    model returns while each attack runs."""
    import advcli.train.adversarial as at
    from advcli.data import load_dataset

    seen: dict[int, set] = {}
    real = {"build_attack": at.build_attack, "build_training_attack": at.build_training_attack}

    def build(spec, how="build_attack"):
        attack = real[how](spec)

        def watched(method):
            def spy(model, x, y, generator=None):
                h = model.register_forward_hook(lambda m, i, o: seen.setdefault(spec.steps, set()).add(o.dtype))
                try:
                    return method(model, x, y, generator)
                finally:
                    h.remove()

            return spy

        attack.perturb, attack.run = watched(attack.perturb), watched(attack.run)
        return attack

    monkeypatch.setattr(at, "build_attack", build)
    monkeypatch.setattr(at, "build_training_attack", lambda spec: build(spec, "build_training_attack"))
    data = load_dataset("synthetic", seed=0, val_split=100)
    adv_fit(_opts(tmp_path / "bf16.safetensors", epochs=1, n_train=128, amp="bf16"),
            _adv(steps=1, val_every=1, val_n=50, val_pgd_steps=3, keep="best"), data, CPU)
    assert seen[1] == {torch.bfloat16}  # the training attack (1 step)
    assert seen[3] == {torch.float32}  # the validation PGD (3 steps)


def _static_set(tmp_path, synthetic_data, idx):
    x_adv = (synthetic_data.train_x[idx].float() / 255 * 0.5).contiguous()
    return save_tensors(
        tmp_path / "adv.safetensors",
        {"x_adv": x_adv, "y": synthetic_data.train_y[idx], "index": idx},
        {"schema": "advcli.advset/1", "data": {"split": "train", "dataset": "synthetic"},
         "attack": {"name": "fgsm", "norm": "linf", "eps": 8 / 255}},
    )


def test_n_train_on_a_static_set_keeps_clean_adversarial_pairs(tmp_path, synthetic_data, monkeypatch):
    import advcli.train.loop as train_mod

    path = _static_set(tmp_path, synthetic_data, torch.arange(100, 300))
    seen = []
    real = train_mod.train_batches

    def spy(x, y, **kw):
        seen.append((x.clone(), y.clone()))
        return real(x, y, **kw)

    monkeypatch.setattr(train_mod, "train_batches", spy)
    adv_fit(_opts(tmp_path / "s.safetensors", epochs=1, n_train=20, augment="none"),
            AdvOptions(adv_data=str(path)), synthetic_data, CPU)
    x, y = seen[0]
    assert len(y) == 40  # 20 pairs, not 20 images
    # Each adversarial image (second half) is its clean partner (first half) at half brightness.
    assert torch.equal(y[:20], y[20:]) and torch.allclose(x[20:], x[:20] * 0.5)
    assert torch.bincount(y[:20], minlength=10).tolist() == [2] * 10  # class-balanced pairs


@pytest.mark.parametrize("extra", [
    ["--val-split", "100", "--val-every", "1"],
    ["--val-split", "100", "--val-every", "1", "--keep", "best"],
    ["--on-overfit", "stop"],
    ["--attack", "fgsm"],
    ["--eps", "8/255"],
])
def test_static_set_rejects_online_only_options(tmp_path, synthetic_data, extra):
    path = _static_set(tmp_path, synthetic_data, torch.arange(10, 74))
    out = tmp_path / "o.safetensors"
    r = runner.invoke(app, ["adv-train", "--adv-data", str(path), "--epochs", "1", "--n-train", "32",
                            "--out", str(out), *extra])
    assert r.exit_code == 2, r.output
    assert "--adv-data trains on a fixed set" in r.output and extra[-2] in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_robust_correct_is_an_evaluation(tiny_ckpt, synthetic_data):
    """The validation and overfitting checks count an example as robust only if it is correct
    clean and at every PGD iterate, in eval mode, leaving BatchNorm's statistics alone."""
    from advcli.data import to_float
    from advcli.train.adversarial import robust_correct

    model = load_checkpoint(tiny_ckpt).model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = to_float(synthetic_data.test_x[:64]), synthetic_data.test_y[:64].clone()
    y[::4] = (y[::4] + 1) % 10  # wrong labels: these can never count as robust
    tiny = build_attack(AttackSpec(name="pgd", norm=Norm.linf, eps=parse_eps("1/1000"), steps=2, keep="first-success"))
    n = int(robust_correct(model, tiny, x, y, torch.Generator().manual_seed(0)))
    assert model.training and _same(before, model.state_dict())  # mode restored, running stats untouched
    with torch.no_grad():
        clean = model.eval()(x).argmax(1) == y
    # An eps of 1/1000 barely moves the tiny model: robust = clean-correct, and never more.
    assert 0 < n <= int(clean.sum()) <= 48 and n >= int(clean.sum()) - 2
