# Over 500 lines: the eval stage, its entries and its --dry-run plan; split planned.
"""`advcli eval`: clean accuracy, PGD at several eps, AutoAttack, transfer from an adversarial
set, and the per-example worst case. Returns an `EvalResult`; writing it is the caller's job.

- Examples: `advcli.data.test_subset(labels, n, seed, subset)` (the documented "first n": by
  default a seeded, class-interleaved order; `subset=first` the dataset's own order), identified
  in the result by `subset` and by the hash of their indices and of their pixels, so compare
  can tell when two files saw the same examples.
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
- The fast worst-case evaluation (`--fast-worst-case`, `advcli.evaluate.fast`): APGD-CE then
  MALT-targeted APGD, entry `apgd-ce+malt-t3`, chunked, seeded and resumed as AutoAttack is.
- Transfer: the model's verdict on a precomputed adversarial set, ANDed with its verdict on the
  set's clean images (taken from the dataset by the set's indices); the accuracy on the
  adversarial images alone is kept as `adv_accuracy`.
- Worst case per (norm, eps): an example counts as robust only if it is correct clean and
  under every attack run at that eps (the AND of the flags, clean included).
- The threat model defaults to the checkpoint's `threat_model` (norm and eps), else Linf 8/255.
- Any model, any defence: `EvalOptions.model` (`--model FILE.py:CALLABLE`, weights from the
  checkpoint when given) and `.wrap` (`--wrap FILE.py:CALLABLE` around the loaded model) go
  through `advcli.models.user.load_target`; the result records their files' sha256 under
  `user_code`, the label names the defence ("Robust + quantize"), and a resume is refused when
  the code's sha256 or the sha256 of the weights it built differs (user code is built with
  torch seeded to 0, so a module initialised at random is the same module every run). PGD,
  AutoAttack and transfer attack the wrapped model, and the clean flags they are ANDed with
  are the wrapped model's.
- Chunks, kills and resume: PGD and AutoAttack run chunk by chunk (a chunk = --batch-size
  examples, seeded by its number alone), and every finished chunk is recorded in the progress
  file beside `-o` (`advcli.evaluate.progress_file`). `--resume` skips the recorded chunks, and since no
  chunk depends on what ran before it, the result equals an uninterrupted run's in every field
  but those listed in `provenance.varies_between_runs` (times, argv, date, the resume itself).
  Under torchrun each round deals one pending chunk to every rank and shares the records
  (`advcli.evaluate.chunks`), so every rank holds all of them and rank 0 writes the file; a
  run can be resumed with another number of ranks.
- Time: after the first chunk of each kind of attack (PGD, AutoAttack) the remaining time is
  estimated from it and logged; `plan_eval` (`eval --dry-run`) says what would run and
  estimates PGD from one timed batch (AutoAttack's cost depends on how many examples survive
  each of its attacks, so it is only known after its first chunk, or from a progress file).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from advcli import distributed
from advcli.attacks.base import Keep, attack_mode, full_precision
from advcli.config import DEFAULT_EPS, Eps, Norm, parse_choice, parse_eps
from advcli.data.for_checkpoint import skipped_line, view_record
from advcli.data.subsets import FileList, Subset, subset_record
from advcli.data.view import DataView
from advcli.errors import AdvcliError, UsageError
from advcli.evaluate.chunks import Estimator, PlanStep, after_round, attack_key, in_memory, max_perturbation, run_chunks
from advcli.evaluate.progress_file import ChunkRecord, EvalProgress, start_progress
from advcli.formats.advset import AdvSet, AdvSetError, load_adv_set
from advcli.formats.results import (
    DataInfo,
    Entry,
    EvalResult,
    ModelInfo,
    index_sha256,
    trained_with_text,
)
from advcli.models.checkpoint import LoadedCheckpoint
from advcli.models.layout import input_layout, model_layout, use_channels_last
from advcli.models.user import Target, load_target
from advcli.progress import NullReporter, Reporter
from advcli.provenance import provenance
from advcli.rng import Stream, stream_generator


@dataclass
class EvalOptions:
    """Resolved options of `advcli eval` (eps/norm None = from the checkpoint)."""

    n: int | None = 1000
    subset: Subset | FileList = Subset.stratified  # how --n picks the examples
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
    fast_worst_case: bool = False  # APGD-CE + MALT-targeted APGD (`advcli.evaluate.fast`)
    adv_data: Path | None = None
    batch_size: int = 256
    seed: int = 0
    split: str = "test"
    dataset: str | None = None
    data_dir: str | None = None
    view: DataView = field(default_factory=DataView)  # --stream, --image-size, --skip-bad
    label: str | None = None
    model: str | None = None  # --model FILE.py:CALLABLE (the checkpoint, if any, holds its weights)
    wrap: str | None = None  # --wrap FILE.py:CALLABLE around the loaded model
    model_dir: str | None = None  # weights folder of a robustbench:NAME model
    config: dict[str, Any] = field(default_factory=dict)
    progress_file: Path | None = None  # where finished chunks are recorded (beside -o)
    resume: bool = False  # continue from `progress_file` instead of refusing to overwrite it
    channels_last: bool | None = None  # NHWC attacks; None = on for advcli architectures only


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
    with attack_mode(model), torch.no_grad(), full_precision(device):
        for i in range(0, len(y), batch_size):
            xb = x[i:i + batch_size].to(device, non_blocking=True)
            yb = y[i:i + batch_size].to(device, non_blocking=True)
            out[i:i + batch_size] = (model(xb).argmax(1) == yb).cpu().numpy()
    return out


def chance_note(accuracy: float, num_classes: int) -> str | None:
    """A warning when clean accuracy is near chance: the usual cause is a model that expects
    another input range or normalisation than [0, 1] images (its own normalisation inside)."""
    chance = 1.0 / num_classes if num_classes > 1 else 0.0
    if not chance or accuracy > 1.5 * chance:
        return None
    return (f"clean accuracy {100 * accuracy:.2f}% is near chance ({100 * chance:.2f}% for "
            f"{num_classes} classes): check the input range and normalisation; the model gets "
            "[0, 1] NCHW float32 images and must normalise them itself (a model that expects "
            "[0, 255] or normalised inputs scores near chance)")


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
    progress: EvalProgress | None = None,
    estimator: Estimator | None = None,
    channels_last: bool = True,
) -> Entry:
    """PGD on the clean-correct examples only; flags = clean AND not fooled, under `keep`'s
    rule (first-success: by no iterate). Chunk b is the b-th batch of the clean-correct
    examples, its random start seeded by (seed, b); finished chunks are kept in `progress`.
    `channels_last` runs the model and its inputs in NHWC (`advcli.models.layout`)."""
    from advcli.attacks import AttackSpec, attack_record, build_attack

    spec = AttackSpec(name="pgd", norm=norm, eps=eps, steps=steps, step_size=step_size,
                      restarts=restarts, keep=keep)
    attack = build_attack(spec)
    record = attack_record(spec, attack)
    progress = in_memory(progress)
    key = attack_key("pgd", norm, eps)
    todo = np.flatnonzero(clean)
    n_chunks = math.ceil(len(todo) / batch_size)

    def work(b: int) -> ChunkRecord:
        idx = torch.from_numpy(todo[b * batch_size:(b + 1) * batch_size])
        xb = input_layout(x[idx].to(device), channels_last)
        yb = y[idx].to(device)
        generator = stream_generator(seed, b, 0, Stream.eval_attack)
        # The attack's own verdict on the image it keeps: no forward pass of our own.
        with full_precision(device):
            run = attack.run(model, xb, yb, generator=generator)
        return ChunkRecord(flags=(~run.fooled).cpu().numpy(),
                           max_perturbation=max_perturbation(run.x_adv, xb, norm), time_s=0.0)

    reporter.start(f"pgd-{steps} {norm.value} eps={eps.text}", total=len(todo))
    reporter.advance(sum(len(r.flags) for r in progress.done(key).values()))
    # NHWC (when asked) for the attack loop: results differ from NCHW only by float rounding.
    try:
        with model_layout(model, channels_last):
            done = run_chunks(key, n_chunks, work, progress,
                              after_round("pgd", reporter, estimator, advance=True))
    finally:
        reporter.finish()
    flags = clean.copy()
    if n_chunks:
        flags[todo] = np.concatenate([done[b].flags for b in range(n_chunks)])
    params = {k: record[k] for k in ("steps", "step_size", "restarts", "keep") if k in record}
    params["max_perturbation"] = max((r.max_perturbation for r in done.values()), default=0.0)
    return Entry(attack="pgd", accuracy=float(flags.mean()) if len(flags) else 0.0,
                 n=len(flags), norm=norm.value, eps=eps.value, eps_text=eps.text, flags=flags,
                 params=params, time_s=sum(r.time_s for r in done.values()))


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
    progress: EvalProgress | None = None,
    estimator: Estimator | None = None,
) -> Entry:
    """AutoAttack on every example; flags = its robust flags AND our clean flags. Chunk c is
    examples [c * batch_size, (c + 1) * batch_size), run with seed + c; finished chunks are
    kept in `progress`."""
    from advcli.attacks.autoattack import run_autoattack

    progress = in_memory(progress)
    key = attack_key("autoattack", norm, eps)
    n_chunks = math.ceil(len(y) / batch_size)

    def work(c: int) -> ChunkRecord:
        sl = slice(c * batch_size, (c + 1) * batch_size)
        xd, yd = x[sl].to(device).contiguous(), y[sl].to(device).contiguous()
        with full_precision(device):
            res = run_autoattack(model, xd, yd, norm, eps, version=version,
                                 attacks=list(attacks) if attacks else None,
                                 batch_size=batch_size, seed=seed + c, reporter=reporter,
                                 restarts=restarts)
        return ChunkRecord(flags=res.robust_flags.detach().cpu().numpy().astype(bool),
                           max_perturbation=max_perturbation(res.x_adv, xd, norm), time_s=0.0,
                           extra={"warnings": list(res.warnings), "attacks": list(res.attacks),
                                  "restarts": res.restarts})

    done = run_chunks(key, n_chunks, work, progress,
                      after_round("autoattack", reporter, estimator, advance=False))
    chunks = [done[c] for c in range(n_chunks)]
    robust = np.concatenate([r.flags for r in chunks]) if chunks else np.zeros(0, dtype=bool)
    delta = max((r.max_perturbation for r in chunks), default=0.0)
    # In chunk order, so that the list does not depend on which chunks a resume ran.
    warnings: list[str] = []
    for r in chunks:
        warnings += [w for w in r.extra.get("warnings", []) if w not in warnings]
    ran = next((list(r.extra["attacks"]) for r in reversed(chunks) if r.extra.get("attacks")),
               list(attacks or []))
    used_restarts = next((int(r.extra["restarts"]) for r in chunks
                          if r.extra.get("restarts") is not None), restarts)
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
                 params=params, warnings=warnings, time_s=sum(r.time_s for r in chunks))


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
    if list(adv.x_adv.shape[1:]) != list(xs.shape[1:]):
        raise AdvSetError(f"{str(adv.path)!r} holds images of shape {list(adv.x_adv.shape[1:])} but "
                          f"{data.name} has {list(xs.shape[1:])}; it was made from other data")
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

def plan_steps(opts: EvalOptions, norm: Norm, eps_list: Sequence[Eps], n: int,
               n_attacked: int, progress: EvalProgress) -> list[PlanStep]:
    """The (attack, eps) steps in the order `evaluate` runs them; PGD attacks `n_attacked`
    examples (the clean-correct ones), AutoAttack all `n`."""
    steps = []
    for eps in eps_list:
        todo = []
        if opts.pgd:
            todo.append(("pgd", "pgd", f"pgd-{opts.pgd_steps}", n_attacked))
        if opts.autoattack:
            todo.append(("autoattack", "autoattack", f"autoattack {opts.aa_version}", n))
        if opts.fast_worst_case:
            from advcli.attacks.malt import evaluation_name
            from advcli.evaluate.fast import KIND

            todo.append((KIND, evaluation_name(), evaluation_name(), n))
        for kind, attack, name, examples in todo:
            key = attack_key(attack, norm, eps)
            steps.append(PlanStep(kind, key, f"{name} {norm.value} eps={eps.text}", examples,
                                  math.ceil(examples / opts.batch_size),
                                  len(progress.done(key))))
    return steps


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
    progress: EvalProgress | None = None,
) -> list[Entry]:
    """Clean, PGD per eps, AutoAttack per eps and the worst case on (x, y); x float [0, 1].

    `progress` holds what a killed run finished (its clean flags and chunks are reused) and
    receives every chunk as it finishes; None keeps them in memory. The model runs in eval
    mode, every module's own flag restored afterwards (`attack_mode`); PGD runs it in NHWC
    when `opts.channels_last` is not False (`run_eval` resolves None for outside code)."""
    if opts.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {opts.batch_size}")
    model.to(device)
    with attack_mode(model):
        return _evaluate(model, x, y, norm=norm, eps_list=eps_list, opts=opts, device=device,
                         reporter=reporter or NullReporter(), progress=in_memory(progress))


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: Norm,
              eps_list: Sequence[Eps], opts: EvalOptions, device: torch.device,
              reporter: Reporter, progress: EvalProgress) -> list[Entry]:
    if progress.clean is not None and len(progress.clean) == len(y):
        # Reused, not recomputed: PGD's chunks are cut from the clean-correct examples.
        clean = progress.clean
    else:
        t0 = time.perf_counter()
        clean = predict_flags(model, x, y, opts.batch_size, device)
        progress.clean, progress.clean_time_s = clean, time.perf_counter() - t0
        progress.save()
    entries = [Entry(attack="clean", accuracy=float(clean.mean()) if len(clean) else 0.0,
                     n=len(clean), flags=clean, time_s=progress.clean_time_s)]
    reporter.log(f"clean accuracy {100 * entries[0].accuracy:.2f}% on {len(clean)} examples")
    steps = plan_steps(opts, norm, eps_list, len(y), int(clean.sum()), progress)
    estimator = Estimator(steps, progress, reporter)
    if progress.reused:
        reporter.log(f"resuming from {progress.path}: {progress.reused} of "
                     f"{sum(s.chunks for s in steps)} chunks done; {estimator.text()}")
    for eps in eps_list:
        if opts.pgd:
            e = pgd_entry(model, x, y, clean, norm=norm, eps=eps, steps=opts.pgd_steps,
                          restarts=opts.restarts, step_size=opts.step_size,
                          batch_size=opts.batch_size, seed=opts.seed, device=device,
                          reporter=reporter, keep=opts.keep, progress=progress,
                          estimator=estimator, channels_last=opts.channels_last is not False)
            reporter.log(f"pgd-{opts.pgd_steps} {norm.value} eps={eps.text}: "
                         f"{100 * e.accuracy:.2f}% ({e.time_s:.1f}s)")
            entries.append(e)
        if opts.autoattack:
            e = autoattack_entry(model, x, y, clean, norm=norm, eps=eps,
                                 version=opts.aa_version, attacks=opts.aa_attacks,
                                 restarts=opts.aa_restarts, batch_size=opts.batch_size,
                                 seed=opts.seed, device=device, reporter=reporter,
                                 progress=progress, estimator=estimator)
            reporter.log(f"autoattack {opts.aa_version} {norm.value} eps={eps.text}: "
                         f"{100 * e.accuracy:.2f}% ({e.time_s:.1f}s)")
            entries.append(e)
        if opts.fast_worst_case:
            from advcli.evaluate.fast import fast_entry

            e = fast_entry(model, x, y, clean, norm=norm, eps=eps, batch_size=opts.batch_size,
                           seed=opts.seed, device=device, reporter=reporter, progress=progress,
                           estimator=estimator)
            reporter.log(f"{e.attack} {norm.value} eps={eps.text}: {100 * e.accuracy:.2f}% "
                         f"({e.time_s:.1f}s)")
            entries.append(e)
    return entries


def examples_sha256(x: torch.Tensor, y: torch.Tensor) -> str:
    """Identify the examples by content (pixels and labels), not just by index."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x.cpu().numpy()).tobytes())
    h.update(np.asarray(y.cpu().numpy(), dtype="<i8").tobytes())
    return h.hexdigest()


