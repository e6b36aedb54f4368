"""Flatness over direction seeds in `advcli compare`: the flatness table's per-seed samples and
spread (compare/flatness.py), landscape files written before flatness seeds, and
flatness claims decided by a paired t-test across the shared direction seeds (compare/claims.py).

The numbers are hand-made: every model shares a large seed-to-seed swing (one direction draw is
sharper than another for every model), which is what pairing by seed removes.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as sp

from advcli import compare as cmp
from advcli.compare import render as txt
from advcli.compare.claims import MIN_DIRECTION_SEEDS, Verdict, check_claims, parse_claim
from advcli.formats.results import index_sha256

SEEDS = [0, 1, 2, 3, 4]
# What the direction draw does to every model: a spread of ~0.011 between seeds.
BASE = np.array([0.020, 0.035, 0.012, 0.028, 0.041])
FLAT = BASE
SHARP = BASE + 0.004 + np.array([0.0003, -0.0002, 0.0001, -0.0004, 0.0002])  # always sharper
NOISY = BASE + np.array([0.006, -0.005, 0.004, -0.006, 0.002])  # sometimes, by chance


def _file(tmp_path: Path, name: str, models: dict[str, np.ndarray], seeds: list[int],
          dim: int = 1) -> Path:
    """A landscape file as `advcli landscape --flatness-seeds` writes it (flatness keys only)."""
    flatness = {}
    for label, means in models.items():
        means = [float(v) for v in means]
        flatness[label] = {
            "radius": 0.1, "center_loss": 0.5,
            "increases": [v for m in means for v in (m, m)],
            "increase_mean": statistics.mean(means), "increase_max": max(means),
            "seeds": seeds, "seed_means": means,
            "seed_sd": statistics.stdev(means) if len(means) > 1 else None,
            "seed_min": min(means), "seed_max": max(means),
        }
    return _write(tmp_path / f"{name}.yaml", dim, seeds[0], flatness, list(models))


def _old_file(tmp_path: Path, name: str, models: dict[str, float], seed: int) -> Path:
    """A landscape file written before flatness seeds: one direction seed, no per-seed keys."""
    flatness = {label: {"radius": 0.1, "center_loss": 0.5, "increases": [v, v],
                        "increase_mean": v, "increase_max": v} for label, v in models.items()}
    return _write(tmp_path / f"{name}.yaml", 1, seed, flatness, list(models))


def _write(path: Path, dim: int, seed: int, flatness: dict, labels: list[str]) -> Path:
    path.write_text(yaml.safe_dump({
        "schema": "advcli.landscape/1", "dim": dim,
        "directions": {"seed": seed, "normalization": "filter", "count": dim},
        "data": {"kind": "clean", "dataset": "synthetic", "split": "test", "n": 100,
                 "index_sha256": index_sha256(range(100))},
        "checkpoints": [{"label": k, "sha256": f"sha-{k}", "loss": [0.0]} for k in labels],
        "flatness": flatness,
    }))
    return path


def _tables(*paths: Path) -> list[cmp.CompareTable]:
    return cmp.compare([cmp.load_input(p) for p in paths])


def _claim(**spec: object) -> object:
    return parse_claim({"claim": "c", "table": "flatness", **spec}, where="claims[0]")


def test_table_shows_the_mean_and_spread_over_direction_seeds(tmp_path: Path) -> None:
    [table] = _tables(_file(tmp_path, "one", {"flat": FLAT, "sharp": SHARP}, SEEDS))
    assert txt.header(table) == ["Model", "Loss increase at r = 0.1, 1-D", "n"]
    assert txt.text_rows(table) == [
        ["flat", f"{FLAT.mean():.4f} ± {statistics.stdev(FLAT):.4f}", "5"],
        ["sharp", f"{SHARP.mean():.4f} ± {statistics.stdev(SHARP):.4f}", "5"],
    ]
    notes = txt.footnotes(table)
    assert any(n.startswith("each sample is one checkpoint along one direction seed")
               and "every model was measured along the same seeds" in n for n in notes)
    assert (f"loss increase at r = 0.1, 1-D, direction seeds 0–4; per-seed min..max: "
            f"flat 0.0120..0.0410; sharp {SHARP.min():.4f}..{SHARP.max():.4f}") in notes


def test_old_single_seed_files_still_read_as_one_seed_each(tmp_path: Path) -> None:
    files = [_old_file(tmp_path, f"s{s}", {"flat": float(FLAT[s]), "sharp": float(SHARP[s])}, s)
             for s in (0, 1)]
    fs = cmp.load_input(files[1])
    assert isinstance(fs, cmp.FlatnessSet)
    assert fs.models["sharp"].samples == {1: pytest.approx(SHARP[1])}
    [table] = _tables(*files)
    assert txt.text_rows(table)[0] == [
        "flat", f"{FLAT[:2].mean():.4f} ± {statistics.stdev(FLAT[:2]):.4f}", "2"]
    # Two direction draws are not enough to call a difference in flatness either way.
    [res] = check_claims([_claim(check="rows", left="sharp", right="flat", op=">")], [table])
    assert res.verdict is Verdict.inconclusive
    assert f"2 shared direction seed(s), a flatness claim needs {MIN_DIRECTION_SEEDS}" in res.detail


def test_a_consistent_difference_passes_paired_by_seed(tmp_path: Path) -> None:
    tables = _tables(_file(tmp_path, "one", {"flat": FLAT, "sharp": SHARP}, SEEDS))
    [res] = check_claims([_claim(check="rows", left="sharp", right="flat", op=">")], tables)
    assert res.verdict is Verdict.passed, res.detail
    d = SHARP - FLAT
    half = sp.t.ppf(0.975, 4) * d.std(ddof=1) / np.sqrt(5)
    p = sp.ttest_rel(SHARP, FLAT).pvalue
    assert p < 0.001
    assert (f"paired over 5 direction seeds: Δ = +{d.mean():.4f}, 95% CI "
            f"[+{d.mean() - half:.4f}, +{d.mean() + half:.4f}], p < 0.001") in res.detail
    # Unpaired, the seed-to-seed swing would hide it: this is what pairing is for.
    assert sp.ttest_ind(SHARP, FLAT, equal_var=False).pvalue > 0.5


def test_a_significant_violation_fails(tmp_path: Path) -> None:
    tables = _tables(_file(tmp_path, "one", {"flat": FLAT, "sharp": SHARP}, SEEDS))
    verdicts = check_claims([
        _claim(check="order", rows=["flat", "sharp"], op=">"),
        _claim(check="min", row="sharp"),
        _claim(check="rows", left="flat", right="sharp", op=">="),  # non-strict: fails too
    ], tables)
    assert [v.verdict for v in verdicts] == [Verdict.failed] * 3
    assert "flat" in verdicts[0].detail and "does not hold" in verdicts[0].detail


def test_a_difference_within_direction_noise_is_inconclusive(tmp_path: Path) -> None:
    tables = _tables(_file(tmp_path, "one", {"flat": FLAT, "sharp": SHARP, "noisy": NOISY},
                           SEEDS))
    strict, loose, smoothest = check_claims([
        _claim(check="rows", left="noisy", right="flat", op=">"),
        _claim(check="rows", left="flat", right="noisy", op=">="),
        _claim(check="min", row="flat"),  # beats sharp, not noisy
    ], tables)
    p = sp.ttest_rel(NOISY, FLAT).pvalue
    assert p > 0.5
    assert strict.verdict is Verdict.inconclusive and f"p = {p:.3f}" in strict.detail
    assert loose.verdict is Verdict.inconclusive and "does not hold" in loose.detail
    assert smoothest.verdict is Verdict.inconclusive
    assert smoothest.detail.startswith("1/2 hold") and "noisy" in smoothest.detail
    # Three shared seeds, even with a clear difference: inconclusive, never decided.
    few = _tables(_file(tmp_path, "few", {"flat": FLAT[:3], "sharp": SHARP[:3]}, SEEDS[:3]))
    [res] = check_claims([_claim(check="rows", left="sharp", right="flat", op=">")], few)
    assert res.verdict is Verdict.inconclusive and "3 shared direction seed(s)" in res.detail


def test_one_file_per_model_pairs_by_seed(tmp_path: Path) -> None:
    """2-D landscapes are one file per model: the same seeds pair them. Only the seeds both
    models share count."""
    flat = _file(tmp_path, "flat2", {"flat": FLAT}, SEEDS, dim=2)
    sharp = _file(tmp_path, "sharp2", {"sharp": np.append(SHARP, 0.5)}, SEEDS + [9], dim=2)
    [table] = _tables(flat, sharp)
    a, b = (table.rows[1].cells[table.columns[0].key], table.rows[0].cells[table.columns[0].key])
    seeds, av, bv = cmp.direction_pairs(a, b)
    assert seeds == SEEDS and av == pytest.approx(SHARP) and bv == pytest.approx(FLAT)
    [res] = check_claims([_claim(check="max", row="sharp", columns={"kind": "flatness",
                                                                    "dim": 2})], [table])
    assert res.verdict is Verdict.passed and "paired over 5 direction seeds" in res.detail


def test_clean_and_adversarial_landscapes_are_separate_columns(tmp_path: Path) -> None:
    """One checkpoint's flatness on clean data and on PGD data (same examples, same seeds) are
    two measurements: two columns, never one cell with one of them dropped."""
    clean = _file(tmp_path, "clean", {"flat": FLAT}, SEEDS)
    adv = _file(tmp_path, "adv", {"flat": SHARP}, SEEDS)
    doc = yaml.safe_load(adv.read_text())
    doc["data"].update(kind="pgd", attack={"name": "pgd", "eps": 8 / 255, "steps": 5})
    adv.write_text(yaml.safe_dump(doc))
    [table] = _tables(clean, adv)
    assert txt.header(table) == ["Model", "Loss increase at r = 0.1, 1-D",
                                 "Loss increase at r = 0.1, 1-D, pgd data", "n"]
    [row] = table.rows
    means = sorted(c.mean for c in row.cells.values())
    assert means == pytest.approx(sorted([FLAT.mean(), SHARP.mean()]))
