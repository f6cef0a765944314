"""Detection as a task plug-in: YOLOS-style detector, DETR's set criterion, COCO mAP.

Evaluation maps each detection token's box back to stored-image pixels (COCO [x, y, w, h],
the coordinates the shards' json uses) with its best object class and that class's
probability as the score, and scores them with pycocotools against the shards' own boxes.
COCO's small/medium/large areas are absolute pixel thresholds, so they are in stored pixels
(a `mix` image is s/p the plain size); the headline mAP, AP50 and AP75 do not depend on them.
best.pt keeps the best validation mAP.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from typing import Any

import timm
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from train.box_ops import cxcywh_to_xyxy
from train.config import DetectionConfig
from train.data import Release
from train.detection_data import CategoryMap, DetectionLoader, DetectionTransform, open_detection_release
from train.detection_losses import SetCriterion
from train.matcher import HungarianMatcher
from train.runtime import Runtime, autocast
from train.tasks import Task, create_model

__all__ = ["COCO_METRICS", "DetectionTask", "build_detector", "coco_map", "evaluate_detection",
           "predictions_to_coco"]

# pycocotools' summary, in its order
COCO_METRICS = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
                "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large")


def build_detector(config: DetectionConfig, release: Release) -> tuple[str, dict[str, Any], nn.Module]:
    """Create the detector for a release: `(timm name, create_model kwargs, model)`."""
    from train.models.yolos import SIZES, detector_for_cipher

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


def _truth(image_id: int, target: dict[str, torch.Tensor], categories: CategoryMap) -> list[dict[str, Any]]:
    return [{"image_id": image_id, "category_id": categories.category_id(label), "bbox": box, "area": area,
             "iscrowd": crowd}
            for box, label, area, crowd in zip(target["boxes_px"].tolist(), target["labels"].tolist(),
                                               target["area"].tolist(), target["iscrowd"].tolist())]


def _pooled(parts: list[tuple[list, list, list]]) -> tuple[list, list, list]:
    """Every rank's predictions, truth and images, image ids renumbered per rank."""
    predictions, truth, images = [], [], []
    for rank_predictions, rank_truth, rank_images in parts:
        offset = len(images)
        images += [dict(i, id=i["id"] + offset) for i in rank_images]
        predictions += [dict(p, image_id=p["image_id"] + offset) for p in rank_predictions]
        truth += [dict(t, image_id=t["image_id"] + offset) for t in rank_truth]
    return predictions, truth, images


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
        predictions += predictions_to_coco(outputs, torch.stack([t["size"] for t in targets]), categories, ids)
        for image_id, t in zip(ids, targets):
            height, width = t["size"].tolist()
            images.append({"id": image_id, "height": height, "width": width})
            truth += _truth(image_id, t, categories)
    if runtime is None or not runtime.distributed:
        return {**coco_map(predictions, truth, images, categories), "images": len(images)}
    predictions, truth, images = _pooled(runtime.gather((predictions, truth, images)))
    result = {**coco_map(predictions, truth, images, categories), "images": len(images)} if runtime.main else None
    return runtime.gather(result)[0]


class DetectionTask(Task):
    name, best_key, config_type = "detection", "best_map", DetectionConfig

    def open_release(self, shards: Any, splits: Sequence[str], verify_digests: bool = False) -> Release:
        return open_detection_release(shards, splits, verify_digests=verify_digests)

    def criterion(self, config: DetectionConfig, release: Release) -> SetCriterion:
        matcher = HungarianMatcher(config.cost_class, config.cost_bbox, config.cost_giou)
        return SetCriterion(len(CategoryMap.from_manifest(release.manifest)), matcher, eos_coef=config.eos_coef,
                            weights={"loss_ce": config.loss_ce, "loss_bbox": config.loss_bbox,
                                     "loss_giou": config.loss_giou})

    def build(self, config: DetectionConfig, release: Release) -> tuple[str, dict[str, Any], nn.Module, nn.Module]:
        name, kwargs, model = build_detector(config, release)
        return name, kwargs, model, self.criterion(config, release)

    def loader(self, release: Release, split: str, **kwargs: Any) -> DetectionLoader:
        return DetectionLoader(release, split, **kwargs)

    def transforms(self, config: DetectionConfig, release: Release, mean: list[float], std: list[float],
                   device: torch.device) -> tuple[DetectionTransform, DetectionTransform]:
        augment = DetectionTransform(release.cipher, mean, std, device, hflip=config.hflip, train=True)
        return augment, DetectionTransform(release.cipher, mean, std, device)

    def evaluate(self, model: nn.Module, criterion: nn.Module, batches: Iterable, transform: DetectionTransform,
                 release: Release, **kwargs: Any) -> dict[str, Any]:
        return evaluate_detection(model, batches, transform, CategoryMap.from_manifest(release.manifest), **kwargs)

    def score(self, val: dict[str, Any]) -> float:
        return val["map"] if val["map"] is not None else -1.0

    def settings(self, release: Release) -> dict[str, Any]:
        return {"categories": CategoryMap.from_manifest(release.manifest).coco_categories()}
