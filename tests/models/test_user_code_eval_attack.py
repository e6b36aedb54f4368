"""`advcli eval` and `advcli attack` with user code: `--wrap FILE.py:CALLABLE` around the loaded
model and `--model FILE.py:CALLABLE` instead of an advcli architecture (issue 16).

The wrappers in tests/wraps/constant.py dictate the numbers: `wrap` always answers class 0
(clean accuracy = the share of label 0, and nothing an attack does changes it), `shift` gets
every clean image wrong and most perturbed ones right (so only the AND with clean-correct keeps
robust accuracy at 0). tests/wraps/random_head.py adds a randomly initialised layer, built
another way when ADVCLI_TEST_WRAP_DRAWS is set. The tiny model and the synthetic data are
conftest's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from advcli.cli.app import app
from advcli.data import test_subset
from advcli.evaluate.progress_file import STOP_AFTER_ENV, progress_path_for
from advcli.formats.results import decode_flags
from advcli.io import sha256_file

WRAPS = Path(__file__).resolve().parents[1] / "wraps"
CONSTANT = WRAPS / "constant.py"
USER_MODEL = WRAPS / "user_model.py"
RANDOM_HEAD = WRAPS / "random_head.py"
DRAWS_ENV = "ADVCLI_TEST_WRAP_DRAWS"
EVAL = ["--n", "40", "--eps", "8/255", "--pgd-steps", "2", "--batch-size", "16", "--device", "cpu", "-q"]
ATTACK = ["--n", "32", "--steps", "2", "--device", "cpu"]


@pytest.fixture
def decoded_once(synthetic_data, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI runs reuse the session's synthetic dataset (the tiny checkpoint's own) instead of
    generating it again per run."""
    from advcli.data import for_checkpoint

    monkeypatch.setattr(for_checkpoint, "dataset_for_checkpoint", lambda *a, **k: synthetic_data)


def _run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def _eval(tmp_path: Path, *args: str, name: str = "r.yaml") -> dict:
    out = tmp_path / name
    r = _run("eval", *args, *EVAL, "-o", out)
    assert r.exit_code == 0, r.output
    return yaml.safe_load(out.read_text())


def _entry(doc: dict, attack: str) -> dict:
    return next(e for e in doc["results"] if e["attack"] == attack)


def _flags(entry: dict) -> np.ndarray:
    return decode_flags(entry["flags"], entry["n"])


def _wrapped_sha256(ckpt: Path, spec: str) -> str:
    """The weights_sha256 of the checkpoint's model inside the wrap `spec`, built here."""
    from advcli.models.checkpoint import load_checkpoint
    from advcli.models.user import wrap_model
    from advcli.models.user_code import state_dict_sha256

    wrapped, code = wrap_model(load_checkpoint(ckpt).model, spec)
    assert code.weights_sha256 == state_dict_sha256(wrapped)
    return code.weights_sha256


def _share_of_label_0(synthetic_data, n: int) -> float:
    y = synthetic_data.test_y[test_subset(synthetic_data.test_y, n, seed=0)]
    return float((y == 0).double().mean())


# --------------------------------------------------------------------------- eval

def test_eval_wrap_records_the_code_and_the_wrapper_decides_the_numbers(
    tiny_ckpt: Path, tmp_path: Path, synthetic_data, decoded_once
) -> None:
    plain = _eval(tmp_path, tiny_ckpt, name="plain.yaml")
    doc = _eval(tmp_path, tiny_ckpt, "--wrap", f"{CONSTANT}:wrap")
    assert "user_code" not in plain and _entry(plain, "clean")["accuracy"] > 0.8
    assert doc["user_code"] == [{"role": "wrap", "file": str(CONSTANT), "callable": "wrap",
                                 "sha256": sha256_file(CONSTANT),
                                 "weights_sha256": _wrapped_sha256(tiny_ckpt, f"{CONSTANT}:wrap")}]
    assert doc["label"] == "tiny + constant" and plain["label"] == "tiny"
    assert doc["model"]["sha256"] == sha256_file(tiny_ckpt)  # the weights are the checkpoint's
    share = _share_of_label_0(synthetic_data, 40)
    assert 0 < share < 0.5
    clean, pgd, worst = (_entry(doc, a) for a in ("clean", "pgd", "worst"))
    assert clean["accuracy"] == pytest.approx(share)
    # Logits that ignore the image: PGD cannot move a prediction, so nothing is lost to it.
    assert pgd["accuracy"] == worst["accuracy"] == pytest.approx(share)
    y = synthetic_data.test_y[test_subset(synthetic_data.test_y, 40, seed=0)].numpy()
    np.testing.assert_array_equal(_flags(clean), y == 0)


