"""Claims checked by `advcli compare` (compare/claims.py): parsing at the boundary, each check,
the noise rules and the paired seed-matched verdicts, on hand-made result files."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as sp
from typer.testing import CliRunner

from advcli import compare as cmp
from advcli.cli.app import app
from advcli.compare import render as txt
from advcli.compare.claims import Verdict, check_claims, load_claims, parse_claim
from advcli.errors import ConfigError
from advcli.formats.results import DataInfo, Entry, EvalResult, ModelInfo, index_sha256, save_results

N = 1000
EPS = 8 / 255


def _result(label: str, seed: int, clean: int, pgd: int, aa: int | None = None) -> EvalResult:
    """One checkpoint (training seed `seed`) on the same N examples; counts of correct ones.
    The attacks' flags are subsets of the clean flags (robust implies clean-correct)."""
    rng = np.random.default_rng(zlib.crc32(f"{label}|{seed}".encode()))
    order = rng.permutation(N)
    def flags(k: int) -> np.ndarray:
        f = np.zeros(N, dtype=bool)
        f[order[:k]] = True
        return f
    entries = [Entry("clean", clean / N, N, flags=flags(clean)),
               Entry("pgd", pgd / N, N, norm="linf", eps=EPS, eps_text="8/255", flags=flags(pgd),
                     params={"steps": 10, "step_size": 2 / 255, "restarts": 1})]
    if aa is not None:
        entries.append(Entry("autoattack", aa / N, N, norm="linf", eps=EPS, eps_text="8/255",
                             flags=flags(aa), params={"version": "standard", "restarts": 1}))
    sha = f"{label}-{seed}"
    return EvalResult(label=label, model=ModelInfo(f"{sha}.safetensors", sha, "tiny-cnn", "pgd", seed),
                      data=DataInfo("synthetic", "test", N, 0, index_sha256(range(N)), "c"),
                      entries=entries, seed=0)


def _tables(tmp_path: Path, results: list[EvalResult], **kw: object) -> list[cmp.CompareTable]:
    items = []
    for i, r in enumerate(results):
        items.append(cmp.load_input(save_results(tmp_path / f"{i}.yaml", r)))
    return cmp.compare(items, **kw)


def _claim(**spec: object) -> object:
    return parse_claim({"claim": "c", **spec}, where="claims[0]")


# --------------------------------------------------------------------------- parsing

