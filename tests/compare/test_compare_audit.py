"""`advcli compare` with audit files: the Audit column beside the accuracies, matched by
checkpoint sha256 and user-code sha256, never silently dropped."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from advcli import compare as cmp
from advcli.audit.file import AuditResult, CheckResult, save_audit
from advcli.cli.app import app
from advcli.compare import render as txt
from advcli.compare.audit_column import cell_text, read_audit_entry
from advcli.errors import ResultsError, UsageError
from advcli.formats.results import DataInfo, Entry, EvalResult, ModelInfo, index_sha256, save_results

N = 50
WRAP = {"file": "defence.py", "callable": "wrap", "sha256": "c0de" * 16, "role": "wrap"}


def _result(tmp: Path, label: str, sha: str, seed: int = 0, user_code=()) -> Path:
    flags = np.zeros(N, dtype=bool)
    flags[: 30 + seed] = True
    res = EvalResult(label=label,
                     model=ModelInfo(f"{sha}.safetensors", sha, "tiny-cnn", "clean", seed),
                     data=DataInfo("synthetic", "test", N, 0, index_sha256(range(N)), "content"),
                     entries=[Entry("clean", float(flags.mean()), N, flags=flags)], seed=0,
                     user_code=[dict(c) for c in user_code])
    path = tmp / f"{label}-{sha}-{seed}-{len(user_code)}.yaml"
    save_results(path, res)
    return path


def _audit(tmp: Path, label: str, sha: str | None, verdict: str, failed=(), user_code=(),
           name: str | None = None) -> Path:
    checks = [CheckResult("curve", "Robustness curve", "fail" if "curve" in failed else "pass",
                          "m", "a"),
              CheckResult("gradients", "Gradients", "fail" if "gradients" in failed else "pass",
                          "m", "a"),
              CheckResult("precision", "Precision", "warn" if verdict == "warn" else "pass",
                          "m", "a")]
    res = AuditResult(label=label, verdict=verdict,
                      model=ModelInfo(f"{sha}.safetensors" if sha else None, sha, "tiny-cnn"),
                      data=DataInfo("synthetic", "test", N, 0, index_sha256(range(N))),
                      threat_model={"norm": "linf", "eps": 8 / 255}, clean_accuracy=0.6,
                      checks=checks, user_code=[dict(c) for c in user_code])
    path = tmp / (name or f"audit-{label}-{sha}-{verdict}.yaml")
    save_audit(path, res)
    return path


def _table(paths):
    return cmp.run_compare(cmp.CompareOptions(files=list(paths))).tables[0]


def _audit_cells(table) -> dict[str, str]:
    col = txt.header(table).index("Audit")
    return {row[0]: row[col] for row in txt.text_rows(table)}


def test_audit_column_matches_rows_by_checkpoint(tmp_path):
    paths = [_result(tmp_path, "Standard", "a" * 64), _result(tmp_path, "Robust", "b" * 64),
             _result(tmp_path, "Other", "e" * 64),
             _audit(tmp_path, "Standard", "a" * 64, "fail", failed=("curve", "gradients")),
             _audit(tmp_path, "Robust", "b" * 64, "pass")]
    cells = _audit_cells(_table(paths))
    assert cells == {"Standard": "fail: curve, gradients", "Robust": "pass", "Other": "—"}


def test_wrapped_and_bare_checkpoint_audits_do_not_mix(tmp_path):
    """The same checkpoint behind a defence is another thing: its failed audit must not be
    shown beside the bare model's accuracies, nor the bare pass beside the wrapped ones."""
    sha = "b" * 64
    paths = [_result(tmp_path, "Robust", sha),
             _result(tmp_path, "Robust + defence", sha, user_code=[WRAP]),
             _audit(tmp_path, "Robust + defence", sha, "fail", failed=("gradients",),
                    user_code=[WRAP]),
             _audit(tmp_path, "Robust", sha, "pass")]
    cells = _audit_cells(_table(paths))
    assert cells == {"Robust": "pass", "Robust + defence": "fail: gradients"}


def test_row_with_seeds_shows_worst_and_coverage(tmp_path):
    paths = [_result(tmp_path, "Robust", s * 64, seed=i) for i, s in enumerate("abc")]
    paths += [_audit(tmp_path, "Robust", "a" * 64, "pass"),
              _audit(tmp_path, "Robust", "b" * 64, "warn")]
    assert _audit_cells(_table(paths))["Robust"] == "warn 1/3: precision"
    paths.append(_audit(tmp_path, "Robust", "c" * 64, "fail", failed=("curve",)))
    assert _audit_cells(_table(paths))["Robust"] == "fail 1/3: curve"


