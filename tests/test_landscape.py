"""`advcli landscape`: filter-normalised directions, grid evaluation, flatness, plots, CLI.

References are computed independently of the code under test: per-filter norms by explicit
loops, grid points by moving a deep copy of the model by hand, the top Hessian eigenvalue from
the full Hessian matrix.
"""

from __future__ import annotations

import copy
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from advcli.checkpoint import load_checkpoint, model_metadata, save_checkpoint, save_tensors
from advcli.cli.app import app
from advcli.errors import CheckpointError
from advcli.landscape import (
    BNMode,
    PointEvaluator,
    filter_normalize,
    gaussian_directions,
    hessian_top_eigenvalue,
    load_directions,
    loss_increase,
    pool_seeds,
    save_directions,
)
from advcli.landscape.flatness import Flatness
from advcli.landscape.fold import conv_bn_pairs
from advcli.landscape.grid import make_batches
from advcli.models import Classifier, build_model
from advcli.plots_landscape import DPI, PANEL_IN, plot_landscape
from advcli.stages.landscape import LandscapeSettings, compute_landscape, read_document

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one thread avoids thread wake-up stalls on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(seed: int = 0, num_classes: int = 10) -> Classifier:
    """A random tiny-cnn with confident outputs (a loss far from log(classes) everywhere)."""
    torch.manual_seed(seed)
    model = build_model("tiny-cnn", num_classes, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]).eval()
    with torch.no_grad():
        model.net[-1].weight.mul_(8.0)
    return model


