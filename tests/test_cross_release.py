"""Two releases of one real image: each draws from its own release subkey, so their secrets are
independent, and an attacker holding both re-creates the weaker release's puzzle, no more."""
from __future__ import annotations

import os

import numpy as np
import pytest

from audit.attacks.jigsaw import reconstruct
from audit.metrics import neighbour_accuracy
from conftest import load_fashion_mnist, natural_photos
from encrypt import ciphers
from keys.derive import DatasetKey, new_release_salt
from research import cross_release

TILES = 64  # Fashion-MNIST padded to 32 px, patch 4: an 8×8 token grid


@pytest.fixture(scope="module")
def fmnist():
    images = np.pad(load_fashion_mnist("test", 300)[0], ((0, 0), (2, 2), (2, 2)))[..., None]
    return images, [f"fmnist/test-{i}.png" for i in range(len(images))]


@pytest.fixture(scope="module")
def dataset_key():
    return DatasetKey("test-cross-release", os.urandom(32))


def perms(secrets) -> np.ndarray:
    return np.stack([s.perm for s in secrets])


def test_the_same_settings_twice_draw_independent_permutations(fmnist, dataset_key):
    images, paths = fmnist
    one = cross_release.release(dataset_key, "mix-shuffle", 4, 2, 32, 1, new_release_salt())
    two = cross_release.release(dataset_key, "mix-shuffle", 4, 2, 32, 1, new_release_salt())
    stored_1, secrets_1 = cross_release.encrypt(images, *one, paths)
    stored_2, secrets_2 = cross_release.encrypt(images, *two, paths)
    # 300 images × 64 positions: independent permutations agree at 1/64 = 0.0156 (sd 0.0009)
    assert abs(cross_release.equal_positions(perms(secrets_1), perms(secrets_2)) - 1 / TILES) < 0.006
    assert not {one[0].sample_id(p) for p in paths} & {two[0].sample_id(p) for p in paths}
    assert np.mean([np.array_equal(a, b) for a, b in zip(stored_1, stored_2)]) < 0.05
    # Each release decrypts with its own secrets to the same mixed image, not with the other's.
    cipher, mixed = ciphers.cipher_of("mix-shuffle"), ciphers.mix(images, 4, 2)
    assert all(np.array_equal(cipher.decrypt(s, k, 4, 2), m) for s, k, m in zip(stored_1, secrets_1, mixed))
    assert all(np.array_equal(cipher.decrypt(s, k, 4, 2), m) for s, k, m in zip(stored_2, secrets_2, mixed))
    assert np.mean([np.array_equal(cipher.decrypt(s, k, 4, 2), m)
                    for s, k, m in zip(stored_2, secrets_1, mixed)]) < 0.05


def test_two_modes_of_one_image_draw_independent_permutations(fmnist, dataset_key):
    images, paths = fmnist
    salt = new_release_salt()  # even one salt: the binding (the cipher spec) separates them
    shuffled = cross_release.release(dataset_key, "shuffle", 4, None, 32, 1, salt)
    mixed = cross_release.release(dataset_key, "mix-shuffle", 4, 2, 32, 1, salt)
    a = perms(cross_release.encrypt(images, *shuffled, paths)[1])
    b = perms(cross_release.encrypt(images, *mixed, paths)[1])
    assert a.shape == b.shape == (len(images), TILES)
    assert abs(cross_release.equal_positions(a, b) - 1 / TILES) < 0.006


def test_one_release_rebuilt_draws_the_same_permutations(fmnist, dataset_key):
    """The control: independence comes from the salt and binding, not from chance."""
    images, paths = fmnist
    salt = new_release_salt()
    a = cross_release.release(dataset_key, "mix-shuffle", 4, 2, 32, 1, salt)
    b = cross_release.release(dataset_key, "mix-shuffle", 4, 2, 32, 1, salt)
    assert np.array_equal(perms(cross_release.encrypt(images[:20], *a, paths[:20])[1]),
                          perms(cross_release.encrypt(images[:20], *b, paths[:20])[1]))


def test_an_attacker_with_two_releases_gets_the_weaker_ones_puzzle_only(dataset_key):
    photos = natural_photos(224)
    victims = np.stack([photos["astronaut"], photos["chelsea"]])
    names = ["photos/astronaut.png", "photos/chelsea.png"]
    side = 14
    made = {n: cross_release.encrypt(victims, *cross_release.release(dataset_key, mode, 16, sub, 224, 3,
                                                                       new_release_salt()), names)
            for n, mode, sub in (("S", "shuffle", None), ("M1", "mix-shuffle", 8), ("M2", "mix-shuffle", 8))}
    tile = {"S": 16, "M1": 8, "M2": 8}
    solved = {n: [reconstruct(img, tile[n], (side, side))[1] for img in made[n][0]] for n in made}

    def score(n, placements):
        return float(np.mean([neighbour_accuracy(p, s.perm, (side, side)) for p, s in zip(placements, made[n][1])]))

    tokens = {n: ciphers.to_tokens(made[n][0], tile[n]) for n in made}
    alone = {n: score(n, solved[n]) for n in made}
    # shuffle + mix-shuffle: the shuffle release's solution carried over by content.
    carried = [cross_release.pair_placement(p, ciphers.mix(t, 16, 8), m)
               for p, t, m in zip(solved["S"], tokens["S"], tokens["M1"])]
    assert alone["S"] > 0.8 and alone["M1"] < 0.3  # the weak and the strong release
    assert score("M1", carried) <= alone["S"] + 0.01
    # mix-shuffle twice: the other release's solution carried over is that release's result.
    carried = [cross_release.pair_placement(p, t, m) for p, t, m in zip(solved["M2"], tokens["M2"], tokens["M1"])]
    assert score("M1", carried) <= max(alone["M1"], alone["M2"]) + 0.01
