"""`advcli compare`: the seeds' table layouts from hand-made result files, with statistics
computed independently in the tests."""

from __future__ import annotations

import csv
import io
import json
import statistics
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
from advcli.errors import ResultsError, UsageError
from advcli.formats.results import (
    DataInfo,
    Entry,
    EvalResult,
    ModelInfo,
    index_sha256,
    load_any,
    save_results,
)

N = 200
EPS = {"8/255": 8 / 255, "16/255": 16 / 255}


def _flags(rng: np.random.Generator, n_true: int, n: int = N) -> np.ndarray:
    f = np.zeros(n, dtype=bool)
    f[rng.choice(n, size=n_true, replace=False)] = True
    return f


def _result(label: str, sha: str, counts: dict[str, int], *, seed: int = 0,
            aa: dict[str, int] | None = None, index: str | None = None,
            trained_with: str = "clean", rng: np.random.Generator | None = None,
            flags: dict[str, np.ndarray] | None = None, pgd: dict | None = None,
            aa_params: dict | None = None) -> EvalResult:
    """counts: {"clean": k, "8/255": k, ...} = how many of the N examples are correct; pgd /
    aa_params: the entries' attack parameters."""
    rng = rng or np.random.default_rng(zlib.crc32(f"{label}|{sha}".encode()))
    flags = dict(flags or {})
    entries = []
    for key, k in counts.items():
        f = flags.get(key, _flags(rng, k))
        if key == "clean":
            entries.append(Entry("clean", float(f.mean()), N, flags=f))
        else:
            entries.append(Entry("pgd", float(f.mean()), N, norm="linf", eps=EPS[key],
                                 eps_text=key, flags=f,
                                 params=dict(pgd or {"steps": 10, "restarts": 1})))
    for key, k in (aa or {}).items():
        f = _flags(rng, k)
        entries.append(Entry("autoattack", float(f.mean()), N, norm="linf", eps=EPS[key],
                             eps_text=key, flags=f,
                             params=dict(aa_params or {"version": "standard"})))
    return EvalResult(
        label=label,
        model=ModelInfo(f"{sha}.safetensors", sha, "tiny-cnn", trained_with, seed),
        data=DataInfo("synthetic", "test", N, 0, index or index_sha256(range(N)), "content"),
        entries=entries,
        seed=0,
    )


# The augmentation-bug study (seed 000): Standard / Robust x augment none / buggy / fixed,
# three training seeds each; correct counts out of N = 200 per seed.
AUG_BUG = {
    "Standard / none": [(170, 0, 0), (172, 1, 0), (168, 0, 0)],
    "Standard / buggy": [(180, 0, 0), (182, 0, 0), (181, 1, 0)],
    "Standard / fixed": [(186, 0, 0), (188, 0, 0), (187, 0, 0)],
    "Robust / none": [(140, 80, 30), (143, 84, 33), (138, 79, 28)],
    "Robust / buggy": [(150, 88, 35), (152, 90, 36), (149, 85, 35)],
    "Robust / fixed": [(158, 95, 40), (160, 97, 41), (157, 94, 38)],
}


@pytest.fixture
def aug_bug_files(tmp_path: Path) -> list[Path]:
    paths = []
    for label, seeds in AUG_BUG.items():
        for s, (c, r8, r16) in enumerate(seeds):
            res = _result(label, f"{label}-{s}".replace(" / ", "-"),
                          {"clean": c, "8/255": r8, "16/255": r16}, seed=s)
            paths.append(save_results(tmp_path / f"{label.replace(' / ', '-')}-{s}.yaml", res))
    return paths


def _expected_cell(counts: list[int]) -> str:
    values = [100 * k / N for k in counts]
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def test_seed_000_layout(aug_bug_files: list[Path]) -> None:
    [table] = cmp.compare([load_any(p) for p in aug_bug_files])
    assert txt.header(table) == [
        "Model",
        "Standard Accuracy (%)",
        "Robust Accuracy (ε = 8/255) (%)",
        "Robust Accuracy (ε = 16/255) (%)",
        "n",
    ]
    rows = txt.text_rows(table)
    assert [r[0] for r in rows] == list(AUG_BUG)
    for row, seeds in zip(rows, AUG_BUG.values(), strict=True):
        for col in range(3):
            assert row[1 + col] == _expected_cell([s[col] for s in seeds])
        assert row[4] == "3"
    # the same numbers through json, as fractions
    data = txt.to_data([table])[0]
    cell = data["rows"][3]["cells"]["Robust Accuracy (ε = 8/255) (%)"]
    assert cell["values"] == [80 / N, 84 / N, 79 / N]
    assert cell["std"] == pytest.approx(statistics.stdev([80 / N, 84 / N, 79 / N]))


