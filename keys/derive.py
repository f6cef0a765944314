"""Everything a dataset key derives: opaque sample ids, per-sample seeds, permutations and tile
turns, keyed orders, sub-keys.

All messages are framed (a 4-byte big-endian length before every field, a purpose tag first)
so no two different inputs can produce the same HMAC message.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import posixpath
from pathlib import PurePath

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keys.keystream import KeyStream
from shards.common import DatasetKeyID

KEY_BYTES = 32
SAMPLE_ID_HEX = 24
_COMMITMENT_MESSAGE = b"patchveil/commitment"


def dataset_key_id_from_commitment(commitment: str) -> DatasetKeyID:
    """The short public name of a dataset key: ``"pv-"`` + 16 hex chars of sha256(commitment bytes).

    An auditor recomputes it from the commitment listed in the public identity.
    """
    return DatasetKeyID("pv-" + hashlib.sha256(bytes.fromhex(commitment)).hexdigest()[:16])


def _frame(*fields: bytes) -> bytes:
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def _text(value: str, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    return value.encode("utf-8")


def _view(view: int) -> bytes:
    if not isinstance(view, int) or isinstance(view, bool) or not 0 <= view < 2**32:
        raise ValueError(f"view must be an integer in [0, 2**32), got {view!r}")
    return view.to_bytes(4, "big")


def normalise_path(relative_path: str | os.PathLike[str]) -> str:
    """The canonical form a sample path is identified by: posix separators, no ``.``/``..`` steps."""
    text = relative_path.as_posix() if isinstance(relative_path, PurePath) else os.fspath(relative_path)
    if not text:
        raise ValueError("sample path must not be empty")
    norm = posixpath.normpath(text)
    if norm == "." or norm.startswith("/") or norm == ".." or norm.startswith("../"):
        raise ValueError("sample path must be relative to the dataset root")
    return norm


class DatasetKey:
    """The secret of one dataset (HKDF output of the master) and what it derives.

    ``repr`` and ``str`` name the dataset and key id only; the key is never shown.
    """

    __slots__ = ("dataset_id", "_key", "commitment", "dataset_key_id")

    def __init__(self, dataset_id: str, key: bytes) -> None:
        _text(dataset_id, "dataset id")
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
            raise ValueError(f"dataset key must be {KEY_BYTES} bytes")
        self.dataset_id = dataset_id
        self._key = bytes(key)
        self.commitment = hmac.new(self._key, _COMMITMENT_MESSAGE, hashlib.sha256).hexdigest()
        self.dataset_key_id = dataset_key_id_from_commitment(self.commitment)

    def __repr__(self) -> str:
        return f"DatasetKey(dataset_id={self.dataset_id!r}, dataset_key_id={self.dataset_key_id!r})"

    __str__ = __repr__

    def _mac(self, *fields: bytes) -> bytes:
        return hmac.new(self._key, _frame(*fields), hashlib.sha256).digest()

    def sample_id(self, relative_path: str | os.PathLike[str]) -> str:
        """Opaque, stable id of a source file: 24 hex chars of HMAC(key, "id" ‖ normalised path).

        The path is hashed as the file name's bytes: UTF-8, with surrogate escapes (how Python's
        os functions give a name that is not valid UTF-8) turned back into the original bytes,
        so such a file has an id like any other. Valid UTF-8 names hash exactly as before.
        """
        path = normalise_path(relative_path).encode("utf-8", "surrogateescape")
        return self._mac(b"id", path).hex()[:SAMPLE_ID_HEX]

    def sample_seed(self, split: str, sample_id: str, view: int = 0) -> bytes:
        """32-byte seed of one (split, sample, view): HMAC(key, "seed" ‖ split ‖ sample id ‖ view)."""
        return self._mac(b"seed", _text(split, "split"), _text(sample_id, "sample id"), _view(view))

    def stream(self, split: str, sample_id: str, view: int = 0) -> KeyStream:
        """The keyed stream of one (split, sample, view)."""
        return KeyStream(self.sample_seed(split, sample_id, view))

    def permutation(self, n: int, split: str, sample_id: str, view: int = 0) -> list[int]:
        """The secret permutation of ``range(n)`` for one (split, sample, view)."""
        return self.stream(split, sample_id, view).permutation(n)

    def orientations(self, n: int, split: str, sample_id: str, choices: int = 8) -> list[int]:
        """The n secret tile turns (0..choices-1, the 8 elements of D4) of one sample.

        Drawn from the sample's own stream under "orient/" + split, apart from the
        permutation's, so neither reveals the other. Moved here from encrypt.ciphers (which
        holds no keys); the draws are those of every `-orient` release so far.
        """
        _text(split, "split")
        return self.stream("orient/" + split, sample_id).randbelow_many(choices, n)

    def order_key(self, split: str, sample_id: str) -> bytes:
        """Sort key for the keyed global sample order: HMAC(key, "order" ‖ split ‖ sample id)."""
        return self._mac(b"order", _text(split, "split"), _text(sample_id, "sample id"))

    def subkey(self, purpose: str) -> bytes:
        """An independent 32-byte key for another owner-side use (e.g. sealing the path index)."""
        info = b"patchveil/subkey/" + _text(purpose, "purpose")
        return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(self._key)
