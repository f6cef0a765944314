"""The project's one error root and the one way a command line shows an error.

Every package raises a subclass of `PatchveilError`, one root per package (keys: `KeystoreError`, shards:
`ContractError` — `ManifestError`, `ShardError`, `GeometryError` —, encrypt: `InputError`,
train: `TrainError`, audit: `AuditError`). Each renders itself as one line, ``<file>: <reason>`` when a file is at
fault, and carries the exit code the commands use: 2 for bad usage, input or environment,
1 for a check or run that failed. `render` turns any exception into that line and code;
`shards.console.run_command` is the one place the four commands show it. Standard library
only: `keys` imports this module, so it must stay below every package.
"""
from __future__ import annotations

import errno
import os
from typing import Any

# Modules that only an optional extra installs, and the extra that brings them.
EXTRA_OF_MODULE = {
    "ray": "encrypt",
    "torch": "train", "torchvision": "train", "timm": "train", "pycocotools": "train",
    "scipy": "audit", "skimage": "audit",
    "s3fs": "s3",
}


class PatchveilError(Exception):
    """A problem a person can act on. One line; never a secret in it.

    `path` names the file or option at fault (optional), `reason` says why.
    """

    exit_code = 2

    def __init__(self, *args: Any) -> None:
        if len(args) == 2:
            path, reason = args
            self.path: str | None = escape_path(os.fsdecode(path)) if path is not None else None
            self.reason = _one_line(reason)
            message = f"{self.path}: {self.reason}" if self.path else self.reason
        else:
            self.path = None
            self.reason = _one_line(" ".join(str(a) for a in args))
            message = self.reason
        super().__init__(message)

    def diagnostics(self) -> str:
        """The line a command prints for this error (without the ``error:`` prefix)."""
        return first_line(self)


class ContractError(PatchveilError, ValueError):
    """shards' error root: the public contract (manifest, shard files, mode geometry) refuses it."""


class CheckFailed(PatchveilError):
    """A verification or a run failed (not bad input): exit code 1."""

    exit_code = 1


class MissingExtra(PatchveilError):
    """A feature needs an optional dependency that is not installed."""

    def __init__(self, module: str, feature: str = "", extra: str | None = None) -> None:
        top = module.split(".")[0]
        extra = extra or EXTRA_OF_MODULE.get(top, "all")
        what = f"{feature} needs" if feature else "needs"
        super().__init__(f"{what} {top}, which is not installed: pip install \"patchveil[{extra}]\"")
        self.module, self.extra = top, extra


def require(module: str, feature: str, extra: str | None = None) -> None:
    """Raise `MissingExtra` now, before anything is written, if `module` cannot be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingExtra(module, feature, extra)


def _one_line(text: Any) -> str:
    """One printable line: whitespace runs collapsed, undecodable file-name bytes as \\xNN."""
    return escape_path(" ".join(str(text).split()))


def first_line(exc: BaseException) -> str:
    """The reason of an error on one line, also when it crossed from a worker process.

    PyTorch's DataLoader re-raises a worker's exception with the worker's traceback in the
    message; the reason is that traceback's last line, ``module.Error: message``.
    """
    lines = str(exc).strip().splitlines()
    if len(lines) > 1 and "DataLoader worker" in lines[0]:
        head, sep, rest = lines[-1].partition(": ")
        return _one_line(rest if sep and "." in head and " " not in head else lines[-1])
    return _one_line(lines[0]) if lines else type(exc).__name__


def describe_os_error(exc: OSError, default_path: str = "file system") -> str:
    """``<file>: <reason>`` for a disk, permission or network error, never a traceback."""
    reason = exc.strerror or (errno.errorcode.get(exc.errno, "") if exc.errno else "") or _one_line(exc) \
        or type(exc).__name__
    path = exc.filename if exc.filename is not None else default_path
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    return _one_line(f"{escape_path(str(path))}: {reason}")


def escape_path(path: str) -> str:
    """A path printable on one line: bytes that are not valid UTF-8 (surrogates) shown as \\xNN."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        path = os.fsencode(path).decode("utf-8", "backslashreplace")
    return path.replace("\n", "\\n").replace("\r", "\\r")


def render(exc: BaseException) -> tuple[str, int]:
    """(one line, exit code) for any error a command can meet."""
    if isinstance(exc, PatchveilError):
        return exc.diagnostics(), exc.exit_code
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return MissingExtra(exc.name).diagnostics(), 2
    if isinstance(exc, ModuleNotFoundError):
        return first_line(exc), 2
    if isinstance(exc, OSError):
        return describe_os_error(exc), 2
    if isinstance(exc, ValueError):  # the project's convention for an argument out of range
        return first_line(exc), 2
    if isinstance(exc, MemoryError):
        return "out of memory", 2
    return f"{type(exc).__name__}: {first_line(exc)}", 1
