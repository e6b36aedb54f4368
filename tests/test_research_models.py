"""Outside code sees what its authors' code would give it (issue 27).

tests/research/models.py holds research-style networks (flatten by `.view`, in-place ReLUs,
normalisation first or inside `forward`, `F.dropout(training=self.training)`, BatchNorm, tuple
and dict outputs, a model on [0, 255] inputs), loaded through `--model FILE.py:CALLABLE` as a
user would. Each that evaluates must get from `advcli eval --autoattack` the very clean and
robust flags that pyautoattack's AutoAttack, run directly on the module as its authors would,
gives on the same images with the same attacks and seed. tests/research/spy.py records what a
guest module is handed and is inspected afterwards: NCHW float32 inputs, and its layout, dtype,
training flags and weights unchanged, unless `--channels-last` is asked for.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from advcli.cli.app import app
from advcli.data import test_subset, to_float
from advcli.evaluate.run import examples_sha256
from advcli.formats.results import decode_flags
from advcli.models.user_code import seeded_build, state_dict_sha256

RESEARCH = Path(__file__).parent / "research"
MODELS = RESEARCH / "models.py"
SPY = RESEARCH / "spy.py"
N = 32
EPS = 8 / 255
EVALUATES = ["view_flatten", "functional_inplace", "norm_first", "norm_in_forward", "dropout",
             "batchnorm"]


@pytest.fixture
def decoded_once(synthetic_data, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--dataset synthetic` reuses the session's synthetic data instead of generating it."""
    from advcli.data import for_checkpoint
    from advcli.landscape import run as landscape

    monkeypatch.setattr(for_checkpoint, "dataset_for_checkpoint", lambda *a, **k: synthetic_data)
    monkeypatch.setattr(landscape, "dataset_for_checkpoints", lambda *a, **k: synthetic_data)


