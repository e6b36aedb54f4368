"""`advcli import robustbench:NAME`: a zoo model as a self-describing advcli checkpoint.

The checkpoint holds robustbench's module inside advcli's Classifier with an identity
normalisation (the zoo's models take [0, 1] pixels and normalise inside themselves, and
`(x - 0) / 1` is `x` exactly, so the logits equal robustbench's bit for bit). Its arch,
`robustbench:DATASET/THREAT/NAME`, lets `load_checkpoint` rebuild the architecture from
robustbench's model_zoo without the download code; the metadata records the robustbench
version, the weights file's sha256 and the leaderboard's threat model. That arch also keeps the
imported model outside code (`Target.outside`), as the model by name is: its inputs stay NCHW
and its layout is left alone unless `--channels-last` asks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from advcli.config import parse_eps
from advcli.models import Classifier
from advcli.models.checkpoint import LoadedCheckpoint, model_metadata
from advcli.models.import_weights import ImportResult
from advcli.models.robustbench.zoo import input_shape, load_zoo_model, resolve

IDENTITY = ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])


def import_zoo(spec: str, *, dataset: str | None = None, norm: object = None,
               model_dir: str | Path | None = None, label: str | None = None,
               config: dict[str, Any] | None = None) -> ImportResult:
    """The zoo model `spec` names, loaded by robustbench (downloading only a missing file), as
    an ImportResult for `save_import`; nothing is written here."""
    entry = resolve(spec, dataset=dataset, norm=norm)
    net, code = load_zoo_model(entry, model_dir)
    mean, std = IDENTITY
    model = Classifier(net, mean, std).eval()
    eps = parse_eps(entry.eps_text())
    meta = model_metadata(
        arch=entry.arch,
        num_classes=entry.num_classes,
        dataset=entry.dataset,
        mean=mean,
        std=std,
        input_shape=input_shape(entry),
        label=label or entry.spec,
        threat_model={"norm": entry.norm, "eps": eps.value, "eps_text": eps.text, "attack": "unknown"},
        config=config,
        robustbench={**entry.to_dict(), "version": code.version, "weights_file": code.weights_file,
                     "weights_sha256": code.sha256},
        source={"path": code.weights_file, "sha256": code.sha256,
                "loader": f"robustbench.utils.load_model (robustbench {code.version})"},
        source_sha256=code.sha256,
    )
    return ImportResult(model=model, meta=meta, source_sha256=code.sha256,
                        num_classes=entry.num_classes, stripped_prefix=None, wrapper_key=None)


def load_zoo_checkpoint(spec: str | Path, *, dataset: str | None = None, norm: object = None,
                        model_dir: str | Path | None = None, device: Any = "cpu") -> LoadedCheckpoint:
    """The zoo model as a loaded checkpoint (for stages that take checkpoints only, e.g.
    landscape), as `advcli import` would write it; nothing is written."""
    result = import_zoo(str(spec), dataset=dataset, norm=norm, model_dir=model_dir)
    result.model.to(device).eval()
    return LoadedCheckpoint(model=result.model, meta=result.meta, path=Path(str(spec)),
                            sha256=result.source_sha256)
