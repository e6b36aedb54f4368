"""The attack stage: adversarial examples for a split (or its first n examples), their summary
numbers, and the two files `advcli attack` writes.

- `run_attack` (pure): attacks the images batch by batch with a Reporter and returns an
  `AttackOutcome` (the adversarial images, predictions, per-example perturbation norms and
  1−SSIM, and `AttackMetrics`).
- Files: the adversarial set is `advcli.advset`'s (one module owns that format);
  `build_summary`/`write_summary`/`read_summary` for the YAML summary (schema
  `advcli.attack/1`).

Metric definitions (all fractions in [0, 1]):
- clean_accuracy / adv_accuracy: share of the n examples classified correctly before / after;
- success_rate: untargeted, the share of the clean-correct examples that the attack turns
  wrong; targeted, the share classified as their target; null when no example qualifies;
- linf_*/l2_*: per-example norms of x_adv − x (pixel units, [0, 1] scale), mean and max;
- ssim_dissimilarity_mean: mean over examples of 1 − SSIM(x, x_adv), SSIM from scikit-image
  (`structural_similarity`, colour channels via `channel_axis`, `data_range=1`, default
  7×7 uniform window, smaller for tiny images).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from advcli.attacks import AttackSpec, attack_record, build_attack
from advcli.attacks.base import attack_mode, lp_norms
from advcli.data import to_float
from advcli.errors import ResultsError, UsageError
from advcli.io import atomic_write_text, plain, read_yaml_document
from advcli.progress import NullReporter, Reporter

SUMMARY_SCHEMA = "advcli.attack/1"


@dataclass
class AttackMetrics:
    clean_accuracy: float
    adv_accuracy: float
    success_rate: float | None
    linf_mean: float
    linf_max: float
    l2_mean: float
    l2_max: float
    ssim_dissimilarity_mean: float

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


@dataclass
class AttackOutcome:
    x_adv: torch.Tensor  # float32 [N, C, H, W] on the CPU
    y: torch.Tensor  # int64 true labels
    index: torch.Tensor  # int64 indices into the source split
    clean_pred: torch.Tensor
    adv_pred: torch.Tensor
    linf: torch.Tensor  # float64 per example
    l2: torch.Tensor
    ssim_dissimilarity: torch.Tensor
    metrics: AttackMetrics
    attack: dict[str, Any]  # the resolved parameters (see attacks.attack_record)
    time_s: float
    targets: torch.Tensor | None = None


def ssim_dissimilarity(clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """1 − SSIM per image pair (float tensors NCHW in [0, 1]), with scikit-image's SSIM."""
    from skimage.metrics import structural_similarity

    a = clean.detach().cpu().double().permute(0, 2, 3, 1).numpy()
    b = adv.detach().cpu().double().permute(0, 2, 3, 1).numpy()
    side = min(a.shape[1], a.shape[2])
    win = min(7, side if side % 2 else side - 1)  # scikit-image needs an odd window <= the image
    values = [
        1.0 - structural_similarity(a[i], b[i], channel_axis=-1, data_range=1.0, win_size=win)
        for i in range(a.shape[0])
    ]
    return torch.tensor(values, dtype=torch.float64)


