"""forget_samples: honour a deletion request against a release that is already out, crash-safe.

The owner names original paths; the sealed index (`keys.index`) turns them into opaque ids.
Only the shards holding those ids are rewritten (the other samples' bytes copied unchanged, in
the same keyed order); untouched shards stay where they are. The new manifest, signed with
the current key, cites the digest it replaces, and the custody log records `forgotten` with
counts and both digests (never paths), so `audit-shards verify` accepts the new version.

Why rewritten shards get new names: OUT is never missing or half-swapped. The old design
built a sibling folder and swapped it in with two renames, so a kill between them left no
OUT at all. Now the new shards are built in OUT.owner/forget-staging/, then a write-ahead
record (OUT.owner/forget.json, 0600: ids, every old → new shard name with its digest, the
new manifest and its digest, the log entry) is written atomically, and only then is OUT
touched: the new shards are renamed in beside the old ones (unlisted, under fresh indices),
manifest.json is replaced atomically (the one switch from old version to new), `forgotten`
is logged unless the log already holds it, the old shards are deleted, and the record goes.
Each step is idempotent, so a kill -9 anywhere is repaired by `recover`, which every owner
job on OUT runs first under the release lock (`encrypt.lock.holds_release`): without a
record it rolls back (deletes the staging; OUT was not touched), with one it rolls forward.

A release in object storage (a URL OUT) is forgotten the same way: the staging folder and the
record sit in its local owner folder, rewritten shards are uploaded under their new names
(an object appears whole or not at all), the manifest is one PUT (the switch), then the old
shards are deleted. A store has no rename and no temp files, so nothing else changes.

Forgetting cannot recall copies already handed out: ML engineers must switch to the new
version. Delete the source files too, or re-running the encryption job brings them back.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import tarfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from encrypt.ciphers import DerivationError, release_keys
from encrypt.decrypt import check_shard_digests, load_owned_manifest
from encrypt.journal import INFO_TEMP_PATTERN, MANIFEST_TEMP_PATTERN, owner_dir
from encrypt.lock import release_lock
from encrypt.sources import InputError
from keys.derive import normalise_path
from keys.index import load_index
from shards import storage
from shards.storage import Location
from shards.common import SHARD_NAME_PATTERN, atomic_write_bytes, atomic_writer, fsync_directory
from shards.console import progress_bar
from shards.info import INFO_NAME, info_bytes, info_sha256
from shards.manifest import MANIFEST_NAME, Manifest, ManifestError, ShardEntry
from shards.reader import sha256_file
from shards.writer import ShardWriter

RECORD_NAME = "forget.json"
STAGING_NAME = "forget-staging"
_RECORD_TEMP = re.compile(r"^\.forget\.json\.[^./]+\.tmp$")
CRASH_AT_ENV = "PATCHVEIL_FORGET_CRASH_AT"
"""Tests only: the step name at which the process kills itself with SIGKILL (see `_step`)."""
STEPS = ("staging", "staged", "recorded", "moving", "moved", "manifest-temp", "switched", "logged", "cleaned")


@dataclass
class ForgetSummary:
    removed: int                    # samples taken out of the release
    already_absent: int             # requested samples that were not (or no longer) in it
    shards_rewritten: list[str]
    shards_dropped: list[str]       # shards that held only forgotten samples
    version: int                    # the manifest version now in OUT
    previous_digest: str
    manifest_digest: str
    resumed: bool = False           # finished a forget that a crash interrupted


def _step(name: str) -> None:
    """Crash here when a test asks to: proves every step can be resumed after kill -9."""
    if os.environ.get(CRASH_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def forget_samples(out_dir: Location, keystore, paths: Iterable[str], *, progress: bool = True) -> ForgetSummary:
    """Remove every sample made from `paths` (relative to the source root) from a release.

    Holds OUT's lock. An interrupted forget on OUT is finished first; when that one already
    removed everything asked now, its summary is returned with `resumed=True`. OUT is a
    folder or a store URL.
    """
    out_dir = storage.location(out_dir)
    with release_lock(out_dir):
        finished = recover(out_dir, keystore)
        return _forget(out_dir, keystore, paths, progress, finished)


def _forget(out_dir: Location, keystore, paths: Iterable[str], progress: bool,
            finished: ForgetSummary | None) -> ForgetSummary:
    manifest = load_owned_manifest(out_dir, keystore)
    try:  # the new version keeps extra.derivation and extra.release: it must stay decryptable
        release_keys(keystore, manifest)
    except DerivationError as exc:
        raise InputError(f"{out_dir}: {exc}") from None
    index = load_index(keystore, manifest.dataset_id, manifest.dataset_key_id)
    targets = _ids_for_paths(index, paths, manifest.dataset_id)
    previous = manifest.digest()
    version = int(manifest.extra.get("version", 1))

    holding = _shards_holding(out_dir, manifest, targets)
    found = set().union(*holding.values()) if holding else set()
    if not holding:
        if finished is not None:
            return finished
        return ForgetSummary(0, len(targets), [], [], version, previous, previous)
    check_shard_digests(out_dir, manifest, holding)

    private = owner_dir(out_dir)
    staging = private / STAGING_NAME
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700, parents=True)
    splits, moves, dropped = _stage_shards(out_dir, staging, manifest, targets, holding, progress)
    if not splits:
        shutil.rmtree(staging)
        raise InputError(f"{out_dir}: these paths are every sample of the release; "
                         "delete the release instead")
    extra = {**manifest.extra, "version": version + 1, "previous_manifest": previous}
    new = dataclasses.replace(
        manifest, splits=splits, extra=extra, public_key=None, signature=None,
        created=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
    )
    info = None
    if manifest.info_sha256 is not None:  # the new version's timm split list, signed with it
        info = info_bytes(new)
        new = dataclasses.replace(new, info_sha256=info_sha256(info))
    new = new.signed(keystore.sign, keystore.public_key)
    digest = new.digest()
    _step("staged")
    record = {
        "forget": 1, "ids": sorted(found), "requested": len(targets),
        "previous_manifest": previous, "manifest_digest": digest, "version": version + 1,
        "info_text": info.decode("ascii") if info is not None else None,
        "manifest_text": json.dumps(new.to_dict(), sort_keys=True, indent=2, ensure_ascii=True,
                                    allow_nan=False) + "\n",
        "shards": [{"old": old, "new": dataclasses.asdict(entry)} for old, entry in moves],
        "dropped": dropped,
        "log": {"dataset_id": manifest.dataset_id, "key_id": manifest.dataset_key_id,
                "samples_removed": len(found), "shards_rewritten": len(moves),
                "shards_dropped": len(dropped), "version": version + 1,
                "previous_manifest_digest": previous, "manifest_digest": digest},
    }
    atomic_write_bytes(private / RECORD_NAME, json.dumps(record, sort_keys=True).encode("utf-8"), 0o600)
    _step("recorded")
    summary = _roll_forward(out_dir, keystore, record)
    assert summary is not None  # the staged shards are all there: nothing can roll this back
    return summary


def recover(out_dir: Location, keystore) -> ForgetSummary | None:
    """Finish (or undo) a forget on OUT that a crash interrupted; None when there was none.

    Call it holding OUT's lock. No record: nothing in OUT changed yet, so the staging folder
    is deleted (roll back). A record: every step is redone that is not done yet (roll forward).
    """
    out_dir = storage.location(out_dir)  # a URL OUT: its owner folder is local (journal.owner_dir)
    private = owner_dir(out_dir)
    if not private.is_dir():
        return None
    for leftover in private.iterdir():  # a record's temp file names the forgotten ids
        if _RECORD_TEMP.match(leftover.name):
            leftover.unlink()
    record_path = private / RECORD_NAME
    if not record_path.exists():
        if (private / STAGING_NAME).exists():
            shutil.rmtree(private / STAGING_NAME)
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        raise InputError(record_path, "the record of an interrupted forget cannot be read") from None
    summary = _roll_forward(out_dir, keystore, record)
    if summary is not None:
        summary.resumed = True
    return summary


def _roll_forward(out_dir: Location, keystore, record: dict[str, Any]) -> ForgetSummary | None:
    """Do what the record says, skipping what is done: move in, switch, log, clean up."""
    private = owner_dir(out_dir)
    staging, record_path = private / STAGING_NAME, private / RECORD_NAME
    manifest_path = storage.join(out_dir, MANIFEST_NAME)
    local = isinstance(out_dir, Path)
    try:
        current = Manifest.load(manifest_path).digest()
    except ManifestError as exc:
        raise InputError(record_path, f"an interrupted forget cannot be finished: {exc}") from None
    if current not in (record["previous_manifest"], record["manifest_digest"]):
        raise InputError(record_path, "an interrupted forget cannot be finished: OUT's manifest is neither "
                                      "the version it started from nor the one it writes; move this record "
                                      "away after checking OUT")
    if current == record["previous_manifest"]:
        for move in record["shards"]:
            if not _move_in(staging, out_dir, ShardEntry(**move["new"])):
                _roll_back(out_dir, record)  # a staged shard is lost: OUT is still the old version
                return None
            _step("moving")
        if local:
            fsync_directory(out_dir)
        _step("moved")
        if record.get("info_text") is not None:  # before the switch; rewritten if a kill comes between
            storage.write_bytes(storage.join(out_dir, INFO_NAME), record["info_text"].encode("ascii"))
        if local:
            with atomic_writer(manifest_path) as f:
                f.write(record["manifest_text"].encode("ascii"))
                f.flush()
                _step("manifest-temp")
        else:  # one PUT: the store holds the old object or the new one, never a mix
            storage.write_bytes(manifest_path, record["manifest_text"].encode("ascii"))
    _step("switched")
    if not any(e.get("event") == "forgotten" and e.get("details", {}).get("manifest_digest") ==
               record["manifest_digest"] for e in keystore.custody.entries()):
        keystore.log("forgotten", record["log"])
    _step("logged")
    for name in [m["old"] for m in record["shards"]] + record["dropped"]:
        storage.remove(storage.join(out_dir, name))
    if local:
        _remove_temps(out_dir, record)
        fsync_directory(out_dir)
    _step("cleaned")
    shutil.rmtree(staging, ignore_errors=True)
    record_path.unlink(missing_ok=True)
    fsync_directory(private)
    return ForgetSummary(len(record["ids"]), record["requested"] - len(record["ids"]),
                         [m["old"] for m in record["shards"]], list(record["dropped"]), record["version"],
                         record["previous_manifest"], record["manifest_digest"])


def _move_in(staging: Path, out_dir: Location, entry: ShardEntry) -> bool:
    """Put one staged shard into OUT under its new name; False if it is nowhere to be found."""
    target = storage.join(out_dir, entry.name)
    if isinstance(target, Path):
        if target.is_file() and not target.is_symlink() and sha256_file(target) == entry.sha256:
            return True
    elif storage.exists(target) and storage.sha256(target) == entry.sha256:
        return True
    source = staging / entry.name
    if not source.is_file() or sha256_file(source) != entry.sha256:
        return False
    if not isinstance(target, Path):
        storage.publish(source, out_dir)  # uploaded whole; the staged copy goes with the staging
        return True
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        with atomic_writer(target, 0o644) as f, open(source, "rb") as src:  # OUT is another file system
            shutil.copyfileobj(src, f)
    return True


def _roll_back(out_dir: Location, record: dict[str, Any]) -> None:
    """Undo a forget whose staged shards are gone: OUT keeps its old manifest and shards."""
    for move in record["shards"]:
        storage.remove(storage.join(out_dir, move["new"]["name"]))
    if isinstance(out_dir, Path):
        _remove_temps(out_dir, record)
        fsync_directory(out_dir)
    private = owner_dir(out_dir)
    shutil.rmtree(private / STAGING_NAME, ignore_errors=True)
    (private / RECORD_NAME).unlink(missing_ok=True)


def _remove_temps(out_dir: Path, record: dict[str, Any]) -> None:
    """Temp files a kill left in OUT: the manifest's, and copies of new shards (cross-device)."""
    new_names = {m["new"]["name"] for m in record["shards"]}
    for entry in out_dir.iterdir():
        name = entry.name
        if MANIFEST_TEMP_PATTERN.match(name) or INFO_TEMP_PATTERN.match(name) or (
                name.endswith(".tmp") and any(name.startswith(f".{n}.") for n in new_names)):
            entry.unlink()