def test_baseline_across_seeds_uses_welch(aug_bug_files: list[Path]) -> None:
    [table] = cmp.compare([load_any(p) for p in aug_bug_files], baseline="Robust / none")
    rows = {r.label: r for r in table.rows}
    assert rows["Robust / none"].baseline
    key = table.columns[1].key  # PGD 8/255
    other = [s[1] / N for s in AUG_BUG["Robust / fixed"]]
    base = [s[1] / N for s in AUG_BUG["Robust / none"]]
    diff = rows["Robust / fixed"].cells[key].diff
    assert diff is not None and diff.test == "welch"
    assert diff.delta == pytest.approx(statistics.mean(other) - statistics.mean(base))
    assert diff.p_value == pytest.approx(sp.ttest_ind(other, base, equal_var=False).pvalue)
    assert diff.ci95 is None  # three seeds a side: no bootstrap interval (issue 15)
    text = txt.cell_text(rows["Robust / fixed"].cells[key], table)
    delta_pp = 100 * (statistics.mean(other) - statistics.mean(base))
    assert f"(Δ +{delta_pp:.2f}, " in text
    assert text.endswith("*)") == (diff.p_value < 0.05)
    assert "(baseline)" in txt.text_rows(table)[3][0]


def test_bootstrap_interval_only_from_five_seeds_a_side(tmp_path: Path) -> None:
    items = []
    for label, base in (("A", 150), ("B", 165)):
        for s in range(5):
            r = _result(label, f"{label}{s}", {"clean": base + s})
            items.append(load_any(save_results(tmp_path / f"{label}{s}.yaml", r)))
    [table] = cmp.compare(items, baseline="A")
    diff = table.rows[1].cells[table.columns[0].key].diff
    assert diff.ci95 is not None and diff.ci95[0] <= diff.delta <= diff.ci95[1]
    [table] = cmp.compare([i for i in items if not str(i.path).endswith(("3.yaml", "4.yaml"))],
                          baseline="A")
    assert table.rows[1].n == 3
    assert table.rows[1].cells[table.columns[0].key].diff.ci95 is None


def test_baseline_single_runs_use_mcnemar_on_the_same_examples(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    base_clean, other_clean = _flags(rng, 150), _flags(rng, 170)
    base = _result("A", "sha-a", {"clean": 150}, flags={"clean": base_clean})
    other = _result("B", "sha-b", {"clean": 170}, flags={"clean": other_clean})
    items = [load_any(save_results(tmp_path / f"{r.label}.yaml", r)) for r in (base, other)]
    [table] = cmp.compare(items, baseline="A")
    diff = table.rows[1].cells[table.columns[0].key].diff
    only_b = int(np.sum(other_clean & ~base_clean))
    only_a = int(np.sum(base_clean & ~other_clean))
    assert diff.test == "mcnemar"
    assert diff.p_value == pytest.approx(sp.binomtest(only_b, only_a + only_b, 0.5).pvalue)
    assert diff.delta == pytest.approx((170 - 150) / N)


def test_mismatched_examples_for_a_paired_test_is_one_clear_error(tmp_path: Path) -> None:
    a = _result("A", "sha-a", {"clean": 150})
    b = _result("B", "sha-b", {"clean": 160}, index=index_sha256(range(1, N + 1)))
    items = [load_any(save_results(tmp_path / f"{r.label}.yaml", r)) for r in (a, b)]
    cmp.compare(items)  # no pairing asked: fine
    with pytest.raises(ResultsError, match="evaluated on different examples") as info:
        cmp.compare(items, baseline="A")
    assert "\n" not in str(info.value)
    assert "B.yaml" in str(info.value)
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "A.yaml"), str(tmp_path / "B.yaml"),
                                   "--baseline", "A"])
    assert res.exit_code == 1 and "evaluated on different examples" in res.output
    assert "Traceback" not in res.output


