"""encrypt_dataset: the whole release, from a source listing to a signed manifest.

Pre-flight (header probe) → release subkey (fresh salt; the journal's on --resume; a signed
release's with --rebuild-from) → plan (keyed order) → run shard tasks (Ray) → journal each shard
→ refuse a release that would leave a split empty (or skip more than the owner allows),
undoing the run → sign the manifest → log `used-for-job` in the custody log → write the
owner's report. This is the function the command line, the demo and the tests call.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from encrypt.ciphers import DerivationError, derivation_of
from encrypt.confirm import confirm_present, confirm_shard, sweep_temps
from encrypt.decrypt import load_owned_manifest
from encrypt.distribute import check_address, cluster_address, load_runtime_env, run_shards
from encrypt.journal import Journal, make_owner_dir, own_leftovers, owner_dir
from encrypt.lock import holds_release
from encrypt.plan import JobSettings, plan_shards
from encrypt.sources import InputError, Skipped, SourceListing, display_path
from keys.derive import DERIVATION_VERSION, json_copy, new_release_salt
from keys.index import load_release, release_record, save_index
from shards.console import progress_bar
from shards import storage
from shards.common import atomic_write_bytes, fsync_directory
from shards.info import INFO_NAME, info_bytes, info_sha256
from shards.manifest import Manifest

PREFLIGHT_PROBE = 64
"""Images per split whose header `preflight` reads (at most) before anything is written."""


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
    if storage.is_url(out_dir):  # a store: no folders to resolve; it must hold nothing yet
        out_url = str(storage.location(out_dir)) + "/"
        for src in src_dirs:
            src_url = str(storage.location(src)).rstrip("/") + "/"
            if storage.is_url(src) and (out_url == src_url or out_url.startswith(src_url)):
                raise InputError(f"{out_dir}: output location is inside the source {src}")
        if storage.list_names(out_dir) and not resume:
            raise InputError(f"{out_dir}: output location is not empty (use --resume to continue an "
                             "interrupted job)")
        return
    out = Path(out_dir).resolve()
    for src in src_dirs:
        if storage.is_url(src):  # a source in a store cannot hold a local OUT
            continue
        src = Path(src).resolve()
        if out == src or src in out.parents:
            raise InputError(f"{out_dir}: output folder is inside the source folder {src}")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out_dir}: output exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not resume:
        raise InputError(f"{out_dir}: output folder is not empty (use --resume to continue an interrupted job)")


def _fingerprint(settings: JobSettings, dataset_id: str, key_id: str, release_id: str, tasks) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"settings": settings.fingerprint_fields(), "dataset": dataset_id,
                         "key": key_id, "release": release_id}, sort_keys=True).encode())
    for task in tasks:
        h.update(task.name.encode())
        for s in task.samples:
            h.update(s.key.encode())
    return h.hexdigest()


def rebuild_salt(release: Path, keystore, dataset_id: str, settings: JobSettings) -> bytes:
    """The salt of a signed release of this keystore, to rebuild it byte for byte (--rebuild-from).

    Refused unless the release is of the same dataset, the current dataset key, derivation 2
    and the same settings: anything else would not be that release, and a salt is only ever
    reused for the release it was drawn for.
    """
    where = f"--rebuild-from {release}"
    try:
        manifest = load_owned_manifest(release, keystore)  # a folder or a store URL
        version, release_id = derivation_of(manifest)
    except (InputError, DerivationError) as exc:
        raise InputError(where, str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a manifest that does not load: one line
        raise InputError(where, f"not a release of this keystore ({type(exc).__name__})") from None
    if manifest.dataset_id != dataset_id:
        raise InputError(where, f"is a release of dataset {manifest.dataset_id!r}, not {dataset_id!r}")
    if version != DERIVATION_VERSION:
        raise InputError(where, "was made before key separation (derivation 1); it cannot be rebuilt, "
                                "make a new release instead")
    if manifest.dataset_key_id != keystore.dataset_key(dataset_id, log=False).dataset_key_id:
        raise InputError(where, "was made with an earlier dataset key (rotated since); make a new release")
    salt, binding = load_release(keystore, dataset_id, manifest.dataset_key_id, release_id)
    if binding != json_copy(settings.release_binding()):
        raise InputError(where, "was made with other settings (mode, patch, size, format, quality, channels, "
                                "views, resize or task); give the same options to rebuild it")
    return salt


class JobRefused(InputError):
    """The job would release too little: nothing is signed, logged or indexed (exit 2).

    `written` is images written per split, `skipped` skipped images per reason, `report` the
    owner-side skipped.json (None when the pre-flight check refused before anything ran).
    """

    def __init__(self, path, reason: str, *, written: dict[str, int], skipped: dict[str, int],
                 report: Path | None = None) -> None:
        super().__init__(path, reason)
        self.written, self.skipped, self.report = written, skipped, report


def check_max_skipped_fraction(value: float | None) -> float | None:
    """None (refuse only a split left empty) or a fraction in (0, 1]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise InputError("--max-skipped", f"must be a fraction in (0, 1], got {value!r:.20}")
    return float(value)


