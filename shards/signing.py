"""Ed25519 signature checks for manifests.

`shards` only ever verifies: it never holds a private key. Whoever signs (the data owner's
keystore) passes a callback `sign(data) -> signature`, so the shard contract can be read and
checked by anyone with the public key alone.
"""
from __future__ import annotations

from typing import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64

Sign = Callable[[bytes], bytes]
"""A signing callback: returns the raw 64-byte Ed25519 signature of `data`."""


def verify_signature(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature of `data` under `public_key`.

    A malformed signature is simply invalid (False); a malformed public key is a usage error
    (ValueError), because no signature could ever be checked against it.
    """
    if not isinstance(public_key, (bytes, bytearray)) or len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} raw bytes")
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(bytes(signature), bytes(data))
    except InvalidSignature:
        return False
    return True
