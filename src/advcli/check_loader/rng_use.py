"""Recording random-number calls while the probe loads: the evidence that tells a frozen
augmentation (an RNG seeded from the item alone, e.g. `np.random.default_rng(index)`: the same
crop and flip of each image in every epoch) from a pipeline with no augmentation at all. The
outputs cannot tell them apart; both are a fixed function of the item.

Installed in each probe worker after the pipeline's own `worker_init_fn` (`WorkerInit`), and
around the loop when loading runs in the main process (`watching`, which undoes everything).
What it sees:
- torch: its random functions (`torch.rand`, `randint`, ...), the in-place `Tensor.uniform_`
  family and every `torch.Generator` method (`manual_seed` included), through a profile hook;
- Python's `random`: module functions and `random.Random` objects, through the same hook;
- NumPy: `np.random.default_rng`, `np.random.seed` and `np.random.RandomState(...)`, wrapped in
  `numpy.random` and where the user's own modules imported them by name (NumPy's Cython
  functions are invisible to a profile hook), and any change of NumPy's global state.
Not seen: a `Generator` built directly from a BitGenerator, or a hand-written generator; such a
frozen pipeline is reported as having no randomness.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import sysconfig
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

_TORCH_RANDOM = frozenset({
    "rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like",
    "bernoulli", "multinomial", "normal", "poisson", "uniform_", "normal_", "random_",
    "bernoulli_", "exponential_", "cauchy_", "geometric_", "log_normal_",
})

_seen: set[str] = set()  # names of the random-number calls seen in this process
_global_state: tuple[Any, ...] | None = None


def take() -> list[str]:
    """The calls seen since the last `take` (and a changed NumPy global state), sorted."""
    global _global_state
    if _global_state is not None:
        now = _numpy_global_state()
        if now != _global_state:
            _seen.add("numpy.random (global state)")
            _global_state = now
    names = sorted(_seen)
    _seen.clear()
    return names


def _numpy_global_state() -> tuple[Any, ...]:
    st = np.random.get_state()
    return (st[1].tobytes(), *st[2:])


def _hook(frame: Any, event: str, arg: Any) -> None:
    try:
        if event == "c_call":
            owner = getattr(arg, "__self__", None)
            name = getattr(arg, "__name__", "")
            if isinstance(owner, torch.Generator):
                _note(f"torch.Generator.{name}")
            elif isinstance(owner, random.Random):
                _note(f"random.Random.{name}")
            elif name in _TORCH_RANDOM and (
                getattr(arg, "__module__", None) == "torch" or isinstance(owner, torch.Tensor)
            ):
                _note(f"torch.{name}")
        elif event == "call" and frame.f_globals.get("__name__") == "random":
            name = frame.f_code.co_name
            _note("random.Random" if name == "__init__" else f"random.{name}")
    except Exception:  # a spawned worker's interpreter tearing down (torch may be None)
        pass


def _note(name: str) -> None:
    _seen.add(name)
    # One sighting is the evidence; profiling every later call would only slow the loads.
    if sys.getprofile() is _hook:
        sys.setprofile(None)


def _counting(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _note(name)
        return fn(*args, **kwargs)

    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    wrapper.__name__ = getattr(fn, "__name__", name)
    wrapper.__doc__ = getattr(fn, "__doc__", None)
    return wrapper


class _SameClass(type):
    # isinstance/issubclass against the stand-in answer for the real class, so RandomState
    # objects made before the stand-in was installed still pass `isinstance` checks.
    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, cls.__mro__[1])

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, cls.__mro__[1])


class CountingRandomState(np.random.RandomState, metaclass=_SameClass):
    """`np.random.RandomState` that records its construction."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _note("numpy.random.RandomState")
        super().__init__(*args, **kwargs)


def _stand_ins() -> dict[str, tuple[Any, Any]]:
    # name in numpy.random -> (original, stand-in); originals looked up now, not at import, so a
    # second install (workers=0 twice) does not wrap a wrapper.
    real = {name: getattr(np.random, name) for name in ("default_rng", "seed", "RandomState")}
    real = {k: getattr(v, "__wrapped__", v) for k, v in real.items()}
    if real["RandomState"] is CountingRandomState:
        real["RandomState"] = np.random.mtrand.RandomState
    return {
        "default_rng": (real["default_rng"], _counting(real["default_rng"], "numpy.random.default_rng")),
        "seed": (real["seed"], _counting(real["seed"], "numpy.random.seed")),
        "RandomState": (real["RandomState"], CountingRandomState),
    }


def _library_roots() -> tuple[str, ...]:
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.__file__)}
    paths.update(v for k, v in sysconfig.get_paths().items() if k in ("purelib", "platlib"))
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths.add(here)  # advcli itself
    return tuple(os.path.abspath(p) + os.sep for p in paths if p)


def _user_modules() -> list[Any]:
    """Modules loaded from outside Python's and the installed packages' folders: the pipeline's
    own files, where `from numpy.random import default_rng` binds a name we must wrap too."""
    roots = _library_roots()
    found = []
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and not os.path.abspath(file).startswith(roots):
            found.append(module)
    return found


def install() -> Callable[[], None]:
    """Start recording in this process; returns the function that stops and undoes it."""
    global _global_state
    undo: list[Callable[[], None]] = []
    modules = _user_modules()
    for name, (original, stand_in) in _stand_ins().items():
        setattr(np.random, name, stand_in)
        undo.append(lambda n=name, o=original: setattr(np.random, n, o))
        for module in modules:
            for attr, value in list(vars(module).items()):
                if value is original:
                    setattr(module, attr, stand_in)
                    undo.append(lambda m=module, a=attr, o=original: setattr(m, a, o))
    previous = sys.getprofile()
    if previous is None:  # never displace a profiler the user runs
        sys.setprofile(_hook)
    _global_state = _numpy_global_state()
    _seen.clear()

    def uninstall() -> None:
        global _global_state
        if sys.getprofile() is _hook:
            sys.setprofile(previous)
        for step in reversed(undo):
            step()
        _global_state = None

    return uninstall


@contextlib.contextmanager
def watching() -> Iterator[None]:
    """Record random-number calls made in this process (the workers=0 probe) while inside."""
    uninstall = install()
    try:
        yield
    finally:
        uninstall()


class WorkerInit:
    """The probe's `worker_init_fn`: the pipeline's own first, then recording starts (so seeding
    done at worker start-up is not mistaken for draws made while loading)."""

    def __init__(self, user_init: Callable[[int], None] | None) -> None:
        self.user_init = user_init

    def __call__(self, worker_id: int) -> None:
        if self.user_init is not None:
            self.user_init(worker_id)
        install()
