"""The signed manifest: what a release of encrypted shards contains, and who vouches for it.

`manifest.json` lists the cipher parameters, every shard with its sha256, size and sample
count, the class count and the key id. The data owner signs the canonical JSON of all of it
(sorted keys, compact separators, everything except the signature) with Ed25519, so an ML
engineer or an auditor can check with the public key alone that nothing was edited, added
or removed. Loading is strict: unknown fields, duplicate JSON keys, path-like shard names
and format versions newer than this code are refused, because a reader that skips what it
does not understand could be shown something other than what was signed.

Format 2 added one optional field, `info_sha256`: the sha256 of the `_info.json` beside the
shards (`shards.info`, what timm reads). A manifest without it is written without the key, so
format-1 manifests keep their canonical bytes and their signatures still verify.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# canonical_json, atomic_write_bytes, fsync_directory and the name patterns live in
# shards.common; they stay importable from here for the packages that import them so.
from shards.common import (SHARD_NAME_PATTERN, DatasetKeyID, SPLIT_PATTERN, atomic_write_bytes, b64decode_canonical,  # noqa: F401
                           b64encode, canonical_json, fsync_directory)
from shards import storage
from shards.errors import ContractError
from shards.modes import GeometryError, Mode, mode_of
from shards.signing import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Sign, verify_signature

FORMAT_VERSION = 2
# `extra.derivation` and `extra.release` (encrypt.ciphers.derivation_of) say how the owner drew the
# keys; only key holders read them, so they stay in `extra` (readers of format 1 load them too),
# and a manifest without them is derivation 1.
MANIFEST_NAME = "manifest.json"
STORAGE_FORMATS = ("jpeg", "png")
TASKS = ("classification", "detection")
MAX_MANIFEST_BYTES = 64 * 2**20

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ContractError):
    """A manifest is malformed, from a newer format version, or fails its signature check.

    The message is one line: the field (or file) at fault and the reason.
    """


def utc_timestamp() -> str:
    """Now, as the ISO 8601 UTC string a manifest's `created` field holds."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# -- field checks: each raises ManifestError naming the field ------------------------------

def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def check_split_name(value: Any, name: str = "split") -> str:
    """A split name as shard names carry it: letters, digits, '_' and '-' (e.g. train, val)."""
    if not isinstance(value, str) or not SPLIT_PATTERN.match(value):
        raise ManifestError(f"{name}: {value!r:.40} is not a split name (letters, digits, _ and -, "
                            "up to 64, e.g. train)")
    return value


