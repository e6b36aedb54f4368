"""`advcli attack` end to end: the adversarial set and the YAML summary round-trip (numbers
recomputed here from the files), the grid PNG, --config, and one-line errors that leave no
files behind."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from skimage.metrics import structural_similarity
from typer.testing import CliRunner

from advcli.cli.app import app
from advcli.data import test_subset, to_float
from advcli.errors import ResultsError
from advcli.formats.advset import load_adv_set
from advcli.formats.results import read_attack_summary as read_summary
from advcli.io import sha256_file
from advcli.models.checkpoint import load_checkpoint

METRICS = {
    "clean_accuracy",
    "robust_accuracy",
    "adv_accuracy",
    "success_rate",
    "linf_mean",
    "linf_max",
    "l2_mean",
    "l2_max",
    "ssim_dissimilarity_mean",
}
runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, ["attack", *map(str, args)])


def test_pgd_writes_an_adv_set_and_summary_that_round_trip(tiny_ckpt, synthetic_data, tmp_path):
    out, grid = tmp_path / "adv.safetensors", tmp_path / "grid.png"
    r = invoke(
        tiny_ckpt,
        "--attack",
        "pgd",
        "--eps",
        "8/255",
        "--steps",
        "5",
        "--n",
        "24",
        "--batch-size",
        "16",
        "--seed",
        "3",
        "--out",
        out,
        "--grid",
        grid,
    )
    assert r.exit_code == 0, r.stderr
    assert "adversarial accuracy" in r.stdout and "robust accuracy" in r.stdout

    s = read_summary(tmp_path / "adv.yaml")  # default: next to --out
    assert s["schema"] == "advcli.attack/1" and s["label"] == "tiny"
    assert s["checkpoint"]["sha256"] == sha256_file(tiny_ckpt)
    assert s["checkpoint"]["trained_with"] == "clean"
    eps = 8 / 255
    assert s["attack"]["name"] == "pgd" and s["attack"]["norm"] == "linf"
    assert s["attack"]["eps"] == pytest.approx(eps) and s["attack"]["eps_text"] == "8/255"
    assert s["attack"]["steps"] == 5 and s["attack"]["restarts"] == 1
    assert s["attack"]["keep"] == "first-success" and "every iterate" in s["robust_rule"]
    assert s["attack"]["step_size"] == pytest.approx(2.5 * eps / 5)
    assert {k: s["data"][k] for k in ("dataset", "split", "n", "seed")} == {
        "dataset": "synthetic",
        "split": "test",
        "n": 24,
        "seed": 3,
    }
    assert set(s["metrics"]) == METRICS
    assert all(type(v) is float for v in s["metrics"].values())
    assert s["outputs"] == {"adv": str(out), "grid": str(grid)}
    assert isinstance(s["time_s"], float) and "argv" in s["provenance"]

    adv = load_adv_set(out)
    index = test_subset(synthetic_data.test_y, 24, seed=3)
    assert adv.x_adv.dtype == torch.float32 and tuple(adv.x_adv.shape) == (24, 3, 32, 32)
    assert adv.y.dtype == torch.int64 and adv.index.dtype == torch.int64
    assert torch.equal(adv.index, index)
    assert torch.equal(adv.y, synthetic_data.test_y[index])
    assert adv.meta["schema"] == "advcli.advset/1"
    assert adv.meta["checkpoint_sha256"] == s["checkpoint"]["sha256"]
    assert (adv.meta["dataset"], adv.meta["split"], adv.meta["seed"]) == ("synthetic", "test", 3)
    assert adv.meta["attack"]["eps_text"] == "8/255"

    # The summary's numbers, recomputed from the written images.
    x = to_float(synthetic_data.test_x[index])
    model = load_checkpoint(tiny_ckpt).model
    with torch.no_grad():
        clean_ok = model(x).argmax(1) == adv.y
        adv_ok = model(adv.x_adv).argmax(1) == adv.y
    m = s["metrics"]
    assert m["clean_accuracy"] == pytest.approx(float(clean_ok.float().mean()))
    assert m["adv_accuracy"] == pytest.approx(float(adv_ok.float().mean()))
    assert m["adv_accuracy"] < m["clean_accuracy"]
    # first-success keeps a fooling image whenever some iterate fooled the model, so the kept
    # images decide: robust = clean-correct AND correct on the adversarial image
    assert m["robust_accuracy"] == pytest.approx(float((clean_ok & adv_ok).float().mean()))
    assert m["robust_accuracy"] <= min(m["clean_accuracy"], m["adv_accuracy"])
    assert m["success_rate"] == pytest.approx(float((clean_ok & ~adv_ok).sum() / clean_ok.sum()))
    delta = (adv.x_adv - x).flatten(1).double()
    assert m["linf_max"] == pytest.approx(float(delta.abs().max()), abs=1e-9)
    assert m["linf_max"] <= eps + 1e-6
    assert m["l2_mean"] == pytest.approx(float(delta.norm(dim=1).mean()), rel=1e-5)
    a = x.permute(0, 2, 3, 1).double().numpy()
    b = adv.x_adv.permute(0, 2, 3, 1).double().numpy()
    dssim = [1 - structural_similarity(a[i], b[i], channel_axis=-1, data_range=1.0) for i in range(24)]
    assert m["ssim_dissimilarity_mean"] == pytest.approx(float(np.mean(dssim)), rel=1e-9)
    assert m["ssim_dissimilarity_mean"] > 0

    # 8 examples x 1.6 in wide, 3 rows x 1.8 in tall, at 100 dpi.
    with Image.open(grid) as im:
        assert im.format == "PNG" and im.size == (1280, 540)


def test_stadv_on_the_train_split_with_yaml_on_stdout(tiny_ckpt, synthetic_data, tmp_path):
    out, summary = tmp_path / "st.safetensors", tmp_path / "sub" / "summary.yaml"
    r = invoke(
        tiny_ckpt,
        "--attack",
        "stadv",
        "--bound",
        "0.5",
        "--tau",
        "0.005",
        "--steps",
        "5",
        "--split",
        "train",
        "--n",
        "12",
        "--format",
        "yaml",
        "--out",
        out,
        "--summary",
        summary,
    )
    assert r.exit_code == 0, r.stderr
    doc = yaml.safe_load(r.stdout)
    assert doc == read_summary(summary)
    assert doc["attack"]["name"] == "stadv" and doc["attack"]["norm"] is None
    assert doc["attack"]["bound"] == 0.5 and doc["attack"]["bound_text"] == "0.5"
    assert doc["attack"]["tau"] == 0.005 and doc["attack"]["optimizer"] == "adam"
    assert doc["data"]["split"] == "train" and doc["data"]["n"] == 12
    adv = load_adv_set(out)
    assert torch.equal(adv.y, synthetic_data.train_y[adv.index])
    assert float(adv.x_adv.min()) >= 0 and float(adv.x_adv.max()) <= 1
    assert not (tmp_path / "st.yaml").exists()


def test_config_file_fills_options_and_flags_win(tiny_ckpt, tmp_path):
    cfg = tmp_path / "attack.yaml"
    cfg.write_text("attack: fgsm\neps: 4/255\nn: 8\nlabel: from-config\n")
    out = tmp_path / "a.safetensors"
    r = invoke(tiny_ckpt, "--config", cfg, "--eps", "2/255", "--out", out)
    assert r.exit_code == 0, r.stderr
    s = read_summary(tmp_path / "a.yaml")
    assert s["attack"]["name"] == "fgsm" and s["attack"]["eps_text"] == "2/255"
    assert s["data"]["n"] == 8 and s["label"] == "from-config"
    assert s["metrics"]["linf_max"] <= 2 / 255 + 1e-6

    cfg.write_text("attack: fgsm\nepsilon: 4/255\n")
    r = invoke(tiny_ckpt, "--config", cfg, "--out", tmp_path / "b.safetensors")
    assert r.exit_code == 2
    assert "unknown key(s) for `attack`: epsilon" in r.stderr


def test_the_attacks_listed_as_valid_are_the_ones_attack_runs(tiny_ckpt, tmp_path):
    # n-fgsm is training-only: `attack` refuses it, so neither the help nor the error lists it.
    r = invoke(tiny_ckpt, "--attack", "deepfool", "--n", "4", "--out", tmp_path / "adv.safetensors")
    assert r.exit_code == 2 and r.stderr.strip().endswith("valid values: fgsm, fgsm-rs, pgd, stadv"), r.stderr
    r = invoke(tiny_ckpt, "--attack", "n-fgsm", "--n", "4", "--out", tmp_path / "adv.safetensors")
    assert r.exit_code == 2 and "training-only" in r.stderr
    help_text = " ".join(runner.invoke(app, ["attack", "--help"], env={"COLUMNS": "200"}).stdout.split())
    assert "fgsm | fgsm-rs | pgd | stadv." in help_text and "n-fgsm" not in help_text
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["--attack", "deepfool"],
            2,
            "unknown attack 'deepfool'; valid values: fgsm, fgsm-rs, pgd, stadv",
        ),
        (["--eps", "8/0"], 2, "divides by zero"),
        (["--eps", "-8/255"], 2, "--eps must be >= 0"),
        (["--attack", "fgsm", "--steps", "3"], 2, "fgsm is one step"),
        (["--attack", "stadv", "--eps", "8/255"], 2, "not --eps"),
        (["--split", "val"], 2, "unknown split 'val'"),
        (["--norm", "l1"], 2, "unknown norm 'l1'"),
        (["MISSING"], 1, "does not exist"),
    ],
)
def test_bad_input_is_one_clear_error_and_no_files(tiny_ckpt, tmp_path, args, code, message):
    ckpt = tmp_path / "missing.safetensors" if args == ["MISSING"] else tiny_ckpt
    extra = [] if args == ["MISSING"] else args
    r = invoke(
        ckpt,
        *extra,
        "--n",
        "4",
        "--out",
        tmp_path / "adv.safetensors",
        "--grid",
        tmp_path / "g.png",
    )
    assert r.exit_code == code
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr
    assert r.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_a_failing_write_removes_what_was_written(tiny_ckpt, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    r = invoke(
        tiny_ckpt,
        "--attack",
        "fgsm",
        "--n",
        "4",
        "--out",
        tmp_path / "adv.safetensors",
        "--grid",
        blocker / "grid.png",
    )
    assert r.exit_code == 1
    assert "cannot write" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]


def test_readers_reject_other_files(tiny_ckpt, tmp_path):
    with pytest.raises(ResultsError, match="is not an adversarial set"):
        load_adv_set(tiny_ckpt)
    other = tmp_path / "results.yaml"
    other.write_text("schema: advcli.results/1\n")
    with pytest.raises(ResultsError, match="not an advcli attack summary"):
        read_summary(other)


def test_robust_accuracy_never_counts_an_example_wrong_clean(tiny_ckpt, synthetic_data):
    """Every 4th label flipped, and a targeted attack aimed at the flipped label: those
    examples are wrong clean and "right" after the attack. adv_accuracy counts them (it is the
    accuracy on the adversarial images); robust_accuracy never does."""
    from advcli.attacks import AttackSpec
    from advcli.attacks.run import run_attack

    model = load_checkpoint(tiny_ckpt).model
    index = test_subset(synthetic_data.test_y, 40, seed=0)
    x, y = synthetic_data.test_x[index], synthetic_data.test_y[index].clone()
    flipped = torch.zeros(40, dtype=torch.bool)
    flipped[::4] = True
    y[flipped] = (y[flipped] + 1) % 10
    targets = torch.where(flipped, y, (y + 2) % 10)
    spec = AttackSpec("pgd", "linf", "16/255", steps=5, targeted=True, keep="first-success")
    o = run_attack(model, x, y, spec, targets=targets, batch_size=20)
    clean_ok, adv_ok = o.clean_pred.eq(o.y), o.adv_pred.eq(o.y)
    assert bool((~clean_ok & adv_ok).any()), "the flipped labels should be 'right' after the attack"
    assert not bool((o.robust & ~clean_ok).any())
    assert o.metrics.robust_accuracy == pytest.approx(float(o.robust.double().mean()))
    assert o.metrics.robust_accuracy < o.metrics.adv_accuracy
    assert o.metrics.robust_accuracy <= o.metrics.clean_accuracy


def test_the_stage_returns_what_the_command_writes(tiny_ckpt, synthetic_data, tmp_path):
    from advcli.attacks import AttackSpec
    from advcli.attacks.run import AttackOptions, attack_checkpoint

    opts = AttackOptions(spec=AttackSpec("fgsm", "linf", "4/255", keep="first-success"), n=12,
                         batch_size=6, seed=2, out=tmp_path / "a.safetensors", label="mine")
    result = attack_checkpoint(tiny_ckpt, opts, device=torch.device("cpu"), data=synthetic_data)
    s = result.summary
    assert s["label"] == "mine" and s["data"]["n"] == 12 and s["outputs"]["adv"] == str(opts.out)
    assert s["checkpoint"]["sha256"] == sha256_file(tiny_ckpt)
    assert result.adv_meta["dataset"] == "synthetic" and result.adv_meta["label"] == "mine"
    assert tuple(result.preview.shape) == (8, 3, 32, 32) and result.preview.dtype == torch.float32
    assert result.title == "mine: fgsm linf eps=4/255"
    assert list(tmp_path.iterdir()) == []  # the stage writes nothing


def test_keep_iterate_last_is_recorded_and_stadv_rejects_it(tiny_ckpt, tmp_path):
    r = invoke(tiny_ckpt, "--attack", "fgsm-rs", "--keep-iterate", "last", "--n", "8",
               "--out", tmp_path / "a.safetensors")
    assert r.exit_code == 0, r.stderr
    s = read_summary(tmp_path / "a.yaml")
    assert s["attack"]["keep"] == "last" and "overstate" in s["robust_rule"]
    assert load_adv_set(tmp_path / "a.safetensors").attack["keep"] == "last"
    r = invoke(tiny_ckpt, "--attack", "stadv", "--keep-iterate", "last", "--out", tmp_path / "b.safetensors")
    assert r.exit_code == 2 and "does not apply to stadv" in r.stderr
    r = invoke(tiny_ckpt, "--keep-iterate", "best", "--out", tmp_path / "c.safetensors")
    assert r.exit_code == 2 and "valid values: first-success, last" in r.stderr


def test_the_attack_runs_in_fp32_inside_an_autocast_region(tiny_ckpt, synthetic_data):
    from advcli.attacks import AttackSpec
    from advcli.attacks.run import run_attack

    model = load_checkpoint(tiny_ckpt).model
    index = test_subset(synthetic_data.test_y, 8, seed=0)
    dtypes: set[torch.dtype] = set()
    handle = model.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            run_attack(model, synthetic_data.test_x[index], synthetic_data.test_y[index],
                       AttackSpec("pgd", "linf", "2/255", steps=2, keep="first-success"))
    finally:
        handle.remove()
    assert dtypes == {torch.float32}
