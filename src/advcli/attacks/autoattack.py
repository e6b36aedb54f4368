"""AutoAttack (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"), run through the authors' package (PyPI
`pyautoattack` 0.2.0, imported as `pyautoattack`).

What this wrapper adds to `AutoAttack.run_standard_evaluation`:
- the advcli attack contract: eval mode, no parameter gradients, both restored afterwards;
- contiguous float inputs (the package reshapes with `.view`, which fails on sliced or
  channels-last tensors);
- the package re-seeds torch's global RNG (`torch.random.manual_seed(seed)`) inside every
  attack; that is confined here with `torch.random.fork_rng`, so callers' random streams are
  untouched;
- the package's messages (logger "auto-attack") are routed to a `Reporter`: its progress lines
  are logged, and its sanity checks (randomised or dynamic defence, probabilities instead of
  logits, too few classes, zero gradients, Square beating the gradient attacks) plus any Python
  warnings are returned in `AutoAttackResult.warnings`, never printed behind the caller's back;
- the targeted attacks (APGD-T, FAB-T) use at most num_classes − 1 target classes, so models
  with fewer than 10 classes run instead of failing with an index error;
- `robust_flags[i]` is True when example i is classified correctly both clean and after every
  attack in the run (the package's own per-example flags: its second return value holds the
  predicted labels, so flags = predicted == y).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from advcli.attacks.base import attack_mode, check_inputs
from advcli.config import Eps, Norm, parse_choice, parse_eps
from advcli.errors import UsageError
from advcli.progress import NullReporter, Reporter

VERSIONS = ("standard", "plus", "rand", "custom")
ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
_AA_NORM = {Norm.linf: "Linf", Norm.l2: "L2"}


@dataclass
class AutoAttackResult:
    x_adv: torch.Tensor  # same device as the input x
    robust_flags: torch.Tensor  # bool [N]: still correct after all attacks
    restarts: int  # restarts the package ran its untargeted APGD (apgd-ce, apgd-dlr) with
    warnings: list[str] = field(default_factory=list)
    attacks: list[str] = field(default_factory=list)  # the attacks that were run, in order


class _ToReporter(logging.Handler):
    """Sends the package's log records to a Reporter; keeps the warnings."""

    def __init__(self, reporter: Reporter) -> None:
        super().__init__(level=logging.DEBUG)
        self.reporter = reporter
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            self.warnings.append(message)
            self.reporter.log(f"autoattack warning: {message}")
        elif message.startswith("robust accuracy after"):
            self.reporter.log(f"autoattack: {message}")
            self.reporter.advance(1)
        elif message.startswith(("initial accuracy", "using ", "no robust datapoints")):
            self.reporter.log(f"autoattack: {message}")


def run_autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: Norm | str,
    eps: Eps | float | str,
    version: str = "standard",
    attacks: list[str] | tuple[str, ...] | None = None,
    batch_size: int = 256,
    seed: int = 0,
    reporter: Reporter | None = None,
    restarts: int | None = None,
) -> AutoAttackResult:
    """Run AutoAttack on (x, y) with the model on its own device; x float NCHW in [0, 1].

    `version`: standard | plus | rand, or custom with `attacks` (a list of apgd-ce, apgd-dlr,
    fab, square, apgd-t, fab-t). `restarts` overrides the restarts of the untargeted APGD and
    FAB; None keeps the package's (standard and rand: 1; plus and custom: 5).
    """
    from pyautoattack import AutoAttack

    reporter = reporter or NullReporter()
    norm = parse_choice(Norm, norm, name="norm")
    eps_value = parse_eps(eps, name="eps").value
    version = str(version).strip().lower()
    if version not in VERSIONS:
        raise UsageError(f"unknown AutoAttack version {version!r}; valid values: {', '.join(VERSIONS)}")
    if version == "custom":
        if not attacks:
            raise UsageError("AutoAttack version custom needs a list of attacks, e.g. apgd-ce,square")
        bad = [a for a in attacks if a not in ATTACKS]
        if bad:
            raise UsageError(f"unknown AutoAttack attack(s) {', '.join(bad)}; valid values: {', '.join(ATTACKS)}")
    elif attacks:
        raise UsageError(f"AutoAttack version {version} fixes its attacks; use version custom to choose them")
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    if restarts is not None and restarts < 1:
        raise UsageError(f"AutoAttack restarts must be >= 1, got {restarts}")
    check_inputs(x, y)

    device = next((p.device for p in model.parameters()), x.device)
    x = x.detach().float().contiguous()
    y = y.detach().long().contiguous().to(x.device)
    logger = logging.getLogger("auto-attack")
    handler = _ToReporter(reporter)
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    # Keep its records out of the root logger (Python's last-resort handler would print them).
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(attack_mode(model))
            stack.enter_context(torch.random.fork_rng(devices=fork_devices))
            caught = stack.enter_context(warnings.catch_warnings(record=True))
            warnings.simplefilter("always")
            adversary = AutoAttack(
                model,
                attacks=list(attacks) if version == "custom" else None,
                device=device,
                eps=eps_value,
                norm=_AA_NORM[norm],
                seed=seed,
                version=version,
            )
            _limit_targets(adversary, model, x[:1].to(device))
            if restarts is not None:
                adversary.apgd.n_restarts = restarts
                adversary.fab.n_restarts = restarts
            used_restarts = int(adversary.apgd.n_restarts)
            run = list(adversary.attacks_to_run)
            reporter.start(f"autoattack {version} {norm.value} eps={eps_value:.5g}", total=len(run))
            x_adv, y_pred = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    finally:
        reporter.finish()
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
    notes = list(handler.warnings)
    if "square" in run and x.shape[2] != x.shape[3]:
        notes.append("Square Attack may not work properly on non-square images (auto-attack issue 95)")
    notes += [f"{w.category.__name__}: {w.message}" for w in caught]
    return AutoAttackResult(
        x_adv=x_adv.detach(),
        robust_flags=y_pred.to(y.device).eq(y),
        warnings=notes,
        attacks=run,
        restarts=used_restarts,
    )


def _limit_targets(adversary: Any, model: nn.Module, probe: torch.Tensor) -> None:
    with torch.no_grad():
        n_classes = int(model(probe).shape[1])
    top = max(n_classes - 1, 1)
    adversary.apgd_targeted.n_target_classes = min(adversary.apgd_targeted.n_target_classes, top)
    adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, top)
