"""The job journal: which shards are finished, so a crashed or killed job can resume.

It lives on the data owner's side, beside OUT (in OUT.owner/), never inside OUT: its
records name skipped source paths. One JSON line per finished shard, flushed and fsynced
before the next shard is reported, so `kill -9` loses at most the shards in flight. The
first line (written atomically, fsynced, 0600) fingerprints the job (settings, dataset key
id, planned sample ids) and keeps the release's salt, so a resumed job draws exactly what the
interrupted one drew; resuming a different job is refused. The salt is not a secret (an HKDF
salt makes releases differ; the dataset key is what is secret) but stays owner-side anyway.

Resuming touches only what the job itself put in OUT: its shards, its manifest and the
temporary files of writes a kill interrupted (`shards.writer.TEMP_PATTERN` for shards, the
manifest's atomic-write temp name). Anything else in OUT (a notes file, a `.git/` folder)
is not the job's: resume refuses, naming it, and changes nothing.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from encrypt.sources import InputError, Skipped
from shards import storage
from shards.common import atomic_write_bytes
from shards.errors import escape_path
from shards.info import INFO_NAME
from shards.manifest import ShardEntry
from shards.reader import sha256_file
from shards.writer import TEMP_PATTERN

MANIFEST_NAME = "manifest.json"
# shards.common.atomic_writer: mkstemp(prefix=".manifest.json.", suffix=".tmp")
MANIFEST_TEMP_PATTERN = re.compile(r"^\.manifest\.json\.[^./]+\.tmp$")
INFO_TEMP_PATTERN = re.compile(r"^\._info\.json\.[^./]+\.tmp$")
_SHARD_TEMP = re.compile(r"^\.(?P<shard>.+\.tar)\.[^./]+\.tmp$")


def owner_dir(out_dir: Path | str) -> Path:
    """The data owner's private folder for a release: OUT.owner beside OUT; for a URL OUT
    (a store), a local folder under $PATCHVEIL_OWNER_DIR (`shards.storage.owner_dir_for_url`)."""
    out_dir = storage.location(out_dir)
    if isinstance(out_dir, str):
        return storage.owner_dir_for_url(out_dir)
    return out_dir.parent / f"{out_dir.name}.owner"


def make_owner_dir(path: Path) -> Path:
    """Create OUT.owner/ owner-only (0700, also when it exists): its files name source paths."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def own_leftovers(out_dir: Path, shard_names: Iterable[str]) -> list[Path]:
    """The temporary files this job's interrupted writes left in OUT; refuse anything foreign.

    OUT may hold only this job's shards (`shard_names`), its manifest, `_info.json` and their temp files;
    the first other entry (by name: a dot-file, a folder, a link, a shard of another plan)
    raises InputError naming it, before anything is removed.
    """
    out_dir = storage.location(out_dir)
    names = set(shard_names)
    if isinstance(out_dir, str):  # a store: whole objects only, so no temp files; refuse strays
        for name, _ in storage.list_names(out_dir):
            if name not in names and name not in (MANIFEST_NAME, INFO_NAME):
                raise InputError(escape_path(f"{out_dir}/{name}"), "an object that is not part of this job; "
                                 "--resume changes nothing while OUT holds anything but the job's own shards")
        return []
    if not out_dir.is_dir():
        return []
    leftovers = []
    for entry in sorted(out_dir.iterdir(), key=lambda p: p.name):
        name = entry.name
        temp = _SHARD_TEMP.match(name)
        regular = entry.is_file() and not entry.is_symlink()
        if regular and (name in names or name in (MANIFEST_NAME, INFO_NAME)):
            continue
        if regular and ((TEMP_PATTERN.match(name) and temp and temp.group("shard") in names)
                        or MANIFEST_TEMP_PATTERN.match(name) or INFO_TEMP_PATTERN.match(name)):
            leftovers.append(entry)
            continue
        what = "a folder" if entry.is_dir() and not entry.is_symlink() else \
            "a file" if regular else "a link or special file"
        raise InputError(escape_path(str(entry)), f"{what} that is not part of this job; --resume changes "
                                                  "nothing while OUT holds anything but the job's own shards "
                                                  "(move it out of OUT)")
    return leftovers


def _has_digest(shard, entry: ShardEntry) -> bool:
    """The shard (local or in a store) exists with the journaled size and sha256."""
    if isinstance(shard, Path):
        return shard.is_file() and shard.stat().st_size == entry.bytes and sha256_file(shard) == entry.sha256
    try:
        return storage.size(shard) == entry.bytes and storage.sha256(shard) == entry.sha256
    except (FileNotFoundError, IsADirectoryError):
        return False


class Journal:
    def __init__(self, path: Path, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.finished: dict[str, tuple[ShardEntry, list[Skipped]]] = {}

    @classmethod
    def start(cls, path: Path, fingerprint: str, salt: bytes) -> "Journal":
        make_owner_dir(path.parent)
        header = {"job": fingerprint, "salt": base64.b64encode(salt).decode("ascii")}
        atomic_write_bytes(path, (json.dumps(header) + "\n").encode("utf-8"), 0o600)
        return cls(path, fingerprint)

    @staticmethod
    def read_salt(path: Path) -> bytes:
        """The release salt the interrupted job drew with (read before planning a resume)."""
        try:
            header = json.loads(Path(path).read_text().splitlines()[0])
            salt = base64.b64decode(header["salt"], validate=True)
        except (OSError, IndexError, ValueError, KeyError, TypeError, binascii.Error):
            raise InputError(f"{path}: the job journal holds no release salt (unreadable, or written before "
                             "key separation); start again in a new OUT") from None
        return salt

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
            shard = storage.join(out_dir, entry.name)
            if _has_digest(shard, entry):
                journal.finished[entry.name] = (entry, [Skipped(**s) for s in rec.get("skipped", [])])
        return journal

    def discard(self) -> None:
        """Forget the job: remove the journal, so the next run into OUT starts afresh."""
        self.path.unlink(missing_ok=True)
        self.finished.clear()

    def record(self, entry: ShardEntry, skipped: list[Skipped]) -> None:
        rec = {"entry": asdict(entry), "skipped": [asdict(s) for s in skipped]}
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)  # owner-only, whoever made the file: its records name skipped paths
        with open(fd, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.finished[entry.name] = (entry, skipped)