# Fields of a result file that two runs of the same evaluation cannot share, written into
# every result (`provenance.varies_between_runs`): a resumed run equals an uninterrupted one
# in everything else.
VARIES_BETWEEN_RUNS = ("time_s", "results[].time_s", "provenance.argv", "provenance.time",
                       "provenance.options.resume", "provenance.resumed")


@dataclass
class _Setup:
    """What both `run_eval` and `plan_eval` load: the model, the examples, the threat model,
    and the fingerprint a progress file is checked against."""

    target: Target
    opts: EvalOptions  # channels_last resolved for the target
    norm: Norm
    eps_list: list[Eps]
    eps_source: str
    data: Any
    x: torch.Tensor
    y: torch.Tensor
    ihash: str
    esha: str
    fingerprint: dict[str, Any]
    skipped: list[str]  # undecodable files left out under --skip-bad


def _versions(autoattack: bool) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    import advcli

    out: dict[str, str | None] = {"advcli": advcli.__version__, "torch": str(torch.__version__)}
    if autoattack:
        try:
            out["pyautoattack"] = version("pyautoattack")
        except PackageNotFoundError:
            out["pyautoattack"] = None
    return out


def _result_options(opts: EvalOptions, norm: Norm, eps_list: Sequence[Eps],
                    device: torch.device) -> dict[str, Any]:
    """The options the numbers (or the result file) depend on, resolved, so that the same run
    given by flags or by --config compares equal; run control (-o, --resume, --format,
    --quiet) is left out."""
    return {
        "n": opts.n, "norm": norm.value, "eps": [e.text for e in eps_list], "pgd": opts.pgd,
        "pgd_steps": opts.pgd_steps, "restarts": opts.restarts,
        "step_size": None if opts.step_size is None else opts.step_size.text,
        "keep": getattr(opts.keep, "value", opts.keep), "autoattack": opts.autoattack,
        "aa_version": opts.aa_version, "aa_attacks": opts.aa_attacks,
        "aa_restarts": opts.aa_restarts, "batch_size": opts.batch_size, "seed": opts.seed,
        "adv_data": None if opts.adv_data is None else str(opts.adv_data),
        "label": opts.label, "device": device.type,
        # Only when they differ from what earlier releases always did (NHWC, no fast evaluation),
        # so that progress files written before these options existed still resume.
        **({"channels_last": False} if opts.channels_last is False else {}),
        **({"fast_worst_case": True} if opts.fast_worst_case else {}),
    }