def test_two_audits_of_one_checkpoint_the_worst_speaks(tmp_path):
    paths = [_result(tmp_path, "Robust", "a" * 64),
             _audit(tmp_path, "Robust", "a" * 64, "pass", name="quick.yaml"),
             _audit(tmp_path, "Robust", "a" * 64, "fail", failed=("curve",), name="full.yaml")]
    assert _audit_cells(_table(paths))["Robust"] == "fail: curve"


def test_unmatched_audit_is_a_note_not_dropped(tmp_path):
    paths = [_result(tmp_path, "Robust", "a" * 64),
             _audit(tmp_path, "Robust", "f" * 64, "fail", failed=("curve",))]
    table = _table(paths)
    assert _audit_cells(table)["Robust"] == "—"
    assert any("matches no row" in n and "fail" in n for n in txt.footnotes(table))


def test_no_audit_files_no_column(tmp_path):
    table = _table([_result(tmp_path, "Robust", "a" * 64)])
    assert "Audit" not in txt.header(table)


def test_audits_without_results_or_with_matrix_refused(tmp_path):
    audit = _audit(tmp_path, "Robust", "a" * 64, "pass")
    with pytest.raises(UsageError, match="Audit column"):
        _table([audit])
    res = _result(tmp_path, "Robust", "a" * 64)
    with pytest.raises(UsageError, match="without --matrix"):
        cmp.run_compare(cmp.CompareOptions(files=[res, audit], matrix=True))


def test_cell_text_counts_unaudited_checkpoints(tmp_path):
    one = read_audit_entry(_audit(tmp_path, "Robust", "a" * 64, "pass"))
    assert cell_text([], 2) == "—"
    assert cell_text([one], 1) == "pass"
    assert cell_text([one], 2) == "pass 1/2"  # the other seed was not audited


def test_cli_formats_carry_the_audit(tmp_path):
    paths = [_result(tmp_path, "Robust", "a" * 64),
             _audit(tmp_path, "Robust", "a" * 64, "fail", failed=("gradients",))]
    runner = CliRunner()
    md = runner.invoke(app, ["compare", *map(str, paths), "--format", "markdown"])
    assert md.exit_code == 0, md.output
    assert "| Audit |" in md.output and "fail: gradients" in md.output
    js = runner.invoke(app, ["compare", *map(str, paths), "--format", "json"])
    assert js.exit_code == 0, js.output
    assert json.loads(js.output)[0]["rows"][0]["audit"] == "fail: gradients"
    csv_out = runner.invoke(app, ["compare", *map(str, paths), "--format", "csv"])
    assert csv_out.output.splitlines()[0].endswith(",audit")
    assert csv_out.output.splitlines()[1].endswith(",fail: gradients")


def test_result_user_code_round_trips(tmp_path):
    path = _result(tmp_path, "Robust + defence", "a" * 64, user_code=[WRAP])
    doc = yaml.safe_load(path.read_text())
    assert doc["user_code"] == [WRAP]
    from advcli.formats.results import load_results
    assert load_results(path).user_code == [WRAP]


def _summary_file(tmp: Path, name: str, sha: str, clean: float, robust: float, user_code=()) -> Path:
    doc = {"schema": "advcli.attack/1", "label": name,
           "checkpoint": {"path": f"{sha}.safetensors", "sha256": sha, "label": name,
                          "trained_with": "static:fgsm"},
           "attack": {"name": "fgsm", "norm": "linf", "eps": 8 / 255, "eps_text": "8/255"},
           "data": {"dataset": "synthetic", "split": "test", "n": N, "seed": 0,
                    "index_sha256": index_sha256(range(N))},
           "metrics": {"clean_accuracy": clean, "adv_accuracy": robust,
                       "robust_accuracy": robust, "success_rate": 0.5}}
    if user_code:
        doc["user_code"] = [dict(c) for c in user_code]
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_matrix_keeps_a_defended_checkpoint_apart_from_the_bare_one(tmp_path):
    """One checkpoint attacked bare and behind a --wrap defence: two rows, never one row with
    clashing numbers (or pooled as two seeds)."""
    bare = _summary_file(tmp_path, "ft-fgsm", "a" * 64, 0.8, 0.1)
    wrapped = _summary_file(tmp_path, "ft-fgsm + defence", "a" * 64, 0.78, 0.6, user_code=[WRAP])
    table = cmp.run_compare(cmp.CompareOptions(files=[bare, wrapped], matrix=True)).tables[0]
    rows = {r.label: r for r in table.rows}
    assert set(rows) == {"static:fgsm", "static:fgsm + defence"}
    assert all(r.n == 1 for r in rows.values())
    robust = [c for c in table.columns if c.key.kind == "fgsm"][0].key
    assert rows["static:fgsm + defence"].cells[robust].mean == pytest.approx(0.6)
    assert rows["static:fgsm"].cells[robust].mean == pytest.approx(0.1)