def _images(n: int = 64, size: int = 12, classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


def _ref_direction(raw: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Filter normalisation written out filter by filter; 1-D parameters get zero."""
    out = {}
    for name, p in model.named_parameters():
        d = raw[name].clone().double()
        if p.dim() <= 1:
            d.zero_()
        else:
            for i in range(p.shape[0]):
                d[i] *= p[i].detach().double().norm() / d[i].norm()
        out[name] = d.float()
    return out


def _loss_at(model: nn.Module, dirs, coeffs, x, y) -> float:
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in moved.named_parameters():
            for c, d in zip(coeffs, dirs, strict=True):
                p += c * d[name]
        return F.cross_entropy(moved(x), y).item()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- directions ------------------------------------------------------------------------------


def test_filter_norms_equal_weight_norms() -> None:
    model = _tiny()
    raw = gaussian_directions(model, 1, seed=3)[0]
    d = filter_normalize(raw, model)
    checked = 0
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            for i in range(p.shape[0]):
                assert d[name][i].norm().item() == pytest.approx(p[i].norm().item(), rel=1e-5)
                checked += 1
            # Not a trivial copy of the weights: a random direction.
            assert not torch.allclose(d[name], p.detach())
        else:
            assert torch.count_nonzero(d[name]) == 0, f"{name} should not move by default"
    assert checked == 16 + 32 + 32 + 10  # every conv filter and every linear row


def test_include_bias_bn_gives_one_dimensional_parameters_their_norm() -> None:
    model = _tiny()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-1.0, 1.0)
    raw = gaussian_directions(model, 1, seed=3)[0]
    d = filter_normalize(raw, model, include_bias_bn=True)
    plain = filter_normalize(raw, model)
    for name, p in model.named_parameters():
        if p.dim() == 1:
            assert d[name].norm().item() == pytest.approx(p.norm().item(), rel=1e-5)
        else:  # the weights' directions do not depend on the option
            assert torch.equal(d[name], plain[name])


def test_same_seed_same_directions_and_the_draw_order_is_documented() -> None:
    a, b = _tiny(seed=0), _tiny(seed=1)  # same architecture, different weights
    da = gaussian_directions(a, 2, seed=7)
    db = gaussian_directions(b, 2, seed=7)
    other = gaussian_directions(a, 2, seed=8)
    gen = torch.Generator().manual_seed(7)
    for k in range(2):
        for name, p in a.named_parameters():
            assert torch.equal(da[k][name], db[k][name])
            assert not torch.equal(da[k][name], other[k][name])
            # N(0,1) draws from one CPU generator, parameter by parameter, direction by direction.
            assert torch.equal(da[k][name], torch.randn(tuple(p.shape), generator=gen))
    assert not torch.equal(da[0]["net.0.weight"], da[1]["net.0.weight"])


def test_directions_file_round_trip_and_wrong_architecture(tmp_path: Path) -> None:
    model = _tiny()
    raw = gaussian_directions(model, 2, seed=5)
    path = save_directions(tmp_path / "dirs.safetensors", raw, {"seed": 5, "arch": "tiny-cnn"})
    back, meta = load_directions(path)
    assert meta["schema"] == "advcli.directions/1" and meta["seed"] == 5 and meta["count"] == 2
    for k in range(2):
        assert back[k].keys() == raw[k].keys()
        for name in raw[k]:
            assert torch.equal(back[k][name], raw[k][name])
    other = build_model("small-cnn", 10)
    with pytest.raises(CheckpointError, match="another architecture"):
        filter_normalize(back[0], other)
    save_tensors(tmp_path / "foreign.safetensors", {"w": torch.zeros(2)}, {"schema": "x"})
    with pytest.raises(CheckpointError, match="not an advcli directions file"):
        load_directions(tmp_path / "foreign.safetensors")


# ---- grid evaluation -------------------------------------------------------------------------


def test_centre_reproduces_the_models_own_loss_and_weights_are_restored() -> None:
    model = _tiny()
    x, y = _images()
    with torch.no_grad():
        logits = model(x)
    ref_loss = F.cross_entropy(logits, y).item()
    ref_acc = (logits.argmax(1) == y).float().mean().item()
    before = _state(model)
    raw = gaussian_directions(model, 1, seed=0)
    settings = LandscapeSettings(dim=1, points=5, batch_size=24)
    out = compute_landscape(model, x, y, raw, settings, device=CPU)
    assert out.center.loss == pytest.approx(ref_loss, rel=1e-5)
    # Another batch size (24 against 64) may take another kernel: one near-tie may flip.
    assert out.center.accuracy == pytest.approx(ref_acc, abs=1 / len(y) + 1e-9)
    assert out.loss[2] == pytest.approx(ref_loss, rel=1e-5)  # grid -1, -0.5, 0, 0.5, 1
    assert out.flatness.center_loss == out.center.loss
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
        assert after[k].is_contiguous(), f"{k} left in another memory layout"


def test_grid_points_match_moving_the_weights_by_hand() -> None:
    model = _tiny()
    x, y = _images(n=40)
    raw = gaussian_directions(model, 2, seed=11)
    ref_dirs = [_ref_direction(r, model) for r in raw]
    settings = LandscapeSettings(dim=2, lo=-0.5, hi=0.5, points=3, batch_size=16)
    out = compute_landscape(model, x, y, raw, settings, device=CPU)
    assert out.loss.shape == (3, 3)
    coords = [-0.5, 0.0, 0.5]
    for j, b in enumerate(coords):  # rows follow the second direction
        for i, a in enumerate(coords):
            ref = _loss_at(model, ref_dirs, (a, b), x, y)
            assert out.loss[j, i] == pytest.approx(ref, rel=2e-4), (a, b)
    assert out.loss.max() > out.loss[1, 1]  # the directions really move the model


def test_filter_normalisation_makes_the_landscape_scale_invariant() -> None:
    """Rescaling conv filters in front of BatchNorm changes the weights but not the function;
    filter-normalised directions scale with the filters, so the landscape is unchanged."""
    model = _tiny()
    x, y = _images(n=48)
    with torch.no_grad():  # make the running statistics non-trivial first
        bn = model.net[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    scaled = copy.deepcopy(model)
    c = torch.linspace(0.3, 5.0, 16)
    with torch.no_grad():
        scaled.net[0].weight.mul_(c.view(-1, 1, 1, 1))
        scaled.net[1].running_mean.mul_(c)
        scaled.net[1].running_var.mul_(c**2)
    raw = gaussian_directions(model, 1, seed=2)
    settings = LandscapeSettings(dim=1, points=5, batch_size=48)
    a = compute_landscape(model, x, y, raw, settings, device=CPU)
    b = compute_landscape(scaled, x, y, raw, settings, device=CPU)
    np.testing.assert_allclose(b.loss, a.loss, rtol=1e-3)
    assert a.loss.max() - a.loss.min() > 0.01


def test_weights_restored_when_the_run_fails() -> None:
    class Boom:
        def __init__(self) -> None:
            self.calls = 0

        def start(self, description: str, total: int | None) -> None:
            pass

        def advance(self, n: int = 1) -> None:
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("boom")

        def finish(self) -> None:
            pass

        def log(self, message: str) -> None:
            pass

    model = _tiny()
    model.train()  # a caller's mode is restored too
    before = _state(model)
    x, y = _images(n=16)
    settings = LandscapeSettings(dim=1, points=4, bn=BNMode.recompute)
    with pytest.raises(RuntimeError, match="boom"):
        compute_landscape(
            model, x, y, gaussian_directions(model, 1, 0), settings, device=CPU, reporter=Boom()
        )
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(m.training for m in model.modules())


def test_batchnorm_folding_computes_the_same_landscape() -> None:
    model = _tiny()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    assert conv_bn_pairs(model) == [("net.0", "net.1"), ("net.4", "net.5"), ("net.8", "net.9")]
    x, y = _images(n=32)
    raw = gaussian_directions(model, 2, 1)
    fast = LandscapeSettings(dim=2, points=3, batch_size=32)
    slow = LandscapeSettings(dim=2, points=3, batch_size=32, fold_bn=False)
    a = compute_landscape(model, x, y, raw, fast, device=CPU)
    b = compute_landscape(model, x, y, raw, slow, device=CPU)
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-5)
    # Folded and unfolded are different kernels: an example whose top two logits tie to the
    # last bits may go either way, so one example a point may differ; a broken fold moves many.
    np.testing.assert_allclose(a.accuracy, b.accuracy, rtol=0, atol=1 / len(y) + 1e-9)
    assert a.loss.max() > 1.05 * a.loss.min()


def test_points_are_written_in_place() -> None:
    model = _tiny()
    x, y = _images(n=8)
    dirs = [filter_normalize(d, model) for d in gaussian_directions(model, 2, 0)]
    ptrs = [p.data_ptr() for p in model.parameters()]
    with PointEvaluator(model, dirs, make_batches(x, y, 8, CPU)) as ev:
        ev.set_point([0.3, -0.2])
        assert [p.data_ptr() for p in model.parameters()] == ptrs
        moved = model.net[0].weight.detach().clone()
        ev.set_point([0.0, 0.0])
        assert not torch.equal(moved, model.net[0].weight)


def test_bn_recompute_ignores_the_stored_statistics() -> None:
    model = _tiny()
    x, y = _images(n=64)
    raw = gaussian_directions(model, 1, 0)
    settings = LandscapeSettings(dim=1, points=3, batch_size=32)
    recompute = LandscapeSettings(dim=1, points=3, batch_size=32, bn=BNMode.recompute)
    good_eval = compute_landscape(model, x, y, raw, settings, device=CPU)
    good_rec = compute_landscape(model, x, y, raw, recompute, device=CPU)
    broken = copy.deepcopy(model)
    with torch.no_grad():
        for m in broken.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.2, 3.0)
    stored = _state(broken)
    bad_eval = compute_landscape(broken, x, y, raw, settings, device=CPU)
    bad_rec = compute_landscape(broken, x, y, raw, recompute, device=CPU)
    assert abs(bad_eval.center.loss - good_eval.center.loss) > 0.01
    np.testing.assert_allclose(bad_rec.loss, good_rec.loss, rtol=1e-5)
    for k, v in broken.state_dict().items():
        assert torch.equal(v, stored[k]), k  # the broken statistics are put back


# ---- flatness --------------------------------------------------------------------------------


def _two_unit_groups(active: int, hidden: int = 16, dim: int = 48) -> Classifier:
    """A 1-hidden-layer net computing the same function with `active` redundant copies of
    each of two detector units (output weights 1/active): more copies = a flatter minimum."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(dim, generator=g)
    u = (u - u.mean()) / (u - u.mean()).norm()
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(dim, hidden, bias=False),
        nn.ReLU(),
        nn.Linear(hidden, 2, bias=False),
    )
    with torch.no_grad():
        net[1].weight.zero_()
        net[3].weight.zero_()
        net[1].weight[:active] = 3.0 * u
        net[1].weight[active : 2 * active] = -3.0 * u
        net[3].weight[1, :active] = 4.0 / active
        net[3].weight[0, active : 2 * active] = 4.0 / active
    model = Classifier(net, [0.0] * 3, [1.0] * 3).eval()
    model.u = u  # type: ignore[assignment]
    return model


def _two_class_data(u: torch.Tensor, n: int = 256):
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 2, (n,), generator=g)
    noise = 0.02 * torch.randn(n, len(u), generator=g)
    x = 0.5 + 0.25 * (2 * y - 1).float()[:, None] * u[None] + noise
    return x.clamp(0, 1).view(n, 3, -1, 1), y