def test_unknown_baseline_lists_the_labels(aug_bug_files: list[Path]) -> None:
    with pytest.raises(UsageError, match="labels: Standard / none, Standard / buggy"):
        cmp.compare([load_any(p) for p in aug_bug_files], baseline="nope")


def test_stutz_layout_error_metric_with_pgd_and_autoattack(tmp_path: Path) -> None:
    items = []
    for label, (c, p, a) in {"ResNet-18": (166, 90, 84), "SimpleNet": (150, 80, 70)}.items():
        r = _result(label, label, {"clean": c, "8/255": p}, aa={"8/255": a})
        items.append(load_any(save_results(tmp_path / f"{label}.yaml", r)))
    [table] = cmp.compare(items, metric="error")
    assert txt.header(table) == [
        "Model",
        "Test Error (%)",
        "PGD-10 Robust Test Error (ε = 8/255) (%)",
        "AA Robust Test Error (ε = 8/255) (%)",
    ]
    assert txt.text_rows(table)[0][1:] == [f"{100 - 100 * 166 / N:.2f}",
                                           f"{100 - 100 * 90 / N:.2f}",
                                           f"{100 - 100 * 84 / N:.2f}"]


def test_two_eval_runs_of_one_checkpoint_fill_one_seed(tmp_path: Path) -> None:
    pgd = _result("R", "same-sha", {"clean": 150, "8/255": 90})
    aa = _result("R", "same-sha", {"clean": 150}, aa={"8/255": 85})
    items = [load_any(save_results(tmp_path / f"{i}.yaml", r)) for i, r in enumerate((pgd, aa))]
    [table] = cmp.compare(items)
    assert len(table.rows) == 1 and table.rows[0].n == 1
    assert not table.show_n
    assert len(table.columns) == 3


def test_published_rows_sit_before_their_reproduction_and_are_cited(tmp_path: Path) -> None:
    repro = save_results(tmp_path / "r.yaml", _result("Robust / fixed", "s", {"clean": 160}))
    pub = tmp_path / "pub.yaml"
    pub.write_text(yaml.safe_dump({
        "schema": "advcli.results/1", "label": "Robust / fixed", "published": True,
        "citation": "Blog post (2021)",
        "results": [{"attack": "clean", "accuracy": 0.8312}],
    }))
    [table] = cmp.compare([load_any(repro), load_any(pub)])
    rows = txt.text_rows(table)
    assert rows[0] == ["Robust / fixed (published)", "83.12"]
    assert rows[1] == ["Robust / fixed", f"{100 * 160 / N:.2f}"]
    assert "Robust / fixed (published): Blog post (2021)" in txt.footnotes(table)
    # a baseline against a published row: the difference, but no test (no flags)
    [table] = cmp.compare([load_any(repro), load_any(pub)], baseline="Robust / fixed")
    d = table.rows[0].cells[table.columns[0].key].diff
    assert d.delta == pytest.approx(0.8312 - 0.8) and d.p_value is None


def _summary(tmp_path: Path, name: str, trained_with: str, sha: str, attack: dict,
             clean: float, robust: float | None, ssim: float, *, n: int = 100) -> Path:
    """An attack summary; its adv_accuracy is 3 points above robust_accuracy (examples wrong
    before the attack and right after it), and robust=None leaves robust_accuracy out, as
    advcli before issue 15 wrote it."""
    metrics = {"clean_accuracy": clean, "adv_accuracy": min(1.0, (robust or 0.0) + 0.03),
               "success_rate": 0.5, "ssim_dissimilarity_mean": ssim}
    if robust is not None:
        metrics["robust_accuracy"] = robust
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump({
        "schema": "advcli.attack/1", "label": name,
        "checkpoint": {"path": f"{sha}.safetensors", "sha256": sha, "label": name,
                       "trained_with": trained_with},
        "attack": attack,
        "data": {"dataset": "synthetic", "split": "test", "n": n, "seed": 0,
                 "index_sha256": index_sha256(range(n))},
        "metrics": metrics,
    }))
    return p


