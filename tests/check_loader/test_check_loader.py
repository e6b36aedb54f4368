"""`advcli check-loader`: the statistics, the acceptance pipelines of issue #3 (tests/pipelines/,
one real pipeline per case, each asserting the verdict), the per-item seeding patterns of
issue 15 (the same through the CLI, with exit codes), advcli's own modes, and the CLI."""

from __future__ import annotations

import json
import os
import random
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import stats
from typer.testing import CliRunner

from advcli.check_loader import (
    FindingKind,
    StreamKey,
    Verdict,
    analyse,
    binomial_tail,
    check_advcli,
    check_all_modes,
    check_pipeline,
    collision_probability,
    fingerprint,
    make_layout,
    rng_use,
)
from advcli.cli.app import app
from advcli.errors import DataError, UsageError
from advcli.stats import pooled_collision_probability

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
runner = CliRunner()
SMALL = dict(workers=2, samples=32)  # 2 workers, 32 loads per worker per epoch, 2 epochs

DUP, REP, RANKS = (FindingKind.duplicate_workers, FindingKind.repeat_epochs,
                   FindingKind.duplicate_ranks)
FROZEN, PER_WORKER = FindingKind.frozen, FindingKind.per_worker


def _check(name: str, **kw):
    file, func = name.split(":")
    return check_pipeline(f"{PIPELINES / file}:{func}", **{**SMALL, **kw})


def _kinds(report) -> dict[FindingKind, list[str]]:
    return {f.kind: f.persistent_workers for f in report.findings}


# ----------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("m,n,q", [(1, 10, 0.5), (16, 32, 0.5), (20, 32, 0.5), (32, 32, 0.5),
                                   (3, 64, 0.01), (64, 64, 0.006), (0, 5, 0.3), (7, 40, 0.2)])
def test_binomial_tail_matches_scipy(m, n, q):
    want = stats.binom.sf(m - 1, n, q)
    assert binomial_tail(m, n, q) == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_full_agreement_probability_is_q_to_the_length():
    assert binomial_tail(64, 64, 0.5) == pytest.approx(0.5 ** 64, rel=1e-9)


def test_collision_probability_is_the_unbiased_pair_estimate():
    # counts 3, 1, 1 over n=5: 3*2 / (5*4) = 0.3
    assert collision_probability(["a", "a", "a", "b", "c"]) == pytest.approx(0.3)
    # never a collision: floored at 1/n, not 0
    assert collision_probability([str(i) for i in range(8)]) == pytest.approx(1 / 8)


def test_fingerprint_hashes_bytes_dtype_and_structure():
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    assert fingerprint((x, 1)) == fingerprint((x.clone(), 1))
    assert fingerprint((x, 1)) != fingerprint((x, 2))
    assert fingerprint(x) != fingerprint(x.double())
    assert fingerprint(x) != fingerprint(x.reshape(3, 2))
    assert fingerprint(x) != fingerprint(x.flip(-1))
    assert fingerprint(x.numpy()) == fingerprint(x.numpy().copy())
    assert fingerprint({"img": x}) != fingerprint({"img": x + 1})


def _flip_streams(rngs: dict[StreamKey, np.random.Generator], n: int) -> dict[StreamKey, list[str]]:
    return {k: ["L" if u < 0.5 else "R" for u in g.random(n)] for k, g in rngs.items()}


def _keys(workers=2, epochs=2):
    return [StreamKey(False, 0, e, w) for e in range(epochs) for w in range(workers)]


