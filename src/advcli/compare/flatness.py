"""The flatness table from landscape files: per checkpoint label, the mean loss increase at
radius r along filter-normalised directions; each direction seed of each checkpoint is one
sample. `direction_pairs` pairs two cells seed by seed, for the claims' paired test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from advcli.compare.columns import hashable
from advcli.compare.model import Cell, Column, ColumnKey, CompareTable, Observation, Row, TableKind
from advcli.compare.rows import RowGroup, keys_of, ordered_groups, rows_from_groups
from advcli.errors import ResultsError


@dataclass
class FlatnessModel:
    """One checkpoint's flatness in one landscape file."""

    sha256: str | None
    radius: float
    # direction seed -> mean loss increase at the radius along that seed's direction(s)
    samples: dict[Any, float]


@dataclass
class FlatnessSet:
    """The parts of one `advcli.landscape/1` file a flatness table needs."""

    path: Path
    dim: int
    directions_seed: Any
    examples: tuple[Any, Any, Any, Any, None]
    models: dict[str, FlatnessModel]
    # What the loss was measured on: data kind (clean, an attack, --adv-data), its attack
    # parameters and the BatchNorm mode; different measurements are different columns.
    measure: tuple[tuple[str, Any], ...] = ()


@dataclass
class DirectionSample(Observation):
    """A flatness observation: one checkpoint along one direction seed's directions."""

    direction_seed: Any = None


def flatness_set(doc: dict[str, Any], path: Path) -> FlatnessSet:
    """Read the flatness numbers of a landscape document (`landscape.run.read_document`).
    A file written before flatness seeds holds one sample, along `directions.seed`."""
    try:
        shas = {str(c["label"]): c.get("sha256") for c in doc.get("checkpoints") or []}
        seed = (doc.get("directions") or {}).get("seed")
        models = {}
        for label, f in (doc.get("flatness") or {}).items():
            seeds, means = f.get("seeds"), f.get("seed_means")
            if seeds is None or means is None:
                seeds, means = [seed], [f["increase_mean"]]
            if len(seeds) != len(means) or len(set(seeds)) != len(seeds):
                raise ValueError(f"{label}: {len(seeds)} seeds, {len(means)} seed_means")
            models[str(label)] = FlatnessModel(
                shas.get(str(label)), float(f["radius"]),
                {s: float(v) for s, v in zip(seeds, means, strict=True)})
        data = doc.get("data") or {}
        examples = (data.get("dataset"), data.get("split"), data.get("index_sha256"),
                    data.get("n"), None)
        measure = (("data", data.get("kind") or "clean"), ("attack", hashable(
            sorted((data.get("attack") or {}).items()))), ("adv_data", data.get("adv_data")),
            ("bn", doc.get("bn") or "eval"))
        return FlatnessSet(path, int(doc["dim"]), seed, examples, models, measure)
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultsError(f"landscape file {str(path)!r} lacks its flatness numbers ({exc}); "
                           "re-create it with `advcli landscape`") from exc


def direction_pairs(a: Cell, b: Cell) -> tuple[list[Any], list[float], list[float]]:
    """Two flatness cells paired by direction seed: (shared seeds, a's values, b's values),
    each value the mean over the cell's checkpoints along that seed's directions."""

    def by_seed(cell: Cell) -> dict[Any, float]:
        groups: dict[Any, list[float]] = {}
        for o in cell.observations:
            if isinstance(o, DirectionSample):
                groups.setdefault(o.direction_seed, []).append(o.value)
        return {s: float(np.mean(v)) for s, v in groups.items()}

    sa, sb = by_seed(a), by_seed(b)
    seeds = sorted((s for s in sa if s in sb), key=_seed_order)
    return seeds, [sa[s] for s in seeds], [sb[s] for s in seeds]


def _seed_order(seed: Any) -> tuple[bool, int, str]:
    # Seeds are integers; a very old file may record none (None), and sorts last.
    return (not isinstance(seed, int), seed if isinstance(seed, int) else 0, str(seed))


