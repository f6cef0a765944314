"""Encode ciphertext pixels to JPEG or PNG bytes that carry pixels and nothing else.

No EXIF, ICC, XMP, comments or text chunks are ever written. JPEG uses 4:4:4 chroma: with
4:2:0 subsampling each chroma sample spans 2×2 pixels, which blurs colour across the borders
of small shuffled tiles and would both hurt accuracy and hand an attacker a seam to match.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

FORMATS = {"jpeg": "jpg", "png": "png"}


def encode_image(img: np.ndarray, fmt: str, quality: int = 95) -> bytes:
    """Return the encoded bytes of an H×W×C uint8 image (C = 1 or 3)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown storage format {fmt!r}; choose jpeg or png")
    pixels = np.ascontiguousarray(img[..., 0] if img.shape[-1] == 1 else img, dtype=np.uint8)
    mode = "L" if pixels.ndim == 2 else "RGB"
    # frombuffer shares the array's memory (fromarray copies it): one copy less per image
    pil = Image.frombuffer(mode, (pixels.shape[1], pixels.shape[0]), pixels, "raw", mode, 0, 1)
    buf = io.BytesIO()
    if fmt == "jpeg":
        pil.save(buf, "JPEG", quality=quality, subsampling=0, optimize=False)
    else:
        pil.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def extension(fmt: str) -> str:
    """The WebDataset member extension for a storage format."""
    return FORMATS[fmt]
