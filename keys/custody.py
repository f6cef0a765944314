"""The custody log: append-only JSON lines, hash-chained and Ed25519-signed, checkable in public.

Each line is the canonical JSON (sorted keys, compact separators) of
``{seq, time, event, details, prev, key_id, sig}``: ``prev`` is the sha256 hex of the previous
line's bytes (without its newline; ``"0"*64`` for the first), ``sig`` the base64 Ed25519
signature over the canonical JSON of the entry without ``sig``. An auditor needs only the
public identity to check it. Removing entries from the end cannot be seen in the log itself;
the identity records how long the log was when it was exported, which catches that.

Rotation hands the log from one signing key to the next: the ``rotated`` entry is signed by
the outgoing key and carries, in ``details.new_key_signature``, the incoming key's signature
over the same entry (without either signature). From that entry on only the incoming key may
sign, so a stolen retired key cannot extend the log, and an identity exported before the
rotation still verifies everything after it.
"""
from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from keys.errors import KeystoreError
from shards.common import SigningKeyID, b64encode, canonical_json, fsync_directory  # canonical_json: re-exported

EVENTS = (
    "key-created", "dataset-derived", "used-for-job", "exported-public",
    "rotated", "decrypted", "destroyed", "forgotten", "passphrase-changed",
)
ROTATION_FIELDS = ("old_key_id", "new_key_id", "new_public_key", "new_key_signature")
IDENTITY_FORMAT = "patchveil-identity/1"
GENESIS = "0" * 64
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_FIELDS = frozenset({"seq", "time", "event", "details", "prev", "key_id", "sig"})
_TAIL_CHUNK = 8192


def line_hash(line: bytes) -> str:
    """sha256 hex of one log line, without its trailing newline."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def signing_key_id(public_key: bytes) -> SigningKeyID:
    """Fingerprint of a raw Ed25519 public key: ``"pk-"`` + 16 hex chars of its sha256."""
    return SigningKeyID("pk-" + hashlib.sha256(public_key).hexdigest()[:16])


def utc_now() -> str:
    """Current UTC time in the one format the log uses (fixed width, so strings sort by time)."""
    return datetime.now(timezone.utc).strftime(TIME_FORMAT)


class CustodyLog:
    """One custody log file. Appends hold an exclusive ``flock`` and write one whole line."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"CustodyLog({str(self.path)!r})"

    def append(self, event: str, details: dict[str, Any], signing_key_id: SigningKeyID,
               sign: Callable[[bytes], bytes],
               cosign: Callable[[bytes], bytes] | None = None) -> dict[str, Any]:
        """Sign and append one entry; returns it. Refuses to extend a damaged tail.

        ``cosign`` (``rotated`` only) is the incoming key: it signs the finished entry first,
        and its signature goes into ``details["new_key_signature"]`` before ``sign`` signs all.
        """
        if (event == "rotated") != (cosign is not None):
            raise ValueError("a rotated entry, and only a rotated entry, is signed by two keys")
        if event not in EVENTS:
            raise ValueError(f"unknown custody event {event!r}; known: {', '.join(EVENTS)}")
        if not isinstance(details, dict):
            raise ValueError("custody details must be a dict")
        canonical_json(details)  # fail before locking if details are not plain JSON
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            seq, prev, time = 0, GENESIS, utc_now()
            if size:
                last = self._checked_tail(fd, size)
                seq, prev = last["seq"] + 1, line_hash(canonical_json(last))
                time = max(time, last["time"])  # a clock stepping back must not break the order
            entry: dict[str, Any] = {"seq": seq, "time": time, "event": event,
                                     "details": dict(details), "prev": prev, "key_id": signing_key_id}
            if cosign is not None:
                entry["details"]["new_key_signature"] = b64encode(cosign(canonical_json(entry)))
            entry["sig"] = b64encode(sign(canonical_json(entry)))
            _write_all(fd, canonical_json(entry) + b"\n")
            os.fsync(fd)
            if not size:
                fsync_directory(self.path.parent)
            return entry
        finally:
            os.close(fd)  # also releases the lock

    def _checked_tail(self, fd: int, size: int) -> dict[str, Any]:
        """Parse the last entry and check it links to the one before it."""
        tail = _read_tail(fd, size)
        if not tail.endswith(b"\n"):
            raise KeystoreError(self.path, "last entry is incomplete (log truncated?); refusing to append")
        lines = tail[:-1].split(b"\n")
        last = _parse_line(lines[-1])
        if last is None or lines[-1] != canonical_json(last):
            raise KeystoreError(self.path, "last entry is not a valid custody entry; refusing to append")
        if len(lines) >= 2:
            if last["prev"] != line_hash(lines[-2]) or last["seq"] < 1:
                raise KeystoreError(self.path, f"entry {last['seq']} does not link to the entry "
                                               "before it; refusing to append")
        elif last["seq"] != 0 or last["prev"] != GENESIS:
            raise KeystoreError(self.path, "first entry does not start the chain; refusing to append")
        return last

    def entries(self) -> list[dict[str, Any]]:
        """All entries, in file order (no signature checks: use ``verify_chain`` for that)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise KeystoreError(self.path, "custody log not found") from None
        except OSError as exc:
            raise KeystoreError(self.path, f"cannot read custody log ({exc.strerror})") from None
        out = []
        for number, line in enumerate(data.split(b"\n")[:-1] if data else [], start=1):
            entry = _parse_line(line)
            if entry is None:
                raise KeystoreError(self.path, f"line {number} is not a valid custody entry")
            out.append(entry)
        if data and not data.endswith(b"\n"):
            raise KeystoreError(self.path, "last entry is incomplete (log truncated?)")
        return out

    def head(self) -> dict[str, Any]:
        """How long the log is now and the hash of its last line, for the public identity."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise KeystoreError(self.path, f"cannot read custody log ({exc.strerror})") from None
        lines = data.split(b"\n")[:-1]
        return {"entries": len(lines), "head": line_hash(lines[-1]) if lines else GENESIS}