FGSM = {"name": "fgsm", "norm": "linf", "eps": 8 / 255, "eps_text": "8/255"}
PGD = {"name": "pgd", "norm": "linf", "eps": 1 / 255, "eps_text": "1/255", "steps": 10}
STADV = {"name": "stadv", "norm": None, "eps": None, "eps_text": None, "tau": 0.05, "bound": 0.3}


def test_matrix_trained_with_by_attacked_with_and_ssim_table(tmp_path: Path) -> None:
    files = []
    for tw, sha, accs in [("clean", "c", (0.9, 0.1, 0.2, 0.05)),
                          ("static:fgsm", "f", (0.88, 0.6, 0.4, 0.1)),
                          ("static:stadv", "s", (0.87, 0.2, 0.25, 0.5))]:
        for attack, adv, ssim in [(FGSM, accs[1], 0.03), (PGD, accs[2], 0.004),
                                  (STADV, accs[3], 0.02)]:
            files.append(_summary(tmp_path, f"{tw}-{attack['name']}".replace(":", "_"), tw, sha,
                                  attack, accs[0], adv, ssim))
    matrix, ssim_table = cmp.compare([load_any(p) for p in files], matrix=True)
    assert txt.header(matrix) == ["Trained with", "Clean", "FGSM (ε = 8/255)",
                                  "PGD-10 (ε = 1/255)", "stAdv"]
    assert txt.text_rows(matrix) == [
        ["clean", "90.00", "10.00", "20.00", "5.00"],
        ["static:fgsm", "88.00", "60.00", "40.00", "10.00"],
        ["static:stadv", "87.00", "20.00", "25.00", "50.00"],
    ]
    assert matrix.rows[0].n == 1  # three summaries of one checkpoint are one model
    assert txt.header(ssim_table) == ["Attack", "Mean 1−SSIM", "n"]
    assert txt.text_rows(ssim_table) == [["FGSM (ε = 8/255)", "0.0300 ± 0.0000", "3"],
                                         ["PGD-10 (ε = 1/255)", "0.0040 ± 0.0000", "3"],
                                         ["stAdv", "0.0200 ± 0.0000", "3"]]


def test_text_formats(aug_bug_files: list[Path]) -> None:
    tables = cmp.compare([load_any(p) for p in aug_bug_files], baseline="Standard / none")
    md = txt.to_markdown(tables)
    table_lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(table_lines) == 2 + len(AUG_BUG)
    assert {ln.count("|") for ln in table_lines} == {6}
    assert table_lines[1] == "|:---|---:|---:|---:|---:|"
    rows = list(csv.reader(io.StringIO(txt.to_csv(tables))))
    head = rows[0]
    robust = rows[1 + list(AUG_BUG).index("Robust / fixed")]
    col = head.index("Robust Accuracy (ε = 8/255) (%)")
    assert float(robust[col]) == pytest.approx(100 * statistics.mean([95, 97, 94]) / N)
    assert float(robust[head.index("Robust Accuracy (ε = 8/255) (%) p")]) < 0.05
    tex = txt.to_latex(tables)
    assert "\\toprule" in tex and "Standard Accuracy (\\%)" in tex and "$\\pm$" in tex
    data = json.loads(json.dumps(txt.to_data(tables)))
    assert data[0]["rows"][0]["baseline"] is True


