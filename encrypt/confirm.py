"""Nothing is signed that the driver has not seen: shards read back, stray temp files swept.

Shard tasks write into OUT wherever they run and report only name, size and sha256. The
driver signs the manifest, so it first reads each shard back through its own view of OUT
(the path or store URL the manifest describes, through `shards.storage`) and checks size and
sha256. A node whose OUT is not the
driver's OUT (a node-local disk, a missing mount) fails the job at its first shard, naming
the shard and the node, instead of signing a release whose files are elsewhere.

Cost: one sequential read and one sha256 per shard, in 1 MiB chunks, overlapping the tasks
still running; sha256 dominates (measured: 1.1 s per GB on one busy core, page cache hot, plus the
read, which on a shared file system is a network read of the shard).

A worker or node killed mid-shard leaves its `.{shard}.{random}.tmp`; Ray's retry writes a
new one. Before signing, `sweep_temps` removes the temp files of this job's shards, so the
release verifies without `--resume`.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from encrypt.sources import InputError
from shards import storage
from shards.manifest import ShardEntry
from shards.writer import TEMP_PATTERN

CHUNK = 1 << 20
_SHARD_OF_TEMP = re.compile(r"^\.(?P<shard>.+\.tar)\.[^./]+\.tmp$")


class ShardNotSeen(InputError):
    """The driver cannot read a shard a task reported as written, or reads other bytes (exit 2)."""


def _where(node: str) -> str:
    return f"on node {node}" if node else "in the driver's process"


def read_back(loc) -> tuple[int, str]:
    """(bytes, sha256 hex) of a file or stored object, read once in 1 MiB chunks."""
    digest, size = hashlib.sha256(), 0
    with storage.open_read(loc) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def confirm_shard(out_dir: Path, entry: ShardEntry, node: str = "") -> None:
    """Raise ShardNotSeen unless OUT/entry.name, as the driver sees it, is the reported shard."""
    path = storage.join(storage.location(out_dir), entry.name)
    try:
        size, sha256 = read_back(path)
    except FileNotFoundError:
        seen = "the driver finds no such file"
    except OSError as exc:
        seen = f"the driver cannot read it ({exc.strerror or type(exc).__name__})"
    else:
        if size == entry.bytes and sha256 == entry.sha256:
            return
        seen = (f"the driver reads {size} bytes, not {entry.bytes}" if size != entry.bytes
                else "the driver reads other bytes (sha256 differs)")
    raise ShardNotSeen(path, f"written by its shard task {_where(node)}, but {seen}; OUT must be the same "
                             "location for the driver and every node (a shared file system at the same path, "
                             "or a store URL such as s3://...); nothing was signed")


def confirm_present(out_dir: Path, entries: Iterable[ShardEntry], node_of: dict[str, str]) -> None:
    """Last gate before signing: every shard still there with its size (a stat each, no read)."""
    for entry in entries:
        path = storage.join(storage.location(out_dir), entry.name)
        try:
            size = storage.size(path)
        except OSError:
            size = None
        if size != entry.bytes:
            seen = "it is gone" if size is None else f"it now has {size} bytes, not {entry.bytes}"
            raise ShardNotSeen(path, f"confirmed earlier but {seen} (written {_where(node_of.get(entry.name, ''))}); "
                                     "nothing was signed")


def sweep_temps(out_dir: Path, shard_names: Iterable[str]) -> list[str]:
    """Remove temp files of these shards left by killed attempts; return their names.

    Called once every shard is confirmed, so no attempt of this job is still writing one. Only
    names matching `TEMP_PATTERN` of this job's shards are touched.
    """
    names = set(shard_names)
    removed: list[str] = []
    if storage.is_url(out_dir):  # a store gets whole uploads: no temp objects to sweep
        return removed
    try:
        entries = list(os.scandir(out_dir))
    except OSError:
        return removed
    for entry in entries:
        found = _SHARD_OF_TEMP.match(entry.name)
        if found and TEMP_PATTERN.match(entry.name) and found.group("shard") in names \
                and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(entry.name)
    return sorted(removed)
