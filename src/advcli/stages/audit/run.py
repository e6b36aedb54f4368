"""`run_audit`: load what is audited (a checkpoint, `--model` user code, `--wrap` around it),
take the first n test examples, run the selected checks, and describe it all in an
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

from advcli.audit_file import AuditResult, CheckResult
from advcli.checkpoint import LoadedCheckpoint, load_checkpoint, read_metadata
from advcli.errors import AdvcliError, UsageError
from advcli.io import sha256_file
from advcli.progress import NullReporter, Reporter
from advcli.stages.audit import black_box, convergence, curve, gradients, precision, single_step, transfer
from advcli.stages.audit.context import AuditContext, AuditOptions, ZeroGradientPath, accuracy
from advcli.stages.audit.limits import ALL_CHECKS, TITLES, CheckName, Status, worst

RUN_ORDER = (CheckName.gradients, CheckName.curve, CheckName.single_step, CheckName.convergence,
             CheckName.black_box, CheckName.transfer, CheckName.precision)


def _load_target(checkpoint: str | Path | LoadedCheckpoint | None, opts: AuditOptions,
                 device: torch.device) -> tuple[nn.Module, dict[str, Any], str | None, str | None, list[Any]]:
    """(model, metadata, checkpoint path, its sha256, user code records) before any --wrap."""
    from advcli.models.user import load_user_model

    if opts.model:
        path = None if checkpoint is None else Path(str(getattr(checkpoint, "path", checkpoint)))
        model, code = load_user_model(opts.model, weights=path)
        meta = read_metadata(path) if path is not None else {}
        return model, meta, None if path is None else str(path), None if path is None else sha256_file(path), [code]
    if checkpoint is None:
        raise UsageError("name the checkpoint to audit, or pass --model FILE.py:CALLABLE")
    ckpt = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load_checkpoint(checkpoint, device)
    return ckpt.model, ckpt.meta, str(ckpt.path), ckpt.sha256, []


def _check_outputs(model: nn.Module, x: torch.Tensor, num_classes: int, name: str) -> None:
    with torch.no_grad():
        out = model(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape != (len(x), num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise AdvcliError(f"{name} returned {shape} for {len(x)} images; it must return logits of shape "
                          f"[N, {num_classes}] (one row per image, one column per class)")


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
    from advcli.data import test_subset, to_float
    from advcli.data.for_checkpoint import dataset_for_checkpoint
    from advcli.models.user import wrap_model
    from advcli.provenance import provenance
    from advcli.results import DataInfo, ModelInfo, index_sha256, trained_with_text
    from advcli.stages.evaluate import examples_sha256, resolve_threat

    t0 = time.perf_counter()
    for name in ("n", "batch_size", "pgd_steps", "curve_steps", "strong_steps", "strong_restarts",
                 "square_n", "eot_samples"):
        value = getattr(opts, name)
        if value is not None and int(value) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if opts.amp == "fp16" and device.type != "cuda" and CheckName.precision in opts.checks:
        raise UsageError("--amp fp16 needs a CUDA device (--device cuda); use --amp bf16 on the CPU")
    base, meta, ckpt_path, ckpt_sha, code = _load_target(checkpoint, opts, device)
    model = base
    if opts.wrap:
        model, wrap_code = wrap_model(base, opts.wrap)
        code.append(wrap_code)
    norm, eps_list, eps_source = resolve_threat(meta, opts.norm, [opts.eps] if opts.eps else None)
    eps = eps_list[0]
    if eps.value <= 0:
        raise UsageError("--eps must be > 0")
    name = ckpt_path or (code[0].spec if code else "model")
    if data is None:
        data = dataset_for_checkpoint(meta, name=name, dataset=opts.dataset, data_dir=opts.data_dir)
    split_x, split_y = data.split(opts.split)
    idx = test_subset(split_y, opts.n, seed=opts.seed)
    x, y = to_float(split_x[idx]), split_y[idx].long()
    base.to(device).eval()
    model.to(device).eval()
    _check_outputs(model, x[:2].to(device), data.num_classes, code[-1].spec if code else name)
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
                       randomised=randomised is not None, probe_notes=[randomised] if randomised else [])
    ctx.clean = ctx.predict(model, x) == y.numpy()
    results: dict[CheckName, CheckResult] = {}
    for check in RUN_ORDER:
        if check not in opts.checks:
            continue
        if check is CheckName.transfer:
            res = transfer.run(ctx, _surrogates(opts, ctx, data, device))
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
    label = opts.label
    if not label:
        label = meta.get("label") or (Path(ckpt_path).name.removesuffix(".safetensors") if ckpt_path
                                      else code[0].callable)
        if opts.wrap:  # "Robust + quantize": the defence is part of what was audited
            label = f"{label} + {Path(code[-1].path).stem}"
    codes = [{"role": c.role, **c.to_dict()} for c in code]
    return AuditResult(
        label=str(label),
        verdict=verdict.value,
        model=ModelInfo(checkpoint=ckpt_path, sha256=ckpt_sha,
                        arch=meta.get("arch") if not opts.model else f"user:{code[0].spec}",
                        trained_with=trained_with_text(threat),
                        seed=meta.get("seed") if isinstance(meta.get("seed"), int) else None,
                        threat_model=threat),
        data=DataInfo(dataset=data.name, split=opts.split, n=len(y), seed=opts.seed,
                      index_sha256=index_sha256(idx.numpy()), examples_sha256=examples_sha256(split_x[idx], y)),
        threat_model={"norm": norm.value, "eps": eps.value, "eps_text": eps.text, "source": eps_source},
        clean_accuracy=accuracy(ctx.clean),
        checks=checks,
        user_code=codes,
        seed=opts.seed,
        time_s=time.perf_counter() - t0,
        provenance=provenance(opts.seed, {"checkpoint_sha256": ckpt_sha, "device": str(device),
                                          "user_code": codes, "options": opts.config}),
    )


def _surrogates(opts: AuditOptions, ctx: AuditContext, data: Any, device: torch.device) -> dict[str, nn.Module]:
    out: dict[str, nn.Module] = {}
    if opts.surrogate is not None:
        sur = load_checkpoint(opts.surrogate, device)
        _check_outputs(sur.model, ctx.x[:2].to(device), data.num_classes, str(opts.surrogate))
        out[f"surrogate {sur.path.name}"] = sur.model
    if ctx.base is not None:
        out["unwrapped model (BPDA)"] = ctx.base
    return out
