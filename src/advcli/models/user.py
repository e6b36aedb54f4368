"""User code as a model: `--model FILE.py:CALLABLE` and `--wrap FILE.py:CALLABLE`.

Robustness claims are usually about a model with a defence around it, or about a network that
is not an advcli architecture. Two hooks let any such model be evaluated:

- `--model FILE.py:CALLABLE`: `CALLABLE()` returns any `nn.Module` taking float NCHW images in
  [0, 1] and returning logits [N, classes]. Weights, when given, come from a safetensors file
  (`load_user_model(spec, weights=PATH)`, strict key match): advcli never unpickles anything,
  and what the user's own code loads is its own business.
- `--wrap FILE.py:CALLABLE`: `CALLABLE(model)` receives the loaded model and returns the
  `nn.Module` to evaluate (a preprocessing defence, an ensemble, a detector), same contract.

Running user code is explicit: the file is imported as a module (with all the rights of the
user running advcli), exactly as named. Every `UserCode` records the file's sha256 so a result
says which version of the code it measured; it covers the named file only (modules it imports
are not hashed). User code is imported and built with torch seeded to 0 (inside
`torch.random.fork_rng`, on the CPU and the target CUDA device, so the caller's random streams
are untouched), so random initialisation is reproducible: `--model` without weights, or a
`--wrap` that adds freshly initialised layers, builds the same module every run. What was
built is recorded too: every `UserCode` carries `weights_sha256`, the sha256 of the module
its role produced (`--model`: the module after its weights are loaded; `--wrap`: the wrapped
module, the model inside it included), over its state_dict's names, dtypes, shapes and bytes
in order (`state_dict_sha256`). The last record's `weights_sha256` is therefore that of the
module evaluated; it tells apart builds that the file's sha256 cannot (code that reads an
environment variable, another file, or draws from an unseeded generator).

This module is the one place that imports user files; `eval`, `attack` and `audit` all go
through it (`load_target`: what they measure, a checkpoint or `--model`, with `--wrap` around
it, and how results name it: "Robust + quantize", "Robust + quantize:coarse" for a callable
other than `wrap`, "Robust (model net:build)", or "net:build" without a checkpoint).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from advcli.errors import AdvcliError, UsageError
from advcli.io import sha256_file
from advcli.models.registry import outside_arch
from advcli.models.user_code import UserCode, seeded_build, state_dict_sha256

if TYPE_CHECKING:
    from advcli.models.checkpoint import LoadedCheckpoint

MODEL_HELP = (
    "FILE.py:CALLABLE: evaluate the nn.Module that CALLABLE() returns instead of an advcli "
    "architecture (images in [0, 1] NCHW in, its normalisation inside, logits out). RUNS THE "
    "CODE IN FILE.py. Its weights come from the checkpoint argument (safetensors, keys must "
    "match) or from the code itself, which runs with torch seeded to 0 (random initialisation "
    "is reproducible). Recorded: the file's sha256 (that file only, not modules it imports) "
    "and the built module's weights_sha256. Or robustbench:NAME: a RobustBench model zoo entry "
    "(--dataset and --norm choose the zoo, default cifar10 linf; weights under --model-dir; "
    "needs advcli[robustbench])."
)
WRAP_HELP = (
    "FILE.py:CALLABLE: evaluate CALLABLE(model), an nn.Module around the loaded model (a "
    "preprocessing defence, an ensemble, a detector; [0, 1] NCHW in, logits out). RUNS THE CODE "
    "IN FILE.py, with torch seeded to 0 (random initialisation is reproducible). Recorded: the "
    "file's sha256 (that file only, not modules it imports) and the wrapped module's "
    "weights_sha256. The label gets ' + FILE' (' + FILE:CALLABLE' unless CALLABLE is 'wrap')."
)


DATASETS = "cifar10, cifar100, svhn, synthetic or folder:PATH"


def parse_spec(spec: str, *, option: str) -> tuple[Path, str]:
    """`FILE.py:CALLABLE` -> (path, name); a UsageError naming `option` for anything else."""
    text = str(spec).strip()
    path_text, sep, name = text.rpartition(":")
    if not sep or not path_text or not name:
        raise UsageError(f"{option} {text!r} must be FILE.py:CALLABLE, e.g. {option} defence.py:wrap")
    if not name.isidentifier():
        raise UsageError(f"{option} {text!r}: {name!r} is not a Python name; write FILE.py:CALLABLE")
    path = Path(path_text)
    if path.suffix != ".py":
        raise UsageError(f"{option} {text!r}: {path_text!r} is not a .py file; write FILE.py:CALLABLE")
    if not path.is_file():
        raise UsageError(f"{option} {text!r}: {path_text!r} does not exist; check the path")
    return path, name


def check_user_options(opts: Mapping[str, Any]) -> None:
    """The boundary checks of a command taking `checkpoint`, `--model`, `--wrap` and
    `--dataset` (eval, attack): the specs' form, something to load, and the data for a
    `--model` that has no checkpoint to say which dataset it was trained on."""
    from advcli.models.robustbench.zoo import is_zoo_spec

    zoo = is_zoo_spec(opts.get("model")) or is_zoo_spec(opts.get("checkpoint"))
    if is_zoo_spec(opts.get("model")) and opts.get("checkpoint") is not None:
        raise UsageError("--model robustbench:NAME brings its own weights; drop the checkpoint argument")
    for option in ("model", "wrap"):
        if opts.get(option) and not (option == "model" and zoo):
            parse_spec(opts[option], option=f"--{option}")
    if opts.get("checkpoint") is None and not zoo:
        if not opts.get("model"):
            raise UsageError("name the checkpoint (.safetensors), or pass --model FILE.py:CALLABLE")
        if not opts.get("dataset"):
            raise UsageError(f"--model without a checkpoint needs --dataset ({DATASETS}): no "
                             "metadata says which data the module was trained on")


def load_callable(spec: str, *, option: str) -> tuple[Any, UserCode]:
    """Import FILE.py as a fresh module and return its CALLABLE with the file's provenance."""
    path, name = parse_spec(spec, option=option)
    digest = sha256_file(path)
    # A name unique per file content: two different files (or versions) never share a module.
    module_name = f"advcli_user_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}_{digest[:12]}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise UsageError(f"{option} {spec!r}: {str(path)!r} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # user code: any exception is the user's to fix, said in one line
        sys.modules.pop(module_name, None)
        raise AdvcliError(f"importing {str(path)!r} ({option}) raised {type(exc).__name__}: {exc}; "
                          "fix the file (ADVCLI_DEBUG=1 shows the traceback)") from exc
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise UsageError(f"{option} {spec!r}: {str(path)!r} has no callable {name!r}"
                         + (f"; it defines {', '.join(found[:8])}" if found else ""))
    role = option.lstrip("-")
    return fn, UserCode(path=str(path), callable=name, sha256=digest, role=role)