def _seed_range_text(seeds: Sequence[Any]) -> str:
    ints = sorted(s for s in seeds if isinstance(s, int))
    if len(ints) == len(seeds) and ints and ints == list(range(ints[0], ints[-1] + 1)):
        return f"{ints[0]}–{ints[-1]}" if len(ints) > 1 else str(ints[0])
    return ", ".join(str(s) for s in seeds)


def _flatness_notes(rows: list[Row], columns: list[Column]) -> list[str]:
    """What the ± is, and per column the seeds and each row's per-seed range."""
    notes = []
    if any(c.n > 1 for r in rows for c in r.cells.values()):
        note = ("each sample is one checkpoint along one direction seed: the mean loss increase "
                "at ±r along that seed's filter-normalised direction(s)")
        seed_sets = {col.key: {frozenset(o.direction_seed for o in cell.observations
                                         if isinstance(o, DirectionSample))
                               for r in rows if (cell := r.cells.get(col.key)) is not None}
                     for col in columns}
        # One checkpoint per row: as many samples in a cell as direction seeds.
        one_ckpt = all(c.n == len({o.direction_seed for o in c.observations
                                   if isinstance(o, DirectionSample)})
                       for r in rows for c in r.cells.values())
        if one_ckpt and all(len(sets) == 1 for sets in seed_sets.values()):
            note += ("; every model was measured along the same seeds, so claims compare "
                     "models seed by seed (paired t)")
        else:
            note += ("; models were not all measured along the same seeds (or a row holds "
                     "several checkpoints): claims pair only the seeds two cells share, "
                     "averaging a row's checkpoints per seed")
        notes.append(note)
    for col in columns:
        seeds: set[Any] = set()
        ranges = []
        for r in rows:
            cell = r.cells.get(col.key)
            if cell is None:
                continue
            seeds |= {o.direction_seed for o in cell.observations
                      if isinstance(o, DirectionSample)}
            if cell.n > 1:
                ranges.append(f"{r.label} {min(cell.values):.4f}..{max(cell.values):.4f}")
        if ranges:
            ordered = sorted(seeds, key=_seed_order)
            notes.append(f"{col.short}, direction seeds {_seed_range_text(ordered)}; "
                         f"per-seed min..max: {'; '.join(ranges)}")
    return notes


def _flatness_variant(key: ColumnKey) -> str:
    """"1-D", or "1-D, pgd data, BN recompute" when the loss was not measured on clean data
    with the trained BatchNorm statistics."""
    text = key.variant
    data = key.param("data")
    if data not in (None, "clean"):
        text += f", {data} data"
    if key.param("bn") not in (None, "eval"):
        text += f", BN {key.param('bn')}"
    return text


def build_flatness_table(sets: Sequence[FlatnessSet]) -> CompareTable | None:
    """Rows = checkpoint labels, columns = mean loss increase at radius r per dimension; each
    (checkpoint, direction seed) is one sample of the cell."""
    groups: dict[tuple[str, bool], RowGroup] = {}
    for fs in sets:
        for label, m in fs.models.items():
            key = ColumnKey("flatness", f"{fs.dim}-D",
                            strength=(("radius", hashable(m.radius)), *fs.measure))
            g = groups.setdefault((label, False), RowGroup(label, False))
            for seed, increase in m.samples.items():
                g.add(f"{m.sha256 or label}|{seed}", key,
                      DirectionSample(increase, str(fs.path), examples=fs.examples,
                                      direction_seed=seed))
    if not groups:
        return None
    ordered = ordered_groups(groups)
    keys = sorted(keys_of(ordered), key=lambda k: (k.variant, repr(k.strength)))
    columns = [Column(k, f"Loss increase at r = {k.param('radius'):g}, {_flatness_variant(k)}",
                      f"loss increase at r = {k.param('radius'):g}, {_flatness_variant(k)}")
               for k in keys]
    rows = rows_from_groups(ordered, keys, intervals=False)
    return CompareTable(
        title="Flatness: mean loss increase at radius r along filter-normalised directions",
        row_header="Model", columns=columns, rows=rows,
        kind=TableKind.flatness, percent=False, n_means="checkpoints × direction draws",
        notes=_flatness_notes(rows, columns),
    )


