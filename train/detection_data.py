"""Detection batches from a release: uint8 images plus, per image, its objects as tensors.

A detection release stores, beside each (``mix`` or plain) image, a ``json`` member:
``boxes`` ([x, y, w, h] in stored-image pixels), ``category_ids`` (COCO ids listed in the
manifest's ``categories``), ``iscrowd``, ``area`` and ``image_size`` ([h, w] of the stored
image). Here each sample becomes a target dict:

- ``labels`` (int64, n): contiguous class indices 0..K−1 in the order of the manifest's
  categories (``CategoryMap``); the detector's extra class K means "no object";
- ``boxes`` (float32, n×4): normalised (cx, cy, w, h), what the detector predicts;
- ``boxes_px``, ``area``, ``iscrowd``, ``size``: the stored-pixel ground truth that COCO
  evaluation scores against.

Crowd regions stay in the target for evaluation; ``DetectionTransform`` drops them from
``labels``/``boxes`` for training, as DETR does. Streaming, DDP splitting, shuffling and
step-exact epochs are ``train.data.ShardLoader``'s; only the per-sample conversion and the
batching differ.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from shards.manifest import CipherSpec, Manifest, ManifestError
from shards import storage
from shards.reader import ShardError
from train.box_ops import pixels_to_normalized
from train.data import Release, ShardLoader, channel_stats, open_release, stack_images

__all__ = [
    "CategoryMap",
    "DetectionBatch",
    "DetectionLoader",
    "DetectionTransform",
    "flip_target",
    "open_detection_release",
    "target_from_meta",
]

Target = dict[str, torch.Tensor]
DetectionBatch = tuple[torch.Tensor, list[Target]]


@dataclass(frozen=True)
class CategoryMap:
    """COCO category ids ↔ the detector's contiguous class indices (manifest order)."""

    ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> CategoryMap:
        if not manifest.categories:
            raise ManifestError("categories: a detection release must list its categories")
        ids = tuple(int(c["id"]) for c in manifest.categories)
        names = tuple(str(c.get("name", c["id"])) for c in manifest.categories)
        return cls(ids, names)

    def __len__(self) -> int:
        return len(self.ids)

    def label(self, category_id: int) -> int:
        try:
            return self.ids.index(category_id)
        except ValueError:
            raise ShardError(f"category id {category_id} is not in the manifest's categories") from None

    def category_id(self, label: int) -> int:
        return self.ids[label]

    def coco_categories(self) -> list[dict[str, Any]]:
        return [{"id": i, "name": n} for i, n in zip(self.ids, self.names)]


def open_detection_release(root: str | os.PathLike, splits: Sequence[str] = ("train",), *,
                           public_key: bytes | None = None, verify_digests: bool = False) -> Release:
    """Load and verify `root/manifest.json` of a detection release and check `splits`' shards.

    Always: the signature (against `public_key`, else the key the manifest names), that the
    release is for detection with a `mix` or plain cipher and lists its categories, that
    every shard of `splits` exists at its listed size. With `verify_digests`, every shard's
    sha256 and sample count and no stray files. One-line ManifestError / ShardError.
    """
    release = open_release(root, splits, public_key=public_key, verify_digests=verify_digests,
                           task="detection")
    where = storage.join(release.root, "manifest.json")
    if not release.cipher.facts.keeps_positions:
        raise ManifestError(f"{where}: cipher {release.cipher.mode} moves patches, so boxes "
                            "cannot be learned; detection reads mix or none releases")
    try:
        CategoryMap.from_manifest(release.manifest)
    except ManifestError as e:
        raise ManifestError(f"{where}: {e}") from None
    return release


def _float_list(value: Any, n: int | None, what: str) -> list[float]:
    if not isinstance(value, list) or (n is not None and len(value) != n):
        raise ShardError(f"sample json: {what} is not a list" + (f" of {n}" if n is not None else ""))
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ShardError(f"sample json: {what} holds {v!r:.20}, not a finite number")
        out.append(float(v))
    return out


