"""The image ciphers of arXiv 2306.03679, as pure array transforms with no keys inside.

Keys only choose the permutation and the turns (keys/derive.py); everything here is a
reshape, a gather or a mean, so the same code serves encryption, decryption, the attacks and
the tests. `CIPHERS` holds one entry per mode of the table (shards.modes): its transform, its
inverse and the one function that asks a dataset key for a sample's secrets, so the job,
decryption and the audit cannot derive them differently. This module is also the one numpy
implementation of the D4 turn group (`turn`, `compose`, `dihedral_inverse`). Images are
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
- orient_tiles: each tile turned by its own element of the dihedral group D4 (8 flips and
               quarter turns), drawn per image; models use an embedding invariant to D4.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

from shards.errors import PatchveilError
from shards.modes import MODES, Mode, mode_of

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
    x = x.reshape(*lead, rows, k, sub_patch, cols, k, sub_patch, c)
    if x.dtype == np.uint8 and k * k * 255 < 2**16:
        # k² strided adds into uint16: the same integer sums, ~4x faster than a multi-axis sum
        sums = np.zeros((*lead, rows, sub_patch, cols, sub_patch, c), np.uint16)
        for i in range(k):
            for j in range(k):
                sums += x[..., i, :, :, j, :, :]
    else:
        acc = np.uint32 if np.issubdtype(x.dtype, np.integer) else np.float64
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


def turn(tokens: np.ndarray, k: int) -> np.ndarray:
    """Apply D4 element k to the (t, t) axes of (..., t, t, C) tiles.

    The one numpy definition of the group's numbering; train.models.dihedral.turn_tiles is
    its torch twin (train may not import encrypt) and a test holds the two equal.
    """
    if k >= 4:
        tokens = tokens[..., :, ::-1, :]
    return np.rot90(tokens, k % 4, axes=(-3, -2))


def dihedral_inverse(k: int) -> int:
    """The element that undoes k: mirrors are their own inverse, turns go back."""
    return k if k >= 4 else (-k) % 4


def dihedral_relabellings(tile: int, channels: int = 1) -> list[np.ndarray]:
    """The 8 permutations of a tile's t·t·C value slots made by turning it: slot j of the
    turned tile holds slot g[j] of the original. Lets torch code turn tiles with a gather."""
    idx = np.arange(tile * tile * channels).reshape(1, tile, tile, channels)
    return [np.ascontiguousarray(turn(idx, k)[0]).reshape(-1) for k in range(DIHEDRAL)]


@lru_cache(maxsize=1)
def dihedral_matrices() -> np.ndarray:
    """(8, 2, 2) integer matrices: how element k moves a (row, col) offset on a grid.

    Read off `turn` itself, so grid moves and tile turns always agree.
    """
    grid = np.arange(9).reshape(1, 3, 3, 1)
    out = np.zeros((DIHEDRAL, 2, 2), dtype=np.int64)
    for k in range(DIHEDRAL):
        turned = turn(grid, k)[0, ..., 0]
        for axis, source in ((0, 7), (1, 5)):  # the cell below and the cell right of the centre
            r, c = np.argwhere(turned == source)[0]
            out[k, :, axis] = (r - 1, c - 1)
    return out


@lru_cache(maxsize=1)
def _compose_table() -> np.ndarray:
    mats = dihedral_matrices()
    table = np.zeros((DIHEDRAL, DIHEDRAL), dtype=np.int64)
    for a in range(DIHEDRAL):
        for b in range(DIHEDRAL):
            product = mats[a] @ mats[b]
            table[a, b] = next(k for k in range(DIHEDRAL) if np.array_equal(mats[k], product))
    return table


def compose(a, b):
    """D4 product: turning by b, then by a, equals turning by compose(a, b) (arrays allowed)."""
    return _compose_table()[a, b]


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
            out[chosen] = turn(tokens[chosen], element)
    return _untile(out, squeeze, rows, cols)


def unorient_tiles(img: np.ndarray, orientations, tile: int) -> np.ndarray:
    """Undo orient_tiles with the same orientations (byte-exact)."""
    inverse = np.vectorize(dihedral_inverse, otypes=[np.intp])(np.asarray(orientations, dtype=np.intp))
    return orient_tiles(img, inverse, tile)


def mix_shuffle_orient(img: np.ndarray, perm, orientations, patch: int, sub_patch: int) -> np.ndarray:
    """mix-shuffle, then turn stored tile i by D4 element orientations[i]."""
    return orient_tiles(mix_shuffle(img, perm, patch, sub_patch), orientations, sub_patch)


# -- one entry per mode ----------------------------------------------------------------------

@dataclass(frozen=True)
class Secrets:
    """One sample's keyed draws: the tile permutation and the tile turns (None when unused)."""

    perm: np.ndarray | None = None
    turns: np.ndarray | None = None


