"""recipes/: every shipped YAML is accepted by what reads it, and every Makefile resolves.

- Stage configs (`recipes/<study>/{quick,full}/*.yaml`, `recipes/<study>/compare.yaml`): the header
  names the stage (`# advcli <stage> — ...`) and gives the exact command; the keys go through the
  real `--config` loader and merge (`advcli.config.load_config_file` / `merge_config`) against the
  real Typer command's parameters, so an unknown key fails here as it would on the command line;
  each value has the type the option declares (PyYAML reads `5e-4` as a string, for example); every
  knob carries an inline comment (its unit).
- Published result files (`recipes/<study>/published/**.yaml`): valid `advcli.results/1` files via
  `advcli.formats.results.load_results`, marked published, with a citation that has a URL.
- Makefiles: `make -n quick` and `make -n full` succeed, every `--config` they pass exists, every
  config of that scale is used, and the last advcli command is `advcli compare`.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import typer.main

from advcli.cli.app import app
from advcli.config import load_config_file, merge_config, parse_eps, parse_eps_list
from advcli.formats.results import load_results
from advcli.models import build_model

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
STUDIES = ["aug-bug", "pgd-at", "landscape", "objectives"]
SCALES = ["quick", "full"]

_COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]


def _all_yaml() -> list[Path]:
    # recipes/<study>/out/ holds a recipe's outputs (git-ignored), not configs.
    return sorted(p for p in RECIPES.rglob("*.yaml") if p.relative_to(RECIPES).parts[1:2] != ("out",))


def _config_files() -> list[Path]:
    return [p for p in _all_yaml() if "published" not in p.relative_to(RECIPES).parts]


def _published_files() -> list[Path]:
    return [p for p in _all_yaml() if "published" in p.relative_to(RECIPES).parts]


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(RECIPES)) for p in paths]


def _stage_of(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    m = re.match(r"#\s*advcli ([a-z-]+)\s", first)
    assert m, f"{path}: the first line must name the stage, like '# advcli train — ...'"
    assert m.group(1) in _COMMANDS, f"{path}: unknown stage {m.group(1)!r}"
    return m.group(1)


def _option_types(stage: str) -> dict[str, Any]:
    """Option name (as the config loader spells it) -> declared Python type, options only."""
    out = {}
    for p in _COMMANDS[stage].params:
        if p.param_type_name != "option" or p.name == "config":
            continue
        out[p.name] = p.type_descriptor.annotation
    return out


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether a YAML value has the type the option declares (None only where optional)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation in (str, Path):
        return isinstance(value, str)
    return True  # lists and other types: left to the command


# --------------------------------------------------------------------------- layout

def test_each_study_has_makefile_configs_and_compare() -> None:
    for study in STUDIES:
        d = RECIPES / study
        assert (d / "Makefile").is_file(), study
        assert (d / "compare.yaml").is_file(), study
        for scale in SCALES:
            assert sorted((d / scale).glob("*.yaml")), f"{study}/{scale} has no configs"
        quick = {p.name for p in (d / "quick").glob("*.yaml")}
        full = {p.name for p in (d / "full").glob("*.yaml")}
        assert quick == full, f"{study}: quick and full hold different configs: {quick ^ full}"


def test_found_every_yaml() -> None:
    # A guard against the globs silently matching nothing.
    assert len(_config_files()) >= 30
    assert len(_published_files()) >= 12


# --------------------------------------------------------------------------- stage configs

@pytest.mark.parametrize("path", _config_files(), ids=_ids(_config_files()))
def test_config_is_accepted_by_its_stage(path: Path) -> None:
    stage = _stage_of(path)
    values = load_config_file(path)  # the real loader: dashes -> underscores
    assert values, f"{path}: empty config"
    types_ = _option_types(stage)
    defaults = {name: None for name in types_} | {"config": str(path)}
    # The real merge: raises ConfigError listing unknown keys, as `--config` does.
    merged = merge_config(values, defaults, set(), stage=stage, path=path)
    assert {k: merged[k] for k in values} == values
    for key, value in values.items():
        assert _accepts(types_[key], value), (
            f"{path}: `{key}: {value!r}` ({type(value).__name__}) does not fit the option's type "
            f"{types_[key]}; quote eps-like values and write floats with a dot (0.0005, not 5e-4)"
        )


@pytest.mark.parametrize("path", _config_files(), ids=_ids(_config_files()))
def test_config_values_parse(path: Path) -> None:
    values = load_config_file(path)
    for key in ("eps", "step_size", "bound"):
        if key in values:
            text = str(values[key])
            parsed = parse_eps_list(text) if "," in text else [parse_eps(text)]
            assert all(0 < e.value <= 2.0 for e in parsed), f"{path}: {key} {text!r}"
    if "fraction" in values:
        assert 0.0 <= float(values["fraction"]) <= 1.0
    if "arch" in values:
        build_model(values["arch"], 10, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])


@pytest.mark.parametrize("path", _config_files(), ids=_ids(_config_files()))
def test_config_header_and_units(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    stage = _stage_of(path)
    header = [ln for ln in text.splitlines() if ln.startswith("#")]
    rel = path.relative_to(path.parents[1] if path.parent.name in SCALES else path.parent)
    command = " ".join(header)
    assert f"advcli {stage} " in command and f"--config {rel.as_posix()}" in command, (
        f"{path}: the header must give the exact command, `advcli {stage} ... --config {rel}`"
    )
    for line in text.splitlines():
        if re.match(r"^[a-z_]+:", line):
            assert re.search(r"\s#\s*\S", line), f"{path}: knob without a comment (unit): {line!r}"


# --------------------------------------------------------------------------- published files

@pytest.mark.parametrize("path", _published_files(), ids=_ids(_published_files()))
def test_published_file_is_valid(path: Path) -> None:
    result = load_results(path)
    assert result.published
    assert result.citation and "http" in result.citation
    assert any(e.is_clean for e in result.entries)
    for e in result.entries:
        assert 0.0 <= e.accuracy <= 1.0
    # The label must be one the recipe's Makefile gives a reproduced model, or compare would not
    # put the two rows side by side.
    makefile = (path.parents[2] / "Makefile").read_text(encoding="utf-8")
    assert f":= {result.label}\n" in makefile, f"{path}: label {result.label!r} not in the Makefile"


def test_aug_bug_published_numbers() -> None:
    # Spot checks against the blog's tables, read independently of the files' structure.
    got = {
        (p.parent.name, load_results(p).label): load_results(p)
        for p in (RECIPES / "aug-bug" / "published").rglob("*.yaml")
    }
    assert len(got) == 12
    robust_fixed = got[("linf", "Robust (fixed augmentation)")]
    assert robust_fixed.entry("clean").accuracy == pytest.approx(0.8673)
    assert robust_fixed.entry("pgd", "linf", 8 / 255).accuracy == pytest.approx(0.5188)
    assert robust_fixed.entry("pgd", "linf", 16 / 255).accuracy == pytest.approx(0.1757)
    l2_robust = got[("l2", "Robust")]
    assert l2_robust.entry("pgd", "l2", 1.0).accuracy == pytest.approx(0.4283)
    for (_, label), res in got.items():
        if label.startswith("Standard"):
            assert all(e.accuracy < 0.01 for e in res.entries if not e.is_clean)


# --------------------------------------------------------------------------- Makefiles

def _dry_run(study: str, scale: str) -> str:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(
        # -B: every target counts as out of date, so outputs of an earlier run do not hide commands.
        [make, "-n", "-B", "--no-print-directory", scale, "ADVCLI=advcli"],
        cwd=RECIPES / study, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, f"make -n {scale} in {study} failed:\n{proc.stderr}"
    return proc.stdout


def _advcli_lines(output: str) -> list[list[str]]:
    joined = output.replace("\\\n", " ")
    cmds = []
    for line in joined.splitlines():
        line = line.split(" > ")[0]  # drop the atomic-write redirection
        words = shlex.split(line)
        if words and words[0] == "advcli":
            cmds.append(words)
    return cmds


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("study", STUDIES)
def test_makefile_dry_run_resolves(study: str, scale: str) -> None:
    cmds = _advcli_lines(_dry_run(study, scale))
    assert cmds, f"{study}: make -n {scale} runs no advcli command"
    assert cmds[-1][1] == "compare", f"{study}: the recipe must end in `advcli compare`"
    used = set()
    for words in cmds:
        assert words[1] in _COMMANDS, words
        assert "--config" in words, f"{study}: a stage runs without a config: {words}"
        cfg = words[words.index("--config") + 1]
        path = RECIPES / study / cfg
        assert path.is_file(), f"{study}: {cfg} does not exist"
        assert _stage_of(path) == words[1], f"{study}: {cfg} is not a `{words[1]}` config"
        used.add(path.resolve())
    configs = {p.resolve() for p in (RECIPES / study / scale).glob("*.yaml")}
    optional = {p for p in configs if p.name == "robust-l2.yaml" or p.name == "eval-l2.yaml"}
    missing = configs - used - (optional if scale == "quick" else set())
    assert not missing, f"{study}: configs never used by `make {scale}`: {sorted(missing)}"


def test_aug_bug_full_runs_every_model_and_seed() -> None:
    cmds = _advcli_lines(_dry_run("aug-bug", "full"))
    trains = [w for w in cmds if w[1] in ("train", "adv-train")]
    # Standard + L-inf + L2 robust, x 3 augment modes, x 3 seeds.
    assert len(trains) == 27
    labels = {w[w.index("--label") + 1] for w in trains}
    assert labels == {"Standard", "Standard (augmentation)", "Standard (fixed augmentation)",
                      "Robust", "Robust (augmentation)", "Robust (fixed augmentation)"}
    assert {w[w.index("--augment") + 1] for w in trains} == {"none", "buggy", "fixed"}
    evals = [w for w in cmds if w[1] == "eval"]
    assert len(evals) == 36  # 9 Standard models in both tables + 9 L-inf + 9 L2
    compares = [w for w in cmds if w[1] == "compare"]
    assert len(compares) == 2
    for c in compares:
        published = [a for a in c if a.startswith("published/")]
        assert len(published) == 6 and all((RECIPES / "aug-bug" / a).is_file() for a in published)


def test_aug_bug_quick_trains_every_model_on_three_seeds() -> None:
    trains = [w for w in _advcli_lines(_dry_run("aug-bug", "quick")) if w[1] in ("train", "adv-train")]
    # Standard + L-inf robust, x 3 augment modes, x seeds 0, 1, 2 (issue: 3 seeds per model).
    assert sorted((w[w.index("--label") + 1], w[w.index("--seed") + 1]) for w in trains) == sorted(
        (label, str(seed)) for label in ("Standard", "Standard (augmentation)",
                                         "Standard (fixed augmentation)", "Robust",
                                         "Robust (augmentation)", "Robust (fixed augmentation)")
        for seed in range(3))


def test_aug_bug_builds_added_seeds_after_an_earlier_run(tmp_path: Path) -> None:
    """A one-seed run's outputs, then `make quick` with 3 seeds: the missing models are built
    (make treats a file only a pattern rule needs as intermediate and would skip it)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    out = tmp_path / "out"
    first = subprocess.run([make, "-n", "--no-print-directory", "quick", "ADVCLI=advcli",
                            f"OUT={out}", "SEEDS=0", "PAIR_SEEDS=0"],
                           cwd=RECIPES / "aug-bug", capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    # Pretend the one-seed run happened: every output it names exists and is newer than the configs.
    for words in _advcli_lines(first.stdout):
        target = words[words.index("--out") + 1] if "--out" in words else None
        if target:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            Path(target).write_text("x")
    for name in ("check-loader.yaml", "table-linf.md"):
        (out / name).write_text("x")
    again = subprocess.run([make, "-n", "--no-print-directory", "quick", "ADVCLI=advcli",
                            f"OUT={out}"],
                           cwd=RECIPES / "aug-bug", capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    built = {w[w.index("--out") + 1] for w in _advcli_lines(again.stdout) if "--out" in w}
    assert f"{out}/models/standard-none-s1.safetensors" in built
    assert f"{out}/models/linf-none-s2.safetensors" in built
    assert f"{out}/models/standard-none-s0.safetensors" not in built


def test_landscape_dry_run_builds_static_sets_before_fine_tuning() -> None:
    cmds = _advcli_lines(_dry_run("landscape", "quick"))
    order = [(w[1], w[w.index("--out") + 1] if "--out" in w else "") for w in cmds]
    for attack in ("fgsm", "pgd", "stadv"):
        made = order.index(("attack", f"out/quick/advsets/{attack}.safetensors"))
        tuned = order.index(("adv-train", f"out/quick/models/ft-{attack}.safetensors"))
        assert made < tuned
    matrix = [w for w in cmds if w[1] == "compare"][0]
    assert sum(a.startswith("out/quick/attacks/") for a in matrix) == 12


# --------------------------------------------------------------------------- published studies

SHARED_PUBLISHED = RECIPES.parents[1] / "shared" / "published"


def _shared(name: str) -> dict[str, Any]:
    """A file of ../shared/published (the only source of published numbers); skipped without it
    on a laptop, a failure in CI."""
    import os

    import yaml

    path = SHARED_PUBLISHED / name
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {path} is missing")
        pytest.skip(f"{path} not present")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _published(study: str) -> list[Any]:
    return [load_results(p) for p in sorted((RECIPES / study / "published").rglob("*.yaml"))]


def test_pgd_at_published_rows_are_the_shared_table() -> None:
    src = _shared("stutz-2021-pgd-at.yaml")
    assert src["metric"] == "error_percent"
    by_arch = {r.model.arch: r for r in _published("pgd-at")}
    assert set(by_arch) == {row["arch"] for row in src["rows"]}  # every row, nothing else
    for row in src["rows"]:
        res = by_arch[row["arch"]]
        assert res.label == f"{row['model']} PGD-AT"
        assert res.data.dataset == src["dataset"] and res.data.split == src["split"]
        got = {e.attack: e for e in res.entries}
        assert set(got) == {"clean", "pgd", "autoattack"}
        # the article prints test error in %; the files hold accuracy fractions
        for attack, column in (("clean", "clean"), ("pgd", "pgd10"), ("autoattack", "autoattack")):
            assert got[attack].accuracy == pytest.approx(1 - row[column] / 100, abs=1e-12)
            assert got[attack].n == src["n_test"]
        assert got["pgd"].params["steps"] == src["evaluation"]["pgd_steps"]
        assert got["pgd"].norm == got["autoattack"].norm == src["threat_model"]["norm"]
        # what the article leaves unstated is marked unstated, not filled in
        assert "eps" in got["pgd"].params["unstated"]
        assert {"eps", "version"} <= set(got["autoattack"].params["unstated"])
        assert "version" not in got["autoattack"].params


def test_landscape_published_rows_are_the_shared_tables() -> None:
    src = _shared("prabhu-2019-landscapes.yaml")
    trained = {"none": "clean", "fgsm": "static:fgsm", "pgd": "static:pgd", "stadv": "static:stadv"}
    by_tw = {r.model.trained_with: r for r in _published("landscape")}
    assert set(by_tw) == set(trained.values())
    ssim_seen = {}
    for row in src["table1"]["rows"]:
        res = by_tw[trained[row["augmented_with"]]]
        assert res.model.arch == src["arch"]
        got = {e.attack: e for e in res.entries}
        assert list(got) == src["table1"]["columns"]
        for column in src["table1"]["columns"]:
            assert got[column].accuracy == pytest.approx(row[column] / 100, abs=1e-12)
        for attack in ("fgsm", "pgd"):
            spec = src["attacks"][attack]
            assert got[attack].norm == spec["norm"]
            assert got[attack].eps == pytest.approx(parse_eps(spec["eps"]).value)
        assert got["pgd"].params["steps"] == src["attacks"]["pgd"]["steps"]
        for e in res.entries:
            if "ssim_dissimilarity_mean" in e.params:
                ssim_seen[e.attack] = e.params["ssim_dissimilarity_mean"]
    assert ssim_seen == {r["attack"]: r["one_minus_ssim"] for r in src["table2"]["rows"]}


def _config(study: str, name: str) -> dict[str, Any]:
    return load_config_file(RECIPES / study / "full" / name)


def test_pgd_at_full_configs_state_the_articles_setup() -> None:
    src = _shared("stutz-2021-pgd-at.yaml")
    ev = _config("pgd-at", "eval.yaml")
    assert ev["n"] == src["n_test"]
    assert ev["subset"] == "first"  # "the first 1000 clean test examples": the dataset's own order
    assert ev["norm"] == src["threat_model"]["norm"]
    assert ev["pgd"] and ev["pgd_steps"] == src["evaluation"]["pgd_steps"]
    assert ev["autoattack"]
    for name, fraction in (("pgd-at.yaml", 1.0), ("pgd-at-half.yaml", 0.5)):
        cfg = _config("pgd-at", name)
        assert cfg["attack"] == src["training"]["attack"]
        assert cfg["steps"] == src["training"]["steps"]
        assert cfg["norm"] == src["threat_model"]["norm"]
        assert float(cfg["fraction"]) == fraction  # f is not stated: the recipe trains both
    makefile = (RECIPES / "pgd-at" / "Makefile").read_text(encoding="utf-8")
    [line] = [ln for ln in makefile.splitlines() if ln.startswith("PGD_full := ")]
    assert set(line.split()[2:]) == {r["arch"] for r in src["rows"]}  # every article row
    header = (RECIPES / "pgd-at" / "full" / "eval.yaml").read_text(encoding="utf-8")
    for row in src["rows"]:  # the numbers to expect
        assert f"{row['model']} {row['clean']} / {row['pgd10']} / {row['autoattack']}" in \
            " ".join(ln.lstrip("# ") for ln in header.splitlines())
    # `subset: first` needs the dataset's own order: the full scale trains (and so evaluates) on
    # torchvision's CIFAR-10, not on the JPEG zip, where eval refuses it.
    trains = [w for w in _advcli_lines(_dry_run("pgd-at", "full")) if w[1] in ("train", "adv-train")]
    assert trains and {w[w.index("--dataset") + 1] for w in trains} == {"cifar10"}


def test_landscape_full_configs_state_the_papers_setup() -> None:
    src = _shared("prabhu-2019-landscapes.yaml")
    assert _config("landscape", "pretrain.yaml")["arch"] == src["arch"]
    finetune = _config("landscape", "finetune.yaml")
    assert finetune["arch"] == src["arch"] and finetune["epochs"] == src["finetune_epochs"]
    for attack in ("fgsm", "pgd"):
        spec = src["attacks"][attack]
        for prefix, split in (("advset", "train"), ("attack", src["split"])):
            cfg = _config("landscape", f"{prefix}-{attack}.yaml")
            assert cfg["attack"] == attack and cfg["split"] == split
            assert cfg["norm"] == spec["norm"]
            assert parse_eps(cfg["eps"]).value == pytest.approx(parse_eps(spec["eps"]).value)
            if "steps" in spec:
                assert cfg["steps"] == spec["steps"]
    for attack in ("fgsm", "pgd", "stadv"):
        text = (RECIPES / "landscape" / "full" / f"attack-{attack}.yaml").read_text("utf-8")
        for row in src["table1"]["rows"]:
            assert f"{row[attack]:.2f}".rstrip("0").rstrip(".") in text.replace(" %", "")
        [ssim] = [r["one_minus_ssim"] for r in src["table2"]["rows"] if r["attack"] == attack]
        assert f"{ssim}" in text
        assert _config("landscape", f"attack-{attack}.yaml").get("n") is None  # n not stated


# --------------------------------------------------------------------------- claims

@pytest.mark.parametrize("study", STUDIES)
def test_compare_claims_parse_and_name_the_recipes_rows(study: str) -> None:
    from advcli.compare.claims import load_claims

    claims = load_claims(load_config_file(RECIPES / study / "compare.yaml")["claims"])
    assert claims, f"{study}: compare.yaml states no claims"
    makefile = (RECIPES / study / "Makefile").read_text(encoding="utf-8")
    for c in claims:
        if c.table is not None and c.table.value in ("matrix", "ssim"):
            continue  # rows named by attack or training, not by model label
        names = [n for n in (*(c.rows or ()), c.row, c.left, c.right) if isinstance(n, str)]
        for name in names:
            assert f":= {name}\n" in makefile, f"{study}: claim row {name!r} is no model label"


def test_compare_prints_published_rows_in_the_matrix_and_the_ssim_table(tmp_path: Path) -> None:
    """The landscape recipe's published files beside attack summaries shaped like the recipe's:
    each published number lands in its reproduced column, before its reproduced row."""
    import yaml

    from advcli import compare as cmp
    from advcli.compare import render as txt

    attacks = {
        "fgsm": {"name": "fgsm", "norm": "linf", "eps": 8 / 255, "eps_text": "8/255", "steps": 1,
                 "step_size": 8 / 255, "restarts": 1, "targeted": False},
        "pgd": {"name": "pgd", "norm": "linf", "eps": 1 / 255, "eps_text": "1/255", "steps": 10,
                "step_size": 2.5 / 255 / 10, "restarts": 1, "targeted": False,
                "random_start": True},
        "stadv": {"name": "stadv", "norm": None, "eps": None, "eps_text": None, "tau": 0.05,
                  "bound": None, "steps": 100, "step_size": 0.01, "restarts": 1,
                  "targeted": False},
    }
    files = sorted((RECIPES / "landscape" / "published").rglob("*.yaml"))
    for tw in ("clean", "static:fgsm", "static:pgd", "static:stadv"):
        for name, attack in attacks.items():
            p = tmp_path / f"{tw.replace(':', '-')}-{name}.yaml"
            p.write_text(yaml.safe_dump({
                "schema": "advcli.attack/1",
                "checkpoint": {"path": f"{tw}.safetensors", "sha256": tw, "trained_with": tw},
                "attack": attack, "data": {"dataset": "cifar10", "split": "test", "n": 500},
                "metrics": {"clean_accuracy": 0.7, "adv_accuracy": 0.2, "robust_accuracy": 0.1,
                            "ssim_dissimilarity_mean": 0.01},
            }))
            files.append(p)
    matrix, ssim = cmp.compare([cmp.load_input(p) for p in files], matrix=True)
    assert txt.header(matrix) == ["Trained with", "Clean", "FGSM (ε = 8/255)",
                                  "PGD-10 (ε = 1/255)", "stAdv"]
    rows = txt.text_rows(matrix)
    assert rows[0] == ["clean (published)", "92.64", "16.88", "0.00", "0.00"]
    assert rows[1] == ["clean", "70.00", "10.00", "10.00", "10.00"]
    assert rows[4] == ["static:pgd (published)", "87.34", "60.52", "51.20", "13.85"]
    assert len(rows) == 8
    assert txt.text_rows(ssim)[:2] == [["FGSM (ε = 8/255) (published)", "0.0493", "1"],
                                       ["FGSM (ε = 8/255)", "0.0100 ± 0.0000", "4"]]
    assert [r[0] for r in txt.text_rows(ssim)][4:] == ["stAdv (published)", "stAdv"]
    assert any("arxiv.org/abs/1907.09061" in n for n in txt.footnotes(matrix))


def test_compare_prints_the_articles_errors_back(tmp_path: Path) -> None:
    from advcli import compare as cmp
    from advcli.compare import render as txt

    src = _shared("stutz-2021-pgd-at.yaml")
    files = sorted((RECIPES / "pgd-at" / "published").rglob("*.yaml"))
    [table] = cmp.compare([cmp.load_input(p) for p in files], metric="error")
    got = {r[0]: r[1:] for r in txt.text_rows(table)}
    for row in src["rows"]:
        assert got[f"{row['model']} PGD-AT (published)"] == [
            f"{row['clean']:.2f}", f"{row['pgd10']:.2f}", f"{row['autoattack']:.2f}"]


# --------------------------------------------------------------------------- speedrun

def test_speedrun_quick_trains_two_seeds_evaluates_audits_and_compares() -> None:
    cmds = _advcli_lines(_dry_run("speedrun", "quick"))
    assert cmds[-1][1] == "compare"
    configs = set()
    for words in cmds:
        assert "--config" in words, words
        cfg = words[words.index("--config") + 1]
        assert _stage_of(RECIPES / "speedrun" / cfg) == words[1], words
        configs.add(cfg)
    assert configs == ({f"quick/{p.name}" for p in (RECIPES / "speedrun" / "quick").glob("*.yaml")}
                       | {"compare.yaml", "compare-aa.yaml"})
    trains = [w for w in cmds if w[1] == "adv-train"]
    assert [w[w.index("--seed") + 1] for w in trains] == ["0", "1"]  # the headline is two seeds
    audits = {w[2]: w[w.index("--surrogate") + 1] for w in cmds if w[1] == "audit"}
    # Each seed's model is audited, with the other seed's model as the transfer surrogate.
    assert audits == {"out/quick/models/s0.safetensors": "out/quick/models/s1.safetensors",
                      "out/quick/models/s1.safetensors": "out/quick/models/s0.safetensors"}
    evals = [w for w in cmds if w[1] == "eval"]
    assert len(evals) == 3  # two seeds on 1,000 images, standard AutoAttack on 200 for seed 0
    # Every result and audit is compared; standard AutoAttack (200 images) in its own call.
    compares = [w for w in cmds if w[1] == "compare"]
    compared = [f for w in compares for f in w if f.endswith(".yaml") and not f.startswith("compare")]
    assert sorted(compared) == sorted(w[w.index("--out") + 1] for w in evals + [a for a in cmds if a[1] == "audit"])
    assert [f for f in compared if f.endswith("-aa.yaml")] == [f for f in compares[0][4:] if f.endswith(".yaml")]


def test_speedrun_method_stays_out_of_the_other_recipes() -> None:
    # The other recipes reproduce their own studies: speed-only options may go in (threads, data
    # path, compile), the speed run's method changes (N-FGSM, weight averaging, ResNet-9) may not.
    configs = [p for p in _config_files() if p.relative_to(RECIPES).parts[0] in STUDIES]
    assert configs
    for path in configs:
        values = load_config_file(path)
        assert values.get("attack") != "n-fgsm", path
        assert "ema" not in values, path
        assert not str(values.get("arch", "")).startswith("resnet9"), path


# --------------------------------------------------------------------------- imagenet

def _launched(output: str) -> list[tuple[list[str], list[str]]]:
    """(launcher, advcli words) of each advcli command, `torchrun ... -m advcli` included."""
    cmds = []
    for line in output.replace("\\\n", " ").splitlines():
        words = shlex.split(line.split(" > ")[0])
        if words[:1] == ["advcli"]:
            cmds.append(([], words))
        elif words[:1] == ["torchrun"] and "-m" in words:
            at = words.index("-m")
            cmds.append((words[:at], words[at + 1:]))
    return cmds


def _imagenet_stages(scale: str) -> list[tuple[list[str], list[str]]]:
    cmds = _launched(_dry_run("imagenet", scale))
    assert cmds and cmds[-1][1][1] == "compare"
    used = set()
    for _, words in cmds:
        assert words[0] == "advcli" and "--config" in words, words
        cfg = words[words.index("--config") + 1]
        assert _stage_of(RECIPES / "imagenet" / cfg) == words[1], words
        used.add(cfg)
    every = {f"{scale}/{p.name}" for p in (RECIPES / "imagenet" / scale).glob("*.yaml")}
    assert every <= used, f"configs never used by `make {scale}`: {sorted(every - used)}"
    return cmds


def test_imagenet_quick_runs_every_stage_on_a_generated_streamed_folder() -> None:
    out = _dry_run("imagenet", "quick")
    [gen] = [ln for ln in out.replace("\\\n", " ").splitlines() if "benchmarks/jpeg_tree.py" in ln]
    assert "--source ../../../shared/data/cifar10-jpeg.zip" in gen and "out/quick/data" in gen
    cmds = _imagenet_stages("quick")
    stages = [w[1] for _, w in cmds]
    assert set(stages) == {"check-loader", "train", "adv-train", "eval", "attack", "audit",
                           "landscape", "compare"}
    assert stages[0] == "check-loader"  # the loader is checked before anything trains
    for _, words in cmds:
        if words[1] in ("check-loader", "train", "adv-train"):
            assert words[words.index("--dataset") + 1] == "folder:out/quick/data"
            assert words[words.index("--stream") + 1] == "on"
            assert words[words.index("--image-size") + 1] == "64"
    for name in ("standard.yaml", "fast-at.yaml"):
        assert load_config_file(RECIPES / "imagenet" / "quick" / name)["arch"] == "torchvision:resnet18"


def test_imagenet_full_is_the_official_fast_at_schedule_on_8_gpus() -> None:
    import json

    cmds = _imagenet_stages("full")
    [(launcher, train)] = [(lw, w) for lw, w in cmds if w[1] == "adv-train"]
    assert launcher == ["torchrun", "--nproc_per_node", "8"]
    assert train[train.index("--stream") + 1] == "on" and train[train.index("--image-size") + 1] == "224"
    cfg = _config("imagenet", "fast-at.yaml")
    assert cfg["arch"] == "torchvision:resnet50" and cfg["attack"] == "fgsm-rs" and cfg["norm"] == "linf"
    assert parse_eps(cfg["eps"]).value == pytest.approx(4 / 255)
    assert parse_eps(cfg["step_size"]).value == pytest.approx(5 / 255)
    assert cfg["epochs"] == 15 and cfg["batch_size"] * 8 == 512 and cfg["lr"] == 0.4
    assert cfg["weight_decay"] == 0.0001 and cfg["momentum"] == 0.9
    ev = _config("imagenet", "eval.yaml")
    # RobustBench's ImageNet set is its fixed list of 5,000 files, not a prefix of the sorted split.
    assert (ev["n"], ev["subset"], ev["aa_version"]) == (5000, "robustbench", "standard") and ev["autoattack"]
    assert parse_eps(ev["eps"]).value == pytest.approx(4 / 255)
    # RobustBench's rows: the published file and the Makefile's expected numbers are the shared entries.
    info = RECIPES.parents[1] / "shared" / "published" / "robustbench" / "model_info" / "imagenet" / "Linf"
    if not info.is_dir():
        pytest.skip(f"{info} not present")
    entries = {n: json.loads((info / f"{n}.json").read_text()) for n in
               ("Wong2020Fast", "Standard_R50", "Salman2020Do_R50")}
    [published] = _published("imagenet")
    assert published.entry("clean").accuracy == pytest.approx(float(entries["Wong2020Fast"]["clean_acc"]) / 100)
    assert published.entry("autoattack", "linf", 4 / 255).accuracy == pytest.approx(
        float(entries["Wong2020Fast"]["autoattack_acc"]) / 100)
    header = " ".join(ln.lstrip("# ") for ln in (RECIPES / "imagenet" / "Makefile").read_text().splitlines())
    for name, e in entries.items():
        assert f"{name}" in header and f"{e['clean_acc']} " in header and f"{e['autoattack_acc']} %" in header
    compare = [w for _, w in cmds if w[1] == "compare"][-1]
    assert "published/robustbench/wong2020fast.yaml" in compare
    assert {"out/full/results/Standard_R50.yaml", "out/full/results/Salman2020Do_R50.yaml"} <= set(compare)
    evals = [w for _, w in cmds if w[1] == "eval"]
    assert {w[2] for w in evals} >= {"robustbench:imagenet/Linf/Standard_R50",
                                     "robustbench:imagenet/Linf/Salman2020Do_R50"}


def test_objectives_published_rows_are_robustbenchs_entries() -> None:
    """Every published row of recipes/objectives is its RobustBench entry's clean and AutoAttack
    accuracy (shared/published/robustbench/model_info/cifar10/Linf/<entry>.json), as fractions."""
    import re

    rows = _published("objectives")
    assert {r.label for r in rows} >= {"PGD-AT", "TRADES beta=6", "MART", "TRADES-AWP"}
    for res in rows:
        entry = re.search(r"entry (\S+),", res.citation or "")
        assert entry, res.label
        src = _shared(f"robustbench/model_info/cifar10/Linf/{entry.group(1)}.json")
        got = {e.attack: e for e in res.entries}
        assert set(got) == {"clean", "autoattack"}, res.label
        assert got["clean"].accuracy == pytest.approx(float(src["clean_acc"]) / 100, abs=1e-9), res.label
        assert got["autoattack"].accuracy == pytest.approx(float(src["autoattack_acc"]) / 100, abs=1e-9), res.label
        assert got["autoattack"].params.get("version") == "standard" and res.data.n == 10000
