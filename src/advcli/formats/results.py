# Over 500 lines: both result-file schemas (eval results, attack summaries) share one
# validating reader and its error texts.
"""Result files: typed evaluation results <-> YAML, and their validation.

Two schemas are read here:

- `advcli.results/1`, written by `advcli eval` (and by hand for published numbers): one file per
  evaluated model, with one entry per attack (clean, pgd per eps, autoattack per eps, transfer
  from an adversarial set, and the per-example worst case per eps). Each entry carries its
  accuracy as a fraction, n, and the per-example correctness flags as a base64 bitset (bit i of
  byte i // 8, little-endian bit order), so that `advcli compare` can pair two files example by
  example. `data.index_sha256` identifies the examples: two files with the same dataset, split
  and index hash were evaluated on the same examples in the same order.
  A file with `published: true` holds numbers from a paper (a `citation` is required); its
  entries need no flags and its model/data sections may be partial.
- `advcli.attack/1`, the summary `advcli attack` writes (read for compare's matrix and 1−SSIM
  tables). Its `metrics.robust_accuracy` (clean-correct AND not fooled, over all n) is the
  robust accuracy; `metrics.adv_accuracy` is the accuracy on the adversarial images alone
  (it counts examples misclassified clean but classified correctly after the attack).
  Summaries written before robust_accuracy existed have none: `AttackSummary.robust_accuracy`
  is None for them.

Every robust flag in a result file implies clean-correct: entries of `advcli eval` are ANDed
with the clean flags (transfer entries with the clean verdict on the set's own examples).

Every problem with a file is one `ResultsError` naming the file and the offending key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from advcli.errors import ResultsError
from advcli.io import atomic_write_text, plain, read_yaml_document

SCHEMA = "advcli.results/1"
ATTACK_SCHEMA = "advcli.attack/1"

KNOWN_NORMS = ("linf", "l2")


# --------------------------------------------------------------------------- flags as bitsets

def encode_flags(flags: Sequence[bool] | np.ndarray) -> str:
    """Pack booleans into a base64 string: bit i is byte i // 8, bit i % 8 (little-endian)."""
    arr = np.asarray(flags, dtype=bool).ravel()
    return base64.b64encode(np.packbits(arr, bitorder="little").tobytes()).decode("ascii")


def decode_flags(text: str, n: int) -> np.ndarray:
    """The inverse of `encode_flags`; rejects a bitset of the wrong length or with stray bits."""
    try:
        raw = base64.b64decode(str(text).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"flags are not valid base64 ({exc})") from exc
    if len(raw) != (n + 7) // 8:
        raise ValueError(f"flags hold {len(raw) * 8} bits but n is {n}")
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
    if bits[n:].any():
        raise ValueError("flags have bits set beyond n")
    return bits[:n].astype(bool)


def index_sha256(index: Iterable[int] | np.ndarray) -> str:
    """Identify an ordered example subset: sha256 of the indices as little-endian int64."""
    if hasattr(index, "numpy"):  # a torch tensor
        index = index.detach().cpu().numpy()  # type: ignore[union-attr]
    arr = np.asarray(index if isinstance(index, np.ndarray) else list(index), dtype="<i8")
    return hashlib.sha256(arr.tobytes()).hexdigest()


def trained_with_text(threat_model: dict[str, Any] | str | None) -> str:
    """How a model was trained, as compare's matrix rows name it: "clean", or the training
    attack of its threat model ("pgd", "fgsm", "static:stadv", ...), or its objective with β
    and AWP's γ ("trades beta=6 + awp gamma=0.005", "pgd + awp gamma=0.01"), as `advcli attack`
    summaries name it too."""
    if threat_model is None:
        return "clean"
    if isinstance(threat_model, str):
        return threat_model
    name = str(threat_model.get("attack") or "adversarial")
    # adv-train's objectives (train/objectives.py); absent: PGD-AT without AWP.
    objective = threat_model.get("objective")
    if objective in ("trades", "mart"):
        name = f"{objective} beta={threat_model.get('beta'):g}"
    if threat_model.get("awp_gamma"):
        name += f" + awp gamma={threat_model['awp_gamma']:g}"
        if threat_model.get("awp_steps", 1) != 1:
            name += f" steps={threat_model['awp_steps']}"
    return name


def format_number(value: float) -> str:
    """A compact decimal for eps values that have no original text."""
    return f"{value:.6g}"