def test_robust_flags_and_clean_correct_through_a_wrapped_model(
    tiny_ckpt: Path, tmp_path: Path, decoded_once
) -> None:
    # An attack on the unwrapped model: a perturbation of 1/1000 leaves the images off the
    # 8-bit grid, where `shift` answers as the model does (mostly right).
    adv = tmp_path / "adv.safetensors"
    r = _run("attack", tiny_ckpt, *ATTACK, "--eps", "0.001", "--out", adv, "--format", "json")
    assert r.exit_code == 0, r.output
    doc = _eval(tmp_path, tiny_ckpt, "--wrap", f"{CONSTANT}:shift", "--adv-data", adv)
    assert doc["label"] == "tiny + constant:shift"  # not `wrap`, so the callable is named
    assert _entry(doc, "clean")["accuracy"] == 0  # every clean image is on the grid
    transfer = _entry(doc, "transfer")
    assert transfer["adv_accuracy"] > 0.5  # correct on the adversarial images alone ...
    assert transfer["accuracy"] == 0  # ... but never robust: robust implies clean-correct
    assert all(not _flags(e).any() for e in doc["results"])


def test_eval_user_model_with_and_without_weights(
    tiny_ckpt: Path, tmp_path: Path, decoded_once
) -> None:
    ref = _eval(tmp_path, tiny_ckpt, name="ref.yaml")
    doc = _eval(tmp_path, tiny_ckpt, "--model", f"{USER_MODEL}:tiny", name="user.yaml")
    assert doc["model"]["arch"] == f"user:{USER_MODEL}:tiny"
    assert doc["label"] == "tiny (model user_model:tiny)"
    assert doc["model"]["sha256"] == sha256_file(tiny_ckpt)
    assert doc["user_code"][0]["role"] == "model"
    assert doc["user_code"][0]["sha256"] == sha256_file(USER_MODEL)
    # The checkpoint's weights loaded into the user's module: the checkpoint's own numbers.
    for attack in ("clean", "pgd"):
        assert _entry(doc, attack)["flags"] == _entry(ref, attack)["flags"]
    # No weights: the module as its code builds it (untrained); the data must be named.
    doc = _eval(tmp_path, "--model", f"{USER_MODEL}:tiny", "--dataset", "synthetic", name="bare.yaml")
    assert doc["model"]["checkpoint"] is None and doc["model"]["sha256"] is None
    assert doc["label"] == "user_model:tiny" and doc["user_code"][0]["callable"] == "tiny"
    assert _entry(doc, "clean")["accuracy"] < 0.5  # untrained


def test_user_code_is_built_the_same_every_run(tmp_path: Path, tiny_ckpt: Path, decoded_once) -> None:
    # Untrained: every number comes from the random init, which is seeded, so it repeats.
    bare = ["--model", f"{USER_MODEL}:tiny", "--dataset", "synthetic"]
    a, b = (_eval(tmp_path, *bare, name=f"bare{i}.yaml") for i in range(2))
    assert a["user_code"][0]["weights_sha256"] == b["user_code"][0]["weights_sha256"]
    assert [e["flags"] for e in a["results"]] == [e["flags"] for e in b["results"]]
    # A wrap that adds a random layer: the same wrapped module, so the same numbers.
    wrapped = [tiny_ckpt, "--wrap", f"{RANDOM_HEAD}:wrap"]
    a, b = (_eval(tmp_path, *wrapped, name=f"wrapped{i}.yaml") for i in range(2))
    assert a["user_code"] == b["user_code"]
    assert a["user_code"][0]["weights_sha256"] == _wrapped_sha256(tiny_ckpt, f"{RANDOM_HEAD}:wrap")
    assert [e["flags"] for e in a["results"]] == [e["flags"] for e in b["results"]]
    assert a["label"] == "tiny + random_head"


