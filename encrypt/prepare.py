"""The pixels the cipher sees: one source file decoded (decode) and shaped (geometry).

The encrypt job calls `prepare_pixels` for every centre-crop sample and the privacy audit calls
it for its originals, so the audit scores attacks against the very picture the cipher encrypted
(same EXIF turn, same resampling, same crop), not a look-alike.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from encrypt.decode import DecodeError, decode_image
from encrypt.geometry import resize_center_crop

__all__ = ["DecodeError", "decode_source", "prepare_pixels"]


def decode_source(source: Path | bytes, channels: int, min_side: int = 0) -> np.ndarray:
    """Decoded, upright pixels; DecodeError when the shorter side is under `min_side`."""
    pixels = decode_image(source, channels)
    h, w = pixels.shape[:2]
    if min(h, w) < min_side:
        raise DecodeError(f"too small: {w}x{h}, shorter side under {min_side}")
    return pixels


def prepare_pixels(source: Path | bytes, *, size: int, resize: int, channels: int,
                   min_side: int = 0) -> np.ndarray:
    """size×size×channels uint8: decode, shorter side to `resize`, centre crop (a job's sample)."""
    return resize_center_crop(decode_source(source, channels, min_side), resize, size)
