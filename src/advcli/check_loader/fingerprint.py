"""Fingerprints: a short hash of one loaded sample's bytes, computed inside the DataLoader workers
(the `Fingerprinter` stands in for the collate function), so only hashes cross process borders
and two loads compare equal exactly when their outputs are byte-identical."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from advcli.check_loader import rng_use
from advcli.check_loader.report import MAIN


def fingerprint(obj: Any) -> str:
    """A hash of an output's bytes (tensors, arrays, PIL images, nested tuples/lists/dicts)."""
    h = hashlib.blake2b(digest_size=12)
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        h.update(f"A{obj.dtype}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, (bytes, bytearray)):
        h.update(b"B" + bytes(obj))
    elif isinstance(obj, dict):
        h.update(b"{")
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"(")
        for v in obj:
            _feed(h, v)
        h.update(b")")
    elif callable(getattr(obj, "tobytes", None)):  # PIL images and the like
        size, mode = getattr(obj, "size", ""), getattr(obj, "mode", "")
        h.update(f"O{type(obj).__name__}{size}{mode}".encode())
        h.update(obj.tobytes())
    else:
        h.update(f"R{obj!r}".encode())


class Fingerprinter:
    """Stands in for the collate function and runs inside each worker: the pipeline's own collate
    on each sample, then a fingerprint per sample, tagged with the worker id and the
    random-number calls seen while the batch was loaded (`rng_use`)."""

    def __init__(self, collate_fn: Callable[[Any], Any] | None, batched: bool) -> None:
        self.collate_fn = collate_fn
        self.batched = batched

    def __call__(self, samples: list[Any]) -> tuple[int, list[str], list[str]]:
        info = get_worker_info()
        worker = info.id if info is not None else MAIN
        if self.collate_fn is None:
            fps = [fingerprint(s) for s in samples]
        else:
            wrap = (lambda s: [s]) if self.batched else (lambda s: s)
            fps = [fingerprint(self.collate_fn(wrap(s))) for s in samples]
        return worker, fps, rng_use.take()