def target_from_meta(meta: dict | None, categories: CategoryMap, stored_size: tuple[int, int]) -> Target:
    """Check one sample's detection json against the contract and turn it into tensors."""
    if not isinstance(meta, dict):
        raise ShardError("a sample has no json member: detection needs boxes per sample")
    size = meta.get("image_size")
    if list(size or []) != list(stored_size):
        raise ShardError(f"sample json: image_size {size!r:.30} differs from the cipher's "
                         f"stored size {list(stored_size)}")
    boxes = meta.get("boxes")
    if not isinstance(boxes, list):
        raise ShardError("sample json: boxes is not a list")
    n = len(boxes)
    px = [_float_list(b, 4, f"box {i}") for i, b in enumerate(boxes)]
    ids = meta.get("category_ids")
    if not isinstance(ids, list) or len(ids) != n or not all(isinstance(c, int) and not isinstance(c, bool)
                                                             for c in ids):
        raise ShardError(f"sample json: category_ids is not a list of {n} integers")
    height, width = stored_size
    for i, (x, y, w, h) in enumerate(px):
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width + 1e-3 or y + h > height + 1e-3:
            raise ShardError(f"sample json: box {i} {[x, y, w, h]} is empty or outside "
                             f"the {height}x{width} image")
    crowd = meta.get("iscrowd", [0] * n)
    area = meta.get("area")
    area = [w * h for _, _, w, h in px] if area is None else _float_list(area, n, "area")
    crowd = _float_list(crowd, n, "iscrowd")
    boxes_px = torch.tensor(px, dtype=torch.float32).reshape(n, 4)
    return {
        "labels": torch.tensor([categories.label(c) for c in ids], dtype=torch.int64),
        "boxes": pixels_to_normalized(boxes_px, (height, width)),
        "boxes_px": boxes_px,
        "area": torch.tensor(area, dtype=torch.float32),
        "iscrowd": torch.tensor(crowd, dtype=torch.int64),
        "size": torch.tensor([height, width], dtype=torch.int64),
    }


def _collate(samples: list[tuple[np.ndarray, Target]]) -> DetectionBatch:
    images, targets = zip(*samples)
    return stack_images(images), list(targets)


class DetectionLoader(ShardLoader):
    """(images uint8 B×C×H×W, list of B target dicts) batches of one split of a detection release.

    `ShardLoader`'s epochs (`train=True` shuffled, full batches, `len(loader)` of them on
    every rank; `train=False` every sample once, in shard order); only the per-sample
    conversion (boxes from the sample's json) and the batching of targets differ.
    """

    def __init__(self, release: Release, split: str, **kwargs: Any) -> None:
        super().__init__(release, split, **kwargs)
        self.categories = CategoryMap.from_manifest(release.manifest)

    def convert(self, sample: tuple[np.ndarray, int | None, dict | None]) -> tuple[np.ndarray, Target]:
        image, _, meta = sample
        return image, target_from_meta(meta, self.categories, self.release.cipher.stored_size)

    def collate(self, samples: list[tuple[np.ndarray, Target]]) -> DetectionBatch:
        return _collate(samples)


class DetectionTransform:
    """uint8 batch + targets → normalised float input and targets on `device`.

    `hflip` (training): probability of flipping an image left-right, boxes with it
    (cx → 1 − cx). A whole-image flip commutes with `mix`: the mixed image of a flipped
    image is the flipped mixed image, so this is a ciphertext-domain augmentation. With
    `train=True` crowd regions are dropped from `labels`/`boxes` (they are not matched).
    Draws come from torch's global generator, which the engine seeds per epoch.
    """

    def __init__(self, cipher: CipherSpec, mean: Sequence[float], std: Sequence[float],
                 device: torch.device | str = "cpu", *, hflip: float = 0.0, train: bool = False) -> None:
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip must be in [0, 1], got {hflip}")
        self.device = torch.device(device)
        self.mean = torch.tensor(channel_stats(mean, cipher.channels), device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(channel_stats(std, cipher.channels), device=self.device).view(1, -1, 1, 1)
        self.hflip, self.train = hflip, train

    def __call__(self, images: torch.Tensor, targets: list[Target]) -> tuple[torch.Tensor, list[Target]]:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected a uint8 batch B×C×H×W, got {images.dtype} {tuple(images.shape)}")
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        moved = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]
        if self.hflip > 0:
            chosen = (torch.rand(x.shape[0]) < self.hflip).tolist()
            for i, flip in enumerate(chosen):
                if flip:
                    x[i] = x[i].flip(-1)
                    moved[i] = flip_target(moved[i])
        if self.train:
            for t in moved:
                keep = t["iscrowd"] == 0
                t["labels"], t["boxes"] = t["labels"][keep], t["boxes"][keep]
        return (x - self.mean) / self.std, moved


def flip_target(target: Target) -> Target:
    """The target of the left-right mirrored image."""
    out = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, 0] = 1.0 - boxes[:, 0]
    out["boxes"] = boxes
    px = target["boxes_px"].clone()
    px[:, 0] = target["size"][1].to(px.dtype) - px[:, 0] - px[:, 2]
    out["boxes_px"] = px
    return out
