"""Analysis: compare the probe's output sequences pair by pair, decide what each agreement means
and how likely it is by chance, and turn that into findings with fixes and a verdict.

Two sequences are compared twice: position by position (the same item at the same position in
both, since every stream loads the same items in the same order) and item by item across the two
load orders (the same item at different positions). Agreement across orders means the output
follows the item (an RNG seeded per item); agreement only position by position means it follows
the position (a shared random stream). Sequences, not sets, so a flip alone (two outcomes) is
judged right: two independent streams of 64 flips agree in about half the positions, duplicated
ones in all.

What an agreement means depends on the pair:
- position-tied, same epoch, other worker: duplicated across workers (bug);
- position-tied, other epoch: repeated across epochs (bug); other rank: duplicated across ranks;
- item-tied across epochs: the item's augmentation does not change from epoch to epoch: frozen
  (bug) when different workers agree too, one augmentation per item per worker (bug) when only
  each worker agrees with itself (the worker seed is fixed for the run: persistent workers);
- item-tied within an epoch (workers, ranks): harmless, an item is loaded once per epoch.

p(chance) is the binomial tail P[X >= matches], X ~ Binomial(length, q), with q the chance that
two independent loads of an item agree, averaged over the items (for the tail beyond the mean
the binomial with the mean q bounds the exact Poisson-binomial from above: Hoeffding 1956). q
comes from the control runs (the items loaded under other seeds), not from the streams being
judged; for an item whose control outputs never change, from that item's judged loads (pooled,
so duplication only inflates q and makes p conservative). A comparison is flagged when p is below
ALPHA divided by the number of comparisons (Bonferroni).

The binomial counts independent trials. When both sequences of a pair are item-consistent (every
load of an item gave one output within each sequence, as an RNG seeded per item does), an item
loaded k times is one draw, not k, so both comparisons of that pair count each distinct item
once; a flip alone (q = 1/2) then needs about 25-30 distinct items to reach the threshold, and
with fewer the verdict is "inconclusive". A shared random stream is not item-consistent (its
repeated loads of an item differ), so a duplicated stream keeps every load's evidence.

Outputs that never change at all are "no randomness", unless the pipeline was seen drawing
random numbers while loading (`rng_use`): then each item's augmentation is frozen.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import combinations

from advcli.check_loader.layout import Layout
from advcli.check_loader.report import (
    MAIN,
    Agreement,
    Finding,
    FindingKind,
    LoaderReport,
    StreamKey,
    Streams,
    Verdict,
)
from advcli.stats import binomial_tail, pooled_collision_probability

# control[r][j]: the outputs of item j in control run r.
Control = Sequence[Sequence[Sequence[str]]]

# Family-wise false-alarm rate over all sequence comparisons of one check: one clean pipeline in
# a million is flagged by chance, while a duplicated stream of 32 coin flips (p = 2e-10) is still
# caught among the ~250 comparisons of a 4-worker, 2-rank check.
ALPHA = 1e-6


def format_p(p: float) -> str:
    if p < 1e-9:
        return "p(chance) < 1e-9"
    return f"p(chance) = {p:.1e}" if p < 1e-3 else f"p(chance) = {p:.2g}"

# Analysis


_GENERIC_FIX = {
    FindingKind.duplicate_workers: (
        "Seed each worker's RNG from torch.utils.data.get_worker_info().seed in a worker_init_fn "
        "(never from a constant), or draw from torch's or NumPy's global RNG, which PyTorch "
        "seeds per worker."
    ),
    FindingKind.repeat_epochs: (
        "Derive worker seeds from get_worker_info().seed, which changes every epoch, not from a "
        "constant or the worker id alone; RNG objects made in __init__ must be re-seeded so."
    ),
    FindingKind.duplicate_ranks: (
        "Seed with seed + rank (torch.manual_seed, the DataLoader generator, any seed the workers "
        "derive from), so every DDP rank draws different worker seeds."
    ),
    FindingKind.frozen: (
        "Seed the per-item RNG from something that changes every epoch as well as the index: "
        "np.random.default_rng([get_worker_info().seed, index]) with persistent_workers=False, "
        "or the run's seed and the epoch (set_epoch); or draw from an RNG seeded once per "
        "worker in worker_init_fn, or from torch's global RNG."
    ),
    FindingKind.per_worker: (
        "With persistent_workers=True each worker keeps its seed for the whole run, so an RNG "
        "seeded per item from get_worker_info().seed repeats itself every epoch: seed an RNG "
        "once per worker in worker_init_fn and let every load advance it (or draw from torch's "
        "global RNG), or mix the epoch into the per-item seed."
    ),
    FindingKind.no_randomness: (
        "Nothing to fix if the pipeline is meant to be deterministic; if you expected "
        "augmentation, it is not applied."
    ),
    FindingKind.low_power: (
        "Raise --samples so that a duplicated sequence could be told from chance. An "
        "augmentation seeded per item is judged over distinct items, min(--samples/2, dataset "
        "size): a flip alone needs about 30."
    ),
}

ADVCLI_BUGGY_FIX = (
    "advcli's buggy mode emulates the pre-1.9 seeding on purpose: train with --augment fixed "
    "(NumPy seeded per worker and epoch) or --augment device."
)


def fix_for_rng_attributes(hints: list[tuple[str, str, str]]) -> str | None:
    if not hints:
        return None
    path, name, example = hints[0]
    others = f" (and {len(hints) - 1} more)" if len(hints) > 1 else ""
    attr = path.removeprefix("dataset")
    return (
        f"{path} ({name}){others} is made before the workers start, so each worker gets a copy: "
        f"re-seed it in a worker_init_fn: info = get_worker_info(); "
        f"info.dataset{attr} = {example}."
    )


# set_epoch reaches only the main process's dataset; persistent workers keep the copy made when
# they started, so an augmentation seeded by (index, epoch) freezes there.
_SET_EPOCH_PERSISTENT_FIX = (
    "set_epoch changes the main process's dataset, but persistent workers keep the copy they "
    "started with, so every epoch sees epoch 0: use persistent_workers=False, or share the "
    "epoch with the workers (a multiprocessing.Value) and read it in __getitem__."
)

_RUN_SEED_NOTE = (
    "two runs under different seeds gave {m} of {n} items the same augmentation in epoch 0 "
    "({p}): the augmentation ignores the run's seed, so runs with different --seed see the "
    "same crops and flips; mix the run's seed into the per-item seed if runs should differ"
)


def _who(k: StreamKey) -> str:
    return "the main process" if k.worker == MAIN else f"worker {k.worker}"


def _setting(k: StreamKey) -> str:
    return "n/a" if k.persistent is None else ("on" if k.persistent else "off")


def _describe(kind: FindingKind, ag: Agreement, ranks: int) -> str:
    a, b = ag.a, ag.b
    n, full = ag.length, ag.matches == ag.length
    seqs = "identical sequences" if full else "sequences"
    if kind is FindingKind.duplicate_workers:
        text = f"{_who(a)} and {_who(b)} produced {seqs} of {n} {ag.unit} in epoch {a.epoch}"
    elif kind is FindingKind.repeat_epochs:
        whose = "its" if a.worker == b.worker else f"{_who(a)}'s"
        verb = "repeated" if full else "partly repeated"
        text = (f"{_who(b)} {verb} {whose} epoch-{a.epoch} sequence of {n} {ag.unit} in epoch "
                f"{b.epoch}")
    else:
        where = f"{_who(a)}, epoch {a.epoch}"
        if (a.worker, a.epoch) != (b.worker, b.epoch):
            where += f" / {_who(b)}, epoch {b.epoch}"
        text = f"rank {a.rank} and rank {b.rank} produced {seqs} of {n} {ag.unit} ({where})"
    if ranks > 1 and kind is not FindingKind.duplicate_ranks:
        text += f", rank {a.rank}"
    if a.persistent is not None:
        text += f", persistent_workers={_setting(a)}"
    if not full:
        text += f" (agreeing in {ag.matches} of {n} {'items' if ag.distinct else 'positions'})"
    return text


def _kind(a: StreamKey, b: StreamKey) -> FindingKind:
    if a.rank != b.rank:
        return FindingKind.duplicate_ranks
    if a.epoch != b.epoch:
        return FindingKind.repeat_epochs
    return FindingKind.duplicate_workers


_PAIR_NOUN = {
    FindingKind.duplicate_workers: "same-epoch worker pairs",
    FindingKind.repeat_epochs: "cross-epoch pairs",
    FindingKind.duplicate_ranks: "rank pairs",
}


def _chance(
    judged: list[list[str]], control: Control, positions: Sequence[int],
) -> float:
    """q: the chance that two independent loads of one item agree, averaged over the items as
    often as each occurs in a sequence."""
    items: list[list[list[str]]] = []
    for j, loads in enumerate(judged):
        runs = [run[j] for run in control]
        # A control whose outputs of the item never change did not vary what the output depends
        # on (the worker id, say): use the judged loads, whose duplicates only inflate q.
        varied = len({x for run in runs for x in run}) > 1
        items.append(runs if varied else [[x] for x in loads])
    share = Counter(positions)
    return pooled_collision_probability(items, [share[j] for j in range(len(judged))])


def _run_seed_note(
    streams: Streams, keys: list[StreamKey], positions: Sequence[int], control: Control,
    q: float, threshold: float,
) -> str | None:
    """Control run 0 (other seeds, epoch 0) against the judged run's first epoch, item by item."""
    ref = next((k for k in keys if k.rank == 0 and k.epoch == 0), None)
    if ref is None:
        return None
    first: dict[int, int] = {}
    for p, j in enumerate(positions[:len(streams[ref])]):
        first.setdefault(j, p)
    matches = sum(control[0][j][0] == streams[ref][p] for j, p in first.items())
    p_chance = binomial_tail(matches, len(first), q)
    if p_chance >= threshold:
        return None
    return _RUN_SEED_NOTE.format(m=matches, n=len(first), p=format_p(p_chance))


