"""`advcli eval`: clean accuracy, PGD at several eps, AutoAttack, transfer from an adversarial
set, and the per-example worst case. Returns an `EvalResult`; writing it is the caller's job.

- Examples: `advcli.data.test_subset(labels, n, seed)` (the documented "first n": a seeded,
  class-interleaved order), identified in the result by the hash of their indices and of their
  pixels, so compare can tell when two files saw the same examples.
- Every robust flag implies clean-correct, on every path (PGD, AutoAttack, transfer, worst).
- PGD attacks only the examples the model classifies correctly: a misclassified example is
  already non-robust and needs no attack steps. It runs with `keep=first-success` (the
  default of `EvalOptions.keep`): an example is robust only if no iterate of any restart, the
  random start included, is misclassified (`advcli.attacks.base.Keep`); the entry records the
  rule as `keep`. Every batch draws its random start from its own generator, seeded by
  (seed, batch number), so an eps's numbers do not depend on which other eps were run, and
  under torchrun (batches dealt out across ranks, flags gathered) the result is identical to a
  single-process run.
- AutoAttack runs through `advcli.attacks.autoattack.run_autoattack` (the authors' package);
  its flags are ANDed with our clean flags, its perturbation size is checked against eps, and
  its warnings are kept in the entry.
- Transfer: the model's verdict on a precomputed adversarial set, ANDed with its verdict on the
  set's clean images (taken from the dataset by the set's indices); the accuracy on the
  adversarial images alone is kept as `adv_accuracy`.
- Worst case per (norm, eps): an example counts as robust only if it is correct clean and
  under every attack run at that eps (the AND of the flags, clean included).
- The threat model defaults to the checkpoint's `threat_model` (norm and eps), else Linf 8/255.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from advcli import distributed
from advcli.advset import AdvSet, AdvSetError, load_adv_set
from advcli.attacks.base import Keep, full_precision
from advcli.checkpoint import LoadedCheckpoint, load_checkpoint
from advcli.config import DEFAULT_EPS, Eps, Norm, parse_choice, parse_eps
from advcli.data.for_checkpoint import dataset_for_checkpoint
from advcli.errors import UsageError
from advcli.progress import NullReporter, Reporter
from advcli.provenance import provenance
from advcli.results import (
    DataInfo,
    Entry,
    EvalResult,
    ModelInfo,
    index_sha256,
    trained_with_text,
)
from advcli.rng import Stream, stream_generator


@dataclass
class EvalOptions:
    """Resolved options of `advcli eval` (eps/norm None = from the checkpoint)."""

    n: int | None = 1000
    eps: list[Eps] | None = None
    norm: Norm | None = None
    pgd: bool = True
    pgd_steps: int = 10
    restarts: int = 1
    step_size: Eps | None = None
    keep: Keep = Keep.first_success
    autoattack: bool = False
    aa_version: str = "standard"
    aa_attacks: list[str] | None = None
    aa_restarts: int | None = None
    adv_data: Path | None = None
    batch_size: int = 256
    seed: int = 0
    split: str = "test"
    dataset: str | None = None
    data_dir: str | None = None
    label: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- threat model

def resolve_threat(
    meta: dict[str, Any], norm: Norm | str | None, eps: Sequence[Eps] | None
) -> tuple[Norm, list[Eps], str]:
    """(norm, eps list, where they came from): flags, else the checkpoint, else Linf 8/255."""
    tm = meta.get("threat_model") if isinstance(meta.get("threat_model"), dict) else None
    tm_norm = None
    if tm and tm.get("norm"):
        tm_norm = parse_choice(Norm, tm["norm"], name="norm")
    chosen = parse_choice(Norm, norm, name="norm") if norm is not None else (tm_norm or Norm.linf)
    if eps:
        return chosen, list(eps), "command line"
    if tm and tm_norm is chosen and tm.get("eps") is not None:
        text = tm.get("eps_text") or str(tm["eps"])
        return chosen, [parse_eps(text, name="threat_model.eps")], "checkpoint threat model"
    return chosen, [parse_eps(DEFAULT_EPS[chosen])], "default"


# --------------------------------------------------------------------------- building blocks

def predict_flags(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device
) -> np.ndarray:
    """Per-example correctness of the model's predictions (x on any device, float [0, 1]), in
    fp32."""
    out = np.zeros(len(y), dtype=bool)
    model.eval()
    with torch.no_grad(), full_precision(device):
        for i in range(0, len(y), batch_size):
            xb = x[i:i + batch_size].to(device, non_blocking=True)
            yb = y[i:i + batch_size].to(device, non_blocking=True)
            out[i:i + batch_size] = (model(xb).argmax(1) == yb).cpu().numpy()
    return out


def _gather_max(value: float) -> float:
    if not distributed.current().enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t[0])


def _perturbation(x_adv: torch.Tensor, x: torch.Tensor, norm: Norm) -> float:
    d = (x_adv.detach().float().cpu() - x.detach().float().cpu()).flatten(1)
    if d.numel() == 0:
        return 0.0
    per = d.abs().amax(1) if norm is Norm.linf else d.norm(dim=1)
    return float(per.max())


def pgd_entry(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    clean: np.ndarray,
    *,
    norm: Norm,
    eps: Eps,
    steps: int,
    restarts: int,
    step_size: Eps | None,
    batch_size: int,
    seed: int,
    device: torch.device,
    reporter: Reporter,
    keep: Keep | str = Keep.first_success,
) -> Entry:
    """PGD on the clean-correct examples only; flags = clean AND not fooled, under `keep`'s
    rule (first-success: by no iterate)."""
    from advcli.attacks import AttackSpec, attack_record, build_attack

    spec = AttackSpec(name="pgd", norm=norm, eps=eps, steps=steps, step_size=step_size,
                      restarts=restarts, keep=keep)
    attack = build_attack(spec)
    record = attack_record(spec, attack)
    t0 = time.perf_counter()
    flags = clean.copy()
    todo = np.flatnonzero(clean)
    survived = np.full(len(todo), -1, dtype=np.int64)  # -1: a batch another rank handles
    n_batches = (len(todo) + batch_size - 1) // batch_size
    reporter.start(f"pgd-{steps} {norm.value} eps={eps.text}", total=len(todo))
    worst_delta = 0.0
    # NHWC for the attack loop: 1.3-1.7x faster PGD on CPU convolutions (benchmarks/run.py,
    # eval-pgd); results differ from NCHW only by float rounding. Restored in `finally`.
    model.to(memory_format=torch.channels_last)
    try:
        with full_precision(device):
            for b in distributed.my_batches(n_batches):
                sl = slice(b * batch_size, (b + 1) * batch_size)
                idx = torch.from_numpy(todo[sl])
                xb = x[idx].to(device).contiguous(memory_format=torch.channels_last)
                yb = y[idx].to(device)
                generator = stream_generator(seed, b, 0, Stream.eval_attack)
                # The attack's own verdict on the image it keeps: no forward pass of our own.
                run = attack.run(model, xb, yb, generator=generator)
                survived[sl] = (~run.fooled).cpu().numpy()
                worst_delta = max(worst_delta, _perturbation(run.x_adv, xb, norm))
                reporter.advance(len(idx) * distributed.current().world_size)
    finally:
        model.to(memory_format=torch.contiguous_format)
        reporter.finish()
    flags[todo] = distributed.gather_flags(survived) == 1
    worst_delta = _gather_max(worst_delta)
    params = {k: record[k] for k in ("steps", "step_size", "restarts", "keep") if k in record}
    params["max_perturbation"] = worst_delta
    return Entry(attack="pgd", accuracy=float(flags.mean()) if len(flags) else 0.0,
                 n=len(flags), norm=norm.value, eps=eps.value, eps_text=eps.text, flags=flags,
                 params=params, time_s=time.perf_counter() - t0)


def autoattack_entry(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    clean: np.ndarray,
    *,
    norm: Norm,
    eps: Eps,
    version: str,
    attacks: Sequence[str] | None,
    batch_size: int,
    seed: int,
    device: torch.device,
    reporter: Reporter,
    restarts: int | None = None,
) -> Entry:
    """AutoAttack on every example; flags = its robust flags AND our clean flags."""
    from advcli.attacks.autoattack import run_autoattack

    t0 = time.perf_counter()
    # AutoAttack runs chunk by chunk (a chunk = --batch-size examples, seeded by its number),
    # so that under torchrun the chunks can be dealt out across ranks with the same result.
    robust = np.full(len(y), -1, dtype=np.int64)
    delta, warnings, ran = 0.0, [], list(attacks or [])
    used_restarts: int | None = restarts
    n_chunks = (len(y) + batch_size - 1) // batch_size
    for c in distributed.my_batches(n_chunks):
        sl = slice(c * batch_size, (c + 1) * batch_size)
        xd, yd = x[sl].to(device).contiguous(), y[sl].to(device).contiguous()
        with full_precision(device):
            res = run_autoattack(model, xd, yd, norm, eps, version=version,
                                 attacks=list(attacks) if attacks else None,
                                 batch_size=batch_size, seed=seed + c, reporter=reporter,
                                 restarts=restarts)
        used_restarts = res.restarts
        robust[sl] = res.robust_flags.detach().cpu().numpy().astype(np.int64)
        delta = max(delta, _perturbation(res.x_adv, xd, norm))
        warnings += [w for w in res.warnings if w not in warnings]
        ran = list(res.attacks) if res.attacks else ran
    robust = distributed.gather_flags(robust) == 1
    delta = _gather_max(delta)
    flags = robust & clean
    if delta > eps.value + 1e-5:
        warnings.append(
            f"AutoAttack returned a perturbation of {delta:.6g} > eps {eps.value:.6g} "
            f"({norm.value})"
        )
    disagree = int(np.count_nonzero(robust & ~clean))
    if disagree:
        warnings.append(f"{disagree} examples AutoAttack counted as robust are misclassified "
                        "clean here; the model may be non-deterministic")
    params: dict[str, Any] = {"version": version, "attacks": ran}
    if used_restarts is not None:
        params["restarts"] = used_restarts
    params["max_perturbation"] = delta
    return Entry(attack="autoattack", accuracy=float(flags.mean()) if len(flags) else 0.0,
                 n=len(flags), norm=norm.value, eps=eps.value, eps_text=eps.text, flags=flags,
                 params=params, warnings=warnings, time_s=time.perf_counter() - t0)


def transfer_entry(
    model: nn.Module, adv: AdvSet, x_clean: torch.Tensor, *, batch_size: int, device: torch.device
) -> Entry:
    """The model on a precomputed adversarial set, recording where it came from. Robust =
    correct on the adversarial image AND on its clean image (`x_clean`, float, the set's
    examples in its order); the accuracy on the adversarial images alone is `adv_accuracy`."""
    t0 = time.perf_counter()
    on_adv = predict_flags(model, adv.x_adv, adv.y, batch_size, device)
    flags = on_adv & predict_flags(model, x_clean, adv.y, batch_size, device)
    attack = adv.attack
    eps = attack.get("eps")
    return Entry(
        attack="transfer",
        accuracy=float(flags.mean()) if len(flags) else 0.0,
        n=len(flags),
        norm=attack.get("norm") if eps is not None else None,
        eps=None if eps is None else float(eps),
        eps_text=attack.get("eps_text") if eps is not None else None,
        flags=flags,
        params={"source": adv.source(),
                "adv_accuracy": float(on_adv.mean()) if len(on_adv) else 0.0},
        time_s=time.perf_counter() - t0,
        index_sha256=index_sha256(adv.index.numpy()),
    )


def clean_images_of(adv: AdvSet, data: Any, split: str) -> torch.Tensor:
    """The clean images of an adversarial set's examples (float [0, 1]), from the dataset by the
    set's indices, checked against its labels."""
    from advcli.data import to_float

    split = adv.split or split
    xs, ys = data.split(split)
    index = adv.index.to(torch.int64)
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= len(ys)):
        raise AdvSetError(f"{str(adv.path)!r} indexes examples beyond the {len(ys)} of "
                          f"{data.name}/{split}; it was made from other data")
    if not torch.equal(ys[index].to(torch.int64), adv.y.to(torch.int64)):
        raise AdvSetError(f"the labels in {str(adv.path)!r} differ from {data.name}/{split} at its "
                          "indices; it was made from other data (re-create it with `advcli attack`)")
    return to_float(xs[index])


