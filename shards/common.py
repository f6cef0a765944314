"""Small stdlib helpers every package needs once: atomic writes, fsync, canonical JSON,
base64, shard names and the two kinds of key id.

Why one module: each of these was written several times with different details (one
`fsync_directory` ignored every error, another raised every error; one atomic write set the
mode before writing, another after), and the canonical JSON a custody log signs must be the
very bytes a manifest signs. Standard library only, because `keys` imports it (see
`KEYS_MAY_USE_FROM_SHARDS` in tests/test_layering.py) and it must stay below every package.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NewType

__all__ = [
    "DatasetKeyID", "SigningKeyID", "SHARD_NAME_PATTERN", "SPLIT_PATTERN", "atomic_write_bytes", "atomic_writer", "b64decode_canonical",
    "b64encode", "canonical_json", "fsync_directory", "shard_name",
]

# Two kinds of key id, named apart so code says which it means. The JSON field of both in
# manifests, custody entries and identities stays "key_id" (releases already written load).
DatasetKeyID = NewType("DatasetKeyID", str)
"""``pv-`` + 16 hex: names a dataset key (`keys.derive.dataset_key_id_from_commitment`)."""
SigningKeyID = NewType("SigningKeyID", str)
"""``pk-`` + 16 hex: names an owner's Ed25519 signing key (`keys.custody.signing_key_id`)."""

SPLIT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
SHARD_NAME_PATTERN = re.compile(r"^(?P<split>[A-Za-z0-9][A-Za-z0-9_-]{0,63})-(?P<index>[0-9]{6})\.tar$")

# errno values that mean "this platform or file system cannot fsync a directory", not "the
# disk failed": Linux gives EINVAL on some file systems, macOS and FUSE mounts ENOTSUP/EBADF.
_NO_DIRECTORY_FSYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF})


# -- durable files -------------------------------------------------------------------------

def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename or a new file in `directory` durable.

    Policy: best effort where the platform cannot fsync a directory (EINVAL, ENOTSUP,
    EOPNOTSUPP, EBADF are ignored), but a real error (EIO, ENOSPC, a missing or unreadable
    directory) is raised: a caller that was told its write is durable must not be lied to.
    """
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(directory, flags)
    except OSError as exc:
        if exc.errno in _NO_DIRECTORY_FSYNC:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIRECTORY_FSYNC:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[IO[bytes]]:
    """A binary file that replaces `path` only if the `with` block finishes.

    The data goes to a temporary file beside `path` (``.<name>.<random>.tmp``, mode `mode`
    from the start, so a secret is never readable by others), is flushed and fsynced, renamed
    over `path`, and the directory is fsynced. If the block raises, the temporary file is
    removed and `path` is left as it was. For streaming writers such as `torch.save`.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` completely or not at all (readers see the old or the new file)."""
    with atomic_writer(path, mode) as f:
        f.write(data)


# -- encodings -----------------------------------------------------------------------------

def canonical_json(obj: Any) -> bytes:
    """The one byte string a JSON value is signed and hashed as: sorted keys, no spaces, ASCII.

    Manifests and custody entries both sign these bytes; changing them breaks every release.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def b64encode(raw: bytes) -> str:
    """Standard base64 (with padding) as an ASCII str, the form every patchveil file uses."""
    return base64.b64encode(raw).decode("ascii")


def b64decode_canonical(text: str, nbytes: int | None = None) -> bytes:
    """Decode base64 that must be spelled exactly as `b64encode` spells it (one value, one text).

    Raises ValueError if `text` is not a str, not valid base64, not canonical, or (with
    `nbytes`) does not decode to exactly that many bytes.
    """
    if not isinstance(text, str):
        raise ValueError("expected a base64 string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError("not valid base64") from None
    if b64encode(raw) != text or (nbytes is not None and len(raw) != nbytes):
        raise ValueError(f"expected {'' if nbytes is None else f'{nbytes} bytes in '}canonical base64")
    return raw


# -- shard names ---------------------------------------------------------------------------

def shard_name(split: str, index: int) -> str:
    """The file name of a split's index-th shard: `{split}-{index:06d}.tar` (matches SHARD_NAME_PATTERN)."""
    if not isinstance(split, str) or not SPLIT_PATTERN.match(split):
        raise ValueError(f"split {split!r:.40}: use letters, digits, _ and - (at most 64)")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= 999_999:
        raise ValueError(f"shard index {index!r:.20}: expected an integer from 0 to 999999")
    return f"{split}-{index:06d}.tar"
