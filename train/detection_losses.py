"""DETR's set criterion: match predictions to objects, then classify and regress the matches.

After Hungarian matching (``train.matcher``), three terms:

- ``loss_ce``: cross-entropy over all N detection tokens; matched tokens learn their
  object's class, the others the extra "no object" class, down-weighted by ``eos_coef`` so
  the many empty tokens do not drown the few objects;
- ``loss_bbox``: L1 between matched normalised (cx, cy, w, h) boxes;
- ``loss_giou``: 1 − GIoU of the matched boxes.

Box terms are averaged over the number of objects in the batch, summed over DDP ranks so
every rank divides by the same count. With ``aux_outputs`` (one prediction set per earlier
transformer block) the same terms are added for each, matched separately.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.box_ops import cxcywh_to_xyxy, generalized_box_iou
from train.matcher import HungarianMatcher, Match

__all__ = ["DEFAULT_WEIGHTS", "SetCriterion"]

DEFAULT_WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def _num_boxes(targets: list[dict[str, torch.Tensor]], device: torch.device) -> float:
    """Objects in the batch, summed over DDP ranks, at least 1."""
    count = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return max(float(count), 1.0)


class SetCriterion(nn.Module):
    """Hungarian-matched CE + L1 + GIoU; ``forward`` returns every term and the weighted ``loss``."""

    def __init__(self, num_classes: int, matcher: HungarianMatcher | None = None, *,
                 eos_coef: float = 0.1, weights: dict[str, float] | None = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if not 0 < eos_coef <= 1:
            raise ValueError(f"eos_coef must be in (0, 1], got {eos_coef}")
        self.num_classes = num_classes
        self.matcher = matcher or HungarianMatcher()
        self.weights = dict(DEFAULT_WEIGHTS, **(weights or {}))
        unknown = set(self.weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown loss weights {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}")
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = eos_coef
        self.register_buffer("class_weight", class_weight)

    def loss_labels(self, logits: torch.Tensor, targets: list[dict[str, torch.Tensor]],
                    matches: list[Match]) -> torch.Tensor:
        """CE over all tokens; unmatched ones target the no-object class (index num_classes)."""
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        for b, (rows, cols) in enumerate(matches):
            classes[b, rows.to(logits.device)] = targets[b]["labels"][cols.to(logits.device)]
        return F.cross_entropy(logits.float().transpose(1, 2), classes, weight=self.class_weight)

    def loss_boxes(self, boxes: torch.Tensor, targets: list[dict[str, torch.Tensor]],
                   matches: list[Match], num_boxes: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(L1, 1 − GIoU) of matched boxes, each summed and divided by ``num_boxes``."""
        pred = torch.cat([boxes[b, rows.to(boxes.device)] for b, (rows, _) in enumerate(matches)])
        truth = torch.cat([t["boxes"][cols.to(boxes.device)] for t, (_, cols) in zip(targets, matches)])
        pred, truth = pred.float(), truth.float()
        l1 = F.l1_loss(pred, truth, reduction="sum") / num_boxes
        if len(pred) == 0:
            return l1, pred.sum()  # zero, still connected to the graph
        giou = torch.diag(generalized_box_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(truth)))
        return l1, (1 - giou).sum() / num_boxes

    def _terms(self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]],
               num_boxes: float) -> dict[str, torch.Tensor]:
        matches = self.matcher(outputs, targets)
        l1, giou = self.loss_boxes(outputs["pred_boxes"], targets, matches, num_boxes)
        return {"loss_ce": self.loss_labels(outputs["pred_logits"], targets, matches),
                "loss_bbox": l1, "loss_giou": giou}

    def forward(self, outputs: dict, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Terms of the final prediction (``loss_ce``...), of each aux set (``loss_ce_0``...),
        and ``loss``, their weighted sum, the one to back-propagate."""
        if outputs["pred_logits"].shape[-1] != self.num_classes + 1:
            raise ValueError(f"the model predicts {outputs['pred_logits'].shape[-1] - 1} classes, "
                             f"the criterion expects {self.num_classes}")
        num_boxes = _num_boxes(targets, outputs["pred_logits"].device)
        terms = self._terms(outputs, targets, num_boxes)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            terms.update({f"{k}_{i}": v for k, v in self._terms(aux, targets, num_boxes).items()})
        terms["loss"] = sum(self.weights[k.rsplit("_", 1)[0] if k[-1].isdigit() else k] * v
                            for k, v in terms.items())
        return terms