def test_building_user_code_leaves_the_callers_random_state_alone(tiny_ckpt: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from advcli.models.user import load_user_model, wrap_model
    from advcli.models.user_code import state_dict_sha256

    state = torch.random.get_rng_state()
    model, code = load_user_model(f"{USER_MODEL}:tiny")
    again, _ = load_user_model(f"{USER_MODEL}:tiny")
    assert torch.equal(state, torch.random.get_rng_state())
    assert code.weights_sha256 == state_dict_sha256(again) == state_dict_sha256(model)
    # The hash sees the weights, not only the names and shapes.
    first = next(iter(again.parameters()))
    with torch.no_grad():
        first.view(-1)[0] += 1
    assert state_dict_sha256(again) != code.weights_sha256
    # The weights a wrap builds count too: another draw, the same file, another hash.
    base = torch.nn.Identity()
    _, one = wrap_model(base, f"{RANDOM_HEAD}:wrap")
    monkeypatch.setenv(DRAWS_ENV, "1")
    _, other = wrap_model(base, f"{RANDOM_HEAD}:wrap")
    assert one.sha256 == other.sha256 and one.weights_sha256 != other.weights_sha256


@pytest.mark.parametrize("command", ["eval", "attack"])
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--wrap", "nothere.py:wrap"], "does not exist"),
        (["--wrap", "quantize"], "must be FILE.py:CALLABLE"),
        (["--wrap", f"{WRAPS}/quantize.py:no such"], "is not a Python name"),
        (["--model", f"{WRAPS}/constant.txt:wrap"], "is not a .py file"),
        (["--wrap", f"{CONSTANT}:nope"], "has no callable 'nope'"),
        (["--model", f"{USER_MODEL}:tiny", "NO_CHECKPOINT"], "needs --dataset"),
        (["NO_CHECKPOINT"], "or pass --model FILE.py:CALLABLE"),
    ],
)
def test_bad_specs_are_one_line_and_exit_2(command: str, args: list[str], message: str,
                                           tiny_ckpt: Path, tmp_path: Path) -> None:
    ckpt = [] if "NO_CHECKPOINT" in args else [str(tiny_ckpt)]
    args = [a for a in args if a != "NO_CHECKPOINT"]
    out = tmp_path / ("r.yaml" if command == "eval" else "adv.safetensors")
    r = _run(command, *ckpt, *args, "--device", "cpu", "--out", out)
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists()


def test_resume_is_refused_when_the_wrapper_file_changed(
    tiny_ckpt: Path, tmp_path: Path, decoded_once
) -> None:
    code = tmp_path / "defence.py"
    shutil.copy(CONSTANT, code)
    out = tmp_path / "r.yaml"
    args = ["eval", tiny_ckpt, "--wrap", f"{code}:wrap", *EVAL, "--batch-size", "2", "-o", out]
    assert _run(*args, env={STOP_AFTER_ENV: "1"}).exit_code == 130
    old = sha256_file(code)
    code.write_text(code.read_text() + "# the defence, edited\n")
    r = _run(*args, "--resume")
    assert r.exit_code == 2, r.output
    assert (f"other user code (--model/--wrap) (--wrap wrap: file sha256 {old[:12]}… there, "
            f"{sha256_file(code)[:12]}… here)") in " ".join(r.output.split())
    assert progress_path_for(out).exists()  # the refusal leaves it as it was
    code.write_text(CONSTANT.read_text())  # the original code: the resume goes through
    r = _run(*args, "--resume")
    assert r.exit_code == 0, r.output
    assert yaml.safe_load(out.read_text())["provenance"]["resumed"]["chunks_reused"] == 1


def test_resume_is_refused_when_the_built_weights_differ(
    tiny_ckpt: Path, tmp_path: Path, decoded_once
) -> None:
    # The same file builds another random head when the variable is set: only the weights'
    # sha256 can tell, and mixing chunks of two models would be a number no model has.
    out = tmp_path / "r.yaml"
    args = ["eval", tiny_ckpt, "--wrap", f"{RANDOM_HEAD}:wrap", *EVAL, "--batch-size", "2", "-o", out]
    assert _run(*args, env={STOP_AFTER_ENV: "1"}).exit_code == 130
    saved = yaml.safe_load(progress_path_for(out).read_text())["fingerprint"]["user_code"]
    r = _run(*args, "--resume", env={DRAWS_ENV: "1"})
    assert r.exit_code == 2, r.output
    line = " ".join(r.output.split())
    assert (f"(--wrap wrap: weights sha256 {saved['wrap_weights_sha256'][:12]}… there, ") in line, line
    assert "the same code built other weights" in line and "{" not in line
    assert len(r.output.strip().splitlines()) <= 3  # one message, wrapped by the terminal width
    r = _run(*args, "--resume")
    assert r.exit_code == 0, r.output
    assert yaml.safe_load(out.read_text())["provenance"]["resumed"]["chunks_reused"] == 1


def test_resume_refusal_describes_missing_user_code_in_words(tiny_ckpt: Path, tmp_path: Path,
                                                             decoded_once) -> None:
    out = tmp_path / "r.yaml"
    args = ["eval", tiny_ckpt, *EVAL, "--batch-size", "2", "-o", out]
    assert _run(*args, "--wrap", f"{RANDOM_HEAD}:wrap", env={STOP_AFTER_ENV: "1"}).exit_code == 130
    r = _run(*args, "--resume")
    assert r.exit_code == 2, r.output
    line = " ".join(r.output.split())
    assert f"(--wrap wrap with file sha256 {sha256_file(RANDOM_HEAD)[:12]}…, weights sha256 " in line, line
    assert "there, none here)" in line and "{" not in line


# --------------------------------------------------------------------------- attack