def test_analyse_judges_a_flip_alone_by_sequences():
    # Independent flips: about half the positions agree by chance; not a finding.
    keys = _keys()
    independent = _flip_streams({k: np.random.default_rng(i) for i, k in enumerate(keys)}, 64)
    r = analyse(independent, target="t", workers=2, epochs=2, samples=64, ranks=1, item=0)
    assert r.verdict is Verdict.clean
    assert 0.4 < r.collision_probability < 0.6
    assert r.smallest_p > r.threshold
    # The same streams, but both workers share one: flagged with p = q^64, under 1e-9.
    shared = dict(independent)
    for e in range(2):
        shared[StreamKey(False, 0, e, 1)] = shared[StreamKey(False, 0, e, 0)]
    r = analyse(shared, target="t", workers=2, epochs=2, samples=64, ranks=1, item=0)
    assert r.verdict is Verdict.bug and list(_kinds(r)) == [DUP]
    (f,) = r.findings
    assert f.p_chance == pytest.approx(binomial_tail(64, 64, r.collision_probability))
    assert f.p_chance < 1e-9 and "p(chance) < 1e-9" in f.evidence
    assert f.pairs_flagged == 2 and f.pairs_compared == 2


def test_analyse_separates_worker_duplicates_from_epoch_repeats():
    rng = np.random.default_rng(5)
    a, b = list(rng.integers(0, 162, 32).astype(str)), list(rng.integers(0, 162, 32).astype(str))
    # per-worker streams that differ, but every epoch repeats the last
    streams = {StreamKey(False, 0, e, w): (a if w == 0 else b) for e in range(2) for w in range(2)}
    r = analyse(streams, target="t", workers=2, epochs=2, samples=32, ranks=1, item=0)
    assert list(_kinds(r)) == [REP]
    want = "worker 0 repeated its epoch-0 sequence of 32 samples in epoch 1"
    assert want in r.findings[0].evidence


def test_analyse_reports_no_randomness_and_low_power():
    const = {k: ["x"] * 16 for k in _keys()}
    r = analyse(const, target="t", workers=2, epochs=2, samples=16, ranks=1, item=3)
    assert r.verdict is Verdict.no_randomness and not r.is_bug
    assert "item 3 came out byte-identical in all 64 loads" in r.findings[0].evidence
    # a 99:1 coin over 8 loads cannot show a duplicated stream: inconclusive, not clean
    rng = np.random.default_rng(0)
    rare = {k: ["a" if u < 0.99 else "b" for u in rng.random(8)] for k in _keys()}
    rare[StreamKey(False, 0, 0, 0)][0] = "b"  # at least two outputs
    r = analyse(rare, target="t", workers=2, epochs=2, samples=8, ranks=1, item=0)
    assert r.verdict is Verdict.inconclusive


def test_pooled_collision_probability_pairs_only_draws_of_different_runs():
    # Run 0 drew "a" twice (one seed), run 1 drew "b": no two runs agree, so q is the floor 1/3.
    assert pooled_collision_probability([[["a", "a"], ["b"]]]) == pytest.approx(1 / 3)
    # Singleton runs: the plain unbiased estimate; a second item averages in.
    assert pooled_collision_probability([[["a"], ["a"], ["a"], ["b"], ["c"]]]) == pytest.approx(0.3)
    assert pooled_collision_probability([[["a"], ["a"]], [["x", "x"], ["y", "y"]]]) == pytest.approx(0.5)
    # Weights follow how often each item occurs in a sequence.
    assert pooled_collision_probability([[["a"], ["a"]], [["x"], ["y"]]], [3, 1]) == pytest.approx(0.75)


def test_layout_loads_every_item_in_two_orders():
    lay = make_layout(6, 8, 32)  # 8 items from 6 on, wrapping at the end: passes A B A B
    assert lay.items == (6, 7, 0, 1, 2, 3, 4, 5)
    assert lay.loads[:8] == list(lay.items) and lay.loads[8:16] == list(lay.items)[::-1]
    for p, r in enumerate(lay.partners):
        assert r != p and lay.positions[r] == lay.positions[p]  # same item, other position
    assert make_layout(0, None, 64).items == tuple(range(32))
    # Control runs put each item at a different position in each run
    orders = [lay.control_positions(run, 8, 64)[:8] for run in range(8)]
    assert orders[0] == list(range(8))
    for j in range(8):
        assert len({order.index(j) for order in orders}) == 8


_LAYOUT = make_layout(0, 8, 32)


def _draw(*key) -> str:
    # A crop + flip (162 outcomes) drawn from a seed made of `key` (crc32: stable across runs).
    return str(np.random.default_rng(zlib.crc32(repr(key).encode())).integers(162))


