"""Benchmark [3] `eval-pgd`: eval's clean + PGD-10 throughput / torchattacks PGD (clean pass,
attack, final pass) on the same model, examples, eps, step size and steps. Target >= 2 (eval's PGD
attacks only the clean-correct examples, and a fooled example leaves the batch).
"""

from __future__ import annotations

import torch
from harness import EPS, Context, Ratio, compare, emit, eval_model, info, interleaved, ms
from torch import nn

from advcli.attacks.base import LpAttack
from advcli.config import Norm
from advcli.data import test_subset, to_float
from advcli.progress import NullReporter

NAME = "eval-pgd"


def run(ctx: Context) -> None:
    import torchattacks

    from advcli.stages.evaluate import pgd_entry, predict_flags

    s = ctx.sizes
    model = eval_model(ctx)
    idx = test_subset(ctx.data.test_y, s.eval_n, seed=0)
    x, y = to_float(ctx.data.test_x[idx]), ctx.data.test_y[idx].long()
    steps, b = 10, s.batch
    alpha = 2.5 * EPS.value / steps  # advcli's default step size, given to torchattacks explicitly
    out: dict[str, float] = {}

    def ours(model: nn.Module = model, key: str = "ours") -> None:
        clean = predict_flags(model, x, y, b, ctx.device)
        entry = pgd_entry(model, x, y, clean, norm=Norm.linf, eps=EPS, steps=steps, restarts=1, step_size=None,
                          batch_size=b, seed=0, device=ctx.device, reporter=NullReporter())
        out["clean"], out[key] = float(clean.mean()), entry.accuracy

    def full_loop() -> None:
        # The same eval with every example attacked to the last step: what the early exit saves.
        LpAttack.early_exit = False
        try:
            ours(key="full")
        finally:
            LpAttack.early_exit = True

    def theirs() -> None:
        attack = torchattacks.PGD(model, eps=EPS.value, alpha=alpha, steps=steps, random_start=True)
        robust = 0
        for i in range(0, len(y), b):
            xb, yb = x[i:i + b].to(ctx.device), y[i:i + b].to(ctx.device)
            with torch.no_grad():
                (model(xb).argmax(1) == yb).sum()  # clean accuracy, as eval reports it too
            x_adv = attack(xb, yb)
            with torch.no_grad():
                robust += int((model(x_adv).argmax(1) == yb).sum())
        out["theirs"] = robust / len(y)

    reps = s.repeats
    info(f"eval-pgd: {s.archs[0]} (adversarially trained), {len(y)} examples, batch {b}, PGD-{steps}, "
         f"{reps} repeats")
    # eval's PGD entry converts the model to channels_last itself (measured faster on the CPU).
    t = interleaved(ctx, {"ours": ours, "torchattacks": theirs, "full": full_loop}, reps)
    acc = out["clean"]
    r = compare(t, "torchattacks", "ours")
    emit(ctx, Ratio(
        "eval-pgd", f"[3] eval PGD-10 throughput / torchattacks PGD ({s.archs[0]}, n={len(y)})", target=">= 2",
        detail=f"eval {ms(t.wall['ours'], 1, 's')} vs torchattacks {ms(t.wall['torchattacks'], 1, 's')}; "
               f"clean accuracy {100 * acc:.1f}%: eval attacks only those, a skip bound of 1/acc = "
               f"{1 / max(acc, 1e-9):.2f}\nrobust accuracy: eval {100 * out['ours']:.1f}%, torchattacks "
               f"{100 * out['theirs']:.1f}% (different random starts: equal up to noise)\nearly exit: eval without it "
               f"{ms(t.wall['full'], 1, 's')}, {compare(t, 'full', 'ours')['value']:.2f}x the time with it (same "
               f"accuracy: {out['full'] == out['ours']})", **r,
    ))