def run_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: AttackSpec,
    *,
    index: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str | None = None,
    reporter: Reporter | None = None,
) -> AttackOutcome:
    """Attack (x, y) in batches. x: uint8 or float [N, C, H, W] on the CPU (converted per batch,
    so a whole training set never exists as floats twice); targets: the target classes when
    `spec.targeted`. Random starts draw from one CPU generator seeded with `seed`, so the
    result does not depend on the device."""
    reporter = reporter or NullReporter()
    attack = build_attack(spec)
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    if spec.targeted and (targets is None or targets.shape != y.shape):
        raise UsageError("a targeted attack needs one target class per example")
    if targets is not None and not spec.targeted:
        raise UsageError("target classes were given for an untargeted attack; set targeted=True")
    n = int(y.shape[0])
    if n == 0:
        raise UsageError("there are no examples to attack; check --n and --split")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    index = torch.arange(n, dtype=torch.int64) if index is None else index.to(torch.int64).cpu()
    generator = torch.Generator().manual_seed(int(seed))

    x_adv_all = torch.empty((n, *x.shape[1:]), dtype=torch.float32)
    clean_pred = torch.empty(n, dtype=torch.int64)
    adv_pred = torch.empty(n, dtype=torch.int64)
    linf = torch.empty(n, dtype=torch.float64)
    l2 = torch.empty(n, dtype=torch.float64)
    dssim = torch.empty(n, dtype=torch.float64)

    t0 = time.perf_counter()
    reporter.start(f"{attack.name} attack", total=n)
    try:
        with attack_mode(model):
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                xb = to_float(x[start:stop]).to(device)
                yb = y[start:stop].to(device)
                goal = yb if targets is None else targets[start:stop].to(device)
                xa = attack.perturb(model, xb, goal, generator)
                with torch.no_grad():
                    clean_pred[start:stop] = model(xb).argmax(dim=1).cpu()
                    adv_pred[start:stop] = model(xa).argmax(dim=1).cpu()
                    li, l2b = lp_norms(xa - xb)
                xa_cpu = xa.float().cpu()
                x_adv_all[start:stop] = xa_cpu
                linf[start:stop] = li.double().cpu()
                l2[start:stop] = l2b.double().cpu()
                dssim[start:stop] = ssim_dissimilarity(xb.cpu(), xa_cpu)
                reporter.advance(stop - start)
    finally:
        reporter.finish()
    elapsed = time.perf_counter() - t0

    y_cpu = y.to(torch.int64).cpu()
    clean_ok = clean_pred.eq(y_cpu)
    adv_ok = adv_pred.eq(y_cpu)
    if targets is not None:
        success: float | None = float(adv_pred.eq(targets.cpu()).double().mean())
    else:
        base = int(clean_ok.sum())
        success = float((clean_ok & ~adv_ok).sum()) / base if base else None
    metrics = AttackMetrics(
        clean_accuracy=float(clean_ok.double().mean()),
        adv_accuracy=float(adv_ok.double().mean()),
        success_rate=success,
        linf_mean=float(linf.mean()),
        linf_max=float(linf.max()),
        l2_mean=float(l2.mean()),
        l2_max=float(l2.max()),
        ssim_dissimilarity_mean=float(dssim.mean()),
    )
    return AttackOutcome(
        x_adv=x_adv_all,
        y=y_cpu,
        index=index,
        clean_pred=clean_pred,
        adv_pred=adv_pred,
        linf=linf,
        l2=l2,
        ssim_dissimilarity=dssim,
        metrics=metrics,
        attack=attack_record(spec, attack),
        time_s=elapsed,
        targets=None if targets is None else targets.to(torch.int64).cpu(),
    )


# ---- files -----------------------------------------------------------------------------------


def build_summary(
    outcome: AttackOutcome,
    *,
    label: str,
    checkpoint: dict[str, Any],
    data: dict[str, Any],
    provenance: dict[str, Any],
    outputs: dict[str, str | None],
) -> dict[str, Any]:
    """The `advcli.attack/1` summary mapping (numbers as numbers, never strings)."""
    summary = {
        "schema": SUMMARY_SCHEMA,
        "label": label,
        "checkpoint": checkpoint,
        "attack": outcome.attack,
        "data": data,
        "metrics": outcome.metrics.as_dict(),
        "time_s": round(outcome.time_s, 3),
        "provenance": provenance,
        "outputs": outputs,
    }
    return plain(summary)


def write_summary(path: str | Path, summary: dict[str, Any]) -> Path:
    return atomic_write_text(path, yaml.safe_dump(plain(summary), sort_keys=False))


def read_summary(path: str | Path) -> dict[str, Any]:
    """Load an `advcli.attack/1` summary, with a clear error for anything else."""
    p = Path(path)
    data = read_yaml_document(p, what="attack summary", schema=SUMMARY_SCHEMA, make_hint="run `advcli attack` first")
    metrics = data.get("metrics")
    if not isinstance(metrics, dict) or not all(
        v is None or (isinstance(v, (int, float)) and not math.isnan(v)) for v in metrics.values()
    ):
        raise ResultsError(f"{str(p)!r} has malformed metrics; re-create it with `advcli attack`")
    return data