def _per_item(seed_of) -> dict[StreamKey, list[str]]:
    """Streams of 2 workers x 2 epochs whose output of item j is _draw(seed_of(key), j)."""
    keys = [StreamKey(True, 0, e, w) for e in range(2) for w in range(2)]
    return {k: [f"{j}:{_draw(seed_of(k), j)}" for j in _LAYOUT.positions] for k in keys}


def _control(runs=8) -> list[list[list[str]]]:
    return [[[f"{j}:{_draw('control', r, j)}"] * 4 for j in range(8)] for r in range(runs)]


def _analyse(streams, **kw):
    return analyse(streams, target="t", workers=2, epochs=2, samples=32, ranks=1, item=0,
                   layout=_LAYOUT, control=_control(), rng_calls=["numpy.random.default_rng"],
                   **kw)


def test_analyse_tells_item_tied_from_position_tied_agreement():
    # Seeded per (worker, epoch) and item: different everywhere, clean.
    clean = _analyse(_per_item(lambda k: (k.worker, k.epoch)))
    assert clean.verdict is Verdict.clean and clean.items == 8 and clean.control_runs == 8
    # Seeded by (epoch, item): workers agree within an epoch, which is harmless.
    assert _analyse(_per_item(lambda k: k.epoch)).verdict is Verdict.clean
    # Seeded by (worker, item): each worker repeats its own per-item outputs every epoch.
    r = _analyse(_per_item(lambda k: k.worker))
    assert r.verdict is Verdict.bug and list(_kinds(r)) == [PER_WORKER]
    assert "at most 2 distinct augmentations for the whole run" in r.findings[0].evidence
    # Seeded by a constant per run and the item: every epoch and worker alike, frozen.
    r = _analyse(_per_item(lambda k: "run"))
    assert r.verdict is Verdict.bug and list(_kinds(r)) == [FROZEN]
    assert "the same augmentation in every epoch" in r.findings[0].evidence
    # One shared stream (the output follows the position, not the item): duplicated workers.
    shared = {k: [f"{j}:{_draw(k.epoch, p)}" for p, j in enumerate(_LAYOUT.positions)]
              for k in _per_item(lambda k: 0)}
    assert list(_kinds(_analyse(shared))) == [DUP]


def _per_item_flips(flip_of, n_items: int, persistent: bool = True):
    """2 workers x 2 epochs, each stream giving item j the flip flip_of(worker, epoch, j) at
    every load (an RNG seeded per item: item-consistent), judged against 8 control runs of fair
    flips; each item is loaded at least twice per stream (2 n_items loads, at least 32)."""
    layout = make_layout(0, n_items, max(2 * n_items, 32))
    streams = {StreamKey(persistent, 0, e, w): [f"{j}:{flip_of(w, e, j)}" for j in layout.positions]
               for e in range(2) for w in range(2)}
    control = [[[f"{j}:{int(_draw('control', r, j)) % 2}"] for j in range(n_items)]
               for r in range(8)]
    return analyse(streams, target="t", workers=2, epochs=2, samples=len(layout.positions),
                   ranks=1, item=0, layout=layout, control=control,
                   rng_calls=["numpy.random.default_rng"])


def _coin(*key) -> int:
    return int(_draw("flip", *key)) % 2


@pytest.mark.parametrize("agree, kind", [(20, PER_WORKER), (32, FROZEN)])
def test_two_workers_agreeing_on_some_flips_are_not_called_frozen(agree, kind):
    # A flip per item (2 outcomes), fixed per persistent worker for the run (each worker repeats
    # itself every epoch: one augmentation per item per worker). The two workers' flips coincide
    # on `agree` of 32 items. Each item's repeated loads are one draw, so 20 of 32 (p = 0.1) does
    # not show that the workers agree beyond chance: per worker; all 32 (p = 2^-32) does: frozen.
    flips = [_coin(j) for j in range(32)]
    r = _per_item_flips(lambda w, e, j: flips[j] if w == 0 or j < agree else 1 - flips[j], 32)
    assert 0.3 < r.collision_probability < 0.7  # the premise: about a coin's chance
    assert r.verdict is Verdict.bug and list(_kinds(r)) == [kind]


