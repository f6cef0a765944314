"""The one error the key tools raise for bad input: a single line naming the file and the reason."""
from __future__ import annotations

import os


class KeystoreError(Exception):
    """A keystore, passphrase, identity or custody-log problem a person can act on.

    The message is ``"<file>: <reason>"`` on one line. Callers pass a reason that never
    contains a secret; the class only guarantees the single-line shape.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{self.path}: {self.reason}")
