"""SampleKeys: is every sample key unique across a release's shards, in bounded memory?

Why not a set: a Python set of 1.28 M keys of the job's format (24 hex characters, ImageNet's
train split) holds 161 MB once built (193 MB at its peak while growing; tracemalloc, see
docs/auditor.md), and grows with the release. So each key is packed into 16 bytes (12 key
bytes + a 4-byte shard number), `CHUNK` records are sorted in memory and spilled to a
temporary file, and the sorted runs are merged (heapq) so equal keys meet side by side:
about 15 MB of records in memory whatever the release's size (40 MB peak measured for 1.28 M
keys, `benchmarks/keyset_memory.py`; ~12 s on one shared core, beside reading 1.28 M images).
A release with fewer than `CHUNK` keys never touches the disk.
"""
from __future__ import annotations

import heapq
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

CHUNK = 1 << 18          # records sorted in memory at a time (~15 MB as Python bytes)
_KEY_BYTES = 12          # keys.derive.SAMPLE_ID_HEX hex digits
_RECORD = _KEY_BYTES + 4


class SampleKeys:
    """Add (key, shard number) pairs; then `duplicates()` yields each key seen in two shards."""

    def __init__(self, chunk: int = CHUNK) -> None:
        self._chunk = chunk
        self._records: list[bytes] = []
        self._dir: tempfile.TemporaryDirectory | None = None
        self._runs: list[str] = []

    def add(self, key_hex: str, shard: int) -> None:
        """`key_hex`: a key already checked to be the job's format (24 lowercase hex digits)."""
        self._records.append(bytes.fromhex(key_hex) + shard.to_bytes(4, "big"))
        if len(self._records) >= self._chunk:
            self._spill()

    def _spill(self) -> None:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="patchveil-keys-")
        self._records.sort()
        path = os.path.join(self._dir.name, f"run-{len(self._runs):06d}")
        with open(path, "wb") as f:
            f.write(b"".join(self._records))
        self._runs.append(path)
        self._records = []

    def duplicates(self) -> Iterator[tuple[str, list[int]]]:
        """(key, sorted distinct shard numbers) for every key found in more than one shard."""
        try:
            if self._runs and self._records:
                self._spill()
            files = [open(path, "rb") for path in self._runs]
            try:
                merged = heapq.merge(*map(_read_run, files)) if files else iter(sorted(self._records))
                yield from _groups(merged)
            finally:
                for f in files:
                    f.close()
        finally:
            self.close()

    def close(self) -> None:
        self._records = []
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
        self._runs = []


def _read_run(f: BinaryIO) -> Iterator[bytes]:
    while True:
        block = f.read(_RECORD * 4096)
        if not block:
            return
        for i in range(0, len(block), _RECORD):
            yield block[i:i + _RECORD]


def _groups(records: Iterator[bytes]) -> Iterator[tuple[str, list[int]]]:
    key, shards = None, []
    for record in records:
        k, shard = record[:_KEY_BYTES], int.from_bytes(record[_KEY_BYTES:], "big")
        if k != key:
            if len(set(shards)) > 1:
                yield key.hex(), sorted(set(shards))
            key, shards = k, []
        shards.append(shard)
    if len(set(shards)) > 1:
        yield key.hex(), sorted(set(shards))
