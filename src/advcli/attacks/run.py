"""The attack stage: adversarial examples for a split (or its first n examples), their summary
numbers, and the two files `advcli attack` writes.

- `attack_checkpoint(checkpoint, opts, device=, reporter=)`: loads the checkpoint (or
  `opts.model`, `--model FILE.py:CALLABLE`, with the checkpoint's weights when given) wrapped
  in `opts.wrap` (`--wrap FILE.py:CALLABLE`) through `advcli.models.user.load_target`, and its
  dataset, chooses the examples, attacks them and returns an `AttackResult`: the outcome, the
  summary document and what the adversarial set and the grid need. Writing them is the
  caller's job (`advcli attack` writes all or nothing). User code is recorded (file,
  callable, sha256, role) under the summary's and the set's `user_code`, and the label names
  the defence ("Robust + quantize").
- `run_attack` (pure): attacks the images batch by batch with a Reporter and returns an
  `AttackOutcome` (the adversarial images, predictions, per-example robust flags,
  perturbation norms and 1−SSIM, and `AttackMetrics`).
- Files: the adversarial set is `advcli.formats.advset`'s and the YAML summary (schema
  `advcli.attack/1`) `advcli.formats.results`'s (one module owns each format); `build_summary` makes
  the summary's mapping from an outcome.

Metric definitions (all fractions in [0, 1]):
- clean_accuracy: share of the n examples classified correctly before the attack;
- robust_accuracy: share of the n examples that are correct clean AND that the attack did not
  fool (under the attack's `keep` rule, recorded as the summary's `robust_rule`: with
  `first-success`, the default, no iterate of any restart fooled the model) AND whose kept
  adversarial image is classified correctly. A robust example is always clean-correct; this is
  the number to read as robust accuracy (compare's matrix does);
- adv_accuracy: accuracy on the adversarial images alone, over all n (an example misclassified
  clean but classified correctly after the attack counts here, never in robust_accuracy);
- success_rate: untargeted, the share of the clean-correct examples that are not robust;
  targeted, the share whose kept image is classified as its target; null when no example
  qualifies;
- linf_*/l2_*: per-example norms of x_adv − x (pixel units, [0, 1] scale), mean and max;
- ssim_dissimilarity_mean: mean over examples of 1 − SSIM(x, x_adv), SSIM from scikit-image
  (`structural_similarity`, colour channels via `channel_axis`, `data_range=1`, default
  7×7 uniform window, smaller for tiny images).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advcli.attacks import ROBUST_RULES, AttackSpec, attack_record, build_attack
from advcli.attacks.base import attack_mode, full_precision, lp_norms
from advcli.data import to_float
from advcli.data.for_checkpoint import skipped_line, view_record
from advcli.data.subsets import FileList, Subset, subset_record
from advcli.data.view import DataView
from advcli.errors import UsageError
from advcli.formats.results import ATTACK_SCHEMA
from advcli.io import plain
from advcli.models.checkpoint import LoadedCheckpoint
from advcli.models.layout import input_layout, model_layout
from advcli.progress import NullReporter, Reporter
from advcli.rng import Stream, stream_generator


@dataclass
class AttackMetrics:
    clean_accuracy: float
    robust_accuracy: float
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
    robust: torch.Tensor  # bool per example: clean-correct, never fooled, kept image correct
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
    channels_last: bool = False,
) -> AttackOutcome:
    """Attack (x, y) in batches. x: uint8 or float [N, C, H, W] on the CPU (converted per batch,
    so a whole training set never exists as floats twice); targets: the target classes when
    `spec.targeted`. Random starts draw from one CPU generator, the `attack` stream of `seed`
    (`advcli.rng`), so the result does not depend on the device. The attack runs in fp32 and reports, per example,
    whether it fooled the model under its `keep` rule (`Attack.run`)."""
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
    generator = stream_generator(int(seed), 0, 0, Stream.attack)

    x_adv_all = torch.empty((n, *x.shape[1:]), dtype=torch.float32)
    clean_pred = torch.empty(n, dtype=torch.int64)
    adv_pred = torch.empty(n, dtype=torch.int64)
    fooled = torch.empty(n, dtype=torch.bool)
    linf = torch.empty(n, dtype=torch.float64)
    l2 = torch.empty(n, dtype=torch.float64)
    dssim = torch.empty(n, dtype=torch.float64)

    t0 = time.perf_counter()
    reporter.start(f"{attack.name} attack", total=n)
    try:
        with attack_mode(model), full_precision(device), model_layout(model, channels_last):
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                xb = input_layout(to_float(x[start:stop]).to(device), channels_last)
                yb = y[start:stop].to(device)
                goal = yb if targets is None else targets[start:stop].to(device)
                run = attack.run(model, xb, goal, generator)
                xa = run.x_adv
                fooled[start:stop] = run.fooled.cpu()
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
    # Every robust flag implies clean-correct; the attack's own verdict (taken on every iterate
    # under first-success) and the verdict on the kept image must both say "not fooled".
    robust = clean_ok & adv_ok & ~fooled
    if targets is not None:
        success: float | None = float(adv_pred.eq(targets.cpu()).double().mean())
    else:
        base = int(clean_ok.sum())
        success = float((clean_ok & ~robust).sum()) / base if base else None
    metrics = AttackMetrics(
        clean_accuracy=float(clean_ok.double().mean()),
        robust_accuracy=float(robust.double().mean()),
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
        robust=robust,
        linf=linf,
        l2=l2,
        ssim_dissimilarity=dssim,
        metrics=metrics,
        attack=attack_record(spec, attack),
        time_s=elapsed,
        targets=None if targets is None else targets.to(torch.int64).cpu(),
    )


# ---- the stage -------------------------------------------------------------------------------


@dataclass
class AttackOptions:
    """Resolved options of `advcli attack` (checked at the boundary: see `cli/cmd_attack.py`).

    `out` and `grid` are only recorded in the summary's `outputs`; the caller writes them."""

    spec: AttackSpec
    split: str = "test"
    n: int | None = None
    subset: Subset | FileList = Subset.stratified  # how --n picks the examples
    batch_size: int = 256
    seed: int = 0
    dataset: str | None = None
    data_dir: str | None = None
    view: DataView = field(default_factory=DataView)  # --stream, --image-size, --skip-bad
    label: str | None = None
    model: str | None = None  # --model FILE.py:CALLABLE (the checkpoint, if any, holds its weights)
    wrap: str | None = None  # --wrap FILE.py:CALLABLE around the loaded model
    model_dir: str | None = None  # weights folder of a robustbench:NAME model
    channels_last: bool | None = None  # NHWC model and inputs; None = off (NCHW, as given)
    out: Path = Path("adv.safetensors")
    grid: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttackResult:
    """Everything `advcli attack` writes: the summary document, the adversarial set (outcome +
    `adv_meta`) and the grid (`preview`: the clean images of the first examples, float)."""

    outcome: AttackOutcome
    summary: dict[str, Any]
    adv_meta: dict[str, Any]
    classes: list[str]
    preview: torch.Tensor
    title: str


