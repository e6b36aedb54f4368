"""RobustBench models by name: `robustbench:NAME` wherever a checkpoint or `--model` goes.

The RobustBench model zoo (F. Croce, M. Andriushchenko, V. Sehwag et al., "RobustBench: a
standardized adversarial robustness benchmark", NeurIPS 2021 Datasets and Benchmarks) names
each published model and knows its architecture and where its weights live. A name is
resolved against the zoo of one dataset and threat model: `robustbench:NAME` takes them from
`--dataset` (cifar10, cifar100 or imagenet; any other dataset, e.g. `synthetic`, is only the
data to evaluate on, and the zoo's is cifar10, robustbench's default) and `--norm` (linf ->
Linf, l2 -> L2; default Linf), and `robustbench:DATASET/THREAT/NAME` says them itself (the
form imported checkpoints record as their arch).

The model is built by `robustbench.utils.load_model` itself, from the weights under
`model_dir/DATASET/THREAT/NAME.pt` (robustbench's layout and default `./models`); robustbench
downloads them only when that file is missing. It is outside code, handled as `--model`'s
module is: nothing here changes its memory format, dtype or mode beyond `eval()`.

robustbench's download saves whatever the server answers, so a quota or sign-in page ends up
cached as `NAME.pt` and every later run fails deep in unpickling. Weights files are therefore
checked to be a PyTorch file (a zip archive or a legacy pickle) before robustbench reads them,
and an HTML page is named as such, with the file to delete.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from advcli.errors import AdvcliError, CheckpointError, UsageError
from advcli.io import sha256_file
from advcli.models.robustbench._package import import_robustbench, robustbench_version
from advcli.models.user_code import UserCode, seeded_build, state_dict_sha256

PREFIX = "robustbench:"
DEFAULT_MODEL_DIR = "./models"  # robustbench.utils.load_model's default
DATASETS = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
THREATS = {"linf": "Linf", "l2": "L2"}
MODEL_DIR_HELP = ("Folder of RobustBench weights for robustbench:NAME (robustbench's layout "
                  "DIR/DATASET/THREAT/NAME.pt); a missing file is downloaded by robustbench.")
# The threat model's size where the leaderboard entry is not shipped (the leaderboard's own eps).
_DEFAULT_EPS = {("imagenet", "Linf"): "4/255", ("cifar10", "L2"): "0.5", ("cifar100", "L2"): "0.5"}
_PYTORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive; the legacy pickle format


def is_zoo_spec(value: object) -> bool:
    """Whether a checkpoint argument or `--model` value names a RobustBench model (an existing
    file of that name stays a file)."""
    if value is None or not isinstance(value, (str, Path)):
        return False
    text = str(value)
    return text.startswith(PREFIX) and not Path(text).is_file()


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo: its name and robustbench's spellings of dataset and threat model."""

    name: str
    dataset: str  # cifar10, cifar100, imagenet
    threat_model: str  # Linf, L2

    @property
    def spec(self) -> str:
        return f"{PREFIX}{self.name}"

    @property
    def arch(self) -> str:
        """What checkpoints and results record: enough to rebuild the architecture."""
        return f"{PREFIX}{self.dataset}/{self.threat_model}/{self.name}"

    @property
    def num_classes(self) -> int:
        return DATASETS[self.dataset]

    @property
    def norm(self) -> str:
        return self.threat_model.lower()

    def eps_text(self) -> str:
        from advcli.models.robustbench.leaderboard import find_entry

        row = find_entry(self.name, self.dataset, self.threat_model)
        return row.eps_text if row is not None and row.eps_text else _DEFAULT_EPS.get(
            (self.dataset, self.threat_model), "8/255")

    def weights_path(self, model_dir: str | Path | None) -> Path:
        return Path(model_dir or DEFAULT_MODEL_DIR) / self.dataset / self.threat_model / f"{self.name}.pt"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "dataset": self.dataset, "threat_model": self.threat_model}


def _zoo(dataset: str, threat_model: str) -> dict[str, Any]:
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)]


def _threat(norm: object) -> str:
    key = str(getattr(norm, "value", norm)).strip().lower()
    if key not in THREATS:
        raise UsageError(f"robustbench models have threat model linf or l2, got --norm {norm!r}")
    return THREATS[key]


def resolve(spec: str | Path, *, dataset: str | None = None, norm: object = None) -> ZooEntry:
    """The zoo entry `spec` names (see the module docstring for where dataset and threat model
    come from); a UsageError listing the closest names for a name the zoo does not hold."""
    text = str(spec).removeprefix(PREFIX).strip()
    parts = text.split("/")
    if len(parts) == 3:
        ds, tm, name = parts[0].lower(), _threat(parts[1]), parts[2]
    elif len(parts) == 1:
        ds = str(dataset).lower() if dataset and str(dataset).lower() in DATASETS else "cifar10"
        tm, name = (_threat(norm) if norm else "Linf"), parts[0]
    else:
        raise UsageError(f"{str(spec)!r}: write robustbench:NAME or robustbench:DATASET/THREAT/NAME")
    if ds not in DATASETS or not name:
        raise UsageError(f"{str(spec)!r}: robustbench datasets are {', '.join(DATASETS)}; write "
                         "robustbench:NAME, e.g. robustbench:Wong2020Fast")
    models = _zoo(ds, tm)
    if name not in models:
        raise UsageError(_unknown(name, ds, tm, models))
    return ZooEntry(name=name, dataset=ds, threat_model=tm)


