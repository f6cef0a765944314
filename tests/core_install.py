"""Run the real command lines as a core install (`pip install patchveil`, no extras) would.

The test venv has every extra. `run_core` starts a subprocess whose PYTHONPATH puts a
``sitecustomize.py`` first; it wraps every finder on ``sys.meta_path`` so that the modules
only an extra installs (torch, torchvision, timm, scipy, skimage, ray, pycocotools) are not
found: ``import torch`` raises ``ModuleNotFoundError: No module named 'torch'`` and
``importlib.util.find_spec("torch")`` is None, as on a machine without them. At exit the
subprocess writes the names in ``sys.modules`` to a file, so a test can check what a command
imported: ``result.modules``.

    result = run_core(["audit-shards", "verify", str(out), "--public-key", str(identity)])
    assert result.returncode == 0 and not result.modules & {"torch", "scipy"}

``run_tracked`` is the same with nothing blocked (the full install), for import checks;
``core_env()`` is the environment itself, for other subprocesses (benchmarks/cli_startup.py).
The first argument is a console script of the venv (``audit-shards``, ``encrypt-dataset``,
...) or ``python`` for the venv's interpreter.
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

BIN = Path(sys.executable).parent
# Top-level modules that only an extra installs, and the distributions that bring them.
EXTRA_MODULES = ("torch", "torchvision", "timm", "scipy", "skimage", "ray", "pycocotools")
EXTRA_DISTRIBUTIONS = ("torch", "torchvision", "timm", "scipy", "scikit-image", "ray", "pycocotools")
BLOCK_ENV = "PATCHVEIL_TEST_BLOCK"            # comma-separated top-level modules to hide
MODULES_ENV = "PATCHVEIL_TEST_MODULES_OUT"    # file that receives sorted(sys.modules) at exit

SITECUSTOMIZE = '''\
"""Test helper (tests/core_install.py): hide optional extras, record sys.modules at exit."""
import atexit
import os
import re
import sys

_BLOCKED = frozenset(filter(None, os.environ.get("PATCHVEIL_TEST_BLOCK", "").split(",")))
_DISTS = frozenset(filter(None, os.environ.get("PATCHVEIL_TEST_BLOCK_DISTS", "").split(",")))


def _normal(name):
    return re.sub(r"[-_.]+", "-", name or "").lower()


class _Hide:
    """Wraps one meta-path finder: a hidden module is not found, as if not installed."""

    def __init__(self, inner):
        self._inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED:
            return None
        find = getattr(self._inner, "find_spec", None)
        return find(name, path, target) if find is not None else None

    def find_distributions(self, *args, **kwargs):
        find = getattr(self._inner, "find_distributions", None)
        for dist in (find(*args, **kwargs) if find is not None else ()):
            if _normal(dist.metadata["Name"]) not in _DISTS:
                yield dist

    def __getattr__(self, attr):
        return getattr(self._inner, attr)


if _BLOCKED:
    for _name in [m for m in sys.modules if m.partition(".")[0] in _BLOCKED]:
        del sys.modules[_name]
    sys.meta_path[:] = [_Hide(finder) for finder in sys.meta_path]

_OUT = os.environ.get("PATCHVEIL_TEST_MODULES_OUT")
if _OUT:
    @atexit.register
    def _record_modules():
        with open(_OUT, "w") as f:
            f.write("\\n".join(sorted(sys.modules)))
'''


class _Site:
    """One folder per test process holding the sitecustomize.py above."""

    path: Path | None = None

    @classmethod
    def folder(cls) -> Path:
        if cls.path is None:
            cls.path = Path(tempfile.mkdtemp(prefix="patchveil-core-install-"))
            atexit.register(shutil.rmtree, cls.path, True)
            (cls.path / "sitecustomize.py").write_text(SITECUSTOMIZE)
        return cls.path


def command_line(args: Sequence[str | os.PathLike[str]]) -> list[str]:
    """`args` with a console script name or ``python`` resolved in this venv."""
    first, *rest = [os.fspath(a) for a in args]
    if first == "python":
        first = sys.executable
    elif os.sep not in first and (BIN / first).exists():
        first = str(BIN / first)
    return [first, *rest]


def tracked_env(*, block: Iterable[str] = (), block_distributions: Iterable[str] = (),
                env: dict[str, str] | None = None, modules_out: Path | None = None) -> dict[str, str]:
    """os.environ plus `env`, with the sitecustomize above first on PYTHONPATH hiding `block`
    (and the distributions `block_distributions` from importlib.metadata); with `modules_out`,
    the process writes its sys.modules there at exit."""
    site = _Site.folder()
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), full_env.get("PYTHONPATH")]))
    full_env[BLOCK_ENV] = ",".join(block)
    full_env["PATCHVEIL_TEST_BLOCK_DISTS"] = ",".join(block_distributions)
    if modules_out is not None:
        full_env[MODULES_ENV] = str(modules_out)
    else:
        full_env.pop(MODULES_ENV, None)
    return full_env


def core_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a simulated core install (for benchmarks and other subprocesses)."""
    return tracked_env(block=EXTRA_MODULES, block_distributions=EXTRA_DISTRIBUTIONS, env=env)


def run_tracked(args: Sequence[str | os.PathLike[str]], *, block: Iterable[str] = (),
                block_distributions: Iterable[str] = (), env: dict[str, str] | None = None,
                timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run a command line with `block` hidden; ``result.modules`` = what it imported (a set).

    Output is captured as text unless told otherwise. `env` adds to (not replaces) os.environ.
    """
    with tempfile.NamedTemporaryFile("r", prefix="modules-", suffix=".txt", dir=_Site.folder(),
                                     delete=False) as f:
        record = Path(f.name)
    full_env = tracked_env(block=block, block_distributions=block_distributions, env=env, modules_out=record)
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    try:
        result = subprocess.run(command_line(args), env=full_env, timeout=timeout, **kwargs)
        text = record.read_text()
        result.modules = set(text.split("\n")) if text else set()  # type: ignore[attr-defined]
    finally:
        record.unlink(missing_ok=True)
    return result


def run_core(args: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.CompletedProcess:
    """Run a command line as on a core install: no module of any extra can be imported."""
    return run_tracked(args, block=EXTRA_MODULES, block_distributions=EXTRA_DISTRIBUTIONS, **kwargs)


def heavy_imports(modules: set[str]) -> set[str]:
    """The extras' top-level modules among `modules` (what a core-install command must not need)."""
    return {m for m in modules if m.partition(".")[0] in EXTRA_MODULES}