def _user_code_identity(target: Target) -> dict[str, str]:
    """What a resume checks of the user code: per role, the callable, the file's sha256 (not
    its path: the same file reached another way is the same code) and the sha256 of the weights
    it built (the file's sha256 cannot tell two builds apart when the code reads the
    environment, another file or a module it imports)."""
    out: dict[str, str] = {}
    for c in target.code:
        out[f"{c.role}_callable"], out[f"{c.role}_sha256"] = c.callable, c.sha256
        if c.weights_sha256 is not None:
            out[f"{c.role}_weights_sha256"] = c.weights_sha256
    return out


def _setup(checkpoint: str | Path | LoadedCheckpoint | None, opts: EvalOptions,
           device: torch.device, reporter: Reporter, data: Any) -> _Setup:
    from advcli.data import to_float

    target = load_target(checkpoint, model=opts.model, wrap=opts.wrap, device=device, dataset=opts.dataset,
                         norm=opts.norm, model_dir=opts.model_dir)
    opts = replace(opts, channels_last=use_channels_last(opts.channels_last, outside=target.outside))
    norm, eps_list, eps_source = resolve_threat(target.meta, opts.norm, opts.eps)
    data, idx, skipped = target.examples(dataset=opts.dataset, data_dir=opts.data_dir, split=opts.split,
                                         n=opts.n, seed=opts.seed, subset=opts.subset, device=device,
                                         data=data, view=opts.view)
    if skipped:
        reporter.log(skipped_line(skipped))
    if opts.pgd or opts.autoattack or opts.fast_worst_case:
        reporter.log(f"threat model {norm.value} eps {', '.join(e.text for e in eps_list)} "
                     f"({eps_source})")
    split_x, split_y = data.split(opts.split)
    x_uint8 = split_x[idx]  # decoded once: a streamed split decodes on every access
    x, y = to_float(x_uint8), split_y[idx].long()
    ihash = index_sha256(idx.numpy())
    esha = examples_sha256(x_uint8, y)
    fingerprint: dict[str, Any] = {
        "checkpoint": {"sha256": target.sha256},
        "data": {"dataset": data.name, "split": opts.split, **subset_record(opts.subset),
                 "index_sha256": ihash, "examples_sha256": esha},
        "options": _result_options(opts, norm, eps_list, device),
        "versions": _versions(opts.autoattack or opts.fast_worst_case),
    }
    if target.code:  # absent otherwise, so progress files of plain checkpoints stay valid
        fingerprint["user_code"] = _user_code_identity(target)
    return _Setup(target, opts, norm, eps_list, eps_source, data, x, y, ihash, esha, fingerprint, skipped)