def attack_title(record: dict[str, Any]) -> str:
    """The attack as titles name it: "pgd linf eps=8/255", "stadv tau=0.05 bound=0.5 px"."""
    if record.get("eps_text"):
        return f"{record['name']} {record['norm']} eps={record['eps_text']}"
    if record.get("bound") is not None:
        return f"{record['name']} tau={record['tau']} bound={record['bound_text']} px"
    return f"{record['name']} tau={record.get('tau')}"


def attack_checkpoint(
    checkpoint: str | Path | LoadedCheckpoint | None,
    opts: AttackOptions,
    *,
    device: torch.device,
    reporter: Reporter | None = None,
    data: Any = None,
) -> AttackResult:
    """Load the checkpoint (or `opts.model`, wrapped in `opts.wrap`) and its data, attack the
    chosen examples, describe it all.

    `data` (an `advcli.data.ImageData`) skips loading the dataset (tests, notebooks).
    """
    from advcli.formats.results import index_sha256, trained_with_text
    from advcli.models.user import load_target
    from advcli.provenance import provenance

    target = load_target(checkpoint, model=opts.model, wrap=opts.wrap, device=device, dataset=opts.dataset,
                         norm=opts.spec.norm, model_dir=opts.model_dir)
    meta = target.meta
    ckpt_label = target.base_label()
    trained_with = trained_with_text(meta.get("threat_model"))
    data, index, skipped = target.examples(dataset=opts.dataset, data_dir=opts.data_dir, split=opts.split,
                                           n=opts.n, seed=opts.seed, subset=opts.subset, device=device,
                                           data=data, view=opts.view)
    if skipped and reporter is not None:
        reporter.log(skipped_line(skipped))
    xs, ys = data.split(opts.split)
    x, y = xs[index], ys[index]

    channels_last = bool(opts.channels_last)
    outcome = run_attack(target.model, x, y, opts.spec, index=index, batch_size=opts.batch_size,
                         seed=opts.seed, device=device, reporter=reporter,
                         channels_last=channels_last)
    label = target.label(opts.label)
    ckpt_path = None if target.checkpoint is None else str(target.checkpoint)
    user_code = target.user_code()
    summary = build_summary(
        outcome,
        label=label,
        checkpoint={"path": ckpt_path, "sha256": target.sha256, "label": ckpt_label,
                    "trained_with": trained_with, "arch": target.arch},
        user_code=user_code,
        data={"dataset": data.name, "split": opts.split, "n": int(y.shape[0]), "seed": int(opts.seed),
              **subset_record(opts.subset), "index_sha256": index_sha256(index),
              **view_record(data, skipped)},
        provenance=provenance(opts.seed, {"device": str(device), "channels_last": channels_last}),
        outputs={"adv": str(opts.out), "grid": str(opts.grid) if opts.grid else None},
    )
    adv_meta: dict[str, Any] = {
        "checkpoint": ckpt_path,
        "checkpoint_sha256": target.sha256,
        "label": label,
        "trained_with": trained_with,
        "dataset": data.name,
        "split": opts.split,
        "seed": int(opts.seed),
        "classes": list(data.classes),
    }
    if user_code:
        adv_meta["user_code"] = user_code
    return AttackResult(outcome=outcome, summary=summary, adv_meta=adv_meta,
                        classes=list(data.classes), preview=to_float(x[:8]),
                        title=f"{label}: {attack_title(outcome.attack)}")


# ---- files -----------------------------------------------------------------------------------


def build_summary(
    outcome: AttackOutcome,
    *,
    label: str,
    checkpoint: dict[str, Any],
    data: dict[str, Any],
    provenance: dict[str, Any],
    outputs: dict[str, str | None],
    user_code: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """The `advcli.attack/1` summary mapping (numbers as numbers, never strings); `user_code`
    (the `--model`/`--wrap` files, `UserCode.to_dict()`) only when there is some."""
    summary: dict[str, Any] = {
        "schema": ATTACK_SCHEMA,
        "label": label,
        "checkpoint": checkpoint,
    }
    if user_code:
        summary["user_code"] = user_code
    summary |= {
        "attack": outcome.attack,
        "data": data,
        "robust_rule": ROBUST_RULES.get(str(outcome.attack.get("keep")), None),
        "metrics": outcome.metrics.as_dict(),
        "time_s": round(outcome.time_s, 3),
        "provenance": provenance,
        "outputs": outputs,
    }
    return plain(summary)