# --------------------------------------------------------------------------- dataclasses

@dataclass
class Entry:
    """One evaluation: an attack (or none) at one threat model, over `n` examples.

    `attack` is clean | pgd | autoattack | transfer | worst (published files may also name
    other attacks, e.g. fgsm). `params` holds the attack's settings (steps, restarts,
    step_size, keep -- the iterate rule of PGD entries, absent in files that predate it, which
    kept the last iterate -- version, attacks, source, adv_accuracy of transfer entries, of,
    ...), `flags` the per-example correctness (robust implies correct clean).
    """

    attack: str
    accuracy: float
    n: int
    norm: str | None = None
    eps: float | None = None
    eps_text: str | None = None
    flags: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    time_s: float | None = None
    index_sha256: str | None = None  # only where it differs from the file's (transfer sets)

    @property
    def is_clean(self) -> bool:
        return self.attack == "clean"

    def eps_key(self) -> float | None:
        # 8/255 written as a fraction or as 0.0313725 must land in the same column.
        return None if self.eps is None else round(float(self.eps), 7)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"attack": self.attack}
        if self.norm is not None:
            d["norm"] = self.norm
        if self.eps is not None:
            d["eps"] = float(self.eps)
            d["eps_text"] = self.eps_text if self.eps_text is not None else format_number(self.eps)
        d.update(plain(self.params))
        d["accuracy"] = float(self.accuracy)
        d["n"] = int(self.n)
        if self.index_sha256 is not None:
            d["index_sha256"] = self.index_sha256
        if self.time_s is not None:
            d["time_s"] = round(float(self.time_s), 3)
        if self.warnings:
            d["warnings"] = [str(w) for w in self.warnings]
        if self.flags is not None:
            d["flags"] = encode_flags(self.flags)
        return d


@dataclass
class ModelInfo:
    checkpoint: str | None
    sha256: str | None
    arch: str | None
    trained_with: str = "clean"
    seed: int | None = None
    threat_model: dict[str, Any] | None = None


@dataclass
class DataInfo:
    dataset: str | None
    split: str = "test"
    n: int | None = None
    seed: int | None = None
    index_sha256: str | None = None
    examples_sha256: str | None = None  # pixels + labels: synthetic data depends on a seed
    subset: str | None = None  # how --n chose them (first | stratified | list:FILE | robustbench); None in older files
    subset_sha256: str | None = None  # the list file's sha256 (list:FILE, robustbench); None otherwise
    image_size: int | None = None  # a streamed dataset's --image-size; None: read in memory
    skipped_bad: list[str] | None = None  # undecodable files left out (--skip-bad); None: none

    def subset_fields(self) -> dict[str, Any]:
        """The list's sha256, written only for a file list (files stay as before)."""
        return {} if self.subset_sha256 is None else {"subset_sha256": self.subset_sha256}

    def view_fields(self) -> dict[str, Any]:
        """The keys of a streamed view, written only when there is one (files stay as before)."""
        return {**({} if self.image_size is None else {"image_size": self.image_size}),
                **({} if not self.skipped_bad else {"skipped_bad": list(self.skipped_bad)})}


@dataclass
class EvalResult:
    """The content of one `advcli.results/1` file."""

    label: str
    model: ModelInfo
    data: DataInfo
    entries: list[Entry]
    seed: int | None = None
    time_s: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    published: bool = False
    citation: str | None = None
    path: Path | None = None  # where it was read from (not written)
    # --model / --wrap files (`models.user.UserCode.to_dict()` plus `role`): what was measured
    # beyond the checkpoint; empty for an advcli architecture evaluated as it is.
    user_code: list[dict[str, str]] = field(default_factory=list)

    def entry(self, attack: str, norm: str | None = None, eps: float | None = None) -> Entry:
        """The first entry for an attack (and norm/eps); KeyError if there is none."""
        key = None if eps is None else round(float(eps), 7)
        for e in self.entries:
            if e.attack == attack and (norm is None or e.norm == norm) and (
                eps is None or e.eps_key() == key
            ):
                return e
        raise KeyError(f"no {attack} entry for norm={norm} eps={eps}")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema": SCHEMA, "label": self.label}
        if self.published:
            d["published"] = True
            d["citation"] = self.citation
        d["seed"] = self.seed
        d["model"] = plain(
            {
                "checkpoint": self.model.checkpoint,
                "sha256": self.model.sha256,
                "arch": self.model.arch,
                "trained_with": self.model.trained_with,
                "seed": self.model.seed,
                "threat_model": self.model.threat_model,
            }
        )
        if self.user_code:
            d["user_code"] = plain(self.user_code)
        d["data"] = plain(
            {
                "dataset": self.data.dataset,
                "split": self.data.split,
                "n": self.data.n,
                "seed": self.data.seed,
                **({} if self.data.subset is None else {"subset": self.data.subset}),
                **self.data.subset_fields(),
                **self.data.view_fields(),
                "index_sha256": self.data.index_sha256,
                "examples_sha256": self.data.examples_sha256,
            }
        )
        d["results"] = [e.to_dict() for e in self.entries]
        if self.time_s is not None:
            d["time_s"] = round(float(self.time_s), 3)
        d["provenance"] = plain(self.provenance)
        return d


