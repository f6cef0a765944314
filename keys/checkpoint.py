"""Signed checkpoints of the custody log: (size, head hash) in the C2SP signed-note checkpoint form.

Why: the log's own chain cannot show entries cut from its end, or a second history signed by
the same key. An auditor who keeps a checkpoint can later prove the log still extends it.

Format (c2sp.org/tlog-checkpoint over c2sp.org/signed-note), UTF-8, every line ending in a newline::

    patchveil/custody/pk-1f0c9a4b2d3e5f60          origin: the log, named by the key that created it
    7                                              size: how many entries the log had
    3q2+7w0K...=                                   head: base64 of sha256(line 7, without newline)
                                                   blank line: end of the signed text
    — patchveil/custody/pk-1f0c9a4b2d3e5f60 <base64(key hash (4 bytes) || Ed25519 signature (64))>

The custody log is a hash chain, not a Merkle tree, so the third line is not an RFC 6962
root: it is the hash of the log's last line, and each line holds the hash of the one before,
so it commits to every earlier entry. Consistency with a later log is proven by recomputing
the chain prefix: the first ``size`` lines of the later log must link and their last must hash
to the head. The origin names the log by its first signing key (stable across rotations); the
signature line's key name is ``patchveil/custody/<signing key id>`` of the key in office, and
its key hash is the signed-note one: sha256(key name || 0x0A || 0x01 || public key)[:4].
No extension lines are written; readers ignore any (they are signed, but not interpreted).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from keys.errors import KeystoreError
from shards.common import b64encode

ORIGIN_PREFIX = "patchveil/custody/"
ED25519_TYPE = b"\x01"  # signed-note signature type of Ed25519
SIGNATURE_DASH = "\u2014 "
MAX_BYTES = 64 << 10


def log_origin(log_key_id: str) -> str:
    """The origin line of a custody log: its first signing key's id, after the prefix."""
    return ORIGIN_PREFIX + log_key_id


def note_key_hash(key_name: str, public_key: bytes) -> bytes:
    """The signed-note key id of an Ed25519 key: sha256(name || 0x0A || 0x01 || key)[:4]."""
    return hashlib.sha256(key_name.encode("utf-8") + b"\n" + ED25519_TYPE + public_key).digest()[:4]


@dataclass(frozen=True)
class Signature:
    key_name: str
    key_hash: bytes
    signature: bytes


@dataclass(frozen=True)
class Checkpoint:
    """A parsed checkpoint; ``text`` is the exact signed note text."""

    origin: str
    size: int
    head: str                        # hex sha256 of the log's line ``size`` (1-based)
    signatures: tuple[Signature, ...]
    text: bytes

    @property
    def log_key_id(self) -> str:
        return self.origin[len(ORIGIN_PREFIX):]


def format_checkpoint(log_key_id: str, size: int, head: str, signing_key_id: str,
                      public_key: bytes, sign: Callable[[bytes], bytes]) -> bytes:
    """The checkpoint's bytes: note text, blank line, one signature line by ``sign``."""
    if size < 1:
        raise ValueError("a custody log has at least its key-created entry")
    text = f"{log_origin(log_key_id)}\n{size}\n{b64encode(bytes.fromhex(head))}\n".encode("ascii")
    name = ORIGIN_PREFIX + signing_key_id
    signature = sign(text)
    line = f"{SIGNATURE_DASH}{name} {b64encode(note_key_hash(name, public_key) + signature)}\n"
    return text + b"\n" + line.encode("utf-8")


def parse_checkpoint(data: bytes, source: str) -> Checkpoint:
    """Parse without trusting: a malformed file is bad input (``KeystoreError``); signatures are
    checked by ``verify_signatures`` against keys the caller trusts."""
    def bad(reason: str) -> KeystoreError:
        return KeystoreError(source, f"not a patchveil checkpoint: {reason}")

    if len(data) > MAX_BYTES:
        raise bad("file too large")
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("not UTF-8") from None
    if any(ord(c) < 0x20 and c != "\n" for c in decoded):
        raise bad("control characters")
    split = data.rfind(b"\n\n")
    if split < 0 or not data.endswith(b"\n"):
        raise bad("no blank line between the text and the signatures")
    text, sig_block = data[:split + 1], data[split + 2:]
    lines = text.decode("utf-8").split("\n")[:-1]
    if len(lines) < 3 or any(not line for line in lines):
        raise bad("the text needs origin, size and head lines, none empty")
    origin, size_text, head_text = lines[:3]
    if not origin.startswith(ORIGIN_PREFIX) or len(origin) == len(ORIGIN_PREFIX) or " " in origin:
        raise bad(f"origin {origin[:80]!r} is not {ORIGIN_PREFIX}<key id>")
    if not size_text.isascii() or not size_text.isdigit() or size_text[0] == "0":
        raise bad(f"size {size_text[:20]!r} is not a positive decimal number (a log starts with key-created)")
    try:
        head = base64.b64decode(head_text, validate=True)
    except (binascii.Error, ValueError):
        head = b""
    if len(head) != 32 or b64encode(head) != head_text:
        raise bad("head is not the base64 of a sha256 hash")
    signatures = []
    for line in sig_block.decode("utf-8").split("\n")[:-1]:
        name, _, encoded = line[len(SIGNATURE_DASH):].partition(" ")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if not line.startswith(SIGNATURE_DASH) or not name or " " in encoded or len(raw) < 5:
            raise bad(f"signature line {line[:60]!r} is not '— <key name> <base64>'")
        signatures.append(Signature(name, raw[:4], raw[4:]))
    if not signatures:
        raise bad("no signature line")
    return Checkpoint(origin, int(size_text), head.hex(), tuple(signatures), text)


def verify_signatures(checkpoint: Checkpoint, keys: dict[str, bytes]) -> tuple[str | None, list[str]]:
    """(key id of a valid signature by a trusted key, problems), signed-note rules.

    ``keys``: raw Ed25519 public keys by signing key id. A signature whose name and key hash
    are not a trusted key's is ignored; one that is must verify; if none is, the note is
    rejected. Problems start with their failure's name (``bad signature``, ``unknown key``).
    """
    signer, problems, ignored = None, [], []
    for sig in checkpoint.signatures:
        key_id = sig.key_name[len(ORIGIN_PREFIX):] if sig.key_name.startswith(ORIGIN_PREFIX) else None
        public = keys.get(key_id) if key_id else None
        if public is None or note_key_hash(sig.key_name, public) != sig.key_hash:
            ignored.append(sig.key_name)
            continue
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(sig.signature, checkpoint.text)
        except (InvalidSignature, ValueError):
            problems.append(f"bad signature: the signature of {key_id} does not verify over the "
                            "checkpoint (edited, or not made with the key)")
            continue
        signer = signer or key_id
    if signer is None and not problems:
        problems.append(f"unknown key: signed by {', '.join(ignored)[:200]}, not by a key of this "
                        "identity or handed over in its custody log")
    return (None if problems else signer), problems
