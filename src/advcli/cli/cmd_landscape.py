"""`advcli landscape CKPT...`: filter-normalised loss landscapes (Li et al. 2018), a YAML file of
the grid and flatness numbers, and optionally a picture. Several checkpoints share one grid, one
subset and the same seeded directions."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from advcli.cli import common, render
from advcli.cli.common import CONFIG_HELP, DEVICE_HELP, FORMAT_HELP, FORMATS, handle_errors, resolve_options
from advcli.config import DEFAULT_EPS, Norm, parse_choice, parse_eps
from advcli.data.subsets import SUBSET_HELP, Subset, parse_subset
from advcli.errors import UsageError
from advcli.models.robustbench.zoo import MODEL_DIR_HELP
from advcli.models.user import MODEL_HELP, WRAP_HELP, check_user_options

DATA_KINDS = ("clean", "pgd", "fgsm", "fgsm-rs", "stadv")
DATA_HELP = (
    "Loss on clean images, or adversarial loss with the attack recomputed against the moved "
    "model at every grid point (pgd | fgsm | fgsm-rs | stadv). With --adv-data, fixed "
    "adversarial examples from a file instead."
)
ADV_DATA_HELP = (
    "Adversarial set written by `advcli attack` (safetensors): evaluate its fixed examples at "
    "every point (made against one model: transfer examples away from the centre)."
)
BN_HELP = (
    "BatchNorm: eval = the checkpoint's running statistics; recompute = re-estimate them from "
    "the subset's clean images at every point (one more forward pass per point)."
)
DIRECTIONS_HELP = (
    "Safetensors file of the raw random directions: read it when it exists, else draw them "
    "from --directions-seed and write it (each checkpoint filter-normalises them itself)."
)
RANGE_HELP = "Grid coordinates LO:HI (or R for -R:R), in units of the filter-normalised direction."
RADIUS_HELP = (
    "Flatness radius r: loss increase at ±r along each direction (mean and max); r=0.1 moves "
    "every filter by 10% of its norm."
)
FLATNESS_SEEDS_HELP = (
    "Measure the flatness along K direction seeds (a count): the grid's seed s and s+1 … "
    "s+K-1, at the centre and ±r only (2·dim points per extra seed, no grid). Gives the "
    "per-seed numbers and their spread; `advcli compare` tests flatness claims on them and "
    "needs K >= 5."
)


@handle_errors
def landscape(
    ctx: typer.Context,
    checkpoints: Annotated[list[Path] | None, typer.Argument(
        help="Checkpoints (.safetensors) or robustbench:NAME models; several are drawn on shared "
        "axes. With --model, the weights of its module (optional).", show_default=False)] = None,
    dim: Annotated[int, typer.Option(
        "--dim", help="Number of directions: 1 (a curve) or 2 (contour and surface).")] = 1,
    range_: Annotated[str, typer.Option("--range", help=RANGE_HELP)] = "-1:1",
    points: Annotated[int, typer.Option(
        "--points", help="Grid points per axis (count, >= 2; 2-D evaluates points² of them).")] = 51,
    directions_seed: Annotated[int, typer.Option(
        "--directions-seed",
        help="Seed of the Gaussian directions (same seed = same directions).")] = 0,
    directions: Annotated[Path | None, typer.Option("--directions", help=DIRECTIONS_HELP)] = None,
    flatness_seeds: Annotated[int, typer.Option(
        "--flatness-seeds", help=FLATNESS_SEEDS_HELP)] = 1,
    include_bias_bn: Annotated[bool, typer.Option(
        "--include-bias-bn/--no-include-bias-bn",
        help="Also move biases and BatchNorm scale/shift (default: their direction is zero).")] = False,
    n: Annotated[int, typer.Option(
        "--n", "--n-test", help="Evaluate on the first N test examples (a count, in the order "
        "--subset names; --n-test is the same). With --adv-data, its first N examples.")] = 1000,
    subset: Annotated[str, typer.Option("--subset", help=SUBSET_HELP)] = Subset.stratified.value,
    data: Annotated[str, typer.Option("--data", help=DATA_HELP)] = "clean",
    norm: Annotated[str, typer.Option(
        "--norm", help="Ball of fgsm/fgsm-rs/pgd: linf | l2.")] = "linf",
    eps: Annotated[str | None, typer.Option(
        "--eps", help="Attack radius in pixel units of [0, 1] images, like 8/255 (default: 8/255 "
        "linf, 0.5 l2; not stadv).")] = None,
    steps: Annotated[int | None, typer.Option(
        "--steps", help="Attack iterations (count; default: pgd 10, stadv 100).")] = None,
    step_size: Annotated[str | None, typer.Option(
        "--step-size", help="Attack step size in the units of --eps, like 2/255 (default: the "
        "attack's own).")] = None,
    tau: Annotated[float, typer.Option(
        "--tau", help="stadv: weight of the flow-smoothness loss (dimensionless; Xiao et al.: "
        "0.05). Lower it (e.g. 0.005) when stAdv rarely succeeds: the right value depends on the "
        "model's logit scale.")] = 0.05,
    bound: Annotated[str | None, typer.Option(
        "--bound", help="stadv: flow bound in pixels (default: unbounded).")] = None,
    adv_data: Annotated[Path | None, typer.Option("--adv-data", help=ADV_DATA_HELP)] = None,
    bn: Annotated[str, typer.Option("--bn", help=BN_HELP)] = "eval",
    radius: Annotated[float, typer.Option("--radius", help=RADIUS_HELP)] = 0.1,
    hessian: Annotated[bool, typer.Option(
        "--hessian/--no-hessian",
        help="Also estimate the top Hessian eigenvalue (power iteration on Hessian-vector "
        "products; on the centre's adversarial examples when attacking).")] = False,
    hessian_iters: Annotated[int, typer.Option(
        "--hessian-iters", help="Power iterations at most (count).")] = 20,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", help="Examples per forward pass.")] = 128,
    seed: Annotated[int, typer.Option(
        "--seed", help="Seed of the subset order and of the attack's random starts.")] = 0,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="Dataset override (default: the one recorded in the checkpoints).")] = None,
    data_dir: Annotated[str | None, typer.Option(
        "--data-dir", help="Where torchvision datasets live.")] = None,
    stream: common.CheckpointStream = None,
    image_size: common.CheckpointImageSize = None,
    skip_bad: common.CheckpointSkipBad = False,
    model_dir: Annotated[str | None, typer.Option("--model-dir", help=MODEL_DIR_HELP)] = None,
    device: Annotated[str, typer.Option("--device", help=DEVICE_HELP)] = "auto",
    channels_last: Annotated[bool | None, common.channels_last_option(
        "on on the CPU for advcli architectures, off for outside code (--model, --wrap, robustbench "
        "models)")] = None,
    model: Annotated[str | None, typer.Option("--model", help=MODEL_HELP)] = None,
    wrap: Annotated[str | None, typer.Option("--wrap", help=WRAP_HELP)] = None,
    out: Annotated[Path, typer.Option(
        "--out", help="YAML file of the grid and flatness numbers (read by `advcli compare`).")
    ] = Path("landscape.yaml"),
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Also draw the landscape to this PNG.")] = None,
    format: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "table",
    config: Annotated[Path | None, typer.Option("--config", help=CONFIG_HELP)] = None,
) -> None:
    """Filter-normalised loss landscape of one or more checkpoints along seeded random
    directions (Li et al. 2018), on clean or adversarial data, with flatness numbers."""
    opts = resolve_options(ctx, locals())
    lopts, fmt = landscape_options(opts)

    from advcli.device import resolve_device
    from advcli.landscape.run import run_landscape, write_landscape

    dev = resolve_device(opts["device"])
    run = run_landscape(opts["checkpoints"] or [], lopts, device=dev, reporter=render.RichReporter())
    for line in run.warnings:
        render.warn_line(line)
    doc, written = write_landscape(run, opts["out"], opts["plot"])
    _render(doc, fmt)
    for p in written:
        render.info_line(f"wrote {p}")


def _parse_range(text: Any) -> tuple[float, float]:
    raw = str(text).strip()
    try:
        if ":" in raw:
            lo_t, hi_t = raw.split(":", 1)
            lo, hi = float(lo_t), float(hi_t)
        else:
            hi = abs(float(raw))
            lo = -hi
    except ValueError:
        raise UsageError(f"--range {raw!r} is not LO:HI; write it like -1:1 or 0.5") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise UsageError(f"--range needs LO < HI, got {raw!r}")
    return lo, hi


def landscape_options(opts: dict[str, Any]) -> tuple[Any, str]:
    """Every usage error, before anything is loaded: (`LandscapeOptions`, output format)."""
    from advcli.attacks import EVAL_ATTACKS, AttackName, AttackSpec, build_attack
    from advcli.landscape.grid import BNMode
    from advcli.landscape.run import LandscapeOptions, LandscapeSettings

    fmt = str(opts["format"]).strip().lower()
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {opts['format']!r}; valid values: {', '.join(FORMATS)}")
    data = str(opts["data"]).strip().lower()
    if data not in DATA_KINDS:
        raise UsageError(f"unknown --data {opts['data']!r}; valid values: {', '.join(DATA_KINDS)}")
    if int(opts["n"]) < 1:
        raise UsageError(f"--n must be a positive number of examples, got {opts['n']}")
    subset = parse_subset(opts["subset"])
    if subset is not Subset.stratified and opts["adv_data"]:
        raise UsageError(f"--subset {subset.value} picks clean test examples; --adv-data uses the set's own "
                         "first N: drop --subset")
    check_user_options({**opts, "checkpoint": (opts["checkpoints"] or [None])[0]})
    if int(opts["flatness_seeds"]) < 1:
        raise UsageError(f"--flatness-seeds must be a count >= 1, got {opts['flatness_seeds']}")
    lo, hi = _parse_range(opts["range_"])
    settings = LandscapeSettings(
        dim=int(opts["dim"]),
        lo=lo,
        hi=hi,
        points=int(opts["points"]),
        include_bias_bn=bool(opts["include_bias_bn"]),
        bn=parse_choice(BNMode, opts["bn"], name="--bn mode"),
        radius=float(opts["radius"]),
        hessian=bool(opts["hessian"]),
        hessian_iterations=int(opts["hessian_iters"]),
        batch_size=int(opts["batch_size"]),
        attack_seed=int(opts["seed"]),
        channels_last=opts.get("channels_last"),
    )
    settings.check()
    spec = None
    if data != "clean" and opts["adv_data"] is None:
        name = parse_choice(AttackName, data, name="attack", listed=EVAL_ATTACKS)
        norm = parse_choice(Norm, opts["norm"], name="norm")
        eps = opts["eps"]
        if name is not AttackName.stadv and eps is None:
            eps = DEFAULT_EPS[norm]
        spec = AttackSpec(
            name=name,
            norm=norm,
            eps=None if eps is None else parse_eps(eps, name="--eps"),
            steps=opts["steps"],
            step_size=None if opts["step_size"] is None else parse_eps(opts["step_size"],
                                                                        name="--step-size"),
            tau=float(opts["tau"]),
            bound=None if opts["bound"] is None else parse_eps(opts["bound"], name="--bound",
                                                                allow_zero=False),
        )
        build_attack(spec)  # the attack's own checks (e.g. --step-size with fgsm)
    paths = [Path(opts["out"])] + [Path(opts[k]) for k in ("plot", "directions") if opts[k]]
    if len({p.resolve() for p in paths}) != len(paths):
        raise UsageError("--out, --plot and --directions must be different files")
    lopts = LandscapeOptions(
        settings=settings,
        data=data,
        attack=spec,
        adv_data=Path(opts["adv_data"]) if opts["adv_data"] else None,
        n=int(opts["n"]),
        subset=subset,
        seed=int(opts["seed"]),
        directions_seed=int(opts["directions_seed"]),
        directions=Path(opts["directions"]) if opts["directions"] else None,
        flatness_seeds=int(opts["flatness_seeds"]),
        dataset=opts["dataset"] or None,
        data_dir=opts["data_dir"],
        view=common.data_view(opts),
        model_dir=opts["model_dir"],
        model=opts["model"],
        wrap=opts["wrap"],
    )
    return lopts, fmt


def _render(doc: dict[str, Any], fmt: str) -> None:
    if fmt != "table":
        render.dump(doc, fmt)
        return
    rows = []
    for entry in doc["checkpoints"]:
        f = doc["flatness"][entry["label"]]
        eig = f.get("hessian_top_eigenvalue")
        mean = f"{f['increase_mean']:.4f}"
        if f.get("seed_sd") is not None:
            mean += f" ± {f['seed_sd']:.4f}"
        rows.append(
            (
                entry["label"],
                entry["trained_with"],
                f"{entry['center']['loss']:.4f}",
                f"{100 * entry['center']['accuracy']:.2f}%",
                mean,
                f"{f['increase_max']:.4f}",
                "-" if eig is None else f"{eig:.4g}",
                f"{entry['time_s']:.1f} s",
            )
        )
    first = doc["flatness"][doc["checkpoints"][0]["label"]]
    r, seeds = first["radius"], first.get("seeds") or []
    grid = doc["grid"]
    shape = f"{grid['points']}" if doc["dim"] == 1 else f"{grid['points']}x{grid['points']}"
    title = f"loss landscape ({shape} points, {doc['data']['kind']} data, n={doc['data']['n']})"
    columns = ["model", "trained with", "centre loss", "centre acc",
               f"Δloss@{r:g} mean", f"Δloss@{r:g} max", "λmax(H)", "time"]
    render.out.print(render.table(title, columns, rows))
    if len(seeds) > 1:
        render.out.print(f"Δloss over {len(seeds)} direction seeds ({seeds[0]}–{seeds[-1]}): mean "
                         "± sample sd of the per-seed means; max over all their directions")
