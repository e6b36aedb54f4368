"""Model registry: architecture name -> constructor. Every model takes images in [0, 1].

`build_model` wraps the network in `Classifier`, whose first layer is `Normalize(mean, std)`, so
attacks work in pixel space and eps means what papers mean. `user` loads outside code as a
model (`--model`, `--wrap`); `checkpoint` is the self-describing checkpoint file
(`save_checkpoint`, `load_checkpoint`); `import_weights` is the `advcli import` stage.
"""

from advcli.models.registry import ARCHS, Classifier, Normalize, build_model, resolve_arch

__all__ = ["ARCHS", "Classifier", "Normalize", "build_model", "resolve_arch"]
