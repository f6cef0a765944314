"""Batches from a release of shards: the verified manifest in, B×C×H×W tensors out.

An ML engineer receives `OUT/manifest.json` and the shards, nothing else. `open_release`
checks the manifest's signature and that the split's shards are present at the size the
manifest lists (with `verify_digests`, every shard's sha256 and sample count too), and says
what the cipher implies for training: the token tile that augmentations must respect.

`ShardLoader` streams one split through `shards.reader.webdataset_pipeline` with DataLoader
workers. Each process (DDP rank) reads every world-size-th shard, each worker every
workers-th shard of those. Training epochs are cut to the same number of batches on every
rank (`with_epoch`), the stream repeating the rank's shards as needed, so no rank waits in
an all-reduce for a batch that never comes. Shuffling (shard order and a sample buffer) is
seeded from (seed, epoch, rank): an epoch's batches are a function of those numbers, which
is what lets a checkpoint resume at the very step it was written. Evaluation reads each
sample exactly once.

`BatchTransform` turns the uint8 batch into the model input on the device: uint8 → float
in [0, 1], the ciphertext-domain augmentations of `train.augment` with the cipher's tile,
then the model's mean/std normalisation.
"""
from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from shards import storage
from shards.errors import first_line
from shards.manifest import CipherSpec, Manifest, ManifestError
from shards.reader import ShardError, load_manifest, verify_shards, webdataset_pipeline

__all__ = [
    "Augmentation",
    "BatchTransform",
    "EveryNth",
    "Release",
    "ShardLoader",
    "channel_stats",
    "epoch_seed",
    "one_torch_thread",
    "open_release",
    "stack_images",
    "token_tile",
    "worker_error_line",
]

Batch = tuple[torch.Tensor, torch.Tensor]


def token_tile(cipher: CipherSpec) -> int:
    """Side in pixels of one token in the stored image (the manifest decides: p, or s once mixed)."""
    return cipher.tile


@dataclass(frozen=True)
class Release:
    """A release opened for training: its folder and its verified manifest."""

    root: Path | str  # a local folder, or a store URL
    manifest: Manifest

    @property
    def cipher(self) -> CipherSpec:
        return self.manifest.cipher

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    @property
    def tile(self) -> int:
        return token_tile(self.manifest.cipher)

    def samples(self, split: str) -> int:
        return self.manifest.samples(split)


def open_release(root: str | os.PathLike, splits: Sequence[str] = ("train",), *,
                 public_key: bytes | None = None, verify_digests: bool = False,
                 task: str = "classification") -> Release:
    """Load and verify `root/manifest.json` and check the shards of `splits`.

    Always: the signature (against `public_key`, else the key the manifest names), that the
    release is for `task`, that every shard of `splits` exists at its listed size.
    With `verify_digests`: `shards.reader.verify_shards` on the whole release (sha256, sample
    counts, no stray files). Raises ManifestError or ShardError with one line naming the file.
    """
    root = storage.location(root)  # a folder or a store URL (s3://...), read through fsspec
    manifest = load_manifest(root, public_key)
    if manifest.task != task:
        raise ManifestError(f"{storage.join(root, 'manifest.json')}: a {manifest.task} release; "
                            f"{task} needs a {task} release")
    for split in splits:
        try:
            entries = manifest.entries(split)
        except ManifestError as e:
            raise ManifestError(f"{storage.join(root, 'manifest.json')}: {e}") from None
        for entry in entries:
            path = storage.join(root, entry.name)
            try:
                size = storage.size(path)
            except FileNotFoundError:
                raise ShardError(f"{path}: missing (listed in the manifest)") from None
            except OSError as e:
                raise ShardError(f"{path}: cannot be read ({e.strerror})") from None
            if size != entry.bytes:
                raise ShardError(f"{path}: {size} bytes, the manifest says {entry.bytes}")
    if verify_digests:
        problems = verify_shards(root, manifest, check_digests=True)
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise ShardError(f"{root}/{problems[0]}{more}")
    return Release(root, manifest)