SHIFT = {**WRAP, "callable": "shift"}


def test_two_wrappers_of_one_file_are_different_things(tmp_path):
    """constant.py:wrap and constant.py:shift share the file's sha256: the audit of one must not
    speak for the other, and one checkpoint behind both under one label is not two seeds."""
    sha = "b" * 64
    wrap_res = _result(tmp_path, "Robust + constant", sha, user_code=[WRAP])
    shift_res = _result(tmp_path, "Robust + constant:shift", sha, user_code=[SHIFT])
    audit = _audit(tmp_path, "Robust + constant", sha, "fail", failed=("gradients",),
                   user_code=[WRAP])
    cells = _audit_cells(_table([wrap_res, shift_res, audit]))
    assert cells == {"Robust + constant": "fail: gradients", "Robust + constant:shift": "—"}
    same_label = _result(tmp_path, "Robust + constant", sha, seed=1, user_code=[SHIFT])
    with pytest.raises(ResultsError, match="not seeds"):
        _table([wrap_res, same_label])


def test_same_examples_different_numbers_are_never_dropped(tmp_path):
    """Two files measuring one checkpoint's PGD column on the same examples with different
    numbers: an error naming both, not a silent pick of the first."""
    paths = []
    for k in (10, 15):
        flags = np.zeros(N, dtype=bool)
        flags[:k] = True
        clean = np.ones(N, dtype=bool)
        res = EvalResult(label="Robust", model=ModelInfo("a.safetensors", "a" * 64, "tiny-cnn"),
                         data=DataInfo("synthetic", "test", N, 0, index_sha256(range(N)), "c"),
                         entries=[Entry("clean", 1.0, N, flags=clean),
                                  Entry("pgd", float(flags.mean()), N, norm="linf", eps=8 / 255,
                                        eps_text="8/255", flags=flags, params={"steps": 10})])
        paths.append(tmp_path / f"r{k}.yaml")
        save_results(paths[-1], res)
    with pytest.raises(ResultsError, match="same examples with different numbers"):
        _table(paths)


def test_clean_accuracy_that_disagrees_between_summaries_is_noted(tmp_path):
    """One checkpoint's clean accuracy from two attack runs (a GPU near-tie flipped): the first
    is shown and the table says so."""
    a = _summary_file(tmp_path, "ft-fgsm", "a" * 64, 0.80, 0.1)
    b = _summary_file(tmp_path, "ft-fgsm-16", "a" * 64, 0.82, 0.05)
    doc = yaml.safe_load(b.read_text())
    doc["attack"].update(eps=16 / 255, eps_text="16/255")
    b.write_text(yaml.safe_dump(doc))
    table = cmp.run_compare(cmp.CompareOptions(files=[a, b], matrix=True)).tables[0]
    clean = [c for c in table.columns if c.key.kind == "clean"][0].key
    assert table.rows[0].cells[clean].mean == pytest.approx(0.80)
    assert any("clean 0.8 in" in n and "0.82" in n for n in txt.footnotes(table))


def test_cell_says_which_check_ran_on_only_some_seeds(tmp_path):
    """recipes/objectives audits seed 0 with every check and seeds 1-2 without Square: the row's
    cell must not read as if every checkpoint had the black-box check."""
    full = read_audit_entry(_audit(tmp_path, "R", "a" * 64, "pass", name="s0.yaml"))
    part = read_audit_entry(_audit(tmp_path, "R", "b" * 64, "pass", name="s1.yaml"))
    part = dataclasses.replace(part, checks=tuple(c for c in full.checks if c != "precision"))
    assert full.checks == ("curve", "gradients", "precision")
    assert cell_text([full, part, part], 3) == "pass; precision on 1/3"
    assert cell_text([full, full], 2) == "pass"  # the same checks everywhere: nothing added
