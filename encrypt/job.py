"""One shard end to end: read, decode, transform, encrypt, encode, write, hash, rename.

This is the unit of work a Ray task runs (encrypt/distribute.py). It is a plain function of
its task, the settings and its samples' seeds (`encrypt.ciphers.ShardKeys`, never a key), so
a shard's bytes never depend on which worker ran it or how many there were.
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from encrypt.ciphers import cipher_of
from encrypt.decode import DecodeError
from encrypt.encode import encode_image, extension
from encrypt.geometry import letterbox, random_resized_crop
from encrypt.plan import JobSettings, PlannedSample, ShardTask
from encrypt.prepare import decode_source, prepare_pixels
from encrypt.sources import Skipped
from shards import storage
from shards.manifest import ShardEntry
from shards.writer import ShardWriter

MIN_BOX_SIDE = 1.0  # stored-image pixels; smaller boxes carry no learnable object


@dataclass
class ShardResult:
    entry: ShardEntry
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0  # of the worker process that wrote the shard
    node: str = ""  # where it was written ("" in-process): a shard the driver cannot see names it


def prepare_sample(sample: PlannedSample, settings: JobSettings, keys) -> tuple[np.ndarray, dict | None, list[str]]:
    """Decode and shape one sample; returns (pixels, detection meta or None, notes).

    Centre crops go through `prepare_pixels`, the function the privacy audit takes its
    originals from, so the two cannot drift apart.
    """
    item = sample.item
    if settings.task != "detection" and sample.view < 0:
        pixels = prepare_pixels(item.path, size=settings.size, resize=settings.resize,
                                channels=settings.channels, min_side=settings.min_side)
        return pixels, None, []
    pixels = decode_source(item.path, settings.channels, settings.min_side)
    if settings.task == "detection":
        return _letterbox_with_objects(pixels, item.annotation or {}, settings)
    rng = keys.sample_keys(item.split, sample.key).crop_stream()
    return random_resized_crop(pixels, settings.size, rng), None, []


def _letterbox_with_objects(pixels: np.ndarray, annotation: dict, settings: JobSettings):
    objects = annotation.get("objects", [])
    boxes = np.array([o["bbox"] for o in objects], dtype=np.float64).reshape(-1, 4)
    img, boxes, _ = letterbox(pixels, settings.size, boxes)
    spec = settings.cipher_spec()
    # Boxes are stored in stored-image pixels: mixing keeps sub_patch pixels per patch.
    ratio = spec.stored_size[0] / spec.image_size[0]
    boxes = boxes * ratio
    kept, notes = [], []
    for obj, box in zip(objects, boxes):
        if box[2] < MIN_BOX_SIDE * ratio or box[3] < MIN_BOX_SIDE * ratio:
            notes.append("annotation dropped: box outside the image or under one pixel")
            continue
        kept.append((obj, box))
    sh, sw = spec.stored_size
    meta = {
        "boxes": [[round(float(v), 3) for v in box] for _, box in kept],
        "category_ids": [int(o["category_id"]) for o, _ in kept],
        "iscrowd": [int(o.get("iscrowd", 0)) for o, _ in kept],
        "area": [round(float(box[2] * box[3]), 3) for _, box in kept],
        "image_size": [sh, sw],
    }
    return img, meta, notes


def encrypt_sample(pixels: np.ndarray, sample: PlannedSample, settings: JobSettings, keys) -> bytes:
    """Cipher and encode one prepared image."""
    spec = settings.cipher_spec()
    if tuple(pixels.shape[:2]) != spec.image_size:
        raise ValueError(f"prepared pixels are {pixels.shape[0]}x{pixels.shape[1]}, the cipher sees "
                         f"{spec.image_size[0]}x{spec.image_size[1]}")
    cipher = cipher_of(spec.mode)
    secrets = cipher.secrets(keys, sample.split, sample.key, spec)
    enc = cipher.encrypt(pixels, secrets, spec.patch, spec.sub_patch)
    return encode_image(enc, settings.format, settings.quality)


def encrypt_shard(task: ShardTask, settings: JobSettings, keys, out_dir: Path) -> ShardResult:
    """Write one complete shard (or nothing: the writer renames only on success).

    `keys` gives each sample's seeds (`sample_keys`); the driver sends a `ShardKeys`. For a URL
    OUT the shard is written to a local temp folder and uploaded once complete.
    """
    start = time.perf_counter()
    skipped: list[Skipped] = []
    ext = extension(settings.format)
    with storage.staging_dir(out_dir) as local_dir, ShardWriter(local_dir, task.split, task.index) as writer:
        for sample in task.samples:
            item = sample.item
            try:
                pixels, meta, notes = prepare_sample(sample, settings, keys)
            except DecodeError as exc:
                skipped.append(Skipped(item.split, item.rel_path, str(exc)))
                continue
            skipped.extend(Skipped(item.split, item.rel_path, note, whole_sample=False) for note in notes)
            writer.write(sample.key, encrypt_sample(pixels, sample, settings, keys), ext,
                         cls=item.label, meta=meta)
        entry = writer.close()
        storage.publish(writer.path, out_dir)  # a store: upload the finished shard whole
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return ShardResult(entry, skipped, time.perf_counter() - start, round(peak, 1))
