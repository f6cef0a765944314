"""Keys and custody for a data owner: keystore, derivation, keyed streams, the custody log.

Imports only the standard library and ``cryptography`` (``click`` in ``keys.cli`` alone).
"""
from __future__ import annotations

from keys.custody import ChainReport, CustodyLog, read_identity, verify_chain
from keys.derive import DatasetKey
from keys.errors import KeystoreError
from keys.keystore import Keystore, create_keystore, open_keystore
from keys.keystream import KeyStream
from keys.passphrase import read_passphrase

__all__ = [
    "ChainReport", "CustodyLog", "DatasetKey", "KeyStream", "Keystore", "KeystoreError",
    "create_keystore", "open_keystore", "read_identity", "read_passphrase", "verify_chain",
]
