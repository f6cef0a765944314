"""Turn a source listing into shard tasks: opaque ids, keyed global order, fixed-size shards.

The order of samples inside and across shards is a keyed shuffle of opaque ids, so neither
shard order nor position reveals folders, file names or source order. Planning is pure and
deterministic: the same listing, key and settings give the same tasks.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from encrypt.sources import InputError, SourceItem, SourceListing
from shards.common import shard_name
from shards.manifest import TASKS, CipherSpec, ManifestError, check_int, check_split_name

# The command-line option behind each settings field, so a refusal names what the owner typed.
OPTION_OF_FIELD = {
    "mode": "--mode", "patch": "--patch", "sub_patch": "--sub-patch", "image_size": "--size",
    "stored_size": "--size", "format": "--format", "quality": "--quality", "channels": "--grayscale",
    "resize": "--resize", "views": "--views", "shard_samples": "--shard-samples",
    "min_side": "--min-side", "split": "--split", "task": "task",
}


class SettingsError(InputError):
    """An option the job cannot run with; names the option (``--patch: must be ...``)."""

    @classmethod
    def from_manifest_error(cls, exc: ManifestError) -> SettingsError:
        field, _, reason = str(exc).partition(": ")
        option = OPTION_OF_FIELD.get(field.split("[")[0].split(".")[-1], field)
        return cls(option, reason or str(exc))


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

    def __post_init__(self) -> None:
        """Refuse bad settings when they are made, before any output exists.

        The geometry goes through the manifest's own validator (`CipherSpec.for_image`), so an
        option is accepted exactly when the signed manifest would accept it.
        """
        try:
            self.cipher_spec()
            check_int(self.quality, "quality", 1, 100)
            check_int(self.resize, "resize", self.size)
            check_int(self.views, "views", 1, 1000)
            check_int(self.shard_samples, "shard_samples", 1)
            check_int(self.min_side, "min_side", 0)
            if self.task not in TASKS:
                raise ManifestError(f"task: expected one of {', '.join(TASKS)}, got {self.task!r:.40}")
        except ManifestError as exc:
            raise SettingsError.from_manifest_error(exc) from None

    def cipher_spec(self) -> CipherSpec:
        """The manifest's cipher record for these settings (raises ManifestError when invalid).

        Built once per settings object (the job asks for it per image; building it was ~2% of
        an image's time) and kept out of the dataclass fields, so equality, pickling and the
        journal fingerprint see only the settings."""
        spec = self.__dict__.get("_cipher_spec")
        if spec is None:
            spec = CipherSpec.for_image(self.mode, self.patch, self.sub_patch, (self.size, self.size),
                                        self.format, self.quality if self.format == "jpeg" else None,
                                        self.channels)
            object.__setattr__(self, "_cipher_spec", spec)
        return spec

    def release_binding(self) -> dict:
        """What a release subkey is bound to (keys.derive.ReleaseKey): every setting that changes
        the stored pixels. The cipher spec is the manifest's own record, so decrypt can check it."""
        return {"cipher": self.cipher_spec().to_dict(), "task": self.task, "views": self.views,
                "resize": self.resize}

    def fingerprint_fields(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


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
        return shard_name(self.split, self.index)


def check_split(split: str | None) -> str | None:
    """A `--split` name the manifest will accept (None: splits come from the folders)."""
    if split is None:
        return None
    try:
        return check_split_name(split)
    except ManifestError as exc:
        raise SettingsError.from_manifest_error(exc) from None


def sample_key(keys, rel_path: str, view: int, views: int) -> str:
    """Opaque id of one stored sample; views of one image get unrelated-looking ids.

    `keys`: the release's keys.derive.ReleaseKey (a DatasetKey for derivation-1 releases).
    """
    if views <= 1:
        return keys.sample_id(rel_path)
    return keys.sample_id(f"{rel_path}\x00view{view}")


def plan_shards(listing: SourceListing, keys, settings: JobSettings) -> list[ShardTask]:
    """Shard tasks for every split: keyed order, `settings.shard_samples` samples each."""
    by_split: dict[str, list[PlannedSample]] = {}
    for item in listing.items:
        keyed_views = settings.views > 1 and item.split == "train" and settings.task == "classification"
        for view in (range(settings.views) if keyed_views else (-1,)):
            key = sample_key(keys, item.rel_path, view, settings.views if keyed_views else 1)
            by_split.setdefault(item.split, []).append(PlannedSample(key, item, view))
    tasks = []
    for split in sorted(by_split):
        samples = sorted(by_split[split], key=lambda s: keys.order_key(split, s.key))
        n = settings.shard_samples
        for index, start in enumerate(range(0, len(samples), n)):
            tasks.append(ShardTask(split, index, tuple(samples[start:start + n])))
    return tasks
