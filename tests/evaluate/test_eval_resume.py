"""`advcli eval` survives kills: the progress file (advcli.evaluate.progress_file), `--resume` ending
with the result an uninterrupted run writes, the refusals, the time estimate and `--dry-run`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from advcli.errors import ResultsError, UsageError
from advcli.evaluate.progress_file import (
    SCHEMA,
    STOP_AFTER_ENV,
    ChunkRecord,
    EvalProgress,
    check_same_run,
    discard,
    load_progress,
    progress_path_for,
    start_progress,
)
from tests.evaluate import test_eval

fast_autoattack = test_eval.fast_autoattack  # AutoAttack shortened for a CPU, as in test_eval

FINGERPRINT = {
    "checkpoint": {"sha256": "a" * 64},
    "data": {"dataset": "synthetic", "split": "test", "index_sha256": "b" * 64},
    "options": {"eps": ["8/255"], "batch_size": 16, "seed": 0},
    "versions": {"advcli": "0.1.0", "torch": "2.4.0"},
}


# --------------------------------------------------------------------------- the file format

def test_progress_path_sits_beside_the_result_file() -> None:
    assert progress_path_for("results/robust.yaml") == Path("results/robust.progress.yaml")
    assert progress_path_for("r.yml") == Path("r.progress.yaml")
    assert progress_path_for("out") == Path("out.progress.yaml")


def test_progress_round_trips_chunks_clean_and_extras(tmp_path: Path) -> None:
    path = tmp_path / "r.progress.yaml"
    p = EvalProgress(path, FINGERPRINT, clean=np.array([True, False, True]), clean_time_s=0.5)
    flags = np.array([True, False, False, True, True, False, True, False, True])  # 9: not a byte
    p.add("autoattack linf 8/255", 3, ChunkRecord(flags, 0.03125, 1.25,
                                                  {"warnings": ["w"], "restarts": 1}))
    p.add("autoattack linf 8/255", 0, ChunkRecord(~flags, 0.0, 2.0))
    p.save()
    assert yaml.safe_load(path.read_text())["schema"] == SCHEMA
    back = load_progress(path)
    assert back.fingerprint == FINGERPRINT
    np.testing.assert_array_equal(back.clean, [True, False, True])
    done = back.done("autoattack linf 8/255")
    assert sorted(done) == [0, 3]
    np.testing.assert_array_equal(done[3].flags, flags)
    np.testing.assert_array_equal(done[0].flags, ~flags)
    assert done[3].max_perturbation == 0.03125 and done[3].time_s == 1.25
    assert done[3].extra == {"warnings": ["w"], "restarts": 1} and done[0].extra == {}


def test_a_rank_that_is_not_the_writer_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    EvalProgress(path, FINGERPRINT, writer=False).save()
    EvalProgress(None, FINGERPRINT).save()  # no -o: in memory only
    assert not path.exists()


@pytest.mark.parametrize("text", ["schema: advcli.results/1\n", "[1, 2]\n",
                                  f"schema: {SCHEMA}\nfingerprint: 3\n",
                                  f"schema: {SCHEMA}\nfingerprint: {{}}\nchunks:\n  k: [{{chunk: 0}}]\n"])
def test_a_malformed_progress_file_is_one_error_naming_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.progress.yaml"
    path.write_text(text)
    with pytest.raises(ResultsError, match="bad.progress.yaml"):
        load_progress(path)


def test_stop_hook_raises_after_the_nth_commit_once_the_file_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STOP_AFTER_ENV, "2")
    path = tmp_path / "p.yaml"
    p = EvalProgress(path, FINGERPRINT)
    p.add("k", 0, ChunkRecord(np.ones(4, bool), 0.0, 0.0))
    p.commit()
    p.add("k", 1, ChunkRecord(np.ones(4, bool), 0.0, 0.0))
    with pytest.raises(KeyboardInterrupt):
        p.commit()
    assert sorted(load_progress(path).done("k")) == [0, 1]  # written before the "kill"


# --------------------------------------------------------------------------- refusals

def _changed(section: str, key: str, value) -> dict:
    fp = yaml.safe_load(yaml.safe_dump(FINGERPRINT))
    fp[section][key] = value
    return fp


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("checkpoint", "sha256", "c" * 64, r"another checkpoint \(sha256: aaaaaaaaaaaa… there, cccccccccccc… here\)"),
    ("options", "eps", ["4/255"], r"other options \(--eps: 8/255 there, 4/255 here\)"),
    ("options", "batch_size", 32, r"other options \(--batch-size: 16 there, 32 here\)"),
    ("versions", "torch", "2.5.0", r"other versions \(torch: 2.4.0 there, 2.5.0 here\)"),
    ("data", "index_sha256", "d" * 64, r"other examples \(index_sha256"),
])
def test_resume_is_refused_when_anything_the_numbers_depend_on_differs(
    tmp_path: Path, section: str, key: str, value, message: str
) -> None:
    with pytest.raises(UsageError, match=message) as info:
        check_same_run(FINGERPRINT, _changed(section, key, value), tmp_path / "p.yaml")
    assert "\n" not in str(info.value) and "delete it" in str(info.value)


def test_start_progress_refuses_to_overwrite_without_resume_and_starts_fresh_without_a_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "p.yaml"
    fresh = start_progress(path, FINGERPRINT, resume=True)  # --resume with nothing to resume
    assert fresh.n_done() == 0 and fresh.clean is None
    fresh.add("k", 0, ChunkRecord(np.ones(2, bool), 0.0, 0.0))
    fresh.save()
    with pytest.raises(UsageError, match="add --resume to continue it"):
        start_progress(path, FINGERPRINT, resume=False)
    again = start_progress(path, FINGERPRINT, resume=True)
    assert again.reused == 1 and sorted(again.done("k")) == [0]
    with pytest.raises(UsageError, match="other options"):
        start_progress(path, _changed("options", "seed", 1), resume=True)


def test_discard_deletes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("x")
    discard(path)
    discard(path)  # already gone: fine
    discard(None)
    assert not path.exists()


# --------------------------------------------------------------------------- eval, killed and resumed

ARGS = ["--n", "24", "--eps", "2/255,4/255", "--pgd-steps", "3", "--batch-size", "8",
        "--autoattack", "--aa-version", "custom", "--aa-attacks", "apgd-ce", "--aa-restarts", "1",
        "--device", "cpu", "-q"]


def _eval(ckpt: Path, out: Path, *extra: str, env: dict[str, str] | None = None):
    """`advcli eval` with -o given relative to its folder (the current directory during the
    call), so that runs in two folders record the same options."""
    import os

    from typer.testing import CliRunner

    from advcli.cli.app import app

    here = Path.cwd()
    out.parent.mkdir(parents=True, exist_ok=True)
    os.chdir(out.parent)
    try:
        return CliRunner().invoke(app, ["eval", str(ckpt), *ARGS, "-o", out.name, *extra], env=env)
    finally:
        os.chdir(here)


def _drop(doc: dict, path: str) -> None:
    head, _, rest = path.partition(".")
    if head.endswith("[]"):
        for item in doc.get(head[:-2], []):
            _drop(item, rest)
    elif rest:
        if isinstance(doc.get(head), dict):
            _drop(doc[head], rest)
    else:
        doc.pop(head, None)


def _comparable(path: Path) -> dict:
    """The result file without the fields it lists as varying between runs (checked to be
    exactly the expected ones, so the list cannot quietly grow)."""
    doc = yaml.safe_load(path.read_text())
    varies = doc["provenance"]["varies_between_runs"]
    assert varies == ["time_s", "results[].time_s", "provenance.argv", "provenance.time",
                      "provenance.options.resume", "provenance.resumed"]
    for field in varies:
        _drop(doc, field)
    return doc


@pytest.fixture
def decoded_once(synthetic_data, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI runs in this process reuse the session's synthetic dataset (the checkpoint's
    own: synthetic, seed 0) instead of generating it again per run (seconds each)."""
    from advcli.data import for_checkpoint

    monkeypatch.setattr(for_checkpoint, "dataset_for_checkpoint", lambda *a, **k: synthetic_data)


