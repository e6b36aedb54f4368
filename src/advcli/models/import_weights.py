"""`advcli import`: bring an outside PyTorch state dict into advcli's checkpoint format.

Only `torch.load(weights_only=True)` is used: tensors, dicts, lists and numbers load, arbitrary
pickled objects (whole modules, optimizers with custom classes) are refused, so importing a
file never runs code from it. The common wrappers are unwrapped (`{"state_dict": ...}`,
`{"model": ...}`, `{"model_state_dict": ...}`, `{"net": ...}`) and DataParallel's `module.`
prefixes stripped. Keys and shapes are checked against `build_model(arch).net`; a mismatch is
one error listing what is missing, unexpected and mis-shaped.

The outside model's own input normalisation (`mean`/`std`) becomes advcli's Normalize layer;
the default (none) is the identity, as for AutoAttack's and RobustBench's examples, whose
models take raw [0, 1] pixels. The checkpoint records the source file's sha256.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advcli.errors import CheckpointError, UsageError
from advcli.io import sha256_file
from advcli.models import Classifier, build_model, resolve_arch
from advcli.models.checkpoint import model_metadata, save_checkpoint

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
# BatchNorm's step counter is absent from checkpoints saved before PyTorch 0.4.1 and never
# affects inference; a missing one keeps the fresh model's value.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)


@dataclass
class ImportResult:
    model: Classifier
    meta: dict[str, Any]
    source_sha256: str
    num_classes: int
    stripped_prefix: str | None
    wrapper_key: str | None


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str | None, str | None]:
    """Load with weights_only=True and unwrap; returns (state dict, wrapper key, prefix)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weights file {str(p)!r} does not exist; check the path")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, OSError, ValueError
        # torch words a refused object "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL
        # x.y whose module x is blocked", depending on the object.
        found = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", str(exc), re.IGNORECASE)
        if found:
            raise CheckpointError(
                f"{str(p)!r} holds a pickled {found.group(1)} object, which advcli refuses to "
                "unpickle (it loads with torch.load(weights_only=True) only); re-save the "
                "weights with torch.save(model.state_dict(), path)"
            ) from exc
        raise CheckpointError(
            f"{str(p)!r} is not a readable PyTorch weights file ({_first_line(exc, 'WeightsUnpickler error')}); "
            "it may be truncated or of another format"
        ) from exc
    wrapper = None
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj, wrapper = obj[key], key
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{str(p)!r} does not hold a state dict (got {type(obj).__name__}); expected a "
            "mapping of parameter names to tensors, possibly under one of "
            f"{', '.join(_WRAPPER_KEYS)}"
        )
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{str(p)!r} holds a mapping without any tensors; nothing to import")
    state, prefix = _strip_prefix(state)
    return state, wrapper, prefix


def _first_line(exc: BaseException, marker: str | None = None) -> str:
    """The informative line of a long torch error (the one after `marker` if present)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if marker:
        for i, ln in enumerate(lines):
            if marker in ln:
                rest = ln.split(marker, 1)[1].strip(" :")
                return rest or (lines[i + 1] if i + 1 < len(lines) else ln)
    return lines[0] if lines else exc.__class__.__name__


def _strip_prefix(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str | None]:
    # DataParallel/DistributedDataParallel save every key under `module.`.
    prefix = "module."
    if all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}, prefix
    return state, None


def _final_linear_key(net: nn.Module) -> str | None:
    name = None
    for module_name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            name = module_name
    return None if name is None else f"{name}.weight"


def infer_num_classes(arch: str, state: Mapping[str, torch.Tensor]) -> int | None:
    """The class count from the final linear layer's weight as the architecture names it;
    None when the weights have no such key (the key check then reports the mismatch)."""
    with torch.device("meta"):  # names only: skip allocating and initialising the weights
        key = _final_linear_key(build_model(arch, 10).net)
    if key is None or key not in state or state[key].dim() != 2:
        return None
    return int(state[key].shape[0])


def check_state(arch: str, net: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Raise one CheckpointError listing missing, unexpected and mis-shaped keys."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for what, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            more = f", … ({len(items) - 6} more)" if len(items) > 6 else ""
            shown = ", ".join(items[:6]) + more
            parts.append(f"{len(items)} {what}: {shown}")
    raise CheckpointError(
        f"the weights do not match arch {arch!r} ({'; '.join(parts)}); check --arch "
        "(and --num-classes) or that the file is the model's own state dict"
    )


def _triple(values: Sequence[float] | None, default: float, name: str) -> list[float]:
    if values is None:
        return [default] * 3
    vals = [float(v) for v in values]
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise UsageError(f"--{name} takes 1 or 3 numbers (per RGB channel), got {len(vals)}")
    if name == "std" and any(v <= 0 for v in vals):
        raise UsageError(f"--std values must be > 0, got {vals}")
    return vals


def import_weights(
    source: str | Path,
    *,
    arch: str,
    dataset: str,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    label: str | None = None,
    threat_model: dict[str, Any] | None = None,
    input_shape: Sequence[int] = (3, 32, 32),
    config: dict[str, Any] | None = None,
) -> ImportResult:
    """Build an advcli Classifier from outside weights; nothing is written here."""
    arch = resolve_arch(arch)
    m, s = _triple(mean, 0.0, "mean"), _triple(std, 1.0, "std")
    state, wrapper, prefix = read_state_dict(source)
    classes = int(num_classes) if num_classes is not None else (
        infer_num_classes(arch, state) or 10
    )
    if classes < 2:
        raise UsageError(f"--num-classes must be >= 2, got {classes}")
    model = build_model(arch, classes, m, s)
    check_state(arch, model.net, state)
    model.net.load_state_dict(state, strict=False)
    model.eval()
    digest = sha256_file(source)
    meta = model_metadata(
        arch=arch,
        num_classes=classes,
        dataset=dataset,
        mean=m,
        std=s,
        input_shape=list(input_shape),
        label=label,
        threat_model=threat_model,
        config=config,
        source={"path": str(source), "sha256": digest, "wrapper_key": wrapper,
                "stripped_prefix": prefix, "loader": "torch.load(weights_only=True)"},
        source_sha256=digest,
    )
    if threat_model is None:
        # Stored explicitly: an imported model is "clean" unless told otherwise, and eval
        # reads a null threat model as "no default eps".
        meta["threat_model"] = None
    return ImportResult(model=model, meta=meta, source_sha256=digest, num_classes=classes,
                        stripped_prefix=prefix, wrapper_key=wrapper)


def save_import(path: str | Path, result: ImportResult) -> Path:
    return save_checkpoint(path, result.model, result.meta)
