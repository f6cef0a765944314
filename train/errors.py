"""train's error root: what an ML engineer can act on, one line naming the file."""
from __future__ import annotations

from shards.errors import CheckFailed, PatchveilError


class TrainError(PatchveilError, ValueError):
    """A release, run folder, checkpoint or setting that training cannot use (exit 2)."""


class RunDiverged(CheckFailed, FloatingPointError):
    """The run itself failed: a loss or matching cost that is not finite (exit 1)."""
