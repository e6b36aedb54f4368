"""compare adds a measured RobustBench model's leaderboard entry as a published row beside it.

The expected numbers are read from the shared copy of robustbench's model_info/ (the file the
shipped copy equals byte for byte), never typed here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from advcli import compare as cmp
from advcli.cli.app import app
from advcli.compare import render as txt
from advcli.errors import UsageError
from advcli.formats.results import DataInfo, Entry, EvalResult, ModelInfo, index_sha256, save_results

WONG = "cifar10/Linf/Wong2020Fast"
N = 20
# What `advcli eval robustbench:NAME` records as the code it measured.
ZOO_CODE = [{"path": "robustbench", "callable": "Wong2020Fast", "sha256": "0" * 64, "role": "model",
             "robustbench_entry": WONG}]


@pytest.fixture(scope="module")
def wong(shared_model_info: Path) -> dict:
    return json.loads((shared_model_info / f"{WONG}.json").read_text(encoding="utf-8"))


def _measured(label: str = "robustbench:Wong2020Fast", *, arch: str | None = f"robustbench:{WONG}",
              eps_text: str = "8/255", eps: float = 8 / 255, norm: str = "linf",
              dataset: str = "cifar10", user_code: list[dict[str, str]] | None = None) -> EvalResult:
    """A hand-made eval result: 5 of N clean-correct, 2 of them robust to standard AutoAttack;
    `user_code` None: none and a checkpoint file (an imported checkpoint or advcli's own)."""
    clean, robust = np.arange(N) < 5, np.arange(N) < 2
    ckpt = None if user_code else f"{label}.safetensors"
    return EvalResult(
        label=label,
        model=ModelInfo(ckpt, None if user_code else "1" * 64, arch, "unknown"),
        data=DataInfo(dataset, "test", N, 0, index_sha256(range(N))),
        entries=[Entry("clean", float(clean.mean()), N, flags=clean),
                 Entry("autoattack", float(robust.mean()), N, norm=norm, eps=eps, eps_text=eps_text,
                       flags=robust, params={"version": "standard",
                                             "attacks": ["apgd-ce", "apgd-t", "fab-t", "square"],
                                             "restarts": 1})],
        user_code=user_code or [],
    )


def _column(table, kind: str) -> int:
    [i] = [i for i, c in enumerate(table.columns) if c.key.kind == kind]
    return i + 1  # text rows start with the label


def test_zoo_model_gets_its_leaderboard_row_beside_it(shared_model_info: Path, wong: dict) -> None:
    other = _measured("tiny", arch="tiny-cnn")
    [table] = cmp.compare([other, _measured(user_code=ZOO_CODE)], leaderboard_dir=shared_model_info)
    rows = txt.text_rows(table)
    assert [r[0] for r in rows] == ["tiny", "robustbench:Wong2020Fast (published)",
                                    "robustbench:Wong2020Fast"]
    published, measured = rows[1], rows[2]
    assert published[_column(table, "clean")] == f"{float(wong['clean_acc']):.2f}"
    # The leaderboard's AutoAttack number in the measured AutoAttack column, not a column of its own.
    assert published[_column(table, "autoattack")] == f"{float(wong['autoattack_acc']):.2f}"
    assert measured[_column(table, "autoattack")] == f"{100 * 2 / N:.2f}"
    assert published[_column(table, "reported")] == f"{float(wong['reported']):.2f}"
    assert table.columns[_column(table, "reported") - 1].key.eps_text == wong["eps"]
    cited = [n for n in txt.footnotes(table) if n.startswith("robustbench:Wong2020Fast (published): ")
             and wong["link"] in n]
    assert len(cited) == 1 and wong["venue"] in cited[0] and wong["name"] in cited[0]


def test_cli_adds_the_row_and_no_leaderboard_leaves_it_out(shared_model_info: Path, wong: dict, tmp_path: Path) -> None:
    path = save_results(tmp_path / "wong.yaml", _measured(user_code=ZOO_CODE))
    runner = CliRunner()
    res = runner.invoke(app, ["compare", str(path), "-f", "markdown"])  # the shipped copy
    assert res.exit_code == 0, res.output
    assert "robustbench:Wong2020Fast (published)" in res.output
    for key in ("clean_acc", "autoattack_acc", "reported", "venue", "link"):
        assert str(wong[key]) in res.output, key
    res = runner.invoke(app, ["compare", str(path), "-f", "markdown", "--no-leaderboard"])
    assert res.exit_code == 0, res.output
    assert "(published)" not in res.output and wong["autoattack_acc"] not in res.output
    assert wong["link"] not in res.output


def test_leaderboard_dir_is_read_instead_of_the_shipped_copy(shared_model_info: Path, wong: dict, tmp_path: Path) -> None:
    folder = tmp_path / "model_info" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    shutil.copy(shared_model_info / f"{WONG}.json", folder)
    entry = dict(wong, clean_acc="12.34")
    (folder / "Wong2020Fast.json").write_text(json.dumps(entry), encoding="utf-8")
    path = save_results(tmp_path / "wong.yaml", _measured(user_code=ZOO_CODE))
    res = CliRunner().invoke(app, ["compare", str(path), "-f", "csv",
                                   "--leaderboard-dir", str(tmp_path / "model_info")])
    assert res.exit_code == 0, res.output
    assert "12.34" in res.output and wong["clean_acc"] not in res.output
    res = CliRunner().invoke(app, ["compare", str(path), "--leaderboard-dir", str(tmp_path / "none")])
    assert res.exit_code == 2 and "--leaderboard-dir" in res.output
    # A folder without the model's entry: no row, and a note naming what is missing.
    [table] = cmp.compare([_measured(user_code=ZOO_CODE)], leaderboard_dir=tmp_path)
    assert not any(r.published for r in table.rows)
    assert any(f"no RobustBench leaderboard entry {WONG}" in n for n in table.notes)


def test_imported_checkpoint_and_zoo_record_are_recognised(shared_model_info: Path, wong: dict) -> None:
    # `advcli import robustbench:NAME` then eval: the label is the file's, the arch the zoo's.
    [table] = cmp.compare([_measured("wong")], leaderboard_dir=shared_model_info)
    assert [(r.label, r.published) for r in table.rows] == [("wong", True), ("wong", False)]
    # Only the zoo model's user-code record names it.
    [table] = cmp.compare([_measured("mine", arch="user:net.py:build", user_code=ZOO_CODE)],
                          leaderboard_dir=shared_model_info)
    assert table.rows[0].published and table.rows[0].label == "mine"
    # A bare robustbench:NAME label: cifar10 Linf, as eval resolves the name.
    [table] = cmp.compare([_measured(arch=None)], leaderboard_dir=shared_model_info)
    row = txt.text_rows(table)[0]
    assert row[_column(table, "autoattack")] == f"{float(wong['autoattack_acc']):.2f}"


def test_other_threat_model_gives_no_row_and_a_note(shared_model_info: Path, wong: dict) -> None:
    [table] = cmp.compare([_measured(eps_text="4/255", eps=4 / 255)], leaderboard_dir=shared_model_info)
    assert [r.published for r in table.rows] == [False]
    assert all(wong["autoattack_acc"] not in " ".join(r) for r in txt.text_rows(table))
    [note] = [n for n in table.notes if "leaderboard" in n]
    assert f"L∞ ε = {wong['eps']}" in note and "L∞ ε = 4/255" in note and "not shown" in note
    [table] = cmp.compare([_measured(norm="l2", eps_text="8/255")], leaderboard_dir=shared_model_info)
    assert not any(r.published for r in table.rows)
    assert any("L2 ε = 8/255" in n for n in table.notes)


def test_other_models_and_given_published_rows_get_no_leaderboard_row(shared_model_info: Path) -> None:
    [table] = cmp.compare([_measured("tiny", arch="tiny-cnn"),
                           _measured("robustbench-like", arch="resnet18")], leaderboard_dir=shared_model_info)
    assert not any(r.published for r in table.rows) and not any("leaderboard" in n for n in table.notes)
    # A published row of the label given by hand stays the only one.
    mine = EvalResult(label="robustbench:Wong2020Fast", model=ModelInfo(None, None, None),
                      data=DataInfo("cifar10"), entries=[Entry("clean", 0.5, 100)], published=True,
                      citation="my own copy")
    [table] = cmp.compare([_measured(user_code=ZOO_CODE), mine], leaderboard_dir=shared_model_info)
    assert [r.published for r in table.rows] == [True, False]
    assert table.rows[0].citation == "my own copy"


def test_leaderboard_dir_must_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a folder"):
        cmp.compare([_measured(user_code=ZOO_CODE)], leaderboard_dir=tmp_path / "missing")
