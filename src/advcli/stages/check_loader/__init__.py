"""The `check-loader` stage: is a data pipeline's augmentation randomness really random?

The bug it looks for: DataLoader workers that share one random stream produce the same "random"
augmentations (an RNG object made before the workers start, a constant re-seed in a
`worker_init_fn`, advcli's emulated pre-1.9 seeding), often the same ones every epoch, and DDP
ranks seeded alike produce the same ones on every rank.

Method: load ONE item many times through N workers over >= 2 epochs, hash every output (the
fingerprint), and compare the per-worker output *sequences* position by position: worker against
worker in one epoch (duplicated streams), epoch against epoch (repeats), rank against rank.
Sequences, not sets, so a flip alone (two outcomes) is judged right: two independent streams of
64 flips agree in about half the positions, duplicated ones in all. Each agreement gets a
p(chance): the binomial tail P[X >= matches], X ~ Binomial(length, q), where q is the per-draw
collision probability estimated from the empirical distribution of all fingerprints of the check
(pooled, so duplication only inflates q and makes p conservative). A pair is flagged when p is
below ALPHA divided by the number of pairs compared (Bonferroni). Outputs that never change are
reported as "no randomness", not as a bug.

Modules: `report` (the typed results), `fingerprint` (hashing outputs inside the workers),
`pipeline` (importing and calling a user's pipeline), `probe` (running a pipeline, and advcli's
own), `analysis` (comparisons, p(chance), findings, verdict), `checks` (the entry points). The
binomial helpers live in `advcli.stats`. Nothing here imports typer or rich.
"""

from advcli.stages.check_loader.analysis import ALPHA, analyse, format_p
from advcli.stages.check_loader.checks import check_advcli, check_all_modes, check_pipeline
from advcli.stages.check_loader.fingerprint import fingerprint
from advcli.stages.check_loader.pipeline import resolve_pipeline
from advcli.stages.check_loader.report import (
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
    "ALPHA", "MAIN", "SCHEMA", "Agreement", "AllModesReport", "Finding", "FindingKind",
    "LoaderReport", "ModeRow", "StreamKey", "Verdict", "analyse", "binomial_tail",
    "check_advcli", "check_all_modes", "check_pipeline", "collision_probability", "fingerprint",
    "format_p", "resolve_pipeline",
]
