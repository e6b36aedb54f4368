"""`advcli plot ...`: pictures drawn from files other stages wrote; `plot history` overlays runs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from advcli.cli import render
from advcli.cli.common import CONFIG_HELP, FORMAT_HELP, FORMATS, handle_errors, resolve_options
from advcli.errors import UsageError
from advcli.train.overlay import HistoryPlotResult

app = typer.Typer(
    help="Pictures from files other stages wrote.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _pct(value: float) -> str:
    return "" if math.isnan(value) else f"{100 * value:.2f}"


def render_result(result: HistoryPlotResult) -> None:
    rows = [
        (r.label, str(r.epochs), "" if math.isnan(r.train_loss) else f"{r.train_loss:.4f}",
         _pct(r.train_accuracy), _pct(r.adv_accuracy), _pct(r.test_accuracy),
         _pct(r.best_test_accuracy), str(r.best_test_epoch or ""), _pct(r.val_robust_accuracy))
        for r in result.runs
    ]
    columns = ["run", "epochs", "loss", "train %", "adv %", "test %", "best test %", "at epoch", "val robust %"]
    render.out.print(render.table("advcli plot history: last epoch of each run", columns, rows))


@app.command("history")
@handle_errors
def history(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(
        help="Runs to overlay: NAME.history.yaml (written when training ends) or NAME.metrics.jsonl "
        "(appended every epoch, so a run still training can be drawn).", show_default=False)],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="PNG to write (default: NAME.history.png beside a single run's file, "
        "history.png in the current folder for several).", show_default=False)] = None,
    title: Annotated[str | None, typer.Option(
        "--title", help="Title of the picture (default: the runs' names).", show_default=False)] = None,
    format: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "table",
    config: Annotated[Path | None, typer.Option("--config", help=CONFIG_HELP)] = None,
) -> None:
    """Draw training histories on one picture: loss and accuracy per epoch, one colour per run.

    Accuracy shows train, train adversarial, test, validation and validation robust accuracy
    where the run measured them. stdout gets each run's last-epoch numbers.

    Example: advcli plot history clean.history.yaml robust.history.yaml -o runs.png
    """
    opts = resolve_options(ctx, locals())
    out_format = str(opts["format"]).strip().lower()
    if out_format not in FORMATS:
        raise UsageError(f"unknown --format {out_format!r}; valid values: {', '.join(FORMATS)}")
    target = Path(opts["out"]) if opts["out"] else None
    if target is not None and target.suffix.lower() != ".png":
        raise UsageError(f"--out {str(target)!r} must end in .png (the picture is a PNG)")

    from advcli.train.overlay import plot_histories

    result = plot_histories([Path(p) for p in opts["files"]], target, title=opts["title"])
    if out_format == "table":
        render_result(result)
    else:
        render.dump(result.to_dict(), out_format)
    render.info_line(f"wrote {result.out}")
