"""The training loop: `train_one_epoch`, `evaluate`, and `train` that wires a run together.

Split the DETR way: the two loop functions take ready-made pieces (model, loss, batches,
transform, optimizer) and know nothing of arguments or files; `train(TrainConfig)` builds
the pieces from a release and runs the epochs; `evaluate_checkpoint` scores a saved model.
The command line (`train.cli`) and the benchmarks call these, nothing else.

A run folder holds `metrics.jsonl` (one JSON object per line: `config`, `train` every
`log_every` steps, `epoch` with validation top-1/top-5), `last.pt` (everything needed to go
on: model, optimizer, scheduler, epoch, step, every rank's RNG states) and `best.pt` (the
model with the best validation top-1). A resumed run takes the same batches, draws the
same augmentations and so logs the same losses, step for step, as one never interrupted.

DDP: start with `torchrun --nproc_per_node N` (gloo on CPU, NCCL on GPUs). `batch_size` is
per process. Rank 0 writes the run folder; every rank gets the same number of batches.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from timm.data import resolve_data_config
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from tqdm import tqdm

from shards.common import atomic_write_bytes
from shards.console import progress_bar
from train.errors import RunDiverged, TrainError
from train.checkpoint import (
    CheckpointError,
    capture_rng,
    check_release,
    load_checkpoint,
    release_record,
    restore_rng,
    save_checkpoint,
)
from train.data import Augmentation, BatchTransform, Release, ShardLoader, epoch_seed, open_release
from train.threads import setup_cpu_threads

__all__ = [
    "Run",
    "RunError",
    "TrainConfig",
    "autocast",
    "build_model",
    "check_run_folder",
    "evaluate",
    "evaluate_checkpoint",
    "main_decides",
    "model_normalisation",
    "seed_augmentation",
    "train",
    "train_one_epoch",
]

log = logging.getLogger("train")

LAST, BEST, METRICS, CONFIG = "last.pt", "best.pt", "metrics.jsonl", "config.json"


class RunError(TrainError):
    """A run folder or a resume request that cannot go ahead; one line naming the file."""


@dataclass
class TrainConfig:
    """Everything a run is made of. Saved in every checkpoint; a resume keeps it.

    `model`: "auto" (the tiny model that fits the release's cipher), a size ("tiny",
    "small", "base") of that model, or any timm model name; the cipher's geometry (tile,
    image size, channels, sub-patch) is always passed, `model_kwargs` go on top (e.g.
    depth=2). `val_split=None` trains without evaluation (and without best.pt).
    """

    shards: str
    out: str
    model: str = "auto"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    min_lr: float = 1e-6
    clip_grad: float = 1.0
    loss: str = "ce"
    anchors: str = "simplex"
    anchor_scale: float = 10.0
    label_smoothing: float = 0.0
    hflip: float = 0.5
    color_jitter: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    token_drop: float = 0.0
    amp: bool = False
    workers: int = 2
    shuffle_buffer: int = 1000
    seed: int = 0
    train_split: str = "train"
    val_split: str | None = "val"
    verify_digests: bool = False
    log_every: int = 50
    checkpoint_every: int = 0
    progress: bool = True

    # May differ when resuming: they change where and how loudly, not what is computed.
    # (workers changes which worker reads which shard, hence the batches: see docs.)
    RESUMABLE_CHANGES = ("shards", "out", "workers", "verify_digests", "log_every",
                         "checkpoint_every", "progress")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_epochs", "workers", "shuffle_buffer", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be at least 1, got {self.log_every}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0 or self.clip_grad < 0 or self.min_lr < 0:
            raise ValueError("weight_decay, clip_grad and min_lr must be >= 0")
        self.augmentation()  # validates the augmentation settings

    def augmentation(self) -> Augmentation:
        return Augmentation(hflip=self.hflip, color_jitter=self.color_jitter, mixup=self.mixup,
                            cutmix=self.cutmix, token_drop=self.token_drop)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# -- processes -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Runtime:
    """Where this process runs: rank, world size, device, and whether it writes the run."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.distributed:
            torch.distributed.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out