@dataclass
class AttackSummary:
    """The parts of an `advcli.attack/1` summary that compare uses."""

    label: str
    checkpoint: dict[str, Any]
    attack: dict[str, Any]
    data: dict[str, Any]
    metrics: dict[str, float]
    path: Path | None = None
    user_code: list[dict[str, str]] = field(default_factory=list)  # --model / --wrap files

    @property
    def robust_accuracy(self) -> float | None:
        """Clean-correct AND not fooled (None in summaries older than the metric)."""
        return self.metrics.get("robust_accuracy")

    @property
    def keep(self) -> str | None:
        """The attack's iterate rule (`first-success`, `last`, ...); None in older summaries,
        which kept the last iterate."""
        keep = self.attack.get("keep")
        return None if keep is None else str(keep)

    @property
    def trained_with(self) -> str:
        tw = self.checkpoint.get("trained_with")
        return trained_with_text(tw) if isinstance(tw, (dict, str)) or tw is None else str(tw)


# --------------------------------------------------------------------------- writing

def write_attack_summary(path: str | Path, summary: dict[str, Any]) -> Path:
    """Write an `advcli.attack/1` summary (made by `attacks.run.build_summary`) atomically,
    validated first."""
    doc = plain(summary)
    parse_attack_summary(doc, source=str(path))
    return atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))


def read_attack_summary(path: str | Path) -> dict[str, Any]:
    """An `advcli.attack/1` summary as its mapping, validated; one clear error for anything else."""
    p = Path(path)
    data = read_yaml_document(p, what="attack summary", schema=ATTACK_SCHEMA,
                              make_hint="run `advcli attack` first")
    metrics = data.get("metrics")
    if not isinstance(metrics, dict) or not all(
        v is None or (isinstance(v, (int, float)) and not math.isnan(v)) for v in metrics.values()
    ):
        raise ResultsError(f"{str(p)!r} has malformed metrics; re-create it with `advcli attack`")
    parse_attack_summary(data, source=str(p))
    return data


def dump_results(result: EvalResult) -> str:
    return yaml.safe_dump(result.to_dict(), sort_keys=False, allow_unicode=True)


def save_results(path: str | Path, result: EvalResult) -> Path:
    """Write a result file atomically (validated by reading the text back first)."""
    text = dump_results(result)
    parse_results(yaml.safe_load(text), source=str(path))
    return atomic_write_text(path, text)


# --------------------------------------------------------------------------- reading

class _Reader:
    """Typed access to one mapping of a result file; every error names the file and key."""

    def __init__(self, data: dict[str, Any], source: str, where: str = "") -> None:
        self.data, self.source, self.where = data, source, where

    def fail(self, key: str, problem: str) -> ResultsError:
        loc = f"{self.where}.{key}" if self.where else key
        return ResultsError(f"result file {self.source!r}: `{loc}` {problem}")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str, kind: type | tuple[type, ...], *, required: bool = True) -> Any:
        if key not in self.data or self.data[key] is None:
            if required:
                raise self.fail(key, "is missing")
            return None
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(key, f"must be {_kind_name(kinds)}, got {value!r}")
        if not isinstance(value, kinds):
            got = f"{type(value).__name__} {value!r}"
            raise self.fail(key, f"must be {_kind_name(kinds)}, got {got}")
        return value

    def section(self, key: str, *, required: bool = True) -> _Reader | None:
        value = self.get(key, dict, required=required)
        if value is None:
            return None
        return _Reader(value, self.source, f"{self.where}.{key}" if self.where else key)


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false",
             dict: "a mapping", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _load_yaml(path: str | Path) -> dict[str, Any]:
    return read_yaml_document(path, what="result file", schema=None, make_hint="re-create it with `advcli eval -o`")


