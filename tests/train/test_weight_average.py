"""--ema: the running average of the weights and BatchNorm statistics, what it is used for (test
and validation accuracy, --keep best, the checkpoint that eval loads) and what it is not (the
catastrophic-overfitting check). Its resume is in tests/train/test_train_resume.py."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from advcli.cli.app import app
from advcli.formats.tensorfile import load_tensors
from advcli.models import build_model
from advcli.models.checkpoint import load_checkpoint, read_metadata
from advcli.train.loop import EpochEnd, TrainOptions, evaluate_accuracy, fit
from advcli.train.state import state_path_for
from advcli.train.weight_average import WeightAverage

CPU = torch.device("cpu")
runner = CliRunner()


def _opts(out, **kw) -> TrainOptions:
    base = dict(arch="tiny-cnn", epochs=2, batch_size=64, lr=0.05, augment="none", n_train=256, out=str(out), ema=0.9)
    base.update(kw)
    return TrainOptions(**base)


def test_the_average_follows_the_warmed_up_decay_for_weights_and_buffers():
    torch.manual_seed(0)
    model = build_model("tiny-cnn", 10)
    avg = WeightAverage(model, decay=0.5)
    assert not avg.model.training and not any(p.requires_grad for p in avg.model.parameters())
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()(torch.rand(8, 3, 32, 32))  # moves BatchNorm's running statistics
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    w1 = {k: v.clone() for k, v in model.state_dict().items()}
    avg.update(model)  # update 1: decay min(0.5, 1/10) = 0.1
    avg.update(model)  # update 2: decay min(0.5, 2/11)
    got = avg.model.state_dict()
    mean_key = "net.1.running_mean"
    for key in ("net.0.weight", mean_key, "net.1.running_var", "net.9.bias"):
        once = 0.1 * w0[key] + 0.9 * w1[key]
        expected = 2 / 11 * once + 9 / 11 * w1[key]
        torch.testing.assert_close(got[key], expected, rtol=0, atol=1e-6)
    assert not torch.equal(w0[mean_key], w1[mean_key])  # the buffers really moved
    assert int(got["net.1.num_batches_tracked"]) == int(w1["net.1.num_batches_tracked"]) == 1  # copied
    assert avg.decay_at(1000) == 0.5 and avg.updates == 2


def test_the_checkpoint_holds_the_average_which_is_what_was_measured(tmp_path, synthetic_data):
    out = tmp_path / "ema.safetensors"
    seen: list[EpochEnd] = []

    def hook(end: EpochEnd) -> dict[str, float]:
        seen.append(end)
        return {}

    res = fit(_opts(out), synthetic_data, CPU, epoch_hooks=[hook])
    state, meta = load_tensors(state_path_for(out))
    ckpt = load_checkpoint(out).model.state_dict()
    # The checkpoint's weights are the state's average, not the raw weights the optimizer trained.
    assert all(torch.equal(ckpt[k], state[f"ema.{k}"]) for k in ckpt)
    assert not all(torch.equal(ckpt[k], state[f"model.{k}"]) for k in ckpt)
    assert read_metadata(out)["weight_average"] == {"decay": 0.9, "updates": 8} and meta["ema_updates"] == 8
    # Hooks see the average as `model` and the raw weights as `raw`.
    assert all(end.model is not end.raw for end in seen)
    assert all(not end.model.training and not any(p.requires_grad for p in end.model.parameters()) for end in seen)
    # The test accuracy recorded is the average's: what eval measures on the checkpoint.
    loaded = load_checkpoint(out).model
    assert res.history[-1].test_accuracy == evaluate_accuracy(loaded, synthetic_data.test_x, synthetic_data.test_y, CPU)


def test_keep_best_keeps_the_average_of_the_best_epoch(tmp_path, synthetic_data):
    out = tmp_path / "best.safetensors"
    averages = []

    def score(end: EpochEnd) -> dict[str, float]:
        averages.append({k: v.clone() for k, v in end.model.state_dict().items()})
        return {"score": 1.0 if end.stats.epoch == 1 else 0.5}  # epoch 1 is the best

    res = fit(_opts(out), synthetic_data, CPU, epoch_hooks=[score], keep_best="score")
    ckpt = load_checkpoint(out).model.state_dict()
    assert any("kept epoch 1" in n for n in res.notes)
    assert all(torch.equal(ckpt[k], averages[0][k]) for k in ckpt)
    assert not all(torch.equal(ckpt[k], averages[1][k]) for k in ckpt)


def test_validation_attacks_the_average_and_the_overfitting_check_the_raw_weights(synthetic_data, monkeypatch):
    import advcli.train.adversarial as at
    from advcli.config import Norm, parse_eps
    from advcli.data import load_dataset
    from advcli.train.state import EpochStats

    attacked: dict[str, set[int]] = {}
    monkeypatch.setattr(at, "robust_correct", lambda model, attack, x, y, g: (
        attacked.setdefault(attack.name, set()).add(id(model)), torch.tensor(0))[1])
    threat = at.ThreatModel(norm=Norm.linf, eps=parse_eps("8/255"), attack="fgsm-rs")
    data = load_dataset("synthetic", seed=0, val_split=100)
    val = at._val_hook(threat, data, CPU, every=1, steps=2, n=50, seed=0)
    overfit = at._overfit_hook(threat, data, CPU, at.OnOverfit.warn, at.NullReporter(), seed=0)
    average, raw = build_model("tiny-cnn", 10), build_model("tiny-cnn", 10)
    end = EpochEnd(average, raw, EpochStats(epoch=1, lr=0.1, train_loss=1.0, train_accuracy=0.5), history=[])
    attacked.clear()
    val(end)
    assert attacked == {"pgd": {id(average)}}
    attacked.clear()
    overfit(end)
    assert attacked == {"pgd": {id(raw)}, "fgsm": {id(raw)}}


def test_ema_values_and_resume_mismatch(tmp_path):
    out = tmp_path / "o.safetensors"
    for bad in ("1.0", "0", "1.5"):
        r = runner.invoke(app, ["train", "--ema", bad, "--out", str(out)])
        assert r.exit_code == 2 and "--ema must be a decay between 0 and 1" in r.output, r.output
    assert not out.exists()
    base = ["train", "--epochs", "1", "--n-train", "128", "--device", "cpu", "-q", "--out", str(out)]
    assert runner.invoke(app, [*base, "--ema", "0.9"]).exit_code == 0
    r = runner.invoke(app, [*base, "--resume"])
    assert r.exit_code == 2 and "--ema 0.9" in r.output and "None" in r.output, r.output


@pytest.mark.parametrize("decay", [0.5, 0.99])
def test_decay_warm_up_is_monotone_and_capped(decay):
    avg = WeightAverage(torch.nn.Linear(2, 2), decay)
    ds = [avg.decay_at(t) for t in range(1, 2000)]
    assert ds[0] == pytest.approx(0.1 if decay > 0.1 else decay)
    assert all(a <= b for a, b in zip(ds, ds[1:], strict=False)) and max(ds) == decay
