"""`advcli attack CKPT`: adversarial examples for a checkpoint, with a YAML summary and a grid.

Parses and checks the options, makes one stage call (`attacks.run.attack_checkpoint`),
writes the adversarial set, the grid and the summary all or nothing, and renders the summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from advcli.attacks import EVAL_ATTACKS, AttackName, AttackSpec, Keep, build_attack
from advcli.cli import common, render
from advcli.cli.common import CONFIG_HELP, DEVICE_HELP, FORMAT_HELP, FORMATS, handle_errors, resolve_options
from advcli.config import DEFAULT_EPS, Eps, Norm, parse_choice, parse_eps
from advcli.data.subsets import SUBSET_HELP, Subset, parse_subset
from advcli.errors import UsageError
from advcli.io import all_or_nothing
from advcli.models.robustbench.zoo import MODEL_DIR_HELP
from advcli.models.user import MODEL_HELP, WRAP_HELP, check_user_options

if TYPE_CHECKING:
    from advcli.attacks.run import AttackOptions

SPLITS = ("test", "train")
ATTACKS_HELP = " | ".join(a.value for a in EVAL_ATTACKS) + "."
EPS_HELP = "Ball radius in [0,1] pixel units, like 8/255 (default: 8/255 for linf, 0.5 for l2). Not for stadv."
STEP_SIZE_HELP = (
    "Step size in [0,1] pixel units (default: pgd 2.5*eps/steps, fgsm-rs 1.25*eps; "
    "stadv: Adam learning rate in pixels, 2.5*bound/steps, 0.01 when unbounded)."
)
BOUND_HELP = "stadv: largest flow displacement of any pixel, a radius in pixels (e.g. 0.5) (default: unbounded)."
KEEP_HELP = (
    "Which iterate is kept and decides robustness (fgsm, fgsm-rs, pgd): first-success (an "
    "example is robust only if no iterate of any restart, random start included, fools the "
    "model; the image kept is the first that does, else the highest-loss one) or last (the "
    "final iterate, as training uses it: the papers' images for static training sets, but "
    "robust_accuracy can be overstated). stadv always keeps its smoothest fooling flow."
)


@handle_errors
def attack_cmd(
    ctx: typer.Context,
    checkpoint: Annotated[Path | None, typer.Argument(
        help="Checkpoint (.safetensors) of the model to attack; with --model, the weights for its "
        "module (optional).", show_default=False)] = None,
    attack: Annotated[str, typer.Option(help=ATTACKS_HELP)] = "pgd",
    norm: Annotated[str, typer.Option(help="Ball of fgsm/fgsm-rs/pgd: linf | l2.")] = "linf",
    eps: Annotated[
        str | None,
        typer.Option(help=EPS_HELP),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(help="Iterations (default: pgd 10, stadv 100; fgsm/fgsm-rs take 1)."),
    ] = None,
    step_size: Annotated[
        str | None,
        typer.Option(help=STEP_SIZE_HELP),
    ] = None,
    restarts: Annotated[
        int,
        typer.Option(help="Random restarts (count; pgd, fgsm-rs); the worst case per example is kept."),
    ] = 1,
    keep_iterate: Annotated[str, typer.Option("--keep-iterate", help=KEEP_HELP)] = Keep.first_success.value,
    tau: Annotated[float, typer.Option(help="stadv: weight of the flow-smoothness loss (dimensionless; Xiao et al.: 0.05). Lower it (e.g. 0.005) when stAdv rarely succeeds: the right value depends on the model's logit scale.")] = 0.05,
    bound: Annotated[
        str | None,
        typer.Option(help=BOUND_HELP),
    ] = None,
    split: Annotated[str, typer.Option(help="Which split to attack: test | train.")] = "test",
    n: Annotated[
        int | None,
        typer.Option("--n", "--n-test", help="Attack the first N examples of the split, a count, in the order --subset names (--n-test is the same) (default: all)."),
    ] = None,
    subset: Annotated[str, typer.Option("--subset", help=SUBSET_HELP)] = Subset.stratified.value,
    batch_size: Annotated[int, typer.Option(help="Examples per attack batch.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed of the subset order and of the attack's random starts.")] = 0,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    out: Annotated[Path, typer.Option(help="Adversarial set to write (safetensors: x_adv, y, index).")] = Path(
        "adv.safetensors"
    ),
    summary: Annotated[
        Path | None,
        typer.Option(help="YAML summary to write (default: --out with the suffix .yaml)."),
    ] = None,
    grid: Annotated[
        Path | None,
        typer.Option(help="Also draw clean / adversarial / amplified perturbation to this PNG."),
    ] = None,
    label: Annotated[str | None, typer.Option(
        help="Name in tables (default: the checkpoint's label, plus ' + DEFENCE' with --wrap).")] = None,
    model: Annotated[str | None, typer.Option("--model", help=MODEL_HELP)] = None,
    wrap: Annotated[str | None, typer.Option("--wrap", help=WRAP_HELP)] = None,
    model_dir: Annotated[str | None, typer.Option("--model-dir", help=MODEL_DIR_HELP)] = None,
    channels_last: Annotated[bool | None, common.channels_last_option("off")] = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="Dataset override (default: the one recorded in the checkpoint; needed "
                     "with --model and no checkpoint)."),
    ] = None,
    data_dir: Annotated[str | None, typer.Option(help="Where torchvision datasets live.")] = None,
    stream: common.CheckpointStream = None,
    image_size: common.CheckpointImageSize = None,
    skip_bad: common.CheckpointSkipBad = False,
    format: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "table",
    config: Annotated[Path | None, typer.Option(help=CONFIG_HELP)] = None,
) -> None:
    """Attack a checkpoint with FGSM, FGSM-RS, PGD or stAdv: write the adversarial set, a YAML
    summary (clean, robust and adversarial accuracy, success rate, perturbation norms, 1-SSIM)
    and optionally a picture.

    --model FILE.py:CALLABLE attacks the nn.Module it returns and --wrap FILE.py:CALLABLE the
    module it builds around the loaded model (a defence). Both RUN THE PYTHON CODE in the file
    they name, with torch seeded to 0 (random initialisation is reproducible); the summary
    records under user_code the file's sha256 (that file only, not modules it imports) and the
    sha256 of the weights it built. Weights are only ever read from safetensors.
    """
    opts = resolve_options(ctx, locals())
    aopts, fmt, summary_path = _check_options(opts)

    # Heavy imports after the option checks: a usage error answers at once.
    from advcli.attacks.run import attack_checkpoint
    from advcli.device import resolve_device
    from advcli.formats.advset import save_adv_set
    from advcli.formats.results import write_attack_summary

    result = attack_checkpoint(opts["checkpoint"], aopts, device=resolve_device(opts["device"]),
                               reporter=render.RichReporter())
    outcome, doc = result.outcome, result.summary
    written: list[Path] = []
    with all_or_nothing(written):  # a failure deletes what was already written
        written.append(save_adv_set(aopts.out, x_adv=outcome.x_adv, y=outcome.y, index=outcome.index,
                                    targets=outcome.targets, attack=outcome.attack, meta=result.adv_meta))
        if aopts.grid is not None:
            from advcli.attacks.plot import attack_grid

            written.append(attack_grid(result.preview, outcome.x_adv[:8], outcome.y, outcome.clean_pred,
                                       outcome.adv_pred, aopts.grid, classes=result.classes,
                                       title=result.title))
        written.append(write_attack_summary(summary_path, doc))

    _render(doc, fmt)
    for p in written:
        render.info_line(f"wrote {p}")


def _nonneg(text: Any, name: str, *, allow_zero: bool = True) -> Eps:
    # parse_eps reads a leading minus as "not a number"; say what is actually wrong.
    if isinstance(text, str) and text.strip().startswith("-"):
        raise UsageError(f"{name} must be >= 0, got {text!r}")
    if isinstance(text, (int, float)) and not isinstance(text, bool) and text < 0:
        raise UsageError(f"{name} must be >= 0, got {text!r}")
    return parse_eps(text, name=name, allow_zero=allow_zero)


def _check_options(opts: dict[str, Any]) -> tuple[AttackOptions, str, Path]:
    """Every usage error, before anything is loaded: (`AttackOptions`, format, summary path)."""
    from advcli.attacks.run import AttackOptions

    name = parse_choice(AttackName, opts["attack"], name="attack", listed=EVAL_ATTACKS)
    split = str(opts["split"]).strip().lower()
    if split not in SPLITS:
        raise UsageError(f"unknown split {opts['split']!r}; valid values: {', '.join(SPLITS)}")
    opts["split"] = split
    fmt = str(opts["format"]).strip().lower()
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {opts['format']!r}; valid values: {', '.join(FORMATS)}")
    if opts["n"] is not None and opts["n"] < 1:
        raise UsageError(f"--n must be a positive number of examples, got {opts['n']}")
    if opts["batch_size"] < 1:
        raise UsageError(f"--batch-size must be >= 1, got {opts['batch_size']}")
    check_user_options(opts)
    norm = parse_choice(Norm, opts["norm"], name="norm")
    keep = parse_choice(Keep, opts["keep_iterate"], name="--keep-iterate")
    if name is AttackName.stadv and keep is Keep.last:
        raise UsageError("--keep-iterate last does not apply to stadv (it keeps its smoothest "
                         "fooling flow); drop it")
    eps = opts["eps"]
    if name is not AttackName.stadv and eps is None:
        eps = DEFAULT_EPS[norm]
    spec = AttackSpec(
        name=name,
        norm=norm,
        eps=None if eps is None else _nonneg(eps, "--eps"),
        steps=opts["steps"],
        step_size=None if opts["step_size"] is None else _nonneg(opts["step_size"], "--step-size"),
        restarts=int(opts["restarts"]),
        tau=float(opts["tau"]),
        bound=None if opts["bound"] is None else _nonneg(opts["bound"], "--bound", allow_zero=False),
        keep=None if name is AttackName.stadv else keep,
    )
    build_attack(spec)  # the attack's own checks (e.g. --step-size with fgsm)
    out_path = Path(opts["out"])
    summary_path = Path(opts["summary"]) if opts["summary"] else out_path.with_suffix(".yaml")
    paths = [out_path, summary_path] + ([Path(opts["grid"])] if opts["grid"] else [])
    if len({p.resolve() for p in paths}) != len(paths):
        raise UsageError("--out, --summary and --grid must be different files")
    aopts = AttackOptions(
        spec=spec,
        split=split,
        n=opts["n"],
        subset=parse_subset(opts["subset"]),
        batch_size=int(opts["batch_size"]),
        seed=int(opts["seed"]),
        dataset=opts["dataset"],
        data_dir=opts["data_dir"],
        view=common.data_view(opts),
        label=opts["label"],
        model=opts["model"],
        wrap=opts["wrap"],
        model_dir=opts["model_dir"],
        channels_last=opts.get("channels_last"),
        out=out_path,
        grid=Path(opts["grid"]) if opts["grid"] else None,
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()},
    )
    return aopts, fmt, summary_path


def _render(doc: dict[str, Any], fmt: str) -> None:
    from advcli.attacks.run import attack_title

    if fmt != "table":
        render.dump(doc, fmt)
        return
    m = doc["metrics"]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    rows = [
        ("clean accuracy", pct(m["clean_accuracy"])),
        ("robust accuracy (clean and adversarial correct)", pct(m["robust_accuracy"])),
        ("adversarial accuracy (adversarial images only)", pct(m["adv_accuracy"])),
        ("attack success rate", pct(m["success_rate"])),
        ("Linf mean / max", f"{m['linf_mean']:.5f} / {m['linf_max']:.5f}"),
        ("L2 mean / max", f"{m['l2_mean']:.4f} / {m['l2_max']:.4f}"),
        ("1-SSIM mean", f"{m['ssim_dissimilarity_mean']:.5f}"),
        ("examples", str(doc["data"]["n"])),
        ("time", f"{doc['time_s']:.1f} s"),
    ]
    keep = doc["attack"].get("keep")
    title = f"{doc['label']} under {attack_title(doc['attack'])}" + (f" (keep {keep})" if keep else "")
    render.out.print(render.table(title, ["metric", "value"], rows))