def _call(fn: Any, code: UserCode, *args: Any) -> nn.Module:
    try:
        out = fn(*args)
    except Exception as exc:  # user code
        raise AdvcliError(f"{code.spec} (--{code.role}) raised {type(exc).__name__}: {exc}; "
                          "fix the callable (ADVCLI_DEBUG=1 shows the traceback)") from exc
    if not isinstance(out, nn.Module):
        raise AdvcliError(f"{code.spec} (--{code.role}) returned {type(out).__name__}, not a "
                          "torch.nn.Module; return the module that maps [0, 1] NCHW images to logits")
    return out


def load_user_model(spec: str, weights: str | Path | None = None, *,
                    device: torch.device | str = "cpu") -> tuple[nn.Module, UserCode]:
    """`--model FILE.py:CALLABLE`: the module `CALLABLE()` builds (imported and built with torch
    seeded to 0; `device` is where it will run, whose random state is kept too), with the
    safetensors `weights` loaded into it when given (every key must match). Its modes are left
    as the code set them: stages run it in eval mode and restore each module's own flag after
    (`advcli.models.layout.attack_mode`)."""
    with seeded_build(device):
        fn, code = load_callable(spec, option="--model")
        model = _call(fn, code)
    if weights is not None:
        from advcli.models.checkpoint import load_tensors

        tensors, _ = load_tensors(weights)
        # A Classifier checkpoint holds `normalize.` buffers + `net.`; a bare module its own keys.
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise AdvcliError(
                f"the weights in {str(weights)!r} do not fit {code.spec}: missing "
                f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}; save the module's "
                "own state_dict with safetensors"
            )
    return model, replace(code, weights_sha256=state_dict_sha256(model))


def wrap_model(model: nn.Module, spec: str, *,
               device: torch.device | str = "cpu") -> tuple[nn.Module, UserCode]:
    """`--wrap FILE.py:CALLABLE`: `CALLABLE(model)` (imported and built with torch seeded to 0,
    modes left as the code set them, as `load_user_model`)."""
    with seeded_build(device):
        fn, code = load_callable(spec, option="--wrap")
        wrapped = _call(fn, code, model)
    return wrapped, replace(code, weights_sha256=state_dict_sha256(wrapped))


class Examples(NamedTuple):
    """What a stage measures on (`Target.examples`)."""

    data: Any  # the ImageData
    index: torch.Tensor  # the chosen examples of the split
    skipped: list[str]  # files dropped from `index` because they do not decode (--skip-bad)