def test_per_item_flips_that_coincide_by_chance_are_not_a_bug():
    # default_rng([worker seed, index]) without persistent workers (correct): a fresh flip per
    # item per worker and epoch, the same at each load of the item within the stream. Here worker
    # 0's epoch-1 flips happen to equal its epoch-0 flips on all 8 items, a 1-in-256
    # coincidence. Counting each of an item's 4 loads as a trial made that 32 of 32 (p = 2^-32)
    # and a bug; an item is one draw, so 8 items cannot tell it from chance: inconclusive.
    r = _per_item_flips(lambda w, e, j: _coin(w, 0 if w == 0 else e, j), 8, persistent=False)
    assert 0.3 < r.collision_probability < 0.7
    assert r.verdict is Verdict.inconclusive, r.findings
    assert "8 distinct items" in r.findings[0].evidence


@pytest.mark.parametrize("n_items", [8, 32])
def test_fresh_per_item_flips_are_inconclusive_with_few_items_and_clean_with_many(n_items):
    r = _per_item_flips(lambda w, e, j: _coin(w, e, j), n_items, persistent=False)
    want = Verdict.inconclusive if n_items == 8 else Verdict.clean
    assert r.verdict is want, r.findings


def test_a_shared_flip_stream_keeps_every_loads_evidence():
    # Two workers drawing the same stream of flips (the classic bug), 8 items: the stream's
    # repeated loads of an item differ, so every load counts and 32 agreeing loads are flagged.
    layout = make_layout(0, 8, 32)
    streams = {StreamKey(False, 0, e, w): [f"{j}:{_coin('stream', e, p)}"
                                            for p, j in enumerate(layout.positions)]
               for e in range(2) for w in range(2)}
    control = [[[f"{j}:{_coin('control', r, j, k)}" for k in range(4)] for j in range(8)]
               for r in range(8)]
    r = analyse(streams, target="t", workers=2, epochs=2, samples=32, ranks=1, item=0,
                layout=layout, control=control, rng_calls=[])
    assert r.verdict is Verdict.bug and list(_kinds(r)) == [DUP]
    assert "identical sequences of 32 samples" in r.findings[0].evidence


def test_chance_agreement_comes_from_the_control_not_the_judged_streams():
    # One persistent worker seeded per item: its outputs never change. Judged alone, every load of
    # an item agrees with every other (q = 1) and nothing could be flagged; the control's q is
    # small, so the frozen augmentation is found.
    streams = {StreamKey(True, 0, e, 0): [f"{j}:{_draw('w', j)}" for j in _LAYOUT.positions]
               for e in range(2)}
    r = analyse(streams, target="t", workers=1, epochs=2, samples=32, ranks=1, item=0,
                layout=_LAYOUT, control=_control(), rng_calls=[])
    assert r.collision_probability < 0.05
    assert r.verdict is Verdict.bug and list(_kinds(r)) == [FROZEN]


def test_unchanging_outputs_are_frozen_when_random_numbers_are_drawn():
    const = {k: [str(j) for j in _LAYOUT.positions] for k in _per_item(lambda k: 0)}
    control = [[[str(j)] * 4 for j in range(8)] for _ in range(8)]
    kw = dict(target="t", workers=2, epochs=2, samples=32, ranks=1, item=0, layout=_LAYOUT,
              control=control)
    frozen = analyse(const, rng_calls=["numpy.random.default_rng"], **kw)
    assert frozen.verdict is Verdict.bug and list(_kinds(frozen)) == [FROZEN]
    assert "numpy.random.default_rng" in frozen.findings[0].evidence
    none = analyse(const, rng_calls=[], **kw)
    assert none.verdict is Verdict.no_randomness and not none.is_bug


