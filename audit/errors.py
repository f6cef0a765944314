"""audit's error root: bad input for a verification or a privacy audit (exit 2)."""
from __future__ import annotations

from shards.errors import PatchveilError


class AuditError(PatchveilError, ValueError):
    """An input the audit cannot start from; one line naming the file and the reason."""
