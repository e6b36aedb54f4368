"""`advcli landscape CKPT...`: filter-normalised loss landscapes (Li et al. 2018), a YAML file of
the grid and flatness numbers, and optionally a picture. Several checkpoints share one grid, one
subset and the same seeded directions."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from advcli.cli import render
from advcli.cli.common import CONFIG_HELP, DEVICE_HELP, FORMAT_HELP, FORMATS, handle_errors, resolve_options
from advcli.config import DEFAULT_EPS, Norm, parse_choice, parse_eps
from advcli.errors import UsageError
from advcli.io import all_or_nothing

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


@handle_errors
def landscape(
    ctx: typer.Context,
    checkpoints: Annotated[
        list[Path],
        typer.Argument(help="Checkpoints (.safetensors); several are drawn on shared axes."),
    ],
    dim: Annotated[int, typer.Option(help="1 (curve) or 2 (contour and surface).")] = 1,
    range_: Annotated[str, typer.Option("--range", help=RANGE_HELP)] = "-1:1",
    points: Annotated[int, typer.Option(help="Grid points per axis.")] = 51,
    directions_seed: Annotated[
        int, typer.Option(help="Seed of the Gaussian directions (same seed = same directions).")
    ] = 0,
    directions: Annotated[Path | None, typer.Option(help=DIRECTIONS_HELP)] = None,
    include_bias_bn: Annotated[
        bool,
        typer.Option(
            "--include-bias-bn/--no-include-bias-bn",
            help="Also move biases and BatchNorm scale/shift (default: their direction is zero).",
        ),
    ] = False,
    n: Annotated[
        int, typer.Option("--n", "--n-test", help="Evaluate on the first N test examples (advcli's fixed stratified order; --n-test is the same).")
    ] = 1000,
    data: Annotated[str, typer.Option(help=DATA_HELP)] = "clean",
    norm: Annotated[str, typer.Option(help="Ball of fgsm/fgsm-rs/pgd: linf | l2.")] = "linf",
    eps: Annotated[
        str | None,
        typer.Option(help="Attack radius like 8/255 (default: 8/255 linf, 0.5 l2; not stadv)."),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Attack iterations (default: pgd 10, stadv 100).")
    ] = None,
    step_size: Annotated[
        str | None, typer.Option(help="Attack step size (default: the attack's own).")
    ] = None,
    tau: Annotated[float, typer.Option(help="stadv: weight of the flow-smoothness loss (dimensionless; Xiao et al.: 0.05). Lower it (e.g. 0.005) when stAdv rarely succeeds: the right value depends on the model's logit scale.")] = 0.05,
    bound: Annotated[
        str | None, typer.Option(help="stadv: flow bound in pixels (default: unbounded).")
    ] = None,
    adv_data: Annotated[Path | None, typer.Option(help=ADV_DATA_HELP)] = None,
    bn: Annotated[str, typer.Option(help=BN_HELP)] = "eval",
    radius: Annotated[float, typer.Option(help=RADIUS_HELP)] = 0.1,
    hessian: Annotated[
        bool,
        typer.Option(
            "--hessian/--no-hessian",
            help="Also estimate the top Hessian eigenvalue (power iteration on Hessian-vector "
            "products; on the centre's adversarial examples when attacking).",
        ),
    ] = False,
    hessian_iters: Annotated[int, typer.Option(help="Power iterations at most.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Examples per forward pass.")] = 128,
    seed: Annotated[
        int, typer.Option(help="Seed of the subset order and of the attack's random starts.")
    ] = 0,
    dataset: Annotated[
        str | None,
        typer.Option(help="Dataset override (default: the one recorded in the checkpoints)."),
    ] = None,
    data_dir: Annotated[str | None, typer.Option(help="Where torchvision datasets live.")] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    out: Annotated[
        Path, typer.Option(help="YAML file of the grid and flatness numbers.")
    ] = Path("landscape.yaml"),
    plot: Annotated[
        Path | None, typer.Option(help="Also draw the landscape to this PNG.")
    ] = None,
    format: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "table",
    config: Annotated[Path | None, typer.Option(help=CONFIG_HELP)] = None,
) -> None:
    """Filter-normalised loss landscape of one or more checkpoints along seeded random
    directions (Li et al. 2018), on clean or adversarial data, with flatness numbers."""
    opts = resolve_options(ctx, locals())
    settings, spec, fmt = _check_options(opts)

    # Heavy imports after the option checks: a usage error answers at once.
    import torch

    from advcli.advset import load_adv_set
    from advcli.attacks import attack_record, build_attack
    from advcli.checkpoint import load_checkpoint
    from advcli.data import test_subset, to_float
    from advcli.data.for_checkpoint import dataset_for_checkpoints
    from advcli.device import resolve_device
    from advcli.io import sha256_file
    from advcli.landscape.directions import (
        check_compatible,
        gaussian_directions,
        load_directions,
        save_directions,
    )
    from advcli.landscape.grid import BNMode
    from advcli.plots_landscape import plot_landscape
    from advcli.provenance import provenance
    from advcli.results import trained_with_text
    from advcli.stages.landscape import build_document, run_landscape, write_document

    dev = resolve_device(opts["device"])
    loaded = [load_checkpoint(p, dev) for p in opts["checkpoints"]]
    labels = _labels(loaded)

    # The subset: clean test images, or the first n of a fixed adversarial set.
    bn_x = None
    attack = None
    attack_info = None
    adv_info = None
    if opts["adv_data"] is not None:
        adv = load_adv_set(opts["adv_data"])
        made_by = (adv.meta.get("attack") or {}).get("name")
        if opts["data"] != "clean" and made_by and made_by != opts["data"]:
            raise UsageError(
                f"--adv-data holds {made_by} examples but --data is {opts['data']}; "
                "drop --data or pass a matching file"
            )
        k = min(int(opts["n"]), int(adv.y.shape[0]))
        x, y, index = adv.x_adv[:k].float(), adv.y[:k], adv.index[:k]
        kind, dataset_name, split = "fixed", adv.meta.get("dataset"), adv.meta.get("split", "test")
        subset_seed = adv.meta.get("seed")
        attack_info = adv.meta.get("attack")
        adv_info = {
            "path": str(opts["adv_data"]),
            "sha256": sha256_file(opts["adv_data"]),
            "checkpoint_sha256": adv.meta.get("checkpoint_sha256"),
            "n": int(adv.y.shape[0]),
        }
        if not any(c.sha256 == adv.meta.get("checkpoint_sha256") for c in loaded):
            render.warn_line(
                "the adversarial set was made against none of these checkpoints: its examples "
                "are transfer examples for all of them"
            )
        if settings.bn is BNMode.recompute:
            images = dataset_for_checkpoints([c.meta for c in loaded], names=[str(c.path) for c in loaded], dataset=opts["dataset"] or dataset_name, data_dir=opts["data_dir"])
            xs_all, _ = images.split(str(split))
            bn_x = to_float(xs_all[index])
    else:
        images = dataset_for_checkpoints([c.meta for c in loaded], names=[str(c.path) for c in loaded], dataset=opts["dataset"] or None, data_dir=opts["data_dir"])
        index = test_subset(images.test_y, int(opts["n"]), int(opts["seed"]))
        x, y = to_float(images.test_x[index]), images.test_y[index]
        kind, dataset_name, split = ("clean" if spec is None else "attack"), images.name, "test"
        subset_seed = int(opts["seed"])
        if spec is not None:
            attack = build_attack(spec)
            attack_info = attack_record(spec, attack)

    data_record = {
        "kind": kind,
        "dataset": dataset_name,
        "split": split,
        "n": int(y.shape[0]),
        "seed": subset_seed,
        "index_sha256": hashlib.sha256(index.to(torch.int64).numpy().tobytes()).hexdigest(),
        "attack": attack_info,
        "adv_data": adv_info,
    }

    # Directions: one raw set per architecture, from the file or the seed.
    dir_path = Path(opts["directions"]) if opts["directions"] else None
    new_directions = None
    seed_d = int(opts["directions_seed"])
    if dir_path is not None and dir_path.exists():
        raw, dmeta = load_directions(dir_path)
        if len(raw) < settings.dim:
            raise UsageError(
                f"{str(dir_path)!r} holds {len(raw)} direction(s) but --dim {settings.dim} needs "
                f"{settings.dim}; use another file or a missing path to create one"
            )
        for c in loaded:
            check_compatible(raw[0], c.model, repr(str(dir_path)))
        if dmeta.get("seed") is not None and dmeta.get("seed") != seed_d:
            render.warn_line(
                f"using the directions stored in {dir_path} (seed {dmeta.get('seed')}); "
                "--directions-seed applies only when the file is created"
            )
        directions_record = {
            "seed": dmeta.get("seed"), "file": str(dir_path), "file_sha256": sha256_file(dir_path),
        }

        def directions_for(model: Any) -> Any:
            return raw
    else:
        arches = {str(c.meta.get("arch")) for c in loaded}
        if dir_path is not None:
            if len(arches) > 1:
                raise UsageError(
                    "--directions FILE stores directions for one architecture but the "
                    f"checkpoints mix {sorted(arches)}; drop --directions (the seed is enough)"
                )
            new_directions = gaussian_directions(loaded[0].model, settings.dim, seed_d)
        directions_record = {"seed": seed_d, "file": str(dir_path) if dir_path else None,
                             "file_sha256": None}

        def directions_for(model: Any) -> Any:
            return gaussian_directions(model, settings.dim, seed_d)

    result = run_landscape(
        list(zip(labels, [c.model for c in loaded], strict=True)),
        x,
        y,
        directions_for,
        settings,
        device=dev,
        attack=attack,
        bn_x=bn_x,
        reporter=render.RichReporter(),
    )

    out_path = Path(opts["out"])
    plot_path = Path(opts["plot"]) if opts["plot"] else None
    checkpoint_records = [
        {
            "path": str(c.path),
            "sha256": c.sha256,
            "arch": c.meta.get("arch"),
            "trained_with": trained_with_text(c.meta.get("threat_model")),
        }
        for c in loaded
    ]
    written: list[Path] = []
    with all_or_nothing(written):  # a failure deletes what was already written
        if new_directions is not None and dir_path is not None:
            written.append(
                save_directions(
                    dir_path, new_directions, {"seed": seed_d, "arch": loaded[0].meta.get("arch")}
                )
            )
            directions_record["file_sha256"] = sha256_file(dir_path)
        doc = build_document(
            result,
            settings,
            checkpoints=checkpoint_records,
            directions=directions_record,
            data=data_record,
            provenance=provenance(int(opts["seed"]), {"device": str(dev)}),
            outputs={"yaml": str(out_path), "plot": str(plot_path) if plot_path else None},
        )
        if plot_path is not None:
            written.append(plot_landscape(doc, plot_path))
        written.append(write_document(out_path, doc))

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


def _check_options(opts: dict[str, Any]) -> tuple[Any, Any, str]:
    """Every usage error, before anything is loaded."""
    from advcli.attacks import AttackName, AttackSpec, build_attack
    from advcli.landscape.grid import BNMode
    from advcli.stages.landscape import LandscapeSettings

    fmt = str(opts["format"]).strip().lower()
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {opts['format']!r}; valid values: {', '.join(FORMATS)}")
    data = str(opts["data"]).strip().lower()
    if data not in DATA_KINDS:
        raise UsageError(f"unknown --data {opts['data']!r}; valid values: {', '.join(DATA_KINDS)}")
    opts["data"] = data
    if int(opts["n"]) < 1:
        raise UsageError(f"--n must be a positive number of examples, got {opts['n']}")
    if not opts["checkpoints"]:
        raise UsageError("give at least one checkpoint")
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
    )
    settings.check()
    spec = None
    if data != "clean" and opts["adv_data"] is None:
        name = parse_choice(AttackName, data, name="attack")
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
    return settings, spec, fmt


def _labels(loaded: list[Any]) -> list[str]:
    """Each checkpoint's label (metadata, else the file stem), made unique with #2, #3, ..."""
    labels: list[str] = []
    for c in loaded:
        base = str(c.meta.get("label") or Path(c.path).name.removesuffix(".safetensors"))
        label, k = base, 2
        while label in labels:
            label, k = f"{base}#{k}", k + 1
        labels.append(label)
    return labels




def _render(doc: dict[str, Any], fmt: str) -> None:
    if fmt != "table":
        render.dump(doc, fmt)
        return
    rows = []
    for entry in doc["checkpoints"]:
        f = doc["flatness"][entry["label"]]
        eig = f.get("hessian_top_eigenvalue")
        rows.append(
            (
                entry["label"],
                entry["trained_with"],
                f"{entry['center']['loss']:.4f}",
                f"{100 * entry['center']['accuracy']:.2f}%",
                f"{f['increase_mean']:.4f}",
                f"{f['increase_max']:.4f}",
                "-" if eig is None else f"{eig:.4g}",
                f"{entry['time_s']:.1f} s",
            )
        )
    r = doc["flatness"][doc["checkpoints"][0]["label"]]["radius"]
    grid = doc["grid"]
    shape = f"{grid['points']}" if doc["dim"] == 1 else f"{grid['points']}x{grid['points']}"
    title = f"loss landscape ({shape} points, {doc['data']['kind']} data, n={doc['data']['n']})"
    columns = ["model", "trained with", "centre loss", "centre acc",
               f"Δloss@{r:g} mean", f"Δloss@{r:g} max", "λmax(H)", "time"]
    render.out.print(render.table(title, columns, rows))