@pytest.mark.parametrize("call,name", [
    (lambda: np.random.default_rng(3).random(), "numpy.random.default_rng"),
    (lambda: np.random.RandomState(3).rand(), "numpy.random.RandomState"),
    (lambda: np.random.seed(3), "numpy.random.seed"),
    (lambda: random.Random(3).random(), "random.Random"),
    (lambda: torch.Generator().manual_seed(3), "torch.Generator.manual_seed"),
    (lambda: torch.rand(2), "torch.rand"),
])
def test_rng_use_records_random_number_calls_and_undoes_its_patches(call, name):
    real = (np.random.default_rng, np.random.seed, np.random.RandomState)
    made_before = np.random.RandomState(0)
    with rng_use.watching():
        assert isinstance(made_before, np.random.RandomState)
        (torch.zeros(3) - 0.5) / 0.25  # no random numbers: nothing recorded
        assert rng_use.take() == []
        call()
        assert name in rng_use.take()
    assert (np.random.default_rng, np.random.seed, np.random.RandomState) == real


# --------------------------------------------------- acceptance: flagged (issue #3, "must show")


@pytest.mark.parametrize("name", [
    "np_generator_init.py:make",
    "randomstate_init.py:make",
    "pyrandom_init.py:make",
    "torch_generator_init.py:make",
])
def test_rng_object_made_in_init_is_flagged(name):
    r = _check(name)
    assert r.verdict is Verdict.bug
    kinds = _kinds(r)
    # copied into every worker in both settings; re-copied every epoch only without persistence
    assert kinds[DUP] == ["off", "on"]
    assert kinds[REP] == ["off"]
    dup = r.findings[0]
    assert "identical sequences of 32 samples" in dup.evidence and dup.p_chance < 1e-9
    # the fix names the dataset's own RNG attribute and the per-worker seed
    assert "dataset." in dup.fix and "get_worker_info" in dup.fix


def test_global_numpy_under_emulated_pre_19_seeding_is_flagged():
    r = check_advcli("buggy", **SMALL)
    assert r.verdict is Verdict.bug
    assert _kinds(r) == {DUP: ["off", "on"], REP: ["off"]}
    assert all("--augment fixed" in f.fix for f in r.findings)


def test_buggy_loader_returned_as_a_user_dataloader_is_flagged():
    r = _check("advcli_loader.py:buggy")
    assert r.verdict is Verdict.bug and DUP in _kinds(r)


def test_constant_reseed_in_worker_init_fn_is_flagged():
    r = _check("constant_reseed.py:make")
    assert r.verdict is Verdict.bug
    assert set(_kinds(r)) == {DUP, REP}
    assert r.persistent_workers == ["off"]  # the DataLoader's own setting, as given
    both = _check("constant_reseed.py:make", persistent=[False, True])
    assert both.persistent_workers == ["off", "on"]
    assert _kinds(both)[DUP] == ["off", "on"]


def test_seed_plus_worker_id_repeats_every_epoch_without_duplicating_workers():
    r = _check("constant_reseed.py:make_per_worker")
    assert r.verdict is Verdict.bug
    assert list(_kinds(r)) == [REP]


def test_identical_seeds_on_two_simulated_ranks_are_flagged():
    r = _check("ranks.py:same_seed", ranks=2)
    assert r.verdict is Verdict.bug
    assert list(_kinds(r)) == [RANKS]
    assert "rank 0 and rank 1 produced identical sequences" in r.findings[0].evidence
    assert "seed + rank" in r.findings[0].fix
    # one rank alone has nothing to compare it with
    assert _check("ranks.py:same_seed").verdict is Verdict.clean


def test_flip_alone_from_a_shared_generator_is_flagged():
    r = _check("flip_only.py:shared")
    assert 0.4 < r.collision_probability < 0.6
    assert r.verdict is Verdict.bug and r.findings[0].p_chance < 1e-9


# ----------------------------------------------- acceptance: not flagged (issue #3, "must show")


