"""`advcli import`: outside PyTorch weights -> a self-describing advcli checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from advcli.cli import render
from advcli.cli.common import CONFIG_HELP, handle_errors, resolve_options
from advcli.config import Norm, parse_choice, parse_eps
from advcli.errors import UsageError
from advcli.models.import_weights import import_weights, save_import
from advcli.models.robustbench.zoo import MODEL_DIR_HELP, is_zoo_spec


def _floats(text: str | None, name: str) -> list[float] | None:
    if text is None or str(text).strip().lower() in ("", "none"):
        return None
    if isinstance(text, (list, tuple)):
        parts = [str(v) for v in text]
    else:
        parts = [p for p in str(text).split(",") if p.strip()]
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise UsageError(
            f"--{name} takes numbers like 0.4914,0.4822,0.4465, got {text!r}"
        ) from None


@handle_errors
def import_(
    ctx: typer.Context,
    weights: Annotated[
        Path,
        typer.Argument(help="A PyTorch state dict (.pt/.pth), loaded with weights_only=True; or "
                       "robustbench:NAME, a RobustBench model zoo entry (--dataset and --norm choose "
                       "the zoo, default cifar10 linf; needs advcli[robustbench]).",
                       show_default=False),
    ],
    arch: Annotated[
        str, typer.Option("--arch", help="Architecture the weights belong to (e.g. resnet18).")
    ] = "",
    dataset: Annotated[
        str, typer.Option("--dataset", help="Dataset the model was trained on (e.g. cifar10).")
    ] = "",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Checkpoint to write (.safetensors).")
    ] = None,
    num_classes: Annotated[
        int | None,
        typer.Option("--num-classes", help="Classes; default: read from the final layer."),
    ] = None,
    mean: Annotated[
        str | None,
        typer.Option("--mean", help="Input normalisation mean the model expects, e.g. "
                     "0.4914,0.4822,0.4465; default none (identity)."),
    ] = None,
    std: Annotated[
        str | None,
        typer.Option("--std", help="Input normalisation std, e.g. 0.2471,0.2435,0.2616; "
                     "default none (identity)."),
    ] = None,
    label: Annotated[
        str | None, typer.Option("--label", help="Short name for compare; default: the --out stem.")
    ] = None,
    norm: Annotated[
        str | None,
        typer.Option("--norm", help="Threat model the model was trained for (linf or l2); "
                     "recorded so that eval defaults to it. Give with --eps."),
    ] = None,
    eps: Annotated[
        str | None, typer.Option("--eps", help="Threat-model eps, e.g. 8/255 (with --norm).")
    ] = None,
    model_dir: Annotated[str | None, typer.Option("--model-dir", help=MODEL_DIR_HELP)] = None,
    config: Annotated[Path | None, typer.Option("--config", help=CONFIG_HELP)] = None,
) -> None:
    """Import an outside PyTorch state dict as a self-describing advcli checkpoint.

    For published or pretrained models, so that eval, attack and compare can use them. Loads
    with torch.load(weights_only=True): plain tensors only, never pickled code.
    """
    opts = resolve_options(ctx, locals())
    if is_zoo_spec(opts["weights"]):
        _import_zoo(opts)
        return
    if not opts["arch"]:
        raise UsageError("--arch is required (e.g. --arch resnet18)")
    if not opts["dataset"]:
        raise UsageError("--dataset is required (e.g. --dataset cifar10)")
    if not opts["out"]:
        raise UsageError("--out is required (e.g. -o model.safetensors)")
    out_path = Path(opts["out"])
    threat = None
    if (opts["norm"] is None) != (opts["eps"] is None):
        raise UsageError("--norm and --eps record a threat model together; give both or neither")
    if opts["norm"] is not None:
        e = parse_eps(opts["eps"], name="--eps", allow_zero=False)
        threat = {"norm": parse_choice(Norm, opts["norm"], name="norm").value, "eps": e.value,
                  "eps_text": e.text, "attack": "unknown"}
    config_record = {k: (str(v) if isinstance(v, Path) else v)
                     for k, v in opts.items() if k != "ctx"}
    result = import_weights(
        opts["weights"],
        arch=opts["arch"],
        dataset=opts["dataset"],
        num_classes=opts["num_classes"],
        mean=_floats(opts["mean"], "mean"),
        std=_floats(opts["std"], "std"),
        label=opts["label"] or out_path.stem,
        threat_model=threat,
        config=config_record,
    )
    save_import(out_path, result)
    render.out.print(
        f"imported {opts['weights']} -> {out_path} (arch {result.meta['arch']}, "
        f"{result.num_classes} classes, source sha256 {result.source_sha256[:12]})",
        markup=False, highlight=False,
    )


def _import_zoo(opts: dict) -> None:
    from advcli.models.robustbench.imports import import_zoo

    if not opts["out"]:
        raise UsageError("--out is required (e.g. -o model.safetensors)")
    for name in ("arch", "mean", "std", "eps", "num_classes"):
        if opts[name]:
            raise UsageError(f"--{name.replace('_', '-')} does not apply to robustbench:NAME: the zoo "
                             "entry defines the architecture and its threat model")
    out_path = Path(opts["out"])
    config_record = {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items() if k != "ctx"}
    result = import_zoo(str(opts["weights"]), dataset=opts["dataset"] or None, norm=opts["norm"],
                        model_dir=opts["model_dir"], label=opts["label"], config=config_record)
    save_import(out_path, result)
    rb = result.meta["robustbench"]
    render.out.print(
        f"imported {result.meta['arch']} -> {out_path} (robustbench {rb['version']}, weights sha256 "
        f"{result.source_sha256[:12]})", markup=False, highlight=False,
    )