def start_runtime(device: str | None = None) -> Runtime:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, NCCL on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device or "cpu")
    if world_size > 1:
        dist = torch.distributed
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        return Runtime(dist.get_rank(), dist.get_world_size(), dev)
    return Runtime(0, 1, dev)


def seed_augmentation(seed: int, epoch: int, rank: int) -> None:
    """Seed the generators augmentations draw from, per epoch and rank (not keyed)."""
    s = epoch_seed(seed, epoch, rank, stream="augment")
    torch.manual_seed(s)
    np.random.seed(s)  # timm's mixup draws lambda from numpy
    random.seed(s)


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA; CPU runs in float32 (bf16 on CPU is slow and gains nothing)."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


# -- model, loss, optimiser ----------------------------------------------------------------

def build_model(spec: str, release: Release, head_width: int,
                overrides: dict[str, Any] | None = None) -> tuple[str, dict[str, Any], nn.Module]:
    """Create the timm model for a release: `(name, create_model kwargs, model)`.

    The release's cipher picks the family (plain ViT for `none`, PEViT for shuffled tokens,
    MI-ViT for `mix`) through `train.models.model_for_cipher`; `spec` may name a size or
    any timm model instead, and `overrides` replace any keyword (depth, embed_dim, ...).
    """
    from train.models import SIZES, model_for_cipher  # registers pevit_* and mivit_*

    size = spec if spec in SIZES else "tiny"
    name, kwargs = model_for_cipher(release.cipher.to_dict(), head_width, size=size)
    if spec not in ("auto", *SIZES):
        if not timm.is_model(spec):
            raise ValueError(f"model {spec!r} is not a timm model name (or auto, {', '.join(SIZES)})")
        name = spec
    kwargs.update(overrides or {})
    return name, kwargs, create_model(name, kwargs)


def create_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import train.models  # noqa: F401  (registers pevit_* and mivit_*)

    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"model {name} with {kwargs}: {reason}") from None


def _build_loss(config: TrainConfig, num_classes: int) -> tuple[nn.Module, int]:
    from train.losses import build_loss

    return build_loss(config.loss, num_classes, label_smoothing=config.label_smoothing,
                      anchors=config.anchors, scale=config.anchor_scale, seed=config.seed)


def model_normalisation(model: nn.Module) -> tuple[list[float], list[float]]:
    """The mean and std timm's data config gives `model` (the input normalisation it expects)."""
    cfg = resolve_data_config({}, model=model)
    return [float(v) for v in cfg["mean"]], [float(v) for v in cfg["std"]]


# -- the two loops ---------------------------------------------------------------------------

StepHook = Callable[[int, int, torch.Tensor, float], None]