@pytest.fixture
def uninterrupted(tiny_ckpt: Path, tmp_path: Path, fast_autoattack, decoded_once) -> dict:
    out = tmp_path / "uninterrupted" / "r.yaml"
    res = _eval(tiny_ckpt, out)
    assert res.exit_code == 0, res.output
    assert not progress_path_for(out).exists()  # deleted once written
    return _comparable(out)


def test_autoattack_eval_killed_twice_resumes_to_the_uninterrupted_result(
    tiny_ckpt: Path, tmp_path: Path, uninterrupted: dict
) -> None:
    out = tmp_path / "r.yaml"
    progress = progress_path_for(out)
    # PGD at 2/255 has at most 3 chunks of 8: the 4th is inside AutoAttack at 2/255.
    killed = _eval(tiny_ckpt, out, env={STOP_AFTER_ENV: "4"})
    assert killed.exit_code == 130 and not out.exists()
    first = load_progress(progress)
    assert first.n_done() == 4 and len(first.done("autoattack linf 2/255")) >= 1
    # Killed again, in the middle of the resumed run: the file only grows.
    killed = _eval(tiny_ckpt, out, "--resume", env={STOP_AFTER_ENV: "3"})
    assert killed.exit_code == 130 and load_progress(progress).n_done() == 7
    res = _eval(tiny_ckpt, out, "--resume")
    assert res.exit_code == 0, res.output
    assert not progress.exists()
    resumed = yaml.safe_load(out.read_text())["provenance"]["resumed"]
    assert resumed["chunks_reused"] == 7
    doc = _comparable(out)
    assert doc == uninterrupted
    attacked = [e["accuracy"] for e in doc["results"] if e["attack"] in ("pgd", "autoattack")]
    assert len(attacked) == 4
    if not any(0 < a < 1 for a in attacked):
        # Mixed flags make the equality above telling; whether the trained model keeps some
        # robust examples at 2/255 rests on the CPU's rounding (it does on an AMD EPYC).
        pytest.skip(f"all-or-nothing flags on this CPU's trained model ({attacked}): the resumed "
                    "result equals the uninterrupted one, but that says less here")


