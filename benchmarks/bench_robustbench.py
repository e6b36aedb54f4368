"""Benchmark [9] `robustbench`: `eval robustbench:NAME --autoattack` / robustbench's own way to the
same number (`robustbench.utils.load_model`, then what `robustbench.eval.benchmark` does) on the
same images; a time ratio. Target <= 1.05.

Both sides load the zoo model (Wong2020Fast, PreActResNet-18) from the same weights file and run
standard AutoAttack at Linf 8/255 with seed 0. The weights are the zoo architecture seeded here
(nothing can be downloaded), so the images are labelled with the model's own predictions: every
image is then correctly classified and AutoAttack attacks all of them, as it would a robust
model's correct points.

`robustbench.eval.benchmark` itself cannot run here: it reads CIFAR-10 through torchvision (a
download), and robustbench 1.1.1 calls AutoAttack with the git version's arguments (`log_path=`,
`bs=`), which PyPI's pyautoattack (the package robustbench's own metadata requires) does not
take. The robustbench side therefore runs benchmark's steps as it writes them, with
pyautoattack's arguments: `robustbench.utils.clean_accuracy` on the clean images,
`AutoAttack(version="standard").run_standard_evaluation`, `clean_accuracy` on the adversarial
images.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch
from bench_autoattack import quiet_autoattack
from harness import EPS, Context, Ratio, compare, emit, info, interleaved, ms

from advcli.data import ImageData, to_float
from advcli.data.subsets import Subset
from advcli.progress import NullReporter

NAME = "robustbench"
MODEL = "Wong2020Fast"


def _seeded_weights(root: Path) -> Path:
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    path = root / "cifar10" / "Linf" / f"{MODEL}.pt"
    if not path.is_file():
        torch.manual_seed(0)
        net = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf][MODEL]["model"]()
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), path)
    return root


def run(ctx: Context) -> None:
    from advcli.models.robustbench._package import MissingExtraError, import_robustbench

    try:
        rb = import_robustbench()
    except MissingExtraError as exc:
        info(f"robustbench: skipped ({exc})")
        return
    from advcli.evaluate.run import EvalOptions, run_eval

    s = ctx.sizes
    model_dir = _seeded_weights(ctx.tmp / "robustbench-models")
    net = rb.utils.load_model(MODEL, model_dir=str(model_dir))
    out: dict[str, float] = {}

    def sides(n: int) -> dict[str, Callable[[], None]]:
        xs = ctx.data.test_x[:n]
        with torch.no_grad():
            ys = net(to_float(xs)).argmax(1)
        data = ImageData(name="synthetic", classes=[str(c) for c in range(10)], train_x=xs[:1], train_y=ys[:1],
                         test_x=xs, test_y=ys)
        x = to_float(xs)

        def ours() -> None:
            opts = EvalOptions(n=n, subset=Subset.first, pgd=False, autoattack=True, batch_size=n,
                               model_dir=str(model_dir))
            result = run_eval(f"robustbench:{MODEL}", opts, device=ctx.device, reporter=NullReporter(), data=data)
            out["ours"] = result.entry("autoattack").accuracy

        def theirs() -> None:
            from pyautoattack import AutoAttack

            model = rb.utils.load_model(MODEL, model_dir=str(model_dir))
            rb.utils.clean_accuracy(model, x, ys, batch_size=n, device=ctx.device)
            adversary = AutoAttack(model, norm="Linf", eps=EPS.value, version="standard", device=ctx.device, seed=0)
            x_adv, _ = adversary.run_standard_evaluation(x, ys, batch_size=n)
            out["theirs"] = rb.utils.clean_accuracy(model, x_adv, ys, batch_size=n, device=ctx.device)

        return {"eval": ours, "robustbench": theirs}

    reps = max(1, s.repeats // 4)
    n = s.aa_n
    info(f"robustbench: {MODEL} (PreActResNet-18, seeded weights), {n} images labelled with its own "
         f"predictions, standard AutoAttack Linf 8/255, {reps} repeats")
    with quiet_autoattack(), contextlib.redirect_stdout(None):
        for fn in sides(2).values():  # warm-up on 2 images: imports, first allocations
            fn()
        t = interleaved(ctx, sides(n), reps, warmup=False)
    emit(ctx, Ratio(
        "robustbench", f"[9] eval robustbench:{MODEL} --autoattack time / robustbench load_model + "
        f"benchmark's steps (n={n})", target="<= 1.05",
        detail=f"eval {ms(t.wall['eval'], 1, 's')} vs robustbench {ms(t.wall['robustbench'], 1, 's')}; robust "
               f"accuracy eval {100 * out['ours']:.1f}% vs robustbench {100 * out['theirs']:.1f}%",
        **compare(t, "eval", "robustbench"),
    ))