@pytest.mark.parametrize("name,kw", [
    ("global_rngs.py:make", {}),
    ("torchvision_transforms.py:make", {}),
    ("seedsequence_init.py:make", {}),
    ("flip_only.py:independent", {}),
    ("ranks.py:seed_plus_rank", {"ranks": 2}),
    ("ranks.py:rank_argument", {"ranks": 2}),
    ("advcli_loader.py:fixed", {}),
])
def test_correctly_seeded_pipelines_are_clean(name, kw):
    r = _check(name, **kw)
    assert r.verdict is Verdict.clean, [f.evidence for f in r.findings]
    assert r.findings == [] and r.distinct_outputs > 1


@pytest.mark.parametrize("mode", ["fixed", "device"])
def test_advcli_fixed_and_device_modes_are_clean_on_two_ranks(mode):
    r = check_advcli(mode, ranks=2, **SMALL)
    assert r.verdict is Verdict.clean
    assert r.ranks == 2 and r.distinct_outputs > 20


def test_pipeline_without_randomness_is_reported_as_such():
    r = _check("no_randomness.py:make")
    assert r.verdict is Verdict.no_randomness and not r.is_bug
    assert [f.kind for f in r.findings] == [FindingKind.no_randomness]
    assert check_advcli("none", **SMALL).verdict is Verdict.no_randomness


# ------------------------------------- per-item seeding and the other patterns (issue 15), CLI


def _cli_check(spec: str, *args: str, samples: int = 32):
    res = _cli("--pipeline", f"{PIPELINES}/{spec}", "--workers", "2", "--samples", str(samples),
               "--format", "json", *args)
    return res, json.loads(res.stdout) if res.stdout.strip() else None


@pytest.mark.parametrize("spec,exit_code,verdict,kinds", [
    # the classic bug: global np.random in workers that start from the parent's NumPy state
    ("classic_numpy_fork.py:make", 1, "bug", [DUP, REP]),
    # torch's and Python's global RNGs, and NumPy seeded from torch.initial_seed(): correct
    ("torch_global.py:make", 0, "clean", []),
    ("pyrandom_global.py:make", 0, "clean", []),
    ("initial_seed_init.py:make", 0, "clean", []),
    # NumPy seeded with a constant in worker_init_fn
    ("constant_reseed.py:make", 1, "bug", [DUP, REP]),
    # default_rng([worker seed, index]): correct without persistent workers (crop+flip, flip)
    ("per_item_seed.py:make", 0, "clean", []),
    ("per_item_seed.py:flip", 0, "clean", []),
    # ... but one augmentation per item per worker for the whole run with them
    ("per_item_seed.py:persistent", 1, "bug", [PER_WORKER]),
    ("per_item_seed.py:flip_persistent", 1, "bug", [PER_WORKER]),
    # a flip alone over 8 items cannot be judged (an item's repeated loads are one draw)
    ("per_item_seed.py:flip", 0, "inconclusive", [FindingKind.low_power]),
    # default_rng(index): frozen
    ("index_seed.py:numpy_generator", 1, "bug", [FROZEN]),
    # default_rng([index, epoch]) via set_epoch: clean (with or without the run's seed) ...
    ("epoch_seed.py:make", 0, "clean", []),
    ("epoch_seed.py:with_run_seed", 0, "clean", []),
    # ... but frozen with persistent workers, which never see set_epoch
    ("epoch_seed.py:persistent", 1, "bug", [FROZEN]),
    ("no_randomness.py:make", 0, "no randomness", [FindingKind.no_randomness]),
])
def test_seeding_patterns_through_the_cli(spec, exit_code, verdict, kinds):
    # The flip-only pipelines have 32 images and are judged over all of them (--samples 64),
    # except where the case asks for the inconclusive 8.
    flip = ":flip" in spec
    few = flip and verdict == "inconclusive"
    res, data = _cli_check(spec, samples=16 if few else 64 if flip else 32)
    assert res.exit_code == exit_code, res.output
    assert data["verdict"] == verdict, data["findings"]
    assert [f["kind"] for f in data["findings"]] == [k.value for k in kinds]
    assert data["control_runs"] == 6 and data["items"] == (32 if flip and not few else 8)