def _describe_item_tie(kind: FindingKind, ag: Agreement, ranks: int) -> str:
    a, b = ag.a, ag.b
    loads = "items" if ag.distinct else "loads"
    if kind is FindingKind.frozen:
        text = (f"{_who(b)} in epoch {b.epoch} gave {ag.matches} of {ag.length} {loads} the output "
                f"{_who(a)} gave the same item in epoch {a.epoch}")
    else:
        text = (f"{_who(a)} gave {ag.matches} of {ag.length} {loads} in epoch {b.epoch} the output "
                f"it gave the same item in epoch {a.epoch}, while other workers differ")
    text += " (each item compared across the two load orders"
    if ranks > 1:
        text += f", rank {a.rank}"
    if a.persistent is not None:
        text += f", persistent_workers={_setting(a)}"
    text += ")"
    return text


def _item_tie_meaning(kind: FindingKind, workers: int) -> str:
    if kind is FindingKind.frozen:
        return "each item gets the same augmentation in every epoch"
    return (f"each item gets at most {workers} distinct augmentations for the whole run, one per "
            "worker")


def _distinct_item_p(sa: Sequence[str], sb: Sequence[str], idx: Sequence[tuple[int, int]],
                     positions: Sequence[int], q: float) -> float:
    """p(chance) of the item-by-item agreement of two sequences with each distinct item compared
    once (its first load paired across the two orders)."""
    matches, n = _distinct_item_matches(sa, sb, idx, positions)
    return binomial_tail(matches, n, q)


