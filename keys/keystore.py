"""The data owner's keystore: master secrets and Ed25519 signing keys sealed under a passphrase.

Layout of a keystore directory (0700):

- ``keystore.json`` (0600): format, created, the current key id and public key, scrypt
  parameters and salt, AES-256-GCM nonce, and ``sealed`` (the encrypted secrets). Every field
  but ``sealed`` is the GCM associated data, so editing any byte makes the keystore refuse to open.
- ``custody.log`` (0600): the signed custody chain (``keys.custody``), starting at ``key-created``.
- ``index-<key id>.json`` (0600): sealed sample-id → path indexes (``keys.index``).

The sealed secrets are a list of *generations*, oldest first. Each holds a signing key and a
master secret; the last is current. ``rotate`` appends one, and old ones stay so old releases
can still be decrypted. ``destroy`` crypto-erases one dataset's keys: every master that
derived it is dropped (the current one replaced by a fresh one) after the keys of the other
datasets it derived are kept ("pinned") in the sealed file, so nothing left in the keystore can
re-derive the destroyed key.

A new keystore is built in a private sibling directory and renamed into place, so a failed
``create_keystore`` leaves nothing behind. Opening never writes; every change rewrites
``keystore.json`` atomically, and refuses if another process changed it since it was opened.
"""
from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from keys.checkpoint import format_checkpoint
from keys.custody import IDENTITY_FORMAT, CustodyLog, signing_key_id, utc_now, verify_chain
from keys.derive import KEY_BYTES, DatasetKey
from keys.errors import KeystoreError
from shards.common import DatasetKeyID, SigningKeyID, atomic_write_bytes, b64encode, canonical_json, fsync_directory

KEYSTORE_FILE = "keystore.json"
CUSTODY_FILE = "custody.log"
KEYSTORE_FORMAT = "patchveil-keystore/2"
READABLE_FORMATS = ("patchveil-keystore/1", KEYSTORE_FORMAT)  # /1: one generation, no history
SCRYPT_PARAMS = {"n": 2**17, "r": 8, "p": 1}  # fixed by the format: no knobs to set wrong
_SALT_BYTES = 16
_NONCE_BYTES = 12
_HEADER_FIELDS = frozenset({"format", "created", "key_id", "public_key", "kdf", "cipher"})
_RAW_PUBLIC = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """`shards.common.atomic_write_bytes` with the keystore's default: private (0600) files."""
    atomic_write_bytes(path, data, mode)


@dataclass(repr=False)
class _Generation:
    """One signing key and the master secret it was issued with; ``repr`` shows the key id only."""

    signing_key: Ed25519PrivateKey
    master: bytes | None          # None once ``destroy`` erased it
    created: str
    pinned: dict[str, bytes] = field(default_factory=dict)  # dataset id -> dataset key

    def __repr__(self) -> str:
        return f"_Generation(signing_key_id={self.signing_key_id!r}, created={self.created!r})"

    def __reduce__(self):
        raise TypeError("keystore secrets cannot be pickled")

    @property
    def public_key(self) -> bytes:
        return self.signing_key.public_key().public_bytes(*_RAW_PUBLIC)

    @property
    def signing_key_id(self) -> SigningKeyID:
        return signing_key_id(self.public_key)

    def derive(self, dataset_id: str) -> bytes | None:
        """This generation's key for a dataset: pinned if kept after erasure, else HKDF(master)."""
        if dataset_id in self.pinned:
            return self.pinned[dataset_id]
        return None if self.master is None else _hkdf(self.master, dataset_id)

    def to_json(self) -> dict[str, Any]:
        private = self.signing_key.private_bytes(serialization.Encoding.Raw,
                                                 serialization.PrivateFormat.Raw,
                                                 serialization.NoEncryption())
        return {"signing_key": b64encode(private), "created": self.created,
                "master": None if self.master is None else b64encode(self.master),
                "pinned": {k: b64encode(v) for k, v in sorted(self.pinned.items())}}


def _new_generation() -> _Generation:
    return _Generation(Ed25519PrivateKey.generate(), os.urandom(KEY_BYTES), utc_now())