def load_results(path: str | Path) -> EvalResult:
    """Read and validate an `advcli.results/1` file."""
    result = parse_results(_load_yaml(path), source=str(path))
    result.path = Path(path)
    return result


def load_any(path: str | Path) -> EvalResult | AttackSummary:
    """A result file or an attack summary, told apart by `schema`."""
    data = _load_yaml(path)
    schema = data.get("schema")
    if schema == ATTACK_SCHEMA:
        summary = parse_attack_summary(data, source=str(path))
        summary.path = Path(path)
        return summary
    result = parse_results(data, source=str(path))
    result.path = Path(path)
    return result


def _check_schema(data: dict[str, Any], source: str, expected: str) -> None:
    schema = data.get("schema")
    if schema is None:
        raise ResultsError(f"result file {source!r} has no `schema` key; expected {expected!r}")
    if schema != expected:
        other = {SCHEMA: "an `advcli eval` result", ATTACK_SCHEMA: "an `advcli attack` summary"}
        hint = f" ({other[schema]})" if schema in other else ""
        raise ResultsError(
            f"result file {source!r} has schema {schema!r}{hint}; expected {expected!r}"
        )


def _fraction(r: _Reader, key: str) -> float:
    value: float = r.get(key, float)
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise r.fail(key, f"must be a fraction in [0, 1], got {value!r} (percentages are not "
                          "accepted: write 0.9441, not 94.41)")
    return value


def parse_results(data: dict[str, Any], *, source: str = "<memory>") -> EvalResult:
    """Validate a decoded `advcli.results/1` mapping and build the typed result."""
    if not isinstance(data, dict):
        raise ResultsError(f"result file {source!r} must be a YAML mapping")
    _check_schema(data, source, SCHEMA)
    top = _Reader(data, source)
    label = top.get("label", str)
    published = bool(top.get("published", bool, required=False) or False)
    citation = top.get("citation", str, required=published)

    user_code = _user_code(top)
    # A --model without weights has no checkpoint: its code's sha256 identifies it instead.
    needs_ckpt = not published and not user_code
    m = top.section("model", required=not published) or _Reader({}, source, "model")
    model = ModelInfo(
        checkpoint=m.get("checkpoint", str, required=needs_ckpt),
        sha256=m.get("sha256", str, required=needs_ckpt),
        arch=m.get("arch", str, required=False),
        trained_with=m.get("trained_with", str, required=False) or "clean",
        seed=m.get("seed", int, required=False),
        threat_model=m.get("threat_model", dict, required=False),
    )
    d = top.section("data", required=not published) or _Reader({}, source, "data")
    info = DataInfo(
        dataset=d.get("dataset", str, required=not published),
        split=d.get("split", str, required=False) or "test",
        n=d.get("n", int, required=not published),
        seed=d.get("seed", int, required=False),
        index_sha256=d.get("index_sha256", str, required=not published),
        examples_sha256=d.get("examples_sha256", str, required=False),
        subset=d.get("subset", str, required=False),
        subset_sha256=d.get("subset_sha256", str, required=False),
        image_size=d.get("image_size", int, required=False),
        skipped_bad=[str(f) for f in d.get("skipped_bad", list, required=False) or []] or None,
    )
    raw_entries = top.get("results", list)
    if not raw_entries:
        raise top.fail("results", "is empty; a result file needs at least one entry")
    entries = [
        _parse_entry(item, source, i, published=published, data_n=info.n)
        for i, item in enumerate(raw_entries)
    ]
    return EvalResult(
        label=label,
        model=model,
        data=info,
        entries=entries,
        seed=top.get("seed", int, required=False),
        time_s=top.get("time_s", float, required=False),
        provenance=top.get("provenance", dict, required=False) or {},
        published=published,
        citation=citation,
        user_code=user_code,
    )


def _user_code(top: _Reader) -> list[dict[str, str]]:
    """The `user_code` list of a result or summary (empty when absent)."""
    user_code = top.get("user_code", list, required=False) or []
    if not all(isinstance(c, dict) and c.get("sha256") for c in user_code):
        raise top.fail("user_code", "must be a list of mappings with file, callable and sha256")
    return [{str(k): str(v) for k, v in c.items()} for c in user_code]


