"""`advcli eval CKPT`: clean, PGD and AutoAttack accuracy (+ transfer), written as a result file;
`--resume` continues a killed run from its progress file, `--dry-run` prints the plan."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from advcli.cli import common, render
from advcli.cli.common import CONFIG_HELP, DEVICE_HELP, FORMAT_HELP, FORMATS, handle_errors, resolve_options
from advcli.config import Norm, parse_choice, parse_eps, parse_eps_list
from advcli.data.subsets import SUBSET_HELP, Subset, parse_subset
from advcli.errors import UsageError
from advcli.formats.results import EvalResult
from advcli.models.layout import AUTO_DEFAULT
from advcli.models.robustbench.zoo import MODEL_DIR_HELP
from advcli.models.user import MODEL_HELP, WRAP_HELP, check_user_options

if TYPE_CHECKING:
    from advcli.evaluate.run import EvalPlan

SPLITS = ("test", "train", "val")


def eval_options(opts: dict[str, Any]) -> Any:
    """Check the options at the boundary and build `EvalOptions`."""
    from advcli.attacks import Keep
    from advcli.attacks.autoattack import ATTACKS, VERSIONS
    from advcli.evaluate.progress_file import progress_path_for
    from advcli.evaluate.run import EvalOptions

    version = str(opts["aa_version"]).strip().lower()
    if version not in VERSIONS:
        raise UsageError(f"unknown --aa-version {version!r}; valid values: {', '.join(VERSIONS)}")
    attacks = None
    if opts["aa_attacks"]:
        attacks = [a.strip().lower() for a in str(opts["aa_attacks"]).split(",") if a.strip()]
        bad = [a for a in attacks if a not in ATTACKS]
        if bad:
            raise UsageError(f"unknown --aa-attacks {', '.join(bad)}; valid values: "
                             f"{', '.join(ATTACKS)}")
        if version != "custom":
            raise UsageError("--aa-attacks chooses the attacks of --aa-version custom; "
                             "add --aa-version custom")
    elif version == "custom":
        raise UsageError("--aa-version custom needs --aa-attacks, e.g. apgd-ce,apgd-t")
    if opts["resume"] and not opts["out"]:
        raise UsageError("--resume continues from the progress file beside -o/--out; give the "
                         "same -o as the interrupted run")
    if opts["split"] not in SPLITS:
        raise UsageError(f"unknown --split {opts['split']!r}; valid values: {', '.join(SPLITS)}")
    for name in ("n", "batch_size", "pgd_steps", "restarts", "aa_restarts"):
        value = opts[name]
        if value is not None and int(value) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    check_user_options(opts)
    eps = parse_eps_list(str(opts["eps"]), name="--eps") if opts["eps"] else None
    if eps and any(e.value == 0 for e in eps):
        raise UsageError("--eps values must be > 0 (clean accuracy is always reported)")
    return EvalOptions(
        n=None if opts["n"] is None else int(opts["n"]),
        subset=parse_subset(opts["subset"]),
        eps=eps,
        norm=parse_choice(Norm, opts["norm"], name="norm") if opts["norm"] else None,
        pgd=bool(opts["pgd"]),
        pgd_steps=int(opts["pgd_steps"]),
        restarts=int(opts["restarts"]),
        step_size=parse_eps(opts["step_size"], name="--step-size", allow_zero=False)
        if opts["step_size"] else None,
        keep=parse_choice(Keep, opts["keep_iterate"], name="--keep-iterate"),
        autoattack=bool(opts["autoattack"]),
        aa_version=version,
        aa_attacks=attacks,
        aa_restarts=None if opts["aa_restarts"] is None else int(opts["aa_restarts"]),
        fast_worst_case=bool(opts["fast_worst_case"]),
        adv_data=Path(opts["adv_data"]) if opts["adv_data"] else None,
        batch_size=int(opts["batch_size"]),
        seed=int(opts["seed"]),
        split=str(opts["split"]),
        dataset=opts["dataset"],
        data_dir=opts["data_dir"],
        view=common.data_view(opts),
        label=opts["label"],
        model=opts["model"],
        wrap=opts["wrap"],
        model_dir=opts["model_dir"],
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()},
        progress_file=progress_path_for(opts["out"]) if opts["out"] else None,
        resume=bool(opts["resume"]),
        channels_last=opts.get("channels_last"),
    )


def _entry_name(e: Any) -> str:
    from advcli.compare import entry_key

    return entry_key(e).variant


def render_result(result: EvalResult) -> None:
    rows = []
    for e in result.entries:
        threat = "" if e.eps_text is None else f"{e.norm} {e.eps_text}"
        time_s = "" if e.time_s is None else f"{e.time_s:.1f}"
        rows.append((_entry_name(e), threat, f"{100 * e.accuracy:.2f}", str(e.n), time_s))
    title = (f"advcli eval: {result.label} ({result.model.arch}, trained with "
             f"{result.model.trained_with}) on {result.data.dataset}/{result.data.split}")
    render.out.print(render.table(title, ["attack", "threat", "accuracy (%)", "n", "time (s)"],
                                  rows))
    for e in result.entries:
        for w in e.warnings:
            render.warn_line(f"{_entry_name(e)}: {w}")


def render_plan(plan: EvalPlan) -> None:
    from advcli.evaluate.chunks import duration_text

    def when(seconds: float | None) -> str:
        return "unknown" if seconds is None else duration_text(seconds)

    bound = "<= " if plan.pgd_upper_bound else ""
    rows = [("clean", str(plan.n), "", "", when(plan.clean_seconds))]
    for step, seconds in zip(plan.steps, plan.seconds, strict=True):
        examples = f"{bound}{step.examples}" if step.kind == "pgd" else str(step.examples)
        rows.append((step.name, examples, str(step.chunks), str(step.done), when(seconds)))
    total = duration_text(plan.estimate_s)
    rows.append(("total", "", "", "", f">= {total}" if plan.unknown else total))
    title = (f"advcli eval --dry-run: {plan.label} on {plan.dataset}/{plan.split}, {plan.n} "
             f"examples, {plan.norm} eps from the {plan.eps_source}, chunks of {plan.batch_size}")
    render.out.print(render.table(title, ["step", "examples", "chunks", "done", "time"], rows))
    render.info_line(f"estimate: {plan.how}")


@handle_errors
def eval_cmd(
    ctx: typer.Context,
    checkpoint: Annotated[Path | None, typer.Argument(
        help="Checkpoint (.safetensors) to evaluate; with --model, the weights for its module "
        "(optional).", show_default=False)] = None,
    n: Annotated[int | None, typer.Option(
        "--n", "--n-test", "--num-examples", help="(--n-test is the same; --num-examples under torchrun, whose parser takes --n as its own.) Evaluate the first N examples of the split in the order --subset "
        "names (advcli.data.test_subset), a count; omit for all.")] = 1000,
    subset: Annotated[str, typer.Option("--subset", help=SUBSET_HELP)] = Subset.stratified.value,
    eps: Annotated[str | None, typer.Option(
        "--eps", help="Comma-separated radii, e.g. 8/255,16/255 (default: the checkpoint's "
        "threat model, else 8/255 for linf or 0.5 for l2).")] = None,
    norm: Annotated[str | None, typer.Option(
        "--norm", help="linf or l2 (default: the checkpoint's threat model, else linf).")] = None,
    pgd: Annotated[bool, typer.Option("--pgd/--no-pgd", help="Run PGD at every eps.")] = True,
    pgd_steps: Annotated[int, typer.Option("--pgd-steps", help="PGD iterations (count).")] = 10,
    restarts: Annotated[int, typer.Option(
        "--restarts", help="PGD random restarts (count; worst case per example kept).")] = 1,
    step_size: Annotated[str | None, typer.Option(
        "--step-size", help="PGD step size in [0,1] pixel units, e.g. 2/255 (default: "
        "2.5*eps/steps).")] = None,
    keep_iterate: Annotated[str, typer.Option(
        "--keep-iterate", help="Which PGD iterate decides robustness: first-success (robust only "
        "if no iterate of any restart, random start included, is misclassified) or last (only "
        "the final iterate, as training uses it; overstates robustness, for comparison with "
        "older results). Recorded in each PGD entry as `keep`.")] = "first-success",
    autoattack: Annotated[bool, typer.Option(
        "--autoattack/--no-autoattack",
        help="Run AutoAttack (pyautoattack) at every eps.")] = False,
    aa_version: Annotated[str, typer.Option(
        "--aa-version", help="AutoAttack version: standard, plus, rand or custom.")] = "standard",
    aa_attacks: Annotated[str | None, typer.Option(
        "--aa-attacks", help="With --aa-version custom: comma-separated subset of apgd-ce, "
        "apgd-dlr, fab, square, apgd-t, fab-t (restarts: see --aa-restarts).")] = None,
    aa_restarts: Annotated[int | None, typer.Option(
        "--aa-restarts", help="Restarts (count) of AutoAttack's untargeted APGD (apgd-ce, apgd-dlr) "
        "and FAB; default: the version's own (standard and rand 1, plus and custom 5, which on a "
        "robust model costs up to 5x the time). The number used is written to the result.")] = None,
    fast_worst_case: Annotated[bool, typer.Option(
        "--fast-worst-case/--no-fast-worst-case",
        help="Run the fast worst-case evaluation at every eps: APGD-CE, then targeted APGD on the 3 "
        "classes MALT ranks closest (linearised margin), on the points still standing; entry "
        "apgd-ce+malt-t3. Not AutoAttack: for papers and leaderboards run --autoattack.")] = False,
    adv_data: Annotated[Path | None, typer.Option(
        "--adv-data", help="Also evaluate on a precomputed adversarial set (advcli attack "
        "--out), recording where it came from (transfer).")] = None,
    split: Annotated[str, typer.Option("--split", help="test, train or val.")] = "test",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per batch.")] = 256,
    seed: Annotated[int, typer.Option(
        "--seed", help="Seed of the example order and of the attacks' random starts.")] = 0,
    device: Annotated[str, typer.Option("--device", help=DEVICE_HELP)] = "auto",
    dataset: Annotated[str | None, typer.Option(
        "--dataset",
        help="Dataset override (default: the one recorded in the checkpoint; needed with "
        "--model and no checkpoint).")] = None,
    data_dir: Annotated[str | None, typer.Option(
        "--data-dir", help="Where torchvision datasets live.")] = None,
    stream: common.CheckpointStream = None,
    image_size: common.CheckpointImageSize = None,
    skip_bad: common.CheckpointSkipBad = False,
    label: Annotated[str | None, typer.Option(
        "--label", help="Row name in compare tables (default: the checkpoint's label, plus "
        "' + DEFENCE' with --wrap).")] = None,
    model: Annotated[str | None, typer.Option("--model", help=MODEL_HELP)] = None,
    wrap: Annotated[str | None, typer.Option("--wrap", help=WRAP_HELP)] = None,
    model_dir: Annotated[str | None, typer.Option("--model-dir", help=MODEL_DIR_HELP)] = None,
    channels_last: Annotated[bool | None, common.channels_last_option(AUTO_DEFAULT)] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Result file to write (YAML, schema advcli.results/1).")] = None,
    format: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "table",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue a killed run from its progress file beside -o "
        "(NAME.progress.yaml, written after every finished chunk of --batch-size examples): "
        "finished chunks are skipped and the result equals an uninterrupted run's. Refused when "
        "the checkpoint, the examples, the options or the advcli/torch/pyautoattack versions "
        "differ. Without a progress file the run starts from the beginning.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the plan (attacks, eps, examples, chunks, estimated time) and "
        "exit without attacking. Clean and PGD times come from timing one batch (or from the "
        "progress file's chunks with --resume); AutoAttack's is unknown until its first chunk.")
    ] = False,
    config: Annotated[Path | None, typer.Option("--config", help=CONFIG_HELP)] = None,
) -> None:
    """Evaluate a checkpoint: clean, PGD and AutoAttack accuracy, into a result file.

    Also transfer accuracy on a precomputed adversarial set, and the per-example worst case
    over the attacks run. The result file (-o) feeds `advcli compare`.

    With -o, every finished chunk is recorded in a progress file beside it (deleted once the
    result is written); a killed run continues with the same command plus --resume. The time
    left is estimated and printed after the first chunk of each attack.

    Any model, any defence: --model FILE.py:CALLABLE evaluates the nn.Module it returns and
    --wrap FILE.py:CALLABLE the module it builds around the loaded model. Both RUN THE PYTHON
    CODE in the file they name, with torch seeded to 0 (random initialisation is reproducible);
    the result records under user_code the file's sha256 (that file only, not modules it
    imports) and the sha256 of the weights it built, and --resume checks both. Weights are
    only ever read from safetensors.

    Example: advcli eval robust.safetensors --eps 8/255,16/255 --autoattack -o results/robust.yaml
    """
    opts = resolve_options(ctx, locals())
    out_format = str(opts["format"]).strip().lower()
    if out_format not in FORMATS:
        raise UsageError(f"unknown --format {out_format!r}; valid values: {', '.join(FORMATS)}")
    eopts = eval_options(opts)

    from advcli import distributed
    from advcli.device import resolve_device
    from advcli.evaluate.progress_file import discard
    from advcli.evaluate.run import plan_eval, run_eval
    from advcli.formats.results import save_results

    info, dev = distributed.setup(resolve_device(opts["device"]))
    try:
        from advcli.progress import NullReporter

        reporter = render.RichReporter(quiet=bool(opts["quiet"])) if info.is_main else NullReporter()
        if opts["dry_run"]:
            plan = plan_eval(opts["checkpoint"], eopts, device=dev, reporter=reporter)
        else:
            result = run_eval(opts["checkpoint"], eopts, device=dev, reporter=reporter)
    finally:
        distributed.cleanup()
    if not info.is_main:
        return  # rank 0 alone writes and prints; every rank holds the same gathered result
    if opts["dry_run"]:
        if out_format == "table":
            render_plan(plan)
        else:
            render.dump(plan.to_dict(), out_format)
        return
    if opts["out"]:
        save_results(opts["out"], result)
        discard(eopts.progress_file)  # only now: the result holds everything it recorded
    if out_format == "table":
        render_result(result)
    else:
        render.dump(result.to_dict(), out_format)
    if opts["out"]:
        render.info_line(f"wrote {opts['out']}")
