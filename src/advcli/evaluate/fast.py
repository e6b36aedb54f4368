"""`advcli eval --fast-worst-case`: the fast worst-case evaluation (APGD-CE, then MALT-targeted
APGD on the points still standing; `advcli.attacks.malt`) as one entry per eps, named
`apgd-ce+malt-t3` (never AutoAttack).

Chunks, seeds, resume and torchrun sharding are AutoAttack's (`evaluate.autoattack_entry`):
chunk c is examples [c * batch_size, (c + 1) * batch_size), attacked with seed + c, recorded in
the progress file under `apgd-ce+malt-t3 NORM EPS` as it finishes; the flags are the attack's
AND the clean flags, and the perturbation is checked against eps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from advcli.attacks.base import full_precision
from advcli.attacks.malt import evaluation_name
from advcli.config import Eps, Norm
from advcli.evaluate.chunks import Estimator, after_round, attack_key, in_memory, max_perturbation, run_chunks
from advcli.evaluate.progress_file import ChunkRecord, EvalProgress
from advcli.formats.results import Entry
from advcli.progress import Reporter

KIND = evaluation_name()  # the estimator's and the plan's name for these chunks


def fast_entry(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    clean: np.ndarray,
    *,
    norm: Norm,
    eps: Eps,
    batch_size: int,
    seed: int,
    device: torch.device,
    reporter: Reporter,
    progress: EvalProgress | None = None,
    estimator: Estimator | None = None,
) -> Entry:
    from advcli.attacks import malt

    name = malt.evaluation_name()
    progress = in_memory(progress)
    key = attack_key(name, norm, eps)
    n_chunks = math.ceil(len(y) / batch_size)
    # Read at call time, so that tests can shorten the attacks (the code path stays the same).
    iterations = malt.ITERATIONS

    def work(c: int) -> ChunkRecord:
        sl = slice(c * batch_size, (c + 1) * batch_size)
        xd, yd = x[sl].to(device).contiguous(), y[sl].to(device)
        with full_precision(device):
            res = malt.run_fast_worst_case(model, xd, yd, norm, eps, iterations=iterations,
                                           batch_size=batch_size, seed=seed + c, reporter=reporter)
        return ChunkRecord(flags=res.robust_flags.cpu().numpy().astype(bool),
                           max_perturbation=max_perturbation(res.x_adv, xd, norm), time_s=0.0,
                           extra={"broken": dict(res.broken), "warnings": list(res.warnings)})

    done = run_chunks(key, n_chunks, work, progress,
                      after_round(KIND, reporter, estimator, advance=False))
    chunks = [done[c] for c in range(n_chunks)]
    robust = np.concatenate([r.flags for r in chunks]) if chunks else np.zeros(0, dtype=bool)
    flags = robust & clean
    delta = max((r.max_perturbation for r in chunks), default=0.0)
    warnings: list[str] = []
    for r in chunks:  # in chunk order: the same list whichever chunks a resume ran
        warnings += [w for w in r.extra.get("warnings", []) if w not in warnings]
    if delta > eps.value + 1e-5:
        warnings.append(f"{name} returned a perturbation of {delta:.6g} > eps {eps.value:.6g} ({norm.value})")
    stages = list(chunks[0].extra.get("broken", {})) if chunks else []
    broken = {s: sum(int(r.extra.get("broken", {}).get(s, 0)) for r in chunks) for s in stages}
    params = {"attacks": ["apgd-ce", f"malt-t{malt.TARGETS}"], "iterations": iterations, "restarts": 1,
              "targets": malt.TARGETS, "candidates": malt.CANDIDATES,
              "target_choice": "linearised margin (f_y - f_t) / dual norm of its input gradient",
              "broken": broken, "max_perturbation": delta}
    return Entry(attack=name, accuracy=float(flags.mean()) if len(flags) else 0.0, n=len(flags),
                 norm=norm.value, eps=eps.value, eps_text=eps.text, flags=flags, params=params,
                 warnings=warnings, time_s=sum(r.time_s for r in chunks))
