"""User pipelines: import the callable named by `--pipeline module:callable` or
`path/to/file.py:callable`, call it as a rank would, and keep the parts of what it returned that
check-loader uses (`LoaderParts`); spot RNG objects the dataset holds, to word the fix."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from advcli.errors import UsageError


@dataclass
class LoaderParts:
    """What check-loader keeps from a pipeline; the sampler and batch size are its own."""

    dataset: Any
    collate_fn: Callable[[Any], Any] | None = None
    batched: bool = True  # the collate expects a list of samples (DataLoader auto-collation)
    worker_init_fn: Callable[[int], None] | None = None
    generator: torch.Generator | None = None
    context: Any = None  # multiprocessing context
    persistent: bool | None = None  # as given by a DataLoader; None for a bare Dataset


def resolve_pipeline(spec: str) -> Callable[..., Any]:
    """Import the callable named by `module:callable` or `path/to/file.py:callable`."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise UsageError(
            f"--pipeline {spec!r} must be module:callable or path/to/file.py:callable"
        )
    if target.endswith(".py") or "/" in target or os.sep in target:
        module = _import_file(Path(target))
    else:
        module = _import_module(target)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"pipeline {target!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(
            f"pipeline {spec!r} is a {type(obj).__name__}, not a callable returning a "
            "Dataset or DataLoader"
        )
    return obj  # type: ignore[no-any-return]


def _import_module(name: str) -> Any:
    # Like `python -m`: modules in the current folder are importable.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise UsageError(
                f"no module named {name!r}: run from the folder that holds it, or pass "
                "path/to/file.py:callable"
            ) from exc
        raise UsageError(f"importing pipeline module {name!r} failed: {exc}") from exc
    except Exception as exc:
        raise UsageError(
            f"importing pipeline module {name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise UsageError(f"pipeline file {str(path)!r} does not exist")
    path = path.resolve()
    # The file's folder goes on sys.path (kept, since spawned workers import by name from it), so
    # the file can import its siblings and its classes pickle by reference.
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = path.stem
    loaded = sys.modules.get(name)
    if not name.isidentifier() or (
        loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() != path
    ):
        name = "advcli_pipeline_" + hashlib.sha1(str(path).encode()).hexdigest()[:10]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"pipeline file {str(path)!r} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise UsageError(
            f"importing pipeline file {str(path)!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def call_pipeline(fn: Callable[..., Any], spec: str, rank: int, ranks: int) -> Any:
    """Call the user's callable as rank `rank` would (env already set): `rank=`/`world_size=`
    are passed when its signature names them."""
    kwargs: dict[str, Any] = {}
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    if "rank" in params:
        kwargs["rank"] = rank
    if "world_size" in params:
        kwargs["world_size"] = ranks
    try:
        return fn(**kwargs)
    except Exception as exc:
        raise UsageError(
            f"calling pipeline {spec!r} failed: {type(exc).__name__}: {exc}"
        ) from exc


def loader_parts(obj: Any, spec: str) -> LoaderParts:
    """Split what a pipeline returned into the parts check-loader uses."""
    if isinstance(obj, DataLoader):
        dataset = obj.dataset
        parts = LoaderParts(
            dataset=dataset,
            collate_fn=obj.collate_fn,
            batched=obj.batch_size is not None or obj.batch_sampler is not None,
            worker_init_fn=obj.worker_init_fn,
            generator=obj.generator,
            context=obj.multiprocessing_context,
            persistent=bool(obj.persistent_workers),
        )
    elif hasattr(obj, "__getitem__") and not isinstance(obj, (str, bytes, dict)):
        dataset = obj
        parts = LoaderParts(dataset=obj, collate_fn=None)
    else:
        raise UsageError(
            f"pipeline {spec!r} returned a {type(obj).__name__}; it must return a torch "
            "Dataset or DataLoader"
        )
    if isinstance(dataset, IterableDataset):
        raise UsageError(
            f"pipeline {spec!r} gives an IterableDataset; check-loader loads one item many "
            "times, so it needs a map-style Dataset (with __getitem__)"
        )
    return parts


_RNG_TYPES: tuple[tuple[type, str, str], ...] = (
    (np.random.Generator, "numpy Generator", "np.random.default_rng(info.seed)"),
    (np.random.RandomState, "numpy RandomState", "np.random.RandomState(info.seed % 2**32)"),
    (random.Random, "random.Random", "random.Random(info.seed)"),
    (torch.Generator, "torch.Generator", "torch.Generator().manual_seed(info.seed)"),
)


def rng_attributes(dataset: Any, depth: int = 3) -> list[tuple[str, str, str]]:
    """RNG objects held by the dataset (or its transforms): (path, type name, re-seed example).

    Used only to word the fix; the verdict is empirical."""
    found: list[tuple[str, str, str]] = []
    seen: set[int] = set()

    def visit(obj: Any, path: str, d: int) -> None:
        if id(obj) in seen or d < 0:
            return
        seen.add(id(obj))
        for cls, name, example in _RNG_TYPES:
            if isinstance(obj, cls):
                found.append((path, name, example))
                return
        # Bounded look: datasets may hold long lists of file names.
        if isinstance(obj, (list, tuple)):
            for i, v in enumerate(islice(obj, 32)):
                visit(v, f"{path}[{i}]", d - 1)
        elif isinstance(obj, dict):
            for k, v in islice(obj.items(), 32):
                visit(v, f"{path}[{k!r}]", d - 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.Tensor, np.ndarray)):
            if inspect.ismodule(obj) or inspect.isroutine(obj):
                return
            for k, v in islice(vars(obj).items(), 64):
                visit(v, f"{path}.{k}", d - 1)

    visit(dataset, "dataset", depth)
    return found