def test_cli_compare_markdown_and_errors(aug_bug_files: list[Path], tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["compare", *map(str, aug_bug_files), "--format", "markdown"])
    assert res.exit_code == 0, res.output
    assert "| Model | Standard Accuracy (%) |" in res.stdout
    cfg = tmp_path / "compare.yaml"
    cfg.write_text("metric: error\nformat: csv\n")
    res = runner.invoke(app, ["compare", *map(str, aug_bug_files), "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("Model,published,Test Error (%)")
    res = runner.invoke(app, ["compare", *map(str, aug_bug_files), "--baseline", "zzz"])
    assert res.exit_code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema: advcli.results/9\nlabel: x\n")
    res = runner.invoke(app, ["compare", str(aug_bug_files[0]), str(bad)])
    assert res.exit_code == 1
    assert "schema 'advcli.results/9'" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["compare", str(aug_bug_files[0]), "--format", "xml"])
    assert res.exit_code == 2


def test_a_shared_citation_is_printed_once_naming_its_rows(tmp_path: Path) -> None:
    items = []
    for i, label in enumerate(["Standard", "Robust"]):
        pub = tmp_path / f"pub{i}.yaml"
        pub.write_text(yaml.safe_dump({
            "schema": "advcli.results/1", "label": label, "published": True, "citation": "Blog post (2021)",
            "results": [{"attack": "clean", "accuracy": 0.8 + i / 100}],
        }))
        items.append(load_any(pub))
    [table] = cmp.compare(items)
    notes = [n for n in txt.footnotes(table) if "Blog post (2021)" in n]
    assert notes == ["Standard and Robust (published): Blog post (2021)"]


# --------------------------------------------------------------------------- issue 15

def test_matrix_robust_accuracy_is_correct_before_and_after_the_attack(tmp_path: Path) -> None:
    # adv_accuracy 0.43 also counts examples that were wrong before the attack; robust 0.40
    p = _summary(tmp_path, "m", "clean", "c", FGSM, 0.9, 0.40, 0.03)
    matrix, _ = cmp.compare([load_any(p)], matrix=True)
    assert txt.text_rows(matrix) == [["clean", "90.00", "40.00"]]


def test_matrix_refuses_a_summary_without_robust_accuracy(tmp_path: Path) -> None:
    old = _summary(tmp_path, "old", "clean", "c", FGSM, 0.9, None, 0.03)
    with pytest.raises(ResultsError, match="re-run `advcli attack`") as info:
        cmp.compare([load_any(old)], matrix=True)
    assert "\n" not in str(info.value) and "robust_accuracy" in str(info.value)
    res = CliRunner().invoke(app, ["compare", "--matrix", str(old)])
    assert res.exit_code == 1 and "re-run `advcli attack`" in res.output
    assert "Traceback" not in res.output
    # the 1−SSIM table alone does not need it
    [ssim] = cmp.compare([load_any(old)])
    assert ssim.kind is cmp.TableKind.ssim


def test_pgd_step_size_is_part_of_the_column(tmp_path: Path) -> None:
    small = _result("R", "s1", {"clean": 150, "8/255": 90},
                    pgd={"steps": 10, "step_size": 1 / 255, "restarts": 1})
    big = _result("R", "s2", {"clean": 152, "8/255": 70},
                  pgd={"steps": 10, "step_size": 2 / 255, "restarts": 1})
    items = [load_any(save_results(tmp_path / f"{r.model.sha256}.yaml", r)) for r in (small, big)]
    [table] = cmp.compare(items)
    head = txt.header(table)
    assert head == ["Model", "Standard Accuracy (%)",
                    "PGD-10 (step 1/255) Robust Accuracy (ε = 8/255) (%)",
                    "PGD-10 (step 2/255) Robust Accuracy (ε = 8/255) (%)", "n"]
    row = table.rows[0]
    assert row.n == 2
    pgd_cells = [row.cells[c.key] for c in table.columns[1:]]
    assert [c.n for c in pgd_cells] == [1, 1]  # not pooled as two seeds
    assert [c.mean for c in pgd_cells] == [90 / N, 70 / N]


def test_pgd_keep_rule_is_part_of_the_column(tmp_path: Path) -> None:
    # A last-iterate PGD result (older advcli: no `keep` recorded) and a first-success one
    # measure different things and must not pool as two seeds.
    old = _result("R", "s1", {"clean": 150, "8/255": 92}, pgd={"steps": 10, "step_size": 2 / 255})
    new = _result("R", "s2", {"clean": 150, "8/255": 90},
                  pgd={"steps": 10, "step_size": 2 / 255, "keep": "first-success"})
    items = [load_any(save_results(tmp_path / f"{r.model.sha256}.yaml", r)) for r in (old, new)]
    [table] = cmp.compare(items)
    pgd = [c for c in table.columns if c.key.kind == "pgd"]
    assert len(pgd) == 2
    assert [table.rows[0].cells[c.key].n for c in pgd] == [1, 1]
    titles = " | ".join(c.title for c in pgd)
    assert "last iterate only" in titles and "robust at every iterate" in titles


@pytest.mark.parametrize("params", [
    ({"version": "standard", "restarts": 1}, {"version": "standard", "restarts": 5}),
    ({"version": "standard"}, {"version": "rand"}),
    ({"version": "custom", "attacks": ["apgd-ce"]}, {"version": "custom", "attacks": ["apgd-t"]}),
])
def test_autoattack_version_and_restarts_are_part_of_the_column(tmp_path: Path,
                                                              params: tuple) -> None:
    items = [load_any(save_results(tmp_path / f"{i}.yaml", _result(
        "R", f"s{i}", {"clean": 150}, aa={"8/255": 80 + i}, aa_params=p)))
        for i, p in enumerate(params)]
    [table] = cmp.compare(items)
    aa = [c for c in table.columns if c.key.kind == "autoattack"]
    assert len(aa) == 2 and len({c.title for c in aa}) == 2
    assert all(table.rows[0].cells[c.key].n == 1 for c in aa)


def test_one_checkpoint_in_one_column_on_other_examples_is_an_error(tmp_path: Path) -> None:
    first = _result("R", "same", {"clean": 150, "8/255": 90})
    other = _result("R", "same", {"clean": 140, "8/255": 80},
                    index=index_sha256(range(1, N + 1)))
    paths = [save_results(tmp_path / "first.yaml", first),
             save_results(tmp_path / "other.yaml", other)]
    with pytest.raises(ResultsError, match="on different examples") as info:
        cmp.compare([load_any(p) for p in paths])
    assert "first.yaml" in str(info.value) and "other.yaml" in str(info.value)
    assert "\n" not in str(info.value)
    res = CliRunner().invoke(app, ["compare", *map(str, paths)])
    assert res.exit_code == 1 and "on different examples" in res.output
    # on the same examples it is one measurement (the first file's), as before
    again = save_results(tmp_path / "again.yaml", first)
    [table] = cmp.compare([load_any(paths[0]), load_any(again)])
    assert table.rows[0].n == 1


def test_matrix_refuses_two_summaries_of_one_checkpoint_on_other_examples(tmp_path: Path) -> None:
    a = _summary(tmp_path, "a", "clean", "c", FGSM, 0.9, 0.4, 0.03, n=100)
    b = _summary(tmp_path, "b", "clean", "c", PGD, 0.8, 0.5, 0.01, n=50)
    with pytest.raises(ResultsError, match="on different examples"):
        cmp.compare([load_any(a), load_any(b)], matrix=True)


def test_published_row_without_step_size_sits_in_the_matching_column(tmp_path: Path) -> None:
    repro = save_results(tmp_path / "r.yaml", _result(
        "Robust", "s", {"clean": 160, "8/255": 90},
        pgd={"steps": 20, "step_size": 1 / 255, "restarts": 1}))
    pub = tmp_path / "pub.yaml"
    pub.write_text(yaml.safe_dump({
        "schema": "advcli.results/1", "label": "Robust", "published": True,
        "citation": "Blog post (2021)",
        "results": [{"attack": "clean", "accuracy": 0.8},
                    {"attack": "pgd", "norm": "linf", "eps_text": "8/255", "steps": 20,
                     "accuracy": 0.5},
                    {"attack": "autoattack", "norm": "linf", "eps": 0.03, "eps_text": "0.03",
                     "unstated": ["eps", "version"], "accuracy": 0.45}],
    }))
    [table] = cmp.compare([load_any(repro), load_any(pub)])
    # PGD-20 at 8/255 with the unstated step size: the reproduced column; AutoAttack with an
    # unstated eps and version matches no reproduced column, so it has its own, without eps
    titles = [c.title for c in table.columns]
    assert titles == ["Standard Accuracy (%)", "AA Robust Accuracy (%)",
                      "PGD-20 Robust Accuracy (ε = 8/255) (%)"]
    assert txt.text_rows(table) == [["Robust (published)", "80.00", "45.00", "50.00"],
                                    ["Robust", "80.00", "—", "45.00"]]
    assert any("Robust (published): step size and restarts not stated" in n
               for n in txt.footnotes(table))


def test_ci_shows_each_accuracy_cells_wilson_interval(tmp_path: Path) -> None:
    r = save_results(tmp_path / "r.yaml", _result("R", "s", {"clean": 150, "8/255": 90}))
    pub = tmp_path / "pub.yaml"
    pub.write_text(yaml.safe_dump({
        "schema": "advcli.results/1", "label": "R", "published": True, "citation": "x",
        "results": [{"attack": "clean", "accuracy": 0.9},
                    {"attack": "pgd", "norm": "linf", "eps_text": "8/255", "accuracy": 0.45,
                     "n": 1000}],
    }))
    [table] = cmp.compare([load_any(pub), load_any(r)], ci=True)
    rows = txt.text_rows(table)
    ref = sp.binomtest(150, N).proportion_ci(method="wilson")
    assert rows[1][1] == f"75.00 [{100 * ref.low:.2f}, {100 * ref.high:.2f}]"
    pub_ref = sp.binomtest(450, 1000).proportion_ci(method="wilson")
    assert rows[0][2] == f"45.00 [{100 * pub_ref.low:.2f}, {100 * pub_ref.high:.2f}]"
    assert rows[0][1] == "90.00"  # a published number without n: no interval
    assert any(n.startswith("in brackets: 95 % Wilson") for n in txt.footnotes(table))
    res = CliRunner().invoke(app, ["compare", str(r), "--ci"])  # the rich caption keeps it
    assert "in brackets: 95 % Wilson" in res.stdout
    assert "[" not in txt.text_rows(cmp.compare([load_any(r)])[0])[0][1]  # off by default
    data = txt.to_data([table])[0]
    assert data["rows"][1]["cells"]["Standard Accuracy (%)"]["wilson95"] == \
        pytest.approx([ref.low, ref.high])
    res = CliRunner().invoke(app, ["compare", str(r), "--ci", "--format", "csv"])
    assert res.exit_code == 0, res.output
    assert "Standard Accuracy (%) ci low" in res.stdout.splitlines()[0]


# --------------------------------------------------------------------------- flatness

def _landscape(tmp_path: Path, name: str, dim: int, seed: int,
               increases: dict[str, float], n: int = 100) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump({
        "schema": "advcli.landscape/1", "dim": dim,
        "directions": {"seed": seed, "normalization": "filter", "count": dim},
        "data": {"kind": "clean", "dataset": "synthetic", "split": "test", "n": n,
                 "index_sha256": index_sha256(range(n))},
        "checkpoints": [{"label": k, "sha256": f"sha-{k}", "loss": [0.0]} for k in increases],
        "flatness": {k: {"radius": 0.1, "center_loss": 1.0, "increases": [v], "increase_mean": v,
                         "increase_max": v} for k, v in increases.items()},
    }))
    return p


def test_landscape_files_give_a_flatness_table(tmp_path: Path) -> None:
    files = [_landscape(tmp_path, "d1s0", 1, 0, {"clean": 0.02, "ft-fgsm": 0.05}),
             _landscape(tmp_path, "d1s1", 1, 1, {"clean": 0.04, "ft-fgsm": 0.07}),
             _landscape(tmp_path, "d2-clean", 2, 0, {"clean": 0.03})]
    [table] = cmp.compare([cmp.load_input(p) for p in files])
    assert table.kind is cmp.TableKind.flatness and not table.percent
    assert txt.header(table) == ["Model", "Loss increase at r = 0.1, 1-D",
                                 "Loss increase at r = 0.1, 2-D", "n"]
    assert txt.text_rows(table) == [
        ["clean", f"0.0300 ± {statistics.stdev([0.02, 0.04]):.4f}", "0.0300", "2"],
        ["ft-fgsm", f"0.0600 ± {statistics.stdev([0.05, 0.07]):.4f}", "—", "2"],
    ]
    assert "mean ± sample std over n checkpoints × direction draws" in txt.footnotes(table)
    data = txt.to_data([table])[0]
    assert data["metric"] == "loss-increase" and data["unit"] == "number"
