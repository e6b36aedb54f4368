"""--stream, --image-size, --skip-bad through every stage that loads data: declared on each
command, passed to load_dataset, recorded by training and rebuilt from the checkpoint, and a
streamed split is only ever decoded where a stage measures (a fake lazy split counts what is
decoded; the real one, advcli.data.stream.LazyImages, follows the same interface)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from typer.testing import CliRunner

from advcli.attacks import AttackSpec
from advcli.audit import AuditOptions
from advcli.audit.limits import CheckName
from advcli.cli.app import app
from advcli.data import ImageData
from advcli.data.for_checkpoint import check_fits, dataset_for_checkpoint
from advcli.data.view import DataView
from advcli.errors import DataError, UsageError
from advcli.models.checkpoint import read_metadata
from advcli.train.loop import TrainOptions, fit, setup

CPU = torch.device("cpu")
COMMANDS = ("train", "adv-train", "eval", "attack", "audit", "landscape", "check-loader")


class FakeLazy:
    """A streamed split as the stages see it: len, shape, dtype, [index] -> uint8 tensor,
    take(index) -> a view, decodable(index). It decodes (here: copies) only what is indexed,
    counts it, and raises past `budget` items, so a stage that materialises a split fails."""

    def __init__(self, images: torch.Tensor, budget: int, bad: tuple[int, ...] = (), rows: torch.Tensor | None = None):
        self.images, self.budget, self.bad = images, budget, bad
        self.rows = torch.arange(len(images)) if rows is None else rows
        self.decoded = [0]  # shared by views: one dataset, one count

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.images.shape[1:]))

    dtype = torch.uint8

    def __getitem__(self, index) -> torch.Tensor:
        rows = self.rows[index]
        count = 1 if rows.ndim == 0 else len(rows)
        self.decoded[0] += count
        if self.decoded[0] > self.budget:
            raise AssertionError(f"decoded {self.decoded[0]} images, more than the {self.budget} measured")
        return self.images[rows].clone()

    def take(self, index) -> FakeLazy:
        view = FakeLazy(self.images, self.budget, self.bad, self.rows[torch.as_tensor(index)])
        view.decoded = self.decoded
        return view

    def decodable(self, index: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        keep = [int(i) for i in index if int(self.rows[i]) not in self.bad]
        return torch.tensor(keep, dtype=torch.int64), [f"img{int(self.rows[i])}.jpg" for i in index
                                                          if int(self.rows[i]) in self.bad]


def _streamed(data: ImageData, budget: int, bad: tuple[int, ...] = ()) -> ImageData:
    size = data.test_x.shape[-1]
    return dataclasses.replace(data, train_x=FakeLazy(data.train_x, budget), test_x=FakeLazy(data.test_x, budget, bad),
                               val_x=None, val_y=None, streamed=True, image_size=size)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_data_command_lists_the_stream_options(command):
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for flag in ("--stream", "--image-size", "--skip-bad"):
        assert flag in result.output, (command, flag)


class _Reached(Exception):
    pass


@pytest.mark.parametrize("command", COMMANDS)
def test_the_options_reach_load_dataset(command, tiny_ckpt, tmp_path, monkeypatch):
    """Flags (and the same keys in a --config file) arrive as load_dataset's keyword arguments."""
    seen: dict = {}

    def spy(spec, *args, **kwargs):
        seen.update(kwargs, spec=spec)
        raise _Reached

    for module in ("advcli.data.for_checkpoint", "advcli.train.loop", "advcli.check_loader.checks"):
        monkeypatch.setattr(f"{module}.load_dataset", spy)
    dataset = f"folder:{tmp_path}"
    config = tmp_path / "view.yaml"
    config.write_text("image-size: 64\nskip_bad: true\n")
    args = {
        "train": ["train", "-o", str(tmp_path / "m.safetensors")],
        "adv-train": ["adv-train", "--eps", "8/255", "-o", str(tmp_path / "m.safetensors")],
        "eval": ["eval", str(tiny_ckpt)],
        "attack": ["attack", str(tiny_ckpt), "--out", str(tmp_path / "adv.safetensors")],
        "audit": ["audit", str(tiny_ckpt)],
        "landscape": ["landscape", str(tiny_ckpt), "--out", str(tmp_path / "l.yaml")],
        "check-loader": ["check-loader"],
    }[command]
    result = CliRunner().invoke(app, [*args, "--dataset", dataset, "--stream", "on", "--config", str(config)])
    assert isinstance(result.exception, _Reached), result.output
    assert seen["spec"] == dataset
    assert (seen["stream"], seen["image_size"], seen["skip_bad"]) == ("on", 64, True)


def test_image_size_asks_for_streaming_and_is_refused_where_it_cannot_apply():
    assert DataView(image_size=96).load_kwargs("folder:x")["stream"] == "on"
    assert DataView().load_kwargs("folder:x") == {"stream": "auto", "image_size": None, "skip_bad": False}
    with pytest.raises(UsageError, match="drop one of the two"):
        DataView(stream="off", image_size=96).load_kwargs("folder:x")
    with pytest.raises(UsageError, match="synthetic is read at its own size"):
        DataView(image_size=96).load_kwargs("synthetic")


