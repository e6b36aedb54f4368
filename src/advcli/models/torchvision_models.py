"""ImageNet architectures taken from torchvision.models by name: `--arch torchvision:NAME`.

They are not re-implemented: `torchvision.models.get_model(NAME, weights=None, num_classes=K)`
builds the net, randomly initialised, and advcli wraps it in its own Classifier (the Normalize
front layer) and trains it like any of its architectures (channels_last and the rest). The name
after the prefix is torchvision's own spelling (`wide_resnet50_2`, not `wide-resnet50-2`), so
a checkpoint's arch string is the exact call that rebuilds it. torchvision is imported only when
such an arch is used: it costs about a second.
"""

from __future__ import annotations

import difflib

from torch import nn

from advcli.errors import UsageError

PREFIX = "torchvision:"
LIST_HINT = ('python -c "import torchvision.models as m; '
             'print(*m.list_models(module=m), sep=chr(10))"')

# GoogLeNet and Inception-v3 default to auxiliary heads, whose training-mode forward returns a
# tuple; advcli's loop trains on one logits tensor, so the heads are left out.
_AUX_HEADS = frozenset({"googlenet", "inception_v3"})


def is_torchvision_arch(arch: object) -> bool:
    return str(arch or "").strip().lower().startswith(PREFIX)


def classification_names() -> list[str]:
    """torchvision's classification models (not its detection, segmentation or video ones)."""
    import torchvision.models as tvm

    return list(tvm.list_models(module=tvm))


def resolve(arch: str) -> str:
    """`torchvision:NAME` with the prefix lower-cased and NAME exactly as torchvision lists it."""
    name = str(arch).strip()[len(PREFIX):].strip()
    names = classification_names()
    if name not in names:
        close = difflib.get_close_matches(name.lower(), names, n=3)
        hint = f"did you mean {', '.join(PREFIX + c for c in close)}? " if close else ""
        raise UsageError(f"unknown torchvision model {name!r} in --arch {arch!r}; {hint}"
                         f"torchvision's classification models are listed by: {LIST_HINT}")
    return PREFIX + name


def build(arch: str, num_classes: int) -> nn.Module:
    """The randomly initialised net (seed torch first for a deterministic one)."""
    import torchvision.models as tvm

    name = resolve(arch)[len(PREFIX):]
    kwargs: dict[str, object] = {"weights": None, "num_classes": int(num_classes)}
    if name in _AUX_HEADS:
        kwargs["aux_logits"] = False
    return tvm.get_model(name, **kwargs)