def _progress_on_every_rank(opts: EvalOptions, fingerprint: dict[str, Any]) -> EvalProgress:
    """The run's progress, read (and checked) by rank 0 alone and sent to the other ranks:
    they may not see rank 0's disk (several nodes), and none of them may read the file while
    rank 0 rewrites it. A refusal is sent too, so every rank stops with the same line."""
    info = distributed.current()
    if not info.enabled:
        return start_progress(opts.progress_file, fingerprint, resume=opts.resume)
    got: list[Any] = [None]
    if info.is_main:
        try:
            got[0] = start_progress(opts.progress_file, fingerprint, resume=opts.resume)
        except AdvcliError as exc:
            got[0] = exc
    torch.distributed.broadcast_object_list(got, src=0)
    if isinstance(got[0], AdvcliError):
        raise got[0]
    progress: EvalProgress = got[0]
    progress.writer = info.is_main
    return progress


def run_eval(
    checkpoint: str | Path | LoadedCheckpoint | None,
    opts: EvalOptions,
    *,
    device: torch.device,
    reporter: Reporter | None = None,
    data: Any = None,
) -> EvalResult:
    """Load the checkpoint (or `opts.model`, wrapped in `opts.wrap`) and its data, evaluate,
    and describe everything in an EvalResult.

    `data` (an `advcli.data.ImageData`) skips loading the dataset (tests, notebooks). With
    `opts.progress_file`, finished chunks are recorded there (rank 0 writes) and, with
    `opts.resume`, a killed run's chunks are reused; the caller deletes the file once the
    result is written (`advcli.evaluate.progress_file.discard`).
    """
    reporter = reporter or NullReporter()
    t0 = time.perf_counter()
    st = _setup(checkpoint, opts, device, reporter, data)
    opts, target, meta, data, y, ihash = st.opts, st.target, st.target.meta, st.data, st.y, st.ihash
    adv = None if opts.adv_data is None else load_adv_set(opts.adv_data, dataset=data.name)
    # Checked against the data before the first attack, so a foreign set costs no run.
    adv_clean = None if adv is None else clean_images_of(adv, data, opts.split)
    progress = _progress_on_every_rank(opts, st.fingerprint)
    entries = evaluate(target.model, st.x, y, norm=st.norm, eps_list=st.eps_list, opts=opts,
                       device=device, reporter=reporter, progress=progress)
    note = chance_note(entries[0].accuracy, data.num_classes) if len(y) else None
    if note:
        entries[0].warnings.append(note)
    if adv is not None and adv_clean is not None:
        entry = transfer_entry(target.model, adv, adv_clean,
                               batch_size=opts.batch_size, device=device)
        if entry.index_sha256 == ihash:
            entry.index_sha256 = None  # the same examples as the rest of the file
        reporter.log(f"transfer from {opts.adv_data}: {100 * entry.accuracy:.2f}% "
                     f"on {entry.n} examples")
        entries.append(entry)
    entries += worst_entries(entries, ihash)
    threat = meta.get("threat_model") if isinstance(meta.get("threat_model"), dict) else None
    extra: dict[str, Any] = {"checkpoint_sha256": target.sha256, "device": str(device),
                             "options": opts.config, "channels_last": opts.channels_last,
                             "varies_between_runs": list(VARIES_BETWEEN_RUNS)}
    if progress.reused:
        extra["resumed"] = {"progress_file": str(progress.path),
                            "chunks_reused": progress.reused}
    return EvalResult(
        label=target.label(opts.label),
        model=ModelInfo(
            checkpoint=None if target.checkpoint is None else str(target.checkpoint),
            sha256=target.sha256,
            arch=target.arch,
            trained_with=trained_with_text(threat),
            seed=meta.get("seed") if isinstance(meta.get("seed"), int) else None,
            threat_model=threat,
        ),
        data=DataInfo(dataset=data.name, split=opts.split, n=len(y), seed=opts.seed,
                      index_sha256=ihash, examples_sha256=st.esha,
                      **subset_record(opts.subset), **view_record(data, st.skipped)),
        entries=entries,
        seed=opts.seed,
        time_s=time.perf_counter() - t0,
        provenance=provenance(opts.seed, extra),
        user_code=target.user_code(),
    )