def test_flatness_orders_a_sharp_and_a_flat_minimum() -> None:
    sharp, flat = _two_unit_groups(1), _two_unit_groups(8)
    x, y = _two_class_data(sharp.u)
    batches = make_batches(x, y, 128, CPU)
    with torch.no_grad():  # the same function: the same loss at the centre
        assert torch.allclose(sharp(x), flat(x), atol=1e-5)
    for seed in (0, 1, 2):
        numbers = {}
        for name, model in (("sharp", sharp), ("flat", flat)):
            dirs = [filter_normalize(d, model) for d in gaussian_directions(model, 8, seed)]
            with PointEvaluator(model, dirs, batches) as ev:
                numbers[name] = loss_increase(ev, 0.5)
        assert numbers["sharp"].increase_mean > 1.5 * numbers["flat"].increase_mean, seed
        assert numbers["sharp"].increase_max > numbers["flat"].increase_max, seed
        assert len(numbers["flat"].increases) == 16
    eig_sharp = hessian_top_eigenvalue(sharp, batches).eigenvalue
    eig_flat = hessian_top_eigenvalue(flat, batches).eigenvalue
    assert eig_sharp > 3 * eig_flat > 0


def test_pool_seeds_gives_per_seed_means_and_their_spread() -> None:
    parts = [Flatness(0.1, 1.0, inc, sum(inc) / 2, max(inc))
             for inc in ([0.1, 0.3], [0.0, 0.1], [0.4, 0.5])]
    f = pool_seeds(parts, [3, 4, 5])
    assert f.seeds == [3, 4, 5] and f.increases == [0.1, 0.3, 0.0, 0.1, 0.4, 0.5]
    assert f.seed_means == pytest.approx([0.2, 0.05, 0.45])
    assert f.increase_mean == pytest.approx(1.4 / 6) and f.increase_max == 0.5
    assert f.seed_sd == pytest.approx(statistics.stdev([0.2, 0.05, 0.45]))
    assert (f.seed_min, f.seed_max) == (pytest.approx(0.05), pytest.approx(0.45))
    one = pool_seeds(parts[:1], [3])
    assert one.seed_sd is None and one.increase_mean == parts[0].increase_mean
    with pytest.raises(ValueError, match="one radius"):
        pool_seeds([parts[0], Flatness(0.2, 1.0, [0.1, 0.2], 0.15, 0.2)])


