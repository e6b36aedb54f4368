"""`LazyImages`: a streamed split that stands in for a uint8 [N,3,R,R] tensor.

Nothing is decoded until indexed: `x[i]`, `x[a:b]`, `x[LongTensor]`, `x[list]` decode those
images (in a thread pool) with the evaluation transform (`transforms.eval_view`) and return a
uint8 CPU tensor; `x.take(index)` is a view of some of the images, decoding nothing (hold-out
sets, `--n-train`). Training decodes through `stream_loader` instead (workers, train transform).

Bad files: `DataError` naming the file; with `skip_bad`, `decodable(index)` finds them up front
(an evaluation drops them) and training drops them from their batch; either way their names are
recorded in `bad`, a dict shared by a split and its views (`ImageData.bad_count`).

Why threads, not a DataLoader, for indexing: torchvision's decoders and resize kernels release
the GIL, and a pool needs no worker start-up per call (measured on 2 cores: see the commit).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from advcli.data.sources import Source
from advcli.data.transforms import eval_view
from advcli.errors import DataError

DEFAULT_IMAGE_SIZE = 224


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class LazyImages:
    """Images of a `Source` (by source index), decoded to image_size x image_size on access."""

    dtype = torch.uint8
    device = torch.device("cpu")
    ndim = 4

    def __init__(self, source: Source, index: torch.Tensor | None = None, image_size: int = DEFAULT_IMAGE_SIZE,
                 *, skip_bad: bool = False, bad: dict[str, str] | None = None) -> None:
        self.source = source
        self.index = torch.arange(len(source)) if index is None else torch.as_tensor(index, dtype=torch.int64)
        self.image_size = int(image_size)
        self.skip_bad = skip_bad
        self.bad: dict[str, str] = {} if bad is None else bad

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), 3, self.image_size, self.image_size))

    def size(self, dim: int | None = None) -> torch.Size | int:
        return self.shape if dim is None else self.shape[dim]

    def __repr__(self) -> str:
        return f"LazyImages({len(self)} images of {type(self.source).__name__}, {self.image_size} px)"

    def positions(self, key: object) -> torch.Tensor:
        """The positions (0..len-1) that a tensor-style index selects."""
        if isinstance(key, slice):
            return torch.arange(len(self))[key]
        if _is_scalar(key):
            return torch.arange(len(self))[int(key)].view(1)  # type: ignore[call-overload]
        t = torch.as_tensor(key)
        if t.dtype == torch.bool:
            return torch.nonzero(t).flatten()
        if t.is_floating_point():
            raise IndexError("LazyImages takes integer, slice, list or tensor indices")
        t = t.to(torch.int64).flatten().cpu()
        return torch.where(t < 0, t + len(self), t)

    def name(self, position: int) -> str:
        return self.source.name(int(self.index[position]))

    def key(self, position: int) -> str | None:
        """The image's name within its split (`<class>/<file>`; shards: the sample key)."""
        return self.source.key(int(self.index[position]))

    def load(self, position: int) -> torch.Tensor:
        """One image as decoded (full size, uint8 [3,H,W])."""
        return self.source.load(int(self.index[position]))

    def __getitem__(self, key: object) -> torch.Tensor:
        pos = self.positions(key)
        r = self.image_size
        out = torch.empty((len(pos), 3, r, r), dtype=torch.uint8)

        def put(j: int) -> None:
            out[j] = eval_view(self.load(int(pos[j])), r)

        parallel_map(put, range(len(pos)))
        return out[0] if _is_scalar(key) else out

    def take(self, index: object) -> LazyImages:
        """A view of some images (nothing decoded); shares this split's record of bad files."""
        return LazyImages(self.source, self.index[self.positions(index)], self.image_size,
                          skip_bad=self.skip_bad, bad=self.bad)

    def decodable(self, index: object = None) -> tuple[torch.Tensor, list[str]]:
        """(the positions of `index` whose images decode, the names of those that do not).

        Decodes each image once; an evaluation calls it before its batches when skip_bad is set."""
        pos = torch.arange(len(self)) if index is None else self.positions(index)
        ok = torch.ones(len(pos), dtype=torch.bool)
        names: list[str | None] = [None] * len(pos)

        def check(j: int) -> None:
            try:
                self.load(int(pos[j]))
            except DataError as exc:
                ok[j] = False
                names[j] = self.name(int(pos[j]))
                self.bad[names[j]] = str(exc)

        parallel_map(check, range(len(pos)))
        return pos[ok], [n for n in names if n is not None]


def _is_scalar(key: object) -> bool:
    # x[3], x[np.int64(3)] and x[torch.tensor(3)] give one image [3,R,R], as a tensor does.
    if isinstance(key, bool):
        return False
    if isinstance(key, torch.Tensor):
        return key.ndim == 0 and not key.is_floating_point() and key.dtype != torch.bool
    return isinstance(key, int) or type(key).__name__.startswith(("int", "uint"))


def parallel_map(fn: Callable[[int], None], items: Sequence[int], threads: int | None = None) -> None:
    """fn over items in a thread pool (in order when there is one CPU); the first error is raised."""
    threads = min(threads or cpu_count(), len(items))
    if threads <= 1:
        for i in items:
            fn(i)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for f in [pool.submit(fn, i) for i in items]:
            f.result()