# --------------------------------------------------------------------------- the plan (--dry-run)

@dataclass
class EvalPlan:
    """What `eval` would run, with an estimate of its time; nothing is attacked.

    `seconds` per step (and `clean_seconds`) are None where nothing gives an estimate;
    `estimate_s` sums the known ones, `unknown` names the attacks left out of it, `how` says
    where the numbers come from. PGD's `examples` are an upper bound (`pgd_upper_bound`)
    unless a progress file holds the clean flags."""

    label: str
    checkpoint: str | None
    dataset: str
    split: str
    n: int
    norm: str
    eps_source: str
    batch_size: int
    steps: list[PlanStep]
    seconds: list[float | None]
    clean_seconds: float | None
    estimate_s: float
    unknown: list[str]
    how: str
    pgd_upper_bound: bool
    progress_file: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "checkpoint": self.checkpoint, "dataset": self.dataset,
            "split": self.split, "n": self.n, "norm": self.norm, "eps_source": self.eps_source,
            "batch_size": self.batch_size, "progress_file": self.progress_file,
            "clean": {"examples": self.n, "seconds": self.clean_seconds},
            "steps": [{"attack": s.kind, "name": s.name, "examples": s.examples,
                       "chunks": s.chunks, "done": s.done, "seconds": sec}
                      for s, sec in zip(self.steps, self.seconds, strict=True)],
            "pgd_examples_upper_bound": self.pgd_upper_bound,
            "estimate_s": self.estimate_s, "estimate_excludes": self.unknown,
            "estimate_how": self.how,
        }


