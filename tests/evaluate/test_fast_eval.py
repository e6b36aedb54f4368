"""The fast worst-case evaluation (`advcli.attacks.malt`, `eval --fast-worst-case`): MALT's
target choice finds a class that logit rank misses, flags imply clean-correct, and the entry
resumes like AutoAttack's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from advcli.attacks import malt
from advcli.attacks.malt import malt_targets, run_fast_worst_case
from advcli.config import Norm, parse_eps
from advcli.evaluate.progress_file import STOP_AFTER_ENV, load_progress, progress_path_for
from advcli.evaluate.run import EvalOptions, run_eval
from tests.evaluate import test_eval_resume
from tests.evaluate.test_eval_resume import _comparable, decoded_once  # noqa: F401 (a fixture)

EPS = 8 / 255
D = 3 * 4 * 4
# Logits at the clean images: the true class 0 first, then 1, 2, 3 (no gradient: no eps can
# move them), 4 (a shallow slope against the steep class), 5..8 (flat), and 9 last.
BIAS = [10.0, 9.5, 9.3, 9.2, 9.0, 8.0, 7.0, 6.0, 5.0, 0.0]
STEEP, SHALLOW = 9, 4


class Decoy(nn.Module):
    """A linear model with one adversarial direction, toward its LOWEST-ranked class 9: its logit
    rises by ‖w‖₁ = 480 per unit of Linf, so 8/255 lifts it by 15 > the gap of 10. Logit rank puts
    class 1 first (a flat logit: the targeted loss has no gradient). Class 4 has a slope of
    -0.01 w: the cross-entropy gradient at the clean image follows class 4's (softmax weight
    ~0.1) rather than class 9's (~1e-5), so untargeted APGD-CE walks away from class 9, and
    class 4 itself gains only 0.15 < its gap of 1. The linearised margins: class 9 10/480 ≈ 0.02,
    class 4 1/4.8 ≈ 0.2, the flat classes infinite."""

    def __init__(self) -> None:
        super().__init__()
        w = 10.0 * torch.tensor([(-1.0) ** i for i in range(D)])
        weight = torch.zeros(10, D)
        weight[STEEP], weight[SHALLOW] = w, -0.01 * w
        bias = torch.tensor(BIAS) - weight @ torch.full((D,), 0.5)  # the BIAS logits at x = 0.5
        self.fc = nn.Linear(D, 10)
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def images(n: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return 0.5 + 0.02 * (torch.rand(n, 3, 4, 4, generator=g) - 0.5)


def test_malt_finds_the_low_ranked_class_that_logit_rank_and_apgd_ce_miss() -> None:
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    model, x = Decoy().eval(), images()
    y = torch.zeros(len(x), dtype=torch.long)
    with torch.no_grad():
        logits = model(x)
    # The premise, by construction: correct clean, class 9 ranked last, class 1 second.
    assert bool((logits.argmax(1) == 0).all())
    assert bool((logits.argsort(1, descending=True)[:, [1, -1]] == torch.tensor([1, STEEP])).all())
    rank_top1 = APGDAttack_targeted(model, n_iter=100, eps=EPS, n_target_classes=1, device="cpu")
    ce = APGDAttack(model, n_iter=100, eps=EPS, loss="ce", device="cpu")
    with pytest.warns(Warning):  # the package's zero-gradient check: class 1 has none
        adv_rank = rank_top1.perturb(x, y)
    adv_ce = ce.perturb(x, y)
    with torch.no_grad():
        assert bool((model(adv_rank).argmax(1) == 0).all()), "logit-rank top-1 must fail here"
        assert bool((model(adv_ce).argmax(1) == 0).all()), "APGD-CE must fail here"
    # MALT ranks class 9 first, then class 4.
    chosen = malt_targets(model, x, y, Norm.linf)
    assert chosen.shape == (len(x), 3) and bool((chosen[:, :2] == torch.tensor([STEEP, SHALLOW])).all())
    res = run_fast_worst_case(model, x, y, Norm.linf, EPS)
    assert not bool(res.robust_flags.any())
    assert res.broken == {"apgd-ce": 0, "malt-t3": len(x)}
    with torch.no_grad():
        assert bool((model(res.x_adv).argmax(1) == STEEP).all())
    assert float((res.x_adv - x).abs().max()) <= EPS + 1e-6 and 0 <= float(res.x_adv.min())


def test_flags_are_a_subset_of_the_clean_flags_and_the_rng_is_left_alone() -> None:
    model, x = Decoy().eval(), images(12)
    y = torch.zeros(len(x), dtype=torch.long)
    y[::3] = 5  # a third misclassified clean
    clean = model(x).argmax(1) == y
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    small = run_fast_worst_case(model, x, y, Norm.linf, 1 / 255, batch_size=5)  # 480/255 < 10: unbreakable
    assert torch.equal(torch.rand(3), expected)  # the package's re-seeding stays inside
    assert torch.equal(small.robust_flags, clean)
    large = run_fast_worst_case(model, x, y, Norm.linf, EPS, batch_size=5)
    assert not bool((large.robust_flags & ~clean).any()) and not bool(large.robust_flags.any())
    assert sum(large.broken.values()) == int(clean.sum())


@pytest.fixture
def short_malt(monkeypatch: pytest.MonkeyPatch) -> None:
    """20 APGD iterations instead of 100: the same code path in seconds on a CPU."""
    monkeypatch.setattr(malt, "ITERATIONS", 20)


def test_eval_entry_names_what_ran_and_implies_clean(tiny_ckpt: Path, synthetic_data, short_malt) -> None:
    opts = EvalOptions(n=48, eps=[parse_eps("2/255")], pgd_steps=5, fast_worst_case=True, batch_size=16)
    res = run_eval(tiny_ckpt, opts, device=torch.device("cpu"), data=synthetic_data)
    clean, fast, worst = res.entry("clean"), res.entry("apgd-ce+malt-t3"), res.entry("worst")
    assert fast.params["attacks"] == ["apgd-ce", "malt-t3"] and fast.params["iterations"] == 20
    assert not (fast.flags & ~clean.flags).any()
    assert sum(fast.params["broken"].values()) == int(clean.flags.sum() - fast.flags.sum())
    assert fast.params["max_perturbation"] <= 2 / 255 + 1e-6
    assert "apgd-ce+malt-t3" in worst.params["of"] and not (worst.flags & ~fast.flags).any()
    assert 0 < fast.accuracy < clean.accuracy  # a non-trivial case
    from advcli.compare import entry_key

    assert entry_key(fast).variant == "apgd-ce+malt-t3"  # never labelled AA


ARGS = ["--n", "24", "--eps", "1/255", "--no-pgd", "--fast-worst-case", "--batch-size", "8",
        "--device", "cpu", "-q"]


def test_fast_eval_killed_and_resumed_equals_the_uninterrupted_result(
    tiny_ckpt: Path, tmp_path: Path, short_malt, decoded_once, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setattr(test_eval_resume, "ARGS", ARGS)  # its CLI runner, with these options
    _eval = test_eval_resume._eval
    whole = tmp_path / "whole" / "r.yaml"
    res = _eval(tiny_ckpt, whole)
    assert res.exit_code == 0, res.output
    out = tmp_path / "r.yaml"
    killed = _eval(tiny_ckpt, out, env={STOP_AFTER_ENV: "2"})
    assert killed.exit_code == 130 and not out.exists()
    assert len(load_progress(progress_path_for(out)).done("apgd-ce+malt-t3 linf 1/255")) == 2
    res = _eval(tiny_ckpt, out, "--resume")
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(out.read_text())["provenance"]["resumed"]["chunks_reused"] == 2
    doc = _comparable(out)
    assert doc == _comparable(whole)
    fast = next(e for e in doc["results"] if e["attack"] == "apgd-ce+malt-t3")
    assert 0 < fast["accuracy"] < 1