def worst_entries(entries: Sequence[Entry], index_hash: str) -> list[Entry]:
    """Per (norm, eps): the AND of the clean flags and of the flags of every attack run there
    (on these examples), so that "worst case" can never exceed clean accuracy."""
    clean = next((e.flags for e in entries if e.is_clean and e.flags is not None), None)
    groups: dict[tuple[str | None, float | None], list[Entry]] = {}
    for e in entries:
        if e.is_clean or e.attack == "worst" or e.flags is None or e.eps is None:
            continue
        if e.index_sha256 is not None and e.index_sha256 != index_hash:
            continue  # a transfer set on other examples cannot be ANDed per example
        groups.setdefault((e.norm, e.eps_key()), []).append(e)
    out = []
    for members in groups.values():
        flags = np.logical_and.reduce([m.flags for m in members if m.flags is not None])
        if clean is not None:
            flags = flags & clean
        first = members[0]
        out.append(Entry(attack="worst", accuracy=float(flags.mean()) if len(flags) else 0.0,
                         n=len(flags), norm=first.norm, eps=first.eps, eps_text=first.eps_text,
                         flags=flags, params={"of": [m.attack for m in members]}))
    return out


# --------------------------------------------------------------------------- the stage

def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: Norm,
    eps_list: Sequence[Eps],
    opts: EvalOptions,
    device: torch.device,
    reporter: Reporter | None = None,
) -> list[Entry]:
    """Clean, PGD per eps, AutoAttack per eps and the worst case on (x, y); x float [0, 1]."""
    reporter = reporter or NullReporter()
    if opts.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {opts.batch_size}")
    model.to(device).eval()
    t0 = time.perf_counter()
    clean = predict_flags(model, x, y, opts.batch_size, device)
    entries = [Entry(attack="clean", accuracy=float(clean.mean()) if len(clean) else 0.0,
                     n=len(clean), flags=clean, time_s=time.perf_counter() - t0)]
    reporter.log(f"clean accuracy {100 * entries[0].accuracy:.2f}% on {len(clean)} examples")
    for eps in eps_list:
        if opts.pgd:
            e = pgd_entry(model, x, y, clean, norm=norm, eps=eps, steps=opts.pgd_steps,
                          restarts=opts.restarts, step_size=opts.step_size,
                          batch_size=opts.batch_size, seed=opts.seed, device=device,
                          reporter=reporter, keep=opts.keep)
            reporter.log(f"pgd-{opts.pgd_steps} {norm.value} eps={eps.text}: "
                         f"{100 * e.accuracy:.2f}% ({e.time_s:.1f}s)")
            entries.append(e)
        if opts.autoattack:
            e = autoattack_entry(model, x, y, clean, norm=norm, eps=eps,
                                 version=opts.aa_version, attacks=opts.aa_attacks,
                                 restarts=opts.aa_restarts, batch_size=opts.batch_size,
                                 seed=opts.seed, device=device, reporter=reporter)
            reporter.log(f"autoattack {opts.aa_version} {norm.value} eps={eps.text}: "
                         f"{100 * e.accuracy:.2f}% ({e.time_s:.1f}s)")
            entries.append(e)
    return entries


