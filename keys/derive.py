"""Everything a dataset key derives: release subkeys, opaque sample ids, per-sample seeds,
permutations and tile turns, keyed orders, sub-keys. The project's one KDF.

Derivation 2 (every release since key separation): each release draws from its own
``ReleaseKey`` = HKDF-SHA256(dataset key, salt = a fresh 32-byte release salt, info =
"patchveil/release/v2/" + canonical JSON of the release's binding: the whole cipher spec,
task, views, resize). Two releases of one dataset (another mode, patch, size, or the same
settings twice) therefore share no sample id, permutation, turn, crop or order. Derivation 1
(releases made before) drew everything straight from the dataset key; ``DatasetKey`` keeps
those draws so old releases still decrypt.

All messages are framed (a 4-byte big-endian length before every field, a purpose tag first)
so no two different inputs can produce the same HMAC message.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import posixpath
from pathlib import PurePath

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keys.keystream import KeyStream
from shards.common import DatasetKeyID, canonical_json

KEY_BYTES = 32
SAMPLE_ID_HEX = 24
SALT_BYTES = 32
RELEASE_ID_HEX = 24
DERIVATION_VERSION = 2
"""The derivation new releases use; the manifest records it (``extra.derivation``, absent = 1)."""
DERIVATIONS = (1, DERIVATION_VERSION)
_COMMITMENT_MESSAGE = b"patchveil/commitment"
_RELEASE_INFO = b"patchveil/release/v2/"


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


def new_release_salt() -> bytes:
    """A fresh per-release salt from the OS's CSPRNG: no two releases share draws."""
    return secrets.token_bytes(SALT_BYTES)


class SampleKeys:
    """The three seeds of one stored sample: its permutation, its tile turns, its crop.

    This is all a worker is sent (see encrypt.distribute): each seed is an HMAC output, so it
    says nothing about any other sample's seeds nor about the key above it. ``repr`` hides them.
    """

    __slots__ = ("perm_seed", "turn_seed", "crop_seed")

    def __init__(self, perm_seed: bytes, turn_seed: bytes, crop_seed: bytes) -> None:
        self.perm_seed, self.turn_seed, self.crop_seed = bytes(perm_seed), bytes(turn_seed), bytes(crop_seed)

    def __repr__(self) -> str:
        return "SampleKeys(<keyed>)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SampleKeys) and (self.perm_seed, self.turn_seed, self.crop_seed) == \
            (other.perm_seed, other.turn_seed, other.crop_seed)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self):
        return (SampleKeys, (self.perm_seed, self.turn_seed, self.crop_seed))

    def permutation(self, n: int) -> list[int]:
        """The secret permutation of ``range(n)``."""
        return KeyStream(self.perm_seed).permutation(n)

    def orientations(self, n: int, choices: int = 8) -> list[int]:
        """The n secret tile turns (0..choices-1, the elements of D4)."""
        return KeyStream(self.turn_seed).randbelow_many(choices, n)

    def crop_stream(self) -> KeyStream:
        """The stream a keyed crop view draws its box from."""
        return KeyStream(self.crop_seed)


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

    def __reduce__(self):  # the dataset key never leaves the owner's process (no Ray, no pickle)
        raise TypeError("a DatasetKey cannot be pickled; workers get per-sample SampleKeys")

    def release_key(self, binding: dict, salt: bytes) -> ReleaseKey:
        """The derivation-2 key of one release: HKDF bound to its settings and its salt."""
        return ReleaseKey(self, binding, salt)

    def release_id(self, salt: bytes) -> str:
        """Public name of a release's salt: 24 hex of HMAC(key, "release-id" ‖ salt).

        The manifest carries it so the owner's tools find the salt in the sealed index;
        without the dataset key it says nothing about the salt.
        """
        return self._mac(b"release-id", _salt(salt)).hex()[:RELEASE_ID_HEX]

    def sample_keys(self, split: str, sample_id: str) -> SampleKeys:
        """Derivation 1: the seeds every release before key separation drew from."""
        return SampleKeys(self.sample_seed(split, sample_id), self.sample_seed("orient/" + _str(split), sample_id),
                          self.sample_seed("crop/" + _str(split), sample_id))

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


def _str(value: str) -> str:
    _text(value, "split")
    return value


def _salt(salt: bytes) -> bytes:
    if not isinstance(salt, (bytes, bytearray)) or len(salt) != SALT_BYTES:
        raise ValueError(f"a release salt must be {SALT_BYTES} bytes")
    return bytes(salt)


class ReleaseKey:
    """Derivation 2: the subkey of one release, and every keyed draw of that release.

    key = HKDF-SHA256(ikm = dataset key, salt = release salt,
                      info = "patchveil/release/v2/" ‖ canonical_json(binding)),
    binding = the release's whole cipher spec plus what else changes its pixels (task, views,
    resize). Draws are HMAC(key, framed "v2/<purpose>" ‖ fields). Never pickled: workers get
    ``SampleKeys``.
    """

    __slots__ = ("dataset_id", "dataset_key_id", "release_id", "binding", "_key")

    def __init__(self, dataset_key: DatasetKey, binding: dict, salt: bytes) -> None:
        if not isinstance(binding, dict) or not binding:
            raise ValueError("a release binding must be a non-empty JSON object")
        info = _RELEASE_INFO + canonical_json(binding)
        self._key = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=_salt(salt),
                         info=info).derive(dataset_key._key)
        self.dataset_id, self.dataset_key_id = dataset_key.dataset_id, dataset_key.dataset_key_id
        self.release_id = dataset_key.release_id(salt)
        self.binding = json_copy(binding)

    def __repr__(self) -> str:
        return f"ReleaseKey(dataset_id={self.dataset_id!r}, release_id={self.release_id!r})"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a ReleaseKey cannot be pickled; workers get per-sample SampleKeys")

    def _mac(self, *fields: bytes) -> bytes:
        return hmac.new(self._key, _frame(*fields), hashlib.sha256).digest()

    def sample_id(self, relative_path: str | os.PathLike[str]) -> str:
        """Opaque id of a source file in this release: 24 hex of HMAC(key, "v2/id" ‖ path)."""
        path = normalise_path(relative_path).encode("utf-8", "surrogateescape")
        return self._mac(b"v2/id", path).hex()[:SAMPLE_ID_HEX]

    def order_key(self, split: str, sample_id: str) -> bytes:
        """Sort key of the keyed sample order: HMAC(key, "v2/order" ‖ split ‖ sample id)."""
        return self._mac(b"v2/order", _text(split, "split"), _text(sample_id, "sample id"))

    def sample_keys(self, split: str, sample_id: str) -> SampleKeys:
        """Seeds of one sample: HMAC(key, "v2/perm" | "v2/turn" | "v2/crop" ‖ split ‖ sample id)."""
        fields = (_text(split, "split"), _text(sample_id, "sample id"))
        return SampleKeys(self._mac(b"v2/perm", *fields), self._mac(b"v2/turn", *fields),
                          self._mac(b"v2/crop", *fields))

    def permutation(self, n: int, split: str, sample_id: str) -> list[int]:
        """The sample's permutation of ``range(n)`` (as DatasetKey.permutation reads for derivation 1)."""
        return self.sample_keys(split, sample_id).permutation(n)

    def orientations(self, n: int, split: str, sample_id: str, choices: int = 8) -> list[int]:
        """The sample's n tile turns."""
        return self.sample_keys(split, sample_id).orientations(n, choices)


def json_copy(value: dict) -> dict:
    """A fresh copy of a JSON object as canonical JSON reads it back (tuples become lists)."""
    return json.loads(canonical_json(value))
