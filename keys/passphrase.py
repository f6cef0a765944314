"""Where a passphrase comes from; one precedence rule, enforced here only, never argv.

The rule (``PRECEDENCE``), first source given wins, the others are not read:

1. the ``--passphrase-file FILE`` flag (an explicit choice on this command line);
2. ``$PATCHVEIL_PASSPHRASE_FILE``, a file named in the environment;
3. ``$PATCHVEIL_PASSPHRASE``, the passphrase itself in the environment;
4. a hidden prompt (asked twice when the passphrase seals something new).

The new passphrase of ``change-passphrase`` follows the same rule with ``--new-passphrase-file``,
``$PATCHVEIL_NEW_PASSPHRASE_FILE`` and ``$PATCHVEIL_NEW_PASSPHRASE``. Why: an environment
variable left over in a shell once silently beat an explicit flag, and ``init`` sealed a
keystore under a passphrase its owner never chose.
"""
from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from pathlib import Path

from keys.errors import KeystoreError

PASSPHRASE_ENV = "PATCHVEIL_PASSPHRASE"
PASSPHRASE_FILE_ENV = "PATCHVEIL_PASSPHRASE_FILE"
NEW_PASSPHRASE_ENV = "PATCHVEIL_NEW_PASSPHRASE"
NEW_PASSPHRASE_FILE_ENV = "PATCHVEIL_NEW_PASSPHRASE_FILE"

PRECEDENCE = (f"--passphrase-file FILE, else the file named by ${PASSPHRASE_FILE_ENV}, "
              f"else ${PASSPHRASE_ENV}, else a hidden prompt")
PASSPHRASE_HELP = ("Read the keystore passphrase from FILE (one trailing newline is ignored). "
                   f"Precedence: {PRECEDENCE}. Never on the command line.")
NEW_PASSPHRASE_HELP = ("Read the new passphrase from FILE. Precedence: --new-passphrase-file FILE, "
                       f"else the file named by ${NEW_PASSPHRASE_FILE_ENV}, else ${NEW_PASSPHRASE_ENV}, "
                       "else a hidden prompt (asked twice).")


@dataclass(frozen=True)
class _Sources:
    """The names one passphrase can come from, highest precedence first."""

    flag: str
    file_env: str
    value_env: str
    prompt: str


_CURRENT = _Sources("--passphrase-file", PASSPHRASE_FILE_ENV, PASSPHRASE_ENV, "Passphrase")
_NEW = _Sources("--new-passphrase-file", NEW_PASSPHRASE_FILE_ENV, NEW_PASSPHRASE_ENV, "New passphrase")


def read_passphrase(passphrase_file: Path | None = None, confirm: bool = False) -> bytes:
    """The keystore passphrase as UTF-8 bytes, by ``PRECEDENCE``; ``confirm`` asks the prompt
    twice (a new keystore) so a typo cannot seal a key nobody can open. Empty is refused."""
    return _resolve(_CURRENT, passphrase_file, confirm)


def read_new_passphrase(new_passphrase_file: Path | None = None) -> bytes:
    """The new passphrase of ``change-passphrase``: the same rule over the ``NEW`` sources."""
    return _resolve(_NEW, new_passphrase_file, confirm=True)


def _resolve(sources: _Sources, flag_file: Path | None, confirm: bool) -> bytes:
    """The one place the precedence is decided: flag file > file env > value env > prompt."""
    if flag_file is not None:
        return _read_file(Path(flag_file))
    named = os.environ.get(sources.file_env)
    if named is not None:
        if not named:
            raise KeystoreError(f"${sources.file_env}", "is set but names no file")
        return _read_file(Path(named))
    value = os.environ.get(sources.value_env)
    if value is not None:
        return _non_empty(value.encode("utf-8"), f"${sources.value_env}")
    return _prompt(sources.prompt, confirm)


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


def _prompt(label: str, confirm: bool) -> bytes:
    what = label.lower()
    try:
        first = getpass.getpass(f"{label}: ")
        if confirm:
            second = getpass.getpass(f"{label} (again): ")
            if first != second:
                raise KeystoreError("passphrase prompt", f"the two {what}s do not match")
    except (EOFError, KeyboardInterrupt):
        raise KeystoreError("passphrase prompt", f"no {what} given") from None
    return _non_empty(first.encode("utf-8"), "passphrase prompt")


def _non_empty(passphrase: bytes, source: str) -> bytes:
    if not passphrase:
        raise KeystoreError(source, "empty passphrase")
    return passphrase