def test_attack_wrap_records_the_code_in_the_summary_and_the_set(
    tiny_ckpt: Path, tmp_path: Path, synthetic_data, decoded_once
) -> None:
    from advcli.formats.advset import load_adv_set

    adv = tmp_path / "adv.safetensors"
    r = _run("attack", tiny_ckpt, *ATTACK, "--wrap", f"{CONSTANT}:wrap", "--out", adv)
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load(adv.with_suffix(".yaml").read_text())
    record = {"role": "wrap", "file": str(CONSTANT), "callable": "wrap", "sha256": sha256_file(CONSTANT),
              "weights_sha256": _wrapped_sha256(tiny_ckpt, f"{CONSTANT}:wrap")}
    assert doc["user_code"] == [record]
    assert doc["label"] == "tiny + constant" and doc["checkpoint"]["label"] == "tiny"
    share = _share_of_label_0(synthetic_data, 32)
    m = doc["metrics"]
    assert m["clean_accuracy"] == pytest.approx(share)
    assert m["robust_accuracy"] == m["adv_accuracy"] == pytest.approx(share)
    assert load_adv_set(adv).meta["user_code"] == [record]


def test_attack_robust_flags_and_clean_correct_through_a_wrapped_model(
    tiny_ckpt: Path, tmp_path: Path, decoded_once
) -> None:
    adv = tmp_path / "adv.safetensors"
    r = _run("attack", tiny_ckpt, *ATTACK, "--eps", "0.001", "--wrap", f"{CONSTANT}:shift",
             "--out", adv, "--format", "json")
    assert r.exit_code == 0, r.output
    m = yaml.safe_load(adv.with_suffix(".yaml").read_text())["metrics"]
    assert m["clean_accuracy"] == 0 and m["adv_accuracy"] > 0.5
    assert m["robust_accuracy"] == 0


def test_attack_user_model_with_and_without_weights(
    tiny_ckpt: Path, tmp_path: Path, decoded_once
) -> None:
    def summary(*args: str, name: str) -> dict:
        adv = tmp_path / f"{name}.safetensors"
        r = _run("attack", *args, *ATTACK, "--out", adv)
        assert r.exit_code == 0, r.output
        return yaml.safe_load(adv.with_suffix(".yaml").read_text())

    ref = summary(tiny_ckpt, name="ref")
    doc = summary(tiny_ckpt, "--model", f"{USER_MODEL}:tiny", name="user")
    assert doc["checkpoint"]["arch"] == f"user:{USER_MODEL}:tiny"
    assert doc["user_code"][0]["sha256"] == sha256_file(USER_MODEL)
    assert doc["label"] == "tiny (model user_model:tiny)"
    assert doc["metrics"] == ref["metrics"]
    doc = summary("--model", f"{USER_MODEL}:tiny", "--dataset", "synthetic", name="bare")
    assert doc["checkpoint"]["path"] is None and doc["checkpoint"]["sha256"] is None
    assert doc["label"] == "user_model:tiny" and doc["metrics"]["clean_accuracy"] < 0.5
    again = summary("--model", f"{USER_MODEL}:tiny", "--dataset", "synthetic", name="again")
    assert again["metrics"] == doc["metrics"] and again["user_code"] == doc["user_code"]


def test_user_code_differences_are_told_in_words(tmp_path: Path) -> None:
    from advcli.errors import UsageError
    from advcli.evaluate.progress_file import check_same_run

    a, b, c = "a" * 64, "b" * 64, "c" * 64
    base = {"checkpoint": {"sha256": c}}
    wrap = {"wrap_callable": "shift", "wrap_sha256": a, "wrap_weights_sha256": b}
    model = {"model_callable": "tiny", "model_sha256": c, "model_weights_sha256": c}
    cases = [
        # A file written before weights were recorded: refused, and said why.
        ({"wrap_callable": "shift", "wrap_sha256": a}, wrap,
         f"(--wrap shift: weights sha256 not recorded there (an older advcli), {b[:12]}… here)"),
        (wrap, {**wrap, "wrap_weights_sha256": c},
         f"(--wrap shift: weights sha256 {b[:12]}… there, {c[:12]}… here; the same code built other weights)"),
        (model, {**model, **wrap}, f"(no --wrap there, --wrap shift with file sha256 {a[:12]}…, "
                                   f"weights sha256 {b[:12]}… here)"),
        ({**model, **wrap}, None, f"(--model tiny with file sha256 {c[:12]}…, weights sha256 {c[:12]}… + "
                                  f"--wrap shift with file sha256 {a[:12]}…, weights sha256 {b[:12]}… there, none here)"),
    ]
    for saved, current, message in cases:
        there = {**base, "user_code": saved}
        here = {**base, **({"user_code": current} if current else {})}
        with pytest.raises(UsageError) as err:
            check_same_run(there, here, tmp_path / "p.yaml")
        assert message in str(err.value) and "{" not in str(err.value), str(err.value)
    check_same_run({**base, "user_code": wrap}, {**base, "user_code": dict(wrap)}, tmp_path / "p.yaml")