def keyed_secrets(keys, split: str, sample_id: str, geometry) -> Secrets:
    """The secrets of one stored sample: the one place they are drawn, for the job, decrypt and audit.

    `geometry` is a shards.manifest.CipherSpec (mode, patch, image_size). `keys` is whatever
    holds the sample's seeds (this module holds no keys): a keys.derive.ReleaseKey
    (derivation 2), a DatasetKey (derivation 1, old releases), or a worker's `ShardKeys`. A
    keyed crop view has its own sample id (encrypt.plan.sample_key), so the view is bound.
    """
    n, turns = mode_of(geometry.mode).draws(geometry.image_size, geometry.patch)
    return draw_secrets(keys, split, sample_id, n, turns)


def draw_secrets(keys, split: str, sample_id: str, permutation_length: int, turns: int) -> Secrets:
    """The keyed draws themselves (0: none); research rows of the benchmarks call it directly."""
    if not permutation_length and not turns:  # keyless modes: no seed is needed, none derived
        return Secrets(None, None)
    seeds = keys.sample_keys(split, sample_id)
    perm = np.asarray(seeds.permutation(permutation_length), dtype=np.intp) if permutation_length else None
    orientations = np.asarray(seeds.orientations(turns), dtype=np.intp) if turns else None
    return Secrets(perm, orientations)


class ShardKeys:
    """What a shard task is given instead of a key: the seeds of its own samples only.

    Computed on the owner's driver (`for_samples`), so neither the dataset key nor the release
    subkey travels to a worker, Ray's object store or the network; a seed is an HMAC output
    and opens nothing but its sample. Asking for a sample of another shard fails.
    """

    __slots__ = ("_seeds",)

    def __init__(self, seeds: dict) -> None:
        self._seeds = dict(seeds)

    @classmethod
    def for_samples(cls, keys, samples) -> ShardKeys:
        """The seeds of `samples` ((split, sample id) pairs) from the release's keys."""
        return cls({(split, sid): keys.sample_keys(split, sid) for split, sid in samples})

    def __repr__(self) -> str:
        return f"ShardKeys(<{len(self._seeds)} samples>)"

    def __reduce__(self):
        return (ShardKeys, (self._seeds,))

    def sample_keys(self, split: str, sample_id: str):
        try:
            return self._seeds[(split, sample_id)]
        except KeyError:
            raise KeyError(f"sample {sample_id} of split {split} is not in this shard's keys") from None


class DerivationError(PatchveilError):
    """A release's manifest names a derivation this tool does not know, or its salt is missing."""


def derivation_of(manifest) -> tuple[int, str | None]:
    """(derivation version, release id) a manifest records; (1, None) for releases before version 2."""
    version = manifest.extra.get("derivation", 1)
    release = manifest.extra.get("release")
    if version == 1 and release is None:
        return 1, None
    if version == 2 and isinstance(release, str):
        return 2, release
    raise DerivationError(f"manifest extra.derivation {str(version)[:20]!r} (release {str(release)[:40]!r}) "
                          "is not a key derivation this tool knows (1 or 2 with a release id); upgrade patchveil")


