"""Analysis: compare the probe's output sequences pair by pair, decide what each agreement means
and how likely it is by chance (p(chance)), and turn that into findings with fixes and a verdict
(`LoaderReport`)."""

from __future__ import annotations

from collections import Counter
from itertools import combinations

from advcli.stages.check_loader.report import (
    MAIN,
    Agreement,
    Finding,
    FindingKind,
    LoaderReport,
    StreamKey,
    Streams,
    Verdict,
)
from advcli.stats import binomial_tail, collision_probability

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
    FindingKind.no_randomness: (
        "Nothing to fix if the pipeline is meant to be deterministic; if you expected "
        "augmentation, it is not applied."
    ),
    FindingKind.low_power: (
        "Raise --samples so that a duplicated sequence could be told from chance."
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


def _who(k: StreamKey) -> str:
    return "the main process" if k.worker == MAIN else f"worker {k.worker}"


def _setting(k: StreamKey) -> str:
    return "n/a" if k.persistent is None else ("on" if k.persistent else "off")


def _describe(kind: FindingKind, ag: Agreement, ranks: int) -> str:
    a, b = ag.a, ag.b
    n, full = ag.length, ag.matches == ag.length
    seqs = "identical sequences" if full else "sequences"
    if kind is FindingKind.duplicate_workers:
        text = f"{_who(a)} and {_who(b)} produced {seqs} of {n} samples in epoch {a.epoch}"
    elif kind is FindingKind.repeat_epochs:
        whose = "its" if a.worker == b.worker else f"{_who(a)}'s"
        verb = "repeated" if full else "partly repeated"
        text = (f"{_who(b)} {verb} {whose} epoch-{a.epoch} sequence of {n} samples in epoch "
                f"{b.epoch}")
    else:
        where = f"{_who(a)}, epoch {a.epoch}"
        if (a.worker, a.epoch) != (b.worker, b.epoch):
            where += f" / {_who(b)}, epoch {b.epoch}"
        text = f"rank {a.rank} and rank {b.rank} produced {seqs} of {n} samples ({where})"
    if ranks > 1 and kind is not FindingKind.duplicate_ranks:
        text += f", rank {a.rank}"
    if a.persistent is not None:
        text += f", persistent_workers={_setting(a)}"
    if not full:
        text += f" (agreeing in {ag.matches} of {n} positions)"
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


def analyse(
    streams: Streams, *, target: str, workers: int, epochs: int, samples: int, ranks: int,
    item: int, time_s: float = 0.0, fixes: dict[FindingKind, str] | None = None,
    notes: list[str] | None = None, advcli_pipeline: bool = False,
) -> LoaderReport:
    """Compare every pair of sequences within one persistent_workers setting; build the report."""
    fixes = {**_GENERIC_FIX, **(fixes or {})}
    keys = sorted(streams, key=lambda k: (k.persistent is None, bool(k.persistent), k.rank,
                                          k.epoch, k.worker))
    fps = [f for k in keys for f in streams[k]]
    counts = Counter(fps)
    q = collision_probability(fps)
    settings = sorted({_setting(k) for k in keys}, key=["off", "on", "n/a"].index)

    def report(
        verdict: Verdict, findings: list[Finding], threshold: float, pairs: int,
        smallest: float | None = None,
    ) -> LoaderReport:
        return LoaderReport(
            target=target, verdict=verdict, findings=findings, workers=workers, epochs=epochs,
            samples=samples, ranks=ranks, item=item, persistent_workers=settings,
            loads=len(fps), distinct_outputs=len(counts), collision_probability=q,
            threshold=threshold, pairs_compared=pairs, smallest_p=smallest, time_s=time_s,
            notes=list(notes or []), advcli_pipeline=advcli_pipeline,
        )

    if len(counts) <= 1:
        evidence = (f"item {item} came out byte-identical in all {len(fps)} loads "
                    f"({len(keys)} sequences)")
        finding = Finding(FindingKind.no_randomness, False, evidence,
                          fixes[FindingKind.no_randomness], persistent_workers=settings)
        return report(Verdict.no_randomness, [finding], 0.0, 0)

    pairs = [(a, b) for a, b in combinations(keys, 2) if a.persistent == b.persistent]
    threshold = ALPHA / max(len(pairs), 1)
    flagged: dict[FindingKind, list[Agreement]] = {}
    compared: Counter[FindingKind] = Counter()
    smallest = 1.0
    for a, b in pairs:
        kind = _kind(a, b)
        compared[kind] += 1
        sa, sb = streams[a], streams[b]
        length = min(len(sa), len(sb))
        matches = sum(x == y for x, y in zip(sa[:length], sb[:length], strict=True))
        p = binomial_tail(matches, length, q)
        smallest = min(smallest, p)
        if p < threshold:
            flagged.setdefault(kind, []).append(Agreement(a, b, matches, length, p))

    findings: list[Finding] = []
    for kind in (FindingKind.duplicate_workers, FindingKind.repeat_epochs,
                 FindingKind.duplicate_ranks):
        hits = flagged.get(kind)
        if not hits:
            continue
        best = min(hits, key=lambda ag: (ag.p_chance, ag.a, ag.b))
        evidence = (f"{_describe(kind, best, ranks)}; {len(hits)} of {compared[kind]} "
                    f"{_PAIR_NOUN[kind]} agree; {format_p(best.p_chance)}")
        shown = sorted({_setting(ag.a) for ag in hits}, key=["off", "on", "n/a"].index)
        findings.append(Finding(kind, True, evidence, fixes[kind], best.p_chance, len(hits),
                                compared[kind], shown))
    if findings:
        return report(Verdict.bug, findings, threshold, len(pairs), smallest)

    lengths = [len(s) for s in streams.values()]
    best_possible = q ** min(lengths) if lengths else 1.0
    if pairs and best_possible >= threshold:
        evidence = (f"even identical sequences of {min(lengths)} samples would have "
                    f"{format_p(best_possible)} (per-load collision probability {q:.2f}); "
                    f"the threshold is {threshold:.0e}")
        finding = Finding(FindingKind.low_power, False, evidence, fixes[FindingKind.low_power],
                          persistent_workers=settings)
        return report(Verdict.inconclusive, [finding], threshold, len(pairs), smallest)
    return report(Verdict.clean, [], threshold, len(pairs), smallest if pairs else None)

