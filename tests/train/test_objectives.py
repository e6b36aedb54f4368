"""adv-train's objectives pinned to their definitions: TRADES and MART losses and gradients
against plain per-example implementations of the papers' formulas (with the reference codes'
stabilisers, train/objectives.py), TRADES' inner attack, MART's strongest wrong class, AWP
(relative size, restoration, the update's gradient, gamma = 0 bit for bit, resume), the
refused combinations and what checkpoints record."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from advcli.attacks.trades import TradesKL, kl_to_clean
from advcli.cli.app import app
from advcli.config import Augment, Norm, parse_eps
from advcli.data.loaders import train_batches
from advcli.formats.results import trained_with_text
from advcli.models.checkpoint import load_checkpoint, read_metadata
from advcli.train import adversarial as adv_train
from advcli.train import objectives
from advcli.train.adversarial import AdvOptions, ThreatModel, adv_fit
from advcli.train.loop import TrainOptions, model_forward, setup
from advcli.train.objectives import AWP, ObjectiveOptions, mart_loss, strongest_wrong_class, trades_loss

CPU = torch.device("cpu")
runner = CliRunner()
EPS = parse_eps("8/255")


def _net(seed: int = 0) -> nn.Module:
    """A small fixed network with BatchNorm (the outer losses run it in train mode)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 7 * 7, 10)).train()


def _batch(seed: int = 1, n: int = 12):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g)
    x_adv = (x + (torch.rand(x.shape, generator=g) - 0.5) * 0.06).clamp(0, 1)
    return x, x_adv, torch.randint(0, 10, (n,), generator=g)


def _grads(model, loss):
    return torch.autograd.grad(loss, list(model.parameters()))


def _assert_loss_and_grads(model, ours, plain):
    assert torch.allclose(ours, plain, rtol=0, atol=1e-6), (float(ours), float(plain))
    for a, b in zip(_grads(model, ours), _grads(model, plain), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), float((a - b).abs().max())


def _softmax_rows(logits):
    """exp(z_c) / Σ exp(z_j), example by example (the papers' p)."""
    return [torch.exp(z - z.max()) / torch.exp(z - z.max()).sum() for z in logits]


def test_trades_loss_and_gradient_match_the_paper_formula():
    model, (x, x_adv, y) = _net(), _batch()
    beta = 6.0
    ours = trades_loss(model_forward(model, CPU), x, x_adv, y, 0, beta=beta)
    # Plain: (1/B) Σ_i [ −log p_{y_i}(x_i) + β Σ_c p_c(x_i) (log p_c(x_i) − log p_c(x′_i)) ].
    p, q = _softmax_rows(model(x)), _softmax_rows(model(x_adv))
    terms = []
    for i in range(len(y)):
        ce = -torch.log(p[i][y[i]])
        kl = sum(p[i][c] * (torch.log(p[i][c]) - torch.log(q[i][c])) for c in range(10))
        terms.append(ce + beta * kl)
    plain = sum(terms) / len(y)
    _assert_loss_and_grads(model, ours.loss, plain)
    assert ours.terms["kl"] > 0 and ours.n_clean == len(y) and len(ours.labels) == 2 * len(y)


def test_mart_loss_and_gradient_match_the_paper_formula():
    model, (x, x_adv, y) = _net(2), _batch(3)
    beta = 6.0
    ours = mart_loss(model_forward(model, CPU), x, x_adv, y, 0, beta=beta)
    # Plain: (1/B) Σ_i [ −log p′_{y_i} − log(1.0001 − max_{k≠y_i} p′_k + 1e-12)
    #                    + β Σ_c p_c (log p_c − log(p′_c + 1e-12)) · (1.0000001 − p_{y_i}) ].
    p, q = _softmax_rows(model(x)), _softmax_rows(model(x_adv))
    terms = []
    for i in range(len(y)):
        yi = int(y[i])
        wrong = max((c for c in range(10) if c != yi), key=lambda c: float(q[i][c].detach()))
        boosted = -torch.log(q[i][yi]) - torch.log(1.0001 - q[i][wrong] + 1e-12)
        kl = sum(p[i][c] * (torch.log(p[i][c]) - torch.log(q[i][c] + 1e-12)) for c in range(10))
        terms.append(boosted + beta * kl * (1.0000001 - p[i][yi]))
    plain = sum(terms) / len(y)
    _assert_loss_and_grads(model, ours.loss, plain)


