"""The per-dataset tile scramble: a candidate cipher measured in docs/privacy.md, not a mode.

One fixed permutation of the t·t·C values inside every tile, the same for every tile of every
image of a dataset. A linear patch embedding absorbs it exactly; the statistics attack
(`research.statistics_attack`) reads it back from a few stored images, so it did not ship.
"""
from __future__ import annotations

import numpy as np

from encrypt.ciphers import from_tokens, to_tokens


def tile_grid(img: np.ndarray, tile: int) -> tuple[np.ndarray, bool, int, int]:
    """(tokens (..., N, t, t, C), squeeze flag, rows, cols) of an image or batch."""
    x = np.asarray(img)
    squeeze = x.ndim == 2  # H×W grayscale; anything else ends in a channel axis
    if squeeze:
        x = x[..., None]
    h, w = x.shape[-3], x.shape[-2]
    return to_tokens(x, tile), squeeze, h // tile, w // tile  # to_tokens checks the grid


def scramble_length(tile: int, channels: int) -> int:
    """Values inside one tile: the length of a scramble permutation."""
    return tile * tile * channels


def scramble_tiles(img: np.ndarray, perm, tile: int) -> np.ndarray:
    """Reorder the t·t·C values of every tile by one permutation: out value k = in value perm[k].

    Values are numbered row-major over (row, column, channel) inside the tile.
    """
    tokens, squeeze, rows, cols = tile_grid(img, tile)
    perm = np.asarray(perm, dtype=np.intp)
    size = scramble_length(tile, tokens.shape[-1])
    if perm.shape != (size,):
        raise ValueError(f"scramble permutation has {perm.size} entries, a {tile}x{tile}x{tokens.shape[-1]} "
                         f"tile has {size} values")
    flat = tokens.reshape(*tokens.shape[:-3], size)[..., perm]
    out = from_tokens(flat.reshape(tokens.shape), rows, cols)
    return out[..., 0] if squeeze else out


def unscramble_tiles(img: np.ndarray, perm, tile: int) -> np.ndarray:
    """Undo scramble_tiles with the same permutation (byte-exact)."""
    return scramble_tiles(img, np.argsort(np.asarray(perm, dtype=np.intp)), tile)


