"""The image ciphers of arXiv 2306.03679, as pure array transforms with no keys inside.

Keys only choose the permutation (keys/derive.py); everything here is a reshape, a gather or
a mean, so the same code serves encryption, decryption, the attacks and the tests. Images are
H×W×C (H×W is accepted and kept 2-D; a 3-D array is always H×W×C, so a batch of grayscale
images is N×H×W×1) with any number of leading batch axes. Tokens are the
tiles of a row-major grid: token i sits at row i // cols, column i % cols.

- shuffle:     out token i = in token perm[i] (p×p tiles).
- mix:         each p×p patch becomes the mean of its (p/s)² s×s sub-patches; the result is
               stored as the smaller (H·s/p)×(W·s/p) image, positions kept (no key).
- mix-shuffle: mix, then shuffle the s×s tiles of the mixed image.
- mix-shuffle-orient: mix-shuffle, then turn every stored s×s tile by its own keyed element
               of D4 (`orient_tiles`); models read it with a D4-invariant embedding.

Hardened building blocks (docs/privacy.md measures every combination):
- scramble_tiles: one fixed permutation of the t·t·C values inside every tile, the same for
               every tile of every image of a dataset (a per-dataset secret). A linear patch
               embedding absorbs it exactly; a statistics attack over many images can undo it
               (audit/attacks/statistics.py).
- orient_tiles: each tile turned by its own element of the dihedral group D4 (8 flips and
               quarter turns), drawn per image; models use an embedding invariant to D4.
"""
from __future__ import annotations

import numpy as np

MODES = ("shuffle", "mix", "mix-shuffle")          # the paper's modes and their combination
HARDENED_MODES = ("mix-shuffle-orient",)          # measured in docs/privacy.md
ALL_MODES = MODES + HARDENED_MODES
ORIENTED_MODES = ("mix-shuffle-orient",)
DIHEDRAL = 8  # elements of D4: k < 4 is k quarter turns; k >= 4 mirrors first, then k - 4 turns


def _check_grid(h: int, w: int, tile: int, what: str = "patch") -> tuple[int, int]:
    if tile <= 0:
        raise ValueError(f"{what} size must be positive, got {tile}")
    if h % tile or w % tile:
        raise ValueError(f"image {h}x{w} is not divisible by {what} {tile}")
    return h // tile, w // tile


def _with_channels(img: np.ndarray) -> tuple[np.ndarray, bool]:
    """Return img with a channel axis and whether one was added (2-D input)."""
    if img.ndim < 2:
        raise ValueError(f"expected an image of shape HxW or [N]xHxWxC, got shape {img.shape}")
    if img.ndim == 2:
        return img[..., None], True
    return img, False


def to_tokens(img: np.ndarray, tile: int) -> np.ndarray:
    """(..., H, W, C) → (..., rows·cols, tile, tile, C), row-major."""
    *lead, h, w, c = img.shape
    rows, cols = _check_grid(h, w, tile)
    x = img.reshape(*lead, rows, tile, cols, tile, c)
    x = np.swapaxes(x, -4, -3)
    return x.reshape(*lead, rows * cols, tile, tile, c)


