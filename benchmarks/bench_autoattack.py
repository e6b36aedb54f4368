"""Benchmark [5] `autoattack`: eval's AutoAttack entry / pyautoattack called directly on the same
model, points and seed (version custom, apgd-ce); a time ratio. Target <= 1.05.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator

from harness import EPS, Context, Ratio, compare, emit, eval_model, info, interleaved, ms

from advcli.config import Norm
from advcli.data import test_subset, to_float
from advcli.progress import NullReporter

NAME = "autoattack"


@contextlib.contextmanager
def quiet_autoattack() -> Iterator[None]:
    """pyautoattack logs to "auto-attack"; keep its lines out of the benchmark output."""
    logger = logging.getLogger("auto-attack")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    logger.handlers = [logging.NullHandler()]
    logger.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers = saved[2]


def run(ctx: Context) -> None:
    from pyautoattack import AutoAttack

    from advcli.evaluate.run import autoattack_entry, predict_flags

    s = ctx.sizes
    model = eval_model(ctx)
    out: dict[str, float] = {}

    def sides(n: int) -> dict[str, Callable[[], None]]:
        idx = test_subset(ctx.data.test_y, n, seed=0)
        x, y = to_float(ctx.data.test_x[idx]), ctx.data.test_y[idx].long()

        def ours() -> None:
            clean = predict_flags(model, x, y, n, ctx.device)
            entry = autoattack_entry(model, x, y, clean, norm=Norm.linf, eps=EPS, version="custom",
                                     attacks=["apgd-ce"], batch_size=n, seed=0, device=ctx.device,
                                     reporter=NullReporter())
            out["ours"] = entry.accuracy

        def direct() -> None:
            model.eval()
            adversary = AutoAttack(model, attacks=["apgd-ce"], device=ctx.device, eps=EPS.value, norm="Linf",
                                   seed=0, version="custom")
            xd, yd = x.to(ctx.device), y.to(ctx.device)
            _, y_pred = adversary.run_standard_evaluation(xd, yd, batch_size=n)
            out["direct"] = float((y_pred.to(yd.device) == yd).float().mean())

        return {"eval": ours, "direct": direct}

    reps = max(1, s.repeats // 2)
    info(f"autoattack: {s.archs[0]} (adversarially trained), {s.aa_n} examples, custom apgd-ce, {reps} repeats")
    with quiet_autoattack():
        for fn in sides(2).values():  # warm-up on 2 points: a full AutoAttack run is long
            fn()
        t = interleaved(ctx, sides(s.aa_n), reps, warmup=False)
    emit(ctx, Ratio(
        "autoattack", f"[5] eval --autoattack time / pyautoattack directly (n={s.aa_n})", target="<= 1.05",
        detail=f"eval {ms(t.wall['eval'], 1, 's')} vs direct {ms(t.wall['direct'], 1, 's')}; robust accuracy "
               f"eval {100 * out['ours']:.1f}% vs direct {100 * out['direct']:.1f}%", **compare(t, "eval", "direct"),
    ))
