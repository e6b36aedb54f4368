"""The house rules that imports can show, read from the source with `ast` (nothing is imported).

Every import counts, including those inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "advcli"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(path: Path, root: Path = SRC) -> set[str]:
    """Dotted names a file imports: `import a.b` -> a.b; `from a.b import c` -> a.b and a.b.c;
    relative imports resolved against the file's package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package.pop()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def python_files(*folders: str) -> list[Path]:
    files = [p for f in folders for p in sorted((PACKAGE / f).rglob("*.py"))]
    assert files, f"no Python files under {folders}: the layout changed, update this test"
    return files


def offenders(files: list[Path], banned: tuple[str, ...]) -> dict[str, list[str]]:
    """{file: the banned names it imports}; a name is banned if it is one of `banned` or
    lies under one (`advcli.cli` bans `advcli.cli.render`)."""
    found: dict[str, list[str]] = {}
    for path in files:
        bad = sorted(
            n for n in imported_names(path) if any(n == b or n.startswith(b + ".") for b in banned)
        )
        if bad:
            found[str(path.relative_to(SRC))] = bad
    return found


def test_the_import_reader_sees_every_form(tmp_path: Path) -> None:
    pkg = tmp_path / "advcli" / "data"
    pkg.mkdir(parents=True)
    f = pkg / "x.py"
    f.write_text(
        "import typer\nfrom advcli.checkpoint import load_tensors\nfrom ..cli import render\n"
        "def g():\n    from advcli.data import load_dataset\n"
    )
    names = imported_names(f, root=tmp_path)
    assert {"typer", "advcli.checkpoint.load_tensors", "advcli.cli", "advcli.cli.render",
            "advcli.data.load_dataset"} <= names


def test_data_does_not_import_checkpoint() -> None:
    # Tensor files are advcli.tensorfile's; checkpoint.py would pull in the model registry.
    assert offenders(python_files("data"), ("advcli.checkpoint",)) == {}
