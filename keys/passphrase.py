"""Where a passphrase comes from: the environment, a file, or a hidden prompt; never argv."""
from __future__ import annotations

import getpass
import os
from pathlib import Path

from keys.errors import KeystoreError

PASSPHRASE_ENV = "PATCHVEIL_PASSPHRASE"


def read_passphrase(passphrase_file: Path | None = None, confirm: bool = False) -> bytes:
    """Return the passphrase as UTF-8 bytes.

    Order: ``$PATCHVEIL_PASSPHRASE``, else ``passphrase_file`` (one trailing newline removed),
    else a hidden prompt, asked twice when ``confirm`` (a new keystore) so a typo cannot seal
    a key nobody can open. An empty passphrase is refused.
    """
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env is not None:
        return _non_empty(from_env.encode("utf-8"), f"${PASSPHRASE_ENV}")
    if passphrase_file is not None:
        return _read_file(Path(passphrase_file))
    return _prompt(confirm)


def _read_file(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeystoreError(path, "passphrase file not found") from None
    except IsADirectoryError:
        raise KeystoreError(path, "passphrase file is a directory") from None
    except OSError as exc:
        raise KeystoreError(path, f"cannot read passphrase file ({exc.strerror})") from None
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    return _non_empty(data, str(path))


def _prompt(confirm: bool) -> bytes:
    try:
        first = getpass.getpass("Passphrase: ")
        if confirm:
            second = getpass.getpass("Passphrase (again): ")
            if first != second:
                raise KeystoreError("passphrase prompt", "the two passphrases do not match")
    except (EOFError, KeyboardInterrupt):
        raise KeystoreError("passphrase prompt", "no passphrase given") from None
    return _non_empty(first.encode("utf-8"), "passphrase prompt")


def _non_empty(passphrase: bytes, source: str) -> bytes:
    if not passphrase:
        raise KeystoreError(source, "empty passphrase")
    return passphrase