def test_cli_refuses_image_size_for_in_memory_data_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["train", "--dataset", "synthetic", "--image-size", "64",
                                      "-o", str(tmp_path / "m.safetensors")])
    assert result.exit_code == 2
    assert "--image-size" in result.output and "Traceback" not in result.output


def test_training_records_the_view_and_the_checkpoint_rebuilds_it(synthetic_data, tmp_path, monkeypatch):
    """The resolved view (stream on, the size) goes into the checkpoint's config; without flags a
    later stage asks load_dataset for it; flags override it."""
    data = dataclasses.replace(synthetic_data, name=f"folder:{tmp_path}", streamed=True,
                               image_size=int(synthetic_data.train_x.shape[-1]))
    out = tmp_path / "m.safetensors"
    fit(TrainOptions(arch="tiny-cnn", epochs=1, batch_size=100, augment="none", n_train=200, out=str(out)), data, CPU)
    meta = read_metadata(out)
    assert (meta["config"]["stream"], meta["config"]["image_size"]) == ("on", data.image_size)

    calls: list[dict] = []

    def spy(spec, *args, **kwargs):  # the streamed data at the size asked for
        calls.append(kwargs)
        size = kwargs["image_size"] or data.image_size
        return dataclasses.replace(data, train_x=FakeLazy(torch.zeros(2, 3, size, size, dtype=torch.uint8), 0),
                                   image_size=size)

    monkeypatch.setattr("advcli.data.for_checkpoint.load_dataset", spy)
    dataset_for_checkpoint(meta, name="m")
    assert (calls[-1]["stream"], calls[-1]["image_size"]) == ("on", data.image_size)
    with pytest.raises(DataError, match=f"pass --image-size {data.image_size}"):
        dataset_for_checkpoint(meta, name="m", view=DataView(image_size=2 * data.image_size))
    assert calls[-1]["image_size"] == 2 * data.image_size  # asked for; the shape check refuses it
    dataset_for_checkpoint(meta, name="m", view=DataView(stream="off"))
    assert (calls[-1]["stream"], calls[-1]["image_size"]) == ("off", None)


def test_in_memory_training_records_stream_off(synthetic_data, tmp_path):
    out = tmp_path / "m.safetensors"
    fit(TrainOptions(arch="tiny-cnn", epochs=1, batch_size=100, augment="none", n_train=100, out=str(out)),
        synthetic_data, CPU)
    assert (read_metadata(out)["config"]["stream"], read_metadata(out)["config"]["image_size"]) == ("off", None)


def test_a_model_trained_at_one_size_refuses_streamed_data_at_another_naming_image_size(synthetic_data):
    data = dataclasses.replace(synthetic_data, train_x=FakeLazy(torch.zeros(4, 3, 224, 224, dtype=torch.uint8), 0),
                               streamed=True, image_size=224)
    meta = {"num_classes": data.num_classes, "input_shape": [3, 64, 64]}
    with pytest.raises(DataError, match=r"expects images of shape \[3, 64, 64\].*\[3, 224, 224\]; pass --image-size 64"):
        check_fits(meta, "m.safetensors", data)


def test_n_train_cuts_a_streamed_training_set_as_a_view(synthetic_data):
    data = _streamed(synthetic_data, budget=0)
    s = setup(TrainOptions(arch="tiny-cnn", n_train=100, augment="device"), data, CPU)
    assert isinstance(s.x, FakeLazy) and len(s.x) == 100 == len(s.y)
    assert data.train_x.decoded[0] == 0


def test_eval_decodes_only_the_examples_it_measures_and_skips_bad_files(tiny_ckpt, synthetic_data):
    from advcli.evaluate.run import EvalOptions, run_eval

    n, bad = 40, (5,)
    data = _streamed(synthetic_data, budget=n)
    res = run_eval(tiny_ckpt, EvalOptions(n=n, subset="first", pgd=False, view=DataView(skip_bad=True)),
                   device=CPU, data=dataclasses.replace(data, test_x=FakeLazy(synthetic_data.test_x, n, bad)))
    assert res.data.n == n - len(bad) and res.data.skipped_bad == ["img5.jpg"]
    assert res.to_dict()["data"]["skipped_bad"] == ["img5.jpg"]
    assert res.data.image_size == data.image_size


def test_attack_audit_and_landscape_decode_only_their_examples(tiny_ckpt, synthetic_data):
    from advcli.attacks.run import AttackOptions, attack_checkpoint
    from advcli.audit import run_audit
    from advcli.landscape.run import LandscapeOptions, LandscapeSettings, run_landscape

    n = 16
    spec = AttackSpec("fgsm", "linf", "4/255", keep="first-success")
    out = attack_checkpoint(tiny_ckpt, AttackOptions(spec=spec, n=n), device=CPU, data=_streamed(synthetic_data, n))
    assert out.summary["data"]["n"] == n and out.summary["data"]["image_size"] == synthetic_data.test_x.shape[-1]
    # The audit runs user-facing output checks on two examples first.
    res = run_audit(tiny_ckpt, AuditOptions(n=n, checks=(CheckName.single_step,)), device=CPU,
                    data=_streamed(synthetic_data, n + 2))
    assert res.data.n == n
    run = run_landscape([tiny_ckpt], LandscapeOptions(settings=LandscapeSettings(points=3), n=n), device=CPU,
                        data=_streamed(synthetic_data, n))
    assert run.data["n"] == n
