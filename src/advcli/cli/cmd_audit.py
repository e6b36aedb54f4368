"""`advcli audit CKPT`: can this model's robustness evaluation be trusted? Seven checks, one row
each, a verdict, and the exit code (0 pass or warnings, 1 a check failed, 2 usage error).

Parses and checks the options, makes one stage call (`audit.run_audit`), writes the
audit file and the curve picture all or nothing, and renders the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from advcli.audit.limits import ALL_CHECKS, QUICK_CHECKS, CheckName, parse_checks, thresholds_table
from advcli.cli import common, render
from advcli.cli.common import CONFIG_HELP, DEVICE_HELP, FORMAT_HELP, FORMATS, handle_errors, resolve_options
from advcli.config import Norm, parse_choice, parse_eps
from advcli.data.subsets import SUBSET_HELP, Subset, parse_subset
from advcli.errors import UsageError
from advcli.models.layout import AUTO_DEFAULT
from advcli.models.robustbench.zoo import MODEL_DIR_HELP
from advcli.models.user import MODEL_HELP, WRAP_HELP

SPLITS = ("test", "train", "val")
AMPS = ("none", "bf16", "fp16")


def audit_options(opts: dict[str, Any]) -> Any:
    """Check the options at the boundary and build `AuditOptions`."""
    from advcli.audit import AuditOptions

    if opts["split"] not in SPLITS:
        raise UsageError(f"unknown --split {opts['split']!r}; valid values: {', '.join(SPLITS)}")
    amp = None
    if opts["amp"] is not None:
        amp = str(opts["amp"]).strip().lower()
        if amp not in AMPS:
            raise UsageError(f"unknown --amp {opts['amp']!r}; valid values: {', '.join(AMPS)}")
    for name in ("n", "batch_size", "pgd_steps", "curve_steps", "strong_steps", "strong_restarts",
                 "square_n", "eot_samples"):
        value = opts[name]
        if value is not None and int(value) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    checks = parse_checks(opts["checks"], quick=bool(opts["quick"]))
    if opts["plot"] and CheckName.curve not in checks:
        raise UsageError("--plot draws the robustness curve: add curve to --checks (or drop --plot)")
    if opts["surrogate"] and CheckName.transfer not in checks:
        raise UsageError("--surrogate is used by the transfer check: add transfer to --checks")
    if opts["checkpoint"] is None and not opts["model"]:
        raise UsageError("name the checkpoint to audit, or pass --model FILE.py:CALLABLE")
    return AuditOptions(
        n=None if opts["n"] is None else int(opts["n"]),
        subset=parse_subset(opts["subset"]),
        eps=parse_eps(opts["eps"], name="--eps", allow_zero=False) if opts["eps"] else None,
        norm=parse_choice(Norm, opts["norm"], name="norm") if opts["norm"] else None,
        checks=checks,
        pgd_steps=int(opts["pgd_steps"]),
        curve_steps=int(opts["curve_steps"]),
        strong_steps=int(opts["strong_steps"]),
        strong_restarts=int(opts["strong_restarts"]),
        fast_worst_case=bool(opts["fast_worst_case"]),
        square_n=int(opts["square_n"]),
        eot_samples=int(opts["eot_samples"]),
        surrogate=Path(opts["surrogate"]) if opts["surrogate"] else None,
        model=opts["model"],
        wrap=opts["wrap"],
        model_dir=opts["model_dir"],
        channels_last=opts.get("channels_last"),
        amp=amp,
        batch_size=int(opts["batch_size"]),
        seed=int(opts["seed"]),
        split=str(opts["split"]),
        dataset=opts["dataset"],
        data_dir=opts["data_dir"],
        view=common.data_view(opts),
        label=opts["label"],
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()},
    )


def render_result(result: Any) -> None:
    rows = [(c.title, c.measured, c.status, c.advice) for c in result.checks]
    threat = result.threat_model
    title = (f"advcli audit: {result.label} on {result.data.dataset}/{result.data.split} "
             f"(n={result.data.n}, {threat['norm']} {threat['eps_text']}, clean "
             f"{100 * result.clean_accuracy:.1f}%)")
    render.out.print(render.status_table(title, ["check", "measured", "result", "what to do"], rows, 2))
    failed = [c.title for c in result.checks if c.status == "fail"]
    warned = [c for c in result.checks if c.status == "warn"]
    for c in warned:
        render.warn_line(f"{c.title}: {c.measured}")
    verdict = {"pass": "PASS: every check passed", "warn": f"PASS with {len(warned)} warning(s)",
               "fail": f"FAIL: {', '.join(failed)}"}[result.verdict]
    render.verdict_line(result.verdict, f"{verdict} ({result.time_s or 0:.0f} s)")


def _help() -> str:
    rows = "\n".join(f"  {c:<11} {what} | pass {p} | warn {w} | fail {f}"
                     for c, what, p, w, f in thresholds_table())
    return (
        "Audit a robustness evaluation: can its numbers be trusted?\n\n"
        "Runs these checks on the first N test examples at the threat model (default: the "
        "checkpoint's, else linf 8/255) and prints one row per check (what was measured, "
        "pass/warn/fail, what to do) and a verdict. Exit code 0: all pass (warnings are "
        "listed), 1: a check failed, 2: usage error.\n\n"
        "\b\n"
        "  1 curve        accuracy over an eps sweep to 0.5 (linf) / sqrt(C*H*W) (l2), warm-started\n"
        "  2 convergence  PGD-10 vs the AND of PGD-100x5, APGD-CE, APGD-DLR\n"
        "  3 single-step  FGSM must not beat PGD\n"
        "  4 black-box    Square (5,000 queries) on up to --square-n points PGD left robust\n"
        "  5 transfer     --surrogate / unwrapped model (BPDA, with --wrap) / EoT vs white-box\n"
        "  6 gradients    zero or non-finite gradients, saturated softmax, probabilities, randomness\n"
        "  7 precision    the attack in the training AMP dtype vs fp32\n\n"
        f"--quick runs {', '.join(c.value for c in QUICK_CHECKS)} (about a minute for small-cnn on "
        "500 CIFAR images on 2 cores).\n\n"
        "Thresholds (counts of examples, as a share of N with a floor in examples):\n\n"
        f"\b\n{rows}\n\n"
        "--model and --wrap RUN THE PYTHON CODE in the file they name, with torch seeded to 0 "
        "(random initialisation is reproducible); the result records the file's sha256 (that "
        "file only, not modules it imports) and the sha256 of the weights it built. Weights are "
        "only ever read from safetensors.\n\n"
        "Example: advcli audit robust.safetensors --n 500 -o audit.yaml --plot audit.png"
    )


@handle_errors
def audit_cmd(
    ctx: typer.Context,
    checkpoint: Annotated[Path | None, typer.Argument(
        help="Checkpoint (.safetensors) to audit; with --model, the weights for its module "
        "(optional).", show_default=False)] = None,
    n: Annotated[int | None, typer.Option(
        "--n", "--n-test", help="Audit the first N examples of the split, a count, in the order "
        "--subset names (advcli.data.test_subset).")] = 500,
    subset: Annotated[str, typer.Option("--subset", help=SUBSET_HELP)] = Subset.stratified.value,
    eps: Annotated[str | None, typer.Option(
        "--eps", help="Radius of the threat model in [0,1] pixel units, e.g. 8/255 or 0.5 (default: "
        "the checkpoint's threat model, else 8/255 for linf and 0.5 for l2).")] = None,
    norm: Annotated[str | None, typer.Option(
        "--norm", help="linf or l2 (default: the checkpoint's threat model, else linf).")] = None,
    checks: Annotated[str | None, typer.Option(
        "--checks", help=f"Comma-separated checks to run, by name or number: "
        f"{', '.join(c.value for c in ALL_CHECKS)} (1-7; default: all).")] = None,
    quick: Annotated[bool, typer.Option(
        "--quick", help="The cheap tier: curve, single-step and gradients only.")] = False,
    surrogate: Annotated[Path | None, typer.Option(
        "--surrogate", help="Checkpoint of a surrogate model (same data) for the transfer check: "
        "its PGD examples must not beat the white-box attacks.")] = None,
    model: Annotated[str | None, typer.Option("--model", help=MODEL_HELP)] = None,
    wrap: Annotated[str | None, typer.Option("--wrap", help=WRAP_HELP)] = None,
    model_dir: Annotated[str | None, typer.Option("--model-dir", help=MODEL_DIR_HELP)] = None,
    channels_last: Annotated[bool | None, common.channels_last_option(AUTO_DEFAULT)] = None,
    amp: Annotated[str | None, typer.Option(
        "--amp", help="Precision check: compare fp32 with this autocast dtype, none, bf16 or fp16 "
        "(fp16 needs CUDA) (default: the training run's --amp from the checkpoint; fp32 training "
        "skips the check).")] = None,
    pgd_steps: Annotated[int, typer.Option(
        "--pgd-steps", help="Iterations of the default evaluation attack (PGD, one restart, step "
        "2.5*eps/steps), as advcli eval runs it.")] = 10,
    curve_steps: Annotated[int, typer.Option(
        "--curve-steps", help="PGD iterations per eps of the robustness curve.")] = 10,
    strong_steps: Annotated[int, typer.Option(
        "--strong-steps", help="Iterations of the ensemble's PGD (convergence check).")] = 100,
    strong_restarts: Annotated[int, typer.Option(
        "--strong-restarts", help="Random restarts of the ensemble's PGD, a count.")] = 5,
    fast_worst_case: Annotated[bool, typer.Option(
        "--fast-worst-case", help="Convergence check: put eval's fast worst-case evaluation (APGD-CE, "
        "then targeted APGD toward the 3 classes of smallest linearised margin, MALT; 100 iterations "
        "each) in the ensemble in place of APGD-CE alone, so that targeted attacks are tried too.")] = False,
    square_n: Annotated[int, typer.Option(
        "--square-n", help="Most points (count) the black-box check attacks with Square.")] = 200,
    eot_samples: Annotated[int, typer.Option(
        "--eot-samples", help="Forward passes averaged per EoT gradient (randomised models).")] = 10,
    split: Annotated[str, typer.Option("--split", help="test, train or val.")] = "test",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per batch.")] = 256,
    seed: Annotated[int, typer.Option(
        "--seed", help="Seed of the example order, the attacks' random starts and of torch's "
        "global generator (random defences).")] = 0,
    device: Annotated[str, typer.Option("--device", help=DEVICE_HELP)] = "auto",
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="Dataset override (default: the one recorded in the checkpoint; needed "
        "with --model and no checkpoint).")] = None,
    data_dir: Annotated[str | None, typer.Option(
        "--data-dir", help="Where torchvision datasets live.")] = None,
    stream: common.CheckpointStream = None,
    image_size: common.CheckpointImageSize = None,
    skip_bad: common.CheckpointSkipBad = False,
    label: Annotated[str | None, typer.Option(
        "--label", help="Name of the audited model (default: the checkpoint's label).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Audit file to write (YAML, schema advcli.audit/1).")] = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="PNG of the robustness curve (accuracy vs eps, with the floor).")] = None,
    format: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "table",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    config: Annotated[Path | None, typer.Option("--config", help=CONFIG_HELP)] = None,
) -> None:
    opts = resolve_options(ctx, locals())
    out_format = str(opts["format"]).strip().lower()
    if out_format not in FORMATS:
        raise UsageError(f"unknown --format {out_format!r}; valid values: {', '.join(FORMATS)}")
    aopts = audit_options(opts)

    from advcli.audit import run_audit
    from advcli.audit.file import save_audit
    from advcli.audit.plot import curve_png
    from advcli.device import resolve_device
    from advcli.io import all_or_nothing

    reporter = render.RichReporter(quiet=bool(opts["quiet"]))
    result = run_audit(opts["checkpoint"], aopts, device=resolve_device(opts["device"]), reporter=reporter)
    written: list[Path] = []
    with all_or_nothing(written):
        if opts["out"]:
            written.append(save_audit(opts["out"], result))
        if opts["plot"]:
            c = result.check("curve")
            threat = result.threat_model
            written.append(curve_png(result.curve_points(), opts["plot"], floor=c.numbers["floor"]["accuracy"],
                                     threat_eps=threat["eps"], threat_text=threat["eps_text"],
                                     norm=threat["norm"], title=f"advcli audit: {result.label}"))
    if out_format == "table":
        render_result(result)
    else:
        render.dump(result.to_dict(), out_format)
    for p in written:
        render.info_line(f"wrote {p}")
    if result.verdict == "fail":
        raise typer.Exit(1)


audit_cmd.__doc__ = _help()