def _ids_for_paths(index: dict[str, dict], paths: Iterable[str], dataset_id: str) -> set[str]:
    """Every sample id (all views) of each path; an unknown path is bad input, nothing changes."""
    by_path: dict[str, set[str]] = {}
    for sample_id, entry in index.items():
        by_path.setdefault(entry["rel_path"], set()).add(sample_id)
    targets: set[str] = set()
    paths = list(paths)
    if not paths:
        raise InputError("forget: give at least one --path")
    for path in paths:
        try:
            norm = normalise_path(path)
        except ValueError as exc:
            raise InputError(f"{path}: {exc}") from None
        if norm not in by_path:
            raise InputError(f"{path}: not in the sealed index of dataset {dataset_id!r} "
                             "(give the path relative to the source folder, as encrypted)")
        targets |= by_path[norm]
    return targets


def _shards_holding(out_dir: Location, manifest: Manifest, targets: set[str]) -> dict[str, set[str]]:
    """Shard name → the target ids in it, from tar headers only (no image data is read; on a
    store, ranged reads skip the image bytes)."""
    holding: dict[str, set[str]] = {}
    for entries in manifest.splits.values():
        for entry in entries:
            path = storage.join(out_dir, entry.name)
            try:
                with storage.open_read(path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
                    keys = {name.partition(".")[0] for name in tar.getnames()}
            except (OSError, tarfile.TarError) as exc:
                raise InputError(f"{path}: cannot be read ({exc})") from None
            if keys & targets:
                holding[entry.name] = keys & targets
    return holding


def _fresh_indices(out_dir: Location, manifest: Manifest) -> dict[str, int]:
    """Per split, the first shard index above every name in the manifest and in OUT."""
    names = [e.name for es in manifest.splits.values() for e in es] + [n for n, _ in storage.list_names(out_dir)]
    top: dict[str, int] = {}
    for name in names:
        match = SHARD_NAME_PATTERN.match(name)
        if match:
            top[match["split"]] = max(top.get(match["split"], -1), int(match["index"]))
    return {split: index + 1 for split, index in top.items()}


def _stage_shards(out_dir: Location, staging: Path, manifest: Manifest, targets: set[str],
                  holding: dict[str, set[str]], progress: bool):
    """Write the rewritten shards into staging under fresh names; the new splits, moves, drops."""
    splits: dict[str, list[ShardEntry]] = {}
    moves: list[tuple[str, ShardEntry]] = []
    dropped: list[str] = []
    fresh = _fresh_indices(out_dir, manifest)
    names = [e for es in manifest.splits.values() for e in es]
    for entry in progress_bar(enabled=progress, iterable=names, unit="shard", desc="forget"):
        if entry.name not in holding:
            splits.setdefault(entry.split, []).append(entry)
            continue
        index = fresh[entry.split]
        if index > 999_999:
            raise InputError(f"{storage.join(out_dir, entry.name)}: no shard index left for a rewritten shard")
        writer = ShardWriter(staging, entry.split, index)
        with writer:
            for key, members in _raw_samples(storage.join(out_dir, entry.name)):
                if key in targets:
                    continue
                image_ext = next(ext for ext in ("jpg", "png") if ext in members)
                cls = int(members["cls"]) if "cls" in members else None
                meta = json.loads(members["json"]) if "json" in members else None
                writer.write(key, members[image_ext], image_ext, cls=cls, meta=meta)
            if writer.samples == 0:
                writer.abort()
        if writer.samples == 0:
            dropped.append(entry.name)
        else:
            fresh[entry.split] = index + 1
            new = writer.close()
            splits.setdefault(entry.split, []).append(new)
            moves.append((entry.name, new))
            _step("staging")
    return splits, moves, dropped


def _raw_samples(path: Location):
    """(key, {ext: bytes}) per sample, members copied as stored (no decoding, no re-encoding)."""
    current, members = None, {}
    with storage.open_read(path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if not member.isfile() or ext not in ("jpg", "png", "cls", "json"):
                raise InputError(f"{path}: member {member.name!r:.60} is not part of the shard contract")
            if key != current and current is not None:
                yield current, members
                members = {}
            current = key
            members[ext] = tar.extractfile(member).read()
    if current is not None:
        yield current, members