@pytest.mark.parametrize(("spec", "message"), [
    ({"check": "sometimes"}, "unknown check 'sometimes'; valid values: columns, rows"),
    ({"check": "rows", "left": "A"}, "check rows needs right"),
    ({"check": "rows", "left": "A", "right": "B", "colour": 1}, "unknown key(s) colour"),
    ({"check": "columns", "left": {"kind": "pgdd"}, "right": "clean"}, "unknown column kind"),
    ({"check": "paired", "left": "A", "right": "B", "margin": "1pt", "expect": "greater"},
     "`margin` must be a number"),
    ({"check": "paired", "left": "A", "right": "B", "margin": 0.01, "expect": "bigger"},
     "unknown expect 'bigger'"),
    ({"check": "order", "rows": ["A"]}, "two or more labels"),
    ({"check": "rows", "left": "A", "right": "B", "op": "=>"}, "unknown op"),
])
def test_bad_claims_are_one_config_error_naming_the_claim(spec: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_claim({"claim": "c", **spec}, where="claims[3]")
    assert message in str(info.value) and str(info.value).startswith("claims[3]: ")
    assert "\n" not in str(info.value)


def test_claims_load_from_a_list_or_from_a_file(tmp_path: Path) -> None:
    f = tmp_path / "compare.yaml"
    f.write_text(yaml.safe_dump({"metric": "accuracy", "claims": [
        {"claim": "x", "check": "max", "row": "A", "columns": "clean"}]}))
    [from_file] = load_claims([str(f)])
    [inline] = load_claims([{"claim": "x", "check": "max", "row": "A", "columns": "clean"}])
    assert from_file == inline
    (tmp_path / "none.yaml").write_text("metric: accuracy\n")
    with pytest.raises(ConfigError, match="has no `claims:` list"):
        load_claims([str(tmp_path / "none.yaml")])


# --------------------------------------------------------------------------- checks

def test_columns_check_autoattack_error_at_least_pgd_error(tmp_path: Path) -> None:
    tables = _tables(tmp_path, [_result("A", 0, 800, 450, 420), _result("B", 0, 700, 400, 400)],
                     metric="error")
    claim = _claim(check="columns", left={"kind": "autoattack"}, op=">=", right={"kind": "pgd"})
    [res] = check_claims([claim], tables)
    assert res.verdict is Verdict.passed
    assert res.detail.startswith("2/2 hold")
    # AA error > PGD error strictly: B's are equal (the same examples), so not shown
    [res] = check_claims([_claim(check="columns", left={"kind": "autoattack"}, op=">",
                                 right={"kind": "pgd"})], tables)
    assert res.verdict is Verdict.inconclusive and "B: " in res.detail
    # a significant violation fails: A's AA error is 3 points below its PGD error
    [res] = check_claims([_claim(check="columns", left={"kind": "autoattack"}, op="<=",
                                 right={"kind": "pgd"})], tables)
    assert res.verdict is Verdict.failed and "A: " in res.detail


def test_rows_check_uses_the_noise_of_the_cells(tmp_path: Path) -> None:
    # A and B are one run each on the same examples: McNemar decides.
    results = [_result("A", 0, 800, 450), _result("B", 0, 760, 445)]
    tables = _tables(tmp_path, results)
    [clean, pgd] = check_claims([
        _claim(check="rows", left="A", right="B", columns="clean"),
        _claim(check="rows", left="A", right="B", columns={"kind": "pgd"}),
    ], tables)
    a, b = results[0].entries, results[1].entries
    p_clean = sp.binomtest(int(np.sum(a[0].flags & ~b[0].flags)),
                           int(np.sum(a[0].flags ^ b[0].flags)), 0.5).pvalue
    assert p_clean < 0.05 and clean.verdict is Verdict.passed
    assert pgd.verdict is Verdict.inconclusive  # 45.0 vs 44.5: holds, not significant
    assert "does not hold" not in pgd.detail and "p = " in pgd.detail


def test_max_min_and_order_checks(tmp_path: Path) -> None:
    results = [_result("A", 0, 900, 100), _result("B", 0, 800, 300), _result("C", 0, 700, 500)]
    tables = _tables(tmp_path, results)
    verdicts = check_claims([
        _claim(check="max", row="A", columns="clean"),
        _claim(check="min", row="A", columns={"kind": "pgd"}),
        _claim(check="order", rows=["C", "B", "A"], columns={"kind": "pgd"}),
        _claim(check="order", rows=["A", "C", "B"], columns={"kind": "pgd"}),
        _claim(check="max", row="B", columns="clean"),
        _claim(check="max", row="B", rows=["B", "C"], columns="clean"),  # among B and C only
    ], tables)
    assert [v.verdict for v in verdicts] == [Verdict.passed, Verdict.passed, Verdict.passed,
                                             Verdict.failed, Verdict.failed, Verdict.passed]


def test_missing_rows_or_columns_are_inconclusive_never_pass(tmp_path: Path) -> None:
    tables = _tables(tmp_path, [_result("A", 0, 900, 100), _result("B", 0, 800, 300)])
    verdicts = check_claims([
        _claim(check="max", row="Z", columns="clean"),
        _claim(check="columns", left={"kind": "autoattack"}, right={"kind": "pgd"}),
        _claim(check="max", row="A", table="flatness"),
    ], tables)
    assert all(v.verdict is Verdict.inconclusive for v in verdicts)
    assert "no reproduced row 'Z'" in verdicts[0].detail
    assert "no flatness table" in verdicts[2].detail


def test_published_rows_are_not_what_a_claim_is_tested_on(tmp_path: Path) -> None:
    pub = tmp_path / "pub.yaml"
    pub.write_text(yaml.safe_dump({
        "schema": "advcli.results/1", "label": "A", "published": True, "citation": "x",
        "results": [{"attack": "clean", "accuracy": 0.99}]}))
    repro = save_results(tmp_path / "a.yaml", _result("A", 0, 700, 100))
    other = save_results(tmp_path / "b.yaml", _result("B", 0, 800, 100))
    tables = cmp.compare([cmp.load_input(p) for p in (pub, repro, other)])
    [res] = check_claims([_claim(check="max", row="A", columns="clean")], tables)
    assert res.verdict is Verdict.failed  # the reproduced A (70 %) is below B (80 %)


# --------------------------------------------------------------------------- paired

def _seeds(label: str, pgd: list[int], seeds: list[int] | None = None) -> list[EvalResult]:
    return [_result(label, s, 800, k) for s, k in zip(seeds or range(len(pgd)), pgd, strict=True)]


@pytest.mark.parametrize(("fixed", "expect", "verdict"), [
    ([460, 475, 468], "greater", Verdict.passed),        # +6.3 .. +7.0 pts, tight
    ([401, 452, 430], "greater", Verdict.inconclusive),  # −0.9 .. +4.2 pts: straddles
    ([401, 400, 402], "greater", Verdict.failed),        # within ±1 pt
    ([401, 400, 402], "equivalent", Verdict.passed),
    ([460, 475, 468], "equivalent", Verdict.failed),
])
def test_paired_seed_matched_verdicts(tmp_path: Path, fixed: list[int], expect: str,
                                      verdict: Verdict) -> None:
    buggy = [400, 401, 399]
    tables = _tables(tmp_path, _seeds("buggy", buggy) + _seeds("fixed", fixed))
    claim = _claim(check="paired", left="fixed", right="buggy", columns={"kind": "pgd"},
                   margin=0.01, expect=expect)
    [res] = check_claims([claim], tables)
    d = [(f - b) / N for f, b in zip(fixed, buggy, strict=True)]
    half = sp.t.ppf(0.975, 2) * np.std(d, ddof=1) / np.sqrt(3)
    low, high = np.mean(d) - half, np.mean(d) + half
    assert res.verdict is verdict, res.detail
    assert f"[{100 * low:+.2f}, {100 * high:+.2f}]".replace("-", "−") in res.detail
    assert "seeds [0, 1, 2]" in res.detail


def test_paired_needs_two_seed_matched_pairs(tmp_path: Path) -> None:
    results = _seeds("buggy", [400, 401, 399]) + _seeds("fixed", [470, 480, 490], [5, 6, 0])
    [res] = check_claims([_claim(check="paired", left="fixed", right="buggy", margin=0.01,
                                 expect="greater", columns={"kind": "pgd"})],
                         _tables(tmp_path, results))
    assert res.verdict is Verdict.inconclusive and "1 seed-matched pair" in res.detail


# --------------------------------------------------------------------------- end to end

def test_cli_prints_claims_from_the_config_file(tmp_path: Path) -> None:
    files = [str(save_results(tmp_path / f"{i}.yaml", r)) for i, r in enumerate(
        _seeds("buggy", [400, 401, 399]) + _seeds("fixed", [401, 400, 402]))]
    cfg = tmp_path / "compare.yaml"
    cfg.write_text(yaml.safe_dump({"baseline": "buggy", "claims": [
        {"claim": "fixed beats buggy by more than 1 point", "check": "paired", "left": "fixed",
         "right": "buggy", "columns": {"kind": "pgd"}, "margin": 0.01, "expect": "greater"},
        {"claim": "fixed is the most accurate", "check": "max", "row": "fixed",
         "columns": "clean"},
    ]}, sort_keys=False))
    runner = CliRunner()
    res = runner.invoke(app, ["compare", *files, "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "fail: fixed beats buggy by more than 1 point — PGD-10 (ε = 8/255): fixed − buggy" in res.stdout
    assert "inconclusive: fixed is the most accurate" in res.stdout
    res = runner.invoke(app, ["compare", *files, "--config", str(cfg), "--format", "markdown"])
    assert "- **fail**: fixed beats buggy by more than 1 point" in res.stdout
    res = runner.invoke(app, ["compare", *files, "--claims", str(cfg), "--format", "json"])
    data = yaml.safe_load(res.stdout)
    assert data[-1]["title"] == "Claims"
    assert [c["verdict"] for c in data[-1]["claims"]] == ["fail", "inconclusive"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"claims": [{"claim": "x", "check": "nope"}]}))
    res = runner.invoke(app, ["compare", *files, "--config", str(bad)])
    assert res.exit_code == 2 and "unknown check 'nope'" in res.output
    assert "Traceback" not in res.output


def test_markdown_renders_claims_under_the_tables(tmp_path: Path) -> None:
    tables = _tables(tmp_path, [_result("A", 0, 900, 100), _result("B", 0, 800, 300)])
    claims = check_claims([_claim(check="max", row="A", columns="clean")], tables)
    md = txt.to_markdown(tables, claims)
    assert md.index("**Claims**") > md.index("| A |")
    assert "- **pass**: c — Clean: A 90.00 > B 80.00: holds (p < 0.001)" in md


def test_the_fast_evaluation_is_a_column_a_claim_can_hold_to_autoattack(tmp_path: Path) -> None:
    """The objectives recipe's claim: on every row, the fast worst-case evaluation's robust
    accuracy is at most standard AutoAttack's. The two come from separate result files of one
    checkpoint (eval-aa, eval-fast) on the same examples, so they pair up in one row and the
    claim is decided by McNemar's test on their flags."""
    def one(label: str, attack: str, k: int, params: dict[str, object], order: np.ndarray) -> EvalResult:
        flags = np.zeros(N, dtype=bool)
        flags[order[:k]] = True
        clean = np.zeros(N, dtype=bool)
        clean[order[:600]] = True
        return EvalResult(label=label, model=ModelInfo(f"{label}.safetensors", label, "tiny-cnn", "pgd", 0),
                          data=DataInfo("synthetic", "test", N, 0, index_sha256(range(N)), "c"),
                          entries=[Entry("clean", 0.6, N, flags=clean),
                                   Entry(attack, k / N, N, norm="linf", eps=EPS, eps_text="8/255", flags=flags,
                                         params=params)], seed=0)

    aa = {"version": "standard", "restarts": 1}
    fast = {"attacks": ["apgd-ce", "malt-t3"], "iterations": 100}
    order = np.random.default_rng(0).permutation(N)
    results = [one("A", "autoattack", 300, aa, order), one("A", "apgd-ce+malt-t3", 299, fast, order),
               one("B", "autoattack", 300, aa, order), one("B", "apgd-ce+malt-t3", 340, fast, order)]
    tables = _tables(tmp_path, results)
    claim = _claim(check="columns", left={"kind": "apgd-ce+malt-t3"}, op="<=", right={"kind": "autoattack"})
    [both] = check_claims([claim], tables)
    assert both.verdict is Verdict.failed and "B: " in both.detail and "A: " not in both.detail
    [a_only] = check_claims([_claim(check="columns", left={"kind": "apgd-ce+malt-t3"}, op="<=",
                                    right={"kind": "autoattack"}, rows=["A"])], tables)
    assert a_only.verdict is Verdict.passed