@dataclass
class Target:
    """What `eval`, `attack` and `audit` measure: `model` (after `--wrap`), `base` (before it),
    the checkpoint's metadata, path and sha256 (empty and None for `--model` without weights),
    and the user code that built it, in order (`--model`, then `--wrap`)."""

    model: nn.Module
    base: nn.Module
    meta: dict[str, Any]
    checkpoint: Path | None
    sha256: str | None
    code: list[UserCode]

    def _role(self, role: str) -> UserCode | None:
        return next((c for c in self.code if c.role == role), None)

    @property
    def user_model(self) -> UserCode | None:
        return self._role("model")

    @property
    def wrap(self) -> UserCode | None:
        return self._role("wrap")

    @property
    def outside(self) -> bool:
        """Whether code from outside advcli's registry is measured (`--model`, `--wrap`, a
        RobustBench model by name or imported): a guest, whose inputs stay NCHW and whose
        layout, dtype and modes advcli leaves alone."""
        return bool(self.code) or outside_arch(self.meta.get("arch"))

    @property
    def name(self) -> str:
        """How messages name it: the checkpoint's path, else the `--model` spec."""
        if self.checkpoint is not None:
            return str(self.checkpoint)
        return self.code[0].spec if self.code else "model"

    @property
    def arch(self) -> str | None:
        """The checkpoint's arch, `user:FILE.py:CALLABLE` for `--model`, or a zoo model's
        `robustbench:DATASET/THREAT/NAME`."""
        user = self.user_model
        if user is None:
            return self.meta.get("arch")
        return getattr(user, "arch", None) or f"user:{user.spec}"

    def base_label(self) -> str:
        """The label before `--wrap`: the checkpoint's (its metadata's label, else its file
        stem), "Robust (model net:build)" when `--model` builds the module its weights go
        into, and "net:build" for a `--model` without a checkpoint."""
        user = self.user_model
        ckpt = self.meta.get("label") or (
            self.checkpoint.name.removesuffix(".safetensors") if self.checkpoint is not None else None)
        if user is None:
            return str(ckpt or "model")
        return f"{ckpt} (model {user.short})" if ckpt else user.short

    def label(self, override: str | None = None) -> str:
        """`override`, else `base_label()` with " + DEFENCE" when wrapped: the defence is part of
        what was measured. DEFENCE is the `--wrap` file's stem ("Robust + quantize") when the
        callable has the conventional name `wrap`, else stem:callable ("Robust + quantize:coarse"),
        so two defences of one file get two labels."""
        if override:
            return str(override)
        wrap = self.wrap
        if wrap is not None:
            defence = Path(wrap.path).stem if wrap.callable == "wrap" else wrap.short
            return f"{self.base_label()} + {defence}"
        return self.base_label()

    def user_code(self) -> list[dict[str, str]]:
        return [c.to_dict() for c in self.code]

    def examples(self, *, dataset: str | None, data_dir: str | None, split: str, n: int | None,
                 seed: int, subset: Any, device: torch.device | str, data: Any = None,
                 check_output: bool = False, view: Any = None) -> Examples:
        """(data, index, skipped): what `eval`, `attack` and `audit` measure on. `data` (an
        ImageData) when given, else the dataset `dataset` or the checkpoint names, read as `view`
        (a `DataView`: --stream, --image-size, --skip-bad; by default as the training run read
        it), a usage error when neither names one, or when `subset` cannot apply to it, before
        anything is loaded; `index` = the examples of `split` that `n`, `seed` and `subset`
        choose, less those whose files do not decode under --skip-bad (their names: `skipped`).
        Nothing but those examples is decoded from a streamed split. User code (and any model,
        with `check_output`) must return logits for them: one forward pass on two."""
        from advcli.data import test_subset, to_float
        from advcli.data.for_checkpoint import dataset_for_checkpoint, drop_undecodable
        from advcli.data.subsets import check_subset
        from advcli.data.view import DataView

        view = view or DataView()
        if data is None:
            self.require_dataset(dataset)
            # Refused before loading when the view surely reads a folder into memory (listed class
            # by class); a view that may stream is judged once the data says whether it did.
            cfg = self.meta.get("config") if isinstance(self.meta.get("config"), dict) else {}
            recorded = {} if dataset else {"stream": cfg.get("stream"), "image_size": cfg.get("image_size")}
            if view.given(**recorded).stream == "off":
                check_subset(subset, dataset or self.meta.get("dataset"))
            data = dataset_for_checkpoint(self.meta, name=self.name, dataset=dataset, data_dir=data_dir,
                                          view=view)
        xs, ys = data.split(split)
        index = test_subset(ys, n, seed=seed, subset=subset, dataset=data.name, streamed=data.streamed,
                            x=xs, classes=data.classes)
        index, skipped = drop_undecodable(xs, index, view.skip_bad)
        if (self.outside or check_output) and len(index):
            name = self.code[-1].spec if self.code else self.name
            check_logits(self.model, to_float(xs[index[:2]]).to(device), data.num_classes, name)
        return Examples(data, index, skipped)

    def require_dataset(self, dataset: str | None) -> None:
        """A UsageError when neither `dataset` nor the checkpoint's metadata names the data
        (a `--model` without weights, or weights saved outside advcli)."""
        if not dataset and not self.meta.get("dataset"):
            raise UsageError(f"{self.name} records no dataset; pass --dataset ({DATASETS})")


