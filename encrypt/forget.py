"""forget_samples: honour a deletion request against a release that is already out.

The owner names original paths; the sealed index (`keys.index`) turns them into opaque ids.
Only the shards holding those ids are rewritten (the other samples' bytes copied unchanged, in
the same keyed order); untouched shards are hard-linked, not rewritten. The new version is
built in a hidden sibling of OUT and swapped in whole, then the old version is deleted, and
the new manifest, signed with the current key, cites the digest it replaces. The custody log
records `forgotten` with counts and both digests (never paths), so `audit-shards verify`
accepts the new version.

Forgetting cannot recall copies already handed out: ML engineers must switch to the new
version. Delete the source files too, or re-running the encryption job brings them back.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable


from encrypt.decrypt import check_shard_digests, load_owned_manifest
from encrypt.sources import InputError
from keys.derive import normalise_path
from keys.index import load_index
from shards.console import progress_bar
from shards.common import fsync_directory
from shards.manifest import MANIFEST_NAME, Manifest, ShardEntry
from shards.writer import ShardWriter


@dataclass
class ForgetSummary:
    removed: int                    # samples taken out of the release
    already_absent: int             # requested samples that were not (or no longer) in it
    shards_rewritten: list[str]
    shards_dropped: list[str]       # shards that held only forgotten samples
    version: int                    # the manifest version now in OUT
    previous_digest: str
    manifest_digest: str


def forget_samples(out_dir: Path, keystore, paths: Iterable[str], *, progress: bool = True) -> ForgetSummary:
    """Remove every sample made from `paths` (relative to the source root) from a release."""
    out_dir = Path(out_dir)
    manifest = load_owned_manifest(out_dir, keystore)
    index = load_index(keystore, manifest.dataset_id, manifest.dataset_key_id)
    targets = _ids_for_paths(index, paths, manifest.dataset_id)
    previous = manifest.digest()
    version = int(manifest.extra.get("version", 1))

    holding = _shards_holding(out_dir, manifest, targets)
    found = set().union(*holding.values()) if holding else set()
    if not holding:
        return ForgetSummary(0, len(targets), [], [], version, previous, previous)
    check_shard_digests(out_dir, manifest, holding)

    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.forget-", suffix=".tmp", dir=out_dir.parent))
    try:
        os.chmod(staging, out_dir.stat().st_mode & 0o7777)
        splits, rewritten, dropped = _stage_shards(out_dir, staging, manifest, targets, holding, progress)
        if not splits:
            raise InputError(f"{out_dir}: these paths are every sample of the release; "
                             "delete the release instead")
        extra = {**manifest.extra, "version": version + 1, "previous_manifest": previous}
        new = dataclasses.replace(
            manifest, splits=splits, extra=extra, public_key=None, signature=None,
            created=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        ).signed(keystore.sign, keystore.public_key)
        new.save(staging / MANIFEST_NAME)
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    digest = new.digest()
    keystore.log("forgotten", {"dataset_id": manifest.dataset_id, "key_id": manifest.dataset_key_id,
                               "samples_removed": len(found), "shards_rewritten": len(rewritten),
                               "shards_dropped": len(dropped), "version": version + 1,
                               "previous_manifest_digest": previous, "manifest_digest": digest})
    return ForgetSummary(len(found), len(targets) - len(found), rewritten, dropped, version + 1,
                         previous, digest)


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


def _shards_holding(out_dir: Path, manifest: Manifest, targets: set[str]) -> dict[str, set[str]]:
    """Shard name → the target ids in it, from tar headers only (no image data is read)."""
    holding: dict[str, set[str]] = {}
    for entries in manifest.splits.values():
        for entry in entries:
            try:
                with tarfile.open(out_dir / entry.name, "r:") as tar:
                    keys = {name.partition(".")[0] for name in tar.getnames()}
            except (OSError, tarfile.TarError) as exc:
                raise InputError(f"{out_dir / entry.name}: cannot be read ({exc})") from None
            if keys & targets:
                holding[entry.name] = keys & targets
    return holding


def _stage_shards(out_dir: Path, staging: Path, manifest: Manifest, targets: set[str],
                  holding: dict[str, set[str]], progress: bool):
    splits: dict[str, list[ShardEntry]] = {}
    rewritten, dropped = [], []
    names = [e for es in manifest.splits.values() for e in es]
    for entry in progress_bar(enabled=progress, iterable=names, unit="shard", desc="forget"):
        source = out_dir / entry.name
        if entry.name not in holding:
            _link_or_copy(source, staging / entry.name)
            splits.setdefault(entry.split, []).append(entry)
            continue
        index = int(entry.name.rsplit("-", 1)[1].split(".")[0])
        writer = ShardWriter(staging, entry.split, index)
        with writer:
            for key, members in _raw_samples(source):
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
            splits.setdefault(entry.split, []).append(writer.close())
            rewritten.append(entry.name)
    return splits, rewritten, dropped


def _raw_samples(path: Path):
    """(key, {ext: bytes}) per sample, members copied as stored (no decoding, no re-encoding)."""
    current, members = None, {}
    with tarfile.open(path, "r:") as tar:
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


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Put the staged version at OUT and delete the old one (two renames in one folder)."""
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.forgotten-", suffix=".tmp", dir=out_dir.parent))
    old.rmdir()
    os.rename(out_dir, old)
    try:
        os.rename(staging, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    fsync_directory(out_dir.parent)
    shutil.rmtree(old)