@dataclass
class ChainReport:
    """Result of ``verify_chain``: ``problems`` name the entry and the reason, one line each."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    head: str | None = None
    signing_keys: dict[str, bytes] = field(default_factory=dict)
    """Raw public keys by key id: the identity's, plus those handed over by valid rotations."""
    active_key_id: str | None = None


def identity_signing_keys(identity: dict[str, Any]) -> dict[str, Ed25519PublicKey]:
    """Map key id → public key for every signing key a public identity lists.

    Each key id must be the fingerprint of its key, so an identity cannot vouch for a key
    under another key's name.
    """
    if not isinstance(identity, dict):
        raise KeystoreError("public identity", "not a JSON object")
    listed = list(identity.get("signing_keys") or [])
    if "public_key" in identity:
        listed.append({"key_id": identity.get("key_id"), "public_key": identity["public_key"]})
    if not listed:
        raise KeystoreError("public identity", "lists no signing key")
    keys: dict[str, Ed25519PublicKey] = {}
    for item in listed:
        try:
            raw = base64.b64decode(item["public_key"], validate=True)
            key = Ed25519PublicKey.from_public_bytes(raw)
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise KeystoreError("public identity", "a signing key is not a base64 Ed25519 public key") from None
        if item.get("key_id") != signing_key_id(raw):
            raise KeystoreError("public identity", f"key id {item.get('key_id')!r} is not the fingerprint of its key")
        keys[item["key_id"]] = key
    return keys


