"""Turn a source listing into shard tasks: opaque ids, keyed global order, fixed-size shards.

The order of samples inside and across shards is a keyed shuffle of opaque ids, so neither
shard order nor position reveals folders, file names or source order. Planning is pure and
deterministic: the same listing, key and settings give the same tasks.
"""
from __future__ import annotations

from dataclasses import dataclass

from encrypt.sources import SourceItem, SourceListing


@dataclass(frozen=True)
class JobSettings:
    """Everything about a job except the key. Safe to log and to pickle to workers."""

    mode: str
    patch: int
    sub_patch: int | None
    size: int
    resize: int
    views: int
    format: str
    quality: int
    channels: int
    shard_samples: int
    task: str = "classification"
    min_side: int = 0

    def fingerprint_fields(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PlannedSample:
    key: str          # opaque WebDataset key
    item: SourceItem
    view: int         # -1: deterministic centre crop / letterbox; k >= 0: keyed crop view k

    @property
    def split(self) -> str:
        return self.item.split


@dataclass(frozen=True)
class ShardTask:
    split: str
    index: int
    samples: tuple[PlannedSample, ...]

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}.tar"


def sample_key(dataset_key, rel_path: str, view: int, views: int) -> str:
    """Opaque id of one stored sample; views of one image get unrelated-looking ids."""
    if views <= 1:
        return dataset_key.sample_id(rel_path)
    return dataset_key.sample_id(f"{rel_path}\x00view{view}")


def plan_shards(listing: SourceListing, dataset_key, settings: JobSettings) -> list[ShardTask]:
    """Shard tasks for every split: keyed order, `settings.shard_samples` samples each."""
    by_split: dict[str, list[PlannedSample]] = {}
    for item in listing.items:
        keyed_views = settings.views > 1 and item.split == "train" and settings.task == "classification"
        for view in (range(settings.views) if keyed_views else (-1,)):
            key = sample_key(dataset_key, item.rel_path, view, settings.views if keyed_views else 1)
            by_split.setdefault(item.split, []).append(PlannedSample(key, item, view))
    tasks = []
    for split in sorted(by_split):
        samples = sorted(by_split[split], key=lambda s: dataset_key.order_key(split, s.key))
        n = settings.shard_samples
        for index, start in enumerate(range(0, len(samples), n)):
            tasks.append(ShardTask(split, index, tuple(samples[start:start + n])))
    return tasks