def examples_sha256(x: torch.Tensor, y: torch.Tensor) -> str:
    """Identify the examples by content (pixels and labels), not just by index."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x.cpu().numpy()).tobytes())
    h.update(np.asarray(y.cpu().numpy(), dtype="<i8").tobytes())
    return h.hexdigest()


def run_eval(
    checkpoint: str | Path | LoadedCheckpoint,
    opts: EvalOptions,
    *,
    device: torch.device,
    reporter: Reporter | None = None,
    data: Any = None,
) -> EvalResult:
    """Load the checkpoint and its data, evaluate, and describe everything in an EvalResult.

    `data` (an `advcli.data.ImageData`) skips loading the dataset (tests, notebooks).
    """
    from advcli.data import test_subset, to_float

    reporter = reporter or NullReporter()
    t0 = time.perf_counter()
    ckpt = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load_checkpoint(
        checkpoint, device)
    meta = ckpt.meta
    norm, eps_list, eps_source = resolve_threat(meta, opts.norm, opts.eps)
    if opts.pgd or opts.autoattack:
        reporter.log(f"threat model {norm.value} eps {', '.join(e.text for e in eps_list)} "
                     f"({eps_source})")
    if data is None:
        data = dataset_for_checkpoint(meta, name=str(ckpt.path), dataset=opts.dataset, data_dir=opts.data_dir)
    adv = None if opts.adv_data is None else load_adv_set(opts.adv_data, dataset=data.name)
    split_x, split_y = data.split(opts.split)
    idx = test_subset(split_y, opts.n, seed=opts.seed)
    x, y = to_float(split_x[idx]), split_y[idx].long()
    ihash = index_sha256(idx.numpy())
    entries = evaluate(ckpt.model, x, y, norm=norm, eps_list=eps_list, opts=opts, device=device,
                       reporter=reporter)
    if adv is not None:
        entry = transfer_entry(ckpt.model, adv, clean_images_of(adv, data, opts.split),
                               batch_size=opts.batch_size, device=device)
        if entry.index_sha256 == ihash:
            entry.index_sha256 = None  # the same examples as the rest of the file
        reporter.log(f"transfer from {opts.adv_data}: {100 * entry.accuracy:.2f}% "
                     f"on {entry.n} examples")
        entries.append(entry)
    entries += worst_entries(entries, ihash)
    threat = meta.get("threat_model") if isinstance(meta.get("threat_model"), dict) else None
    label = opts.label or meta.get("label") or ckpt.path.name.removesuffix(".safetensors")
    return EvalResult(
        label=str(label),
        model=ModelInfo(
            checkpoint=str(ckpt.path),
            sha256=ckpt.sha256,
            arch=meta.get("arch"),
            trained_with=trained_with_text(threat),
            seed=meta.get("seed") if isinstance(meta.get("seed"), int) else None,
            threat_model=threat,
        ),
        data=DataInfo(dataset=data.name, split=opts.split, n=len(y), seed=opts.seed,
                      index_sha256=ihash, examples_sha256=examples_sha256(split_x[idx], y)),
        entries=entries,
        seed=opts.seed,
        time_s=time.perf_counter() - t0,
        provenance=provenance(opts.seed, {"checkpoint_sha256": ckpt.sha256,
                                          "device": str(device), "options": opts.config}),
    )
