"""The one training engine: `train_one_epoch`, `Run`, and `train` / `evaluate_checkpoint`.

Split the DETR way: `train_one_epoch` takes ready-made pieces (model, loss, batches,
transform, optimizer, scheduler) and knows nothing of arguments or files; a task plug-in
(`train.tasks`: classification, detection) builds the pieces and evaluates; `Run` owns
everything else for every task: the run folder, resume, checkpoints, metrics, the LR
schedule, the CPU thread policy, DDP and the progress bar.

A run folder holds `config.json`, `metrics.jsonl` (one JSON object per line: `config`,
`train` every `log_every` steps, `epoch` with the task's validation metrics), `last.pt`
(everything needed to go on: model, criterion, optimizer, scheduler, epoch, step, every
rank's RNG states) and `best.pt` (the model with the best validation score: top-1 or mAP).
A resumed run takes the same batches, draws the same augmentations and so logs the same
losses, step for step, as one never interrupted.

DDP: start with `torchrun --nproc_per_node N`. `batch_size` is per process. Rank 0 writes
the run folder; every rank gets the same number of batches.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from shards.common import atomic_write_bytes
from shards.console import progress_bar
from train.checkpoint import (
    CheckpointError,
    capture_rng,
    check_release,
    load_checkpoint,
    release_record,
    restore_rng,
    save_checkpoint,
)
from train.config import DetectionConfig, RunConfig, TrainConfig
from train.errors import RunDiverged, TrainError
from train.runtime import Runtime, autocast, main_decides, runtime_session, seed_augmentation
from train.tasks import Task, create_model, model_normalisation, task_for, task_named
from train.tasks.classification import build_model, evaluate
from train.threads import setup_cpu_threads

__all__ = [
    "DetectionConfig",
    "Run",
    "RunError",
    "TrainConfig",
    "autocast",
    "build_model",
    "check_run_folder",
    "create_model",
    "evaluate",
    "evaluate_checkpoint",
    "evaluate_detection_checkpoint",
    "fit_detection",
    "lr_schedule",
    "main_decides",
    "model_normalisation",
    "seed_augmentation",
    "train",
    "train_one_epoch",
]

log = logging.getLogger("train")

LAST, BEST, METRICS, CONFIG = "last.pt", "best.pt", "metrics.jsonl", "config.json"
CSV, TB = "metrics.csv", "tb"
SCALAR_EVENTS = ("train", "epoch")


class RunError(TrainError):
    """A run folder or a resume request that cannot go ahead; one line naming the file."""


# -- the loop ----------------------------------------------------------------------------------

StepHook = Callable[[int, int, torch.Tensor, float], None]


def as_float(outputs: Any) -> Any:
    """Model outputs in float32 (losses and the matcher never run in bf16)."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    if isinstance(outputs, dict):
        return {k: as_float(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(as_float(v) for v in outputs)
    return outputs


def train_one_epoch(model: nn.Module, criterion: nn.Module, batches: Iterable, transform: Callable,
                    optimizer: torch.optim.Optimizer, scheduler: Any, *, device: torch.device,
                    step: int, amp: bool = False, clip_grad: float = 0.0,
                    on_step: StepHook | None = None) -> dict[str, Any]:
    """One pass over `batches`: this rank's summed loss `terms` (×images), `loss_sum`, `samples`,
    `batches` and the last `step`.

    `criterion` returns the loss, or a dict of terms with the total under "loss" (DETR's).
    `step` counts optimiser updates before this epoch; the scheduler is told each new count.
    `on_step(step, batch_in_epoch, loss, lr)` runs after every update with the lr it used.
    """
    model.train()
    criterion.train()
    sums: dict[str, torch.Tensor] = {}
    samples = batches_done = 0
    for index, (images, targets) in enumerate(batches, start=1):
        inputs, targets = transform(images, targets)
        with autocast(device, amp):
            outputs = model(inputs)
        terms = criterion(as_float(outputs), targets)
        terms = terms if isinstance(terms, dict) else {"loss": terms}
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if clip_grad > 0:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        step += 1
        scheduler.step_update(num_updates=step)
        for k, v in terms.items():  # summed on the device: no sync per step
            sums[k] = sums.get(k, 0) + v.detach().double() * images.shape[0]
        samples += images.shape[0]
        batches_done += 1
        if on_step is not None:
            on_step(step, index, terms["loss"].detach(), lr)
    totals = {k: float(v) for k, v in sums.items()}
    return {"terms": totals, "loss_sum": totals.get("loss", 0.0), "samples": samples,
            "batches": batches_done, "step": step}


def lr_schedule(optimizer: torch.optim.Optimizer, config: RunConfig, steps_per_epoch: int,
                warmup: int | None = None) -> Any:
    """The one LR rule: linear warm-up to lr, then a cosine to min_lr ending with the last epoch,
    updated every step (timm's factory; the warm-up is a prefix, not part of the cosine).

    `warmup`: the warm-up epochs a run started with (an extended run keeps them; default
    min(warmup_epochs, epochs - 1))."""
    warmup = min(config.warmup_epochs, config.epochs - 1) if warmup is None else warmup
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=config.epochs - warmup, warmup_epochs=warmup,
        warmup_prefix=True, warmup_lr=min(1e-6, config.lr), min_lr=config.min_lr,
        step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    return scheduler


# -- the run folder ------------------------------------------------------------------------------

class MetricsLog:
    """`metrics.jsonl`: appended a line at a time; on resume, cut back to the checkpoint's step.

    The same numbers go to `metrics.csv` (one row per `train` / `epoch` line, a column per
    scalar, rewritten from the JSONL so a resume's cut shows there too) and to TensorBoard
    event files under `tb/` (tags `train/<key>`, `epoch/<key>` at the line's step; a resume
    opens its writer with `purge_step` so TensorBoard drops what a killed run logged after
    its checkpoint). Rank 0 only.
    """

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        self.csv, self.tb_dir = path.with_name(CSV), path.with_name(TB)
        self.purge_step: int | None = None
        self._writer: Any = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True, allow_nan=True) + "\n")
        if record.get("event") in SCALAR_EVENTS:
            self._tensorboard(record)
            self.write_csv()

    def _tensorboard(self, record: dict[str, Any]) -> None:
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is in the train extra; a bare torch has none
                log.warning("tensorboard is not installed: no %s/ event files (pip install tensorboard)", TB)
                self._writer = False
                return
            self._writer = SummaryWriter(str(self.tb_dir), purge_step=self.purge_step)
        if self._writer is False:
            return
        for key, value in scalars(record).items():
            self._writer.add_scalar(f"{record['event']}/{key}", value, global_step=record["step"])
        if record["event"] == "epoch":
            self._writer.flush()

    def write_csv(self) -> None:
        """metrics.csv from metrics.jsonl: event, epoch, step, then every scalar key (sorted)."""
        import csv
        import io

        rows = [r for r in read_jsonl(self.path) if r.get("event") in SCALAR_EVENTS]
        keys = sorted({k for r in rows for k in scalars(r)})
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["event", "epoch", "step", *keys])
        for r in rows:
            values = scalars(r)
            writer.writerow([r["event"], r.get("epoch", ""), r["step"],
                             *(repr(values[k]) if k in values else "" for k in keys)])
        atomic_write_bytes(self.csv, buffer.getvalue().encode("utf-8"))

    def close(self) -> None:
        if self._writer:
            self._writer.close()
        self._writer = None

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
        self.write_csv()
        self.purge_step = step + 1


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (a line cut short by a kill is left out)."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics line's numbers, as CSV columns and TensorBoard tags (not its event, epoch, step)."""
    return {k: float(v) for k, v in record.items() if k not in ("event", "epoch", "step")
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


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


def check_resume(task: Task, config: RunConfig, state: dict[str, Any], release: Any, world_size: int,
                 path: Path) -> None:
    """A resumed run must compute what the interrupted one would have."""
    kind = state.get("task", "classification")
    if kind != task.name:
        raise RunError(f"{path}: a {kind} checkpoint, not a {task.name} run")
    saved = type(config).from_dict(state["config"])
    begun = state["epoch"] + (1 if state["batch_in_epoch"] else 0)
    if config.epochs < begun:
        raise RunError(f"{path}: epochs {config.epochs} is fewer than the {begun} this run has begun; "
                       "a resumed run can be extended, not cut short")
    for f in dataclasses.fields(config):
        if f.name == "epochs":
            continue
        if f.name not in config.resumable() and getattr(saved, f.name) != getattr(config, f.name):
            raise RunError(f"{path}: {f.name} was {getattr(saved, f.name)!r}, now "
                           f"{getattr(config, f.name)!r}; a resumed run keeps its settings")
    if state["release"]["manifest_digest"] != release.manifest.digest():
        raise RunError(f"{path}: trained on release {state['release']['dataset_id']} "
                       f"(manifest {state['release']['manifest_digest'][:12]}), not the one in {release.root}")
    if state["world_size"] != world_size:
        raise RunError(f"{path}: written by {state['world_size']} processes; resume with the same "
                       f"number (now {world_size}) so every step sees the same batches")


@contextmanager
def _loading(path: str | os.PathLike) -> Iterator[None]:
    """Report a checkpoint whose contents do not fit this code as one line naming the file."""
    try:
        yield
    except (KeyError, TypeError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: does not hold a run this code can load ({reason})") from None


# -- a whole run ---------------------------------------------------------------------------------

class Run:
    """The pieces of one training run, built by a task from a config and a release, and their state.

    One method per job: `start` or `restore`, `run_epoch`, `save` last.pt / best.pt, `fit`.
    """

    def __init__(self, task: Task, config: RunConfig, release: Any, runtime: Runtime, *,
                 resume: bool = False) -> None:
        self.task, self.config, self.release, self.runtime = task, config, release, runtime
        self.out = Path(config.out)
        torch.manual_seed(config.seed)  # the same initial weights on every rank and every rerun
        self.name, self.kwargs, self.model, self.criterion = task.build(config, release)
        self.init_report: Any = None
        if config.init_from:
            self._init_from(load=not resume)
        self.mean, self.std = model_normalisation(self.model)
        self.model.to(runtime.device)
        self.criterion.to(runtime.device)
        self.train_model = self.model
        if runtime.distributed:
            ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.train_loader = self._loader(config.train_split, train=True)
        self.val_loader = self._loader(config.val_split, train=False) if config.val_split else None
        self.steps_per_epoch = len(self.train_loader)
        self.augment, self.plain = task.transforms(config, release, self.mean, self.std, runtime.device)
        self.optimizer = create_optimizer_v2(self.model, opt="adamw", lr=config.lr,
                                             weight_decay=config.weight_decay)
        self.warmup = min(config.warmup_epochs, config.epochs - 1)  # kept when a resume extends the run
        self.scheduler = lr_schedule(self.optimizer, config, self.steps_per_epoch, self.warmup)
        self.metrics = MetricsLog(self.out / METRICS, runtime.main)
        self.epoch = self.batch_in_epoch = self.step = 0
        self.best: float | None = None
        self.last_val: dict[str, Any] | None = None
        self.rng_states: list[dict] | None = None  # for a resume inside an epoch

    def _init_from(self, load: bool) -> None:
        """Start from `config.init_from` (train.initialise). An MI or D4 embedding is built as
        wide inside as the weights need: 2·D for a plain linear embedding (it then passes the
        GELU exactly), the source's own width for another run's MI or D4 embedding (a fine-tune
        keeps what that run learned, e.g. the public pretraining of docs §8). On resume only the
        architecture is rebuilt, as wide as last.pt's: the weights come from it."""
        from train.initialise import hidden_kwarg, init_from, load_weights

        target = getattr(self.model, "backbone", self.model)
        key = hidden_kwarg(target)
        weights = None
        if key and key not in self.config.model_kwargs:
            # on resume the width comes from last.pt (built the same way): the source need not be there
            weights = load_weights(self.config.init_from if load else self.out / LAST)
            prefix = "backbone." if target is not self.model and any(k.startswith("backbone.") for k in weights) \
                else ""
            source = weights.get(prefix + "patch_embed.proj.weight")
            own_kind = prefix + "patch_embed.proj_out.weight" in weights and source is not None
            hidden = source.shape[0] if own_kind else 2 * target.embed_dim
            if target.patch_embed.proj.out_channels != hidden:
                self.kwargs = {**self.kwargs, key: hidden}
                torch.manual_seed(self.config.seed)
                self.model = create_model(self.name, self.kwargs)
        if load:
            self.init_report = init_from(self.model, self.config.init_from, self.release.cipher, weights=weights)

    def _loader(self, split: str, train: bool) -> Any:
        config, runtime = self.config, self.runtime
        extra = {"shuffle_buffer": config.shuffle_buffer, "seed": config.seed} if train else {}
        return self.task.loader(self.release, split, batch_size=config.batch_size, train=train,
                                workers=config.workers, rank=runtime.rank, world_size=runtime.world_size,
                                pin_memory=runtime.device.type == "cuda", **extra)

    # -- state ---------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """What config.json and the first metrics line say about the run."""
        return {"task": self.task.name, "config": self.config.to_dict(),
                "model": {"name": self.name, "kwargs": self.kwargs},
                "release": release_record(self.release.manifest), "world_size": self.runtime.world_size,
                "steps_per_epoch": self.steps_per_epoch, "normalize": {"mean": self.mean, "std": self.std},
                **self.task.settings(self.release)}

    def start(self) -> None:
        """A new run: create the folder and write config.json."""
        if self.runtime.main:
            self.out.mkdir(parents=True, exist_ok=True)
            settings = self.settings()
            atomic_write_bytes(self.out / CONFIG, (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode())
            self.metrics.write({"event": "config", "step": 0, **settings})
            if self.init_report is not None:
                log.info("%s", self.init_report.summary())
                self.metrics.write({"event": "init", "step": 0, **self.init_report.to_dict()})

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from last.pt: weights, criterion, optimizer, scheduler, position, RNG states."""
        with _loading(self.out / LAST):
            self.model.load_state_dict(state["weights"])
            if "criterion" in state:  # detection checkpoints before the one engine had none
                self.criterion.load_state_dict(state["criterion"])
            self.optimizer.load_state_dict(state["optimizer"])
            was = state["config"]["epochs"]
            self.warmup = state.get("warmup", min(state["config"]["warmup_epochs"], was - 1))
            self.scheduler = lr_schedule(self.optimizer, self.config, self.steps_per_epoch, self.warmup)
            if was == self.config.epochs:
                self.scheduler.load_state_dict(state["scheduler"])
            self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
            self.best, self.last_val, self.rng_states = state[self.task.best_key], state["val"], state["rng"]
        self.scheduler.step_update(num_updates=self.step)
        self.metrics.cut_after(self.step)
        if self.runtime.main:
            for stale in self.out.glob(".*.pt.*.tmp"):  # a checkpoint write cut short by a kill
                stale.unlink()
        if was != self.config.epochs:
            log.info("extending %s from %d to %d epochs: the cosine now ends with epoch %d", self.out, was,
                     self.config.epochs, self.config.epochs)
            self.metrics.write({"event": "extend", "step": self.step, "epochs_was": was,
                                "epochs": self.config.epochs})
            if self.runtime.main:
                settings = self.settings()
                atomic_write_bytes(self.out / CONFIG,
                                   (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode())
        log.info("resuming %s at epoch %d, step %d", self.out / LAST, self.epoch + 1, self.step)

    def snapshot(self, full: bool = True) -> dict[str, Any]:
        """The run's state; `full` adds optimizer, scheduler and every rank's RNG (a collective)."""
        snap = {"task": self.task.name, "model": {"name": self.name, "kwargs": self.kwargs},
                "weights": self.model.state_dict(), "criterion": self.criterion.state_dict(),
                "config": self.config.to_dict(), "release": release_record(self.release.manifest),
                "normalize": {"mean": self.mean, "std": self.std}, "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch, "step": self.step,
                "steps_per_epoch": self.steps_per_epoch, "world_size": self.runtime.world_size,
                self.task.best_key: self.best, "val": self.last_val, "warmup": self.warmup}
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

    def _on_step(self, bar: Any, tick: list) -> StepHook:
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

    def train_epoch(self) -> dict[str, Any]:
        """Train the current epoch from `batch_in_epoch` on; its `epoch` record, training part."""
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
        keys = sorted(k for k in result["terms"] if not k[-1].isdigit())  # not the aux layers' terms
        samples, *sums = runtime.sum([result["samples"]] + [result["terms"][k] for k in keys])
        record = {"event": "epoch", "epoch": self.epoch + 1, "step": result["step"],
                  **{f"train_{k}": v / max(samples, 1) for k, v in zip(keys, sums)},
                  "train_samples": int(samples), "batches_per_rank": runtime.gather(result["batches"]),
                  **({"resumed_at_batch": skip} if skip else {}), "lr": self.optimizer.param_groups[0]["lr"],
                  "seconds": round(time.perf_counter() - started, 3)}
        self.epoch, self.batch_in_epoch, self.step = self.epoch + 1, 0, result["step"]
        return record

    def validate(self) -> dict[str, Any]:
        """Evaluate when due (every `eval_every` epochs and after the last); best.pt on a new best."""
        config = self.config
        due = self.epoch % config.eval_every == 0 or self.epoch == config.epochs
        if self.val_loader is None or not due:
            return {}
        self.last_val = self.task.evaluate(self.model, self.criterion, self.val_loader.epoch(0), self.plain,
                                           self.release, device=self.runtime.device, amp=config.amp,
                                           runtime=self.runtime)
        score = self.task.score(self.last_val)  # all-reduced: ranks agree
        if self.best is None or score > self.best:
            self.best = score
            self.save(BEST)
        return {f"val_{k}": v for k, v in self.last_val.items()}

    def run_epoch(self) -> dict[str, Any]:
        """Train the current epoch, evaluate, checkpoint; its `epoch` record."""
        record = self.train_epoch()
        record.update(self.validate())
        self.metrics.write(record)
        self.save(LAST)
        return record

    def fit(self) -> dict[str, Any]:
        """The remaining epochs; a summary: steps, last and best validation, the run folder."""
        started = time.perf_counter()
        while self.epoch < self.config.epochs:
            record = self.run_epoch()
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items() if k != "event"}
            log.info("epoch %d/%d %s", record["epoch"], self.config.epochs, json.dumps(shown))
        self.metrics.close()
        return {"out": str(self.out), "epochs": self.config.epochs, "step": self.step,
                self.task.best_key: self.best, "val": self.last_val,
                "seconds": round(time.perf_counter() - started, 3), "world_size": self.runtime.world_size}


def _open_release(task: Task, config: RunConfig, runtime: Runtime) -> Any:
    """The release's splits in use, hashed first with --verify-digests (rank 0 only)."""
    splits = [config.train_split] + ([config.val_split] if config.val_split else [])
    if config.verify_digests:
        main_decides(runtime, lambda: task.open_release(config.shards, splits, verify_digests=True))
    release = task.open_release(config.shards, splits)
    if not release.cipher.encrypted:
        log.warning("%s: cipher none, plain images: a baseline, not an encrypted release", release.root)
    if config.amp and runtime.device.type != "cuda":
        log.warning("--amp: bf16 autocast is for CUDA; this %s run stays in float32", runtime.device.type)
    return release


def train(config: RunConfig, *, resume: bool = False, device: str | None = None,
          threads: int | None = None) -> dict[str, Any]:
    """Train as `config` says (its type picks the task); with `resume`, continue `config.out/last.pt`.

    On CPU, `threads` torch threads per process, or by default as many as the cores left
    beside the processes and loader workers allow (`train.threads`; logged in one line).

    Returns a summary: epochs and steps done, the last and the best validation metrics
    (`best_top1` or `best_map`) and the run folder. Raises ManifestError / ShardError (the
    release), CheckpointError and RunError (the run folder), ValueError (settings) with
    one-line messages, and RunDiverged when a logged loss is not finite.
    """
    with runtime_session(device) as runtime:
        return _train(task_for(config), config, runtime, resume, threads)


def _train(task: Task, config: RunConfig, runtime: Runtime, resume: bool, threads: int | None) -> dict[str, Any]:
    out = Path(config.out)
    main_decides(runtime, lambda: check_run_folder(out, resume))
    release = _open_release(task, config, runtime)
    state = load_checkpoint(out / LAST) if resume else None
    if state is not None:
        check_resume(task, config, state, release, runtime.world_size, out / LAST)
    run = Run(task, config, release, runtime, resume=state is not None)
    setup_cpu_threads(runtime.device, run.train_loader.workers, requested=threads, log=log)
    if state is not None:
        run.restore(state)
    else:
        run.start()
    return run.fit()


def fit_detection(config: DetectionConfig, **kwargs: Any) -> dict[str, Any]:
    """`train` for a detection config (kept for callers that name the task)."""
    return train(config, **kwargs)


# -- scoring a saved model -------------------------------------------------------------------

def evaluate_checkpoint(checkpoint: str | os.PathLike, shards: str | os.PathLike, split: str = "val", *,
                        batch_size: int | None = None, workers: int = 0, verify_digests: bool = False,
                        device: str | None = None, threads: int | None = None,
                        task: str | None = None) -> dict[str, Any]:
    """Score `checkpoint` on a release's split with its task's metrics (top-1/top-5 or COCO mAP).

    CPU threads as in `train`. Refuses (CheckpointError) a checkpoint of another `task` when
    one is named, and one trained on another cipher geometry or class count.
    """
    with runtime_session(device) as runtime:
        return _evaluate(runtime, checkpoint, shards, split, batch_size, workers, verify_digests, threads, task)


def _evaluate(runtime: Runtime, checkpoint, shards, split: str, batch_size: int | None, workers: int,
              verify_digests: bool, threads: int | None, task: str | None) -> dict[str, Any]:
    state = load_checkpoint(checkpoint)
    kind = state.get("task", "classification")
    if task is not None and kind != task:
        raise CheckpointError(f"{checkpoint}: a {kind} checkpoint; {task} evaluation needs a {task} run's "
                              "last.pt or best.pt")
    plugin = task_named(kind)
    release = plugin.open_release(shards, (split,), verify_digests=verify_digests)
    with _loading(checkpoint):
        check_release(state, release.manifest, checkpoint)
        config = plugin.config_type.from_dict(state["config"])
        model = create_model(state["model"]["name"], state["model"]["kwargs"])
        model.load_state_dict(state["weights"])
        criterion = plugin.criterion(config, release)
        if "criterion" in state:
            criterion.load_state_dict(state["criterion"])
    model.to(runtime.device)
    criterion.to(runtime.device)
    _, plain = plugin.transforms(config, release, state["normalize"]["mean"], state["normalize"]["std"],
                                 runtime.device)
    loader = plugin.loader(release, split, batch_size=batch_size or config.batch_size, train=False,
                           workers=workers, rank=runtime.rank, world_size=runtime.world_size,
                           pin_memory=runtime.device.type == "cuda")
    setup_cpu_threads(runtime.device, loader.workers, requested=threads, log=log)
    result = plugin.evaluate(model, criterion, loader.epoch(0), plain, release, device=runtime.device,
                             amp=config.amp, runtime=runtime)
    return {"checkpoint": str(checkpoint), "split": split, "epoch": state["epoch"], "step": state["step"], **result}


def evaluate_detection_checkpoint(checkpoint: str | os.PathLike, shards: str | os.PathLike, split: str = "val",
                                  **kwargs: Any) -> dict[str, Any]:
    """`evaluate_checkpoint` that accepts detection checkpoints only."""
    return evaluate_checkpoint(checkpoint, shards, split, task="detection", **kwargs)
