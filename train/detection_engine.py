"""Detection training and COCO evaluation: `train_one_epoch_detection`, `evaluate_detection`,
and `fit_detection`, which wires a run together the way `train.engine.train` does.

The run folder is the classification one: `config.json`, `metrics.jsonl` (`config`, `train`
every `log_every` steps, `epoch` with validation mAP / AP50 / AP75), `last.pt` (model,
optimizer, scheduler, epoch, step and every rank's RNG states, so a resumed run takes the
same batches and draws the same flips, step for step) and `best.pt` (best validation mAP).
Processes, AMP (bf16 autocast on CUDA only), the run-folder checks and the metrics log are
`train.engine`'s; only the model, the loss and the metric differ.

Evaluation maps each detection token's box back to stored-image pixels (COCO [x, y, w, h],
the coordinates the shards' json uses) with its best object class and that class's
probability as the score, and scores them with pycocotools against the shards' own boxes.
COCO's small/medium/large areas are absolute pixel thresholds, so they are in stored pixels
(a `mix` image is s/p the plain size); the headline mAP, AP50 and AP75 do not depend on them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from shards.common import atomic_write_bytes
from shards.console import progress_bar
from train.box_ops import cxcywh_to_xyxy
from train.checkpoint import (
    CheckpointError,
    capture_rng,
    check_release,
    load_checkpoint,
    release_record,
    restore_rng,
    save_checkpoint,
)
from train.detection_data import CategoryMap, DetectionLoader, DetectionTransform, open_detection_release
from train.detection_losses import SetCriterion
from train.data import Release
from train.engine import (
    BEST,
    CONFIG,
    LAST,
    METRICS,
    MetricsLog,
    RunError,
    Runtime,
    autocast,
    check_run_folder,
    main_decides,
    model_normalisation,
    seed_augmentation,
    create_model,
    start_runtime,
)
from train.errors import RunDiverged
from train.matcher import HungarianMatcher
from train.models.yolos import SIZES, detector_for_cipher
from train.threads import setup_cpu_threads

__all__ = [
    "COCO_METRICS",
    "DetectionConfig",
    "build_detector",
    "coco_map",
    "evaluate_detection",
    "evaluate_detection_checkpoint",
    "fit_detection",
    "load_detector",
    "predictions_to_coco",
    "train_one_epoch_detection",
]

log = logging.getLogger("train")

# pycocotools' summary, in its order
COCO_METRICS = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
                "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large")


@dataclass
class DetectionConfig:
    """Everything a detection run is made of. Saved in every checkpoint; a resume keeps it.

    `model`: "auto" (the tiny detector for the release's cipher), a size (nano, tiny, small,
    base) or a timm name of a registered detector; the cipher's geometry is always passed,
    `model_kwargs` go on top (e.g. depth=2). Loss weights and matcher costs are DETR's.
    `val_split=None` trains without evaluation (and without best.pt).
    """

    shards: str
    out: str
    model: str = "auto"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    num_det_tokens: int = 100
    aux_loss: bool = False
    epochs: int = 50
    batch_size: int = 16
    lr: float = 2.5e-4
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    min_lr: float = 1e-6
    clip_grad: float = 1.0
    eos_coef: float = 0.1
    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    loss_ce: float = 1.0
    loss_bbox: float = 5.0
    loss_giou: float = 2.0
    hflip: float = 0.5
    amp: bool = False
    workers: int = 2
    shuffle_buffer: int = 1000
    seed: int = 0
    train_split: str = "train"
    val_split: str | None = "val"
    eval_every: int = 1
    verify_digests: bool = False
    log_every: int = 50
    checkpoint_every: int = 0
    progress: bool = True

    # May differ when resuming: they change where and how loudly, not what is learned.
    RESUMABLE_CHANGES = ("shards", "out", "workers", "verify_digests", "log_every",
                         "checkpoint_every", "progress", "eval_every")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "num_det_tokens", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_epochs", "workers", "shuffle_buffer", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("weight_decay", "clip_grad", "min_lr", "cost_class", "cost_bbox", "cost_giou",
                     "loss_ce", "loss_bbox", "loss_giou"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.eos_coef <= 1:
            raise ValueError(f"eos_coef must be in (0, 1], got {self.eos_coef}")
        if not 0 <= self.hflip <= 1:
            raise ValueError(f"hflip must be in [0, 1], got {self.hflip}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectionConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def criterion(self, num_classes: int) -> SetCriterion:
        matcher = HungarianMatcher(self.cost_class, self.cost_bbox, self.cost_giou)
        return SetCriterion(num_classes, matcher, eos_coef=self.eos_coef,
                            weights={"loss_ce": self.loss_ce, "loss_bbox": self.loss_bbox,
                                     "loss_giou": self.loss_giou})


def build_detector(config: DetectionConfig, release: Release) -> tuple[str, dict[str, Any], nn.Module]:
    """Create the detector for a release: `(timm name, create_model kwargs, model)`."""
    spec = config.model
    size = spec if spec in SIZES else "tiny"
    categories = CategoryMap.from_manifest(release.manifest)
    name, kwargs = detector_for_cipher(release.cipher.to_dict(), len(categories), size=size,
                                       num_det_tokens=config.num_det_tokens, aux_loss=config.aux_loss)
    if spec not in ("auto", *SIZES):
        if not timm.is_model(spec) or not spec.startswith("yolos_"):
            raise ValueError(f"model {spec!r} is not a registered detector (yolos_*), auto, "
                             f"or one of {', '.join(SIZES)}")
        name = spec
    kwargs.update(config.model_kwargs)
    return name, kwargs, create_model(name, kwargs)


# -- the two loops ---------------------------------------------------------------------------

def train_one_epoch_detection(model: nn.Module, criterion: SetCriterion, batches: Iterable,
                              transform: DetectionTransform, optimizer: torch.optim.Optimizer,
                              scheduler: Any, *, device: torch.device, step: int, amp: bool = False,
                              clip_grad: float = 0.0, on_step: Any = None) -> dict[str, Any]:
    """One pass over `batches`; returns this rank's summed `terms` (×images), `samples`,
    `batches` and the last `step`. `on_step(step, batch_in_epoch, loss)` runs after each update."""
    model.train()
    criterion.train()
    sums: dict[str, float] = {}
    samples = batches_done = 0
    for index, (images, targets) in enumerate(batches, start=1):
        inputs, targets = transform(images, targets)
        with autocast(device, amp):
            outputs = model(inputs)
        terms = criterion(_as_float(outputs), targets)
        loss = terms["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad > 0:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        step += 1
        scheduler.step_update(num_updates=step)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * images.shape[0]
        samples += images.shape[0]
        batches_done += 1
        if on_step is not None:
            on_step(step, index, loss.detach())
    return {"terms": sums, "samples": samples, "batches": batches_done, "step": step}


def _as_float(outputs: dict[str, Any]) -> dict[str, Any]:
    """Model outputs in float32 (the loss and the matcher never run in bf16)."""
    out = {k: v.float() for k, v in outputs.items() if k != "aux_outputs"}
    if "aux_outputs" in outputs:
        out["aux_outputs"] = [{k: v.float() for k, v in aux.items()} for aux in outputs["aux_outputs"]]
    return out


def predictions_to_coco(outputs: dict[str, torch.Tensor], sizes: torch.Tensor, categories: CategoryMap,
                        image_ids: list[int]) -> list[dict[str, Any]]:
    """One COCO result per detection token: stored-pixel [x, y, w, h] clipped to the image,
    its most likely object class (never "no object") and that class's probability."""
    probs = outputs["pred_logits"].float().softmax(-1)[..., :-1]
    scores, labels = probs.max(-1)
    sizes = sizes.to(probs.device).float()
    corners = cxcywh_to_xyxy(outputs["pred_boxes"].float() * torch.cat([sizes.flip(-1)] * 2, -1)[:, None])
    limit = torch.cat([sizes.flip(-1)] * 2, -1)[:, None]
    corners = torch.minimum(corners.clamp(min=0), limit)
    boxes = torch.cat([corners[..., :2], corners[..., 2:] - corners[..., :2]], -1)
    results = []
    for b, image_id in enumerate(image_ids):
        for box, label, score in zip(boxes[b].tolist(), labels[b].tolist(), scores[b].tolist()):
            results.append({"image_id": image_id, "category_id": categories.category_id(label),
                            "bbox": [round(v, 3) for v in box], "score": round(score, 6)})
    return results