@pytest.mark.parametrize("loss_fn", [trades_loss, mart_loss], ids=["trades", "mart"])
def test_losses_keep_finite_gradients_where_a_clean_probability_underflows_to_zero(loss_fn):
    # Clean logits 120 apart: in fp32 the softmax of the lowest class is exactly 0, the state the
    # quick recipe's MART reached in its first epoch. F.kl_div(log q, p) with p carrying a
    # gradient returns a NaN gradient there (xlogy's backward, 0/0).
    z = torch.tensor([[60.0, 0, 0, 0, 0, 0, 0, 0, 0, -60.0],
                      [1.0, 2.0, 0, 0, 0, 0, 0, 0, 0, 0]], requires_grad=True)
    z_adv = torch.tensor([[50.0, 0, 0, 0, 0, 0, 0, 0, 0, -50.0],
                          [0.0, 1.0, 2.0, 0, 0, 0, 0, 0, 0, 0]], requires_grad=True)
    assert float(torch.softmax(z.detach(), 1)[0, 9]) == 0.0  # the premise: an exact zero
    x, x_adv, y = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4), torch.tensor([0, 1])
    bl = loss_fn(lambda t: z if t is x else z_adv, x, x_adv, y, 0, beta=6.0)
    grads = torch.autograd.grad(bl.loss, [z, z_adv])
    assert torch.isfinite(bl.loss) and all(torch.isfinite(g).all() for g in grads)
    # Example 0's KL: p is (1, 0, ..., 0) to fp32 precision, p′ likewise: KL ≈ 0; the value
    # matches a float64 evaluation of the formula.
    z64, z_adv64 = z.detach().double(), z_adv.detach().double()
    p64, q64 = torch.softmax(z64, 1), torch.softmax(z_adv64, 1)
    kl64 = (p64 * (torch.log_softmax(z64, 1) - torch.log_softmax(z_adv64, 1))).sum(1)
    if loss_fn is trades_loss:
        assert float(bl.terms["kl"].detach()) == pytest.approx(float(kl64.sum()), rel=1e-5)
    assert q64[0, 0] > 0.999


def test_mart_boosts_the_strongest_wrong_class_not_a_fixed_one():
    # Example 0: the label (3) is the top class, the strongest wrong class is 5 (not 0, not 9,
    # not the top-1). Example 1: a wrong class (7) is the top class and is the one boosted.
    clean = torch.zeros(2, 10)
    adv = torch.tensor([[1.0, 0, 0, 4.0, 0, 2.5, 0, 0, 0, 1.5],
                        [2.0, 0, 0, 0, 0, 1.0, 0, 3.0, 0, 2.5]])
    y = torch.tensor([3, 3])
    assert strongest_wrong_class(torch.softmax(adv, 1), y).tolist() == [5, 7]
    x, x_adv = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)

    def forward(t):
        return clean if t is x else adv

    loss = mart_loss(forward, x, x_adv, y, 0, beta=0.0).loss
    q = torch.softmax(adv, 1)

    def with_class(k):
        return float(torch.nn.functional.cross_entropy(adv, y)
                     - torch.log(1.0001 - q[torch.arange(2), torch.tensor(k)] + 1e-12).mean())

    assert float(loss) == pytest.approx(with_class([5, 7]), abs=1e-6)
    for other in ([0, 0], [9, 9], [3, 7]):
        assert float(loss) != pytest.approx(with_class(other), abs=1e-4)


