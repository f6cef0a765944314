"""The third round's per-tile value transforms do what docs/privacy.md says, on real images."""
from __future__ import annotations

import os

import numpy as np

from conftest import load_fashion_mnist
from encrypt import ciphers
from keys.derive import DatasetKey
from research import tile_stats


def mixed(count: int = 40) -> np.ndarray:
    images = np.pad(load_fashion_mnist("test", count)[0], ((0, 0), (2, 2), (2, 2)))[..., None]
    return ciphers.mix(images, 4, 2)


def seeds(key: DatasetKey, count: int, purpose: str = "research/affine/val") -> list[bytes]:
    return [key.sample_seed(purpose, f"val-{i}") for i in range(count)]


def test_keyed_draws_are_deterministic_per_seed_and_differ_between_seeds():
    key = DatasetKey("test-tile-stats", os.urandom(32))
    a, b = seeds(key, 2)
    assert np.array_equal(tile_stats.keyed_uniforms(a, 100), tile_stats.keyed_uniforms(a, 100))
    assert not np.array_equal(tile_stats.keyed_uniforms(a, 100), tile_stats.keyed_uniforms(b, 100))
    z = tile_stats.keyed_normals(a, 20000)
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05


def test_the_owner_undoes_the_keyed_affine_up_to_rounding():
    x = mixed()
    s = seeds(DatasetKey("test-tile-stats", os.urandom(32)), len(x))
    stored = tile_stats.keyed_affine(x, 2, s, 0.5)
    assert not np.array_equal(stored, x)
    assert np.abs(tile_stats.undo_affine(stored, 2, s, 0.5).astype(int) - x).max() <= 1


def test_normalised_tiles_keep_no_mean_and_eroded_tiles_no_edges():
    x = mixed()
    tiles = ciphers.to_tokens(tile_stats.normalise_tiles(x, 2).astype(float), 2)
    assert np.abs(tiles.mean(axis=(-3, -2, -1)) - tile_stats.NORM_MEAN).max() <= 1
    images = np.pad(load_fashion_mnist("test", 10)[0], ((0, 0), (2, 2), (2, 2)))[..., None]
    eroded = ciphers.to_tokens(tile_stats.erode_tiles(images, 4, 1), 4)
    assert not eroded[..., 0, :, :].any() and not eroded[..., :, 0, :].any()
    assert tile_stats.interiors(images, 4, 1).shape == (10, 16, 16, 1)


def test_keyed_noise_has_its_sigma_where_nothing_clips():
    x = np.full((4, 16, 16, 1), 128, np.uint8)
    s = seeds(DatasetKey("test-tile-stats", os.urandom(32)), len(x), "research/noise/val")
    assert abs((tile_stats.keyed_noise(x, 8, s).astype(float) - 128).std() - 8) < 0.6
