"""The training-history file `NAME.history.yaml` (schema `advcli.history/1`): where it lives
beside a checkpoint, how it is written and the one reader (`advcli plot history` uses it).

A history is a list of per-epoch records, each a flat mapping of numbers: `epoch` (1-based),
`lr` (at the end of the epoch), `train_loss`, `train_accuracy`, `test_accuracy`, `seconds`, and
when measured `val_accuracy`, the adversarial-training metrics (`clean_loss`, `clean_accuracy`,
`adv_loss`, `adv_accuracy`) and the epoch hooks' metrics (`val_robust_accuracy`,
`train_batch_pgd_accuracy`, ...). Accuracies are fractions in [0, 1]; a metric that could not be
measured in an epoch is null or absent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advcli.errors import ResultsError
from advcli.io import atomic_write_text, read_yaml_document, sha256_file

SCHEMA = "advcli.history/1"
MAKE_HINT = "it is written by `advcli train` / `advcli adv-train` beside the checkpoint"


def beside(out: str | Path, suffix: str) -> Path:
    """The file `NAME<suffix>` next to checkpoint `NAME.safetensors` (e.g. `.history.yaml`)."""
    p = Path(out)
    return p.with_name(p.name.removesuffix(".safetensors") + suffix)


def history_path_for(out: str | Path) -> Path:
    return beside(out, ".history.yaml")


def history_png_path_for(out: str | Path) -> Path:
    return beside(out, ".history.png")


@dataclass
class History:
    """A read history file: the run's label (file name without `.history.yaml`) and records."""

    path: Path
    label: str
    checkpoint: str | None
    records: list[dict[str, float]]


def write_history(path: str | Path, checkpoint: str | Path, records: list[dict[str, Any]]) -> Path:
    """Write the history of the finished run whose checkpoint is `checkpoint` (atomically)."""
    import yaml

    ckpt = Path(checkpoint)
    doc = {"schema": SCHEMA, "checkpoint": str(ckpt), "sha256": sha256_file(ckpt), "history": records}
    return atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))


def label_of(path: str | Path) -> str:
    name = Path(path).name
    for suffix in (".history.yaml", ".metrics.jsonl", ".yaml", ".jsonl"):
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def read_history(path: str | Path) -> History:
    """Read and check a history file; every failure is one ResultsError line naming the path."""
    doc = read_yaml_document(path, what="training history", schema=SCHEMA, make_hint=MAKE_HINT)
    records = doc.get("history")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ResultsError(f"training history {str(path)!r} has no list of epoch records under 'history'; {MAKE_HINT}")
    return History(
        path=Path(path),
        label=label_of(path),
        checkpoint=doc.get("checkpoint"),
        records=[check_record(r, path) for r in records],
    )


def check_record(record: dict[str, Any], path: str | Path) -> dict[str, float]:
    """One epoch record as {name: float}; `epoch` must be a positive integer."""
    epoch = record.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise ResultsError(f"{str(path)!r}: an epoch record has no positive integer 'epoch' ({record!r}); {MAKE_HINT}")
    out: dict[str, float] = {}
    for key, value in record.items():
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # only numbers are metrics; anything else is not drawn
        out[str(key)] = value if key == "epoch" else float(value)
    return out


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