class _Linear(nn.Module):
    """logits = W·x: KL(p(x) ‖ p(x′)) is convex in x′ with its minimum at x, so each signed
    ascent step that no projection cuts raises it (first-order condition of convexity)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.w = nn.Linear(3 * 8 * 8, 10, bias=False)

    def forward(self, x):
        return self.w(x.flatten(1))


def _kl(model, x, x_adv):
    with torch.no_grad():
        return float(kl_to_clean(model(x_adv), model(x)).sum())


def test_trades_attack_raises_the_kl_step_by_step():
    model = _Linear()
    x = 0.25 + 0.5 * torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    kls = []
    for steps in range(5):  # 4 steps of eps/8 stay inside the ball: no projection cuts a step
        attack = TradesKL(Norm.linf, EPS.value, steps=max(steps, 1), step_size=EPS.value / 8 if steps else 0.0)
        kls.append(_kl(model, x, attack.perturb(model, x, torch.zeros(16, dtype=torch.long),
                                                torch.Generator().manual_seed(1))))
    assert kls[0] > 0  # the 0.001·N(0, 1) start
    assert all(b > a for a, b in zip(kls, kls[1:], strict=False)), kls


@pytest.mark.parametrize("norm, eps", [(Norm.linf, EPS.value), (Norm.l2, 0.5)])
def test_trades_attack_stays_in_the_ball_and_the_box_in_eval_mode(norm, eps):
    model = _net()
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    x[:, 0, :4] = 0.0  # saturated pixels: the box binds there
    x[:, 1, :4] = 1.0
    stats = [b.clone() for b in model.buffers()]
    x_adv = TradesKL(norm, eps, steps=3, step_size=eps).perturb(model, x, torch.zeros(8, dtype=torch.long),
                                                               torch.Generator().manual_seed(3))
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm is Norm.linf else delta.norm(dim=1)
    assert float(size.max()) <= eps * (1 + 1e-5)
    assert float(size.max()) > 0.5 * eps
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert model.training  # restored
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers(), strict=True))  # BN frozen


def test_awp_perturbs_each_layer_by_gamma_along_the_gradient_and_restores_it():
    model, (x, x_adv, y) = _net(), _batch()
    forward = model_forward(model, CPU)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def loss_at():
        return trades_loss(forward, x, x_adv, y, 0, beta=6.0).loss

    grads = dict(zip([n for n, _ in model.named_parameters()], _grads(model, loss_at()), strict=True))
    model.load_state_dict(before)  # the gradient pass above moved the BatchNorm statistics
    gamma = 0.01
    with AWP(gamma, 0).around(model, loss_at):
        for name, w in model.named_parameters():
            v = w.detach() - before[name]
            if w.ndim > 1:  # conv and linear weights: relative size gamma, along the gradient
                assert float(v.norm() / before[name].norm()) == pytest.approx(gamma, rel=1e-4)
                cos = torch.nn.functional.cosine_similarity(v.flatten(), grads[name].flatten(), dim=0)
                assert float(cos) == pytest.approx(1.0, abs=1e-5)
            else:  # biases and BatchNorm: untouched
                assert torch.equal(w.detach(), before[name])
        for name, b in model.named_buffers():  # the ascent's train-mode passes left no trace
            assert torch.equal(b, before[name])
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)  # bit for bit


def _plain_k_step_awp(model, loss_at, gamma, steps):
    """The paper's multi-step AWP written out: v_l <- proj(v_l + gamma·||w_l||·g_l/||g_l||), g at w + v."""
    names = [n for n, p in model.named_parameters() if p.ndim > 1]
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    v = {n: torch.zeros_like(w0[n]) for n in names}
    for _ in range(steps):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in names:
                    p.copy_(w0[n] + v[n])
        params = dict(model.named_parameters())
        g = dict(zip(names, torch.autograd.grad(loss_at(), [params[n] for n in names]), strict=True))
        for n in names:
            radius = gamma * w0[n].norm()
            step = v[n] + radius * g[n] / g[n].norm()
            v[n] = step * min(1.0, float(radius / step.norm()))
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(w0[n])
    return [v[n] for n in names]


@pytest.mark.parametrize("steps", [1, 3])
def test_k_step_awp_is_the_papers_projected_ascent(steps):
    model, (x, x_adv, y) = _net(), _batch()
    forward = model_forward(model, CPU)

    def loss_at():
        return trades_loss(forward, x, x_adv, y, 0, beta=6.0).loss

    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = _plain_k_step_awp(model, loss_at, 0.05, steps)
    ours = AWP(0.05, 0, steps).perturbation(model, loss_at)
    assert all(torch.equal(w, before[n]) for n, w in model.named_parameters())  # weights back, bit for bit
    for a, b in zip(ours, plain, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), float((a - b).abs().max())
    layers = [before[n] for n, p in model.named_parameters() if p.ndim > 1]
    for v, w in zip(ours, layers, strict=True):
        assert float(v.norm()) <= 0.05 * float(w.norm()) * (1 + 1e-5)  # inside each layer's ball
    if steps > 1:  # the later steps moved v: it is not the one-step perturbation
        one = AWP(0.05, 0, 1).perturbation(model, loss_at)
        assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(ours, one, strict=True))


def test_awp_steps_are_recorded_and_named(tmp_path, synthetic_data):
    adv_fit(_opts(tmp_path / "k.safetensors", epochs=1), _adv("pgd-at", awp=0.01, awp_warmup=0, awp_steps=2),
            synthetic_data, CPU)
    meta = read_metadata(tmp_path / "k.safetensors")["threat_model"]
    assert (meta["awp_gamma"], meta["awp_steps"]) == (0.01, 2)
    assert trained_with_text(meta) == "pgd + awp gamma=0.01 steps=2"
    adv_fit(_opts(tmp_path / "one.safetensors", epochs=1), _adv("pgd-at", awp=0.01, awp_warmup=0),
            synthetic_data, CPU)
    assert "awp_steps" not in read_metadata(tmp_path / "one.safetensors")["threat_model"]  # as before the option