def _distinct_item_matches(sa: Sequence[str], sb: Sequence[str], idx: Sequence[tuple[int, int]],
                           positions: Sequence[int]) -> tuple[int, int]:
    """(agreeing items, distinct items) over the pairs `idx`, each item counted at its first
    pair."""
    first: dict[int, bool] = {}
    for p, r in idx:
        first.setdefault(positions[p], sa[p] == sb[r])
    return sum(first.values()), len(first)


def _item_consistent(s: Sequence[str], positions: Sequence[int]) -> bool:
    """Whether every load of an item in this sequence gave one output: the output is a function
    of the item within the stream (an RNG seeded per item), so its repeated loads are one draw."""
    seen: dict[int, str] = {}
    return all(seen.setdefault(j, fp) == fp for j, fp in zip(positions, s, strict=False))


def analyse(
    streams: Streams, *, target: str, workers: int, epochs: int, samples: int, ranks: int,
    item: int, time_s: float = 0.0, fixes: dict[FindingKind, str] | None = None,
    notes: list[str] | None = None, advcli_pipeline: bool = False, layout: Layout | None = None,
    control: Control = (), rng_calls: Sequence[str] | None = None,
    set_epoch: bool = False,
) -> LoaderReport:
    """Compare every pair of sequences within one persistent_workers setting; build the report.

    `layout` says which item each load is (None: one item, loaded at every position);
    `control[r][j]` holds control run r's outputs of item j; `rng_calls` the random-number calls
    seen while loading (None: not recorded); `set_epoch`: the dataset has set_epoch."""
    fixes = {**_GENERIC_FIX, **(fixes or {})}
    notes = list(notes or [])
    keys = sorted(streams, key=lambda k: (k.persistent is None, bool(k.persistent), k.rank,
                                          k.epoch, k.worker))
    longest = max((len(s) for s in streams.values()), default=0)
    positions = list(layout.positions) if layout else [0] * longest
    partners = list(layout.partners) if layout else [-1] * longest
    n_items = len(layout.items) if layout else 1
    fps = [f for k in keys for f in streams[k]]
    counts = Counter(fps)
    judged: list[list[str]] = [[] for _ in range(n_items)]
    for k in keys:
        for p, fp in enumerate(streams[k]):
            judged[positions[p]].append(fp)
    q = _chance(judged, control, positions)
    settings = sorted({_setting(k) for k in keys}, key=["off", "on", "n/a"].index)
    calls = sorted(rng_calls or [])

    def report(
        verdict: Verdict, findings: list[Finding], threshold: float, pairs: int,
        smallest: float | None = None,
    ) -> LoaderReport:
        return LoaderReport(
            target=target, verdict=verdict, findings=findings, workers=workers, epochs=epochs,
            samples=samples, ranks=ranks, item=item, persistent_workers=settings,
            loads=len(fps), distinct_outputs=len(counts), collision_probability=q,
            threshold=threshold, pairs_compared=pairs, smallest_p=smallest, time_s=time_s,
            notes=notes, advcli_pipeline=advcli_pipeline, items=n_items,
            control_runs=len(control), rng_calls=calls,
        )

    if all(len(set(judged[j]) | {x for run in control for x in run[j]}) <= 1
           for j in range(n_items)):
        if n_items == 1:
            where = f"item {item} came out byte-identical in all {len(fps)} loads"
        else:
            where = (f"each of the {n_items} items from item {item} on came out byte-identical "
                     f"every time it was loaded ({len(fps)} loads")
        where += f" ({len(keys)} sequences" if n_items == 1 else f" in {len(keys)} sequences"
        where += f", and {len(control)} runs under other seeds)" if control else ")"
        if calls:
            evidence = (f"{where}, yet loading draws random numbers ({', '.join(calls[:3])}): the "
                        "augmentation is a function of the item alone")
            finding = Finding(FindingKind.frozen, True, evidence, fixes[FindingKind.frozen],
                              persistent_workers=settings)
            return report(Verdict.bug, [finding], 0.0, 0)
        if rng_calls is not None:
            where += "; no random-number call was seen while loading"
        finding = Finding(FindingKind.no_randomness, False, where,
                          fixes[FindingKind.no_randomness], persistent_workers=settings)
        return report(Verdict.no_randomness, [finding], 0.0, 0)

    pairs = [(a, b) for a, b in combinations(keys, 2) if a.persistent == b.persistent]
    cross = any(r >= 0 for r in partners)
    threshold = ALPHA / max(len(pairs) * (2 if cross else 1) + (1 if control else 0), 1)
    flagged: dict[FindingKind, list[Agreement]] = {}
    compared: Counter[FindingKind] = Counter()
    smallest = 1.0
    consistent = {k: _item_consistent(streams[k], positions) for k in keys}
    # The fewest independent draws a compared pair had, and whether they were distinct items.
    fewest, fewest_by_items = longest, False
    for a, b in pairs:
        kind = _kind(a, b)
        compared[kind] += 1
        sa, sb = streams[a], streams[b]
        length = min(len(sa), len(sb))
        # When both streams tie their output to the item, an item loaded k times is one draw,
        # not k: count each distinct item once, position by position as item by item (the two
        # then agree on the same items). A shared random stream is not item-consistent, so the
        # duplicated-stream bugs keep every load's evidence.
        by_items = consistent[a] and consistent[b]
        draws = len(set(positions[:length])) if by_items else length
        if draws < fewest:
            fewest, fewest_by_items = draws, by_items
        if cross:
            idx = [(i, r) for i in range(length) if 0 <= (r := partners[i]) < length]
            if by_items:
                matches, n = _distinct_item_matches(sa, sb, idx, positions)
            else:
                matches, n = sum(sa[i] == sb[r] for i, r in idx), len(idx)
            p = binomial_tail(matches, n, q)
            smallest = min(smallest, p)
            if p < threshold:
                # The output follows the item. Within an epoch that is harmless (each item is
                # loaded once per epoch); across epochs the augmentation does not change.
                if kind is FindingKind.repeat_epochs:
                    flagged.setdefault(FindingKind.frozen, []).append(
                        Agreement(a, b, matches, n, p, by_item=True,
                                  p_items=p if by_items
                                  else _distinct_item_p(sa, sb, idx, positions, q),
                                  distinct=by_items))
                continue
        if by_items:
            matches, n = _distinct_item_matches(sa, sb, [(i, i) for i in range(length)], positions)
        else:
            matches, n = sum(x == y for x, y in zip(sa[:length], sb[:length], strict=True)), length
        p = binomial_tail(matches, n, q)
        smallest = min(smallest, p)
        if p < threshold:
            flagged.setdefault(kind, []).append(Agreement(a, b, matches, n, p, distinct=by_items))

    # Item-tied repeats across epochs: frozen when different workers agree too (or there is one
    # worker), one augmentation per worker when each worker only agrees with itself. Two workers
    # agree beyond chance only if they do on more distinct items than chance allows: with the
    # output fixed per worker, an item's repeated loads are one draw, not several.
    run_workers: dict[tuple[bool | None, int], set[int]] = {}
    for k in keys:
        run_workers.setdefault((k.persistent, k.rank), set()).add(k.worker)
    for ag in flagged.pop(FindingKind.frozen, []):
        run = run_workers[(ag.a.persistent, ag.a.rank)]
        frozen = len(run) <= 1 or (ag.a.worker != ag.b.worker and ag.p_items is not None and ag.p_items < threshold)
        flagged.setdefault(FindingKind.frozen if frozen else FindingKind.per_worker, []).append(ag)
    if FindingKind.per_worker in flagged and FindingKind.frozen in flagged:
        # Some workers agree with others across epochs: the augmentation is frozen for them all.
        frozen_runs = {(ag.a.persistent, ag.a.rank) for ag in flagged[FindingKind.frozen]}
        keep = []
        for ag in flagged.pop(FindingKind.per_worker):
            (flagged[FindingKind.frozen] if (ag.a.persistent, ag.a.rank) in frozen_runs
             else keep).append(ag)
        if keep:
            flagged[FindingKind.per_worker] = keep

    findings: list[Finding] = []
    for kind in (FindingKind.duplicate_workers, FindingKind.repeat_epochs,
                 FindingKind.duplicate_ranks, FindingKind.frozen, FindingKind.per_worker):
        hits = flagged.get(kind)
        if not hits:
            continue
        # For a frozen augmentation, show two different workers agreeing if any did.
        shown_hits = [ag for ag in hits if ag.a.worker != ag.b.worker] or hits
        best = min(shown_hits if kind is FindingKind.frozen else hits,
                   key=lambda ag: (ag.p_chance, ag.a, ag.b))
        shown = sorted({_setting(ag.a) for ag in hits}, key=["off", "on", "n/a"].index)
        if kind in _PAIR_NOUN:
            total = compared[kind]
            evidence = (f"{_describe(kind, best, ranks)}; {len(hits)} of {total} "
                        f"{_PAIR_NOUN[kind]} agree; {format_p(best.p_chance)}")
            fix = fixes[kind]
        else:
            total = compared[FindingKind.repeat_epochs]
            n_workers = len(run_workers[(best.a.persistent, best.a.rank)])
            evidence = (f"{_describe_item_tie(kind, best, ranks)}; {len(hits)} of "
                        f"{total} cross-epoch pairs agree item by item; "
                        f"{format_p(best.p_chance)}: {_item_tie_meaning(kind, n_workers)}")
            fix = fixes[kind]
            if kind is FindingKind.frozen and set_epoch and shown == ["on"]:
                fix = _SET_EPOCH_PERSISTENT_FIX
        findings.append(Finding(kind, True, evidence, fix, best.p_chance, len(hits), total,
                                shown))
    if findings:
        return report(Verdict.bug, findings, threshold, len(pairs), smallest)

    if control:
        note = _run_seed_note(streams, keys, positions, control, q, threshold)
        if note:
            notes.append(note)
    best_possible = q ** fewest
    if pairs and best_possible >= threshold:
        what = (f"outputs of {fewest} distinct items (each item's loads gave one output per "
                "stream, so its repeats are one draw)" if fewest_by_items
                else f"sequences of {fewest} samples")
        evidence = (f"even identical {what} would have "
                    f"{format_p(best_possible)} (per-load collision probability {q:.2f}); "
                    f"the threshold is {threshold:.0e}")
        finding = Finding(FindingKind.low_power, False, evidence, fixes[FindingKind.low_power],
                          persistent_workers=settings)
        return report(Verdict.inconclusive, [finding], threshold, len(pairs), smallest)
    return report(Verdict.clean, [], threshold, len(pairs), smallest if pairs else None)
