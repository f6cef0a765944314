"""The statistics attack reads a per-dataset tile scramble back from stored images alone."""
from __future__ import annotations

import numpy as np
import pytest

from research.statistics_attack import (recover_scramble, scramble_accuracy, tile_correlation,
                                      undo_scramble, upright)
from conftest import load_fashion_mnist
from encrypt import ciphers
from research.scramble import scramble_tiles

TILE = 4  # Fashion-MNIST at 32 px, patch 4: an 8×8 grid of 16-value tiles


def padded(images: np.ndarray) -> np.ndarray:
    return np.pad(images, ((0, 0), (2, 2), (2, 2)))[..., None]


@pytest.fixture(scope="module")
def fmnist():
    """Victims (the release: Fashion-MNIST test) and the attacker's own plain images (train)."""
    victims = padded(load_fashion_mnist("test", 60)[0])
    public = padded(load_fashion_mnist("train", 300)[0])
    return victims, public


def release(images: np.ndarray, scramble: np.ndarray, *, turned: bool, seed: int) -> tuple[np.ndarray, ...]:
    """Scramble every tile, shuffle the tiles, optionally turn each: the candidate modes."""
    rng = np.random.default_rng(seed)  # stands in for the keyed draws of a release
    perms = np.stack([rng.permutation(64) for _ in images])
    turns = rng.integers(0, 8, (len(images), 64))
    stored = ciphers.shuffle(scramble_tiles(images, scramble, TILE), perms, TILE)
    if turned:
        stored = ciphers.orient_tiles(stored, turns, TILE)
    return stored, perms, turns


def test_ten_stored_images_give_the_scramble_back_exactly(fmnist):
    victims, public = fmnist
    scramble = np.random.default_rng(1).permutation(16)
    stored, perms, _ = release(victims, scramble, turned=False, seed=2)
    estimate = recover_scramble(stored[:10], public, TILE)
    assert scramble_accuracy(estimate.perm, scramble, TILE, 1) == 1.0
    # Undone, a stored image the attack never saw is a plain `shuffle` image again, byte for
    # byte (once turned upright as a whole), open to the jigsaw and learned attacks.
    image = undo_scramble(stored[40], upright(estimate, scramble, TILE, 1), TILE)
    assert np.array_equal(image, ciphers.shuffle(victims[40], perms[40], TILE))


def test_the_estimate_is_the_release_scramble_not_any_scramble(fmnist):
    victims, public = fmnist
    scramble, other = (np.random.default_rng(s).permutation(16) for s in (3, 4))
    stored, _, _ = release(victims[:20], scramble, turned=False, seed=5)
    estimate = recover_scramble(stored, public, TILE)
    assert scramble_accuracy(estimate.perm, scramble, TILE, 1) == 1.0
    assert scramble_accuracy(estimate.perm, other, TILE, 1) < 0.5


def test_per_tile_turns_are_aligned_away_with_twenty_images(fmnist):
    victims, public = fmnist
    scramble = np.random.default_rng(6).permutation(16)
    stored, perms, _ = release(victims, scramble, turned=True, seed=7)
    estimate = recover_scramble(stored[:20], public, TILE, oriented=True)
    assert estimate.oriented
    assert scramble_accuracy(estimate.perm, scramble, TILE, 1, oriented=True) == 1.0
    image = undo_scramble(stored[50], upright(estimate, scramble, TILE, 1), TILE)
    # Each tile's turn is chosen as the one that unscrambles to the smoothest tile; tiles
    # with texture come back exactly as shuffled (up to one global turn of every tile).
    truth = ciphers.to_tokens(ciphers.shuffle(victims[50], perms[50], TILE), TILE)
    got = ciphers.to_tokens(image, TILE)
    textured = truth.reshape(64, -1).std(axis=1) > 20
    best = max(np.mean([np.array_equal(ciphers.turn(g[None], k)[0], t)
                        for g, t in zip(got[textured], truth[textured])]) for k in range(8))
    assert best > 0.75


def test_turns_defeat_the_plain_statistics_attack(fmnist):
    """Control: without alignment the turned correlations do not give the scramble back."""
    victims, public = fmnist
    scramble = np.random.default_rng(6).permutation(16)
    stored, _, _ = release(victims[:20], scramble, turned=True, seed=7)
    assert scramble_accuracy(recover_scramble(stored, public, TILE).perm, scramble, TILE, 1) < 1.0


def test_two_rgb_photos_give_a_pixel_and_channel_scramble_back(photos):
    """8 px RGB tiles: 192 values, pixels and channels permuted together (16 px: see the benchmark)."""
    victims = np.stack([photos["astronaut"], photos["chelsea"]])
    public = np.stack([photos["coffee"], photos["rocket"]])  # the attacker's own colour photos
    scramble = np.random.default_rng(8).permutation(8 * 8 * 3)
    perms = np.stack([np.random.default_rng(9 + i).permutation(784) for i in range(2)])
    stored = ciphers.shuffle(scramble_tiles(victims, scramble, 8), perms, 8)
    correlation = tile_correlation(stored, 8)
    assert correlation.shape == (192, 192) and np.allclose(np.diag(correlation), 1.0)
    estimate = recover_scramble(stored, public, 8)
    assert scramble_accuracy(estimate.perm, scramble, 8, 3) == 1.0
    assert scramble_accuracy(recover_scramble(stored[:1], public, 8).perm, scramble, 8, 3) < 1.0


def test_bad_input_is_refused_with_the_reason(fmnist, photos):
    victims, public = fmnist
    rgb = np.stack([photos["astronaut"]])
    with pytest.raises(ValueError, match="stored images have 1 channels, public images 3"):
        recover_scramble(victims[:2], rgb, TILE)
    with pytest.raises(ValueError, match="only 0 tiles with any texture"):
        recover_scramble(np.zeros((3, 32, 32, 1), np.uint8), public, TILE)
    with pytest.raises(ValueError, match="expected a batch"):
        recover_scramble(np.zeros((32, 32), np.uint8), public, TILE)
