"""`advcli audit`: honest models pass on three seeds each, masking defences (tests/wraps) fail
for their own reasons, and the command, its files and its errors.

Budgets are shortened for 2 CPU cores: 64 examples, the ensemble's PGD at 20 steps x 2
restarts, pyautoattack's APGD at 20 iterations and Square at 300 queries (`short_autoattack`);
the code path through advcli is the one a full audit takes. Square at 300 queries is too weak
to judge the masking defences at 8/255 (at 5,000 queries it breaks every point of the
quantised model, in 30 s), so those tests leave the black-box check out and
`test_square_breaks_the_quantised_model` runs it at 16/255, where 300 queries suffice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from advcli.audit import ALL_CHECKS, AuditOptions, CheckName, parse_checks, run_audit, thresholds_table
from advcli.audit.curve import eps_grid
from advcli.audit.file import SCHEMA, read_audit
from advcli.audit.limits import LIMITS, Limit, Status, worst
from advcli.cli.app import app
from advcli.config import Norm, parse_eps
from advcli.errors import AdvcliError, ResultsError, UsageError
from advcli.io import sha256_file
from tests.evaluate.test_eval import fast_autoattack  # noqa: F401  (a fixture short_autoattack builds on)

CPU = torch.device("cpu")
WRAPS = Path(__file__).resolve().parents[1] / "wraps"
FAST = dict(n=64, strong_steps=20, strong_restarts=2, square_n=64)
NO_SQUARE = tuple(c for c in ALL_CHECKS if c is not CheckName.black_box)


@pytest.fixture
def short_autoattack(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """test_eval's shortened AutoAttack (APGD at 20 iterations, 1 restart), and Square at 300
    queries."""
    import pyautoattack

    request.getfixturevalue("fast_autoattack")

    class ShortSquare(pyautoattack.AutoAttack):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.square.n_queries = 300

    monkeypatch.setattr(pyautoattack, "AutoAttack", ShortSquare)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, synthetic_data, tiny_ckpt):
    """kind, seed -> checkpoint; standard seed 0 is conftest's tiny model, the rest are trained
    on first use: standard as conftest's (4 epochs, 10,000 images, ~30 s), adversarially
    trained with PGD-2 at Linf 8/255 (2 epochs, 2,000 images, ~10 s)."""
    from advcli.train.adversarial import AdvOptions, ThreatModel, adv_fit
    from advcli.train.loop import TrainOptions, fit

    cache: dict[tuple[str, int], Path] = {("standard", 0): tiny_ckpt}

    def get(kind: str, seed: int) -> Path:
        if (kind, seed) not in cache:
            out = tmp_path_factory.mktemp(f"{kind}{seed}") / f"{kind}{seed}.safetensors"
            if kind == "standard":
                fit(TrainOptions(arch="tiny-cnn", epochs=4, batch_size=128, lr=0.1, augment="none", seed=seed,
                                 out=str(out)), synthetic_data, CPU)
            else:
                adv_fit(TrainOptions(arch="tiny-cnn", epochs=2, batch_size=128, lr=0.1, augment="none",
                                     n_train=2000, seed=seed, out=str(out)),
                        AdvOptions(threat=ThreatModel(norm=Norm.linf, eps=parse_eps("8/255"), attack="pgd",
                                                      steps=2, fraction=1.0)),
                        synthetic_data, CPU)
            cache[(kind, seed)] = out
        return cache[(kind, seed)]

    return get


def fired(result) -> dict[str, str]:
    """The checks that did not pass (or skip): check -> warn | fail."""
    return {c.check: c.status for c in result.checks if c.status in ("warn", "fail")}


# --------------------------------------------------------------------------- limits and options

def test_limits_count_examples_with_a_floor() -> None:
    lim = Limit("x", "examples", 0.01, 1, 0.03, 2)
    assert [lim.judge(v, 64).value for v in (0, 1, 2, 3)] == ["pass", "pass", "warn", "fail"]
    # 1 % of 1,000 is 10: the floor in examples only matters for small audits.
    assert [lim.judge(v, 1000).value for v in (10, 11, 30, 31)] == ["pass", "warn", "warn", "fail"]
    assert lim.text() == {"pass": "<= 1 % (at least 1)", "warn": "<= 3 % (at least 2)", "fail": "more"}
    never = Limit("y", "flag", 0.0, 0, None)
    assert never.judge(0, 1) is Status.passed and never.judge(5, 1) is Status.warn
    assert never.text()["fail"] == "never"
    assert worst([Status.passed, Status.skipped, Status.warn]) is Status.warn
    assert worst([Status.skipped]) is Status.passed
    rows = thresholds_table()
    assert {r[0] for r in rows} == {c.value for c in ALL_CHECKS}
    assert len(rows) == sum(len(v) for v in LIMITS.values())
    assert ("curve", "examples fooled at a smaller eps but robust at a larger one", "0",
            "<= 0.5 % (at least 1)", "more") in rows


def test_parse_checks() -> None:
    assert parse_checks(None) == ALL_CHECKS
    assert parse_checks(None, quick=True) == (CheckName.curve, CheckName.single_step, CheckName.gradients)
    assert parse_checks("gradients, 1,single_step") == (CheckName.curve, CheckName.single_step,
                                                         CheckName.gradients)
    for bad in ("curvy", "8", ","):
        with pytest.raises(UsageError):
            parse_checks(bad)
    with pytest.raises(UsageError, match="--quick"):
        parse_checks("curve", quick=True)


def test_eps_grid_reaches_the_constant_image() -> None:
    grid = eps_grid(Norm.linf, parse_eps("8/255"), (3, 32, 32))
    assert [e.text for e in grid] == ["2/255", "4/255", "8/255", "16/255", "32/255", "64/255", "0.5"]
    assert grid[2].value == parse_eps("8/255").value  # the threat eps itself is a point
    l2 = eps_grid(Norm.l2, parse_eps("0.5"), (3, 32, 32))
    assert l2[0].value == pytest.approx(0.125) and l2[-1].value == pytest.approx(math.sqrt(3072))
    assert all(a.value < b.value for a, b in zip(l2, l2[1:], strict=False))
    assert [e.text for e in eps_grid(Norm.linf, parse_eps("0.5"), (3, 32, 32))] == ["0.125", "0.25", "0.5"]
    assert [e.text for e in eps_grid(Norm.linf, parse_eps("0.6"), (3, 32, 32))] == ["0.15", "0.3", "0.6"]


@pytest.mark.parametrize(("norm", "eps"), [
    (Norm.linf, "8/255"), (Norm.l2, "0.5"),  # the defaults
    (Norm.l2, "0.75"), (Norm.linf, "120/255"),  # the last doubling lands just below the top radius
])
def test_curve_tick_labels_never_overlap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, norm: Norm, eps: str) -> None:
    from matplotlib.figure import Figure

    from advcli.audit.plot import curve_png

    drawn: list[Figure] = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (drawn.append(fig), save(fig, *a, **k))[1])
    threat = parse_eps(eps)
    grid = eps_grid(norm, threat, (3, 32, 32))
    points = [{"eps": 0.0, "eps_text": "0", "accuracy": 0.9}]
    points += [{"eps": e.value, "eps_text": e.text, "accuracy": 0.5} for e in grid]
    curve_png(points, tmp_path / "curve.png", floor=0.1, threat_eps=threat.value, threat_text=eps, norm=norm.value)
    (fig,) = drawn
    fig.canvas.draw()
    shown = [t for t in fig.axes[0].get_xticklabels() if t.get_visible() and t.get_text()]
    boxes = [t.get_window_extent() for t in shown]
    assert not [(a.get_text(), b.get_text()) for i, a in enumerate(shown) for j, b in enumerate(shown)
                if i < j and boxes[i].overlaps(boxes[j])]
    texts = [t.get_text() for t in shown]
    assert {"0", grid[-1].text} <= set(texts)  # both ends stay labelled
    assert len(texts) >= len(points) - 1  # at most the colliding neighbour is dropped


def test_user_code_is_loaded_with_its_sha256(tmp_path: Path, tiny_ckpt: Path) -> None:
    from advcli.models.user import load_user_model, parse_spec, wrap_model

    for spec in ("quantize.py", "x.txt:f", f"{WRAPS}/quantize.py:1x", f"{tmp_path}/missing.py:wrap"):
        with pytest.raises(UsageError):
            parse_spec(spec, option="--wrap")
    base = torch.nn.Identity()
    model, code = wrap_model(base, f"{WRAPS}/quantize.py:wrap")
    assert code.sha256 == sha256_file(WRAPS / "quantize.py") and code.callable == "wrap"
    assert model.model is base and model.training  # left in the mode its code built it in
    with pytest.raises(UsageError, match="no callable 'nope'.*wrap"):
        wrap_model(base, f"{WRAPS}/quantize.py:nope")
    user = f"{WRAPS}/user_model.py"
    with pytest.raises(AdvcliError, match="raised RuntimeError: weights.bin not found"):
        load_user_model(f"{user}:raises")
    with pytest.raises(AdvcliError, match="returned Tensor, not a torch.nn.Module"):
        load_user_model(f"{user}:not_a_module")
    model, code = load_user_model(f"{user}:tiny", weights=tiny_ckpt)
    from advcli.models.checkpoint import load_checkpoint

    ref = load_checkpoint(tiny_ckpt).model
    x = torch.rand(2, 3, 32, 32)
    assert model.training  # stages run it under attack_mode, which restores its flags after
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ref(x))
    with pytest.raises(AdvcliError, match="do not fit"):
        load_user_model(f"{user}:wrong_shape", weights=tiny_ckpt)
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(AdvcliError, match="ModuleNotFoundError"):
        wrap_model(base, f"{broken}:wrap")


# --------------------------------------------------------------------------- honest models pass

def _honest(ckpt: Path, surrogate: Path, data, seed: int):
    return run_audit(ckpt, AuditOptions(**FAST, seed=seed, surrogate=surrogate, amp="bf16"), device=CPU,
                     data=data)


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_honest_standard_model_passes(seed: int, trained, synthetic_data, short_autoattack) -> None:
    res = _honest(trained("standard", seed), trained("robust", 0), synthetic_data, seed)
    assert res.verdict == "pass", [(c.check, c.measured) for c in res.checks]
    assert [c.check for c in res.checks] == [c.value for c in ALL_CHECKS]
    assert set(res.statuses.values()) == {"pass"}
    curve = res.check("curve").numbers
    assert curve["points"][0]["accuracy"] > 0.9 and curve["points"][-1]["accuracy"] <= curve["floor"]["accuracy"]


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_honest_robust_model_passes(seed: int, trained, synthetic_data, short_autoattack) -> None:
    res = _honest(trained("robust", seed), trained("standard", 0), synthetic_data, seed)
    assert res.verdict == "pass", [(c.check, c.measured) for c in res.checks]
    assert set(res.statuses.values()) == {"pass"}
    # The audit measured something real: robust at the threat eps, broken far past it.
    points = res.check("curve").numbers["points"]
    at = res.check("curve").numbers["threat_eps_index"]
    assert points[at]["accuracy"] > 0.5 and points[-1]["accuracy"] == 0.0
    assert res.check("black-box").numbers["points"] > 20  # Square had robust points to try
    assert res.check("transfer").numbers["sources"]  # the standard model's examples were tried


# --------------------------------------------------------------------------- masking defences fail

@pytest.mark.parametrize(
    ("wrap", "expected"),
    [
        ("quantize", {"curve": "fail", "transfer": "fail", "gradients": "fail"}),
        ("jpeg_numpy", {"curve": "fail", "transfer": "fail", "gradients": "fail"}),
        ("saturate", {"convergence": "fail", "gradients": "warn"}),
        ("random_dither", {"curve": "fail", "convergence": "fail", "transfer": "fail", "gradients": "warn"}),
    ],
)
def test_masking_defence_fails_for_its_reason(wrap: str, expected: dict[str, str], tiny_ckpt: Path,
                                              synthetic_data, short_autoattack) -> None:
    res = run_audit(tiny_ckpt, AuditOptions(**FAST, checks=NO_SQUARE, wrap=f"{WRAPS}/{wrap}.py:wrap"),
                    device=CPU, data=synthetic_data)
    assert fired(res) == expected, [(c.check, c.status, c.measured) for c in res.checks]
    assert res.verdict == "fail"
    assert res.clean_accuracy > 0.95  # each defence keeps the model's clean accuracy
    assert res.user_code[0]["sha256"] == sha256_file(WRAPS / f"{wrap}.py")
    grad = res.check("gradients").numbers
    curve = res.check("curve").numbers
    transfer = res.check("transfer").numbers
    if wrap in ("quantize", "jpeg_numpy"):
        # Blind gradients everywhere; only the graph-cut one has no autograd path at all.
        assert grad["no_gradient"] == 64 and grad["graph_cut"] is (wrap == "jpeg_numpy")
        assert curve["above_floor"] > 32  # flat: PGD never moves past its random start
        assert transfer["sources"]["unwrapped model (BPDA)"]["accuracy"] < 0.1  # BPDA breaks it
    if wrap == "saturate":
        assert grad["no_gradient"] == 0 and grad["ce_saturated"] > 32
        members = res.check("convergence").numbers["members"]
        assert members["apgd-dlr"]["accuracy"] < 0.1 and members["apgd-ce"]["accuracy"] > 0.5
    if wrap == "random_dither":
        assert grad["randomised"] == 1 and grad["no_gradient"] == 0
        assert curve["non_monotone"] > 1
        assert transfer["eot"]["breaks_beyond_whitebox"] > 1
        assert res.check("precision").status == "skip"


def test_square_breaks_the_quantised_model(tiny_ckpt: Path, synthetic_data, short_autoattack) -> None:
    res = run_audit(tiny_ckpt, AuditOptions(**FAST, eps=parse_eps("16/255"), checks=(CheckName.black_box,),
                                            wrap=f"{WRAPS}/quantize.py:wrap"), device=CPU, data=synthetic_data)
    box = res.check("black-box")
    assert fired(res) == {"black-box": "fail"}, box.measured
    assert box.numbers["points"] > 20 and box.numbers["square_only"] > 5


def test_probability_outputs_warn(tiny_ckpt: Path, synthetic_data) -> None:
    res = run_audit(tiny_ckpt, AuditOptions(n=32, checks=(CheckName.gradients,),
                                            wrap=f"{WRAPS}/probabilities.py:wrap"), device=CPU, data=synthetic_data)
    assert fired(res) == {"gradients": "warn"} and res.verdict == "warn"
    g = res.check("gradients")
    assert g.numbers["probabilities"] == 1 and any("probability distribution" in n for n in g.notes)
    assert "logits" in g.advice


def test_audit_labels_name_the_wrap_callable(tiny_ckpt: Path, synthetic_data) -> None:
    opts = {"n": 16, "checks": (CheckName.gradients,)}
    conventional = run_audit(tiny_ckpt, AuditOptions(**opts, wrap=f"{WRAPS}/constant.py:wrap"),
                             device=CPU, data=synthetic_data)
    other = run_audit(tiny_ckpt, AuditOptions(**opts, wrap=f"{WRAPS}/constant.py:shift"),
                      device=CPU, data=synthetic_data)
    assert (conventional.label, other.label) == ("tiny + constant", "tiny + constant:shift")
    bare = run_audit(None, AuditOptions(**opts, model=f"{WRAPS}/user_model.py:tiny"), device=CPU,
                     data=synthetic_data)
    assert bare.label == "user_model:tiny"


def test_a_randomised_model_is_audited_reproducibly(tiny_ckpt: Path, synthetic_data) -> None:
    opts = AuditOptions(n=32, checks=(CheckName.curve,), wrap=f"{WRAPS}/random_dither.py:wrap")
    a = run_audit(tiny_ckpt, opts, device=CPU, data=synthetic_data)
    state = torch.random.get_rng_state()
    b = run_audit(tiny_ckpt, opts, device=CPU, data=synthetic_data)
    assert a.check("curve").numbers["points"] == b.check("curve").numbers["points"]
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's generator is untouched


# --------------------------------------------------------------------------- the command

def test_cli_audit_quick_writes_yaml_and_png(tiny_ckpt: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "audit.yaml", tmp_path / "audit.png"
    r = CliRunner().invoke(app, ["audit", str(tiny_ckpt), "--quick", "--n", "32", "--device", "cpu",
                                 "-o", str(out), "--plot", str(png)])
    assert r.exit_code == 0, r.output
    assert "1. robustness curve" in r.stdout and "verdict: PASS" in r.stdout
    doc = read_audit(out)
    assert doc["schema"] == SCHEMA and doc["verdict"] == "pass"
    assert [c["check"] for c in doc["checks"]] == ["curve", "single-step", "gradients"]
    assert doc["model"]["sha256"] == sha256_file(tiny_ckpt) and doc["data"]["n"] == 32
    assert doc["provenance"]["checkpoint_sha256"] == sha256_file(tiny_ckpt)
    curve = doc["checks"][0]
    assert isinstance(curve["numbers"]["points"][0]["accuracy"], float)
    assert {f["metric"] for f in curve["findings"]} == {"non_monotone", "above_floor"}
    assert curve["findings"][0]["limits"] == {"pass": "0", "warn": "<= 0.5 % (at least 1)", "fail": "more"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    from advcli.audit.plot import DPI, HEIGHT_IN, WIDTH_IN

    assert Image.open(png).size == (round(WIDTH_IN * DPI), round(HEIGHT_IN * DPI))


def test_cli_audit_fails_a_masked_model_with_exit_1(tiny_ckpt: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["audit", str(tiny_ckpt), "--checks", "gradients,1", "--n", "32", "--device",
                                 "cpu", "--wrap", f"{WRAPS}/quantize.py:wrap", "--format", "json", "-o",
                                 str(tmp_path / "a.yaml")])
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "fail" and {c["check"]: c["status"] for c in doc["checks"]} == {
        "curve": "fail", "gradients": "fail"}
    assert doc["user_code"][0]["sha256"] == sha256_file(WRAPS / "quantize.py")
    assert yaml.safe_load((tmp_path / "a.yaml").read_text())["verdict"] == "fail"  # written before exit 1


def test_cli_audit_user_model(tiny_ckpt: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["audit", str(tiny_ckpt), "--model", f"{WRAPS}/user_model.py:tiny", "--checks",
                            "gradients", "--n", "16", "--device", "cpu", "--format", "yaml"])
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load(r.stdout)
    assert doc["model"]["arch"] == f"user:{WRAPS}/user_model.py:tiny"
    assert doc["user_code"][0]["role"] == "model" and doc["clean_accuracy"] > 0.9
    assert doc["label"] == "tiny (model user_model:tiny)"  # the code is named, as eval does
    assert len(doc["user_code"][0]["weights_sha256"]) == 64
    # Without a checkpoint the dataset must be named: a usage error, as in eval and attack.
    r = runner.invoke(app, ["audit", "--model", f"{WRAPS}/user_model.py:tiny", "--checks", "gradients",
                            "--n", "16", "--device", "cpu"])
    assert r.exit_code == 2 and "pass --dataset" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    r = runner.invoke(app, ["audit", "--model", f"{WRAPS}/user_model.py:wrong_shape", "--dataset", "synthetic",
                            "--checks", "gradients", "--n", "16", "--device", "cpu"])
    assert r.exit_code == 1 and "logits of shape [N, 10]" in r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checks", "curvy"], "unknown check"),
        (["--quick", "--checks", "curve"], "--quick"),
        (["--plot", "x.png", "--checks", "gradients"], "--plot"),
        (["--eps", "0"], "--eps"),
        (["--norm", "l3"], "unknown norm"),
        (["--n", "0"], "--n"),
        (["--amp", "fp8"], "--amp"),
        (["--amp", "fp16", "--checks", "precision"], "CUDA"),
        (["--surrogate", "other.safetensors", "--checks", "curve"], "--surrogate"),
        (["--wrap", "nothere.py:wrap"], "does not exist"),
        (["--wrap", "quantize"], "FILE.py:CALLABLE"),
        (["--format", "xml"], "--format"),
    ],
)
def test_cli_audit_usage_errors_exit_2(args: list[str], message: str, tiny_ckpt: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["audit", str(tiny_ckpt), "--device", "cpu", "-o", str(tmp_path / "a.yaml"), *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "a.yaml").exists()


def test_cli_audit_needs_a_model() -> None:
    r = CliRunner().invoke(app, ["audit", "--quick"])
    assert r.exit_code == 2 and "--model" in r.output


def test_read_audit_rejects_other_files(tmp_path: Path) -> None:
    p = tmp_path / "a.yaml"
    p.write_text("schema: advcli.results/1\n")
    with pytest.raises(ResultsError, match="not an advcli audit file"):
        read_audit(p)
    p.write_text(f"schema: {SCHEMA}\nverdict: maybe\nchecks: []\n")
    with pytest.raises(ResultsError, match="verdict"):
        read_audit(p)


def test_fast_worst_case_takes_apgd_ces_place_in_the_ensemble(tiny_ckpt: Path, synthetic_data,
                                                              short_autoattack) -> None:
    """`--fast-worst-case`: check 2 runs eval's fast evaluation (APGD-CE, then MALT-targeted APGD)
    instead of APGD-CE alone. On the saturating defence, whose softmax gives the CE loss no
    gradient, APGD-CE alone stays blind (see the masking test above); the targeted stage's margin
    loss breaks the points, so the fast member is no blind spot and the check still fails."""
    from advcli.attacks.malt import evaluation_name

    res = run_audit(tiny_ckpt, AuditOptions(**FAST, checks=(CheckName.convergence,), fast_worst_case=True,
                                            wrap=f"{WRAPS}/saturate.py:wrap"), device=CPU, data=synthetic_data)
    conv = res.check("convergence")
    members = conv.numbers["members"]
    assert set(members) == {"pgd-20x2", evaluation_name(), "apgd-dlr"}
    assert conv.numbers["fast_worst_case"] is True
    assert members[evaluation_name()]["accuracy"] < 0.1
    assert conv.status == "fail"