def test_a_progress_file_from_before_the_layout_options_still_resumes(tiny_ckpt: Path, tmp_path: Path,
                                                                      decoded_once) -> None:
    """An advcli checkpoint runs NHWC without the fast evaluation, as every earlier release did:
    neither option enters the fingerprint then, so a progress file written before they existed
    resumes; running NCHW instead is another run and is refused by name."""
    out = tmp_path / "r.yaml"
    assert _eval(tiny_ckpt, out, "--no-autoattack", env={STOP_AFTER_ENV: "1"}).exit_code == 130
    options = load_progress(progress_path_for(out)).fingerprint["options"]
    assert "channels_last" not in options and "fast_worst_case" not in options
    res = _eval(tiny_ckpt, out, "--no-autoattack", "--resume", "--no-channels-last")
    assert res.exit_code == 2 and "--channels-last" in " ".join(res.output.split()), res.output
    assert _eval(tiny_ckpt, out, "--no-autoattack", "--resume").exit_code == 0


def test_resume_refusals(tiny_ckpt: Path, tmp_path: Path, fast_autoattack, decoded_once) -> None:
    from advcli.models.checkpoint import load_tensors, save_tensors

    out = tmp_path / "r.yaml"
    assert _eval(tiny_ckpt, out, env={STOP_AFTER_ENV: "2"}).exit_code == 130
    other = tmp_path / "tiny.safetensors"  # the same name and arch, other weights
    tensors, meta = load_tensors(tiny_ckpt)
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = tensors[name] + 1e-3
    save_tensors(other, tensors, meta)
    for ckpt, extra, message in [
        (tiny_ckpt, [], "holds the progress of an interrupted evaluation; add --resume"),
        (other, ["--resume"], "another checkpoint (sha256:"),
        (tiny_ckpt, ["--resume", "--eps", "2/255,8/255"], "other options (--eps: 2/255,4/255 "
                                                          "there, 2/255,8/255 here)"),
        (tiny_ckpt, ["--resume", "--pgd-steps", "5"], "other options (--pgd-steps: 3 there, 5 here)"),
        (tiny_ckpt, ["--resume", "--n", "32"], "other examples"),
    ]:
        res = _eval(ckpt, out, *extra)
        assert res.exit_code == 2, (extra, res.output)
        assert message in " ".join(res.output.split()), (extra, res.output)
    assert load_progress(progress_path_for(out)).n_done() == 2  # refusals leave it as it was
    # Nothing to resume: a fresh run (PGD only, to be quick).
    res = _eval(tiny_ckpt, tmp_path / "none.yaml", "--resume", "--no-autoattack")
    assert res.exit_code == 0, res.output
    from typer.testing import CliRunner

    from advcli.cli.app import app

    res = CliRunner().invoke(app, ["eval", str(tiny_ckpt), "--resume", "--device", "cpu"])
    assert res.exit_code == 2 and "-o/--out" in res.output


