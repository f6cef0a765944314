"""Geometry before the cipher: resize, crop, keyed crop views, letterbox with boxes.

Geometric augmentation is impossible after shuffling, so it happens here, at encryption
time: `random_resized_crop` takes its randomness from a keyed stream (one per sample view), so
views are reproducible for the key holder and unpredictable for everyone else.
"""
from __future__ import annotations

import math
from typing import Protocol

import numpy as np
from PIL import Image


class RandomSource(Protocol):
    """What geometry needs from keys.keystream.KeyStream."""

    def uniform(self) -> float: ...
    def randbelow(self, n: int) -> int: ...


def _pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)


def _array(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


RESAMPLE = Image.Resampling.BICUBIC  # antialiased when shrinking (the support widens with the scale)
REDUCING_GAP = 3.0  # integer box-reduce first while the rest of the shrink stays >= this factor


def center_crop_box(h: int, w: int, resize: int, size: int) -> tuple[float, float, float, float]:
    """The source region (left, top, right, bottom, in source pixels) that "shorter side to
    `resize`, then centre crop size×size" keeps.

    Resampling only this region straight to size×size gives the pixels of resizing the whole
    image and then cropping (Pillow's filter taps still reach outside the box), but computes
    only the kept part: about half the work of a 4:3 photo, and no crop copy.
    """
    if resize < size:
        raise ValueError(f"resize {resize} is smaller than the crop size {size}")
    scale = resize / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    sx, sy = w / nw, h / nh
    if (nh, nw) == (h, w):  # nothing to resample: a plain crop
        return (left, top, left + size, top + size)
    return (left * sx, top * sy, (left + size) * sx, (top + size) * sy)


def resize_box(img: Image.Image, box: tuple[float, float, float, float], size: int) -> Image.Image:
    """The region `box` of `img` resampled to size×size (cropped only, when it needs no resampling)."""
    if all(float(v).is_integer() for v in box) and box[2] - box[0] == size == box[3] - box[1]:
        return img.crop(tuple(int(v) for v in box))
    # Pillow's reducing_gap, applied as a resize of the whole picture applies it: the integer
    # box-reduce runs over the whole picture (its blocks aligned at its corner, not the box's).
    fx = int(round((box[2] - box[0]) / size, 9) / REDUCING_GAP) or 1
    fy = int(round((box[3] - box[1]) / size, 9) / REDUCING_GAP) or 1
    if fx > 1 or fy > 1:
        img = img.reduce((fx, fy))
        box = (box[0] / fx, box[1] / fy, box[2] / fx, box[3] / fy)
    return img.resize((size, size), RESAMPLE, box=box)


def resize_center_crop(img: np.ndarray, resize: int, size: int) -> np.ndarray:
    """Resize the shorter side to `resize` (antialiased), then centre-crop size×size."""
    h, w = img.shape[:2]
    return _array(resize_box(_pil(img), center_crop_box(h, w, resize, size), size))


def random_resized_crop(img: np.ndarray, size: int, rng: RandomSource,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True) -> np.ndarray:
    """Inception-style crop (area in `scale`, aspect in `ratio`) resized to size×size, then an
    optional horizontal flip; the draws come from `rng`, a keyed stream."""
    h, w = img.shape[:2]
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    box = None
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * rng.uniform())
        aspect = math.exp(log_lo + (log_hi - log_lo) * rng.uniform())
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = rng.randbelow(h - ch + 1), rng.randbelow(w - cw + 1)
            box = (left, top, left + cw, top + ch)
            break
    if box is None:  # fall back to the largest centred crop within the ratio range
        in_ratio = w / h
        cw, ch = (w, round(w / ratio[0])) if in_ratio < ratio[0] else \
                 (round(h * ratio[1]), h) if in_ratio > ratio[1] else (w, h)
        cw, ch = min(cw, w), min(ch, h)
        box = ((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)
    pil = _pil(img).resize((size, size), RESAMPLE, box=box, reducing_gap=REDUCING_GAP)
    if flip and rng.randbelow(2):
        pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _array(pil)


def letterbox(img: np.ndarray, size: int, boxes: np.ndarray, fill: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Scale the longer side to `size`, pad to size×size at the bottom/right, move the boxes.

    boxes are COCO [x, y, w, h] in source pixels; returns (image, boxes in output pixels,
    scale). Boxes are clipped to the image; callers drop the ones that vanish.
    """
    h, w = img.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = _pil(img).resize((nw, nh), RESAMPLE, reducing_gap=REDUCING_GAP)
    canvas = Image.new(resized.mode, (size, size), fill)
    canvas.paste(resized, (0, 0))
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale
    return _array(canvas), clip_boxes(out, nw, nh), scale


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Clip [x, y, w, h] boxes to a width×height image (a box outside becomes zero-area)."""
    x0 = np.clip(boxes[:, 0], 0, width)
    y0 = np.clip(boxes[:, 1], 0, height)
    x1 = np.clip(boxes[:, 0] + boxes[:, 2], 0, width)
    y1 = np.clip(boxes[:, 1] + boxes[:, 3], 0, height)
    return np.stack([x0, y0, np.maximum(x1 - x0, 0), np.maximum(y1 - y0, 0)], axis=1)
