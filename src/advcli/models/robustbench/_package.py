"""Importing the optional robustbench package, and what to say when it is absent.

robustbench 1.1.1 declares `pyautoattack>=0.2.0` as its dependency but imports the module
by the name of the authors' git repository, `autoattack` (`from autoattack import AutoAttack`,
`from autoattack.state import EvaluationState` in robustbench/eval.py, reached from its
`__init__`). PyPI's pyautoattack is the same authors' code under the module name
`pyautoattack`, so with the dependency robustbench itself asks for, `import robustbench` fails.
When no real `autoattack` module is importable, `import_robustbench` registers the already
imported `pyautoattack` modules under the `autoattack` names first; a user who installed the
git package keeps theirs.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import warnings
from types import ModuleType

from advcli.errors import AdvcliError

INSTALL_HINT = "pip install 'advcli[robustbench]'"


class MissingExtraError(AdvcliError):
    """The robustbench package (advcli's optional extra) is not installed."""


def _alias_autoattack() -> None:
    if "autoattack" in sys.modules:
        return
    try:
        real = importlib.util.find_spec("autoattack")
    except (ImportError, ValueError):
        real = None
    if real is not None:
        return
    pyautoattack = importlib.import_module("pyautoattack")
    importlib.import_module("pyautoattack.state")  # robustbench.eval imports it by name
    for name, module in list(sys.modules.items()):
        if name == "pyautoattack" or name.startswith("pyautoattack."):
            sys.modules["autoattack" + name[len("pyautoattack"):]] = module
    del pyautoattack


def import_robustbench() -> ModuleType:
    """The `robustbench` package, or one line saying how to install it."""
    try:
        _alias_autoattack()
        # Its import chain warns about APIs it uses (pkg_resources, torch.jit.interface): nothing
        # an advcli user can act on, so kept off stderr.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=UserWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            return importlib.import_module("robustbench")
    except ModuleNotFoundError as exc:
        missing = exc.name or "robustbench"
        what = "the robustbench package" if missing.split(".")[0] == "robustbench" else (
            f"the robustbench package's dependency {missing!r}")
        raise MissingExtraError(f"robustbench models need {what}: {INSTALL_HINT}") from exc


def robustbench_version() -> str:
    try:
        return importlib.metadata.version("robustbench")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