def test_flatness_seeds_follow_each_seeds_direction_and_leave_the_grid_alone() -> None:
    """Seeds 4, 5, 6: the first draws the grid, each gives the loss increase at ±r along its own
    filter-normalised direction (checked by moving a copy of the model by hand)."""
    model = _tiny()
    x, y = _images(n=40)
    before = _state(model)
    settings = LandscapeSettings(dim=1, points=3, batch_size=40, radius=0.3)
    raws = [gaussian_directions(model, 1, s) for s in (4, 5, 6)]
    single = compute_landscape(model, x, y, raws[0], settings, device=CPU)
    out = compute_landscape(model, x, y, raws[0], settings, device=CPU,
                            more_directions=raws[1:], seeds=[4, 5, 6])
    np.testing.assert_array_equal(out.loss, single.loss)
    f = out.flatness
    assert f.seeds == [4, 5, 6] and len(f.increases) == 6
    assert f.increases[:2] == single.flatness.increases
    centre = F.cross_entropy(model(x), y).item()
    for k, raw in enumerate(raws):
        ref = [_loss_at(model, [_ref_direction(raw[0], model)], (c,), x, y) - centre
               for c in (0.3, -0.3)]
        assert f.increases[2 * k : 2 * k + 2] == pytest.approx(ref, rel=2e-3, abs=1e-5), k
        assert f.seed_means[k] == pytest.approx(sum(ref) / 2, rel=2e-3, abs=1e-5)
    assert len(set(f.seed_means)) == 3  # three different draws
    assert f.seed_sd == pytest.approx(statistics.stdev(f.seed_means))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="2 seeds for 3"):
        compute_landscape(model, x, y, raws[0], settings, device=CPU,
                          more_directions=raws[1:], seeds=[4, 5])


