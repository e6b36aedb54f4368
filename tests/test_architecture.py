"""The house rules that imports can show, read from the source with `ast` (nothing is imported).

Every import counts, including those inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import re
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
        "import typer\nfrom advcli.models.checkpoint import load_tensors\nfrom ..cli import render\n"
        "def g():\n    from advcli.data import load_dataset\n"
    )
    names = imported_names(f, root=tmp_path)
    assert {"typer", "advcli.models.checkpoint.load_tensors", "advcli.cli", "advcli.cli.render",
            "advcli.data.load_dataset"} <= names


def test_data_does_not_import_checkpoint() -> None:
    # Tensor files are advcli.formats.tensorfile's; models/checkpoint.py would pull in the model registry.
    assert offenders(python_files("data"), ("advcli.models.checkpoint",)) == {}


def test_the_core_never_imports_the_cli_typer_or_rich() -> None:
    # Everything below cli/ is a library: no terminal in it (`__main__` is the cli's door).
    files = [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in ("cli", "__main__.py")]
    assert offenders(files, ("advcli.cli", "typer", "rich", "click")) == {}


def test_rich_lives_in_cli_render_alone() -> None:
    # The rich table, colours and progress bars are drawn in one place; commands call it.
    files = [p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "cli" / "render.py"]
    assert offenders(files, ("rich",)) == {}


def test_commands_load_no_checkpoint_and_no_dataset_themselves() -> None:
    # parse options -> one stage call -> render/write: the stage loads what it works on.
    # import reads outside weights and info reads a header: their loading is the command.
    files = [p for p in python_files("cli") if p.name not in ("cmd_import.py", "cmd_info.py")]
    banned = (
        "advcli.models.checkpoint.load_checkpoint",
        "advcli.data.load_dataset",
        "advcli.data.datasets.load_dataset",
        "advcli.data.for_checkpoint",
    )
    assert offenders(files, banned) == {}


SCHEMA_RE = re.compile(r"advcli\.[a-z][a-z0-9-]*/[0-9]+")


def schema_homes() -> dict[str, set[str]]:
    """{schema string: the modules whose code holds it as a whole string literal}. Mentions
    inside longer text (docstrings, help) are documentation, not a definition."""
    homes: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and SCHEMA_RE.fullmatch(node.value)
            ):
                homes.setdefault(node.value, set()).add(str(path.relative_to(SRC)))
    return homes


def test_each_schema_string_lives_in_exactly_one_module() -> None:
    homes = schema_homes()
    expected = {"advcli.advset/1", "advcli.attack/1", "advcli.results/1", "advcli.landscape/1",
                "advcli.checkpoint/1", "advcli.directions/1"}
    assert expected <= set(homes), f"schema strings not found as literals: {expected - set(homes)}"
    assert {s: sorted(m) for s, m in homes.items() if len(m) > 1} == {}


def module_graph() -> dict[str, set[str]]:
    """{module: the advcli modules it imports}, every import counted (lazy ones and those under
    TYPE_CHECKING too). `from package import name` points at the submodule when `name` is
    one, else at the package: importing a submodule is not an import of its package's face."""
    modules = {_module_name(p, SRC): p for p in PACKAGE.rglob("*.py")}

    def target(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        names = imported_names(path, SRC)
        # `from a.b import c` also yields a.b: drop it where a.b.c is itself a module.
        parents = {n.rpartition(".")[0] for n in names if n in modules}
        graph[module] = {
            t for n in names - parents if n.startswith("advcli") and (t := target(n)) not in (None, module)
        }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_sees_a_lazy_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_one_that_imports_it_back() -> None:
    # A lazy import still ties two modules: the circle is there, only hidden until run time.
    assert cycles(module_graph()) == []


def private_imports(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """{module: the private modules (a leading underscore) it imports from outside the package
    that holds them}."""
    found: dict[str, list[str]] = {}
    for module, imports in graph.items():
        for name in sorted(imports):
            parts = name.split(".")
            for i, part in enumerate(parts):
                owner = ".".join(parts[:i])
                if part.startswith("_") and not part.startswith("__") and not module.startswith(owner + "."):
                    found.setdefault(module, []).append(name)
                    break
    return found


def test_the_private_module_rule_reads_package_boundaries() -> None:
    graph = {"advcli.compare.run": {"advcli.compare._matrix"},
             "advcli.compare.sub.x": {"advcli.compare._matrix"},
             "advcli.cli.cmd_compare": {"advcli.compare._matrix", "advcli.compare"}}
    assert private_imports(graph) == {"advcli.cli.cmd_compare": ["advcli.compare._matrix"]}


def test_no_package_imports_one_that_imports_it_back() -> None:
    # The same rule one floor up: advcli.formats never reaches up into advcli.models, and so on.
    def top(module: str) -> str:
        return ".".join(module.split(".")[:2])

    packages: dict[str, set[str]] = {}
    for module, imports in module_graph().items():
        packages.setdefault(top(module), set()).update(top(m) for m in imports if top(m) != top(module))
    assert cycles(packages) == []


def test_no_import_of_another_package_s_private_module() -> None:
    # advcli.compare._x is compare's own business: outside compare/ it is reached through
    # compare's public modules.
    assert private_imports(module_graph()) == {}


MAX_LINES = 500
REASON = "# Over 500 lines:"


def test_a_module_over_500_lines_says_why_at_its_top() -> None:
    long = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) > MAX_LINES and not lines[0].startswith(REASON):
            long[str(path.relative_to(SRC))] = len(lines)
    assert long == {}, f"split these, or give the reason in a first line `{REASON} ...`"
