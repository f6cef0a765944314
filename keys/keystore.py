"""The data owner's keystore: a master secret and an Ed25519 signing key sealed under a passphrase.

Layout of a keystore directory (0700):

- ``keystore.json`` (0600): format, created, key id, public key, scrypt parameters and salt,
  AES-256-GCM nonce, and ``sealed`` (the encrypted secrets). Every field but ``sealed`` is the
  GCM associated data, so editing any byte makes the keystore refuse to open.
- ``custody.log`` (0600): the signed custody chain (``keys.custody``), starting at ``key-created``.

A new keystore is built in a private sibling directory and renamed into place, so a failed
``create_keystore`` leaves nothing behind. Opening never writes.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from keys.custody import IDENTITY_FORMAT, CustodyLog, canonical_json, signing_key_id
from keys.derive import KEY_BYTES, DatasetKey
from keys.errors import KeystoreError

KEYSTORE_FILE = "keystore.json"
CUSTODY_FILE = "custody.log"
KEYSTORE_FORMAT = "patchveil-keystore/1"
SCRYPT_PARAMS = {"n": 2**17, "r": 8, "p": 1}  # fixed by the format: no knobs to set wrong
_SALT_BYTES = 16
_NONCE_BYTES = 12
_HEADER_FIELDS = frozenset({"format", "created", "key_id", "public_key", "kdf", "cipher"})


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` completely or not at all: temp file in the same dir, fsync, rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def create_keystore(directory: str | os.PathLike[str], passphrase: bytes) -> Keystore:
    """Make a new keystore in ``directory`` (which must not exist, or be empty) and log ``key-created``."""
    directory = Path(directory).absolute()
    _check_passphrase(passphrase)
    if directory.exists() or directory.is_symlink():
        if (directory / KEYSTORE_FILE).exists():
            raise KeystoreError(directory / KEYSTORE_FILE, "a keystore already exists here; refusing to overwrite it")
        if not directory.is_dir() or directory.is_symlink():
            raise KeystoreError(directory, "exists and is not a directory")
        if any(directory.iterdir()):
            raise KeystoreError(directory, "directory is not empty; a keystore needs a new or empty directory")
    if not directory.parent.is_dir():
        raise KeystoreError(directory.parent, "parent directory does not exist")

    master = os.urandom(KEY_BYTES)
    signing_key = Ed25519PrivateKey.generate()
    public_key = signing_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                       serialization.PublicFormat.Raw)
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    keystore_bytes = _seal(passphrase, created, public_key, master, signing_key)

    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    except OSError as exc:
        raise KeystoreError(directory.parent, f"cannot create the keystore here ({exc.strerror})") from None
    try:
        store = Keystore(staging, created, master, signing_key)
        store.log("key-created", {"public_key": _b64(public_key), "format": KEYSTORE_FORMAT})
        atomic_write(staging / KEYSTORE_FILE, keystore_bytes)
        try:
            os.rename(staging, directory)  # replaces an empty directory; fails on a non-empty one
        except OSError as exc:
            raise KeystoreError(directory, f"cannot put the keystore in place ({exc.strerror})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(directory.parent)
    return Keystore(directory, created, master, signing_key)


def open_keystore(directory: str | os.PathLike[str], passphrase: bytes) -> Keystore:
    """Unseal the keystore in ``directory``. Any wrong passphrase, damage or edit raises ``KeystoreError``."""
    directory = Path(directory)
    _check_passphrase(passphrase)
    path = directory / KEYSTORE_FILE
    if not directory.is_dir():
        raise KeystoreError(directory, "keystore directory not found")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KeystoreError(path, "not found: this directory is not a keystore") from None
    except OSError as exc:
        raise KeystoreError(path, f"cannot read keystore ({exc.strerror})") from None
    header, salt, nonce, sealed = _parse_keystore(path, raw)

    key = _scrypt(passphrase, salt)
    try:
        plaintext = AESGCM(key).decrypt(nonce, sealed, canonical_json(header))
    except InvalidTag:
        raise KeystoreError(path, "wrong passphrase, or the file was edited") from None
    try:
        secrets = json.loads(plaintext)
        master = base64.b64decode(secrets["master"], validate=True)
        signing_key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(secrets["signing_key"], validate=True))
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise KeystoreError(path, "sealed secrets are malformed") from None
    public_key = signing_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                       serialization.PublicFormat.Raw)
    if len(master) != KEY_BYTES or _b64(public_key) != header["public_key"] \
            or signing_key_id(public_key) != header["key_id"]:
        raise KeystoreError(path, "sealed secrets do not match the header")
    if not (directory / CUSTODY_FILE).is_file():
        raise KeystoreError(directory / CUSTODY_FILE, "custody log missing")
    return Keystore(directory, header["created"], master, signing_key)


class Keystore:
    """An opened keystore. Holds the secrets in memory; ``repr`` shows only public facts."""

    def __init__(self, directory: Path, created: str, master: bytes,
                 signing_key: Ed25519PrivateKey) -> None:
        self.directory = Path(directory)
        self.created = created
        self.public_key = signing_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                                serialization.PublicFormat.Raw)
        self.key_id = signing_key_id(self.public_key)
        self.custody = CustodyLog(self.directory / CUSTODY_FILE)
        self.__master = master
        self.__signing_key = signing_key
        self.__logged: set[str] = set()

    def __repr__(self) -> str:
        return f"Keystore(directory={str(self.directory)!r}, key_id={self.key_id!r})"

    def __reduce__(self):
        raise TypeError("a Keystore cannot be pickled; pass a DatasetKey to workers instead")

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature (64 bytes) with the keystore's signing key."""
        return self.__signing_key.sign(data)

    def log(self, event: str, details: dict[str, Any]) -> dict[str, Any]:
        """Append a signed custody entry."""
        return self.custody.append(event, details, self.key_id, self.sign)

    def dataset_key(self, dataset_id: str) -> DatasetKey:
        """HKDF-SHA256(master, info="patchveil/dataset/" + id); logs ``dataset-derived`` the first time."""
        if not isinstance(dataset_id, str) or not dataset_id:
            raise ValueError("dataset id must be a non-empty string")
        info = b"patchveil/dataset/" + dataset_id.encode("utf-8")
        key = DatasetKey(dataset_id, HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                                          info=info).derive(self.__master))
        if dataset_id not in self.__logged:
            if not any(d["dataset_id"] == dataset_id for d in self.datasets()):
                self.log("dataset-derived", {"dataset_id": dataset_id, "key_id": key.key_id,
                                             "commitment": key.commitment})
            self.__logged.add(dataset_id)
        return key

    def datasets(self) -> list[dict[str, Any]]:
        """``[{dataset_id, key_id, commitment, derived}]`` for every dataset key the log records."""
        seen: dict[str, dict[str, Any]] = {}
        for entry in self.custody.entries():
            details = entry["details"]
            if entry["event"] == "dataset-derived" and details.get("dataset_id") not in seen:
                seen[details["dataset_id"]] = {"dataset_id": details["dataset_id"],
                                               "key_id": details.get("key_id"),
                                               "commitment": details.get("commitment"),
                                               "derived": entry["time"]}
        return list(seen.values())

    def public_identity(self) -> dict[str, Any]:
        """What an auditor needs and nothing secret: public key, datasets, the log's current length."""
        public = {"key_id": self.key_id, "public_key": _b64(self.public_key)}
        return {"format": IDENTITY_FORMAT, **public, "created": self.created,
                "datasets": self.datasets(), "signing_keys": [public],
                "custody": self.custody.head()}


