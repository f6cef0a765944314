"""encrypt_dataset: the whole release, from a source listing to a signed manifest.

Plan (keyed order) → run shard tasks (Ray) → journal each shard → sign the manifest → log
`used-for-job` in the custody log → write the owner's report. This is the function the
command line, the demo and the tests call.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from encrypt.ciphers import stored_size
from encrypt.distribute import run_shards
from encrypt.journal import Journal, owner_dir
from encrypt.plan import JobSettings, plan_shards
from encrypt.sources import InputError, Skipped, SourceListing
from keys.index import save_index
from shards.manifest import CipherSpec, Manifest

# What was measured (docs/privacy.md), said whenever a mode is used, the default included.
MODE_RISK = {
    "shuffle": "a jigsaw solver restores 96% of patch neighbours of 16 px shuffled photos (faces and "
               "objects visible again); a learned attacker makes 86% of Fashion-MNIST items recognizable "
               "and re-identifies 69% among ~50 of their class (chance 2%)",
    "mix": "mix keeps layout and colours: a deconvolution gives a 22 dB picture of every photo and "
           "re-identifies 95% of Fashion-MNIST items among ~50 of their class (chance 2%)",
    "mix-shuffle": "photos resist the placement attacks here (12% of neighbours), but a learned attacker "
                   "still re-identifies 32% of Fashion-MNIST items among ~50 of their class (chance 2%)",
    "mix-shuffle-orient": "no placement attack here gets over 1% of neighbours, yet a learned attacker "
                          "re-identifies 11% of Fashion-MNIST items among ~50 of their class (chance 2%), "
                          "and training reaches only ~0.54 of plain top-1 (Fashion-MNIST)",
    "none": "no cipher: plain images, for baselines only",
}


def tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("patchveil")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class JobSummary:
    images_written: int
    skipped: dict[str, int]
    shards: int
    bytes: int
    seconds: float
    images_per_second: float
    manifest_digest: str
    resumed_shards: int
    peak_worker_rss_mb: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def check_out_dir(out_dir: Path, src_dirs: list[Path], resume: bool) -> None:
    """OUT must not sit inside the source and must be new unless resuming."""
    out = Path(out_dir).resolve()
    for src in src_dirs:
        src = Path(src).resolve()
        if out == src or src in out.parents:
            raise InputError(f"{out_dir}: output folder is inside the source folder {src}")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out_dir}: output exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not resume:
        raise InputError(f"{out_dir}: output folder is not empty (use --resume to continue an interrupted job)")


def _fingerprint(settings: JobSettings, dataset_id: str, key_id: str, tasks) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"settings": settings.fingerprint_fields(), "dataset": dataset_id,
                         "key": key_id}, sort_keys=True).encode())
    for task in tasks:
        h.update(task.name.encode())
        for s in task.samples:
            h.update(s.key.encode())
    return h.hexdigest()


def _cipher_spec(settings: JobSettings) -> CipherSpec:
    size = (settings.size, settings.size)
    return CipherSpec(mode=settings.mode, patch=settings.patch, sub_patch=settings.sub_patch,
                      image_size=size,
                      stored_size=stored_size(settings.mode, *size, settings.patch, settings.sub_patch),
                      format=settings.format,
                      quality=settings.quality if settings.format == "jpeg" else None,
                      channels=settings.channels)


def encrypt_dataset(listing: SourceListing, out_dir: Path, keystore, dataset_id: str,
                    settings: JobSettings, *, workers: int = 0, ray_address: str | None = None,
                    resume: bool = False, hide_class_names: bool = False,
                    progress: bool = True) -> JobSummary:
    """Encrypt a listed dataset into signed shards under out_dir; return the summary."""
    out_dir = Path(out_dir)
    start = time.perf_counter()
    dataset_key = keystore.dataset_key(dataset_id)
    tasks = plan_shards(listing, dataset_key, settings)
    fingerprint = _fingerprint(settings, dataset_id, dataset_key.key_id, tasks)
    private = owner_dir(out_dir)
    journal_path = private / "journal.jsonl"
    if resume and journal_path.exists():
        journal = Journal.resume(journal_path, fingerprint, out_dir)
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(f"{out_dir}: output folder is not empty and has no job journal in {private}")
    else:
        journal = Journal.start(journal_path, fingerprint)
    out_dir.mkdir(parents=True, exist_ok=True)
    for leftover in out_dir.iterdir():  # temp files of shards in flight when a job died
        if leftover.name.startswith("."):
            leftover.unlink()
    todo = [t for t in tasks if t.name not in journal.finished]
    resumed = len(tasks) - len(todo)

    bar = tqdm(total=len(tasks), initial=resumed, unit="shard", disable=not progress,
               desc=f"encrypt {dataset_id}", dynamic_ncols=True)
    written = [0]
    peak_rss = [0.0]

    def on_result(result) -> None:
        journal.record(result.entry, result.skipped)
        written[0] += result.entry.samples
        peak_rss[0] = max(peak_rss[0], result.peak_rss_mb)
        elapsed = max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(images_per_s=f"{written[0] / elapsed:.0f}")
        bar.update(1)

    try:
        run_shards(todo, settings, dataset_key, out_dir, workers=workers, address=ray_address,
                   on_result=on_result)
    finally:
        bar.close()

    splits: dict[str, list] = {}
    skipped: list[Skipped] = list(listing.skipped)
    for task in tasks:
        entry, shard_skipped = journal.finished[task.name]
        splits.setdefault(task.split, []).append(entry)
        skipped.extend(shard_skipped)
    save_index(keystore, dataset_id, _index_entries(tasks, skipped))
    manifest = Manifest(
        task=settings.task, dataset_id=dataset_id, cipher=_cipher_spec(settings), splits=splits,
        num_classes=len(listing.class_names),
        class_names=None if hide_class_names else list(listing.class_names),
        categories=listing.categories, key_id=dataset_key.key_id, tool_version=tool_version(),
        created=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
    ).signed(keystore.sign, keystore.public_key)
    manifest.save(out_dir / "manifest.json")
    digest = manifest.digest()
    images = sum(e.samples for entries in splits.values() for e in entries)
    keystore.log("used-for-job", {"dataset_id": dataset_id, "key_id": dataset_key.key_id,
                                  "manifest_digest": digest, "samples": images,
                                  "shards": len(tasks), "mode": settings.mode})
    seconds = time.perf_counter() - start
    summary = JobSummary(
        images_written=images, skipped=dict(Counter(s.reason for s in skipped)), shards=len(tasks),
        bytes=sum(e.bytes for entries in splits.values() for e in entries), seconds=round(seconds, 3),
        images_per_second=round(images / max(seconds, 1e-9), 1), manifest_digest=digest,
        resumed_shards=resumed, peak_worker_rss_mb=peak_rss[0])
    _write_private(private / "summary.json", summary.to_json())
    _write_private(private / "skipped.json",
                   json.dumps([asdict(s) for s in skipped], indent=1, sort_keys=True))
    return summary


def _index_entries(tasks, skipped: list[Skipped]) -> dict[str, dict]:
    """Sample key → {split, rel_path, view} for every planned sample that was written."""
    left_out = {(s.split, s.rel_path) for s in skipped if s.whole_sample}
    return {s.key: {"split": s.split, "rel_path": s.item.rel_path, "view": s.view}
            for task in tasks for s in task.samples if (s.split, s.item.rel_path) not in left_out}


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)