def epoch_seed(seed: int, epoch: int, rank: int, stream: str = "data") -> int:
    """A 31-bit seed for one epoch on one rank and one use (`data` order, `augment` draws).

    Not keyed and not secret: it orders public shards and draws augmentations.
    """
    digest = hashlib.sha256(f"patchveil/train/{stream}/{seed}/{epoch}/{rank}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class EveryNth:
    """Node splitter: this rank's shards are every world-size-th one (picklable for workers)."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def __call__(self, src: Iterator) -> Iterator:
        return islice(src, self.rank, None, self.world_size)


def stack_images(images: Sequence[np.ndarray]) -> torch.Tensor:
    """H×W×C uint8 arrays → one uint8 B×C×H×W tensor, with a single copy per image.

    Inside a DataLoader worker the batch is allocated in shared memory, as torch's default
    collate does, so handing it to the main process does not copy it again. The images are
    copied by one numpy call into an H×W×C view of the batch (no per-image torch calls).
    """
    height, width, channels = images[0].shape
    out = torch.empty((len(images), channels, height, width), dtype=torch.uint8)
    if torch.utils.data.get_worker_info() is not None:
        out.share_memory_()
    # casting as torch's copy_ would (the images are uint8 anyway); a size mismatch raises
    np.stack(images, out=out.numpy().transpose(0, 2, 3, 1), casting="unsafe")
    return out


class _WorkerShare(torch.utils.data.IterableDataset):
    """This worker's share of an epoch's batches, and no more.

    A training stream repeats its shards (webdataset's `with_epoch`), so each worker could
    go on forever; the DataLoader takes batches from its workers in turn, so worker w of W
    supplies batches w, w + W, …: decoding more than that is thrown away at the end of
    every epoch (up to `prefetch_factor` batches per worker, a large share of a short epoch).
    """

    def __init__(self, batches: Iterable, total: int) -> None:
        self.batches, self.total = batches, total

    def __iter__(self) -> Iterator:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return islice(iter(self.batches), len(range(worker, self.total, workers)))


def _class_label(sample: tuple[np.ndarray, int | None, dict | None]) -> tuple[np.ndarray, int]:
    image, label, _ = sample
    if label is None:
        raise ShardError("a sample has no cls member: classification needs a class label per sample")
    return image, label


def _collate(samples: list[tuple[np.ndarray, int]]) -> Batch:
    images, labels = zip(*samples)
    return stack_images(images), torch.tensor(labels, dtype=torch.int64)


def worker_error_line(exc: BaseException) -> str:
    """One line for an error, also when it crossed from a DataLoader worker."""
    return first_line(exc)


def one_torch_thread(worker_id: int) -> None:
    """DataLoader worker_init_fn: one torch thread per loader worker.

    A worker decodes images; the cores are counted for the training processes' own threads
    (`train.threads`). Torch's worker loop sets this too; said here so it does not depend on it.
    """
    torch.set_num_threads(1)


class ShardLoader:
    """(images uint8 B×C×H×W, labels int64 B) batches of one split, one epoch at a time.

    `train=True`: shuffled, full batches only, exactly `len(loader)` batches per epoch on
    every rank (samples // (batch_size · world_size)). `train=False`: every sample of this
    rank's shards once, in shard order, the last batch possibly short. `rank`/`world_size`
    default to torch.distributed's when it is initialised. `workers` is capped at the number
    of shards a rank reads, since webdataset hands out whole shards.
    """

    def __init__(self, release: Release, split: str, *, batch_size: int, train: bool,
                 workers: int = 0, shuffle_buffer: int = 1000, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None,
                 pin_memory: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if rank is None or world_size is None:
            dist = torch.distributed
            ready = dist.is_available() and dist.is_initialized()
            rank = dist.get_rank() if ready else 0
            world_size = dist.get_world_size() if ready else 1
        self.release, self.split = release, split
        self.batch_size, self.train = batch_size, train
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.rank, self.world_size = rank, world_size
        self.pin_memory = pin_memory
        # Register PIL's common image plugins here, once: the workers are forked afresh every
        # epoch, and each would otherwise import them again before its first decode.
        Image.preinit()
        entries = release.manifest.entries(split)
        mine = entries[rank::world_size]
        self.workers = min(workers, len(mine))
        self._worker_samples = [sum(e.samples for e in mine[w::max(self.workers, 1)])
                                for w in range(max(self.workers, 1))]
        if train:
            total = release.samples(split)
            if len(entries) < world_size:
                raise ValueError(f"split {split} has {len(entries)} shards, fewer than the "
                                 f"{world_size} processes: each process needs at least one")
            self._batches = total // (batch_size * world_size)
            if self._batches < 1:
                raise ValueError(f"split {split} has {total} samples, fewer than one batch of "
                                 f"{batch_size} per process ({world_size} processes)")
        else:
            self._batches = sum(math.ceil(n / batch_size) for n in self._worker_samples)

    def __len__(self) -> int:
        """Batches this rank gets per epoch."""
        return self._batches

    def convert(self, sample: tuple[np.ndarray, int | None, dict | None]) -> Any:
        """One decoded `(image, label, meta)` → what `collate` batches (a subclass may change both).

        Runs in the DataLoader workers, so it must be picklable with the loader.
        """
        return _class_label(sample)

    def collate(self, samples: list[Any]) -> Any:
        """A list of `convert` results → one batch (in the workers)."""
        return _collate(samples)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """The batches of `epoch`, after skipping (reading past) the first `skip`.

        The same batches every time for the same seed, rank, world size and worker count
        (workers take whole shards, so their number changes the interleaving).
        """
        if self._batches == 0:
            return iter(())
        import webdataset as wds

        seed = epoch_seed(self.seed, epoch, self.rank)
        dataset = webdataset_pipeline(
            self.release.root, self.split, manifest=self.release.manifest,
            shuffle=self.shuffle_buffer if self.train else 0,
            epoch_length=self._batches * self.batch_size if self.train else None,
            nodesplitter=EveryNth(self.rank, self.world_size), workersplitter="default",
            seed=seed,
        )
        dataset = dataset.map(self.convert).batched(self.batch_size, collation_fn=self.collate,
                                                   partial=not self.train)
        if self.train:
            dataset = _WorkerShare(dataset, self._batches)
        loader = wds.WebLoader(dataset, batch_size=None, num_workers=self.workers,
                               generator=torch.Generator().manual_seed(seed), worker_init_fn=one_torch_thread,
                               persistent_workers=False, pin_memory=self.pin_memory)
        if self.train:
            loader = loader.with_epoch(self._batches)
        return islice(iter(loader), skip, None)


@dataclass(frozen=True)
class Augmentation:
    """Ciphertext-domain augmentation of a training batch (all off: `Augmentation.none()`).

    `hflip`: probability of a flip that commutes with the cipher (per-tile for shuffled
    shards, whole image for `mix` and `none`). `color_jitter`: brightness/contrast/saturation
    spread. `mixup`/`cutmix`: Beta alphas of timm's batch mixer, cutmix on whole tokens
    (0 and 0: off). `token_drop`: fraction of tokens zeroed (after normalisation, so a
    dropped token is the mean colour).
    """

    hflip: float = 0.5
    color_jitter: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    token_drop: float = 0.0

    @classmethod
    def none(cls) -> Augmentation:
        return cls(hflip=0.0)

    def __post_init__(self) -> None:
        for name in ("hflip", "token_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("color_jitter", "mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def channel_stats(values: Sequence[float], channels: int) -> list[float]:
    """The model's per-channel statistic for the stored channel count (grey: the mean of RGB)."""
    values = [float(v) for v in values]
    if len(values) == channels:
        return values
    if channels == 1:
        return [sum(values) / len(values)]
    if len(values) == 1:
        return values * channels
    raise ValueError(f"{len(values)} normalisation values for {channels} channels")


class BatchTransform:
    """uint8 B×C×H×W on any device → normalised float model input on `device` (+ targets).

    Training batches get the augmentations; `augment=None` (evaluation) only converts.
    Returns `(inputs, targets)`: targets are the labels, or soft (B, num_classes) targets
    when mixup/cutmix is on. Random draws come from torch's (and, in timm's mixer, numpy's)
    global generators, which the engine seeds per epoch and checkpoints.
    """

    def __init__(self, cipher: CipherSpec, num_classes: int, mean: Sequence[float],
                 std: Sequence[float], device: torch.device | str = "cpu",
                 augment: Augmentation | None = None, label_smoothing: float = 0.0) -> None:
        from train import augment as aug

        self.cipher, self.tile, self.num_classes = cipher, token_tile(cipher), num_classes
        self.device = torch.device(device)
        self.mean = torch.tensor(channel_stats(mean, cipher.channels), device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(channel_stats(std, cipher.channels), device=self.device).view(1, -1, 1, 1)
        self.augment = augment
        self._aug = aug
        self.per_tile_flip = cipher.facts.shuffles  # tiles moved: flip each in place
        self.jitter = None
        self.mixer = None
        if augment is not None and augment.color_jitter > 0:
            s = augment.color_jitter
            self.jitter = aug.ColorJitter(brightness=s, contrast=s, saturation=s)
        if augment is not None and (augment.mixup > 0 or augment.cutmix > 0):
            self.mixer = aug.TokenMix(self.tile, num_classes, mixup_alpha=augment.mixup,
                                      cutmix_alpha=augment.cutmix, label_smoothing=label_smoothing)

    def _flip(self, x: torch.Tensor) -> torch.Tensor:
        chosen = torch.rand(x.shape[0]) < self.augment.hflip
        if not chosen.any():
            return x
        chosen = chosen.to(x.device).view(-1, 1, 1, 1)
        flipped = self._aug.per_patch_hflip(x, self.tile) if self.per_tile_flip else x.flip(-1)
        return torch.where(chosen, flipped, x)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected a uint8 batch B×C×H×W, got {images.dtype} {tuple(images.shape)}")
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        targets = labels.to(self.device, non_blocking=True)
        a = self.augment
        if a is not None and a.hflip > 0:
            x = self._flip(x)
        if self.jitter is not None:
            x = self.jitter(x)
        x = (x - self.mean) / self.std
        if self.mixer is not None:
            if x.shape[0] % 2:
                raise ValueError(f"mixup/cutmix pairs images: the batch size must be even, got {x.shape[0]}")
            x, targets = self.mixer(x, targets)
        if a is not None and a.token_drop > 0:
            x, _ = self._aug.token_drop(x, self.tile, a.token_drop)
        return x, targets