def train_one_epoch(model: nn.Module, criterion: nn.Module, batches: Iterable, transform: BatchTransform,
                    optimizer: torch.optim.Optimizer, scheduler: Any, *, device: torch.device,
                    step: int, amp: bool = False, clip_grad: float = 0.0,
                    on_step: StepHook | None = None) -> dict[str, float]:
    """One pass over `batches`; returns this rank's `loss_sum`, `samples`, `batches`, last `step`.

    `step` counts optimiser updates before this epoch; the scheduler is told each new count.
    `on_step(step, batch_in_epoch, loss, lr)` runs after every update (logging, checkpoints).
    """
    model.train()
    criterion.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    samples = batches_done = 0
    for index, (images, labels) in enumerate(batches, start=1):
        inputs, targets = transform(images, labels)
        with autocast(device, amp):
            outputs = model(inputs)
        loss = criterion(outputs.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad > 0:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        step += 1
        scheduler.step_update(num_updates=step)
        loss_sum += loss.detach().double() * images.shape[0]
        samples += images.shape[0]
        batches_done += 1
        if on_step is not None:
            on_step(step, index, loss.detach(), lr)
    return {"loss_sum": float(loss_sum), "samples": samples, "batches": batches_done, "step": step}


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, batches: Iterable, transform: BatchTransform, *,
             device: torch.device, amp: bool = False, runtime: Runtime | None = None) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy over `batches`, summed over ranks when distributed.

    Top-5 is top-min(5, classes). Predictions are the loss's own (`criterion.logits`): the
    classifier's logits for cross-entropy, minus scaled anchor distances for anchor losses.
    """
    model.eval()
    criterion.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top-1 hits, top-5 hits
    samples = 0
    for images, labels in batches:
        inputs, targets = transform(images, labels)
        with autocast(device, amp):
            outputs = model(inputs)
        outputs = outputs.float()
        logits = criterion.logits(outputs)
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == targets[:, None]
        sums += torch.stack([criterion(outputs, targets).double() * images.shape[0],
                             hits[:, 0].sum().double(), hits.any(dim=1).sum().double()])
        samples += images.shape[0]
    loss_sum, top1, top5 = sums.tolist()  # one device sync, after the loop
    if runtime is not None:
        loss_sum, top1, top5, samples = runtime.sum([loss_sum, top1, top5, samples])
    n = max(samples, 1)
    return {"loss": loss_sum / n, "top1": top1 / n, "top5": top5 / n, "samples": int(samples)}


# -- the run folder --------------------------------------------------------------------------

class MetricsLog:
    """`metrics.jsonl`: appended a line at a time; on resume, cut back to the checkpoint's step."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True, allow_nan=True) + "\n")

    def cut_after(self, step: int) -> None:
        """Drop lines a killed run wrote after its last checkpoint (atomic rewrite)."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if record.get("step", 0) <= step:
                kept.append(line)
        atomic_write_bytes(self.path, "".join(line + "\n" for line in kept).encode("utf-8"))


def check_run_folder(out: Path, resume: bool) -> None:
    """Refuse (RunError) a file as run folder, a run folder already used, a resume without last.pt."""
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: exists and is not a folder")
    if resume:
        if not (out / LAST).is_file():
            raise RunError(f"{out / LAST}: not found, nothing to resume")
        return
    for name in (LAST, BEST, METRICS):
        if (out / name).exists():
            raise RunError(f"{out}: already holds a run ({name}); pass --resume to continue it "
                           "or choose a new --out")


def _check_resume(config: TrainConfig, state: dict[str, Any], release: Release, world_size: int,
                  path: Path) -> None:
    """A resumed run must compute what the interrupted one would have."""
    saved = TrainConfig.from_dict(state["config"])
    for f in dataclasses.fields(TrainConfig):
        if f.name in TrainConfig.RESUMABLE_CHANGES:
            continue
        if getattr(saved, f.name) != getattr(config, f.name):
            raise RunError(f"{path}: {f.name} was {getattr(saved, f.name)!r}, now "
                           f"{getattr(config, f.name)!r}; a resumed run keeps its settings")
    if state["release"]["manifest_digest"] != release.manifest.digest():
        raise RunError(f"{path}: trained on release {state['release']['dataset_id']} "
                       f"(manifest {state['release']['manifest_digest'][:12]}), not the one in {release.root}")
    if state["world_size"] != world_size:
        raise RunError(f"{path}: written by {state['world_size']} processes; resume with the same "
                       f"number (now {world_size}) so every step sees the same batches")


# -- a whole run -----------------------------------------------------------------------------

class Run:
    """The pieces of one training run, built from a config and a release, and their state.

    One method per job: `restore` a checkpoint, run an `epoch`, `save` last.pt / best.pt.
    `train()` drives it; a benchmark may too.
    """

    def __init__(self, config: TrainConfig, release: Release, runtime: Runtime) -> None:
        self.config, self.release, self.runtime = config, release, runtime
        self.out = Path(config.out)
        torch.manual_seed(config.seed)  # the same initial weights on every rank and every rerun
        self.criterion, head_width = _build_loss(config, release.num_classes)
        self.name, self.kwargs, self.model = build_model(config.model, release, head_width, config.model_kwargs)
        self.mean, self.std = model_normalisation(self.model)
        self.model.to(runtime.device)
        self.criterion.to(runtime.device)
        self.train_model = self.model
        if runtime.distributed:
            ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

        pin = runtime.device.type == "cuda"
        self.train_loader = ShardLoader(release, config.train_split, batch_size=config.batch_size, train=True,
                                        workers=config.workers, shuffle_buffer=config.shuffle_buffer,
                                        seed=config.seed, rank=runtime.rank, world_size=runtime.world_size,
                                        pin_memory=pin)
        self.val_loader = None
        if config.val_split:
            self.val_loader = ShardLoader(release, config.val_split, batch_size=config.batch_size,
                                          train=False, workers=config.workers, rank=runtime.rank,
                                          world_size=runtime.world_size, pin_memory=pin)
        self.steps_per_epoch = len(self.train_loader)
        self.augment = BatchTransform(release.cipher, release.num_classes, self.mean, self.std, runtime.device,
                                      augment=config.augmentation(), label_smoothing=config.label_smoothing)
        self.plain = BatchTransform(release.cipher, release.num_classes, self.mean, self.std, runtime.device)

        self.optimizer = create_optimizer_v2(self.model, opt="adamw", lr=config.lr,
                                             weight_decay=config.weight_decay)
        # Linear warm-up to lr, then a cosine to min_lr that ends with the last epoch.
        warmup = min(config.warmup_epochs, config.epochs - 1)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched="cosine", num_epochs=config.epochs - warmup, warmup_epochs=warmup,
            warmup_prefix=True, warmup_lr=min(1e-6, config.lr), min_lr=config.min_lr,
            step_on_epochs=False, updates_per_epoch=self.steps_per_epoch)

        self.metrics = MetricsLog(self.out / METRICS, runtime.main)
        self.epoch = self.batch_in_epoch = self.step = 0
        self.best: float | None = None
        self.last_val: dict[str, float] | None = None
        self.rng_states: list[dict] | None = None  # for a resume inside an epoch

    # -- state ---------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """What config.json and the first metrics line say about the run."""
        return {"config": self.config.to_dict(), "model": {"name": self.name, "kwargs": self.kwargs},
                "release": release_record(self.release.manifest), "world_size": self.runtime.world_size,
                "steps_per_epoch": self.steps_per_epoch, "normalize": {"mean": self.mean, "std": self.std}}

    def start(self) -> None:
        """A new run: create the folder and write config.json."""
        if self.runtime.main:
            self.out.mkdir(parents=True, exist_ok=True)
            settings = self.settings()
            atomic_write_bytes(self.out / CONFIG, (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode())
            self.metrics.write({"event": "config", "step": 0, **settings})

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from last.pt: weights, optimizer, scheduler, position, RNG states."""
        with _loading(self.out / LAST):
            self.model.load_state_dict(state["weights"])
            self.criterion.load_state_dict(state["criterion"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
            self.best, self.last_val, self.rng_states = state["best_top1"], state["val"], state["rng"]
        self.scheduler.step_update(num_updates=self.step)
        self.metrics.cut_after(self.step)
        if self.runtime.main:
            for stale in self.out.glob(".*.pt.*.tmp"):  # a checkpoint write cut short by a kill
                stale.unlink()
        log.info("resuming %s at epoch %d, step %d", self.out / LAST, self.epoch + 1, self.step)

    def snapshot(self, full: bool = True) -> dict[str, Any]:
        """The run's state; `full` adds optimizer, scheduler and every rank's RNG (a collective)."""
        snap = {"model": {"name": self.name, "kwargs": self.kwargs}, "weights": self.model.state_dict(),
                "criterion": self.criterion.state_dict(), "config": self.config.to_dict(),
                "release": release_record(self.release.manifest),
                "normalize": {"mean": self.mean, "std": self.std}, "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch, "step": self.step,
                "steps_per_epoch": self.steps_per_epoch, "world_size": self.runtime.world_size,
                "best_top1": self.best, "val": self.last_val}
        if full:
            snap.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                        rng=self.runtime.gather(capture_rng()))
        return snap

    def save(self, name: str) -> None:
        """Write last.pt (full; every rank must call it) or best.pt (model only; rank 0)."""
        snap = self.snapshot(full=name == LAST)
        if self.runtime.main:
            save_checkpoint(self.out / name, snap)

    # -- one epoch -----------------------------------------------------------------------

    def _on_step(self, bar: tqdm, tick: list) -> StepHook:
        config = self.config

        def on_step(step: int, index: int, loss: torch.Tensor, lr: float) -> None:
            self.step, self.batch_in_epoch = step, index
            bar.update(1)
            if step % config.log_every == 0:
                value = float(loss)
                if not math.isfinite(value):
                    raise RunDiverged(f"loss is {value} at step {step}: the run diverged; start "
                                             "a new run with a lower --lr or a tighter --clip-grad")
                now = time.perf_counter()
                rate = (step - tick[1]) * config.batch_size * self.runtime.world_size / max(now - tick[0], 1e-9)
                tick[:] = [now, step]
                self.metrics.write({"event": "train", "epoch": self.epoch + 1, "step": step, "loss": value,
                                    "lr": lr, "images_per_s": round(rate, 1)})
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
            if config.checkpoint_every and step % config.checkpoint_every == 0 and index < self.steps_per_epoch:
                self.save(LAST)

        return on_step

    def run_epoch(self) -> dict[str, Any]:
        """Train the current epoch (from `batch_in_epoch` on), evaluate, checkpoint; its record."""
        config, runtime = self.config, self.runtime
        skip = self.batch_in_epoch
        if skip:
            restore_rng(self.rng_states[runtime.rank])
        else:
            seed_augmentation(config.seed, self.epoch, runtime.rank)
        bar = progress_bar(enabled=config.progress and runtime.main, total=self.steps_per_epoch, initial=skip,
                           desc=f"epoch {self.epoch + 1}/{config.epochs}", unit="batch", leave=False)
        started = time.perf_counter()
        result = train_one_epoch(self.train_model, self.criterion, self.train_loader.epoch(self.epoch, skip=skip),
                                 self.augment, self.optimizer, self.scheduler, device=runtime.device,
                                 step=self.step, amp=config.amp, clip_grad=config.clip_grad,
                                 on_step=self._on_step(bar, [started, self.step]))
        bar.close()
        loss_sum, samples = runtime.sum([result["loss_sum"], result["samples"]])
        record: dict[str, Any] = {"event": "epoch", "epoch": self.epoch + 1, "step": result["step"],
                                  "train_loss": loss_sum / max(samples, 1), "train_samples": int(samples),
                                  "batches_per_rank": runtime.gather(result["batches"]),
                                  **({"resumed_at_batch": skip} if skip else {}),
                                  "seconds": round(time.perf_counter() - started, 3)}
        self.epoch, self.batch_in_epoch, self.step = self.epoch + 1, 0, result["step"]
        if self.val_loader is not None:
            self.last_val = evaluate(self.model, self.criterion, self.val_loader.epoch(0), self.plain,
                                     device=runtime.device, amp=config.amp, runtime=runtime)
            record.update({f"val_{k}": v for k, v in self.last_val.items()})
            if self.best is None or self.last_val["top1"] > self.best:  # all-reduced: ranks agree
                self.best = self.last_val["top1"]
                self.save(BEST)
        self.metrics.write(record)
        self.save(LAST)
        return record


def train(config: TrainConfig, *, resume: bool = False, device: str | None = None,
          threads: int | None = None) -> dict[str, Any]:
    """Train on a release as `config` says; with `resume`, continue `config.out/last.pt`.

    On CPU, `threads` torch threads per process, or by default as many as the cores left
    beside the processes and loader workers allow (`train.threads`; logged in one line).

    Returns a summary: epochs and steps done, the last and the best validation metrics and
    the run folder. Raises ManifestError / ShardError (the release), CheckpointError and
    RunError (the run folder), ValueError (settings) with one-line messages, and
    FloatingPointError when a logged loss is not finite.
    """
    runtime = start_runtime(device)
    out = Path(config.out)
    main_decides(runtime, lambda: check_run_folder(out, resume))
    splits = [config.train_split] + ([config.val_split] if config.val_split else [])
    if config.verify_digests:
        main_decides(runtime, lambda: open_release(config.shards, splits, verify_digests=True))
    release = open_release(config.shards, splits)
    if not release.cipher.encrypted:
        log.warning("%s: cipher none, plain images: a baseline, not an encrypted release", release.root)
    if config.amp and runtime.device.type != "cuda":
        log.warning("--amp: bf16 autocast is for CUDA; this %s run stays in float32", runtime.device.type)
    state = load_checkpoint(out / LAST) if resume else None
    if state is not None:
        _check_resume(config, state, release, runtime.world_size, out / LAST)

    run = Run(config, release, runtime)
    setup_cpu_threads(runtime.device, run.train_loader.workers, requested=threads, log=log)
    if state is not None:
        run.restore(state)
    else:
        run.start()
    started = time.perf_counter()
    while run.epoch < config.epochs:
        record = run.run_epoch()
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items() if k != "event"}
        log.info("epoch %d/%d %s", record["epoch"], config.epochs, json.dumps(shown))
    return {"out": str(out), "epochs": config.epochs, "step": run.step, "best_top1": run.best,
            "val": run.last_val, "seconds": round(time.perf_counter() - started, 3),
            "world_size": runtime.world_size}