def test_awp_update_is_the_gradient_at_the_perturbed_weights(tmp_path, synthetic_data):
    """One plain-SGD step of the loop with AWP = w − lr · ∇L(w + v), v from ∇L(w)."""
    opts = TrainOptions(arch="tiny-cnn", epochs=1, batch_size=64, n_train=64, lr=0.1, momentum=0.0,
                        weight_decay=0.0, schedule="constant", augment="none", out=str(tmp_path / "a.safetensors"))
    s = setup(opts, synthetic_data, CPU)
    (xb, yb), = list(train_batches(s.x, s.y, augment=Augment.none, batch_size=64, workers=0, seed=0, epoch=0,
                                   device=CPU, rank=0, world_size=1))
    model = s.model.train()
    w0 = {k: v.clone() for k, v in model.state_dict().items()}

    def loss():
        return torch.nn.functional.cross_entropy(model(xb), yb)

    gamma = 0.05
    layers = [n for n, p in model.named_parameters() if p.ndim > 1]
    g0 = dict(zip([n for n, _ in model.named_parameters()], _grads(model, loss()), strict=True))
    model.load_state_dict(w0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in layers:
                p.add_(gamma * w0[n].norm() / g0[n].norm() * g0[n])
    g1 = dict(zip([n for n, _ in model.named_parameters()], _grads(model, loss()), strict=True))
    adv = AdvOptions(threat=ThreatModel(norm=Norm.linf, eps=EPS, attack="pgd", steps=1, fraction=0.0),
                     objective=ObjectiveOptions(awp=gamma, awp_warmup=0))
    adv_fit(opts, adv, synthetic_data, CPU)
    trained = load_checkpoint(opts.out).model.state_dict()
    for n in g1:
        assert torch.allclose(trained[n], w0[n] - 0.1 * g1[n], rtol=0, atol=1e-6), n


def _opts(out, **kw):
    base = dict(arch="tiny-cnn", epochs=2, batch_size=64, lr=0.05, augment="device", n_train=192, out=str(out))
    return TrainOptions(**{**base, **kw})


def _adv(objective="trades", **kw):
    return AdvOptions(threat=ThreatModel(norm=Norm.linf, eps=EPS, attack="pgd", steps=1, fraction=1.0),
                      objective=ObjectiveOptions(objective=objective, **kw))


def test_awp_with_gamma_zero_is_the_run_without_awp_bit_for_bit(tmp_path, synthetic_data, monkeypatch):
    adv_fit(_opts(tmp_path / "plain.safetensors"), _adv(), synthetic_data, CPU)
    real, entered = objectives.resolve_objective, []

    def zero_awp(*args, **kw):
        resolved = real(*args, **kw)
        resolved.awp = AWP(0.0, 0)
        return resolved

    real_around = AWP.around

    def spy(self, model, loss_at):
        entered.append(1)
        return real_around(self, model, loss_at)

    monkeypatch.setattr(adv_train, "resolve_objective", zero_awp)
    monkeypatch.setattr(AWP, "around", spy)
    adv_fit(_opts(tmp_path / "zero.safetensors"), _adv(), synthetic_data, CPU)
    assert len(entered) == 6  # every step of both epochs went through AWP
    a, b = (load_checkpoint(tmp_path / n).model.state_dict() for n in ("plain.safetensors", "zero.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = (read_metadata(tmp_path / n)["history"] for n in ("plain.safetensors", "zero.safetensors"))
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in ha] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in hb]
    assert all(h["train_kl"] > 0 and "clean_accuracy" in h and "adv_accuracy" in h for h in ha)


def test_awp_changes_training_and_starts_after_its_warmup(tmp_path, synthetic_data, monkeypatch):
    seen, real_around = [], AWP.around

    def spy(self, model, loss_at):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return real_around(self, model, loss_at)

    monkeypatch.setattr(AWP, "around", spy)
    adv_fit(_opts(tmp_path / "awp.safetensors"), _adv("mart", awp=0.02, awp_warmup=1), synthetic_data, CPU)
    assert len(seen) == 3  # epoch 2 only
    adv_fit(_opts(tmp_path / "mart.safetensors"), _adv("mart"), synthetic_data, CPU)
    a, b = (load_checkpoint(tmp_path / n).model.state_dict() for n in ("awp.safetensors", "mart.safetensors"))
    assert not all(torch.equal(a[k], b[k]) for k in a)
    meta = read_metadata(tmp_path / "awp.safetensors")["threat_model"]
    assert (meta["objective"], meta["beta"], meta["awp_gamma"], meta["awp_warmup"]) == ("mart", 6.0, 0.02, 1)
    assert trained_with_text(meta) == "mart beta=6 + awp gamma=0.02"
    assert read_metadata(tmp_path / "mart.safetensors")["threat_model"]["awp_gamma"] == 0.0


def test_checkpoints_record_the_objective(tmp_path, synthetic_data):
    adv_fit(_opts(tmp_path / "t.safetensors", epochs=1), _adv(beta=3.0), synthetic_data, CPU)
    meta = read_metadata(tmp_path / "t.safetensors")["threat_model"]
    assert (meta["objective"], meta["beta"], meta["awp_gamma"], meta["attack"]) == ("trades", 3.0, 0.0, "trades-kl")
    assert trained_with_text(meta) == "trades beta=3"
    # PGD-AT without AWP writes what checkpoints always held (absent = pgd-at).
    plain = {"attack": "pgd", "eps": 0.03}
    assert trained_with_text(plain) == "pgd"
    assert trained_with_text({**plain, "objective": "pgd-at", "awp_gamma": 0.01}) == "pgd + awp gamma=0.01"
    history = read_metadata(tmp_path / "t.safetensors")["history"]
    assert math.isfinite(history[0]["train_kl"]) and math.isfinite(history[0]["train_objective"])


def test_resume_inside_an_awp_epoch_is_bit_identical(tmp_path, tmp_path_factory):
    from tests.train.test_train_resume import STOP_AFTER_STEP_ENV, _assert_same_run, _position, _reference, _run

    extra = ("--objective", "trades", "--fraction", "1", "--awp", "0.01", "--awp-warmup", "1", "--save-every", "3")
    out = tmp_path / "m.safetensors"
    killed = _run("adv-train", out, *extra, "--resume", env={STOP_AFTER_STEP_ENV: "14"})
    assert killed.exit_code == 130, killed.output
    assert (_position(out)["epoch"], _position(out)["batches"]) == (1, 2)  # inside epoch 2, where AWP runs
    torch.manual_seed(4321)
    done = _run("adv-train", out, *extra, "--resume")
    assert done.exit_code == 0, done.output
    _assert_same_run(_reference(tmp_path_factory, "adv-train", *extra), out)
    # A resume with another gamma would continue weights no single run produces: refused.
    other = _run("adv-train", out, *extra[:5], "0.02", *extra[6:], "--resume")
    assert other.exit_code == 2 and "awp_gamma" in other.output.replace("-", "_"), other.output


@pytest.mark.parametrize("args, msg", [
    (["--beta", "3"], "pgd-at has none"),
    (["--objective", "trades", "--fraction", "0.5"], "drop --fraction"),
    (["--objective", "mart", "--fraction", "0.5"], "drop --fraction"),
    (["--objective", "trades", "--attack", "fgsm-rs"], "own inner attack"),
    (["--objective", "trades", "--label-smoothing", "0.1"], "plain cross-entropy"),
    (["--objective", "mart", "--beta", "-1"], "--beta must be >= 0"),
    (["--awp-warmup", "3"], "give --awp GAMMA"),
    (["--awp-steps", "3"], "give --awp GAMMA"),
    (["--objective", "dro"], "valid values: pgd-at, trades, mart"),
])
def test_invalid_combinations_are_refused(tmp_path, args, msg):
    out = tmp_path / "o.safetensors"
    r = runner.invoke(app, ["adv-train", "--eps", "8/255", *args, "--out", str(out), "--epochs", "1",
                            "--n-train", "64"])
    assert r.exit_code == 2, r.output
    assert msg in r.output and "Traceback" not in r.output, r.output
    assert not out.exists()


def test_a_static_set_refuses_the_objective_options(tmp_path):
    from advcli.errors import UsageError
    from advcli.train.adversarial import check_static_options

    with pytest.raises(UsageError, match="--objective, --awp"):
        check_static_options(AdvOptions(objective=ObjectiveOptions(objective="trades", awp=0.01)))


def test_pgd_at_without_awp_records_what_checkpoints_always_held(tmp_path, synthetic_data):
    adv_fit(_opts(tmp_path / "a.safetensors", epochs=1), _adv("pgd-at"), synthetic_data, CPU)
    meta = read_metadata(tmp_path / "a.safetensors")
    assert "objective" not in meta["threat_model"] and "train_kl" not in meta["history"][0]