def _hkdf(master: bytes, dataset_id: str) -> bytes:
    info = b"patchveil/dataset/" + dataset_id.encode("utf-8")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(master)


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

    generation = _new_generation()
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    salt = os.urandom(_SALT_BYTES)
    seal = _Seal(_scrypt(passphrase, salt), salt)

    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    except OSError as exc:
        raise KeystoreError(directory.parent, f"cannot create the keystore here ({exc.strerror})") from None
    try:
        store = Keystore(staging, created, [generation], {}, seal)
        store.log("key-created", {"public_key": b64encode(generation.public_key), "format": KEYSTORE_FORMAT})
        atomic_write(staging / KEYSTORE_FILE, store._sealed_bytes())
        try:
            os.rename(staging, directory)  # replaces an empty directory; fails on a non-empty one
        except OSError as exc:
            raise KeystoreError(directory, f"cannot put the keystore in place ({exc.strerror})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_directory(directory.parent)
    return _open_with_seal(directory, seal)


def open_keystore(directory: str | os.PathLike[str], passphrase: bytes) -> Keystore:
    """Unseal the keystore in ``directory``. Any wrong passphrase, damage or edit raises ``KeystoreError``."""
    _check_passphrase(passphrase)
    path = Path(directory) / KEYSTORE_FILE
    raw = _read_keystore_file(Path(directory))
    _, salt, _, _ = _parse_keystore(path, raw)
    return _open_with_seal(directory, _Seal(_scrypt(passphrase, salt), salt))


def _open_with_seal(directory: str | os.PathLike[str], seal: _Seal) -> Keystore:
    """Unseal with an already derived sealing key (no second scrypt run)."""
    directory = Path(directory)
    path = directory / KEYSTORE_FILE
    raw = _read_keystore_file(directory)
    header, salt, nonce, sealed = _parse_keystore(path, raw)
    if salt != seal.salt:
        raise KeystoreError(path, "the keystore was re-sealed (new passphrase?) since it was opened")
    try:
        plaintext = AESGCM(seal.key).decrypt(nonce, sealed, canonical_json(header))
    except InvalidTag:
        raise KeystoreError(path, "wrong passphrase, or the file was edited") from None
    generations, destroyed = _parse_secrets(path, plaintext, header)
    current = generations[-1]
    if current.master is None or b64encode(current.public_key) != header["public_key"] \
            or current.signing_key_id != header["key_id"]:
        raise KeystoreError(path, "sealed secrets do not match the header")
    if not (directory / CUSTODY_FILE).is_file():
        raise KeystoreError(directory / CUSTODY_FILE, "custody log missing")
    store = Keystore(directory, header["created"], generations, destroyed, seal)
    store._opened_bytes = raw
    return store


@dataclass(frozen=True)
class _Seal:
    """The scrypt output that seals keystore.json, and the salt it came from."""

    key: bytes = field(repr=False)
    salt: bytes

    def __repr__(self) -> str:
        return "_Seal(<secret>)"

    def __reduce__(self):
        raise TypeError("a keystore seal cannot be pickled")


class Keystore:
    """An opened keystore. Holds the secrets in memory; ``repr`` shows only public facts."""

    def __init__(self, directory: Path, created: str, generations: list[_Generation],
                 destroyed: dict[str, str], seal: _Seal) -> None:
        self.directory = Path(directory)
        self.created = created
        self.custody = CustodyLog(self.directory / CUSTODY_FILE)
        self.__generations = generations
        self.__destroyed = destroyed
        self.__seal = seal
        self.__logged: set[tuple[str, str]] = set()
        self.__rotation_logged = len(generations) == 1
        self._opened_bytes: bytes | None = None

    @property
    def signing_key_id(self) -> SigningKeyID:
        """Fingerprint of the current signing key (``pk-…``; a dataset key's id is ``pv-…``)."""
        return self.__generations[-1].signing_key_id

    @property
    def public_key(self) -> bytes:
        """The current raw Ed25519 public key (32 bytes)."""
        return self.__generations[-1].public_key

    def __repr__(self) -> str:
        return f"Keystore(directory={str(self.directory)!r}, signing_key_id={self.signing_key_id!r})"

    def __reduce__(self):
        raise TypeError("a Keystore cannot be pickled; pass a DatasetKey to workers instead")

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature (64 bytes) with the current signing key."""
        return self.__generations[-1].signing_key.sign(data)

    def log(self, event: str, details: dict[str, Any]) -> dict[str, Any]:
        """Append a signed custody entry (after finishing a rotation an interruption left unlogged)."""
        self._finish_rotation()
        current = self.__generations[-1]
        return self.custody.append(event, details, current.signing_key_id, current.signing_key.sign)

    # -- dataset keys ----------------------------------------------------------------------

    def dataset_key(self, dataset_id: str, dataset_key_id: str | None = None, *,
                    log: bool = True) -> DatasetKey:
        """The key of a dataset: HKDF-SHA256(master, info="patchveil/dataset/" + id).

        Without ``dataset_key_id``: the current generation's key, logging ``dataset-derived`` the first
        time (``log=False`` defers that: a job logs it only once it signs a release, so a
        refused job leaves the custody log as it was). With ``dataset_key_id`` (an old release's
        manifest): whichever generation made that key. A destroyed dataset is refused.
        """
        if not isinstance(dataset_id, str) or not dataset_id:
            raise ValueError("dataset id must be a non-empty string")
        if dataset_id in self.__destroyed:
            raise KeystoreError(self.directory / KEYSTORE_FILE,
                                f"dataset {dataset_id!r}: its key was destroyed on "
                                f"{self.__destroyed[dataset_id]}; nothing made with it can be decrypted")
        if dataset_key_id is not None:
            for generation in reversed(self.__generations):
                raw = generation.derive(dataset_id)
                if raw is not None and DatasetKey(dataset_id, raw).dataset_key_id == dataset_key_id:
                    return DatasetKey(dataset_id, raw)
            raise KeystoreError(self.directory / KEYSTORE_FILE,
                                f"dataset {dataset_id!r}: no key with id {dataset_key_id} in this keystore "
                                "(made by another keystore?)")
        key = DatasetKey(dataset_id, self.__generations[-1].derive(dataset_id))
        if log and (dataset_id, key.dataset_key_id) not in self.__logged:
            if not any(d["dataset_id"] == dataset_id and d["key_id"] == key.dataset_key_id
                       for d in self.datasets()):
                self.log("dataset-derived", {"dataset_id": dataset_id, "key_id": key.dataset_key_id,
                                             "commitment": key.commitment})
            self.__logged.add((dataset_id, key.dataset_key_id))
        return key

    def datasets(self) -> list[dict[str, Any]]:
        """``[{dataset_id, key_id, commitment, derived[, destroyed]}]`` for every dataset key the log records."""
        seen: dict[tuple[str, Any], dict[str, Any]] = {}
        destroyed: dict[str, str] = {}
        for entry in self.custody.entries():
            details = entry["details"]
            if entry["event"] == "dataset-derived":
                name = (details.get("dataset_id"), details.get("key_id"))
                seen.setdefault(name, {"dataset_id": details.get("dataset_id"),
                                       "key_id": details.get("key_id"),
                                       "commitment": details.get("commitment"),
                                       "derived": entry["time"]})
            elif entry["event"] == "destroyed":
                destroyed[details.get("dataset_id")] = entry["time"]
        for item in seen.values():
            if item["dataset_id"] in destroyed:
                item["destroyed"] = destroyed[item["dataset_id"]]
        return list(seen.values())

    def destroyed(self) -> dict[str, str]:
        """Dataset id → when its key was destroyed."""
        return dict(self.__destroyed)

    def signing_keys(self) -> list[dict[str, str]]:
        """``[{key_id, public_key}]`` of every generation, oldest first (the last is current)."""
        return [{"key_id": g.signing_key_id, "public_key": b64encode(g.public_key)} for g in self.__generations]

    def released_datasets(self) -> list[dict[str, Any]]:
        """``datasets()`` narrowed to keys a release was signed with (a ``used-for-job`` entry).

        Why: a key derived by an aborted or refused job, or by hand, released nothing; listing
        it would publish the names of datasets the owner never shared.
        """
        released = {(e["details"].get("dataset_id"), e["details"].get("key_id"))
                    for e in self.custody.entries() if e["event"] == "used-for-job"}
        return [d for d in self.datasets() if (d["dataset_id"], d["key_id"]) in released]

    def public_identity(self) -> dict[str, Any]:
        """What an auditor needs and nothing secret: public keys, released datasets, the log's length."""
        self._finish_rotation()
        public = {"key_id": self.signing_key_id, "public_key": b64encode(self.public_key)}
        return {"format": IDENTITY_FORMAT, **public, "created": self.created,
                "datasets": self.released_datasets(), "signing_keys": self.signing_keys(),
                "custody": self.custody.head()}

    def checkpoint(self) -> bytes:
        """A signed checkpoint (size, head hash) of the custody log (``keys.checkpoint``).

        Refuses a log that does not verify: the owner must never vouch for a damaged history.
        Logs nothing: a checkpoint attests the log's size, and an entry for it would make that
        size stale at once (and every checkpoint would grow the log it describes).
        """
        self._finish_rotation()
        first = self.signing_keys()[0]  # the key that created the log names it
        report = verify_chain(self.custody.path, {"format": IDENTITY_FORMAT, **first, "signing_keys": [first]})
        if not report.ok:
            raise KeystoreError(self.custody.path, f"does not verify ({report.problems[0]}); "
                                                   "refusing to sign a checkpoint of it")
        if report.active_key_id != self.signing_key_id or report.head is None:
            raise KeystoreError(self.custody.path, f"the log's key in office is {report.active_key_id}, "
                                                   f"not {self.signing_key_id}; refusing to sign a checkpoint")
        return format_checkpoint(first["key_id"], len(report.entries), report.head, self.signing_key_id,
                                 self.public_key, self.sign)

    # -- changes over the keystore's life --------------------------------------------------

    def rotate(self) -> dict[str, Any]:
        """New master and signing key; the old ones stay sealed for old releases. Returns the
        ``rotated`` entry, which both the outgoing and the incoming key sign."""
        self._finish_rotation()
        generations = self.__generations + [_new_generation()]
        self._reseal(generations, self.__destroyed)
        self.__generations = generations
        self.__rotation_logged = False
        return self._finish_rotation()

    def change_passphrase(self, new_passphrase: bytes) -> dict[str, Any]:
        """Re-seal everything under a new passphrase (new salt); logs ``passphrase-changed``."""
        _check_passphrase(new_passphrase)
        salt = os.urandom(_SALT_BYTES)
        seal = _Seal(_scrypt(new_passphrase, salt), salt)
        self._reseal(self.__generations, self.__destroyed, seal)
        self.__seal = seal
        return self.log("passphrase-changed", {"kdf": "scrypt", **SCRYPT_PARAMS})

    def destroy(self, dataset_id: str) -> dict[str, Any]:
        """Crypto-erase every key of one dataset and log ``destroyed``.

        Each master that derived the dataset (per the log) is dropped after pinning the keys
        of the other datasets it derived; the current master is replaced by a fresh one. The
        dataset's sealed indexes are deleted. Copies of keystore.json made before (backups)
        still hold the key: they must be destroyed too.
        """
        if dataset_id in self.__destroyed:
            raise KeystoreError(self.directory / KEYSTORE_FILE,
                                f"dataset {dataset_id!r}: already destroyed on {self.__destroyed[dataset_id]}")
        logged = [d for d in self.datasets() if d["dataset_id"] not in self.__destroyed]
        key_ids = sorted({d["key_id"] for d in logged if d["dataset_id"] == dataset_id})
        if not key_ids:
            raise KeystoreError(self.custody.path, f"dataset {dataset_id!r}: no key of it was ever derived here")
        generations, erased = [], 0
        for index, old in enumerate(self.__generations):
            gen = _Generation(old.signing_key, old.master, old.created, dict(old.pinned))
            gen.pinned.pop(dataset_id, None)
            if gen.master is not None and _hkdf_dataset_key_id(gen.master, dataset_id) in key_ids:
                for d in logged:
                    if d["dataset_id"] != dataset_id and d["dataset_id"] not in gen.pinned \
                            and _hkdf_dataset_key_id(gen.master, d["dataset_id"]) == d["key_id"]:
                        gen.pinned[d["dataset_id"]] = _hkdf(gen.master, d["dataset_id"])
                current = index == len(self.__generations) - 1
                gen.master = os.urandom(KEY_BYTES) if current else None
                erased += 1
            generations.append(gen)
        destroyed = {**self.__destroyed, dataset_id: utc_now()}
        self._reseal(generations, destroyed)
        self.__generations, self.__destroyed = generations, destroyed
        for dataset_key_id in key_ids:
            (self.directory / f"index-{dataset_key_id}.json").unlink(missing_ok=True)
        return self.log("destroyed", {"dataset_id": dataset_id, "key_ids": key_ids,
                                      "masters_erased": erased})

    def _finish_rotation(self) -> dict[str, Any] | None:
        """Log the hand-over to the current key if a rotation's log entry is missing.

        ``rotate`` seals the new key before logging it, so an interruption in between loses
        no secret; the next write to the log completes the entry.
        """
        if self.__rotation_logged:
            return None
        new = self.__generations[-1]
        if any(e["event"] == "rotated" and e["details"].get("new_key_id") == new.signing_key_id
               for e in self.custody.entries()):
            self.__rotation_logged = True
            return None
        old = self.__generations[-2]
        entry = self.custody.append("rotated", {"old_key_id": old.signing_key_id, "new_key_id": new.signing_key_id,
                                                "new_public_key": b64encode(new.public_key)},
                                    old.signing_key_id, old.signing_key.sign, cosign=new.signing_key.sign)
        self.__rotation_logged = True
        return entry

    def _sealed_bytes(self, generations: list[_Generation] | None = None,
                      destroyed: dict[str, str] | None = None, seal: _Seal | None = None) -> bytes:
        generations = self.__generations if generations is None else generations
        destroyed = self.__destroyed if destroyed is None else destroyed
        seal = seal or self.__seal
        secrets = {"generations": [g.to_json() for g in generations], "destroyed": destroyed}
        return _seal_keystore(seal, self.created, generations[-1].public_key, canonical_json(secrets))

    def _reseal(self, generations: list[_Generation], destroyed: dict[str, str],
                seal: _Seal | None = None) -> None:
        """Rewrite keystore.json atomically, unless someone else changed it since it was opened."""
        path = self.directory / KEYSTORE_FILE
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self._opened_bytes is not None and _read_keystore_file(self.directory) != self._opened_bytes:
                raise KeystoreError(path, "changed by another process since it was opened; "
                                          "open it again and retry")
            data = self._sealed_bytes(generations, destroyed, seal)
            atomic_write(path, data)
            self._opened_bytes = data
        finally:
            os.close(fd)


def _check_passphrase(passphrase: bytes) -> None:
    if not isinstance(passphrase, (bytes, bytearray)):
        raise TypeError("passphrase must be bytes")
    if not passphrase:
        raise KeystoreError("passphrase", "empty passphrase")


def _scrypt(passphrase: bytes, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, **SCRYPT_PARAMS).derive(bytes(passphrase))


def _seal_keystore(seal: _Seal, created: str, public_key: bytes, secrets: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    header = {
        "format": KEYSTORE_FORMAT,
        "created": created,
        "key_id": signing_key_id(public_key),
        "public_key": b64encode(public_key),
        "kdf": {"name": "scrypt", **SCRYPT_PARAMS, "salt": b64encode(seal.salt)},
        "cipher": {"name": "aes-256-gcm", "nonce": b64encode(nonce)},
    }
    sealed = AESGCM(seal.key).encrypt(nonce, secrets, canonical_json(header))
    return _keystore_bytes({**header, "sealed": b64encode(sealed)})


def _hkdf_dataset_key_id(master: bytes, dataset_id: str) -> DatasetKeyID:
    return DatasetKey(dataset_id, _hkdf(master, dataset_id)).dataset_key_id


def _parse_secrets(path: Path, plaintext: bytes,
                   header: dict[str, Any]) -> tuple[list[_Generation], dict[str, str]]:
    """The sealed generations (format /1 holds exactly one) and the destroyed datasets."""
    def key(text: Any) -> bytes:
        raw = base64.b64decode(text, validate=True)
        if len(raw) != KEY_BYTES:
            raise ValueError("wrong key length")
        return raw

    try:
        secrets = json.loads(plaintext)
        if header["format"] == "patchveil-keystore/1":
            secrets = {"generations": [{**secrets, "created": header["created"], "pinned": {}}],
                       "destroyed": {}}
        generations = [
            _Generation(Ed25519PrivateKey.from_private_bytes(key(g["signing_key"])),
                        None if g["master"] is None else key(g["master"]), str(g["created"]),
                        {str(d): key(v) for d, v in g["pinned"].items()})
            for g in secrets["generations"]]
        destroyed = {str(d): str(t) for d, t in secrets["destroyed"].items()}
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise KeystoreError(path, "sealed secrets are malformed") from None
    if not generations:
        raise KeystoreError(path, "sealed secrets hold no signing key")
    return generations, destroyed


def _read_keystore_file(directory: Path) -> bytes:
    path = directory / KEYSTORE_FILE
    if not directory.is_dir():
        raise KeystoreError(directory, "keystore directory not found")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeystoreError(path, "not found: this directory is not a keystore") from None
    except OSError as exc:
        raise KeystoreError(path, f"cannot read keystore ({exc.strerror})") from None


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
    if data["format"] not in READABLE_FORMATS:
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
