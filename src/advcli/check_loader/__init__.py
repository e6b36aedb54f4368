"""The `check-loader` stage: is a data pipeline's augmentation randomness really random?

Public face: `run_check_loader(CheckLoaderOptions)` (the command's one call), `check_pipeline`,
`check_advcli`, `check_all_modes` and the typed report (`LoaderReport`, `AllModesReport`, `Finding`,
`Verdict`). What it looks for and how: `checks`.

Modules: `report` (the typed results), `fingerprint` (hashing outputs inside the workers),
`pipeline` (importing and calling a user's pipeline), `layout` (which items, in which order),
`probe` (running a pipeline and the control runs, and advcli's own), `rng_use` (recording
random-number calls), `analysis` (comparisons, p(chance), findings, verdict), `checks` (the
entry points). The binomial helpers live in `advcli.stats`. Nothing here imports typer or rich.
"""

from advcli.check_loader.analysis import ALPHA, analyse, format_p
from advcli.check_loader.checks import (
    CheckLoaderOptions,
    check_advcli,
    check_all_modes,
    check_pipeline,
    run_check_loader,
)
from advcli.check_loader.fingerprint import fingerprint
from advcli.check_loader.layout import Layout, make_layout
from advcli.check_loader.pipeline import resolve_pipeline
from advcli.check_loader.report import (
    MAIN,
    SCHEMA,
    Agreement,
    AllModesReport,
    Finding,
    FindingKind,
    LoaderReport,
    ModeRow,
    StreamKey,
    Verdict,
)
from advcli.stats import binomial_tail, collision_probability

__all__ = [
    "ALPHA", "MAIN", "SCHEMA", "Agreement", "AllModesReport", "CheckLoaderOptions", "Finding",
    "FindingKind", "Layout", "LoaderReport", "ModeRow", "StreamKey", "Verdict", "analyse",
    "binomial_tail", "check_advcli", "check_all_modes", "check_pipeline",
    "collision_probability", "fingerprint", "format_p", "make_layout", "resolve_pipeline",
    "run_check_loader",
]