def test_per_item_seeding_with_persistent_workers_is_its_own_finding():
    res, data = _cli_check("per_item_seed.py:persistent")
    (f,) = data["findings"]
    assert f["persistent_workers"] == ["on"] and f["p_chance"] < 1e-9
    assert "at most 2 distinct augmentations for the whole run" in f["evidence"]
    assert "worker_init_fn" in f["fix"]
    # Without persistence the same dataset is clean: the worker seed changes every epoch.
    both = _check("per_item_seed.py:persistent", persistent=[False, True])
    assert _kinds(both) == {PER_WORKER: ["on"]}


@pytest.mark.parametrize("name", ["numpy_randomstate", "numpy_imported", "torch_generator",
                                  "python_random"])
def test_index_seeded_augmentation_is_frozen_however_it_is_written(name):
    r = _check(f"index_seed.py:{name}", persistent=[False])
    assert r.verdict is Verdict.bug and list(_kinds(r)) == [FROZEN], r.findings
    assert r.rng_calls and "function of the item alone" in r.findings[0].evidence


def test_frozen_verdict_in_the_table():
    res = _cli("--pipeline", f"{PIPELINES}/index_seed.py:numpy_generator", "--workers", "2",
               "--samples", "32", "--persistent-workers", "off")
    assert res.exit_code == 1, res.output
    assert "verdict: BUG: augmentation frozen" in res.stdout


def test_epoch_seeding_notes_when_it_ignores_the_run_seed():
    _res, data = _cli_check("epoch_seed.py:make")
    assert any("ignores the run's seed" in n for n in data["notes"]), data["notes"]
    _res, data = _cli_check("epoch_seed.py:with_run_seed")
    assert not any("run's seed" in n for n in data["notes"]), data["notes"]
    _res, data = _cli_check("epoch_seed.py:persistent")
    assert "set_epoch" in data["findings"][0]["fix"]


# ------------------------------------------------------------------------------ method details


def test_persistent_workers_setting_is_honoured():
    r = _check("np_generator_init.py:make", persistent=[True])
    assert r.persistent_workers == ["on"]
    assert list(_kinds(r)) == [DUP]  # persistent workers continue their stream across epochs


def test_workers_zero_checks_the_main_process():
    # One process, one RNG that keeps advancing: nothing is copied, so nothing repeats.
    r = _check("np_generator_init.py:make", workers=0)
    assert r.verdict is Verdict.clean and r.persistent_workers == ["n/a"]
    assert r.workers == 0 and r.loads == 2 * 32


def test_check_leaves_global_rngs_and_rank_env_untouched():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    env = os.environ.get("RANK")
    _check("ranks.py:seed_plus_rank", ranks=2)
    check_advcli("buggy", **SMALL)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want
    assert os.environ.get("RANK") == env


def test_default_check_is_fast():
    r = check_advcli("fixed")  # the CLI default: 4 workers, 64 loads, both settings
    assert r.workers == 4 and r.samples == 64 and r.persistent_workers == ["off", "on"]
    assert r.verdict is Verdict.clean
    assert r.time_s < 20


def test_all_modes_rows():
    m = check_all_modes(**SMALL)
    verdicts = {row.mode.value: row.report.verdict for row in m.rows}
    assert verdicts == {"none": Verdict.no_randomness, "buggy": Verdict.bug,
                        "fixed": Verdict.clean, "device": Verdict.clean}
    assert m.as_expected
    data = json.loads(json.dumps(m.to_dict()))
    assert [(d["mode"], d["verdict"], d["as_expected"]) for d in data["modes"]] == [
        ("none", "no randomness", True), ("buggy", "bug", True), ("fixed", "clean", True),
        ("device", "clean", True)]


@pytest.mark.parametrize("spec,message", [
    ("no-colon", "must be module:callable"),
    ("no_such_module_xyz:make", "no module named"),
    ("missing/file.py:make", "does not exist"),
    ("{p}/broken.py:nothing", "has no attribute"),
    ("{p}/broken.py:NOT_CALLABLE", "not a callable"),
    ("{p}/broken.py:not_a_dataset", "must return a torch Dataset or DataLoader"),
    ("{p}/broken.py:iterable", "IterableDataset"),
])
def test_bad_pipelines_are_usage_errors(spec, message):
    with pytest.raises(UsageError, match=message):
        check_pipeline(spec.format(p=PIPELINES), **SMALL)