def release_keys(keystore, manifest):
    """The keys a release's secrets are drawn from, as its manifest's derivation says.

    Derivation 1: the dataset key itself. Derivation 2: the release subkey, rebuilt from the
    salt and binding the owner's sealed index keeps for that release; a binding that does not
    match the signed cipher spec and task is refused.
    """
    from keys.index import load_release

    version, release = derivation_of(manifest)
    dataset_key = keystore.dataset_key(manifest.dataset_id, manifest.dataset_key_id)
    if version == 1:
        return dataset_key
    salt, binding = load_release(keystore, manifest.dataset_id, manifest.dataset_key_id, release)
    if binding.get("cipher") != manifest.cipher.to_dict() or binding.get("task") != manifest.task:
        raise DerivationError(f"release {release}: the sealed index's settings differ from the signed manifest's "
                              "cipher or task")
    keys = dataset_key.release_key(binding, salt)
    if keys.release_id != release:
        raise DerivationError(f"release {release}: the sealed index's salt does not belong to it")
    return keys


Transform = Callable[[np.ndarray, Secrets, int, "int | None"], np.ndarray]


@dataclass(frozen=True)
class Cipher:
    """A mode's transform, its inverse (None: nothing keyed to undo) and its secrets."""

    mode: Mode
    encrypt: Transform
    decrypt: Transform | None
    secrets: Callable[..., Secrets] = keyed_secrets


def _turns(s: Secrets) -> np.ndarray:
    if s.turns is None:
        raise ValueError("mode mix-shuffle-orient needs the keyed tile orientations")
    return s.turns


CIPHERS: dict[str, Cipher] = {
    "shuffle": Cipher(MODES["shuffle"],
                      encrypt=lambda img, s, p, sp: shuffle(img, s.perm, p),
                      decrypt=lambda img, s, p, sp: unshuffle(img, s.perm, p)),
    "mix": Cipher(MODES["mix"], encrypt=lambda img, s, p, sp: mix(img, p, sp), decrypt=None),
    "mix-shuffle": Cipher(MODES["mix-shuffle"],
                          encrypt=lambda img, s, p, sp: mix_shuffle(img, s.perm, p, sp),
                          decrypt=lambda img, s, p, sp: unshuffle_mixed(img, s.perm, sp)),
    "mix-shuffle-orient": Cipher(
        MODES["mix-shuffle-orient"],
        encrypt=lambda img, s, p, sp: mix_shuffle_orient(img, s.perm, _turns(s), p, sp),
        decrypt=lambda img, s, p, sp: unshuffle_mixed(unorient_tiles(img, _turns(s), sp), s.perm, sp)),
    "none": Cipher(MODES["none"], encrypt=lambda img, s, p, sp: np.asarray(img), decrypt=None),
}


def cipher_of(mode: str) -> Cipher:
    """The entry of a mode; ValueError naming the modes otherwise."""
    if mode not in CIPHERS:
        raise ValueError(f"unknown cipher mode {mode!r}; choose one of {', '.join(CIPHERS)}")
    return CIPHERS[mode]


def encrypt_image(img: np.ndarray, mode: str, perm, patch: int, sub_patch: int | None,
                  orientations=None) -> np.ndarray:
    """Apply one mode; perm (and orientations) are ignored by modes that do not use them."""
    return cipher_of(mode).encrypt(img, Secrets(perm, orientations), patch, sub_patch)


def decrypt_image(stored: np.ndarray, mode: str, perm, patch: int, sub_patch: int | None,
                  orientations=None) -> np.ndarray:
    """Undo a keyed mode: the plain image for shuffle, the mixed image for the mixing modes."""
    undo = cipher_of(mode).decrypt
    if undo is None:
        raise ValueError(f"mode {mode!r} has no key to undo")
    return undo(stored, Secrets(perm, orientations), patch, sub_patch)
