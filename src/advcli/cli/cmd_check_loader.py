"""`advcli check-loader`: is the augmentation randomness of a data pipeline duplicated across
DataLoader workers, repeated across epochs, or shared by DDP ranks? Exit 0 clean, 1 bug found."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from advcli.cli import render
from advcli.cli.common import CONFIG_HELP, FORMAT_HELP, FORMATS, handle_errors, resolve_options
from advcli.config import Augment, parse_choice
from advcli.errors import UsageError
from advcli.stages import check_loader as stage

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
    workers: Annotated[int, typer.Option("--workers", help="DataLoader worker processes.")] = 4,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs per run (>= 2).")] = 2,
    samples: Annotated[
        int, typer.Option("--samples", help="Loads of the item per worker per epoch.")
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
    item: Annotated[int, typer.Option("--item", help="Index of the item loaded repeatedly.")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="advcli's own pipeline: training seed.")] = 0,
    format: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "table",
    config: Annotated[Path | None, typer.Option("--config", help=CONFIG_HELP)] = None,
) -> None:
    """Check that data augmentation is really random: load one item many times through
    DataLoader workers over several epochs and compare the workers' output sequences.
    Flags streams duplicated across workers, repeated across epochs or shared by ranks,
    each with p(chance) and a fix. Exit 0 clean, 1 bug found, 2 usage error."""
    opts = resolve_options(ctx, locals())
    fmt = str(opts["format"]).strip().lower()
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {opts['format']!r}; valid values: {', '.join(FORMATS)}")
    persistent = _parse_persistent(opts["persistent_workers"])
    counts: dict[str, Any] = {
        "workers": int(opts["workers"]), "epochs": int(opts["epochs"]),
        "samples": int(opts["samples"]), "ranks": int(opts["ranks"]), "persistent": persistent,
    }
    reporter = render.RichReporter()
    if opts["pipeline"]:
        if opts["augment"] is not None or opts["all_modes"]:
            raise UsageError("--augment and --all-modes check advcli's own pipeline; "
                             "drop them when you pass --pipeline")
        report = stage.check_pipeline(
            str(opts["pipeline"]), item=int(opts["item"]), reporter=reporter, **counts
        )
        _show(report, fmt)
        raise typer.Exit(1 if report.is_bug else 0)
    if int(opts["item"]) != 0:
        raise UsageError("--item applies to --pipeline; advcli's own check uses probe images")
    if opts["all_modes"]:
        if opts["augment"] is not None:
            raise UsageError("--all-modes checks every --augment mode; drop --augment")
        modes = stage.check_all_modes(seed=int(opts["seed"]), reporter=reporter, **counts)
        _show_modes(modes, fmt)
        raise typer.Exit(0 if modes.as_expected else 1)
    mode = parse_choice(Augment, opts["augment"] or Augment.fixed.value, name="augment mode")
    report = stage.check_advcli(mode, seed=int(opts["seed"]), reporter=reporter, **counts)
    _show(report, fmt)
    raise typer.Exit(1 if report.is_bug else 0)


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
    what = "a probe image" if r.advcli_pipeline else f"item {r.item}"
    return (f"{workers} × {r.epochs} epochs × {r.samples} loads of {what}{rank} · "
            f"persistent_workers {', '.join(r.persistent_workers)}")


def _verdict_text(r: stage.LoaderReport) -> str:
    if r.verdict is stage.Verdict.bug:
        kinds = " and ".join(f.kind.value for f in r.findings if f.bug)
        return f"BUG: augmentation randomness {kinds}"
    if r.verdict is stage.Verdict.no_randomness:
        return "no randomness: every load gives the same output, so nothing can be duplicated"
    if r.verdict is stage.Verdict.inconclusive:
        return "inconclusive: too little randomness per load to judge; raise --samples"
    pairs = f"{r.pairs_compared} pair{'s' if r.pairs_compared != 1 else ''}"
    return (f"clean: no duplicated or repeated sequences ({pairs} of sequences compared, "
            f"{r.distinct_outputs} distinct outputs in {r.loads} loads)")


def _show(r: stage.LoaderReport, fmt: str) -> None:
    if fmt != "table":
        render.dump(r.to_dict(), fmt)
        return
    rows = [(f.kind.value, _plain(f.evidence), _plain(f.fix)) for f in r.findings]
    if not rows:
        smallest = "" if r.smallest_p is None else f" (smallest {stage.format_p(r.smallest_p)})"
        rows = [("none", f"{r.distinct_outputs} distinct outputs in {r.loads} loads, per-load "
                 f"collision probability {r.collision_probability:.3g}; no pair of sequences "
                 f"agrees beyond chance{smallest}", "")]
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