# Attacks whose entries only make sense with a threat model; transfer sets and published
# attacks such as stAdv may have none.
_NEEDS_EPS = ("pgd", "autoattack", "worst")
_ENTRY_FIELDS = {"attack", "norm", "eps", "eps_text", "accuracy", "n", "flags", "warnings",
                 "time_s", "index_sha256"}


def _parse_entry(item: Any, source: str, i: int, *, published: bool, data_n: int | None) -> Entry:
    where = f"results[{i}]"
    if not isinstance(item, dict):
        raise ResultsError(f"result file {source!r}: `{where}` must be a mapping")
    r = _Reader(item, source, where)
    attack = r.get("attack", str)
    norm = r.get("norm", str, required=False)
    if norm is not None and norm not in KNOWN_NORMS:
        raise r.fail("norm", f"must be one of {', '.join(KNOWN_NORMS)}, got {norm!r}")
    eps = r.get("eps", float, required=False)
    eps_text = r.get("eps_text", str, required=False)
    if eps is None and eps_text is not None:
        from advcli.config import parse_eps

        try:
            eps = parse_eps(eps_text).value
        except Exception as exc:  # UsageError: rephrase as a file problem
            raise r.fail("eps_text", f"is not an eps value ({exc})") from exc
    if attack in _NEEDS_EPS and eps is None:
        raise r.fail("eps", f"is missing (a {attack} entry needs its eps)")
    if eps is not None and eps < 0:
        raise r.fail("eps", f"must be >= 0, got {eps!r}")
    accuracy = _fraction(r, "accuracy")
    n = r.get("n", int, required=not published)
    if n is None:
        n = 0
    if n < 0:
        raise r.fail("n", f"must be >= 0, got {n}")
    entry_index = r.get("index_sha256", str, required=False)
    if data_n is not None and n != data_n and entry_index is None and not published:
        raise r.fail("n", f"is {n} but data.n is {data_n}; the entry was made on other examples")
    flags = None
    text = r.get("flags", str, required=not published)
    if text is not None:
        try:
            flags = decode_flags(text, n)
        except ValueError as exc:
            raise r.fail("flags", f"is not a valid bitset for n={n}: {exc}") from exc
        if n and abs(flags.mean() - accuracy) > 0.5 / n:
            raise r.fail("flags", f"say accuracy {flags.mean():.4f} but `accuracy` is {accuracy}")
    warnings = r.get("warnings", list, required=False) or []
    params = {k: v for k, v in item.items() if k not in _ENTRY_FIELDS}
    return Entry(
        attack=attack,
        accuracy=accuracy,
        n=n,
        norm=norm,
        eps=eps,
        eps_text=eps_text if eps_text is not None or eps is None else format_number(eps),
        flags=flags,
        params=params,
        warnings=[str(w) for w in warnings],
        time_s=r.get("time_s", float, required=False),
        index_sha256=entry_index,
    )


def parse_attack_summary(data: dict[str, Any], *, source: str = "<memory>") -> AttackSummary:
    """Validate the parts of an `advcli.attack/1` summary that compare reads."""
    _check_schema(data, source, ATTACK_SCHEMA)
    top = _Reader(data, source)
    ckpt = top.get("checkpoint", dict)
    attack = top.get("attack", dict)
    r_attack = _Reader(attack, source, "attack")
    r_attack.get("name", str)
    m = _Reader(top.get("metrics", dict), source, "metrics")
    metrics = {key: _fraction(m, key) for key in ("clean_accuracy", "adv_accuracy")}
    if m.has("robust_accuracy"):
        metrics["robust_accuracy"] = _fraction(m, "robust_accuracy")
        if metrics["robust_accuracy"] > metrics["clean_accuracy"] + 1e-9:
            raise m.fail("robust_accuracy", f"is {metrics['robust_accuracy']} > clean_accuracy "
                         f"{metrics['clean_accuracy']}; a robust example must be correct clean")
    for key, value in m.data.items():
        if key in metrics or value is None:
            continue
        metrics[key] = float(m.get(key, float))
    label = top.get("label", str, required=False) or str(ckpt.get("label") or Path(source).stem)
    return AttackSummary(
        label=label,
        checkpoint=ckpt,
        attack=attack,
        data=top.get("data", dict, required=False) or {},
        metrics=metrics,
        user_code=_user_code(top),
    )
