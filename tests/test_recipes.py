"""recipes/: every shipped YAML is accepted by what reads it, and every Makefile resolves.

- Stage configs (`recipes/<study>/{quick,full}/*.yaml`, `recipes/<study>/compare.yaml`): the header
  names the stage (`# advcli <stage> — ...`) and gives the exact command; the keys go through the
  real `--config` loader and merge (`advcli.config.load_config_file` / `merge_config`) against the
  real Typer command's parameters, so an unknown key fails here as it would on the command line;
  each value has the type the option declares (PyYAML reads `5e-4` as a string, for example); every
  knob carries an inline comment (its unit).
- Published result files (`recipes/<study>/published/**.yaml`): valid `advcli.results/1` files via
  `advcli.results.load_results`, marked published, with a citation that has a URL.
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
from advcli.models import build_model
from advcli.results import load_results

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
STUDIES = ["aug-bug", "pgd-at", "landscape"]
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


def test_landscape_dry_run_builds_static_sets_before_fine_tuning() -> None:
    cmds = _advcli_lines(_dry_run("landscape", "quick"))
    order = [(w[1], w[w.index("--out") + 1] if "--out" in w else "") for w in cmds]
    for attack in ("fgsm", "pgd", "stadv"):
        made = order.index(("attack", f"out/quick/advsets/{attack}.safetensors"))
        tuned = order.index(("adv-train", f"out/quick/models/ft-{attack}.safetensors"))
        assert made < tuned
    matrix = [w for w in cmds if w[1] == "compare"][0]
    assert sum(a.startswith("out/quick/attacks/") for a in matrix) == 12