def _time_passes(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 device: torch.device) -> tuple[float, float]:
    """Seconds of one forward pass and of one forward+backward to the input on this batch,
    each measured after a warm-up pass (first calls allocate and pick kernels)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    xb, yb = x.to(device), y.to(device)
    with attack_mode(model), full_precision(device):
        times = []
        for backward in (False, True):
            for _ in range(2):  # the second is timed
                sync()
                t0 = time.perf_counter()
                xi = xb.clone().requires_grad_(backward)
                loss = torch.nn.functional.cross_entropy(model(xi), yb)
                if backward:
                    torch.autograd.grad(loss, xi)
                sync()
            times.append(time.perf_counter() - t0)
    return times[0], times[1]


def plan_eval(
    checkpoint: str | Path | LoadedCheckpoint | None,
    opts: EvalOptions,
    *,
    device: torch.device,
    reporter: Reporter | None = None,
    data: Any = None,
) -> EvalPlan:
    """What `run_eval` would do with these options (`eval --dry-run`), without attacking.

    Estimates: from the progress file's recorded chunks when resuming; else clean and PGD from
    timing one batch (a forward pass, and a forward+backward pass per PGD step and restart),
    assuming every example is clean-correct; AutoAttack is left out (unknown until its first
    chunk, when `eval` logs an estimate). The progress file is checked as `run_eval` would,
    so a run that would be refused is refused here too; nothing is written."""
    reporter = reporter or NullReporter()
    st = _setup(checkpoint, opts, device, reporter, data)
    progress = start_progress(opts.progress_file, st.fingerprint, resume=opts.resume,
                              writer=False)
    n = len(st.y)
    clean_known = progress.clean is not None and len(progress.clean) == n
    n_attacked = int(progress.clean.sum()) if clean_known and progress.clean is not None else n
    steps = plan_steps(opts, st.norm, st.eps_list, n, n_attacked, progress)
    estimator = Estimator(steps, progress, NullReporter())
    how = []
    if estimator.rates:
        how.append(f"{', '.join(sorted(estimator.rates))} from the chunks in {progress.path}")
    clean_chunks = 0 if clean_known else math.ceil(n / opts.batch_size)
    clean_seconds: float | None = 0.0 if clean_known else None
    if n and (clean_chunks or (opts.pgd and "pgd" not in estimator.rates)):
        model = st.target.model.to(device)
        batch = min(opts.batch_size, n)
        t_fwd, t_grad = _time_passes(model, st.x[:batch], st.y[:batch], device)
        clean_seconds = clean_chunks * t_fwd
        if opts.pgd and "pgd" not in estimator.rates:
            # Per restart: a gradient pass per step, and one forward pass for the last iterate.
            estimator.rates["pgd"] = opts.restarts * (opts.pgd_steps * t_grad + t_fwd)
            how.append(f"pgd from timing one batch of {batch} on {device.type}"
                       + ("" if clean_known else ", as if every example were clean-correct"))
    seconds: list[float | None] = []
    for s in steps:
        rate = estimator.rates.get(s.kind)
        seconds.append(None if rate is None else max(s.chunks - s.done, 0) * rate)
    left, unknown = estimator.left()
    if unknown:
        how.append(f"{', '.join(unknown)} not estimated: its cost depends on how many examples "
                   "survive each attack; eval logs an estimate after its first chunk")
    return EvalPlan(
        label=st.target.label(opts.label),
        checkpoint=None if st.target.checkpoint is None else str(st.target.checkpoint),
        dataset=st.data.name, split=opts.split,
        n=n, norm=st.norm.value, eps_source=st.eps_source, batch_size=opts.batch_size,
        steps=steps, seconds=seconds, clean_seconds=clean_seconds,
        estimate_s=left + (clean_seconds or 0.0), unknown=unknown, how="; ".join(how),
        pgd_upper_bound=opts.pgd and not clean_known,
        progress_file=None if opts.progress_file is None else str(opts.progress_file),
    )
