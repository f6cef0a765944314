"""Decode one raw file into a clean uint8 array, or say exactly why it cannot be used.

Every odd input a real dataset holds is normalised here, once: EXIF rotation applied, alpha
composited on white, palette and CMYK converted, 16-bit scaled to 8-bit, and all metadata
dropped (only pixels leave this module). Pillow's decompression-bomb limit is enforced as an
error, not a warning.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from encrypt.sources import InputError
from shards import storage


class DecodeError(InputError):
    """The file is not a usable image; the message is the reason (no path: callers add it)."""


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """`img` as 8-bit L (channels 1) or RGB (3): alpha on white, palette, CMYK, 16-bit scaled."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img)
        scale = 257.0 if arr.max(initial=0) > 255 or img.mode.startswith("I;16") else 1.0
        img = Image.fromarray(np.clip(np.rint(arr / scale), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "RGBA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


ORIENTATION = 0x0112  # EXIF tag: how a viewer turns the stored pixels upright
TRANSPOSES = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
"""EXIF orientation -> the transpose that makes stored pixels upright (as ImageOps.exif_transpose)."""


@contextlib.contextmanager
def opened(source: Path | str | bytes) -> Iterator[Image.Image]:
    """The file opened (header only) by Pillow, every failure inside the block a DecodeError.

    The decompression-bomb check runs here, on the size the header declares, before any pixel
    is decoded; Pillow's warning is an error too. A URL source (object store) is one GET.
    """
    try:
        if isinstance(source, str) and storage.is_url(source):
            source = storage.read_bytes(source)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                yield img
    except DecodeError:  # already one of ours (too small, empty): never re-worded below
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"over the decompression-bomb limit ({exc.__class__.__name__})") from None
    except UnidentifiedImageError:
        raise DecodeError("not a recognised image format") from None
    except IsADirectoryError:
        raise DecodeError("is a directory, not a file") from None
    except PermissionError:
        raise DecodeError("unreadable (permission denied)") from None
    except FileNotFoundError:
        raise DecodeError("missing or a broken symlink") from None
    except OSError as exc:
        reason = str(exc).split("\n")[0] or exc.__class__.__name__
        if "truncated" in reason:
            reason = "truncated image data"
        raise DecodeError(f"cannot decode: {reason}") from None
    except (ValueError, SyntaxError) as exc:  # malformed headers surface as these in Pillow
        raise DecodeError(f"cannot decode: {exc.__class__.__name__}") from None


def orientation(img: Image.Image) -> int:
    """The image's EXIF orientation, 1 (upright) when it has none or a meaningless one."""
    value = img.getexif().get(ORIENTATION, 1)
    return value if value in TRANSPOSES else 1


def check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")


def as_pixels(img: Image.Image) -> np.ndarray:
    """H×W×C uint8 of an L or RGB image (one copy, out of Pillow's memory)."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DecodeError("empty image (zero width or height)")
    return np.ascontiguousarray(arr)


def decode_image(source: Path | str | bytes, channels: int = 3) -> np.ndarray:
    """Return H×W×channels uint8 pixels of the file (or its bytes), upright and without metadata."""
    check_channels(channels)
    with opened(source) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        img = to_mode(img, channels)
        return as_pixels(img)
