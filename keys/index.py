"""The data owner's sealed index: opaque sample id → where the sample came from.

Shards name samples only by opaque ids (an HMAC of the path). To honour a deletion request
or to decrypt a release back to named files, the owner needs the way back. It lives only in
the keystore folder, one file per dataset key (``index-<key id>.json``, 0600), sealed with
AES-256-GCM under ``DatasetKey.subkey("index")``: without the keystore and its passphrase the
file reveals nothing but its size, and destroying the dataset key makes it unreadable.

File: ``{"format", "dataset_id", "key_id", "nonce", "sealed"}``; the first three are the GCM
associated data, the plaintext is the zlib-compressed canonical JSON
``{"samples": {id: {"split", "rel_path", "view"}}}``.
"""
from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
import re
import zlib
from pathlib import Path
from typing import Any, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keys.errors import KeystoreError
from keys.keystore import atomic_write
from shards.common import b64encode, canonical_json

INDEX_FORMAT = "patchveil-index/1"
_NONCE_BYTES = 12
_ID_PATTERN = re.compile(r"^[0-9a-f]{8,64}(_v[0-9]{1,6})?$")
_ENTRY_FIELDS = {"split", "rel_path", "view"}

IndexEntry = dict[str, Any]
"""``{"split": str, "rel_path": str, "view": int}``; view -1 is the centre crop, k >= 0 a keyed view."""


def index_path(keystore: Any, dataset_key_id: str) -> Path:
    """Where the sealed index of one dataset key lives in the keystore folder."""
    return Path(keystore.directory) / f"index-{dataset_key_id}.json"


def save_index(keystore: Any, dataset_id: str, mapping: Mapping[str, IndexEntry]) -> Path:
    """Add ``mapping`` to the dataset's sealed index (releases of one dataset key share it).

    The file is rewritten atomically under a lock on the keystore folder, so two jobs of one
    dataset cannot lose each other's entries. Returns the index file's path.
    """
    key = keystore.dataset_key(dataset_id)
    path = index_path(keystore, key.dataset_key_id)
    new = {sample_id: _checked_entry(path, sample_id, entry) for sample_id, entry in mapping.items()}
    fd = os.open(keystore.directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        samples = _read(path, key) if path.exists() else {}
        for sample_id, entry in new.items():
            if samples.get(sample_id, entry) != entry:
                raise KeystoreError(path, f"sample {sample_id} is already indexed with another path "
                                          "(id collision); refusing to overwrite it")
        samples.update(new)
        atomic_write(path, _seal(key, samples))
    finally:
        os.close(fd)
    return path


def load_index(keystore: Any, dataset_id: str, dataset_key_id: str | None = None) -> dict[str, IndexEntry]:
    """The dataset's index (``dataset_key_id``: the key an older release was made with)."""
    key = keystore.dataset_key(dataset_id, dataset_key_id)
    path = index_path(keystore, key.dataset_key_id)
    if not path.exists():
        raise KeystoreError(path, f"no sealed index for dataset {dataset_id!r} (key {key.dataset_key_id}); "
                                  "it is written when encrypt-dataset finishes a release")
    return _read(path, key)


def _header(key: Any) -> dict[str, str]:
    return {"format": INDEX_FORMAT, "dataset_id": key.dataset_id, "key_id": key.dataset_key_id}


def _seal(key: Any, samples: dict[str, IndexEntry]) -> bytes:
    header = _header(key)
    nonce = os.urandom(_NONCE_BYTES)
    plaintext = zlib.compress(canonical_json({"samples": samples}), 6)
    sealed = AESGCM(key.subkey("index")).encrypt(nonce, plaintext, canonical_json(header))
    data = {**header, "nonce": b64encode(nonce), "sealed": b64encode(sealed)}
    return json.dumps(data, sort_keys=True, indent=1).encode("ascii") + b"\n"


def _read(path: Path, key: Any) -> dict[str, IndexEntry]:
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise KeystoreError(path, f"cannot read the sealed index ({exc.strerror})") from None
    except ValueError:
        raise KeystoreError(path, "sealed index is not valid JSON (truncated or edited)") from None
    if not isinstance(data, dict) or set(data) != {"format", "dataset_id", "key_id", "nonce", "sealed"}:
        raise KeystoreError(path, "not a patchveil sealed index")
    header = {k: data[k] for k in ("format", "dataset_id", "key_id")}
    if header != _header(key):
        raise KeystoreError(path, f"sealed index belongs to dataset {data.get('dataset_id')!r} "
                                  f"key {data.get('key_id')!r}, not {key.dataset_id!r} key {key.dataset_key_id}")
    try:
        nonce = base64.b64decode(data["nonce"], validate=True)
        sealed = base64.b64decode(data["sealed"], validate=True)
        plaintext = AESGCM(key.subkey("index")).decrypt(nonce, sealed, canonical_json(header))
        samples = json.loads(zlib.decompress(plaintext))["samples"]
    except (InvalidTag, ValueError, TypeError, binascii.Error, zlib.error, KeyError):
        raise KeystoreError(path, "sealed index does not open with this dataset key (edited or damaged)") from None
    if not isinstance(samples, dict):
        raise KeystoreError(path, "sealed index holds no sample table")
    return {sample_id: _checked_entry(path, sample_id, entry) for sample_id, entry in samples.items()}


def _checked_entry(path: Path, sample_id: Any, entry: Any) -> IndexEntry:
    if not isinstance(sample_id, str) or not _ID_PATTERN.match(sample_id):
        raise KeystoreError(path, f"{str(sample_id)[:40]!r} is not an opaque sample id")
    if not isinstance(entry, Mapping) or set(entry) != _ENTRY_FIELDS \
            or not isinstance(entry["split"], str) or not isinstance(entry["rel_path"], str) \
            or not isinstance(entry["view"], int) or isinstance(entry["view"], bool):
        raise KeystoreError(path, f"sample {sample_id}: index entry needs split, rel_path and view")
    return {"split": entry["split"], "rel_path": entry["rel_path"], "view": entry["view"]}