def _run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def _import(path: Path) -> ModuleType:
    """The file imported as its authors would, outside advcli."""
    spec = importlib.util.spec_from_file_location(f"research_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _examples(synthetic_data) -> tuple[torch.Tensor, torch.Tensor]:
    idx = test_subset(synthetic_data.test_y, N, seed=0)
    return to_float(synthetic_data.test_x[idx]), synthetic_data.test_y[idx].long()


def _authors_flags(name: str, x: torch.Tensor, y: torch.Tensor, attacks: list[str] | None,
                   restarts: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Clean and robust flags from pyautoattack run directly on a fresh build of the module:
    robust = clean-correct and still correct on the x_adv it returns."""
    from pyautoattack import AutoAttack

    model = getattr(_import(MODELS), name)().eval()
    version = "standard" if attacks is None else "custom"
    adversary = AutoAttack(model, norm="Linf", eps=EPS, version=version, attacks=attacks, seed=0)
    if restarts is not None:
        adversary.apgd.n_restarts = restarts
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=N)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).numpy()
        still = (model(x_adv).argmax(1) == y).numpy()
    return clean, clean & still


def _advcli_flags(tmp_path: Path, name: str, attacks: list[str] | None,
                  restarts: int | None) -> tuple[dict, np.ndarray, np.ndarray]:
    out = tmp_path / f"{name}.yaml"
    aa = ["--aa-version", "standard"] if attacks is None else [
        "--aa-version", "custom", "--aa-attacks", ",".join(attacks)]
    if restarts is not None:
        aa += ["--aa-restarts", str(restarts)]
    r = _run("eval", "--model", f"{MODELS}:{name}", "--dataset", "synthetic", "--n", N,
             "--subset", "stratified", "--batch-size", N, "--seed", 0, "--eps", "8/255",
             "--no-pgd", "--autoattack", *aa, "--device", "cpu", "-q", "-o", out)
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load(out.read_text())
    entries = {e["attack"]: e for e in doc["results"]}
    flags = {k: decode_flags(entries[k]["flags"], entries[k]["n"]) for k in ("clean", "autoattack")}
    return doc, flags["clean"], flags["autoattack"]


def _compare(tmp_path: Path, synthetic_data, name: str, attacks: list[str] | None,
             restarts: int | None) -> None:
    x, y = _examples(synthetic_data)
    doc, clean, robust = _advcli_flags(tmp_path, name, attacks, restarts)
    idx = test_subset(synthetic_data.test_y, N, seed=0)
    assert doc["data"]["examples_sha256"] == examples_sha256(synthetic_data.test_x[idx], y)
    assert doc["provenance"]["channels_last"] is False  # outside code runs as given
    ref_clean, ref_robust = _authors_flags(name, x, y, attacks, restarts)
    # The premise, by the module's construction: a mix of wrong, non-robust and robust images.
    assert 0 < ref_robust.sum() < ref_clean.sum() < N
    np.testing.assert_array_equal(clean, ref_clean)
    np.testing.assert_array_equal(robust, ref_robust)


@pytest.mark.parametrize("name", EVALUATES)
def test_eval_flags_equal_the_authors_autoattack(tmp_path, synthetic_data, decoded_once, name) -> None:
    _compare(tmp_path, synthetic_data, name, ["apgd-ce"], 1)


def test_eval_flags_equal_the_authors_apgd_ce_and_apgd_t(tmp_path, synthetic_data,
                                                        decoded_once) -> None:
    _compare(tmp_path, synthetic_data, "view_flatten", ["apgd-ce", "apgd-t"], 1)


@pytest.mark.slow
def test_eval_flags_equal_the_authors_standard_autoattack(tmp_path, synthetic_data,
                                                         decoded_once) -> None:
    _compare(tmp_path, synthetic_data, "view_flatten", None, None)


@pytest.mark.parametrize(("name", "what"), [
    ("tuple_out", "returned tuple of 2 tensors"),
    ("dict_out", "returned dict with keys 'logits', 'features'"),
])
@pytest.mark.parametrize("command", ["eval", "attack", "audit", "landscape"])
def test_outputs_other_than_logits_are_refused(tmp_path, decoded_once, command, name, what) -> None:
    out = tmp_path / ("adv.safetensors" if command == "attack" else "out.yaml")
    r = _run(command, "--model", f"{MODELS}:{name}", "--dataset", "synthetic", "--n", 8,
             "--device", "cpu", "--out", out)
    assert r.exit_code in (1, 2), r.output
    assert what in r.output and "must return logits of shape [N, 10]" in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not any(tmp_path.iterdir())


def test_a_model_on_0_255_inputs_evaluates_with_a_chance_warning(tmp_path, synthetic_data,
                                                                 decoded_once) -> None:
    x, y = _examples(synthetic_data)
    with torch.no_grad():  # by construction it answers the last class for every [0, 1] image
        assert (_import(MODELS).scale_255()(x).argmax(1) == 9).all()
    out = tmp_path / "r.yaml"
    r = _run("eval", "--model", f"{MODELS}:scale_255", "--dataset", "synthetic", "--n", N,
             "--no-pgd", "--device", "cpu", "-q", "-o", out)
    assert r.exit_code == 0, r.output
    clean = yaml.safe_load(out.read_text())["results"][0]
    assert clean["accuracy"] == pytest.approx(float((y == 9).double().mean()))
    assert any("near chance" in w and "input range" in w for w in clean["warnings"])
    assert "near chance" in r.output


def test_a_model_that_reads_its_examples_right_gets_no_chance_warning(tmp_path, decoded_once) -> None:
    out = tmp_path / "r.yaml"
    r = _run("eval", "--model", f"{MODELS}:view_flatten", "--dataset", "synthetic", "--n", N,
             "--no-pgd", "--device", "cpu", "-q", "-o", out)
    assert r.exit_code == 0, r.output
    assert "warnings" not in yaml.safe_load(out.read_text())["results"][0]


# --------------------------------------------------------------------------- the guest's state


def _spy() -> ModuleType:
    """The spy file as advcli imported it (the module object its commands built from)."""
    return next(m for m in list(sys.modules.values())
                if getattr(m, "__file__", None) and Path(m.__file__).resolve() == SPY.resolve())


def _fresh_spy() -> torch.nn.Module:
    """The spy as `--model` builds it (torch seeded to 0), never run."""
    with seeded_build():
        return _import(SPY).build()


def _state(model: torch.nn.Module) -> dict:
    return {
        "sha256": state_dict_sha256(model),
        "layouts": [t.is_contiguous() for t in [*model.parameters(), *model.buffers()]],
        "dtypes": [t.dtype for t in [*model.parameters(), *model.buffers()]],
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
    }


SPY_RUNS = {
    "eval": ["--eps", "8/255", "--pgd-steps", "2", "--autoattack", "--aa-version", "custom",
             "--aa-attacks", "apgd-ce", "--aa-restarts", "1", "--batch-size", "8", "-q"],
    "attack": ["--steps", "2", "--batch-size", "8"],
    "audit": ["--checks", "gradients,curve", "--curve-steps", "2", "--batch-size", "8"],
    "landscape": ["--points", "3", "--batch-size", "8", "--data", "pgd", "--steps", "2"],
}


def _spy_run(tmp_path: Path, command: str, *extra: str) -> tuple[dict, list[dict], torch.nn.Module]:
    out = tmp_path / ("adv.safetensors" if command == "attack" else "r.yaml")
    r = _run(command, "--model", f"{SPY}:build", "--dataset", "synthetic", "--n", 16,
             "--device", "cpu", *SPY_RUNS[command], *extra, "--out", out)
    assert r.exit_code == 0, r.output
    spy = _spy()
    doc = yaml.safe_load((out.with_suffix(".yaml") if command == "attack" else out).read_text())
    return doc, list(spy.SEEN), spy.BUILT[-1]


@pytest.mark.parametrize("command", list(SPY_RUNS))
def test_a_guest_gets_nchw_float32_and_is_left_as_built(tmp_path, decoded_once, command) -> None:
    doc, seen, model = _spy_run(tmp_path, command)
    assert _state(model) == _state(_fresh_spy())  # weights, layout, dtype, modes, requires_grad
    assert model.keep_training.training and not model.training  # the mixed modes it was built with
    ours = [s for s in seen if s["shape"][0] > 1]
    assert ours, "the spy saw no batch"
    assert {s["input"] for s in ours} == {"nchw"} and {s["weight"] for s in ours} == {"nchw"}
    assert {s["dtype"] for s in ours} == {torch.float32}
    assert not any(s["training"] for s in ours)  # measured in eval mode
    assert doc["provenance"]["channels_last"] is False


@pytest.mark.parametrize("command", list(SPY_RUNS))
def test_channels_last_is_opt_in_recorded_and_real(tmp_path, decoded_once, command) -> None:
    doc, seen, model = _spy_run(tmp_path, command, "--channels-last")
    assert doc["provenance"]["channels_last"] is True
    assert {"nhwc"} <= {s["input"] for s in seen} and {"nhwc"} <= {s["weight"] for s in seen}
    assert _state(model) == _state(_fresh_spy())  # restored afterwards all the same


def test_channels_last_breaks_view_flatten_as_the_help_warns(tmp_path, decoded_once) -> None:
    r = _run("eval", "--model", f"{MODELS}:view_flatten", "--dataset", "synthetic", "--n", 8,
             "--pgd-steps", "1", "--channels-last", "--device", "cpu", "-q", "-o", tmp_path / "r.yaml")
    assert r.exit_code == 1 and "view" in r.output and "Traceback" not in r.output, r.output
    help_text = " ".join(_run("eval", "--help").output.split())
    assert "research code that flattens with .view may fail" in help_text.replace("│ ", "")


def test_advcli_architectures_keep_channels_last_by_default(tmp_path, tiny_ckpt) -> None:
    out = tmp_path / "r.yaml"
    r = _run("eval", tiny_ckpt, "--n", 8, "--pgd-steps", "1", "--device", "cpu", "-q", "-o", out)
    assert r.exit_code == 0, r.output
    assert yaml.safe_load(out.read_text())["provenance"]["channels_last"] is True


@pytest.mark.parametrize("channels_last", [False, None])
def test_landscape_leaves_a_guest_as_built(synthetic_data, channels_last) -> None:
    from advcli.landscape.directions import gaussian_directions
    from advcli.landscape.run import LandscapeSettings, compute_landscape

    spy = _import(SPY)
    with seeded_build():
        model = spy.build()
    x, y = _examples(synthetic_data)
    settings = LandscapeSettings(dim=1, points=3, batch_size=16, channels_last=channels_last)
    compute_landscape(model, x, y, gaussian_directions(model, 1, seed=0), settings,
                      device=torch.device("cpu"))
    assert _state(model) == _state(_fresh_spy())
    layouts = {s["input"] for s in spy.SEEN}
    assert layouts == ({"nchw"} if channels_last is False else {"nhwc"})  # None: on on the CPU


def test_landscape_model_takes_its_weights_from_the_checkpoint(tmp_path, tiny_ckpt) -> None:
    """`landscape CKPT --model FILE.py:CALLABLE`: the same network built by user code from the
    checkpoint's weights has the checkpoint's landscape (NCHW instead of NHWC: rounding only)."""
    args = ["--points", "3", "--n", "16", "--batch-size", "16", "--device", "cpu"]
    docs = []
    for extra, name in (([], "plain.yaml"), (["--model", f"{RESEARCH.parent}/wraps/user_model.py:tiny"], "user.yaml")):
        r = _run("landscape", tiny_ckpt, *args, *extra, "--out", tmp_path / name)
        assert r.exit_code == 0, r.output
        docs.append(yaml.safe_load((tmp_path / name).read_text()))
    plain, user = docs
    assert user["checkpoints"][0]["user_code"][0]["callable"] == "tiny"
    assert "user_code" not in plain["checkpoints"][0]
    assert (plain["provenance"]["channels_last"], user["provenance"]["channels_last"]) == (True, False)
    np.testing.assert_allclose(user["checkpoints"][0]["loss"], plain["checkpoints"][0]["loss"], rtol=1e-4)