def _unknown(name: str, dataset: str, threat_model: str, models: dict[str, Any]) -> str:
    text = f"robustbench has no {dataset} {threat_model} model {name!r}"
    others = [t for t in THREATS.values() if t != threat_model and name in _zoo_or_empty(dataset, t)]
    if others:
        return f"{text}; it is a {others[0]} model: pass --norm {others[0].lower()}"
    close = difflib.get_close_matches(name, list(models), n=5, cutoff=0.6)
    if not close:  # a prefix ("Wong2020") is closer to its entries than difflib's ratio says
        close = [m for m in models if m.lower().startswith(name.lower()[:6])][:5]
    hint = f"; closest: {', '.join(close)}" if close else ""
    return f"{text}{hint} (check --dataset and --norm)"


def _zoo_or_empty(dataset: str, threat_model: str) -> dict[str, Any]:
    try:
        return _zoo(dataset, threat_model)
    except KeyError:
        return {}


def _timm_name(entry: ZooEntry) -> str | None:
    """robustbench serves some entries from timm's hub instead of its own files."""
    import timm

    name = f"{entry.name.lower().replace('-', '_')}_{entry.dataset}_{entry.threat_model.lower()}"
    return name if timm.is_model(name) else None


def weights_files(entry: ZooEntry, model_dir: str | Path | None) -> list[Path]:
    """The files robustbench reads the weights from (an ensemble has one per member)."""
    path = entry.weights_path(model_dir)
    ids = _zoo(entry.dataset, entry.threat_model)[entry.name]["gdrive_id"]
    if isinstance(ids, list):
        return [Path(f"{path}_m{i}.pt") for i in range(len(ids))]
    return [path]


def check_weights_file(path: Path) -> None:
    """A CheckpointError unless `path` starts like a file torch.save writes."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(_PYTORCH_MAGIC):
        return
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<head", b"<")):
        raise CheckpointError(
            f"{str(path)!r} is an HTML page, not weights: robustbench saved a failed download "
            "as the model's file; delete it and run again to download the weights anew")
    raise CheckpointError(f"{str(path)!r} is not a PyTorch weights file (it starts with {head[:8]!r}); "
                          "delete it and run again to download the weights anew")


@dataclass(frozen=True)
class ZooCode(UserCode):
    """A zoo model as the user code results record: `path` is "robustbench" (so labels read
    `robustbench:NAME`), `sha256` that of the weights file (of the files, in order, for an
    ensemble; of the built module where timm's hub serves it), the entry
    (`robustbench_entry`: DATASET/THREAT/NAME), the package version and the weights file."""

    entry: ZooEntry = field(default_factory=lambda: ZooEntry("", "", ""))
    version: str = "unknown"
    weights_file: str | None = None

    @property
    def arch(self) -> str:
        return self.entry.arch

    def to_dict(self) -> dict[str, str]:
        # Flat strings: result files read user_code records as string -> string.
        d = super().to_dict()
        d.update(robustbench_entry=self.arch.removeprefix(PREFIX), robustbench_version=self.version)
        if self.weights_file is not None:
            d["weights_file"] = self.weights_file
        return d


def load_zoo_model(entry: ZooEntry, model_dir: str | Path | None = None) -> tuple[nn.Module, ZooCode]:
    """`robustbench.utils.load_model`'s model for `entry` (in eval mode, on the CPU) and its
    record; it downloads only files that are missing, and refuses cached files that are not
    weights."""
    rb = import_robustbench()
    timm_name = _timm_name(entry)
    files = [] if timm_name else weights_files(entry, model_dir)
    for path in files:
        if path.is_file():
            check_weights_file(path)
    try:
        with seeded_build("cpu"):
            model = rb.utils.load_model(entry.name, model_dir=str(model_dir or DEFAULT_MODEL_DIR),
                                        dataset=entry.dataset, threat_model=entry.threat_model)
    except Exception as exc:  # network, unpickling, robustbench's own ValueErrors
        for path in files:
            if path.is_file():
                check_weights_file(path)  # a download just saved an error page
        where = f" (weights file {str(files[0])!r})" if files else ""
        raise AdvcliError(f"robustbench could not load {entry.spec}{where}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}; without network access, "
                          "put the weights file there yourself") from exc
    weights = state_dict_sha256(model)
    digest = _files_sha256(files) if files else weights
    code = ZooCode(path="robustbench", callable=entry.name, sha256=digest, role="model",
                   weights_sha256=weights, entry=entry, version=robustbench_version(),
                   weights_file=str(files[0]) if len(files) == 1 else None)
    return model.eval(), code


def _files_sha256(files: list[Path]) -> str:
    if len(files) == 1:
        return sha256_file(files[0])
    import hashlib

    return hashlib.sha256("".join(sha256_file(p) for p in files).encode()).hexdigest()


def zoo_meta(entry: ZooEntry) -> dict[str, Any]:
    """What stages read of a checkpoint's metadata, for a zoo model: its dataset, class count
    and threat model (so `eval` defaults to the leaderboard's eps)."""
    from advcli.config import parse_eps

    eps = parse_eps(entry.eps_text())
    return {"dataset": entry.dataset, "num_classes": entry.num_classes, "arch": entry.arch,
            "threat_model": {"norm": entry.norm, "eps": eps.value, "eps_text": eps.text,
                             "attack": "unknown"},
            "robustbench": entry.to_dict()}


def build_architecture(arch: str) -> nn.Module:
    """A freshly initialised zoo architecture from a recorded arch `robustbench:DATASET/THREAT/NAME`,
    built by robustbench's model_zoo (or timm) without reading or downloading any weights."""
    entry = resolve(arch)
    timm_name = _timm_name(entry)
    if timm_name:
        import timm

        return timm.create_model(timm_name, num_classes=entry.num_classes, pretrained=False)
    return _zoo(entry.dataset, entry.threat_model)[entry.name]["model"]()


def input_shape(entry: ZooEntry) -> list[int]:
    return [3, 224, 224] if entry.dataset == "imagenet" else [3, 32, 32]

