"""What the checks of one audit share: the options, the model and its examples, and the
white-box attacks' robust flags at the threat model (computed once, reused by every check).

Attacks run through the public attack API (`build_attack(AttackSpec(...))`, `Attack.run`) and
`advcli.attacks.autoattack.run_autoattack`, on the examples the model gets right clean (a
misclassified example is not robust and needs no attack), batch by batch, each batch with its
own seeded generator. A robust flag always implies clean-correct. Models whose output has no
gradient path to the input (a step through numpy or PIL) are attacked through
`ZeroGradientPath`, so that gradient attacks see a zero gradient instead of raising.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from advcli.audit.limits import ALL_CHECKS, CheckName
from advcli.config import Eps, Norm
from advcli.data.subsets import FileList, Subset
from advcli.data.view import DataView
from advcli.models.layout import input_layout, model_layout
from advcli.progress import Reporter

# The default evaluation attack is `advcli eval`'s: PGD-10, one restart, first-success.
DEFAULT_KEEP = "first-success"


@dataclass
class AuditOptions:
    """Resolved options of `advcli audit` (eps/norm None = the checkpoint's threat model)."""

    n: int | None = 500
    subset: Subset | FileList = Subset.stratified  # how --n picks the examples
    eps: Eps | None = None
    norm: Norm | None = None
    checks: tuple[CheckName, ...] = ALL_CHECKS
    pgd_steps: int = 10  # the default evaluation attack (advcli eval's)
    curve_steps: int = 10
    strong_steps: int = 100
    strong_restarts: int = 5
    # Check 2's ensemble runs eval's fast worst-case evaluation (APGD-CE, then MALT-targeted APGD)
    # in place of APGD-CE alone.
    fast_worst_case: bool = False
    square_n: int = 200
    eot_samples: int = 10
    surrogate: Path | None = None
    model: str | None = None  # FILE.py:CALLABLE
    wrap: str | None = None  # FILE.py:CALLABLE
    model_dir: str | None = None  # weights folder of a robustbench:NAME model
    channels_last: bool | None = None  # NHWC attacks; None = on for advcli architectures only
    amp: str | None = None  # None: the training run's --amp, from the checkpoint
    batch_size: int = 256
    seed: int = 0
    split: str = "test"
    dataset: str | None = None
    data_dir: str | None = None
    view: DataView = field(default_factory=DataView)  # --stream, --image-size, --skip-bad
    label: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


def stream_seed(seed: int, *words: int) -> int:
    """A seed per (audit seed, purpose, batch): independent streams for every attack and batch."""
    return int(np.random.SeedSequence([int(seed), *map(int, words)]).generate_state(1, np.uint64)[0] >> 1)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per example: the label's logit minus the best other logit (negative = misclassified)."""
    other = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return logits.gather(1, y[:, None])[:, 0] - other


class ZeroGradientPath(nn.Module):
    """The model, plus a zero term that depends on the input when its output does not: the
    gradient is then exactly zero (what it is) instead of an autograd error."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if torch.is_grad_enabled() and x.requires_grad and not out.requires_grad:
            out = out + (x * 0).sum()
        return out


class Expectation(nn.Module):
    """Expectation over Transformation (Athalye et al. 2018): the mean logits of `samples`
    passes, so that an attack's gradient is the average over the model's randomness."""

    def __init__(self, model: nn.Module, samples: int) -> None:
        super().__init__()
        self.model = model
        self.samples = int(samples)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.model(x) for _ in range(self.samples)]).mean(0)


@dataclass
class AuditContext:
    """The audited model, its examples, and the white-box flags at the threat model."""

    model: nn.Module  # what is audited (wrapped, with ZeroGradientPath when the graph is cut)
    base: nn.Module | None  # the unwrapped model when --wrap: the BPDA surrogate
    x: torch.Tensor  # float [n, C, H, W] in [0, 1], on the CPU
    y: torch.Tensor  # int64 [n]
    clean: np.ndarray  # bool [n]
    norm: Norm
    eps: Eps
    opts: AuditOptions
    device: torch.device
    reporter: Reporter
    num_classes: int
    meta: dict[str, Any] = field(default_factory=dict)
    graph_cut: bool = False
    randomised: bool = False
    probe_notes: list[str] = field(default_factory=list)
    whitebox: dict[str, np.ndarray] = field(default_factory=dict)  # name -> robust flags
    channels_last: bool = True  # attacks run the model and inputs in NHWC (advcli.models.layout)

    @property
    def n(self) -> int:
        return len(self.y)

    def robust_whitebox(self) -> np.ndarray:
        """Robust to every white-box attack run so far at the threat model (AND of the flags)."""
        flags = self.clean.copy()
        for f in self.whitebox.values():
            flags &= f
        return flags

    def default_attack(self) -> np.ndarray:
        """Robust flags of the default evaluation attack (PGD, eval's settings), computed once."""
        name = f"pgd-{self.opts.pgd_steps}"
        if name not in self.whitebox:
            self.whitebox[name] = self.lp_attack(name, dict(name="pgd", steps=self.opts.pgd_steps), purpose=1)
        return self.whitebox[name]

    def predict(self, model: nn.Module, x: torch.Tensor) -> np.ndarray:
        """Predicted classes, batch by batch (no gradient)."""
        out = np.zeros(len(x), dtype=np.int64)
        bs = self.opts.batch_size
        with torch.no_grad():
            for i in range(0, len(x), bs):
                out[i:i + bs] = model(x[i:i + bs].to(self.device)).argmax(1).cpu().numpy()
        return out

    def lp_attack(
        self,
        label: str,
        spec: dict[str, Any],
        *,
        purpose: int,
        model: nn.Module | None = None,
        judge: nn.Module | None = None,
        keep: str = DEFAULT_KEEP,
        autocast: Any = None,
    ) -> np.ndarray:
        """Run an Lp attack (`spec`: AttackSpec fields besides norm/eps/keep) on `model` (default:
        the audited one) over the clean-correct examples, under `autocast` (a context) if given.
        Returns the robust flags.

        Robust = clean-correct and not fooled: by the attack's own verdict (under `keep`) when
        `judge` is None, else by one fresh forward pass of `judge` on the kept image (transfer,
        EoT, precision: the attacked model is not the judged one, or not in the same dtype).
        """
        from advcli.attacks import AttackSpec, build_attack

        model = self.model if model is None else model
        attack = build_attack(AttackSpec(norm=self.norm, eps=self.eps, keep=keep, **spec))
        todo = np.flatnonzero(self.clean)
        flags = self.clean.copy()
        bs = self.opts.batch_size
        self.reporter.start(f"{label} {self.norm.value} eps={self.eps.text}", total=len(todo))
        try:
            with model_layout(model, self.channels_last):
                for b, start in enumerate(range(0, len(todo), bs)):
                    idx = torch.from_numpy(todo[start:start + bs])
                    xb = input_layout(self.x[idx].to(self.device), self.channels_last)
                    yb = self.y[idx].to(self.device)
                    g = torch.Generator().manual_seed(stream_seed(self.opts.seed, purpose, b))
                    with autocast if autocast is not None else nullcontext():
                        run = attack.run(model, xb, yb, generator=g)
                    if judge is None:
                        fooled = run.fooled.cpu().numpy()
                    else:
                        with torch.no_grad():
                            fooled = (judge(run.x_adv.float()).argmax(1) != yb).cpu().numpy()
                    flags[idx.numpy()] = ~fooled
                    self.reporter.advance(len(idx))
        finally:
            self.reporter.finish()
        return flags

    def autoattack(self, attack: str, *, todo: np.ndarray | None = None) -> np.ndarray:
        """Robust flags (length n) of one attack of the AutoAttack package, on the clean-correct
        examples (or on `todo`, indices), through `run_autoattack` with one restart. The package's
        sanity warnings are not kept here: check 6 runs those checks itself, once."""
        from advcli.attacks.autoattack import run_autoattack

        idx = np.flatnonzero(self.clean) if todo is None else np.asarray(todo, dtype=np.int64)
        flags = self.clean.copy()
        if not len(idx):
            return flags
        it = torch.from_numpy(idx)
        res = run_autoattack(self.model, self.x[it].to(self.device), self.y[it].to(self.device),
                             self.norm, self.eps, version="custom", attacks=[attack],
                             batch_size=self.opts.batch_size, seed=self.opts.seed,
                             reporter=self.reporter, restarts=1)
        flags[idx] = res.robust_flags.cpu().numpy() & self.clean[idx]
        return flags


    def fast_worst_case(self) -> np.ndarray:
        """Robust flags (length n) of eval's fast worst-case evaluation (APGD-CE, then
        MALT-targeted APGD on the points left standing) on the clean-correct examples."""
        from advcli.attacks.malt import run_fast_worst_case

        idx = np.flatnonzero(self.clean)
        flags = self.clean.copy()
        if not len(idx):
            return flags
        it = torch.from_numpy(idx)
        res = run_fast_worst_case(self.model, self.x[it].to(self.device), self.y[it].to(self.device),
                                  self.norm, self.eps, batch_size=self.opts.batch_size, seed=self.opts.seed,
                                  reporter=self.reporter)
        flags[idx] = res.robust_flags.cpu().numpy() & self.clean[idx]
        return flags


def accuracy(flags: np.ndarray) -> float:
    return float(flags.mean()) if len(flags) else 0.0
