"""The pixels the cipher sees: one source file decoded (decode) and shaped (geometry).

The encrypt job calls `prepare_pixels` for every centre-crop sample and the privacy audit calls
it for its originals, so the audit scores attacks against the very picture the cipher encrypted
(same EXIF turn, same resampling, same crop), not a look-alike.

`prepare_pixels` is the job's hot path and does each step once, on as few pixels as it can:
- a JPEG much larger than the output is decoded by libjpeg at 1/2, 1/4 or 1/8 scale (Pillow's
  `draft`, DCT-domain scaling) while its shorter side stays at least DRAFT_GAP × `resize`, so
  it is never under-sampled (Pillow's `thumbnail` uses the same gap);
- only the region the centre crop keeps is resampled, straight to size×size
  (`geometry.center_crop_box`), in the stored orientation;
- the EXIF turn is applied to the size×size result, not to the whole photo.
Each gives the pixels of "decode, turn upright, resize, crop" up to rounding (a few values
off by one) — except draft, which is a different (DCT-domain) first shrink of large JPEGs;
tests/test_encrypt_prepare.py bounds the difference on real photos.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from encrypt.decode import (TRANSPOSES, DecodeError, as_pixels, check_channels, decode_image, opened,
                            orientation, to_mode)
from encrypt.geometry import center_crop_box, resize_box

__all__ = ["DecodeError", "decode_source", "prepare_pixels"]

DRAFT_GAP = 2.0
"""A JPEG is decoded at 1/k scale only while its shorter side stays >= DRAFT_GAP × resize."""
TURNS_SIDES = {5, 6, 7, 8}  # orientations whose upright picture has width and height swapped


def decode_source(source: Path | bytes, channels: int, min_side: int = 0) -> np.ndarray:
    """Decoded, upright pixels; DecodeError when the shorter side is under `min_side`."""
    pixels = decode_image(source, channels)
    h, w = pixels.shape[:2]
    _check_size(w, h, min_side)
    return pixels


def _check_size(w: int, h: int, min_side: int) -> None:
    if w == 0 or h == 0:
        raise DecodeError("empty image (zero width or height)")
    if min(h, w) < min_side:
        raise DecodeError(f"too small: {w}x{h}, shorter side under {min_side}")


def stored_box(box: tuple[float, float, float, float], turn: int, w: int, h: int) -> tuple[float, ...]:
    """`box` of the upright picture as a box of the stored (w×h) pixels before EXIF turn `turn`."""
    def back(x: float, y: float) -> tuple[float, float]:  # upright point -> stored point
        return {1: (x, y), 2: (w - x, y), 3: (w - x, h - y), 4: (x, h - y), 5: (y, x),
                6: (y, h - x), 7: (w - y, h - x), 8: (w - y, x)}[turn]
    (x0, y0), (x1, y1) = back(box[0], box[1]), back(box[2], box[3])
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def draft_scale(img: Image.Image, resize: int) -> int:
    """Ask libjpeg to decode `img` (not loaded yet) at 1/k scale; returns k (1: full size).

    k is the largest of 8, 4, 2 that keeps the shorter side >= DRAFT_GAP × resize; Pillow
    ignores the request for anything but a baseline or progressive JPEG.
    """
    w, h = img.size
    k = next((k for k in (8, 4, 2) if min(w, h) // k >= DRAFT_GAP * resize), 1)
    if k == 1:
        return 1
    drafted = img.draft(None, (w // k, h // k))
    if drafted is None:
        return 1
    scale = w / drafted[1][2]  # draft's box: the whole picture in decoded pixels, (0, 0, w/k, h/k)
    return round(scale)


def prepare_pixels(source: Path | bytes, *, size: int, resize: int, channels: int,
                   min_side: int = 0) -> np.ndarray:
    """size×size×channels uint8: decode, shorter side to `resize`, centre crop (a job's sample).

    The same picture as `resize_center_crop(decode_source(...), resize, size)`, made with
    less work (see the module's notes).
    """
    check_channels(channels)
    if resize < size:  # a usage error, not a bad file: raise it before the decode errors' mapping
        raise ValueError(f"resize {resize} is smaller than the crop size {size}")
    with opened(source) as img:
        turn = orientation(img)
        w, h = img.size  # stored
        uw, uh = (h, w) if turn in TURNS_SIDES else (w, h)  # upright
        _check_size(uw, uh, 1)
        box = stored_box(center_crop_box(uh, uw, resize, size), turn, w, h)
        k = draft_scale(img, resize)
        img.load()
        _check_size(uw, uh, min_side)
        out = resize_box(to_mode(img, channels), tuple(v / k for v in box) if k > 1 else box, size)
        if turn != 1:
            out = out.transpose(TRANSPOSES[turn])
        return as_pixels(out)