def check_int(value: Any, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer in [minimum, maximum], or a ManifestError naming the field."""
    return _check_int(value, name, minimum, maximum)


def _check_int(value: Any, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError(f"{name}: expected an integer, got {_kind(value)}")
    if minimum is not None and value < minimum:
        raise ManifestError(f"{name}: must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ManifestError(f"{name}: must be at most {maximum}, got {value}")
    return value


def _check_str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ManifestError(f"{name}: expected a string, got {_kind(value)}")
    if not value.strip():
        raise ManifestError(f"{name}: must not be empty")
    return value


def _check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices or not isinstance(value, str):
        raise ManifestError(f"{name}: expected one of {', '.join(choices)}, got {value!r:.40}")
    return value


def _check_size(value: Any, name: str) -> tuple[int, int]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ManifestError(f"{name}: expected [height, width], got {_kind(value)}")
    return (_check_int(value[0], f"{name}[0]", 1), _check_int(value[1], f"{name}[1]", 1))


def _check_json_value(value: Any, name: str) -> None:
    try:
        canonical_json(value)
    except (TypeError, ValueError) as e:
        raise ManifestError(f"{name}: not JSON-serialisable ({e})") from None


def _b64decode(value: Any, name: str, nbytes: int) -> bytes:
    """Decode base64 and insist on the canonical spelling, so one value has one encoding."""
    if not isinstance(value, str):
        raise ManifestError(f"{name}: expected a base64 string, got {_kind(value)}")
    try:
        return b64decode_canonical(value, nbytes)
    except ValueError as exc:
        raise ManifestError(f"{name}: {exc}") from None


def _check_keys(d: Any, name: str, required: set[str], optional: set[str] = frozenset()) -> dict:
    if not isinstance(d, dict):
        raise ManifestError(f"{name or 'manifest'}: expected a JSON object, got {_kind(d)}")
    prefix = f"{name}." if name else ""
    for key in sorted(required):
        if key not in d:
            raise ManifestError(f"{prefix}{key}: missing")
    unknown = sorted(set(d) - required - optional)
    if unknown:
        raise ManifestError(f"{prefix}{unknown[0]}: unknown field")
    return d


def _nested(name: str, build: Any, *args: Any) -> Any:
    """Run a nested constructor and prefix its error with where it sits in the manifest."""
    try:
        return build(*args)
    except ManifestError as e:
        raise ManifestError(f"{name}.{e}") from None


def _mode(name: Any) -> Mode:
    try:
        return mode_of(name)
    except GeometryError as exc:
        raise ManifestError(str(exc)) from None


def _geometry(mode: Mode, image_size: tuple[int, int], patch: int, sub_patch: Any) -> tuple[int, int]:
    """The table's geometry rule, its refusal as a ManifestError naming the field."""
    try:
        return mode.stored_size(image_size, patch, sub_patch)
    except GeometryError as exc:
        raise ManifestError(str(exc)) from None


# -- the three records ---------------------------------------------------------------------

@dataclass(frozen=True)
class CipherSpec:
    """How the stored images were made, so a trainer can build the matching model.

    `image_size` is the image the cipher was applied to; `stored_size` the image in the shard
    (the mixing modes store the smaller, averaged image). `none` is the plain baseline.
    """

    mode: str
    patch: int
    sub_patch: int | None
    image_size: tuple[int, int]
    stored_size: tuple[int, int]
    format: str
    quality: int | None
    channels: int

    def __post_init__(self) -> None:
        mode = _mode(self.mode)
        patch = _check_int(self.patch, "patch", 1)
        h, w = _check_size(self.image_size, "image_size")
        object.__setattr__(self, "image_size", (h, w))
        object.__setattr__(self, "stored_size", _check_size(self.stored_size, "stored_size"))
        if mode.mixes:
            _check_int(self.sub_patch, "sub_patch", 1)
        expected = _geometry(mode, (h, w), patch, self.sub_patch)
        if self.stored_size != expected:
            got = self.stored_size
            raise ManifestError(f"stored_size: {self.mode} of {h}x{w} stores "
                                f"{expected[0]}x{expected[1]}, not {got[0]}x{got[1]}")
        _check_choice(self.format, "format", STORAGE_FORMATS)
        if self.format == "jpeg":
            _check_int(self.quality, "quality", 1, 100)
        elif self.quality is not None:
            raise ManifestError("quality: must be null for png")
        if _check_int(self.channels, "channels") not in (1, 3):
            raise ManifestError(f"channels: expected 1 or 3, got {self.channels}")

    @classmethod
    def for_image(cls, mode: str, patch: int, sub_patch: int | None, image_size: tuple[int, int],
                  format: str, quality: int | None, channels: int) -> CipherSpec:
        """The spec of a cipher applied to `image_size`, its stored size derived.

        The data owner's options go through here before anything is written, so an option is
        accepted exactly when the manifest it leads to would be.
        """
        facts = _mode(mode)
        p = _check_int(patch, "patch", 1)
        h, w = _check_size(image_size, "image_size")
        if facts.mixes:
            _check_int(sub_patch, "sub_patch", 1)
        stored = _geometry(facts, (h, w), p, sub_patch)
        return cls(mode, patch, sub_patch, (h, w), stored, format, quality, channels)

    @property
    def facts(self) -> Mode:
        """This mode's row of the table (shards.modes): what it mixes, shuffles, turns."""
        return mode_of(self.mode)

    @property
    def encrypted(self) -> bool:
        """False for the plain baseline (`none`), which a release must flag as such."""
        return self.facts.encrypted

    @property
    def tile(self) -> int:
        """Side of one stored token tile: the patch, or the sub-patch once patches are mixed."""
        return self.facts.tile(self.patch, self.sub_patch)

    @property
    def grid(self) -> tuple[int, int]:
        """Tokens (rows, cols) of the stored image."""
        return (self.stored_size[0] // self.tile, self.stored_size[1] // self.tile)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image_size"], d["stored_size"] = list(self.image_size), list(self.stored_size)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> CipherSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        _check_keys(d, "", names)
        return cls(**d)


@dataclass(frozen=True)
class ShardEntry:
    """One shard file as the data owner wrote it: the reader checks the file against this."""

    name: str
    sha256: str
    bytes: int
    samples: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not SHARD_NAME_PATTERN.match(self.name):
            raise ManifestError(f"name: {self.name!r:.80} is not a shard name like train-000000.tar")
        if not isinstance(self.sha256, str) or not SHA256_PATTERN.match(self.sha256):
            raise ManifestError("sha256: expected 64 lowercase hex digits")
        _check_int(self.bytes, "bytes", 0)
        _check_int(self.samples, "samples", 0)

    @property
    def split(self) -> str:
        return SHARD_NAME_PATTERN.match(self.name)["split"]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> ShardEntry:
        _check_keys(d, "", {"name", "sha256", "bytes", "samples"})
        return cls(**d)


_REQUIRED = {"format_version", "task", "dataset_id", "cipher", "splits", "num_classes",
             "class_names", "categories", "key_id", "tool_version", "created"}
_OPTIONAL = {"public_key", "signature", "extra", "info_sha256"}


@dataclass(frozen=True)
class Manifest:
    """A release of encrypted shards: its cipher, its shards per split, and its signature."""

    task: str
    dataset_id: str
    cipher: CipherSpec
    splits: dict[str, list[ShardEntry]]
    num_classes: int
    class_names: list[str] | None
    categories: list[dict] | None
    key_id: DatasetKeyID  # the JSON field's name, kept: signed releases must still load
    tool_version: str
    created: str
    format_version: int = FORMAT_VERSION
    public_key: str | None = None
    signature: str | None = None
    extra: dict = field(default_factory=dict)
    info_sha256: str | None = None  # format 2: the signed digest of OUT/_info.json

    def __post_init__(self) -> None:
        version = _check_int(self.format_version, "format_version", 1)
        if version > FORMAT_VERSION:
            raise ManifestError(f"format_version: {version} is newer than this tool reads "
                                f"(up to {FORMAT_VERSION}); upgrade patchveil")
        _check_choice(self.task, "task", TASKS)
        _check_str(self.dataset_id, "dataset_id")
        if not isinstance(self.cipher, CipherSpec):
            raise ManifestError(f"cipher: expected a CipherSpec, got {_kind(self.cipher)}")
        self._check_splits()
        num_classes = _check_int(self.num_classes, "num_classes", 1)
        if self.class_names is not None:
            names = self.class_names
            if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
                raise ManifestError("class_names: expected a list of strings or null")
            if len(self.class_names) != num_classes:
                raise ManifestError(f"class_names: {len(self.class_names)} names for {num_classes} classes")
        if self.categories is not None:
            self._check_categories()
        _check_str(self.key_id, "key_id")
        _check_str(self.tool_version, "tool_version")
        _check_str(self.created, "created")
        try:
            created = datetime.fromisoformat(self.created.replace("Z", "+00:00"))
        except ValueError:
            raise ManifestError(f"created: {self.created!r:.40} is not an ISO 8601 time") from None
        if created.tzinfo is None:
            raise ManifestError("created: needs a time zone (write UTC as ...Z)")
        if self.public_key is not None:
            _b64decode(self.public_key, "public_key", PUBLIC_KEY_BYTES)
        if self.signature is not None:
            _b64decode(self.signature, "signature", SIGNATURE_BYTES)
        if not isinstance(self.extra, dict) or not all(isinstance(k, str) for k in self.extra):
            raise ManifestError("extra: expected a JSON object")
        _check_json_value(self.extra, "extra")
        if self.info_sha256 is not None:
            if not isinstance(self.info_sha256, str) or not SHA256_PATTERN.match(self.info_sha256):
                raise ManifestError("info_sha256: expected 64 lowercase hex digits")
            if version < 2:
                raise ManifestError(f"info_sha256: not part of format_version {version} (needs 2)")

    def _check_splits(self) -> None:
        if not isinstance(self.splits, dict) or not self.splits:
            raise ManifestError("splits: expected a non-empty object of split name -> shards")
        seen: set[str] = set()
        for split, entries in self.splits.items():
            if not isinstance(split, str) or not SPLIT_PATTERN.match(split):
                raise ManifestError(f"splits: {split!r:.40} is not a split name (letters, digits, _ and -)")
            if not isinstance(entries, list) or not entries:
                raise ManifestError(f"splits.{split}: expected a non-empty list of shards")
            for i, entry in enumerate(entries):
                if not isinstance(entry, ShardEntry):
                    raise ManifestError(f"splits.{split}[{i}]: expected a ShardEntry, got {_kind(entry)}")
                if entry.split != split:
                    raise ManifestError(f"splits.{split}[{i}]: shard {entry.name} "
                                        f"belongs to split {entry.split}")
                if entry.name in seen:
                    raise ManifestError(f"splits.{split}[{i}]: shard {entry.name} is listed twice")
                seen.add(entry.name)

    def _check_categories(self) -> None:
        if not isinstance(self.categories, list):
            raise ManifestError("categories: expected a list of objects or null")
        ids: set[int] = set()
        for i, category in enumerate(self.categories):
            if not isinstance(category, dict) or "id" not in category:
                raise ManifestError(f"categories[{i}]: expected an object with an id")
            cid = _check_int(category["id"], f"categories[{i}].id", 0)
            if cid in ids:
                raise ManifestError(f"categories[{i}].id: {cid} appears twice")
            ids.add(cid)
        _check_json_value(self.categories, "categories")

    # -- JSON ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The manifest as plain JSON values (fresh copies: editing them changes nothing here)."""
        d = {
            "format_version": self.format_version,
            "task": self.task,
            "dataset_id": self.dataset_id,
            "cipher": self.cipher.to_dict(),
            "splits": {s: [e.to_dict() for e in entries] for s, entries in self.splits.items()},
            "num_classes": self.num_classes,
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "categories": copy.deepcopy(self.categories),
            "key_id": self.key_id,
            "tool_version": self.tool_version,
            "created": self.created,
            "public_key": self.public_key,
            "signature": self.signature,
            "extra": copy.deepcopy(self.extra),
        }
        if self.info_sha256 is not None:  # absent, not null: older manifests keep their signed bytes
            d["info_sha256"] = self.info_sha256
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Manifest:
        """Build and validate a manifest from parsed JSON; ManifestError names the bad field."""
        if not isinstance(d, dict):
            raise ManifestError(f"manifest: expected a JSON object, got {_kind(d)}")
        if "format_version" in d:  # first, so a newer format is refused before its fields are
            version = _check_int(d["format_version"], "format_version", 1)
            if version > FORMAT_VERSION:
                raise ManifestError(f"format_version: {version} is newer than this tool reads "
                                    f"(up to {FORMAT_VERSION}); upgrade patchveil")
        _check_keys(d, "", _REQUIRED, _OPTIONAL)
        cipher = _nested("cipher", CipherSpec.from_dict, d["cipher"])
        splits_in = d["splits"]
        if not isinstance(splits_in, dict):
            raise ManifestError(f"splits: expected a JSON object, got {_kind(splits_in)}")
        splits: dict[str, list[ShardEntry]] = {}
        for split, entries in splits_in.items():
            if not isinstance(entries, list):
                raise ManifestError(f"splits.{split}: expected a list of shards, got {_kind(entries)}")
            splits[split] = [_nested(f"splits.{split}[{i}]", ShardEntry.from_dict, e)
                             for i, e in enumerate(entries)]
        fields = {k: copy.deepcopy(v) for k, v in d.items() if k not in ("cipher", "splits")}
        return cls(cipher=cipher, splits=splits, **fields)

    def canonical_bytes(self) -> bytes:
        """What the signature covers: the canonical JSON of everything except the signature."""
        d = self.to_dict()
        del d["signature"]
        return canonical_json(d)

    def digest(self) -> str:
        """sha256 (hex) of the canonical JSON of the whole signed manifest; custody logs cite it."""
        return hashlib.sha256(canonical_json(self.to_dict())).hexdigest()

    @property
    def dataset_key_id(self) -> DatasetKeyID:
        """The id of the dataset key the shards were encrypted with (``pv-…``), never the
        signing key's (``pk-…``). The field keeps the JSON name `key_id`."""
        return DatasetKeyID(self.key_id)

    # -- signature -------------------------------------------------------------------------

    @property
    def public_key_bytes(self) -> bytes | None:
        """The raw Ed25519 public key the manifest names, or None when unsigned."""
        if self.public_key is None:
            return None
        return _b64decode(self.public_key, "public_key", PUBLIC_KEY_BYTES)

    def signed(self, sign: Sign, public_key: bytes) -> Manifest:
        """A copy that names `public_key` and carries `sign`'s signature over canonical_bytes().

        The signature is checked before it is returned, so a callback holding a different key
        than `public_key` fails here rather than in every reader.
        """
        if not isinstance(public_key, (bytes, bytearray)) or len(public_key) != PUBLIC_KEY_BYTES:
            raise ManifestError(f"public_key: an Ed25519 public key is {PUBLIC_KEY_BYTES} raw bytes")
        unsigned = dataclasses.replace(self, public_key=b64encode(bytes(public_key)), signature=None)
        data = unsigned.canonical_bytes()
        signature = sign(data)
        if (not isinstance(signature, (bytes, bytearray))
                or not verify_signature(bytes(public_key), data, bytes(signature))):
            raise ManifestError("signature: the signing callback's signature does not verify "
                                "under the given public key")
        return dataclasses.replace(unsigned, signature=b64encode(bytes(signature)))

    def verify(self, public_key: bytes | None = None) -> None:
        """Raise ManifestError unless the signature holds; return None when it does.

        Pass the data owner's public key obtained out of band (their exported identity). With
        None the key named inside the manifest is used, which only proves the manifest was
        not edited after someone signed it: whoever edits it can re-sign it with their own
        key and name that key. That weak check is for convenience, not for audits.
        """
        if self.signature is None:
            raise ManifestError("signature: the manifest is not signed")
        embedded = self.public_key_bytes
        if embedded is None:
            raise ManifestError("public_key: the manifest names no signing key")
        if public_key is None:
            key = embedded
        else:
            if not isinstance(public_key, (bytes, bytearray)) or len(public_key) != PUBLIC_KEY_BYTES:
                raise ManifestError(f"public_key: an Ed25519 public key is {PUBLIC_KEY_BYTES} raw bytes")
            key = bytes(public_key)
            if key != embedded:
                raise ManifestError("public_key: the manifest is signed by a different key "
                                    "than the expected one")
        signature = _b64decode(self.signature, "signature", SIGNATURE_BYTES)
        if not verify_signature(key, self.canonical_bytes(), signature):
            raise ManifestError("signature: does not match the manifest's content (edited after signing?)")

    # -- files -----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the manifest as readable JSON, atomically (temp file, fsync, rename)."""
        text = json.dumps(self.to_dict(), sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False)
        storage.write_bytes(storage.location(path), (text + "\n").encode("ascii"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifest:
        """Read and validate a manifest file (the signature is checked by verify())."""
        path = storage.location(path)
        try:
            raw = storage.read_bytes(path, MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            raise ManifestError(f"{path}: not found") from None
        except IsADirectoryError:
            raise ManifestError(f"{path}: is a directory, not a manifest file") from None
        except OSError as e:
            raise ManifestError(f"{path}: cannot be read ({e.strerror})") from None
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{path}: larger than {MAX_MANIFEST_BYTES >> 20} MiB, not a manifest")
        try:
            d = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys,
                           parse_constant=_no_constants)
        except ManifestError as e:
            raise ManifestError(f"{path}: {e}") from None
        except UnicodeDecodeError:
            raise ManifestError(f"{path}: not UTF-8 text") from None
        except json.JSONDecodeError as e:
            where = f"line {e.lineno} column {e.colno}"
            raise ManifestError(f"{path}: not valid JSON ({e.msg} at {where})") from None
        except ValueError as e:
            raise ManifestError(f"{path}: not valid JSON ({e})") from None
        try:
            return cls.from_dict(d)
        except ManifestError as e:
            raise ManifestError(f"{path}: {e}") from None

    # -- questions a reader asks -----------------------------------------------------------

    def entries(self, split: str) -> list[ShardEntry]:
        if split not in self.splits:
            raise ManifestError(f"splits: no split {split!r:.40} (this release has {', '.join(self.splits)})")
        return self.splits[split]

    def samples(self, split: str) -> int:
        """Number of samples in a split."""
        return sum(e.samples for e in self.entries(split))

    def shard_paths(self, out_dir: str | os.PathLike, split: str) -> list[Path]:
        """Paths of a split's shards in manifest order (names are validated: no path tricks)."""
        return [storage.join(out_dir, e.name) for e in self.entries(split)]


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: a key given twice could mean different things to different parsers."""
    d: dict[str, Any] = {}
    for key, value in pairs:
        if key in d:
            raise ManifestError(f"{key}: appears twice in one JSON object")
        d[key] = value
    return d


def _no_constants(name: str) -> Any:
    raise ManifestError(f"{name} is not a JSON number")
