"""Benchmark [3] `eval-pgd`: eval's clean + PGD-10 throughput / torchattacks PGD (clean pass,
attack, final pass) on the same model, examples, eps, step size and steps. Target >= 2 (eval's PGD
attacks only the clean-correct examples, and a fooled example leaves the batch). Also eval with
the early exit off, to show what it saves.

In `run.py` it measures the harness's adversarially trained synthetic model; standalone, real
checkpoints (the first 256 test images in advcli's stratified order):

    python benchmarks/bench_eval_pgd.py CKPT.safetensors [...] --dataset folder:../shared/data/cifar10-jpeg.zip
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import torch  # noqa: E402
from harness import EPS, SIZES, Context, Ratio, compare, emit, eval_model, info, interleaved, ms  # noqa: E402
from torch import nn  # noqa: E402

from advcli.attacks.base import LpAttack  # noqa: E402
from advcli.config import Norm  # noqa: E402
from advcli.data import test_subset, to_float  # noqa: E402
from advcli.progress import NullReporter  # noqa: E402

NAME = "eval-pgd"


def run(ctx: Context) -> None:
    idx = test_subset(ctx.data.test_y, ctx.sizes.eval_n, seed=0)
    x, y = to_float(ctx.data.test_x[idx]), ctx.data.test_y[idx].long()
    measure(ctx, eval_model(ctx), x, y, f"{ctx.sizes.archs[0]} (adversarially trained)")


def measure(ctx: Context, model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str) -> None:
    import torchattacks

    from advcli.evaluate.run import pgd_entry, predict_flags

    s = ctx.sizes
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
    info(f"eval-pgd: {name}, {len(y)} examples, batch {b}, PGD-{steps}, {reps} repeats")
    # eval's PGD entry converts the model to channels_last itself (measured faster on the CPU).
    t = interleaved(ctx, {"ours": ours, "torchattacks": theirs, "full": full_loop}, reps)
    acc = out["clean"]
    r = compare(t, "torchattacks", "ours")
    emit(ctx, Ratio(
        "eval-pgd", f"[3] eval PGD-10 throughput / torchattacks PGD ({name.split()[0]}, n={len(y)})", target=">= 2",
        detail=f"eval {ms(t.wall['ours'], 1, 's')} vs torchattacks {ms(t.wall['torchattacks'], 1, 's')}; "
               f"clean accuracy {100 * acc:.1f}%: eval attacks only those, a skip bound of 1/acc = "
               f"{1 / max(acc, 1e-9):.2f}\nrobust accuracy: eval {100 * out['ours']:.1f}%, torchattacks "
               f"{100 * out['theirs']:.1f}% (different random starts: equal up to noise)\nearly exit: eval without it "
               f"{ms(t.wall['full'], 1, 's')}, {compare(t, 'full', 'ours')['value']:.2f}x the time with it (same "
               f"accuracy: {out['full'] == out['ours']})", **r,
    ))


def main(argv: list[str] | None = None) -> int:
    from advcli.data.subsets import Subset
    from advcli.models.user import load_target

    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--dataset", help="dataset (default: the checkpoint's)")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    ctx = Context(args, replace(SIZES["default"], repeats=args.repeats), device, None, Path("."))  # type: ignore[arg-type]
    for ckpt in args.checkpoints:
        target = load_target(ckpt, model=None, wrap=None, device=device)
        data, idx, _ = target.examples(dataset=args.dataset, data_dir=None, split="test", n=args.n, seed=0,
                                    subset=Subset.stratified, device=device)
        xs, ys = data.split("test")
        measure(ctx, target.model, to_float(xs[idx]), ys[idx].long(), target.label(None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
