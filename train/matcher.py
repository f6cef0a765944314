"""Hungarian matching of detection tokens to ground-truth objects (DETR's matcher).

Each image has N predictions (one per detection token) and M ≤ N objects. The loss needs a
one-to-one assignment, chosen to minimise

    cost = w_class · (−p(class of the object)) + w_bbox · L1(boxes) + w_giou · (−GIoU(boxes))

over normalised (cx, cy, w, h) boxes; scipy's ``linear_sum_assignment`` solves it exactly.
Unmatched predictions are trained towards "no object".
"""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from train.errors import RunDiverged
from train.box_ops import cxcywh_to_xyxy, generalized_box_iou

__all__ = ["HungarianMatcher", "Match"]

# (prediction indices, target indices), both int64 of the same length
Match = tuple[torch.Tensor, torch.Tensor]


class HungarianMatcher(nn.Module):
    """Optimal one-to-one assignment of predictions to targets under the DETR cost."""

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> None:
        super().__init__()
        if min(cost_class, cost_bbox, cost_giou) < 0 or cost_class == cost_bbox == cost_giou == 0:
            raise ValueError("matcher costs must be >= 0 and not all 0")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    @torch.no_grad()
    def cost_matrices(self, outputs: dict[str, torch.Tensor],
                      targets: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Per image, the N×M matrix the assignment minimises (CPU, float32)."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        probs = logits.float().softmax(-1)
        matrices = []
        for b, target in enumerate(targets):
            labels, truth = target["labels"], target["boxes"].float()
            cost = (self.cost_class * -probs[b][:, labels]
                    + self.cost_bbox * torch.cdist(boxes[b].float(), truth, p=1)
                    + self.cost_giou * -generalized_box_iou(cxcywh_to_xyxy(boxes[b].float()),
                                                            cxcywh_to_xyxy(truth)))
            matrices.append(cost.cpu())
        return matrices

    @torch.no_grad()
    def forward(self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> list[Match]:
        """One (prediction indices, target indices) pair per image, sorted by prediction."""
        matches = []
        for cost in self.cost_matrices(outputs, targets):
            if not torch.isfinite(cost).all():
                raise RunDiverged("matching cost is not finite: the model diverged "
                                         "(lower the learning rate or clip gradients)")
            rows, cols = linear_sum_assignment(cost.numpy())
            matches.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return matches