@contextmanager
def _loading(path: str | os.PathLike) -> Iterator[None]:
    """Report a checkpoint whose contents do not fit this code as one line naming the file."""
    try:
        yield
    except (KeyError, TypeError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: does not hold a run this code can load ({reason})") from None


def main_decides(runtime: Runtime, check: Callable[[], Any]) -> None:
    """Run `check` on rank 0 only and raise its error on every rank.

    For checks that read or hash files once (run folder, --verify-digests) and must not
    race with rank 0 creating the run folder.
    """
    error = None
    if runtime.main:
        try:
            check()
        except ValueError as e:
            error = (type(e), str(e))
    if runtime.distributed:
        error = runtime.gather(error)[0]
    if error is not None:
        raise error[0](error[1])


# -- scoring a saved model -------------------------------------------------------------------

def evaluate_checkpoint(checkpoint: str | os.PathLike, shards: str | os.PathLike, split: str = "val", *,
                        batch_size: int | None = None, workers: int = 0, verify_digests: bool = False,
                        device: str | None = None, threads: int | None = None) -> dict[str, Any]:
    """Score `checkpoint` on a release's split: loss, top-1, top-5, samples.

    CPU threads as in `train` (`threads`, else `train.threads`' choice).

    Refuses (CheckpointError) a checkpoint trained on another cipher geometry or class count.
    """
    runtime = start_runtime(device)
    state = load_checkpoint(checkpoint)
    release = open_release(shards, (split,), verify_digests=verify_digests)
    with _loading(checkpoint):
        check_release(state, release.manifest, checkpoint)
        config = TrainConfig.from_dict(state["config"])
        model = create_model(state["model"]["name"], state["model"]["kwargs"])
        model.load_state_dict(state["weights"])
        criterion, _ = _build_loss(config, release.num_classes)
        criterion.load_state_dict(state["criterion"])
    model.to(runtime.device)
    criterion.to(runtime.device)
    transform = BatchTransform(release.cipher, release.num_classes, state["normalize"]["mean"],
                               state["normalize"]["std"], runtime.device)
    loader = ShardLoader(release, split, batch_size=batch_size or config.batch_size, train=False,
                         workers=workers, rank=runtime.rank, world_size=runtime.world_size,
                         pin_memory=runtime.device.type == "cuda")
    setup_cpu_threads(runtime.device, loader.workers, requested=threads, log=log)
    result = evaluate(model, criterion, loader.epoch(0), transform, device=runtime.device,
                      amp=config.amp, runtime=runtime)
    return {"checkpoint": str(checkpoint), "split": split, "epoch": state["epoch"],
            "step": state["step"], **result}