def _check_passphrase(passphrase: bytes) -> None:
    if not isinstance(passphrase, (bytes, bytearray)):
        raise TypeError("passphrase must be bytes")
    if not passphrase:
        raise KeystoreError("passphrase", "empty passphrase")


def _scrypt(passphrase: bytes, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, **SCRYPT_PARAMS).derive(bytes(passphrase))


def _seal(passphrase: bytes, created: str, public_key: bytes, master: bytes,
          signing_key: Ed25519PrivateKey) -> bytes:
    salt, nonce = os.urandom(_SALT_BYTES), os.urandom(_NONCE_BYTES)
    header = {
        "format": KEYSTORE_FORMAT,
        "created": created,
        "key_id": signing_key_id(public_key),
        "public_key": _b64(public_key),
        "kdf": {"name": "scrypt", **SCRYPT_PARAMS, "salt": _b64(salt)},
        "cipher": {"name": "aes-256-gcm", "nonce": _b64(nonce)},
    }
    private = signing_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                        serialization.NoEncryption())
    secrets = json.dumps({"master": _b64(master), "signing_key": _b64(private)}).encode("ascii")
    sealed = AESGCM(_scrypt(passphrase, salt)).encrypt(nonce, secrets, canonical_json(header))
    return _keystore_bytes({**header, "sealed": _b64(sealed)})


def _keystore_bytes(data: dict[str, Any]) -> bytes:
    """The exact bytes of keystore.json: readable, and the only form ``open_keystore`` accepts."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=True).encode("ascii") + b"\n"


def _parse_keystore(path: Path, raw: bytes) -> tuple[dict[str, Any], bytes, bytes, bytes]:
    """Split keystore.json into (header, salt, nonce, sealed), refusing anything off-format."""
    try:
        data = json.loads(raw)
    except ValueError:
        raise KeystoreError(path, "not valid JSON (truncated or edited)") from None
    if not isinstance(data, dict) or set(data) != _HEADER_FIELDS | {"sealed"}:
        raise KeystoreError(path, "not a patchveil keystore (unexpected fields)")
    if data["format"] != KEYSTORE_FORMAT:
        raise KeystoreError(path, f"unsupported keystore format {data['format']!r}")
    kdf, cipher = data["kdf"], data["cipher"]
    if not isinstance(kdf, dict) or {k: kdf.get(k) for k in ("name", *SCRYPT_PARAMS)} != \
            {"name": "scrypt", **SCRYPT_PARAMS} or set(kdf) != {"name", "salt", *SCRYPT_PARAMS}:
        raise KeystoreError(path, "unexpected key-derivation parameters (edited?)")
    if not isinstance(cipher, dict) or cipher.get("name") != "aes-256-gcm" or set(cipher) != {"name", "nonce"}:
        raise KeystoreError(path, "unexpected cipher parameters (edited?)")
    try:
        salt = base64.b64decode(kdf["salt"], validate=True)
        nonce = base64.b64decode(cipher["nonce"], validate=True)
        sealed = base64.b64decode(data["sealed"], validate=True)
    except (TypeError, ValueError, binascii.Error):
        raise KeystoreError(path, "salt, nonce or sealed secrets are not valid base64 (edited?)") from None
    if len(salt) != _SALT_BYTES or len(nonce) != _NONCE_BYTES:
        raise KeystoreError(path, "salt or nonce has the wrong length (edited?)")
    if not all(isinstance(data[k], str) for k in ("created", "key_id", "public_key")):
        raise KeystoreError(path, "header fields have the wrong type (edited?)")
    if raw != _keystore_bytes(data):
        raise KeystoreError(path, "file was edited (not in the form patchveil writes)")
    header = {k: data[k] for k in _HEADER_FIELDS}
    return header, salt, nonce, sealed


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