def test_item_out_of_range_is_a_usage_error():
    with pytest.raises(UsageError, match="--item 8 is out of range: .* has 8 items"):
        _check("global_rngs.py:make", item=8)
    assert _check("global_rngs.py:make", item=7).verdict is Verdict.clean


def test_failing_getitem_is_a_data_error():
    with pytest.raises(DataError, match="image 0 is corrupt"):
        _check("broken.py:make")


# ----------------------------------------------------------------------------------------- CLI


def _cli(*args: str):
    return runner.invoke(app, ["check-loader", *args])


def test_cli_exit_codes_and_table():
    bad = _cli("--augment", "buggy", "--workers", "2", "--samples", "32")
    assert bad.exit_code == 1, bad.output
    assert "duplicated across workers" in bad.stdout and "p(chance) < 1e-9" in bad.stdout
    assert "verdict" in bad.stdout and "BUG" in bad.stdout
    good = _cli("--augment", "fixed", "--workers", "2", "--samples", "32")
    assert good.exit_code == 0, good.output
    assert "clean" in good.stdout


def test_cli_pipeline_as_module_callable_with_json(monkeypatch):
    monkeypatch.chdir(PIPELINES)  # module:callable imports from the current folder
    res = _cli("--pipeline", "np_generator_init:make", "--workers", "2", "--samples", "32",
               "--format", "json")
    assert res.exit_code == 1, res.output
    data = json.loads(res.stdout)
    assert data["schema"] == "advcli.check-loader/1" and data["verdict"] == "bug"
    assert [f["kind"] for f in data["findings"]] == [DUP.value, REP.value]
    assert isinstance(data["findings"][0]["p_chance"], float)


def test_cli_ranks_yaml_and_all_modes():
    res = _cli("--pipeline", f"{PIPELINES}/ranks.py:same_seed", "--ranks", "2", "--workers", "2",
               "--samples", "32", "--format", "yaml")
    assert res.exit_code == 1, res.output
    assert yaml.safe_load(res.stdout)["findings"][0]["kind"] == RANKS.value
    table = _cli("--all-modes", "--workers", "2", "--samples", "16")
    assert table.exit_code == 0, table.output
    assert "behaves as designed" in table.stdout
    for mode in ("none", "buggy", "fixed", "device"):
        assert mode in table.stdout


@pytest.mark.parametrize("args,message", [
    (["--pipeline", "x.py:f", "--augment", "buggy"], "drop them"),
    (["--augment", "sometimes"], "valid values: none, buggy, fixed, device"),
    (["--epochs", "1"], "--epochs must be >= 2"),
    (["--format", "xml"], "unknown format"),
    (["--persistent-workers", "maybe"], "valid values: both, on, off"),
    (["--pipeline", "no-colon"], "module:callable"),
    (["--item", "3"], "--item applies to --pipeline"),
    (["--all-modes", "--augment", "fixed"], "drop --augment"),
])
def test_cli_usage_errors_exit_2(args, message):
    res = _cli(*args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_cli_loading_failure_is_one_red_line_exit_1():
    res = _cli("--pipeline", f"{PIPELINES}/broken.py:make", "--workers", "2", "--samples", "8")
    assert res.exit_code == 1
    assert "image 0 is corrupt" in res.output and "Traceback" not in res.output


def test_cli_config_file(tmp_path):
    cfg = tmp_path / "check.yaml"
    # `on` unquoted: YAML reads it as true
    cfg.write_text("augment: buggy\nworkers: 2\nsamples: 16\npersistent-workers: on\n")
    res = _cli("--config", str(cfg), "--format", "json")
    assert res.exit_code == 1, res.output
    data = json.loads(res.stdout)
    assert data["workers"] == 2 and data["persistent_workers"] == ["on"]
