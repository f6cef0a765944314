"""Box conventions of the detector and of the shards, and the conversions between them.

Shards store COCO boxes ``[x, y, w, h]`` in stored-image pixels (after the data owner's
letterbox and, for ``mix``, the s/p scale of the mixed image). The detector predicts boxes
as ``(cx, cy, w, h)`` normalised by the stored image's width and height, so the same box has
the same normalised coordinates in a ``mix`` release and in its plain (``none``) baseline.
Corner conversions and GIoU come from ``torchvision.ops``; this module only adds the
normalisation, which torchvision does not have.
"""
from __future__ import annotations

import torch
from torchvision.ops import box_convert, box_iou, generalized_box_iou

__all__ = [
    "box_convert",
    "box_iou",
    "cxcywh_to_xyxy",
    "generalized_box_iou",
    "normalized_to_pixels",
    "pixels_to_normalized",
    "xyxy_to_cxcywh",
]


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) → (x0, y0, x1, y1), any units."""
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(x0, y0, x1, y1) → (cx, cy, w, h), any units."""
    return box_convert(boxes, in_fmt="xyxy", out_fmt="cxcywh")


def _scale(image_size: tuple[int, int] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(W, H, W, H) for an image of (H, W), shaped to broadcast over boxes (..., 4)."""
    size = torch.as_tensor(image_size, dtype=like.dtype, device=like.device)
    if size.shape[-1] != 2:
        raise ValueError(f"image size must be (height, width), got shape {tuple(size.shape)}")
    height, width = size[..., 0], size[..., 1]
    return torch.stack([width, height, width, height], dim=-1).unsqueeze(-2) if size.ndim > 1 \
        else torch.stack([width, height, width, height])


def pixels_to_normalized(boxes: torch.Tensor, image_size: tuple[int, int] | torch.Tensor) -> torch.Tensor:
    """COCO ``[x, y, w, h]`` in pixels of an (H, W) image → normalised ``(cx, cy, w, h)``."""
    return box_convert(boxes, in_fmt="xywh", out_fmt="cxcywh") / _scale(image_size, boxes)


def normalized_to_pixels(boxes: torch.Tensor, image_size: tuple[int, int] | torch.Tensor) -> torch.Tensor:
    """Normalised ``(cx, cy, w, h)`` → COCO ``[x, y, w, h]`` in pixels of an (H, W) image.

    ``image_size`` is one (H, W) for all boxes, or a (B, 2) tensor for (B, N, 4) boxes.
    """
    return box_convert(boxes * _scale(image_size, boxes), in_fmt="cxcywh", out_fmt="xywh")
