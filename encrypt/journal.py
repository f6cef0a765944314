"""The job journal: which shards are finished, so a crashed or killed job can resume.

It lives on the data owner's side, beside OUT (in OUT.owner/), never inside OUT: its
records name skipped source paths. One JSON line per finished shard, flushed and fsynced
before the next shard is reported, so `kill -9` loses at most the shards in flight. The
first line fingerprints the job (settings, key id, planned sample ids); resuming a different
job is refused.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from encrypt.sources import InputError, Skipped
from shards.manifest import ShardEntry
from shards.reader import sha256_file


def owner_dir(out_dir: Path) -> Path:
    """The data owner's private folder for a release: OUT.owner beside OUT."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.owner"


class Journal:
    def __init__(self, path: Path, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.finished: dict[str, tuple[ShardEntry, list[Skipped]]] = {}

    @classmethod
    def start(cls, path: Path, fingerprint: str) -> "Journal":
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"job": fingerprint}) + "\n")
        os.replace(tmp, path)
        return cls(path, fingerprint)

    @classmethod
    def resume(cls, path: Path, fingerprint: str, out_dir: Path) -> "Journal":
        """Load the journal and keep only shards whose file still has the journaled digest."""
        if not path.exists():
            raise InputError(f"{path}: no job journal to resume from")
        lines = path.read_text().splitlines()
        try:
            header = json.loads(lines[0])
        except (IndexError, json.JSONDecodeError):
            raise InputError(f"{path}: job journal is unreadable") from None
        if header.get("job") != fingerprint:
            raise InputError(f"{path}: the journal belongs to a job with other inputs, options or key; "
                             "use a new OUT or the same options")
        journal = cls(path, fingerprint)
        for line in lines[1:]:
            try:
                rec = json.loads(line)
                entry = ShardEntry(**rec["entry"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line torn by a kill: that shard is simply redone
            shard = Path(out_dir) / entry.name
            if shard.is_file() and shard.stat().st_size == entry.bytes and sha256_file(shard) == entry.sha256:
                journal.finished[entry.name] = (entry, [Skipped(**s) for s in rec.get("skipped", [])])
        return journal

    def record(self, entry: ShardEntry, skipped: list[Skipped]) -> None:
        rec = {"entry": asdict(entry), "skipped": [asdict(s) for s in skipped]}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.finished[entry.name] = (entry, skipped)
