"""The memory layout attacks run the measured model in.

NHWC (channels_last) makes CPU convolutions 1.3-1.7x faster (benchmarks/run.py, eval-pgd), so
advcli's own architectures run in it by default. Outside code (`--model`, `--wrap`, RobustBench
zoo models by name or imported) is a guest: it gets contiguous NCHW float32 inputs and keeps its
own layout unless the user opts in with `--channels-last`, because research code commonly
flattens with `.view(n, -1)`, which fails on an NHWC tensor. `model_layout` restores every
tensor it converted to the very storage it had.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain

import torch
from torch import nn

from advcli.errors import AdvcliError

CHANNELS_LAST_HELP = (
    "Run the model and its inputs in NHWC (channels_last), faster convolutions on many CPUs. "
    "Changes the memory format of the model and inputs; research code that flattens with .view "
    "may fail. Default: {default}. Recorded in the result as `channels_last`."
)
AUTO_DEFAULT = "on for advcli architectures, off for outside code (--model, --wrap, robustbench models)"


def use_channels_last(option: bool | None, *, outside: bool) -> bool:
    """The layout that runs: the user's choice, else on for advcli's architectures only."""
    return (not outside) if option is None else bool(option)


@contextmanager
def model_layout(model: nn.Module, channels_last: bool) -> Iterator[nn.Module]:
    """`model` with its 4-D parameters and buffers in channels_last for the duration (when
    asked); afterwards each holds its original storage again, with any values written meanwhile
    copied back into it. `.view` failing on an NHWC tensor becomes a one-line error naming
    the option."""
    converted: list[tuple[torch.Tensor, torch.Tensor]] = []
    if channels_last:
        for t in chain(model.parameters(), model.buffers()):
            if t.dim() == 4 and not t.is_contiguous(memory_format=torch.channels_last):
                converted.append((t, t.data))
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    try:
        yield model
    except RuntimeError as exc:
        if not channels_last or "view size is not compatible" not in str(exc):
            raise
        # `.view` on an NHWC tensor in the model's own code: say which option did it.
        raise AdvcliError(f"the model's forward failed in channels_last memory format: {exc} "
                          "(--channels-last changes the memory format of the model and its "
                          "inputs; run with --no-channels-last)") from exc
    finally:
        for t, original in reversed(converted):
            original.copy_(t.data)
            t.data = original


def input_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """`x` contiguous in the layout the model runs in (NCHW unless `channels_last`)."""
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


@contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients for the duration; both restored per module/param.

    Restoring each module's own flag (not just `model.train(old)`) keeps mixed states intact,
    e.g. a fine-tuning setup that freezes BatchNorm statistics.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)