def _probe(path: Path, min_side: int) -> str | None:
    """Why one image cannot be used, judged from its header alone (None: it looks usable)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            source = io.BytesIO(storage.read_bytes(path)) if isinstance(path, str) else path  # a store URL
            with Image.open(source) as img:  # lazy: reads the header, decodes no pixel
                w, h = img.size
    except Exception as exc:  # noqa: BLE001 - whatever stops Pillow here stops the job's decode too
        return f"unreadable image header ({type(exc).__name__})"
    if min(w, h) < min_side:
        return f"too small: {w}x{h}, shorter side under {min_side}"  # the job's own words
    return None


def _top_reason(counts: Counter) -> str:
    reason, n = counts.most_common(1)[0]
    others = len(counts) - 1
    return f'most for "{reason}" ({n})' + (f" and {others} other reason{'s' * (others > 1)}" if others else "")


def _splits(listing: SourceListing) -> list[str]:
    return list(dict.fromkeys([*listing.splits, *(item.split for item in listing.items)]))


def preflight(listing: SourceListing, settings: JobSettings, out_dir: Path | None = None,
              probe: int = PREFLIGHT_PROBE) -> None:
    """Refuse at once, before the key is used or a shard written, a job that would leave a split empty.

    A split with no image is refused. Otherwise up to `probe` images of each split, spread
    evenly over its listing (the same whatever the key), are opened lazily until one looks
    usable (shorter side at least `settings.min_side`); when none does, the job is refused
    with the probe's top reason. A healthy dataset costs one header read per split.
    `probe=0` checks only for splits without images.
    """
    by_split: dict[str, list] = {}
    for item in listing.items:
        by_split.setdefault(item.split, []).append(item)
    for split in _splits(listing):
        items = by_split.get(split, [])
        if not items:
            raise JobRefused(out_dir, f"refused before writing anything: split {split} has no image "
                                      "to encrypt, so it would be empty", written={}, skipped={})
        if probe <= 0:
            continue
        picked = items if len(items) <= probe else [items[i * len(items) // probe] for i in range(probe)]
        reasons: Counter = Counter()
        for item in picked:
            reason = _probe(item.path, settings.min_side)
            if reason is None:
                break
            reasons[reason] += 1
        else:
            spread = "" if len(picked) == len(items) else f" (spread over its {len(items)})"
            hint = "check the source"
            if any(r.startswith("too small") for r in reasons):
                hint += f" or pass a smaller --min-side (now {settings.min_side}; default size/4)"
            raise JobRefused(out_dir, f"refused before writing anything: none of the {len(picked)} probed "
                                      f"images of split {split}{spread} can be used, so it would be empty; "
                                      f"{_top_reason(reasons)}; {hint}", written={}, skipped=dict(reasons))


def _refusal(listing: SourceListing, skipped: list[Skipped],
             max_skipped_fraction: float | None) -> tuple[str, dict[str, int], Counter] | None:
    """Why a finished run must not be released, images written per split and skipped per reason.

    None: release it. Refused: any split left without an image, or (with a limit) any split
    that lost more than `max_skipped_fraction` of its listed images.
    """
    listed = {(item.split, item.rel_path) for item in listing.items}
    reason_of: dict[tuple[str, str], str] = {}
    for s in skipped:
        if s.whole_sample and (s.split, s.rel_path) in listed:
            reason_of.setdefault((s.split, s.rel_path), s.reason)  # views of one image: one image
    count = Counter(split for split, _ in listed)
    lost = Counter(split for split, _ in reason_of)
    written = {split: count[split] - lost[split] for split in _splits(listing)}
    why = [f"split {split} would be empty (0 of {count[split]} images written)"
           for split, n in written.items() if n == 0]
    if not why and max_skipped_fraction is not None:
        why = [f"split {split} lost {lost[split]} of {count[split]} images ({lost[split] / count[split]:.0%}), "
               f"over the limit {max_skipped_fraction:g}"
               for split in written if count[split] and lost[split] / count[split] > max_skipped_fraction]
    if not why:
        return None
    reasons = Counter(reason_of.values())
    line = "; ".join(why) + f"; skipped {sum(lost.values())} of {len(listed)} images"
    return (line + (f", {_top_reason(reasons)}" if reasons else "")), written, reasons


def _discard_outputs(out_dir: Path, tasks, journal: Journal, created_out: bool) -> None:
    """Undo a refused run in OUT: the job's shards, its journal, and OUT if this run made it.

    A release signed before (OUT/manifest.json, a finished job resumed) is left as it is:
    the shards rewritten now have the bytes it signed.
    """
    if storage.exists(storage.join(out_dir, "manifest.json")):
        return
    for task in tasks:
        storage.remove(storage.join(out_dir, task.name))
    sweep_temps(out_dir, [task.name for task in tasks])
    storage.remove(storage.join(out_dir, INFO_NAME))  # a crash after it, before the manifest
    journal.discard()
    if isinstance(out_dir, str):  # a store: no folder to sync or remove
        return
    fsync_directory(out_dir)
    if created_out:
        try:
            out_dir.rmdir()
        except OSError:  # something appeared meanwhile: leave it and the folder
            pass


@holds_release
def encrypt_dataset(listing: SourceListing, out_dir: Path, keystore, dataset_id: str,
                    settings: JobSettings, *, workers: int = 0, ray_address: str | None = None,
                    ray_runtime_env: dict | str | None = None, resume: bool = False, hide_class_names: bool = False,
                    progress: bool = True, max_skipped_fraction: float | None = None,
                    probe: int = PREFLIGHT_PROBE, rebuild_from: Path | None = None) -> JobSummary:
    """Encrypt a listed dataset into signed shards under out_dir; return the summary.

    A job that would leave a split empty, or (with `max_skipped_fraction`) skip more than
    that fraction of a split's images, raises JobRefused before signing: no manifest, no
    custody entry, no sealed-index entry; the shards it wrote are removed (and OUT if this
    run created it), and OUT.owner/skipped.json (0600) lists what was skipped and why.
    `probe` images per split are header-checked first (see `preflight`; 0: only splits
    without images). A resumed job removes only its own temp files and refuses an OUT
    holding anything else.

    Every keyed draw comes from a release subkey (keys.derive.ReleaseKey) bound to the
    settings and a salt: fresh for a new job, the journal's on resume, `rebuild_from`'s
    (a signed release of this keystore, same dataset and settings) to rebuild it exactly.
    """
    out_dir = storage.location(out_dir)  # a URL stays a URL: shards are uploaded, manifest last
    max_skipped_fraction = check_max_skipped_fraction(max_skipped_fraction)
    start = time.perf_counter()
    private = owner_dir(out_dir)
    journal_path = private / "journal.jsonl"
    resuming = resume and journal_path.exists()
    created_out = not storage.exists(out_dir)
    if not resuming and not created_out and storage.list_names(out_dir):
        raise InputError(out_dir, f"output folder is not empty and has no job journal in {private}")
    ray_address = cluster_address(ray_address)  # RAY_ADDRESS when none is given, as Ray does
    ray_runtime_env = load_runtime_env(ray_runtime_env)
    if ray_address:
        check_address(ray_address)  # an unreachable cluster is refused before anything is written
    preflight(listing, settings, out_dir, probe)
    dataset_key = keystore.dataset_key(dataset_id, log=False)  # logged when the release is signed
    if resuming:
        salt = Journal.read_salt(journal_path)
        if rebuild_from is not None and salt != rebuild_salt(rebuild_from, keystore, dataset_id, settings):
            raise InputError(f"--rebuild-from {rebuild_from}", "the interrupted job in OUT is another release")
    elif rebuild_from is not None:
        salt = rebuild_salt(rebuild_from, keystore, dataset_id, settings)
    else:
        salt = new_release_salt()
    binding = settings.release_binding()
    release_key = dataset_key.release_key(binding, salt)
    tasks = plan_shards(listing, release_key, settings)
    fingerprint = _fingerprint(settings, dataset_id, dataset_key.dataset_key_id, release_key.release_id, tasks)
    if resuming:
        journal = Journal.resume(journal_path, fingerprint, out_dir)
        leftovers = own_leftovers(out_dir, [t.name for t in tasks])  # refuses anything foreign
        for leftover in leftovers:  # temp files of writes in flight when a job died
            leftover.unlink()
    else:
        journal = Journal.start(journal_path, fingerprint, salt)
    storage.makedirs(out_dir)
    todo = [t for t in tasks if t.name not in journal.finished]
    resumed = len(tasks) - len(todo)

    bar = progress_bar(enabled=progress, total=len(tasks), initial=resumed, unit="shard",
                       desc=f"encrypt {dataset_id}")
    written = [0]
    peak_rss = [0.0]

    node_of: dict[str, str] = {}

    def on_result(result) -> None:
        confirm_shard(out_dir, result.entry, result.node)  # before it is journaled, let alone signed
        node_of[result.entry.name] = result.node
        journal.record(result.entry, result.skipped)
        written[0] += result.entry.samples
        peak_rss[0] = max(peak_rss[0], result.peak_rss_mb)
        elapsed = max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(images_per_s=f"{written[0] / elapsed:.0f}")
        bar.update(1)

    try:
        run_shards(todo, settings, release_key, out_dir, workers=workers, address=ray_address,
                   runtime_env=ray_runtime_env, on_result=on_result)
    finally:
        bar.close()

    splits: dict[str, list] = {}
    skipped: list[Skipped] = list(listing.skipped)
    for task in tasks:
        entry, shard_skipped = journal.finished[task.name]
        splits.setdefault(task.split, []).append(entry)
        skipped.extend(shard_skipped)
    skipped_json = json.dumps([asdict(s) for s in skipped], indent=1, sort_keys=True)
    refusal = _refusal(listing, skipped, max_skipped_fraction)
    if refusal is not None:
        line, images_by_split, reasons = refusal
        report = private / "skipped.json"
        _write_private(report, skipped_json)
        _discard_outputs(out_dir, tasks, journal, created_out)
        raise JobRefused(out_dir, f"refused, nothing signed or logged: {line}; the list is in {report}",
                         written=images_by_split, skipped=dict(reasons), report=report)

    _settle(out_dir, splits, node_of)  # through OUT's own filesystem: no shared-disk assumption
    keystore.dataset_key(dataset_id)  # logs dataset-derived the first time, before used-for-job
    save_index(keystore, dataset_id, _index_entries(tasks, skipped),
               {release_key.release_id: release_record(salt, binding)})
    manifest = Manifest(
        task=settings.task, dataset_id=dataset_id, cipher=settings.cipher_spec(), splits=splits,
        num_classes=len(listing.class_names),
        class_names=None if hide_class_names else list(listing.class_names),
        categories=listing.categories, key_id=dataset_key.dataset_key_id, tool_version=tool_version(),
        created=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        extra={"derivation": DERIVATION_VERSION, "release": release_key.release_id},
    )
    info = info_bytes(manifest)  # timm's split list, signed through its digest
    manifest = dataclasses.replace(manifest, info_sha256=info_sha256(info)).signed(keystore.sign, keystore.public_key)
    storage.write_bytes(storage.join(out_dir, INFO_NAME), info)
    manifest.save(storage.join(out_dir, "manifest.json"))  # last: a release is what it lists
    digest = manifest.digest()
    images = sum(e.samples for entries in splits.values() for e in entries)
    keystore.log("used-for-job", {"dataset_id": dataset_id, "key_id": dataset_key.dataset_key_id,
                                  "manifest_digest": digest, "samples": images,
                                  "shards": len(tasks), "mode": settings.mode})
    seconds = time.perf_counter() - start
    summary = JobSummary(
        images_written=images, skipped=dict(Counter(s.reason for s in skipped)), shards=len(tasks),
        bytes=sum(e.bytes for entries in splits.values() for e in entries), seconds=round(seconds, 3),
        images_per_second=round(images / max(seconds, 1e-9), 1), manifest_digest=digest,
        resumed_shards=resumed, peak_worker_rss_mb=peak_rss[0])
    _write_private(private / "summary.json", summary.to_json())
    _write_private(private / "skipped.json", skipped_json)
    return summary


def _settle(out_dir, splits: dict[str, list], node_of: dict[str, str]) -> None:
    """Before signing: every shard still as confirmed, and no temp file of a killed attempt left."""
    entries = [e for entries in splits.values() for e in entries]
    confirm_present(out_dir, entries, node_of)
    sweep_temps(out_dir, [e.name for e in entries])


def _index_entries(tasks, skipped: list[Skipped]) -> dict[str, dict]:
    """Sample key → {split, rel_path, view} for every planned sample that was written."""
    left_out = {(s.split, s.rel_path) for s in skipped if s.whole_sample}
    return {s.key: {"split": s.split, "rel_path": s.item.rel_path, "view": s.view}
            for task in tasks for s in task.samples if (s.split, display_path(s.item.rel_path)) not in left_out}


def _write_private(path: Path, text: str) -> None:
    """Write an owner-only (0600) report atomically: it names source paths."""
    make_owner_dir(path.parent)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"), 0o600)