def load_target(checkpoint: str | Path | LoadedCheckpoint | None, *, model: str | None = None,
                wrap: str | None = None, device: torch.device | str = "cpu", dataset: str | None = None,
                norm: Any = None, model_dir: str | Path | None = None) -> Target:
    """The checkpoint's model, or `model`'s module (weights from `checkpoint` when given, and
    the metadata it holds), wrapped by `wrap`; on `device`. A checkpoint's model is in eval
    mode; user code is left in the modes it set (stages run it under `attack_mode`), and never
    converted to another dtype or memory format. A RobustBench model named `robustbench:NAME`
    (as `checkpoint` or `model`; `dataset`, `norm` and `model_dir` choose its zoo entry and
    weights folder, see `advcli.models.robustbench.zoo`) is outside code like `model`'s module: it
    goes the same way (robustbench hands it over in eval mode)."""
    from advcli.models.checkpoint import LoadedCheckpoint, load_checkpoint, read_metadata
    from advcli.models.robustbench.zoo import is_zoo_spec

    zoo = model if is_zoo_spec(model) else checkpoint if is_zoo_spec(checkpoint) else None
    if zoo is not None:
        from advcli.models.robustbench.zoo import load_zoo_model, resolve, zoo_meta

        entry = resolve(str(zoo), dataset=dataset, norm=norm)
        base, code = load_zoo_model(entry, model_dir)
        target = Target(model=base, base=base, meta=zoo_meta(entry), checkpoint=None, sha256=None,
                        code=[code])
    elif model:
        path = None if checkpoint is None else Path(str(getattr(checkpoint, "path", checkpoint)))
        base, code = load_user_model(model, weights=path, device=device)
        target = Target(model=base, base=base, meta=read_metadata(path) if path is not None else {},
                        checkpoint=path, sha256=sha256_file(path) if path is not None else None,
                        code=[code])
    else:
        if checkpoint is None:
            raise UsageError("name a checkpoint (.safetensors), or pass --model FILE.py:CALLABLE")
        ckpt = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load_checkpoint(checkpoint, device)
        target = Target(model=ckpt.model, base=ckpt.model, meta=ckpt.meta, checkpoint=Path(ckpt.path),
                        sha256=ckpt.sha256, code=[])
    target.base.to(device)
    if wrap:
        target.model, code = wrap_model(target.base, wrap, device=device)
        target.code.append(code)
        target.model.to(device)
    return target


def check_logits(model: nn.Module, x: torch.Tensor, num_classes: int | None, name: str) -> None:
    """One forward pass on `x` in eval mode (each module's flag restored after): user code must
    return logits [len(x), num_classes] (None: any number of columns)."""
    from advcli.models.layout import attack_mode

    with attack_mode(model), torch.no_grad():
        out = model(x)
    classes = num_classes if num_classes is not None else "classes"
    if (not isinstance(out, torch.Tensor) or out.dim() != 2 or len(out) != len(x)
            or (num_classes is not None and out.shape[1] != num_classes)):
        raise AdvcliError(f"{name} returned {describe_output(out)} for {len(x)} images; it must "
                          f"return logits of shape [N, {classes}] (one row per image, one column per "
                          "class), not a tuple or dict of outputs")


def describe_output(out: Any) -> str:
    """What a forward pass returned, in a few words: "a tensor of shape (2, 10)", "tuple of
    2 tensors", "dict with keys 'logits', 'features'"."""
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, (tuple, list)):
        kinds = {type(v).__name__ for v in out}
        what = "tensors" if kinds == {"Tensor"} else "items"
        return f"{type(out).__name__} of {len(out)} {what}"
    if isinstance(out, Mapping):
        keys = ", ".join(repr(k) for k in list(out)[:5])
        return f"{type(out).__name__} with keys {keys}"
    return type(out).__name__