def coco_map(predictions: list[dict[str, Any]], truth: list[dict[str, Any]],
             images: list[dict[str, Any]], categories: CategoryMap) -> dict[str, float | None]:
    """pycocotools' bbox summary (`COCO_METRICS`); None where COCO leaves a metric undefined."""
    gt = COCO()
    gt.dataset = {"images": images, "categories": categories.coco_categories(),
                  "annotations": [dict(a, id=i + 1) for i, a in enumerate(truth)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not predictions or not truth:
            return {name: (0.0 if truth else None) for name in COCO_METRICS}
        dt = gt.loadRes(predictions)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: (float(v) if v >= 0 else None) for name, v in zip(COCO_METRICS, ev.stats)}


@torch.no_grad()
def evaluate_detection(model: nn.Module, batches: Iterable, transform: DetectionTransform,
                       categories: CategoryMap, *, device: torch.device, amp: bool = False,
                       runtime: Runtime | None = None) -> dict[str, Any]:
    """COCO mAP / AP50 / AP75 (and the rest of `COCO_METRICS`) over `batches`, all ranks pooled."""
    model.eval()
    predictions: list[dict[str, Any]] = []
    truth: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    for batch_images, targets in batches:
        inputs, targets = transform(batch_images, targets)
        with autocast(device, amp):
            outputs = model(inputs)
        ids = list(range(len(images) + 1, len(images) + 1 + len(targets)))
        sizes = torch.stack([t["size"] for t in targets])
        predictions += predictions_to_coco(outputs, sizes, categories, ids)
        for image_id, t in zip(ids, targets):
            height, width = t["size"].tolist()
            images.append({"id": image_id, "height": height, "width": width})
            for box, label, area, crowd in zip(t["boxes_px"].tolist(), t["labels"].tolist(),
                                               t["area"].tolist(), t["iscrowd"].tolist()):
                truth.append({"image_id": image_id, "category_id": categories.category_id(label),
                              "bbox": box, "area": area, "iscrowd": crowd})
    if runtime is not None and runtime.distributed:
        parts = runtime.gather((predictions, truth, images))
        predictions, truth, images = [], [], []
        for rank_predictions, rank_truth, rank_images in parts:  # renumber images per rank
            offset = len(images)
            images += [dict(i, id=i["id"] + offset) for i in rank_images]
            predictions += [dict(p, image_id=p["image_id"] + offset) for p in rank_predictions]
            truth += [dict(t, image_id=t["image_id"] + offset) for t in rank_truth]
        result = {**coco_map(predictions, truth, images, categories), "images": len(images)} \
            if runtime.main else None
        return runtime.gather(result)[0]
    return {**coco_map(predictions, truth, images, categories), "images": len(images)}


# -- a whole run -----------------------------------------------------------------------------

def _check_resume(config: DetectionConfig, state: dict[str, Any], release: Release, world_size: int,
                  path: Path) -> None:
    """A resumed run must compute what the interrupted one would have."""
    if state.get("task") != "detection":
        raise RunError(f"{path}: a {state.get('task', 'classification')} checkpoint, not a detection run")
    saved = DetectionConfig.from_dict(state["config"])
    for f in dataclasses.fields(DetectionConfig):
        if f.name not in DetectionConfig.RESUMABLE_CHANGES and getattr(saved, f.name) != getattr(config, f.name):
            raise RunError(f"{path}: {f.name} was {getattr(saved, f.name)!r}, now "
                           f"{getattr(config, f.name)!r}; a resumed run keeps its settings")
    if state["release"]["manifest_digest"] != release.manifest.digest():
        raise RunError(f"{path}: trained on release {state['release']['dataset_id']} "
                       f"(manifest {state['release']['manifest_digest'][:12]}), not the one in {release.root}")
    if state["world_size"] != world_size:
        raise RunError(f"{path}: written by {state['world_size']} processes; resume with the same "
                       f"number (now {world_size}) so every step sees the same batches")


def fit_detection(config: DetectionConfig, *, resume: bool = False, device: str | None = None,
                  threads: int | None = None) -> dict[str, Any]:
    """Train a detector on a detection release as `config` says; with `resume`, continue
    `config.out/last.pt` at the step it was written. CPU threads as in `train.engine.train`.

    Returns a summary: steps done, the last and best validation metrics, the run folder.
    Raises ManifestError / ShardError (the release), CheckpointError and RunError (the run
    folder), ValueError (settings), each with a one-line message.
    """
    runtime = start_runtime(device)
    out = Path(config.out)
    main_decides(runtime, lambda: check_run_folder(out, resume))
    splits = [config.train_split] + ([config.val_split] if config.val_split else [])
    if config.verify_digests:
        main_decides(runtime, lambda: open_detection_release(config.shards, splits, verify_digests=True))
    release = open_detection_release(config.shards, splits)
    categories = CategoryMap.from_manifest(release.manifest)
    if not release.cipher.encrypted:
        log.warning("%s: cipher none, plain images: a baseline, not an encrypted release", release.root)
    if config.amp and runtime.device.type != "cuda":
        log.warning("amp: bf16 autocast is for CUDA; this %s run stays in float32", runtime.device.type)
    state = load_checkpoint(out / LAST) if resume else None
    if state is not None:
        _check_resume(config, state, release, runtime.world_size, out / LAST)

    torch.manual_seed(config.seed)  # the same initial weights on every rank and every rerun
    name, kwargs, model = build_detector(config, release)
    criterion = config.criterion(len(categories))
    mean, std = model_normalisation(model)
    model.to(runtime.device)
    criterion.to(runtime.device)

    pin = runtime.device.type == "cuda"
    train_loader = DetectionLoader(release, config.train_split, batch_size=config.batch_size, train=True,
                                   workers=config.workers, shuffle_buffer=config.shuffle_buffer,
                                   seed=config.seed, rank=runtime.rank, world_size=runtime.world_size,
                                   pin_memory=pin)
    val_loader = None
    if config.val_split:
        val_loader = DetectionLoader(release, config.val_split, batch_size=config.batch_size, train=False,
                                     workers=config.workers, rank=runtime.rank,
                                     world_size=runtime.world_size, pin_memory=pin)
    steps_per_epoch = len(train_loader)
    setup_cpu_threads(runtime.device, train_loader.workers, requested=threads, log=log)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=config.lr, weight_decay=config.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=config.epochs, min_lr=config.min_lr,
        warmup_epochs=min(config.warmup_epochs, config.epochs - 1), warmup_lr=min(1e-6, config.lr),
        step_on_epochs=False, updates_per_epoch=steps_per_epoch)

    epoch, skip, step, best, last_val = 0, 0, 0, None, None
    metrics = MetricsLog(out / METRICS, runtime.main)
    if state is not None:
        model.load_state_dict(state["weights"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        epoch, skip, step = state["epoch"], state["batch_in_epoch"], state["step"]
        best, last_val = state["best_map"], state["val"]
        scheduler.step_update(num_updates=step)
        metrics.cut_after(step)
        if runtime.main:
            for stale in out.glob(".*.pt.*.tmp"):  # a checkpoint write cut short by a kill
                stale.unlink()
        log.info("resuming %s at epoch %d, step %d", out / LAST, epoch + 1, step)
    elif runtime.main:
        out.mkdir(parents=True, exist_ok=True)

    record = release_record(release.manifest)
    train_model = model
    if runtime.distributed:
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    augment = DetectionTransform(release.cipher, mean, std, runtime.device, hflip=config.hflip, train=True)
    plain = DetectionTransform(release.cipher, mean, std, runtime.device)

    if state is None and runtime.main:
        settings = {"task": "detection", "config": config.to_dict(), "model": {"name": name, "kwargs": kwargs},
                    "release": record, "world_size": runtime.world_size, "steps_per_epoch": steps_per_epoch,
                    "normalize": {"mean": mean, "std": std}, "categories": categories.coco_categories()}
        atomic_write_bytes(out / CONFIG, (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode())
        metrics.write({"event": "config", "step": 0, **settings})

    def snapshot(epoch_now: int, batch_in_epoch: int, step_now: int, full: bool = True) -> dict[str, Any]:
        """The run's state; `full` adds optimizer, scheduler and every rank's RNG (a collective)."""
        snap = {"task": "detection", "model": {"name": name, "kwargs": kwargs}, "weights": model.state_dict(),
                "config": config.to_dict(), "release": record, "normalize": {"mean": mean, "std": std},
                "epoch": epoch_now, "batch_in_epoch": batch_in_epoch, "step": step_now,
                "steps_per_epoch": steps_per_epoch, "world_size": runtime.world_size,
                "best_map": best, "val": last_val}
        if full:
            snap.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        rng=runtime.gather(capture_rng()))
        return snap

    def save_last(epoch_now: int, batch_in_epoch: int, step_now: int) -> None:
        snap = snapshot(epoch_now, batch_in_epoch, step_now)  # on every rank: it gathers RNG states
        if runtime.main:
            save_checkpoint(out / LAST, snap)

    started = time.perf_counter()
    for epoch in range(epoch, config.epochs):
        if skip:
            restore_rng(state["rng"][runtime.rank])
        else:
            seed_augmentation(config.seed, epoch, runtime.rank)
        bar = progress_bar(enabled=config.progress and runtime.main, total=steps_per_epoch, initial=skip,
                           desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False)

        def on_step(step_now: int, index: int, loss: torch.Tensor, epoch: int = epoch) -> None:
            bar.update(1)
            if step_now % config.log_every == 0:
                value = float(loss)
                if not math.isfinite(value):
                    raise RunDiverged(f"loss is {value} at step {step_now}; lower the learning "
                                             "rate or clip gradients and resume from last.pt")
                lr = optimizer.param_groups[0]["lr"]
                metrics.write({"event": "train", "epoch": epoch + 1, "step": step_now, "loss": value, "lr": lr})
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
            if config.checkpoint_every and step_now % config.checkpoint_every == 0 and index < steps_per_epoch:
                save_last(epoch, index, step_now)

        epoch_start = time.perf_counter()
        result = train_one_epoch_detection(train_model, criterion, train_loader.epoch(epoch, skip=skip), augment,
                                           optimizer, scheduler, device=runtime.device, step=step,
                                           amp=config.amp, clip_grad=config.clip_grad, on_step=on_step)
        bar.close()
        step, skip = result["step"], 0
        keys = sorted(k for k in result["terms"] if not k[-1].isdigit())
        totals = runtime.sum([result["samples"]] + [result["terms"][k] for k in keys])
        summary: dict[str, Any] = {"event": "epoch", "epoch": epoch + 1, "step": step,
                                   **{f"train_{k}": v / max(totals[0], 1) for k, v in zip(keys, totals[1:])},
                                   "train_samples": int(totals[0]), "lr": optimizer.param_groups[0]["lr"],
                                   "seconds": round(time.perf_counter() - epoch_start, 3)}
        last_epoch = epoch + 1 == config.epochs
        if val_loader is not None and ((epoch + 1) % config.eval_every == 0 or last_epoch):
            last_val = evaluate_detection(model, val_loader.epoch(0), plain, categories, device=runtime.device,
                                          amp=config.amp, runtime=runtime)
            summary.update({f"val_{k}": v for k, v in last_val.items()})
            score = last_val["map"] if last_val["map"] is not None else -1.0
            if best is None or score > best:
                best = score
                if runtime.main:
                    save_checkpoint(out / BEST, snapshot(epoch + 1, 0, step, full=False))
        metrics.write(summary)
        save_last(epoch + 1, 0, step)
        if runtime.main:
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items() if k != "event"}
            log.info("epoch %d/%d %s", epoch + 1, config.epochs, json.dumps(shown))

    return {"out": str(out), "epochs": config.epochs, "step": step, "best_map": best, "val": last_val,
            "seconds": round(time.perf_counter() - started, 3), "world_size": runtime.world_size}


# -- scoring a saved model -------------------------------------------------------------------

def load_detector(checkpoint: str | os.PathLike, release: Release) -> tuple[dict[str, Any], nn.Module]:
    """`(checkpoint state, model with its weights)`, refusing one trained on another geometry."""
    state = load_checkpoint(checkpoint)
    if state.get("task") != "detection":
        raise CheckpointError(f"{checkpoint}: a {state.get('task', 'classification')} checkpoint; "
                              "detection evaluation needs a detection run's last.pt or best.pt")
    check_release(state, release.manifest, checkpoint)
    try:
        model = create_model(state["model"]["name"], state["model"]["kwargs"])
        model.load_state_dict(state["weights"])
    except (KeyError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{checkpoint}: does not hold a model this code can load ({reason})") from None
    return state, model


def evaluate_detection_checkpoint(checkpoint: str | os.PathLike, shards: str | os.PathLike, split: str = "val",
                                  *, batch_size: int | None = None, workers: int = 0,
                                  verify_digests: bool = False, device: str | None = None,
                                  threads: int | None = None) -> dict[str, Any]:
    """COCO mAP / AP50 / AP75 of a saved detector on a release's split (stored-pixel boxes);
    CPU threads as in `train.engine.train`."""
    runtime = start_runtime(device)
    release = open_detection_release(shards, (split,), verify_digests=verify_digests)
    state, model = load_detector(checkpoint, release)
    config = DetectionConfig.from_dict(state["config"])
    model.to(runtime.device)
    transform = DetectionTransform(release.cipher, state["normalize"]["mean"], state["normalize"]["std"],
                                   runtime.device)
    loader = DetectionLoader(release, split, batch_size=batch_size or config.batch_size, train=False,
                             workers=workers, rank=runtime.rank, world_size=runtime.world_size,
                             pin_memory=runtime.device.type == "cuda")
    setup_cpu_threads(runtime.device, loader.workers, requested=threads, log=log)
    result = evaluate_detection(model, loader.epoch(0), transform, CategoryMap.from_manifest(release.manifest),
                                device=runtime.device, amp=config.amp, runtime=runtime)
    return {"checkpoint": str(checkpoint), "split": split, "epoch": state["epoch"], "step": state["step"], **result}
