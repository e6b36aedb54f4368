"""`run_audit`: load what is audited (a checkpoint, `--model` user code, `--wrap` around it),
take the first n test examples (in `--subset`'s order), run the selected checks, and describe it all in an
`AuditResult` (writing it is the caller's job).

Checks run in the order that lets later ones reuse earlier attacks: gradients (with the probe
that decides how to attack: graph cut, randomness), curve, single-step, convergence, then
black-box and transfer (judged against every white-box attack run before them), precision.
They are reported in their own order (1-7). torch's global random state is forked and seeded
with `--seed`, so a randomised defence gives the same audit twice and the caller's random
streams are untouched.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from advcli.attacks.base import attack_mode
from advcli.audit import black_box, convergence, curve, gradients, precision, single_step, transfer
from advcli.audit.context import AuditContext, AuditOptions, ZeroGradientPath, accuracy
from advcli.audit.file import AuditResult, CheckResult
from advcli.audit.limits import ALL_CHECKS, TITLES, CheckName, Status, worst
from advcli.data.for_checkpoint import check_fits
from advcli.errors import CheckpointError, UsageError
from advcli.models.checkpoint import LoadedCheckpoint, load_checkpoint
from advcli.models.layout import use_channels_last
from advcli.models.user import Target, check_logits, load_target
from advcli.progress import NullReporter, Reporter

RUN_ORDER = (CheckName.gradients, CheckName.curve, CheckName.single_step, CheckName.convergence,
             CheckName.black_box, CheckName.transfer, CheckName.precision)


def run_audit(
    checkpoint: str | Path | LoadedCheckpoint | None,
    opts: AuditOptions,
    *,
    device: torch.device,
    reporter: Reporter | None = None,
    data: Any = None,
) -> AuditResult:
    """Audit the evaluation of a checkpoint (or of `opts.model`, wrapped in `opts.wrap`).

    `data` (an `advcli.data.ImageData`) skips loading the dataset (tests, notebooks).
    """
    fork = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(opts.seed)
        return _audit(checkpoint, opts, device, reporter or NullReporter(), data)


def _audit(checkpoint: str | Path | LoadedCheckpoint | None, opts: AuditOptions, device: torch.device,
           reporter: Reporter, data: Any) -> AuditResult:
    t0 = time.perf_counter()
    for name in ("n", "batch_size", "pgd_steps", "curve_steps", "strong_steps", "strong_restarts",
                 "square_n", "eot_samples"):
        value = getattr(opts, name)
        if value is not None and int(value) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if opts.amp == "fp16" and device.type != "cuda" and CheckName.precision in opts.checks:
        raise UsageError("--amp fp16 needs a CUDA device (--device cuda); use --amp bf16 on the CPU")
    target = load_target(checkpoint, model=opts.model, wrap=opts.wrap, device=device, dataset=opts.dataset,
                         norm=opts.norm, model_dir=opts.model_dir)
    # Every input is read before the first attack: a bad surrogate costs a second, not the audit.
    surrogate = _load_surrogate(opts, device)
    with attack_mode(target.model):  # every module's own training flag comes back afterwards
        return _audit_target(target, surrogate, opts, t0=t0, device=device, reporter=reporter, data=data)


def _audit_target(target: Target, surrogate: LoadedCheckpoint | None, opts: AuditOptions, *, t0: float,
                  device: torch.device, reporter: Reporter, data: Any) -> AuditResult:
    from advcli.data import to_float
    from advcli.data.for_checkpoint import skipped_line, view_record
    from advcli.data.subsets import subset_record
    from advcli.evaluate.run import examples_sha256, resolve_threat
    from advcli.formats.results import DataInfo, ModelInfo, index_sha256, trained_with_text
    from advcli.provenance import provenance

    base, model, meta = target.base, target.model, target.meta
    channels_last = use_channels_last(opts.channels_last, outside=target.outside)
    norm, eps_list, eps_source = resolve_threat(meta, opts.norm, [opts.eps] if opts.eps else None)
    eps = eps_list[0]
    if eps.value <= 0:
        raise UsageError("--eps must be > 0")
    data, idx, skipped = target.examples(dataset=opts.dataset, data_dir=opts.data_dir, split=opts.split,
                                         n=opts.n, seed=opts.seed, subset=opts.subset, device=device,
                                         data=data, check_output=True, view=opts.view)
    if skipped:
        reporter.log(skipped_line(skipped))
    split_x, split_y = data.split(opts.split)
    x_uint8 = split_x[idx]  # decoded once: a streamed split decodes on every access
    x, y = to_float(x_uint8), split_y[idx].long()
    if surrogate is not None:
        _check_surrogate(surrogate, data, x[:2].to(device))
    reporter.log(f"audit: {norm.value} eps {eps.text} ({eps_source}), {len(y)} examples of "
                 f"{data.name}/{opts.split}, checks {', '.join(c.value for c in opts.checks)}")

    graph_cut, randomised = gradients.probe(model, x, y, device)
    if graph_cut:
        model = ZeroGradientPath(model)
        reporter.log("audit: the output has no gradient path to the input; attacks see zero gradients")
    if randomised:
        reporter.log(f"audit: pyautoattack: {randomised}")
    ctx = AuditContext(model=model, base=base if opts.wrap else None, x=x, y=y, clean=np.zeros(len(y), dtype=bool),
                       norm=norm, eps=eps, opts=opts, device=device, reporter=reporter,
                       num_classes=data.num_classes, meta=meta, graph_cut=graph_cut,
                       randomised=randomised is not None, probe_notes=[randomised] if randomised else [],
                       channels_last=channels_last)
    ctx.clean = ctx.predict(model, x) == y.numpy()
    results: dict[CheckName, CheckResult] = {}
    for check in RUN_ORDER:
        if check not in opts.checks:
            continue
        if check is CheckName.transfer:
            res = transfer.run(ctx, _surrogates(surrogate, ctx))
        else:
            res = {CheckName.gradients: gradients.run, CheckName.curve: curve.run,
                   CheckName.single_step: single_step.run, CheckName.convergence: convergence.run,
                   CheckName.black_box: black_box.run, CheckName.precision: precision.run}[check](ctx)
        res.title = TITLES[check]
        results[check] = res
        reporter.log(f"audit: {res.title}: {res.status} ({res.measured})")
    checks = [results[c] for c in ALL_CHECKS if c in results]
    verdict = worst([Status(c.status) for c in checks])
    threat = meta.get("threat_model") if isinstance(meta.get("threat_model"), dict) else None
    codes = target.user_code()
    ckpt_path = None if target.checkpoint is None else str(target.checkpoint)
    return AuditResult(
        label=target.label(opts.label),
        verdict=verdict.value,
        model=ModelInfo(checkpoint=ckpt_path, sha256=target.sha256, arch=target.arch,
                        trained_with=trained_with_text(threat),
                        seed=meta.get("seed") if isinstance(meta.get("seed"), int) else None,
                        threat_model=threat),
        data=DataInfo(dataset=data.name, split=opts.split, n=len(y), seed=opts.seed,
                      **subset_record(opts.subset), **view_record(data, skipped),
                      index_sha256=index_sha256(idx.numpy()), examples_sha256=examples_sha256(x_uint8, y)),
        threat_model={"norm": norm.value, "eps": eps.value, "eps_text": eps.text, "source": eps_source},
        clean_accuracy=accuracy(ctx.clean),
        checks=checks,
        user_code=codes,
        seed=opts.seed,
        time_s=time.perf_counter() - t0,
        provenance=provenance(opts.seed, {"checkpoint_sha256": target.sha256, "device": str(device),
                                          "user_code": codes, "options": opts.config,
                                          "channels_last": channels_last}),
    )


def _load_surrogate(opts: AuditOptions, device: torch.device) -> LoadedCheckpoint | None:
    if opts.surrogate is None or CheckName.transfer not in opts.checks:
        return None
    try:
        return load_checkpoint(opts.surrogate, device)
    except CheckpointError as exc:
        raise CheckpointError(f"--surrogate: {exc}") from exc


def _check_surrogate(sur: LoadedCheckpoint, data: Any, x: torch.Tensor) -> None:
    """The surrogate must fit the audited data: from its metadata, then one forward pass."""
    hint = "pass a --surrogate trained on the audited data"
    check_fits(sur.meta, str(sur.path), data, hint=hint)
    check_logits(sur.model, x, data.num_classes, f"--surrogate {str(sur.path)!r}")


def _surrogates(sur: LoadedCheckpoint | None, ctx: AuditContext) -> dict[str, nn.Module]:
    out: dict[str, nn.Module] = {}
    if sur is not None:
        out[f"surrogate {sur.path.name}"] = sur.model
    if ctx.base is not None:
        out["unwrapped model (BPDA)"] = ctx.base
    return out