def test_hessian_power_iteration_matches_the_full_hessian() -> None:
    model = _two_unit_groups(1, hidden=3, dim=12)
    x, y = _two_class_data(model.u, n=64)
    params = dict(model.named_parameters())
    names = list(params)
    shapes = [params[k].shape for k in names]
    sizes = [params[k].numel() for k in names]

    def loss_of(flat_w: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(flat_w, sizes)
        ws = {k: c.view(s) for k, c, s in zip(names, chunks, shapes, strict=True)}
        return F.cross_entropy(torch.func.functional_call(model, ws, (x,)), y)

    w0 = torch.cat([params[k].detach().flatten() for k in names]).double()
    model.double()
    x = x.double()
    hess = torch.autograd.functional.hessian(loss_of, w0)
    eig = torch.linalg.eigvalsh(hess)
    top = eig[eig.abs().argmax()].item()
    est = hessian_top_eigenvalue(
        model, [(x, y)], iterations=500, tol=1e-9, seed=0
    )
    assert est.converged
    assert est.eigenvalue == pytest.approx(top, rel=1e-4)


# ---- plots -----------------------------------------------------------------------------------


def _doc(dim: int, labels: list[str]) -> dict:
    xs = [-1.0, -0.5, 0.0, 0.5, 1.0]
    entries = []
    for k, label in enumerate(labels):
        a = np.asarray(xs)
        bowl = a**2 if dim == 1 else a[None] ** 2 + a[:, None] ** 2
        loss = (1 + k) * bowl + 0.1
        entries.append(
            {
                "label": label, "trained_with": "clean", "center": {"loss": 0.1, "accuracy": 0.9},
                "loss": loss.tolist(), "accuracy": (0.9 - loss / 10).tolist(),
            }
        )
    return {
        "schema": "advcli.landscape/1", "dim": dim,
        "grid": {"x": xs, "y": xs if dim == 2 else None}, "bn": "eval",
        "data": {"kind": "clean", "n": 10}, "checkpoints": entries,
    }


@pytest.mark.parametrize("dim", [1, 2])
def test_plots_exist_with_a_sane_size(tmp_path: Path, dim: int) -> None:
    path = plot_landscape(_doc(dim, ["a", "b"]), tmp_path / f"l{dim}.png")
    assert path.stat().st_size > 10_000
    with Image.open(path) as im:
        w, h = im.size
        pixels = np.asarray(im.convert("L"), dtype=float)
    if dim == 1:
        assert (w, h) == (round(2 * PANEL_IN[0] * DPI), round(PANEL_IN[1] * DPI))
    else:  # two checkpoints: two columns (contour, surface) plus the colour bar
        assert (w, h) == (round((2 * PANEL_IN[0] + 1.0) * DPI), round(2 * PANEL_IN[1] * DPI))
    assert pixels.std() > 10  # something was drawn


# ---- CLI -------------------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture(scope="module")
def folder_ckpts(tmp_path_factory: pytest.TempPathFactory):
    """A 3-class 8x8 image-folder dataset and two random tiny-cnn checkpoints on it."""
    root = tmp_path_factory.mktemp("landscape")
    mp = pytest.MonkeyPatch()
    mp.setenv("ADVCLI_CACHE", str(root / "cache"))
    rng = np.random.default_rng(0)
    data = root / "images"
    for split, per_class in (("train", 4), ("test", 20)):
        for c in range(3):
            folder = data / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                img[..., c] = np.clip(img[..., c].astype(int) + 120, 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.png")
    paths = []
    for seed, label in ((0, "alpha"), (1, "beta")):
        model = _tiny(seed, num_classes=3)
        meta = model_metadata(
            arch="tiny-cnn", num_classes=3, dataset=f"folder:{data}", mean=[0.5] * 3,
            std=[0.25] * 3, input_shape=(3, 8, 8), seed=0, label=label, threat_model=None,
        )
        paths.append(save_checkpoint(root / f"{label}.safetensors", model, meta))
    yield root, data, paths
    mp.undo()


def _reference_loss(ckpt: Path, data: Path, n: int) -> float:
    from advcli.data import load_dataset, test_subset, to_float

    images = load_dataset(f"folder:{data}")
    idx = test_subset(images.test_y, n, 0)
    model = load_checkpoint(ckpt).model
    with torch.no_grad():
        return F.cross_entropy(model(to_float(images.test_x[idx])), images.test_y[idx]).item()


def test_cli_1d_two_checkpoints(folder_ckpts) -> None:
    root, data, (a, b) = folder_ckpts
    out, png = root / "one.yaml", root / "one.png"
    res = runner.invoke(
        app,
        ["landscape", str(a), str(b), "--points", "5", "--n", "30", "--out", str(out),
         "--plot", str(png), "--device", "cpu", "--radius", "0.2"],
    )
    assert res.exit_code == 0, res.output
    doc = read_document(out)
    assert doc["schema"] == "advcli.landscape/1" and doc["dim"] == 1
    assert doc["grid"]["x"] == [-1.0, -0.5, 0.0, 0.5, 1.0] and doc["grid"]["y"] is None
    assert [c["label"] for c in doc["checkpoints"]] == ["alpha", "beta"]
    assert set(doc["flatness"]) == {"alpha", "beta"}
    for entry, ckpt in zip(doc["checkpoints"], (a, b), strict=True):
        ref = _reference_loss(ckpt, data, 30)
        assert entry["center"]["loss"] == pytest.approx(ref, rel=1e-5)
        assert entry["loss"][2] == pytest.approx(ref, rel=1e-5)
        assert all(isinstance(v, float) for v in entry["loss"] + entry["accuracy"])
        f = doc["flatness"][entry["label"]]
        assert f["radius"] == 0.2 and len(f["increases"]) == 2
        assert f["increase_max"] == max(f["increases"])
        assert f["hessian_top_eigenvalue"] is None
    assert doc["data"] == {**doc["data"], "kind": "clean", "n": 30, "split": "test"}
    assert doc["directions"]["seed"] == 0 and doc["directions"]["normalization"] == "filter"
    assert doc["provenance"]["argv"]
    with Image.open(png) as im:
        assert im.size[0] > 400 and im.size[1] > 200
    assert "alpha" in res.stdout and "Δloss" in res.stdout


def test_cli_2d_directions_file_is_written_then_reused(folder_ckpts) -> None:
    root, _, (a, _) = folder_ckpts
    dirs = root / "dirs.safetensors"
    runs = []
    for k in range(2):
        out = root / f"two{k}.yaml"
        args = ["landscape", str(a), "--dim", "2", "--points", "3", "--n", "15", "--range",
                "-0.5:0.5", "--directions", str(dirs), "--out", str(out), "--device", "cpu",
                "--directions-seed", str(4 + k)]
        if k == 0:
            args += ["--plot", str(root / "two.png"), "--hessian", "--hessian-iters", "2"]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert ("applies only when the file is created" in res.output) == (k == 1)
        runs.append(read_document(out))
    assert dirs.is_file() and (root / "two.png").stat().st_size > 10_000
    # The second run read the file (seed 4), not its own --directions-seed 5.
    assert runs[1]["directions"]["seed"] == 4
    assert runs[0]["directions"]["file_sha256"] == runs[1]["directions"]["file_sha256"]
    assert runs[0]["checkpoints"][0]["loss"] == runs[1]["checkpoints"][0]["loss"]
    grid = np.asarray(runs[0]["checkpoints"][0]["loss"])
    assert grid.shape == (3, 3)
    assert isinstance(runs[0]["flatness"]["alpha"]["hessian_top_eigenvalue"], float)


def test_cli_flatness_seeds_are_the_same_for_every_checkpoint_and_every_call(folder_ckpts) -> None:
    root, _, (a, b) = folder_ckpts
    common = ["--points", "3", "--n", "20", "--device", "cpu", "--radius", "0.3"]

    def run(*args: str) -> dict:
        out = root / f"fs-{len(list(root.glob('fs-*.yaml')))}.yaml"
        res = runner.invoke(app, ["landscape", str(a), str(b), *common, *args, "--out", str(out)])
        assert res.exit_code == 0, res.output
        return {"doc": read_document(out), "stdout": res.stdout, "path": out}

    five = run("--directions-seed", "2", "--flatness-seeds", "5")
    doc = five["doc"]
    assert doc["directions"]["flatness_seeds"] == [2, 3, 4, 5, 6]
    for label in ("alpha", "beta"):
        f = doc["flatness"][label]
        assert f["seeds"] == [2, 3, 4, 5, 6] and len(f["increases"]) == 10
        assert f["seed_sd"] == pytest.approx(statistics.stdev(f["seed_means"]))
        assert f["increase_mean"] == pytest.approx(statistics.mean(f["seed_means"]))
        assert (f["seed_min"], f["seed_max"]) == (min(f["seed_means"]), max(f["seed_means"]))
    assert "direction seeds (2–6)" in five["stdout"] and "±" in five["stdout"]
    # compare reads the five samples per model and tests a claim on them seed by seed.
    from advcli.stages import compare as cmp
    from advcli.stages.claims import check_claims, parse_claim

    [table] = cmp.compare([cmp.load_input(five["path"])])
    assert [r.n for r in table.rows] == [5, 5]
    claim = parse_claim({"claim": "c", "table": "flatness", "check": "min", "row": "alpha"},
                        where="c")
    [verdict] = check_claims([claim], [table])
    assert "paired over 5 direction seeds" in verdict.detail
    # Seed 4 alone, in another call, measures exactly what the third seed above measured: files
    # made in separate calls pair up by seed. The grid keeps the first seed.
    alone = run("--directions-seed", "4")["doc"]
    first = run("--directions-seed", "2")["doc"]
    for label in ("alpha", "beta"):
        assert alone["flatness"][label]["seeds"] == [4] and alone["flatness"][label]["seed_sd"] is None
        assert alone["flatness"][label]["increases"] == doc["flatness"][label]["increases"][4:6]
    assert first["checkpoints"][0]["loss"] == doc["checkpoints"][0]["loss"]

    # A directions file read back: the further seeds follow the file's seed, not --directions-seed.
    dirs = root / "fs-dirs.safetensors"
    run("--directions-seed", "7", "--directions", str(dirs))
    read = run("--directions-seed", "0", "--directions", str(dirs), "--flatness-seeds", "2")["doc"]
    assert read["flatness"]["alpha"]["seeds"] == [7, 8]
    assert read["directions"]["flatness_seeds"] == [7, 8]
    unseeded = save_directions(root / "fs-unseeded.safetensors",
                               gaussian_directions(load_checkpoint(a).model, 1, 0), {})
    res = runner.invoke(app, ["landscape", str(a), *common, "--directions", str(unseeded),
                              "--flatness-seeds", "2", "--out", str(root / "fs-never.yaml")])
    assert res.exit_code == 2 and "records no direction seed" in res.output


def test_cli_adversarial_data_recomputed_and_fixed(folder_ckpts) -> None:
    from advcli.attacks import AttackSpec, build_attack
    from advcli.config import Norm
    from advcli.data import load_dataset, test_subset, to_float

    root, data, (a, _) = folder_ckpts
    common = ["--points", "3", "--n", "20", "--device", "cpu", "--range", "0.5"]
    clean = root / "clean.yaml"
    res = runner.invoke(app, ["landscape", str(a), *common, "--out", str(clean)])
    assert res.exit_code == 0, res.output
    adv = root / "fgsm.yaml"
    res = runner.invoke(
        app, ["landscape", str(a), *common, "--data", "fgsm", "--eps", "8/255", "--out", str(adv)]
    )
    assert res.exit_code == 0, res.output
    c, d = read_document(clean), read_document(adv)
    assert d["data"]["kind"] == "attack" and d["data"]["attack"]["name"] == "fgsm"
    for i in range(3):  # the attack raises the loss at every point of the grid
        assert d["checkpoints"][0]["loss"][i] > c["checkpoints"][0]["loss"][i]

    # Fixed examples from an adversarial set: the centre is the loss on exactly those images.
    images = load_dataset(f"folder:{data}")
    idx = test_subset(images.test_y, 20, 0)
    x, y = to_float(images.test_x[idx]), images.test_y[idx]
    model = load_checkpoint(a).model
    attack = build_attack(AttackSpec(name="fgsm", norm=Norm.linf, eps="16/255"))
    x_adv = attack.perturb(model, x, y)
    set_path = root / "adv.safetensors"
    save_tensors(
        set_path, {"x_adv": x_adv, "y": y, "index": idx},
        {"schema": "advcli.advset/1", "attack": {"name": "fgsm"}, "dataset": images.name,
         "split": "test", "seed": 0, "checkpoint_sha256": "0" * 64},
    )
    fixed = root / "fixed.yaml"
    res = runner.invoke(
        app, ["landscape", str(a), *common, "--adv-data", str(set_path), "--out", str(fixed)]
    )
    assert res.exit_code == 0, res.output
    f = read_document(fixed)
    with torch.no_grad():
        ref = F.cross_entropy(model(x_adv), y).item()
    assert f["data"]["kind"] == "fixed" and f["data"]["adv_data"]["n"] == 20
    assert f["checkpoints"][0]["center"]["loss"] == pytest.approx(ref, rel=1e-5)
    res = runner.invoke(
        app, ["landscape", str(a), *common, "--adv-data", str(set_path), "--data", "pgd",
              "--out", str(root / "x.yaml")]
    )
    assert res.exit_code == 2 and "fgsm examples" in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dim", "3"], "--dim must be 1 or 2"),
        (["--range", "1:-1"], "LO < HI"),
        (["--range", "a:b"], "not LO:HI"),
        (["--points", "1"], "--points must be >= 2"),
        (["--data", "cw"], "unknown --data"),
        (["--bn", "train"], "valid values: eval, recompute"),
        (["--data", "fgsm", "--steps", "5"], "fgsm is one step"),
        (["--radius", "0"], "--radius must be"),
        (["--flatness-seeds", "0"], "--flatness-seeds must be a count >= 1"),
    ],
)
def test_cli_usage_errors(folder_ckpts, args: list[str], message: str) -> None:
    root, _, (a, _) = folder_ckpts
    out = root / "never.yaml"
    res = runner.invoke(app, ["landscape", str(a), *args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not out.exists()


def test_cli_missing_checkpoint_and_config_file(folder_ckpts, tmp_path: Path) -> None:
    root, _, (a, _) = folder_ckpts
    res = runner.invoke(app, ["landscape", str(tmp_path / "nope.safetensors")])
    assert res.exit_code == 1 and "does not exist" in res.output
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"points": 3, "n": 10, "device": "cpu", "radius": 0.3}))
    out = tmp_path / "cfg_out.yaml"
    res = runner.invoke(app, ["landscape", str(a), "--config", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = read_document(out)
    assert doc["grid"]["points"] == 3 and doc["data"]["n"] == 10
    assert doc["flatness"]["alpha"]["radius"] == 0.3
    cfg.write_text(yaml.safe_dump({"pointz": 3}))
    res = runner.invoke(app, ["landscape", str(a), "--config", str(cfg)])
    assert res.exit_code == 2 and "pointz" in res.output


def test_stage_alone_loads_computes_and_leaves_writing_to_write_landscape(folder_ckpts) -> None:
    """`run_landscape` is the command's one stage call: it loads checkpoints, data and an
    adversarial set itself, reports its warnings in the result and writes nothing; then
    `write_landscape` writes all outputs or none."""
    from advcli.data import load_dataset
    from advcli.stages.landscape import LandscapeOptions, run_landscape, write_landscape

    root, data, (a, b) = folder_ckpts
    images = load_dataset(f"folder:{data}")
    idx = images.test_y.argsort()[:12]  # any 12 examples; the set keeps its own index
    x = images.test_x[idx].float() / 255
    set_path = save_tensors(
        root / "stage-adv.safetensors", {"x_adv": x, "y": images.test_y[idx], "index": idx},
        {"schema": "advcli.advset/1", "attack": {"name": "pgd"}, "dataset": images.name,
         "split": "test", "seed": 0, "checkpoint_sha256": "0" * 64},
    )
    dirs = root / "stage-dirs.safetensors"
    opts = LandscapeOptions(
        settings=LandscapeSettings(dim=1, points=3, batch_size=8), adv_data=set_path, n=10,
        directions=dirs,
    )
    run = run_landscape([a, load_checkpoint(b)], opts, device=CPU)
    assert [m.label for m in run.result.models] == ["alpha", "beta"]
    assert run.data["kind"] == "fixed" and run.data["n"] == 10 and run.data["attack"] == {"name": "pgd"}
    assert run.data["adv_data"]["n"] == 12
    assert run.warnings == [
        "the adversarial set was made against none of these checkpoints: its examples are "
        "transfer examples for all of them"
    ]
    assert run.new_directions is not None and not dirs.exists()  # drawn, not yet written
    model = load_checkpoint(a).model
    with torch.no_grad():
        ref = F.cross_entropy(model(x[:10]), images.test_y[idx][:10]).item()
    assert run.result.models[0].center.loss == pytest.approx(ref, rel=1e-5)

    # A failure while writing (the YAML path is a folder) removes what was already written.
    blocked = root / "stage-out"
    blocked.mkdir()
    with pytest.raises(OSError):
        write_landscape(run, blocked, root / "stage.png")
    assert not dirs.exists() and not (root / "stage.png").exists()

    doc, written = write_landscape(run, root / "stage.yaml")
    assert written == [dirs, root / "stage.yaml"] and dirs.is_file()
    assert doc["directions"]["file_sha256"] is not None
    assert read_document(root / "stage.yaml") == doc
