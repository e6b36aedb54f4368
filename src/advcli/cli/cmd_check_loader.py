"""`advcli check-loader`: is the augmentation randomness of a data pipeline duplicated across
DataLoader workers, repeated across epochs, shared by DDP ranks, or frozen per item? Parses the
options, makes one stage call (`run_check_loader`) and renders the report. Exit 0 clean, 1 bug
found."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from advcli import check_loader as stage
from advcli.check_loader.probe import CONTROL_RUNS
from advcli.cli import render
from advcli.cli.common import CONFIG_HELP, FORMAT_HELP, FORMATS, data_view, handle_errors, resolve_options
from advcli.cli.train_options import ImageSize, SkipBad, Stream
from advcli.config import Augment, parse_choice
from advcli.errors import UsageError

_PERSISTENT = {"both": [False, True], "on": [True], "off": [False]}
_VERDICT_STYLE = {
    stage.Verdict.bug: "bold red",
    stage.Verdict.clean: "bold green",
    stage.Verdict.no_randomness: "bold yellow",
    stage.Verdict.inconclusive: "bold yellow",
}


@handle_errors
def check_loader(
    ctx: typer.Context,
    pipeline: Annotated[
        str | None,
        typer.Option(
            "--pipeline",
            help="Your pipeline: module:callable or path/to/file.py:callable returning a torch "
            "Dataset or DataLoader (a DataLoader's collate_fn, worker_init_fn, generator and "
            "persistent_workers are used as given). Called once per run and rank, with "
            "RANK/LOCAL_RANK/WORLD_SIZE set and rank=/world_size= passed if it takes them. "
            "Default: advcli's own training pipeline.",
            show_default=False,
        ),
    ] = None,
    augment: Annotated[
        str | None,
        typer.Option(
            "--augment",
            help="advcli's own pipeline in this mode: none, buggy, fixed or device "
            "(default: fixed, the NumPy-in-workers mode).",
            show_default=False,
        ),
    ] = None,
    all_modes: Annotated[
        bool,
        typer.Option(
            "--all-modes",
            help="A row per advcli augment mode; exit 0 when each behaves as designed "
            "(buggy flagged, fixed/device/none not).",
        ),
    ] = False,
    workers: Annotated[
        int, typer.Option("--workers", help="DataLoader worker processes (0: the main process).")
    ] = 4,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs per run (>= 2).")] = 2,
    samples: Annotated[
        int,
        typer.Option(
            "--samples",
            help="Loads per worker per epoch: min(samples/2, dataset size) distinct items, "
            f"loaded in two orders. Each control run ({CONTROL_RUNS}, under other seeds) loads as many.",
        ),
    ] = 64,
    ranks: Annotated[
        int,
        typer.Option(
            "--ranks",
            help="Simulate this many DDP ranks, each seeded the way the pipeline seeds it "
            "(advcli: seed + rank) and starting like a fresh process.",
        ),
    ] = 1,
    persistent_workers: Annotated[
        str | None,
        typer.Option(
            "--persistent-workers",
            help="both, on or off (default: both; for a DataLoader pipeline, its own setting).",
            show_default=False,
        ),
    ] = None,
    item: Annotated[
        int,
        typer.Option(
            "--item",
            help="Index of the first item loaded (the items follow it, wrapping at the end).",
        ),
    ] = 0,
    seed: Annotated[int, typer.Option("--seed", help="advcli's own pipeline: training seed.")] = 0,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="advcli's own pipeline on the first training images of this dataset "
        "(as `advcli train --dataset`; a streamed one through the streaming pipeline) instead of "
        "tiny random probe images.", show_default=False)] = None,
    data_dir: Annotated[str, typer.Option(
        "--data-dir", help="With --dataset: folder of the torchvision datasets.")] = "./data",
    stream: Stream = "auto",
    image_size: ImageSize = None,
    skip_bad: SkipBad = False,
    format: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "table",
    config: Annotated[Path | None, typer.Option("--config", help=CONFIG_HELP)] = None,
) -> None:
    """Check that data augmentation is really random: every DataLoader worker loads the same
    distinct items in the same order (and in a second order) over several epochs, and the
    workers' output sequences are compared with each other and with control runs under other
    seeds. Flags streams duplicated across workers, repeated across epochs or shared by ranks,
    augmentations frozen per item or fixed per worker, each with p(chance) and a fix.
    Exit 0 clean, 1 bug found, 2 usage error."""
    opts = resolve_options(ctx, locals())
    fmt = str(opts["format"]).strip().lower()
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {opts['format']!r}; valid values: {', '.join(FORMATS)}")
    result = stage.run_check_loader(_options(opts), reporter=render.RichReporter())
    if isinstance(result, stage.AllModesReport):
        _show_modes(result, fmt)
    else:
        _show(result, fmt)
    raise typer.Exit(1 if result.failed else 0)


def _options(opts: dict[str, Any]) -> stage.CheckLoaderOptions:
    """Check the options at the boundary and build `CheckLoaderOptions`."""
    if opts["pipeline"]:
        if opts["augment"] is not None or opts["all_modes"]:
            raise UsageError("--augment and --all-modes check advcli's own pipeline; "
                             "drop them when you pass --pipeline")
        if opts["dataset"]:
            raise UsageError("--dataset feeds advcli's own pipeline; your --pipeline loads its own "
                             "data: drop --dataset")
    elif int(opts["item"]) != 0:
        raise UsageError("--item applies to --pipeline; advcli's own check uses probe images")
    elif opts["all_modes"] and opts["augment"] is not None:
        raise UsageError("--all-modes checks every --augment mode; drop --augment")
    augment = None
    if not opts["pipeline"] and not opts["all_modes"]:
        augment = parse_choice(Augment, opts["augment"] or Augment.fixed.value, name="augment mode")
    return stage.CheckLoaderOptions(
        pipeline=str(opts["pipeline"]) if opts["pipeline"] else None, augment=augment,
        all_modes=bool(opts["all_modes"]), workers=int(opts["workers"]),
        epochs=int(opts["epochs"]), samples=int(opts["samples"]), ranks=int(opts["ranks"]),
        persistent=_parse_persistent(opts["persistent_workers"]), item=int(opts["item"]),
        seed=int(opts["seed"]), dataset=opts["dataset"] or None, data_dir=str(opts["data_dir"]),
        view=_view(opts),
    )


def _view(opts: dict[str, Any]) -> Any:
    # Checked against --dataset now (exit 2 before loading); the options need one.
    view = data_view(opts)
    if opts["dataset"]:
        view.load_kwargs(str(opts["dataset"]))
    elif view.image_size is not None or view.skip_bad or view.stream not in (None, "auto"):
        raise UsageError("--stream, --image-size and --skip-bad choose how --dataset is read; "
                         "pass --dataset")
    return view


def _parse_persistent(value: Any) -> list[bool] | None:
    if value is None:
        return None
    if isinstance(value, bool):  # `persistent-workers: on` in a YAML config is a boolean
        return [value]
    key = str(value).strip().lower()
    if key not in _PERSISTENT:
        raise UsageError(
            f"unknown --persistent-workers {value!r}; valid values: {', '.join(_PERSISTENT)}"
        )
    return _PERSISTENT[key]


def _settings_text(r: stage.LoaderReport) -> str:
    workers = f"{r.workers} workers" if r.workers else "main process"
    rank = f" · {r.ranks} ranks" if r.ranks > 1 else ""
    if r.advcli_pipeline:
        what = f"{r.items} probe images" if r.items > 1 else "a probe image"
    else:
        what = f"{r.items} items from item {r.item}" if r.items > 1 else f"item {r.item}"
    control = f" · {r.control_runs} control runs" if r.control_runs else ""
    return (f"{workers} × {r.epochs} epochs × {r.samples} loads of {what}{rank} · "
            f"persistent_workers {', '.join(r.persistent_workers)}{control}")


# How each bug finding reads in the verdict line.
_BUG_TEXT = {
    stage.FindingKind.duplicate_workers: "augmentation randomness duplicated across workers",
    stage.FindingKind.repeat_epochs: "augmentation randomness repeated across epochs",
    stage.FindingKind.duplicate_ranks: "augmentation randomness duplicated across ranks",
    stage.FindingKind.frozen: "augmentation frozen: each item gets the same one every epoch",
    stage.FindingKind.per_worker: "at most one augmentation per item per worker for the whole run",
}


def _verdict_text(r: stage.LoaderReport) -> str:
    if r.verdict is stage.Verdict.bug:
        return "BUG: " + "; ".join(_BUG_TEXT[f.kind] for f in r.findings if f.bug)
    if r.verdict is stage.Verdict.no_randomness:
        return ("no randomness: every load of an item gives the same output and no "
                "random-number call was seen, so nothing can be duplicated")
    if r.verdict is stage.Verdict.inconclusive:
        return ("inconclusive: too little randomness per load to judge; raise --samples (an "
                "augmentation seeded per item needs more distinct items)")
    pairs = f"{r.pairs_compared} pair{'s' if r.pairs_compared != 1 else ''}"
    return (f"clean: no duplicated, repeated or frozen sequences ({pairs} of sequences "
            f"compared, {r.distinct_outputs} distinct outputs in {r.loads} loads)")


def _show(r: stage.LoaderReport, fmt: str) -> None:
    if fmt != "table":
        render.dump(r.to_dict(), fmt)
        return
    rows = [(f.kind.value, _plain(f.evidence), _plain(f.fix)) for f in r.findings]
    if not rows:
        smallest = "" if r.smallest_p is None else f" (smallest {stage.format_p(r.smallest_p)})"
        rows = [("none", f"{r.distinct_outputs} distinct outputs in {r.loads} loads; two "
                 f"independent loads of an item agree with probability "
                 f"{r.collision_probability:.3g} (control runs); no pair of sequences agrees "
                 f"beyond chance{smallest}", "")]
    table = render.table(_plain(f"check-loader {r.target}: {_settings_text(r)}"),
                         ["finding", "evidence", "fix"], rows)
    _left_lines(table)
    render.out.print(table)
    for note in r.notes:
        render.out.print(f"note: {note}", markup=False, highlight=False)
    render.out.print(f"[{_VERDICT_STYLE[r.verdict]}]verdict:[/] {_verdict_text(r)} "
                     f"({r.time_s:.1f} s)", highlight=False)


def _show_modes(m: stage.AllModesReport, fmt: str) -> None:
    if fmt != "table":
        render.dump(m.to_dict(), fmt)
        return
    rows = []
    for row in m.rows:
        r = row.report
        evidence = r.findings[0].evidence if r.findings else _verdict_text(r)
        expected = "bug (emulated on purpose)" if row.expected_bug else "clean"
        rows.append((row.mode.value, r.verdict.value, expected,
                     "yes" if row.as_expected else "NO", _plain(evidence)))
    first = m.rows[0].report
    table = render.table(
        f"check-loader, advcli's pipeline per --augment mode: {first.epochs} epochs × "
        f"{first.samples} loads per worker",
        ["mode", "verdict", "expected", "as expected", "evidence"], rows,
    )
    _left_lines(table)
    render.out.print(table)
    if m.as_expected:
        render.out.print("[bold green]verdict:[/] every mode behaves as designed: buggy "
                         "duplicates and repeats its augmentation, fixed and device do not, none "
                         "has no randomness", highlight=False)
    else:
        bad = ", ".join(r.mode.value for r in m.rows if not r.as_expected)
        render.out.print(f"[bold red]verdict:[/] unexpected result for mode(s) {bad}",
                         highlight=False)


def _plain(text: str) -> str:
    # Table cells go through rich markup; user paths and specs may hold "[".
    return text.replace("[", r"\[")


def _left_lines(table: Any) -> None:
    # Text columns read better left-aligned, with a rule between multi-line rows.
    for column in table.columns:
        column.justify = "left"
        column.overflow = "fold"
    table.show_lines = True