def read_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and check an exported public identity file."""
    path = Path(path)
    try:
        identity = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise KeystoreError(path, "public identity file not found") from None
    except OSError as exc:
        raise KeystoreError(path, f"cannot read public identity ({exc.strerror})") from None
    except ValueError:
        raise KeystoreError(path, "not valid JSON") from None
    if not isinstance(identity, dict) or identity.get("format") != IDENTITY_FORMAT:
        raise KeystoreError(path, f"not a {IDENTITY_FORMAT} file")
    try:
        identity_signing_keys(identity)
    except KeystoreError as exc:
        raise KeystoreError(path, exc.reason) from None
    return identity


def verify_chain(path: str | os.PathLike[str], identity: dict[str, Any]) -> ChainReport:
    """Check a custody log with only the public identity: links, order, signatures, times,
    length, and which signing key was in office at each entry."""
    path = Path(path)
    keys = identity_signing_keys(identity)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ChainReport(ok=False, problems=[f"{path}: custody log not found"])
    except OSError as exc:
        return ChainReport(ok=False, problems=[f"{path}: cannot read custody log ({exc.strerror})"])

    problems: list[str] = []
    lines = data.split(b"\n")
    if lines[-1]:
        problems.append(f"line {len(lines)}: incomplete last entry (log truncated mid-entry)")
    lines = lines[:-1]
    if not lines:
        problems.append("custody log is empty (no key-created entry)")

    entries: list[dict[str, Any]] = []
    prev_hash, prev_time, active = GENESIS, None, None
    for index, line in enumerate(lines):
        name = f"line {index + 1}"
        entry = _parse_line(line)
        if entry is None:
            problems.append(f"{name}: not a valid custody entry")
        else:
            entries.append(entry)
            name = f"entry {entry['seq']}" + ("" if entry["seq"] == index else f" (line {index + 1})")
            reasons = _entry_problems(entry, line, index, prev_hash, prev_time, keys)
            if active is not None and entry["key_id"] != active and entry["key_id"] in keys:
                reasons.append(f"signed by {entry['key_id']}, but {active} was the signing key "
                               "in office (a retired key cannot extend the log)")
            if entry["event"] == "rotated" and not reasons:
                reasons += _accept_rotation(entry, keys)
            problems.extend(f"{name}: {reason}" for reason in reasons)
            if entry["event"] == "rotated" and not reasons:
                active = entry["details"]["new_key_id"]
            elif active is None and index == 0 and not reasons:
                active = entry["key_id"]
            prev_time = _parse_time(entry["time"]) or prev_time
        prev_hash = line_hash(line)

    expected = identity.get("custody")
    if isinstance(expected, dict) and isinstance(expected.get("entries"), int):
        count = expected["entries"]
        if len(lines) < count:
            problems.append(f"log has {len(lines)} entries but had {count} when the identity was "
                            "exported: entries were removed from the end")
        elif count and line_hash(lines[count - 1]) != expected.get("head"):
            problems.append(f"entry {count - 1}: differs from the entry the identity was exported with")
    raw_keys = {kid: key.public_bytes_raw() for kid, key in keys.items()}
    return ChainReport(ok=not problems, problems=problems, entries=entries,
                       head=line_hash(lines[-1]) if lines else None, signing_keys=raw_keys,
                       active_key_id=active)


def rotation_message(entry: dict[str, Any]) -> bytes:
    """What the incoming key signs in a ``rotated`` entry: the entry without either signature."""
    unsigned = {k: v for k, v in entry.items() if k != "sig"}
    unsigned["details"] = {k: v for k, v in entry["details"].items() if k != "new_key_signature"}
    return canonical_json(unsigned)


def _accept_rotation(entry: dict[str, Any], keys: dict[str, Ed25519PublicKey]) -> list[str]:
    """Check a rotated entry's hand-over; on success add the incoming key to ``keys``."""
    details = entry["details"]
    if not all(isinstance(details.get(k), str) for k in ROTATION_FIELDS):
        return [f"rotated entry lacks {', '.join(ROTATION_FIELDS)}"]
    if details["old_key_id"] != entry["key_id"]:
        return [f"rotated entry names old key {details['old_key_id']} but is signed by {entry['key_id']}"]
    try:
        raw = base64.b64decode(details["new_public_key"], validate=True)
        new_key = Ed25519PublicKey.from_public_bytes(raw)
        new_key.verify(base64.b64decode(details["new_key_signature"], validate=True),
                       rotation_message(entry))
    except (ValueError, binascii.Error, InvalidSignature):
        return ["the incoming key's signature on the rotated entry is invalid "
                "(the new key was not held by whoever rotated)"]
    if signing_key_id(raw) != details["new_key_id"]:
        return [f"new key id {details['new_key_id']!r} is not the fingerprint of the new key"]
    keys[details["new_key_id"]] = new_key
    return []


def _entry_problems(entry: dict[str, Any], line: bytes, index: int, prev_hash: str,
                    prev_time: datetime | None, keys: dict[str, Ed25519PublicKey]) -> list[str]:
    problems = []
    if entry["seq"] != index:
        problems.append(f"seq {entry['seq']} where {index} was expected: an entry was deleted, "
                        "inserted or moved")
    if entry["prev"] != prev_hash:
        problems.append("prev hash does not match the entry before it")
    if index == 0 and entry["event"] != "key-created":
        problems.append(f"first entry is {entry['event']!r}, expected 'key-created'")
    if entry["event"] not in EVENTS:
        problems.append(f"unknown event {entry['event']!r}")
    when = _parse_time(entry["time"])
    if when is None:
        problems.append(f"time {entry['time']!r} is not {TIME_FORMAT} UTC")
    elif prev_time is not None and when < prev_time:
        problems.append("time goes backwards (earlier than the entry before it)")
    if line != canonical_json(entry):
        problems.append("line is not in canonical form (edited by hand)")
    key = keys.get(entry["key_id"])
    if key is None:
        problems.append(f"signed by unknown key id {entry['key_id']!r}")
    else:
        unsigned = {k: v for k, v in entry.items() if k != "sig"}
        try:
            key.verify(base64.b64decode(entry["sig"], validate=True), canonical_json(unsigned))
        except (InvalidSignature, ValueError, binascii.Error):
            problems.append("signature invalid (entry edited, or signed without the key)")
    return problems


def _parse_line(line: bytes) -> dict[str, Any] | None:
    """A well-formed entry (right fields, right types) or None."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or set(entry) != _FIELDS:
        return None
    types = {"seq": int, "time": str, "event": str, "details": dict, "prev": str,
             "key_id": str, "sig": str}
    if any(not isinstance(entry[k], t) or isinstance(entry[k], bool) for k, t in types.items()):
        return None
    return entry


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def _read_tail(fd: int, size: int) -> bytes:
    """The file's last two lines (or all of it if shorter), read backwards in chunks."""
    tail, pos = b"", size
    while pos > 0 and tail.count(b"\n") < 3:
        step = min(_TAIL_CHUNK, pos)
        pos -= step
        tail = os.pread(fd, step, pos) + tail
    if pos > 0:
        tail = tail[tail.index(b"\n") + 1:]
    return tail


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
