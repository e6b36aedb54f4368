"""The `check-loader` stage: is a data pipeline's augmentation randomness really random?

The bugs it looks for: DataLoader workers that share one random stream produce the same "random"
augmentations (an RNG object made before the workers start, a constant re-seed in a
`worker_init_fn`, advcli's emulated pre-1.9 seeding), often the same ones every epoch; DDP ranks
seeded alike produce the same ones on every rank; and an RNG seeded per item from something
fixed for the run (the index alone, or the worker seed with persistent workers) gives each image
the same augmentation every epoch.

Method (the probe): every worker loads the same list of distinct items in the same order, then
in a second order, in every epoch, for each persistent_workers setting and simulated rank; every
output is hashed (the fingerprint) and the per-worker output *sequences* are compared pair by
pair, position by position and item by item across the two orders (see `analysis`). Chance
agreement is estimated from control runs (the same items under other seeds), and each agreement
gets a p(chance) against a Bonferroni threshold. What this tells apart: streams duplicated
across workers, repeated across epochs or shared by ranks (a shared RNG); augmentations frozen
per item (an RNG seeded by the index alone) or fixed per worker for the run (seeded by worker
seed and index with persistent workers); correct per-item seeding (clean); and pipelines with no
randomness at all, told from frozen ones by recording random-number calls in the probe's
workers (`rng_use`). "Inconclusive" when even identical sequences would not beat chance.

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
