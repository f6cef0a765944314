"""Classification as a task plug-in: the cipher's model, CE or anchor loss, top-1/top-5.

Predictions are the loss's own (`criterion.logits`): the classifier's logits for
cross-entropy, minus scaled anchor distances for anchor losses. best.pt keeps the best
validation top-1.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import timm
import torch
from torch import nn

from train.config import TrainConfig
from train.data import BatchTransform, Release, ShardLoader, open_release
from train.runtime import Runtime, autocast
from train.tasks import Task, create_model

__all__ = ["ClassificationTask", "build_model", "evaluate"]


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


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, batches: Iterable, transform: BatchTransform, *,
             device: torch.device, amp: bool = False, runtime: Runtime | None = None) -> dict[str, float]:
    """Loss, top-1 and top-5 (top-min(5, classes)) over `batches`, summed over ranks."""
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


class ClassificationTask(Task):
    name, best_key, config_type = "classification", "best_top1", TrainConfig

    def open_release(self, shards: Any, splits: Sequence[str], verify_digests: bool = False) -> Release:
        return open_release(shards, splits, verify_digests=verify_digests)

    def criterion(self, config: TrainConfig, release: Release) -> nn.Module:
        return self._loss(config, release)[0]

    def _loss(self, config: TrainConfig, release: Release) -> tuple[nn.Module, int]:
        from train.losses import build_loss

        return build_loss(config.loss, release.num_classes, label_smoothing=config.label_smoothing,
                          anchors=config.anchors, scale=config.anchor_scale, seed=config.seed)

    def build(self, config: TrainConfig, release: Release) -> tuple[str, dict[str, Any], nn.Module, nn.Module]:
        criterion, head_width = self._loss(config, release)  # first: the anchors fix the head width
        name, kwargs, model = build_model(config.model, release, head_width, config.model_kwargs)
        return name, kwargs, model, criterion

    def loader(self, release: Release, split: str, **kwargs: Any) -> ShardLoader:
        return ShardLoader(release, split, **kwargs)

    def transforms(self, config: TrainConfig, release: Release, mean: list[float], std: list[float],
                   device: torch.device) -> tuple[BatchTransform, BatchTransform]:
        augment = BatchTransform(release.cipher, release.num_classes, mean, std, device,
                                 augment=config.augmentation(), label_smoothing=config.label_smoothing)
        return augment, BatchTransform(release.cipher, release.num_classes, mean, std, device)

    def evaluate(self, model: nn.Module, criterion: nn.Module, batches: Iterable, transform: BatchTransform,
                 release: Release, **kwargs: Any) -> dict[str, Any]:
        return evaluate(model, criterion, batches, transform, **kwargs)

    def score(self, val: dict[str, Any]) -> float:
        return val["top1"]
