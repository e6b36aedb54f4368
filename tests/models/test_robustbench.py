"""RobustBench: zoo models by name, imported zoo checkpoints, leaderboard entries and export.

Offline: the zoo's weights are made here by seeding the zoo's own architecture and saving its
state dict where robustbench looks (MODEL_DIR/DATASET/THREAT/NAME.pt), and robustbench's
download function is replaced by one that fails, so nothing is fetched.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from advcli.cli.app import app
from advcli.config import parse_eps
from advcli.errors import AdvcliError, CheckpointError, UsageError
from advcli.formats.results import DataInfo, Entry, EvalResult, ModelInfo, load_results, save_results
from advcli.io import sha256_file
from advcli.models.robustbench import leaderboard
from advcli.models.robustbench._package import INSTALL_HINT, MissingExtraError, import_robustbench

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("cifar10/Linf", "cifar10/L2", "cifar100/Linf", "imagenet/Linf")
# Three architectures of the cifar10 Linf zoo; `save` is how the file stores the state dict
# (robustbench unwraps `state_dict` and strips `module.`, as for the files it serves).
ZOO = {
    "Wong2020Fast": ("PreActResNet-18", "plain"),
    "Sehwag2021Proxy_R18": ("ResNet-18", "wrapped"),
    "Standard": ("WideResNet-28-10", "plain"),
}


def _robustbench():
    try:
        return import_robustbench()
    except MissingExtraError:
        if os.environ.get("CI"):
            pytest.fail("CI is set but the robustbench extra is not installed (it is in the dev extra)")
        pytest.skip("the robustbench extra is not installed")


@pytest.fixture(scope="module")
def rb():
    return _robustbench()


@pytest.fixture(autouse=True)
def _offline(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if "rb" not in request.fixturenames:
        return
    import robustbench.utils

    def no_download(gdrive_id: str, fname_save: object) -> None:
        raise ConnectionError(f"offline test: no download of {fname_save}")

    monkeypatch.setattr(robustbench.utils, "download_gdrive_new", no_download)


@pytest.fixture(scope="module")
def model_dir(rb, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    root = tmp_path_factory.mktemp("rbmodels")
    zoo = model_dicts[BenchmarkDataset("cifar10")][ThreatModel("Linf")]
    for i, (name, (_, save)) in enumerate(ZOO.items()):
        torch.manual_seed(100 + i)
        net = zoo[name]["model"]()
        with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
        state = net.state_dict()
        if save == "wrapped":
            state = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
        path = root / "cifar10" / "Linf" / f"{name}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
    return root


def _images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_name_and_imported_checkpoint_equal_robustbench_bit_for_bit(
        rb, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    from advcli.models.checkpoint import load_checkpoint, read_metadata
    from advcli.models.import_weights import save_import
    from advcli.models.robustbench.imports import import_zoo
    from advcli.models.user import load_target

    reference = rb.utils.load_model(name, model_dir=str(model_dir), dataset="cifar10", threat_model="Linf")
    target = load_target(f"robustbench:{name}", model_dir=model_dir, dataset="cifar10")
    out = tmp_path / f"{name}.safetensors"
    save_import(out, import_zoo(f"robustbench:{name}", model_dir=model_dir))
    # The checkpoint rebuilds the architecture from its metadata alone: robustbench's loading
    # (and download) code is never reached.
    monkeypatch.setattr(rb.utils, "load_model", lambda *a, **k: pytest.fail("load_model called"))
    ckpt = load_checkpoint(out)
    x = _images()
    with torch.no_grad():
        want = reference(x)
        assert want.shape == (2, 10) and want.std() > 0
        assert torch.equal(target.model(x), want)
        assert torch.equal(ckpt.model(x), want)
    weights = model_dir / "cifar10" / "Linf" / f"{name}.pt"
    meta = read_metadata(out)
    assert meta["arch"] == target.arch == f"robustbench:cifar10/Linf/{name}"
    assert meta["robustbench"]["weights_sha256"] == sha256_file(weights)
    assert meta["robustbench"]["version"] == importlib.metadata.version("robustbench")
    assert meta["threat_model"]["eps_text"] == "8/255"
    assert target.label() == f"robustbench:{name}"
    assert target.code[0].to_dict()["sha256"] == sha256_file(weights)
    assert not target.model.training


def test_model_option_form_and_wrong_norm_named(rb, model_dir: Path) -> None:
    from advcli.models.robustbench.zoo import resolve
    from advcli.models.user import load_target

    target = load_target(None, model="robustbench:Wong2020Fast", model_dir=model_dir)
    assert target.arch == "robustbench:cifar10/Linf/Wong2020Fast"
    assert target.meta["num_classes"] == 10 and target.meta["dataset"] == "cifar10"
    l2_only = "Augustin2020Adversarial"
    with pytest.raises(UsageError, match="it is a L2 model: pass --norm l2"):
        resolve(f"robustbench:{l2_only}", norm="linf")
    assert resolve(f"robustbench:{l2_only}", norm="l2").threat_model == "L2"


def test_unknown_name_lists_the_closest(rb) -> None:
    from advcli.models.robustbench.zoo import resolve

    with pytest.raises(UsageError, match=r"no cifar10 Linf model 'Wong2020Fats'; closest: Wong2020Fast"):
        resolve("robustbench:Wong2020Fats")
    res = CliRunner().invoke(app, ["eval", "robustbench:Sehwag2021Proxy_R1", "--n", "2"])
    assert res.exit_code == 2
    assert "closest: Sehwag2021Proxy_R18" in res.output


def test_missing_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from advcli.models.user import load_target

    monkeypatch.setitem(sys.modules, "robustbench", None)  # what `import` sees when it is absent
    with pytest.raises(MissingExtraError, match=r"pip install 'advcli\[robustbench\]'"):
        load_target("robustbench:Wong2020Fast", model_dir=tmp_path)
    res = CliRunner().invoke(app, ["eval", "robustbench:Wong2020Fast", "--n", "2"])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and INSTALL_HINT in lines[0]


def test_html_page_cached_as_weights_is_refused(rb, tmp_path: Path) -> None:
    from advcli.models.user import load_target

    page = tmp_path / "cifar10" / "Linf" / "Wong2020Fast.pt"
    page.parent.mkdir(parents=True)
    page.write_text("<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head></html>")
    with pytest.raises(CheckpointError) as err:
        load_target("robustbench:Wong2020Fast", model_dir=tmp_path)
    assert str(page) in str(err.value) and "HTML page" in str(err.value) and "delete it" in str(err.value)
    res = CliRunner().invoke(app, ["import", "robustbench:Wong2020Fast", "--model-dir", str(tmp_path),
                                   "-o", str(tmp_path / "w.safetensors")])
    assert res.exit_code == 1 and "HTML page" in res.output
    assert not (tmp_path / "w.safetensors").exists()


def test_missing_weights_offline_names_the_file(rb, tmp_path: Path) -> None:
    from advcli.models.user import load_target

    with pytest.raises(AdvcliError, match="Wong2020Fast.pt") as err:
        load_target("robustbench:Wong2020Fast", model_dir=tmp_path)
    assert "ConnectionError" in str(err.value)


def test_cli_eval_import_info_end_to_end(rb, model_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "r.yaml"
    res = runner.invoke(app, ["eval", "robustbench:Wong2020Fast", "--model-dir", str(model_dir),
                              "--dataset", "synthetic", "--n", "4", "--pgd", "--pgd-steps", "1",
                              "--batch-size", "4", "-o", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    result = load_results(out)
    assert result.label == "robustbench:Wong2020Fast"
    assert result.model.arch == "robustbench:cifar10/Linf/Wong2020Fast"
    code = result.user_code[0]
    assert code["robustbench_entry"] == "cifar10/Linf/Wong2020Fast"
    assert code["sha256"] == sha256_file(model_dir / "cifar10" / "Linf" / "Wong2020Fast.pt")
    assert [e.attack for e in result.entries][:2] == ["clean", "pgd"]
    assert result.entry("pgd").eps_text == "8/255"  # the leaderboard's threat model by default
    board = save_results(tmp_path / "board.yaml", leaderboard.published_row("Wong2020Fast"))
    res = runner.invoke(app, ["compare", str(out), str(board)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "robustbench:Wong2020Fast (published)" in res.output and "43.21" in res.output

    ckpt = tmp_path / "wong.safetensors"
    res = runner.invoke(app, ["import", "robustbench:Wong2020Fast", "--model-dir", str(model_dir), "-o", str(ckpt)])
    assert res.exit_code == 0, res.output
    assert "robustbench:cifar10/Linf/Wong2020Fast" in res.output
    res = runner.invoke(app, ["info", str(ckpt)])
    assert res.exit_code == 0, res.output
    assert "Wong2020Fast" in res.output
    land = tmp_path / "land.yaml"
    res = runner.invoke(app, ["landscape", "robustbench:Wong2020Fast", str(ckpt), "--model-dir", str(model_dir),
                              "--dataset", "synthetic", "--n", "4", "--points", "3", "--out", str(land)])
    assert res.exit_code == 0, res.output
    curves = yaml.safe_load(land.read_text())["checkpoints"]
    assert [c["label"] for c in curves] == ["robustbench:Wong2020Fast", "robustbench:Wong2020Fast#2"]


# --------------------------------------------------------------------------- outside code


def _layout(t: torch.Tensor) -> str:
    if t.is_contiguous():
        return "nchw"
    return "nhwc" if t.is_contiguous(memory_format=torch.channels_last) else "strided"


def _state(model: torch.nn.Module) -> dict:
    tensors = [*model.parameters(), *model.buffers()]
    return {"layouts": [_layout(t) for t in tensors], "dtypes": [t.dtype for t in tensors],
            "training": [m.training for m in model.modules()],
            "values": [t.detach().clone() for t in tensors]}


def _same_state(a: dict, b: dict) -> bool:
    return ({k: a[k] for k in ("layouts", "dtypes", "training")}
            == {k: b[k] for k in ("layouts", "dtypes", "training")}
            and all(torch.equal(x, y) for x, y in zip(a["values"], b["values"], strict=True)))


class _Watch:
    """Every zoo module a command loads, its state as loaded, and what each forward pass was
    handed (input layout and dtype, the first conv weight's layout): a forward pre-hook on the
    module robustbench built, or on the imported checkpoint's model."""

    def __init__(self) -> None:
        self.models: list[torch.nn.Module] = []
        self.loaded: list[dict] = []
        self.seen: list[dict] = []

    def add(self, model: torch.nn.Module) -> torch.nn.Module:
        weight = next(p for p in model.parameters() if p.dim() == 4)

        def hook(module: torch.nn.Module, args: tuple) -> None:
            x = args[0]
            self.seen.append({"input": _layout(x), "dtype": x.dtype, "weight": _layout(weight),
                              "training": module.training})

        self.models.append(model)
        self.loaded.append(_state(model))
        model.register_forward_pre_hook(hook)
        return model


def _watch_loads(rb, monkeypatch: pytest.MonkeyPatch) -> _Watch:
    import advcli.landscape.run
    import advcli.models.checkpoint

    watch = _Watch()
    load_model, load_checkpoint = rb.utils.load_model, advcli.models.checkpoint.load_checkpoint

    def loaded_checkpoint(*args, **kwargs):
        ckpt = load_checkpoint(*args, **kwargs)
        watch.add(ckpt.model)
        return ckpt

    monkeypatch.setattr(rb.utils, "load_model", lambda *a, **k: watch.add(load_model(*a, **k)))
    monkeypatch.setattr(advcli.models.checkpoint, "load_checkpoint", loaded_checkpoint)
    monkeypatch.setattr(advcli.landscape.run, "load_checkpoint", loaded_checkpoint)
    return watch


@pytest.fixture(scope="module")
def imported_ckpt(rb, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from advcli.models.import_weights import save_import
    from advcli.models.robustbench.imports import import_zoo

    out = tmp_path_factory.mktemp("rbimport") / "wong.safetensors"
    save_import(out, import_zoo("robustbench:Wong2020Fast", model_dir=model_dir))
    return out


OUTSIDE_RUNS = {
    "eval": ["--pgd", "--pgd-steps", "1", "--batch-size", "4", "--quiet"],
    "landscape": ["--points", "3", "--batch-size", "4"],
}


@pytest.mark.parametrize("command", list(OUTSIDE_RUNS))
@pytest.mark.parametrize("how", ["by name", "imported"])
def test_zoo_models_are_outside_code_nchw_float32_and_left_as_loaded(
        rb, model_dir: Path, imported_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        how: str, command: str) -> None:
    """A zoo model, by name or imported (arch robustbench:...), runs as `--model`'s module does:
    channels_last off by default (recorded), contiguous NCHW float32 inputs, its weights' layout,
    dtype, values and modes as loaded; advcli's own architectures default to channels_last."""
    watch = _watch_loads(rb, monkeypatch)
    model = "robustbench:Wong2020Fast" if how == "by name" else str(imported_ckpt)
    out = tmp_path / "r.yaml"
    res = CliRunner().invoke(app, [command, model, "--model-dir", str(model_dir), "--dataset", "synthetic",
                                   "--n", "4", "--device", "cpu", *OUTSIDE_RUNS[command], "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(out.read_text())["provenance"]["channels_last"] is False
    assert len(watch.models) == 1, "the zoo model was not loaded where the spy looks"
    batches = watch.seen
    assert batches, "the zoo model saw no batch"
    assert {s["input"] for s in batches} == {"nchw"} and {s["weight"] for s in batches} == {"nchw"}
    assert {s["dtype"] for s in batches} == {torch.float32}
    assert not any(s["training"] for s in batches)
    assert _same_state(_state(watch.models[0]), watch.loaded[0])


def test_zoo_model_channels_last_is_opt_in(rb, model_dir: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The spy above can fail: asked for, channels_last reaches the zoo model, and its weights
    come back to their own layout afterwards."""
    watch = _watch_loads(rb, monkeypatch)
    out = tmp_path / "r.yaml"
    res = CliRunner().invoke(app, ["eval", "robustbench:Wong2020Fast", "--model-dir", str(model_dir),
                                   "--dataset", "synthetic", "--n", "4", "--device", "cpu", "--channels-last",
                                   *OUTSIDE_RUNS["eval"], "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(out.read_text())["provenance"]["channels_last"] is True
    assert {"nhwc"} <= {s["input"] for s in watch.seen} and {"nhwc"} <= {s["weight"] for s in watch.seen}
    assert _same_state(_state(watch.models[0]), watch.loaded[0])


def test_imported_zoo_checkpoint_is_outside_code(rb, imported_ckpt: Path, tiny_ckpt: Path) -> None:
    from advcli.models.user import load_target

    assert load_target(imported_ckpt).outside and not load_target(tiny_ckpt).outside


# --------------------------------------------------------------------------- leaderboard

def test_every_shared_entry_parses_to_typed_numbers(shared_model_info: Path) -> None:
    files = sorted(shared_model_info.glob("*/*/*.json"))
    counts = {f: len(list((shared_model_info / f).glob("*.json"))) for f in SHIPPED}
    # The README's counts; its corruptions counts include the folders' unaggregated_results CSVs.
    assert counts == {"cifar10/Linf": 99, "cifar10/L2": 21, "cifar100/Linf": 38, "imagenet/Linf": 30}
    assert len(files) > sum(counts.values())  # the corruptions entries parse too
    for path in files:
        e = leaderboard.read_entry(path)
        raw = json.loads(path.read_text())
        assert e.clean_acc == float(raw["clean_acc"]) and 0 < e.clean_acc <= 100
        if e.threat_model in ("Linf", "L2"):
            assert e.autoattack_acc is not None and 0 <= e.autoattack_acc <= e.clean_acc
            assert e.eps is not None and e.eps_text == raw["eps"]
        assert isinstance(e.additional_data, bool) and isinstance(e.number_forward_passes, int)


def test_shipped_entries_equal_the_shared_copy_byte_for_byte(shared_model_info: Path) -> None:
    for folder in SHIPPED:
        shipped = sorted(p.name for p in (leaderboard.MODEL_INFO / folder).glob("*.json"))
        shared = sorted(p.name for p in (shared_model_info / folder).glob("*.json"))
        assert shipped == shared and shipped
        for name in shipped:
            assert (leaderboard.MODEL_INFO / folder / name).read_bytes() == \
                (shared_model_info / folder / name).read_bytes(), f"{folder}/{name}"


def test_entry_values_and_published_row() -> None:
    e = leaderboard.find_entry("Wong2020Fast")
    assert e is not None
    assert (e.clean_acc, e.autoattack_acc, e.reported) == (83.34, 43.21, 46.06)
    assert (e.eps_text, e.architecture, e.venue) == ("8/255", "PreActResNet-18", "ICLR 2020")
    assert e.link == "https://arxiv.org/abs/2001.03994" and e.additional_data is False
    row = leaderboard.published_row("Wong2020Fast")
    assert row.published and row.label == "robustbench:Wong2020Fast" and "ICLR 2020" in row.citation
    assert row.entry("clean").accuracy == pytest.approx(0.8334)
    aa = row.entry("autoattack", "linf")
    assert aa.accuracy == pytest.approx(0.4321) and aa.n == 10000 and aa.params["version"] == "standard"
    assert row.entry("reported").accuracy == pytest.approx(0.4606)
    empty = leaderboard.find_entry("Salman2020Do_R18", "imagenet", "Linf")
    assert empty is not None and empty.reported is None and empty.eps_text == "4/255"
    with pytest.raises(Exception, match="no RobustBench leaderboard entry"):
        leaderboard.published_row("NoSuchModel")


def test_published_row_round_trips_as_a_result_file(tmp_path: Path) -> None:
    row = leaderboard.published_row("Wong2020Fast")
    path = save_results(tmp_path / "wong.yaml", row)
    back = load_results(path)
    assert back.published and [e.attack for e in back.entries] == ["clean", "autoattack", "reported"]


# --------------------------------------------------------------------------- export

def _result(*, n: int = 10000, dataset: str = "cifar10", version: str = "standard",
            attacks: tuple[str, ...] = ("apgd-ce", "apgd-t", "fab-t", "square"), eps_text: str = "8/255",
            arch: str = "robustbench:cifar10/Linf/Wong2020Fast", aa_restarts: int | None = None,
            user_code: list[dict[str, str]] | None = None) -> EvalResult:
    eps = parse_eps(eps_text).value
    clean, robust = np.arange(n) < round(0.8334 * n), np.arange(n) < round(0.4321 * n)
    return EvalResult(
        label="m", model=ModelInfo(checkpoint="m.safetensors", sha256="0" * 64, arch=arch),
        data=DataInfo(dataset=dataset, split="test", n=n, index_sha256="1" * 64),
        entries=[Entry(attack="clean", accuracy=float(clean.mean()), n=n, flags=clean),
                 Entry(attack="autoattack", accuracy=float(robust.mean()), n=n, norm="linf", eps=eps,
                       eps_text=eps_text, flags=robust,
                       params={"version": version, "attacks": list(attacks), "restarts": 1})],
        provenance={"options": {"aa_restarts": aa_restarts}},
        user_code=user_code or [],
    )


def _export(tmp_path: Path, result: EvalResult, *flags: str):
    path = save_results(tmp_path / "r.yaml", result)
    return CliRunner().invoke(app, ["export", "robustbench", str(path), *flags])


def test_export_good_result_as_a_leaderboard_entry(tmp_path: Path) -> None:
    res = _export(tmp_path, _result())
    assert res.exit_code == 0, res.output
    entry = json.loads(res.output)
    shipped = json.loads((leaderboard.MODEL_INFO / "cifar10" / "Linf" / "Wong2020Fast.json").read_text())
    assert entry["clean_acc"] == "83.34" and entry["autoattack_acc"] == "43.21" and entry["eps"] == "8/255"
    for key in ("link", "name", "authors", "venue", "architecture", "additional_data",
                "number_forward_passes", "reported", "dataset"):
        assert entry[key] == shipped[key], key
    assert list(entry)[:3] == ["link", "name", "authors"]  # robustbench's own key order


def test_export_own_architecture_needs_the_paper_fields(tmp_path: Path) -> None:
    result = _result(arch="resnet18")
    res = _export(tmp_path, result)
    assert res.exit_code == 1 and "give --name" in res.output
    flags = ["--name", "My defence", "--authors", "A. Author", "--venue", "arXiv 2026",
             "--link", "https://example.org/paper", "--no-additional-data"]
    res = _export(tmp_path, result, *flags)
    assert res.exit_code == 0, res.output
    entry = json.loads(res.output)
    assert entry["architecture"] == "ResNet-18" and entry["number_forward_passes"] == 1
    assert entry["additional_data"] is False and "reported" not in entry
    user = _result(arch="user:net.py:build", user_code=[
        {"role": "model", "file": "net.py", "callable": "build", "sha256": "2" * 64}])
    res = _export(tmp_path, user, *flags, "--architecture", "ResNet-18")
    assert res.exit_code == 1 and "give --number-forward-passes" in res.output


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"n": 1000}, "a subset"),
    ({"version": "custom", "attacks": ("apgd-ce",)}, "version 'custom'"),
    ({"version": "plus"}, "version 'plus'"),
    ({"attacks": ("apgd-ce", "apgd-t")}, "customised"),
    ({"aa_restarts": 5}, "--aa-restarts 5"),
    ({"eps_text": "4/255"}, "leaderboard tracks are"),
    ({"dataset": "synthetic"}, "evaluated on synthetic"),
])
def test_export_refuses_what_the_leaderboard_would_not_take(tmp_path: Path, kwargs: dict, reason: str) -> None:
    res = _export(tmp_path, _result(**kwargs))
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and reason in lines[0], res.output

