"""Per-tile value transforms that try to hide each image's tile statistics: research, not modes.

Shuffling and turning tiles only move pixels, so the multiset of stored values (and every
tile's mean and contrast) survives and a histogram matcher re-identifies every member of a
release (docs/privacy.md, "Membership"). These candidates change the values themselves,
applied to the stored image of a shipped mode (its tiles are the model's tokens):

  normalise  each tile's mean and contrast set to fixed values (keyless, so an attacker
             applies it too; the owner could only decrypt with each tile's stats stored
             encrypted beside it);
  affine     a keyed gain and offset per stored tile, g in [g_min, 1], o in [0, 255(1-g)]:
             never clipped, so the owner undoes it up to rounding (under 1/(2g) levels);
  erode      the outer ring of every tile zeroed, so tile edges do not match (lossy);
  noise      keyed Gaussian noise of sigma levels on every stored pixel, rounded and clipped
             (the owner can subtract it up to the clipping).

Keyed draws come from per-image 32-byte seeds (HMAC outputs of keys.derive) read through
the project's one keyed stream (keys.keystream.KeyStream, ChaCha20), never from `random` or
numpy's RNG.
"""
from __future__ import annotations

import numpy as np

from encrypt.ciphers import from_tokens, to_tokens
from keys.keystream import KeyStream

NORM_MEAN, NORM_STD = 128.0, 40.0


def keyed_uniforms(seed: bytes, count: int) -> np.ndarray:
    """`count` floats in (0, 1) from the seed's keystream: 32 bits each, never 0."""
    words = np.frombuffer(KeyStream(seed).read(4 * count), dtype=">u4").astype(np.float64)
    return (words + 0.5) / 2.0 ** 32


def keyed_normals(seed: bytes, count: int) -> np.ndarray:
    """`count` standard normal draws (Box-Muller over keyed_uniforms)."""
    half = (count + 1) // 2
    u = keyed_uniforms(seed, 2 * half)
    r = np.sqrt(-2.0 * np.log(u[:half]))
    z = np.concatenate([r * np.cos(2 * np.pi * u[half:]), r * np.sin(2 * np.pi * u[half:])])
    return z[:count]


def _tokens(images: np.ndarray, tile: int) -> tuple[np.ndarray, int, int]:
    x = np.asarray(images, dtype=np.float64)
    return to_tokens(x, tile), x.shape[1] // tile, x.shape[2] // tile


def _stored(tokens: np.ndarray, rows: int, cols: int) -> np.ndarray:
    return np.clip(np.rint(from_tokens(tokens, rows, cols)), 0, 255).astype(np.uint8)


def normalise_tiles(images: np.ndarray, tile: int) -> np.ndarray:
    """Every tile (per channel) shifted and stretched to mean 128, standard deviation 40;
    a flat tile becomes flat 128. Keyless: its input statistics are gone from the release."""
    t, rows, cols = _tokens(images, tile)
    mean = t.mean(axis=(-3, -2), keepdims=True)
    std = t.std(axis=(-3, -2), keepdims=True)
    scaled = np.where(std > 1e-6, (t - mean) / np.where(std > 1e-6, std, 1.0), 0.0)
    return _stored(NORM_MEAN + NORM_STD * scaled, rows, cols)


def affine_draws(seeds, tiles: int, g_min: float) -> tuple[np.ndarray, np.ndarray]:
    """(gain, offset), each N×tiles, of every stored tile of N images from their seeds."""
    u = np.stack([keyed_uniforms(s, 2 * tiles) for s in seeds])
    gain = g_min + (1.0 - g_min) * u[:, :tiles]
    return gain, u[:, tiles:] * 255.0 * (1.0 - gain)


def keyed_affine(images: np.ndarray, tile: int, seeds, g_min: float = 0.5) -> np.ndarray:
    """Each stored tile mapped by its own keyed gain and offset (one pair for all channels)."""
    t, rows, cols = _tokens(images, tile)
    gain, offset = affine_draws(seeds, t.shape[1], g_min)
    return _stored(t * gain[:, :, None, None, None] + offset[:, :, None, None, None], rows, cols)


def undo_affine(stored: np.ndarray, tile: int, seeds, g_min: float = 0.5) -> np.ndarray:
    """The owner's inverse of keyed_affine: exact up to the rounding of the stored values."""
    t, rows, cols = _tokens(stored, tile)
    gain, offset = affine_draws(seeds, t.shape[1], g_min)
    return _stored((t - offset[:, :, None, None, None]) / gain[:, :, None, None, None], rows, cols)


def erode_tiles(images: np.ndarray, tile: int, ring: int = 1) -> np.ndarray:
    """The outer `ring` pixels of every tile set to 0, so neighbouring edges cannot be matched."""
    if 2 * ring >= tile:
        raise ValueError(f"a ring of {ring} px leaves nothing of a {tile} px tile")
    t, rows, cols = _tokens(images, tile)
    inner = np.zeros_like(t)
    inner[..., ring:tile - ring, ring:tile - ring, :] = t[..., ring:tile - ring, ring:tile - ring, :]
    return _stored(inner, rows, cols)


def interiors(images: np.ndarray, tile: int, ring: int = 1) -> np.ndarray:
    """The attacker's view of eroded tiles: each tile's interior, packed edge to edge."""
    t, rows, cols = _tokens(images, tile)
    return _stored(t[..., ring:tile - ring, ring:tile - ring, :], rows, cols)


def keyed_noise(images: np.ndarray, sigma: float, seeds) -> np.ndarray:
    """Keyed Gaussian noise of `sigma` levels on every stored value, rounded and clipped."""
    x = np.asarray(images, dtype=np.float64)
    noise = np.stack([keyed_normals(s, x[0].size).reshape(x.shape[1:]) for s in seeds])
    return np.clip(np.rint(x + sigma * noise), 0, 255).astype(np.uint8)
