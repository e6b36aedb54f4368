"""The benchmark script (`make bench`) must not rot: run every benchmark at the smoke size.

Timings are never asserted (the machine is shared and noisy); what is checked is that every
benchmark runs, prints its ratio with a target and a verdict, and writes a sane JSON record.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("advcli_benchmarks_run", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_verdicts_follow_the_target_direction(bench: ModuleType) -> None:
    assert bench.Ratio("x", "x", 2.0, "<= 2.1").verdict == "PASS"
    assert bench.Ratio("x", "x", 2.2, "<= 2.1").verdict == "FAIL"
    assert bench.Ratio("x", "x", 12.0, ">= 10").verdict == "PASS"
    assert bench.Ratio("x", "x", 9.9, ">= 10").verdict == "FAIL"
    assert bench.Ratio("x", "x", 1.0, None).verdict == "report"


def test_pair_ratio_is_the_median_of_pairs(bench: ModuleType) -> None:
    # A load burst in one pair (the 10.0) must not move the result.
    value, spread = bench.pair_ratio([2.0, 4.0, 10.0], [1.0, 2.0, 1.0])
    assert value == 2.0
    assert spread == (2.0, 10.0)


def test_unknown_benchmark_is_a_usage_error(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--only", "pgd-step,warp-drive"]) == 2
    assert "warp-drive" in capsys.readouterr().err


def test_every_benchmark_runs_at_smoke_size(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], keep_threads: None
) -> None:
    out_json = tmp_path / "bench.json"
    # compile is left out here: it needs a C compiler and a minute (tests/train/test_train.py covers --compile);
    # robustbench too: standard AutoAttack on a PreActResNet-18 takes a minute even on 2 images
    # (tests/models/test_robustbench.py covers robustbench:NAME in eval).
    left_out = {"compile", "robustbench"}
    only = ",".join(b for b in bench.BENCHMARKS if b not in left_out)
    code = bench.main(["--size", "smoke", "--no-cache", "--device", "cpu", "--only", only, "--json", str(out_json)])
    assert code == 0  # no --strict: a missed target on a busy machine is not an error
    stdout = capsys.readouterr().out
    for label in ("[1] PGD step / forward", "[2] adv-train batch", "[3] eval PGD-10", "[4] device augmentation",
                  "[5] eval --autoattack", "[6] adv-train peak memory", "speed-up of the adv-train step with bf16",
                  "[9] standard AutoAttack time / eval --fast-worst-case"):
        assert label in stdout, label
    assert "summary:" in stdout

    record = json.loads(out_json.read_text())
    assert record["size"] == "smoke"
    results = record["results"]
    assert {r["bench"] for r in results} == set(bench.BENCHMARKS) - left_out
    targets = {r["bench"]: r["target"] for r in results if r["target"]}
    assert targets == {"pgd-step": "<= 2.1", "adv-train": "<= 1.05", "eval-pgd": ">= 2", "augment": ">= 10",
                       "autoattack": "<= 1.05", "fast-eval": ">= 5"}
    for r in results:
        assert math.isfinite(r["value"]) and r["value"] >= 0, r
        assert r["verdict"] in ("PASS", "FAIL", "report")
        assert (r["verdict"] == "report") == (r["target"] is None)


def test_fast_eval_row_from_a_recipes_result_files(bench: ModuleType, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`bench_fast_eval.py --from-results AA FAST`: the disagreement counts are the flags'
    differences both ways, the times the files'; other checkpoints or examples are refused."""
    import bench_fast_eval  # benchmarks/ is on sys.path once run.py is loaded
    import numpy as np

    from advcli.formats.results import DataInfo, Entry, EvalResult, ModelInfo, index_sha256, save_results

    clean = np.array([True] * 8 + [False] * 2)
    aa_flags = np.array([True, True, True, False, False, True, False, False, False, False])
    fast_flags = np.array([True, True, False, True, False, False, False, False, False, False])

    def result(name: str, attack: str, flags: np.ndarray, params: dict, seconds: float,
               sha: str = "s", examples: str = "c") -> Path:
        entries = [Entry("clean", clean.mean(), 10, flags=clean),
                   Entry(attack, flags.mean(), 10, norm="linf", eps=8 / 255, eps_text="8/255", flags=flags,
                         params=params, time_s=seconds)]
        res = EvalResult(label="M", model=ModelInfo("m.safetensors", sha, "tiny-cnn", "pgd", 0),
                         data=DataInfo("synthetic", "test", 10, 0, index_sha256(range(10)), examples),
                         entries=entries, seed=0)
        return save_results(tmp_path / name, res)

    aa = result("aa.yaml", "autoattack", aa_flags, {"version": "standard"}, 120.0)
    fast = result("fast.yaml", "apgd-ce+malt-t3", fast_flags, {"broken": {"apgd-ce": 4}}, 20.0)
    assert bench_fast_eval.main(["--from-results", str(aa), str(fast)]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("| M | 10 | 80.0 | 120 | 20 | 6.0× | 40.0 | 30.0 | 1 | 2 |"), row
    other = result("other.yaml", "apgd-ce+malt-t3", fast_flags, {}, 20.0, sha="t")
    with pytest.raises(ValueError, match="different checkpoints"):
        bench_fast_eval.from_results(str(aa), str(other))
    moved = result("moved.yaml", "apgd-ce+malt-t3", fast_flags, {}, 20.0, examples="d")
    with pytest.raises(ValueError, match="different examples"):
        bench_fast_eval.from_results(str(aa), str(moved))


def test_inner_attack_strength_runs_and_orders_the_attacks(bench: ModuleType, tiny_ckpt: Path, keep_threads,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/inner_attack_strength.py (cited by the README): one row per checkpoint; every
    attack keeps at most the clean share (robust implies clean-correct)."""
    import inner_attack_strength  # benchmarks/ is on sys.path once run.py is loaded

    assert inner_attack_strength.main([str(tiny_ckpt), "--dataset", "synthetic", "--n", "40",
                                       "--batch-size", "20", "--threads", "1"]) == 0
    row = capsys.readouterr().out.splitlines()[-1].strip("| ").split(" | ")
    clean, kl3, kl10, pgd3, pgd10 = (float(v) for v in row[2:])
    assert row[1] == "40" and all(v <= clean for v in (kl3, kl10, pgd3, pgd10))