def test_versions_are_part_of_what_a_resume_checks(
    tiny_ckpt: Path, synthetic_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from advcli.config import parse_eps
    from advcli.evaluate.run import EvalOptions, run_eval

    opts = EvalOptions(n=16, eps=[parse_eps("2/255")], pgd_steps=1, batch_size=8,
                       progress_file=tmp_path / "p.progress.yaml")
    monkeypatch.setenv(STOP_AFTER_ENV, "1")
    with pytest.raises(KeyboardInterrupt):
        run_eval(tiny_ckpt, opts, device=torch.device("cpu"), data=synthetic_data)
    monkeypatch.delenv(STOP_AFTER_ENV)
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    opts.resume = True
    with pytest.raises(UsageError, match=r"other versions \(torch: .* there, 0.0.1 here\)"):
        run_eval(tiny_ckpt, opts, device=torch.device("cpu"), data=synthetic_data)


def test_the_time_left_is_logged_after_the_first_chunk_of_each_attack(
    tiny_ckpt: Path, synthetic_data, fast_autoattack
) -> None:
    import torch

    from advcli.config import parse_eps
    from advcli.evaluate.run import EvalOptions, run_eval
    from advcli.progress import NullReporter

    reporter = NullReporter()
    opts = EvalOptions(n=24, eps=[parse_eps("2/255"), parse_eps("4/255")], pgd_steps=2,
                       batch_size=8, autoattack=True, aa_version="custom",
                       aa_attacks=["apgd-ce"], aa_restarts=1)
    run_eval(tiny_ckpt, opts, device=torch.device("cpu"), reporter=reporter, data=synthetic_data)
    estimates = [m for m in reporter.messages if m.startswith("time estimate:")]
    assert len(estimates) == 2, reporter.messages
    # After PGD's first chunk: AutoAttack is not timed yet, so the estimate is a lower bound.
    assert estimates[0].startswith("time estimate: at least ")
    assert "autoattack: 6 chunks, timed after its first" in estimates[0]
    # After AutoAttack's first chunk: everything left is timed.
    assert estimates[1].startswith("time estimate: about ") and "autoattack: 5 chunks ×" in estimates[1]
    first_pgd = reporter.messages.index(estimates[0])
    assert reporter.messages[first_pgd - 1].startswith("clean accuracy")  # before PGD finished


def test_dry_run_prints_the_plan_without_attacking(tiny_ckpt: Path, tmp_path: Path,
                                                    fast_autoattack, decoded_once) -> None:
    out = tmp_path / "r.yaml"
    res = _eval(tiny_ckpt, out, "--dry-run", "--format", "yaml")
    assert res.exit_code == 0, res.output
    plan = yaml.safe_load(res.stdout)
    assert not out.exists() and not progress_path_for(out).exists()
    assert [s["name"] for s in plan["steps"]] == [
        "pgd-3 linf eps=2/255", "autoattack custom linf eps=2/255",
        "pgd-3 linf eps=4/255", "autoattack custom linf eps=4/255"]
    assert [s["chunks"] for s in plan["steps"]] == [3, 3, 3, 3]
    assert plan["n"] == 24 and plan["pgd_examples_upper_bound"] is True
    assert plan["steps"][0]["seconds"] > 0 and plan["steps"][1]["seconds"] is None
    assert plan["estimate_excludes"] == ["autoattack"] and "one batch of 8" in plan["estimate_how"]
    table = _eval(tiny_ckpt, out, "--dry-run")
    assert table.exit_code == 0 and "unknown" in table.stdout and "total" in table.stdout

    # After a kill: what is done, PGD's exact examples and times from the recorded chunks.
    assert _eval(tiny_ckpt, out, env={STOP_AFTER_ENV: "4"}).exit_code == 130
    progress = load_progress(progress_path_for(out))
    res = _eval(tiny_ckpt, out, "--dry-run", "--resume", "--format", "yaml")
    assert res.exit_code == 0, res.output
    plan = yaml.safe_load(res.stdout)
    assert plan["pgd_examples_upper_bound"] is False
    assert plan["steps"][0]["examples"] == progress.clean.sum()  # the clean-correct ones
    assert sum(s["done"] for s in plan["steps"]) == 4 and plan["estimate_excludes"] == []
    assert "from the chunks in" in plan["estimate_how"]
    assert plan["steps"][0]["seconds"] == 0  # PGD at 2/255 is done
    assert load_progress(progress_path_for(out)).n_done() == 4  # untouched


# --------------------------------------------------------------------------- real kills (subprocesses)

SUBPROCESS_ARGS = ["--eps", "2/255", "--pgd-steps", "3", "--autoattack", "--aa-version", "custom",
                   "--aa-attacks", "apgd-ce", "--aa-restarts", "1", "--device", "cpu", "-q"]


def _advcli(cwd: Path, *args: str):
    import os
    import subprocess
    import sys

    cwd.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", ADVCLI_NO_PROGRESS="1")
    env.pop(STOP_AFTER_ENV, None)
    return subprocess.Popen([sys.executable, "-m", "advcli", *args], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_mid_autoattack_then_resume_equals_the_uninterrupted_result(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    """The real thing: the package's full APGD, a process killed with SIGKILL (no handler, no
    cleanup) while AutoAttack runs, then `--resume`."""
    import signal
    import time

    args = ["eval", str(tiny_ckpt), "--n", "32", "--batch-size", "4", *SUBPROCESS_ARGS]
    killed_dir, full_dir = tmp_path / "killed", tmp_path / "uninterrupted"
    out, progress = killed_dir / "r.yaml", progress_path_for(killed_dir / "r.yaml")
    uninterrupted = _advcli(full_dir, *args, "-o", "r.yaml")
    victim = _advcli(killed_dir, *args, "-o", "r.yaml")
    deadline = time.monotonic() + 300
    while not (progress.is_file() and len(load_progress(progress).done("autoattack linf 2/255")) >= 2):
        assert victim.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not out.exists()
    before = load_progress(progress).n_done()
    resumed = _advcli(killed_dir, *args, "-o", "r.yaml", "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    _, err = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, err[-2000:]
    assert yaml.safe_load(out.read_text())["provenance"]["resumed"]["chunks_reused"] == before
    assert _comparable(out) == _comparable(full_dir / "r.yaml")


@pytest.mark.slow
def test_torchrun_eval_killed_and_resumed_equals_the_single_process_result(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under torchrun rank 0 records every rank's chunks: 2 rounds of 2 ranks = 4 chunks; it
    alone reads the file on resume and sends it to the other rank."""
    from tests.test_distributed import _torchrun

    args = ["eval", str(tiny_ckpt), "--num-examples", "48", "--batch-size", "8", *SUBPROCESS_ARGS]
    single = _advcli(tmp_path / "single", *args, "-o", "r.yaml")
    ranks = tmp_path / "ranks"
    ranks.mkdir()
    out = ranks / "r.yaml"
    monkeypatch.setenv(STOP_AFTER_ENV, "2")
    killed = _torchrun([*args, "-o", "r.yaml"], ranks)
    assert killed.returncode != 0 and not out.exists()
    assert load_progress(progress_path_for(out)).n_done() == 4
    monkeypatch.delenv(STOP_AFTER_ENV)
    # Rank 0 alone reads the file; a refusal reaches every rank (none waits for the others).
    refused = _torchrun([*args, "-o", "r.yaml", "--resume", "--pgd-steps", "5"], ranks)
    assert refused.returncode != 0 and "--pgd-steps: 3 there, 5 here" in refused.stderr
    resumed = _torchrun([*args, "-o", "r.yaml", "--resume"], ranks)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _, err = single.communicate(timeout=600)
    assert single.returncode == 0, err[-2000:]
    assert _comparable(out) == _comparable(tmp_path / "single" / "r.yaml")
