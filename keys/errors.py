"""The one error the key tools raise for bad input: a single line naming the file and the reason."""
from __future__ import annotations

import os

from shards.errors import PatchveilError


class KeystoreError(PatchveilError):
    """A keystore, passphrase, identity or custody-log problem a person can act on.

    The message is ``"<file>: <reason>"`` on one line. Callers pass a reason that never
    contains a secret; the class only guarantees the single-line shape.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(os.fspath(path), reason)
