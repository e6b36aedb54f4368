"""`advcli eval` and `advcli attack` with user code: `--wrap FILE.py:CALLABLE` around the loaded
model and `--model FILE.py:CALLABLE` instead of an advcli architecture (issue 16).

The wrappers in tests/wraps/constant.py dictate the numbers: `wrap` always answers class 0
(clean accuracy = the share of label 0, and nothing an attack does changes it), `shift` gets
every clean image wrong and most perturbed ones right (so only the AND with clean-correct keeps
robust accuracy at 0). The tiny model and the synthetic data are conftest's.
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
from advcli.eval_progress import STOP_AFTER_ENV, progress_path_for
from advcli.io import sha256_file
from advcli.results import decode_flags

WRAPS = Path(__file__).parent / "wraps"
CONSTANT = WRAPS / "constant.py"
USER_MODEL = WRAPS / "user_model.py"
EVAL = ["--n", "40", "--eps", "8/255", "--pgd-steps", "2", "--batch-size", "16", "--device", "cpu", "-q"]
ATTACK = ["--n", "32", "--steps", "2", "--device", "cpu"]


@pytest.fixture
def decoded_once(synthetic_data, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI runs reuse the session's synthetic dataset (the tiny checkpoint's own) instead of
    generating it again per run."""
    from advcli.data import for_checkpoint
    from advcli.stages import evaluate

    monkeypatch.setattr(evaluate, "dataset_for_checkpoint", lambda *a, **k: synthetic_data)
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
                                 "sha256": sha256_file(CONSTANT)}]
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
    assert doc["model"]["sha256"] == sha256_file(tiny_ckpt)
    assert doc["user_code"][0]["role"] == "model"
    assert doc["user_code"][0]["sha256"] == sha256_file(USER_MODEL)
    # The checkpoint's weights loaded into the user's module: the checkpoint's own numbers.
    for attack in ("clean", "pgd"):
        assert _entry(doc, attack)["flags"] == _entry(ref, attack)["flags"]
    # No weights: the module as its code builds it (untrained); the data must be named.
    doc = _eval(tmp_path, "--model", f"{USER_MODEL}:tiny", "--dataset", "synthetic", name="bare.yaml")
    assert doc["model"]["checkpoint"] is None and doc["model"]["sha256"] is None
    assert doc["label"] == "tiny" and doc["user_code"][0]["callable"] == "tiny"
    assert _entry(doc, "clean")["accuracy"] < 0.5  # untrained


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
    assert (f"other user code (--model/--wrap) (wrap_sha256: {old[:12]}… there, "
            f"{sha256_file(code)[:12]}… here)") in " ".join(r.output.split())
    assert progress_path_for(out).exists()  # the refusal leaves it as it was
    code.write_text(CONSTANT.read_text())  # the original code: the resume goes through
    r = _run(*args, "--resume")
    assert r.exit_code == 0, r.output
    assert yaml.safe_load(out.read_text())["provenance"]["resumed"]["chunks_reused"] == 1


# --------------------------------------------------------------------------- attack

def test_attack_wrap_records_the_code_in_the_summary_and_the_set(
    tiny_ckpt: Path, tmp_path: Path, synthetic_data, decoded_once
) -> None:
    from advcli.advset import load_adv_set

    adv = tmp_path / "adv.safetensors"
    r = _run("attack", tiny_ckpt, *ATTACK, "--wrap", f"{CONSTANT}:wrap", "--out", adv)
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load(adv.with_suffix(".yaml").read_text())
    record = {"role": "wrap", "file": str(CONSTANT), "callable": "wrap", "sha256": sha256_file(CONSTANT)}
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
    assert doc["metrics"] == ref["metrics"]
    doc = summary("--model", f"{USER_MODEL}:tiny", "--dataset", "synthetic", name="bare")
    assert doc["checkpoint"]["path"] is None and doc["checkpoint"]["sha256"] is None
    assert doc["label"] == "tiny" and doc["metrics"]["clean_accuracy"] < 0.5