def from_tokens(tokens: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Inverse of to_tokens: (..., rows·cols, t, t, C) → (..., rows·t, cols·t, C)."""
    *lead, n, t, _, c = tokens.shape
    if n != rows * cols:
        raise ValueError(f"{n} tokens do not fill a {rows}x{cols} grid")
    x = tokens.reshape(*lead, rows, cols, t, t, c)
    x = np.swapaxes(x, -4, -3)
    return x.reshape(*lead, rows * t, cols * t, c)


def _gather_tokens(img: np.ndarray, perm: np.ndarray, tile: int) -> np.ndarray:
    x, squeeze = _with_channels(np.asarray(img))
    *_, h, w, _ = x.shape
    rows, cols = _check_grid(h, w, tile)
    tokens = to_tokens(x, tile)
    perm = np.asarray(perm, dtype=np.intp)
    n = rows * cols
    if perm.shape[-1] != n:
        raise ValueError(f"permutation has {perm.shape[-1]} entries, image {h}x{w} with tile {tile} has {n} tokens")
    if perm.ndim == 1:
        out = tokens[..., perm, :, :, :]
    else:
        # One permutation per image of the batch.
        idx = perm.reshape(*perm.shape, 1, 1, 1)
        out = np.take_along_axis(tokens, idx, axis=-4)
    out = from_tokens(out, rows, cols)
    return out[..., 0] if squeeze else out


def _inverse(perm: np.ndarray) -> np.ndarray:
    perm = np.asarray(perm, dtype=np.intp)
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.broadcast_to(np.arange(perm.shape[-1]), perm.shape), axis=-1)
    return inv


def shuffle(img: np.ndarray, perm, patch: int) -> np.ndarray:
    """Permute the patch×patch tiles: out token i = in token perm[i]."""
    return _gather_tokens(img, perm, patch)


def unshuffle(img: np.ndarray, perm, patch: int) -> np.ndarray:
    """Undo shuffle with the same permutation (byte-exact)."""
    return _gather_tokens(img, _inverse(perm), patch)


def _sub_patch_sums(img: np.ndarray, patch: int, sub_patch: int) -> tuple[np.ndarray, int, bool]:
    x, squeeze = _with_channels(np.asarray(img))
    *lead, h, w, c = x.shape
    rows, cols = _check_grid(h, w, patch)
    if sub_patch <= 0 or patch % sub_patch:
        raise ValueError(f"sub-patch {sub_patch} does not divide patch {patch}")
    k = patch // sub_patch
    acc = np.uint32 if np.issubdtype(x.dtype, np.integer) else np.float64
    x = x.reshape(*lead, rows, k, sub_patch, cols, k, sub_patch, c)
    sums = x.sum(axis=(-6, -3), dtype=acc)  # (..., rows, s, cols, s, C)
    sums = sums.reshape(*lead, rows * sub_patch, cols * sub_patch, c)
    return sums, k * k, squeeze


def mix(img: np.ndarray, patch: int, sub_patch: int) -> np.ndarray:
    """Average the sub-patches of every patch; uint8 in, uint8 out (rounded half up).

    Integer arithmetic so the result is the same on every machine.
    """
    sums, count, squeeze = _sub_patch_sums(img, patch, sub_patch)
    if np.issubdtype(sums.dtype, np.integer):
        out = ((sums + count // 2) // count).astype(np.asarray(img).dtype)
    else:
        out = (sums / count).astype(np.asarray(img).dtype)
    return out[..., 0] if squeeze else out


def mix_float(img: np.ndarray, patch: int, sub_patch: int) -> np.ndarray:
    """Exact (unrounded) float32 mix, for models and proofs that need linearity."""
    sums, count, squeeze = _sub_patch_sums(np.asarray(img, dtype=np.float64), patch, sub_patch)
    out = (sums / count).astype(np.float32)
    return out[..., 0] if squeeze else out


def mix_shuffle(img: np.ndarray, perm, patch: int, sub_patch: int) -> np.ndarray:
    """Mix, then shuffle the sub_patch×sub_patch tiles of the mixed image."""
    return shuffle(mix(img, patch, sub_patch), perm, sub_patch)


def unshuffle_mixed(img: np.ndarray, perm, sub_patch: int) -> np.ndarray:
    """Undo the shuffle of mix_shuffle, giving back the mixed image (mixing is not invertible)."""
    return unshuffle(img, perm, sub_patch)


def _tile_grid(img: np.ndarray, tile: int) -> tuple[np.ndarray, bool, int, int]:
    """(tokens (..., N, t, t, C), squeeze flag, rows, cols) of an image or batch."""
    x, squeeze = _with_channels(np.asarray(img))
    *_, h, w, _ = x.shape
    rows, cols = _check_grid(h, w, tile)
    return to_tokens(x, tile), squeeze, rows, cols


def _untile(tokens: np.ndarray, squeeze: bool, rows: int, cols: int) -> np.ndarray:
    out = from_tokens(tokens, rows, cols)
    return out[..., 0] if squeeze else out


def scramble_length(tile: int, channels: int) -> int:
    """Values inside one tile: the length of a scramble permutation."""
    return tile * tile * channels


def scramble_tiles(img: np.ndarray, perm, tile: int) -> np.ndarray:
    """Reorder the t·t·C values of every tile by one permutation: out value k = in value perm[k].

    Values are numbered row-major over (row, column, channel) inside the tile.
    """
    tokens, squeeze, rows, cols = _tile_grid(img, tile)
    perm = np.asarray(perm, dtype=np.intp)
    size = scramble_length(tile, tokens.shape[-1])
    if perm.shape != (size,):
        raise ValueError(f"scramble permutation has {perm.size} entries, a {tile}x{tile}x{tokens.shape[-1]} "
                         f"tile has {size} values")
    flat = tokens.reshape(*tokens.shape[:-3], size)[..., perm]
    return _untile(flat.reshape(tokens.shape), squeeze, rows, cols)


def unscramble_tiles(img: np.ndarray, perm, tile: int) -> np.ndarray:
    """Undo scramble_tiles with the same permutation (byte-exact)."""
    return scramble_tiles(img, _inverse(perm), tile)


def _turn(tokens: np.ndarray, k: int) -> np.ndarray:
    """Apply D4 element k to the (t, t) axes of (..., t, t, C) tiles."""
    if k >= 4:
        tokens = tokens[..., :, ::-1, :]
    return np.rot90(tokens, k % 4, axes=(-3, -2))


def dihedral_inverse(k: int) -> int:
    """The element that undoes k: mirrors are their own inverse, turns go back."""
    return k if k >= 4 else (-k) % 4


def orient_tiles(img: np.ndarray, orientations, tile: int) -> np.ndarray:
    """Turn tile i by D4 element orientations[i] (0..7); one row of orientations per image of a batch."""
    tokens, squeeze, rows, cols = _tile_grid(img, tile)
    if tile != tokens.shape[-2]:
        raise ValueError(f"orient_tiles needs square tiles, got {tokens.shape[-3:-1]}")
    k = np.asarray(orientations, dtype=np.intp)
    if k.shape[-1] != rows * cols or k.ndim > tokens.ndim - 3:
        raise ValueError(f"{k.shape[-1]} orientations for an image of {rows * cols} tiles")
    if k.size and (k.min() < 0 or k.max() >= DIHEDRAL):
        raise ValueError(f"orientations must lie in 0..{DIHEDRAL - 1}")
    k = np.broadcast_to(k, tokens.shape[:-3])
    out = np.empty_like(tokens)
    for element in range(DIHEDRAL):
        chosen = k == element
        if chosen.any():
            out[chosen] = _turn(tokens[chosen], element)
    return _untile(out, squeeze, rows, cols)


def unorient_tiles(img: np.ndarray, orientations, tile: int) -> np.ndarray:
    """Undo orient_tiles with the same orientations (byte-exact)."""
    inverse = np.vectorize(dihedral_inverse, otypes=[np.intp])(np.asarray(orientations, dtype=np.intp))
    return orient_tiles(img, inverse, tile)


def stored_size(mode: str, h: int, w: int, patch: int, sub_patch: int | None) -> tuple[int, int]:
    """Size of the stored image for a cipher applied to an h×w image."""
    _check_grid(h, w, patch)
    if mode in ("mix", "mix-shuffle", "mix-shuffle-orient"):
        if not sub_patch or patch % sub_patch:
            raise ValueError(f"sub-patch {sub_patch} does not divide patch {patch}")
        return h // patch * sub_patch, w // patch * sub_patch
    if mode in ("shuffle", "none"):
        return h, w
    raise ValueError(f"unknown cipher mode {mode!r}; choose one of {', '.join(ALL_MODES)}")


def permutation_length(mode: str, h: int, w: int, patch: int, sub_patch: int | None = None) -> int:
    """How many tokens a mode's per-image permutation has (0 for keyless modes)."""
    stored_size(mode, h, w, patch, sub_patch)
    if mode in ("shuffle", "mix-shuffle", "mix-shuffle-orient"):
        return (h // patch) * (w // patch)
    return 0


def orientation_length(mode: str, h: int, w: int, patch: int, sub_patch: int | None = None) -> int:
    """How many keyed tile turns a mode draws per image (0 for modes without turns)."""
    return permutation_length(mode, h, w, patch, sub_patch) if mode in ORIENTED_MODES else 0


def keyed_orientations(dataset_key, n: int, split: str, sample_id: str) -> np.ndarray:
    """The n secret tile turns (0..7) of one sample, from its own keyed stream.

    `dataset_key` is a keys.derive.DatasetKey (passed in: this module holds no keys). The
    stream is separate from the permutation's ("orient/" + split), so neither reveals the other.
    """
    stream = dataset_key.stream("orient/" + split, sample_id)
    return np.array(stream.randbelow_many(DIHEDRAL, n), dtype=np.intp)


def mix_shuffle_orient(img: np.ndarray, perm, orientations, patch: int, sub_patch: int) -> np.ndarray:
    """mix-shuffle, then turn stored tile i by D4 element orientations[i]."""
    return orient_tiles(mix_shuffle(img, perm, patch, sub_patch), orientations, sub_patch)


def encrypt_image(img: np.ndarray, mode: str, perm, patch: int, sub_patch: int | None,
                  orientations=None) -> np.ndarray:
    """Apply one mode; perm (and orientations) are ignored by modes that do not use them."""
    if mode == "shuffle":
        return shuffle(img, perm, patch)
    if mode == "mix":
        return mix(img, patch, sub_patch)
    if mode == "mix-shuffle":
        return mix_shuffle(img, perm, patch, sub_patch)
    if mode == "mix-shuffle-orient":
        if orientations is None:
            raise ValueError("mode mix-shuffle-orient needs the keyed tile orientations")
        return mix_shuffle_orient(img, perm, orientations, patch, sub_patch)
    if mode == "none":
        return np.asarray(img)
    raise ValueError(f"unknown cipher mode {mode!r}; choose one of {', '.join(ALL_MODES)}")


def decrypt_image(stored: np.ndarray, mode: str, perm, patch: int, sub_patch: int | None,
                  orientations=None) -> np.ndarray:
    """Undo a keyed mode: the plain image for shuffle, the mixed image for the mixing modes."""
    if mode == "shuffle":
        return unshuffle(stored, perm, patch)
    if mode == "mix-shuffle":
        return unshuffle_mixed(stored, perm, sub_patch)
    if mode == "mix-shuffle-orient":
        if orientations is None:
            raise ValueError("mode mix-shuffle-orient needs the keyed tile orientations")
        return unshuffle_mixed(unorient_tiles(stored, orientations, sub_patch), perm, sub_patch)
    raise ValueError(f"mode {mode!r} has no key to undo")
