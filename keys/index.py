"""The data owner's sealed index: opaque sample id → where the sample came from.

Shards name samples only by opaque ids (an HMAC of the path). To honour a deletion request
or to decrypt a release back to named files, the owner needs the way back. It lives only in
the keystore folder, one file per dataset key (``index-<key id>.json``, 0600), sealed with
AES-256-GCM under ``DatasetKey.subkey("index")``: without the keystore and its passphrase the
file reveals nothing but its size, and destroying the dataset key makes it unreadable.

File: ``{"format", "dataset_id", "key_id", "nonce", "sealed"}``; the first three are the GCM
associated data, the plaintext is the zlib-compressed canonical JSON
``{"samples": {id: {"split", "rel_path", "view"}}, "releases": {release id: {"salt", "binding"}}}``.
``releases`` (format /2) keeps each derivation-2 release's 32-byte salt and the settings its
subkey is bound to (keys.derive.ReleaseKey): without them that release cannot be decrypted,
so an older tool, which would rewrite the file without them, refuses the /2 format.
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

from keys.derive import SALT_BYTES, json_copy
from keys.errors import KeystoreError
from keys.keystore import atomic_write
from shards.common import b64encode, canonical_json

INDEX_FORMAT = "patchveil-index/2"
READABLE_INDEX_FORMATS = ("patchveil-index/1", INDEX_FORMAT)  # /1: samples only, no releases
_NONCE_BYTES = 12
_ID_PATTERN = re.compile(r"^[0-9a-f]{8,64}(_v[0-9]{1,6})?$")
_ENTRY_FIELDS = {"split", "rel_path", "view"}

IndexEntry = dict[str, Any]
"""``{"split": str, "rel_path": str, "view": int}``; view -1 is the centre crop, k >= 0 a keyed view."""


def index_path(keystore: Any, dataset_key_id: str) -> Path:
    """Where the sealed index of one dataset key lives in the keystore folder."""
    return Path(keystore.directory) / f"index-{dataset_key_id}.json"


def release_record(salt: bytes, binding: Mapping[str, Any]) -> dict[str, Any]:
    """What the index keeps of one derivation-2 release: its salt and its binding."""
    return {"salt": b64encode(salt), "binding": json_copy(dict(binding))}


def save_index(keystore: Any, dataset_id: str, mapping: Mapping[str, IndexEntry],
               releases: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Add ``mapping`` (and ``releases``: release id → `release_record`) to the dataset's sealed index.

    Releases of one dataset key share it. The file is rewritten atomically under a lock on
    the keystore folder, so two jobs of one dataset cannot lose each other's entries. Returns
    the index file's path.
    """
    key = keystore.dataset_key(dataset_id)
    path = index_path(keystore, key.dataset_key_id)
    new = {sample_id: _checked_entry(path, sample_id, entry) for sample_id, entry in mapping.items()}
    new_releases = {rid: _checked_release(path, rid, rec) for rid, rec in (releases or {}).items()}
    fd = os.open(keystore.directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        samples, known = _read_all(path, key) if path.exists() else ({}, {})
        for sample_id, entry in new.items():
            if samples.get(sample_id, entry) != entry:
                raise KeystoreError(path, f"sample {sample_id} is already indexed with another path "
                                          "(id collision); refusing to overwrite it")
        for rid, rec in new_releases.items():
            if known.get(rid, rec) != rec:
                raise KeystoreError(path, f"release {rid} is already indexed with other settings; "
                                          "refusing to overwrite it")
        samples.update(new)
        known.update(new_releases)
        atomic_write(path, _seal(key, samples, known))
    finally:
        os.close(fd)
    return path


def load_index(keystore: Any, dataset_id: str, dataset_key_id: str | None = None) -> dict[str, IndexEntry]:
    """The dataset's index (``dataset_key_id``: the key an older release was made with)."""
    key = keystore.dataset_key(dataset_id, dataset_key_id)
    return _read(_existing(keystore, key), key)


def load_release(keystore: Any, dataset_id: str, dataset_key_id: str | None,
                 release_id: str) -> tuple[bytes, dict[str, Any]]:
    """(salt, binding) of one derivation-2 release; KeystoreError when the index lacks it."""
    key = keystore.dataset_key(dataset_id, dataset_key_id)
    path = _existing(keystore, key)
    record = _read_all(path, key)[1].get(release_id)
    if record is None:
        raise KeystoreError(path, f"no salt for release {str(release_id)[:40]!r} of dataset {dataset_id!r} "
                                  "in the sealed index; it is written when encrypt-dataset signs the release")
    return base64.b64decode(record["salt"]), record["binding"]


def _existing(keystore: Any, key: Any) -> Path:
    path = index_path(keystore, key.dataset_key_id)
    if not path.exists():
        raise KeystoreError(path, f"no sealed index for dataset {key.dataset_id!r} (key {key.dataset_key_id}); "
                                  "it is written when encrypt-dataset finishes a release")
    return path


def _header(key: Any, fmt: str = INDEX_FORMAT) -> dict[str, str]:
    return {"format": fmt, "dataset_id": key.dataset_id, "key_id": key.dataset_key_id}


def _seal(key: Any, samples: dict[str, IndexEntry], releases: dict[str, dict]) -> bytes:
    header = _header(key)
    nonce = os.urandom(_NONCE_BYTES)
    plaintext = zlib.compress(canonical_json({"samples": samples, "releases": releases}), 6)
    sealed = AESGCM(key.subkey("index")).encrypt(nonce, plaintext, canonical_json(header))
    data = {**header, "nonce": b64encode(nonce), "sealed": b64encode(sealed)}
    return json.dumps(data, sort_keys=True, indent=1).encode("ascii") + b"\n"


def _read(path: Path, key: Any) -> dict[str, IndexEntry]:
    return _read_all(path, key)[0]


def _read_all(path: Path, key: Any) -> tuple[dict[str, IndexEntry], dict[str, dict]]:
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise KeystoreError(path, f"cannot read the sealed index ({exc.strerror})") from None
    except ValueError:
        raise KeystoreError(path, "sealed index is not valid JSON (truncated or edited)") from None
    if not isinstance(data, dict) or set(data) != {"format", "dataset_id", "key_id", "nonce", "sealed"}:
        raise KeystoreError(path, "not a patchveil sealed index")
    header = {k: data[k] for k in ("format", "dataset_id", "key_id")}
    if header["format"] not in READABLE_INDEX_FORMATS:
        raise KeystoreError(path, f"sealed index format {str(header['format'])[:40]!r} is not one this tool "
                                  "reads; upgrade patchveil")
    if header != _header(key, header["format"]):
        raise KeystoreError(path, f"sealed index belongs to dataset {data.get('dataset_id')!r} "
                                  f"key {data.get('key_id')!r}, not {key.dataset_id!r} key {key.dataset_key_id}")
    try:
        nonce = base64.b64decode(data["nonce"], validate=True)
        sealed = base64.b64decode(data["sealed"], validate=True)
        plaintext = AESGCM(key.subkey("index")).decrypt(nonce, sealed, canonical_json(header))
        content = json.loads(zlib.decompress(plaintext))
        samples, releases = content["samples"], content.get("releases", {})
    except (InvalidTag, ValueError, TypeError, binascii.Error, zlib.error, KeyError):
        raise KeystoreError(path, "sealed index does not open with this dataset key (edited or damaged)") from None
    if not isinstance(samples, dict) or not isinstance(releases, dict):
        raise KeystoreError(path, "sealed index holds no sample table")
    return ({sample_id: _checked_entry(path, sample_id, entry) for sample_id, entry in samples.items()},
            {rid: _checked_release(path, rid, rec) for rid, rec in releases.items()})


def _checked_release(path: Path, release_id: Any, record: Any) -> dict[str, Any]:
    ok = isinstance(release_id, str) and re.fullmatch(r"[0-9a-f]{24}", release_id) \
        and isinstance(record, Mapping) and set(record) == {"salt", "binding"} \
        and isinstance(record["salt"], str) and isinstance(record["binding"], Mapping) and record["binding"]
    if ok:
        try:
            ok = len(base64.b64decode(record["salt"], validate=True)) == SALT_BYTES
        except (binascii.Error, ValueError):
            ok = False
    if not ok:
        raise KeystoreError(path, f"release {str(release_id)[:40]!r}: index record needs a release id, "
                                  f"a {SALT_BYTES}-byte salt and a binding")
    return {"salt": record["salt"], "binding": json_copy(dict(record["binding"]))}


def _checked_entry(path: Path, sample_id: Any, entry: Any) -> IndexEntry:
    if not isinstance(sample_id, str) or not _ID_PATTERN.match(sample_id):
        raise KeystoreError(path, f"{str(sample_id)[:40]!r} is not an opaque sample id")
    if not isinstance(entry, Mapping) or set(entry) != _ENTRY_FIELDS \
            or not isinstance(entry["split"], str) or not isinstance(entry["rel_path"], str) \
            or not isinstance(entry["view"], int) or isinstance(entry["view"], bool):
        raise KeystoreError(path, f"sample {sample_id}: index entry needs split, rel_path and view")
    return {"split": entry["split"], "rel_path": entry["rel_path"], "view": entry["view"]}
