"""The learned position attacker on real Fashion-MNIST and real photos."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from audit.attacks.learned import (PositionAttacker, attack, hungarian_placement, public_photos,
                                   refine_placement, train_position_attacker)
from audit.metrics import direct_accuracy, neighbour_accuracy
from research.recognize import resize_batch
from conftest import load_fashion_mnist
from encrypt.ciphers import shuffle, to_tokens
from keys.derive import DatasetKey

TILE, GRID = 4, (8, 8)  # the project's small geometry: 32 px, patch 4
N = GRID[0] * GRID[1]


def throwaway_permutations(count: int, n: int) -> np.ndarray:
    """Cipher permutations from a fresh, discarded key, as the privacy audit draws them."""
    key = DatasetKey("audit", os.urandom(32))
    return np.array([key.permutation(n, "test", f"sample-{i}") for i in range(count)])


@pytest.fixture(scope="module")
def attacker() -> PositionAttacker:
    public, _ = load_fashion_mnist("train", 6000)  # public: the train split, victims: test
    return train_position_attacker(resize_batch(public, 32), TILE, GRID, steps=200,
                                   batch_size=32, dim=48, depth=2, heads=4, seed=0)


@pytest.fixture(scope="module")
def victims() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    plain, _ = load_fashion_mnist("test", 200)
    plain = resize_batch(plain, 32)[..., None]
    perms = throwaway_permutations(len(plain), N)
    return plain, perms, shuffle(plain, perms, TILE)


def test_learned_attacker_beats_chance_by_a_wide_margin_on_shuffled_fashion_mnist(attacker, victims):
    plain, perms, encrypted = victims
    placements = attack(attacker, encrypted, TILE, GRID)
    direct = np.mean([direct_accuracy(p, q) for p, q in zip(placements, perms)])
    neighbour = np.mean([neighbour_accuracy(p, q, GRID) for p, q in zip(placements, perms)])
    # Chance is 1/64 for both; the centred items give the attacker a strong position prior.
    assert direct > 5 / N, direct
    assert neighbour > 3 / N, neighbour
    # What it puts back is closer to the original than the ciphertext is.
    recon = shuffle(encrypted, placements, TILE)
    err_recon = np.abs(recon.astype(int) - plain).mean()
    err_cipher = np.abs(encrypted.astype(int) - plain).mean()
    assert err_recon < 0.8 * err_cipher, (err_recon, err_cipher)


def test_every_placement_is_a_permutation(attacker, victims):
    _, _, encrypted = victims
    placements = attack(attacker, encrypted[:20], TILE, GRID)
    assert placements.shape == (20, N)
    for p in placements:
        assert np.array_equal(np.sort(p), np.arange(N))


def test_position_model_sees_a_bag_of_tiles(victims):
    """No position embedding: shuffling the input tiles shuffles the per-tile outputs alike."""
    plain, perms, encrypted = victims
    torch.manual_seed(0)
    model = PositionAttacker(TILE, GRID, 1, dim=32, depth=2, heads=2).eval()
    to_input = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0  # noqa: E731
    with torch.no_grad():
        on_plain = model(to_input(plain[:4]))
        on_shuffled = model(to_input(encrypted[:4]))
    expected = torch.stack([on_plain[i, perms[i]] for i in range(4)])
    torch.testing.assert_close(on_shuffled, expected, atol=1e-4, rtol=1e-4)


def test_hungarian_placement_maximises_total_log_probability():
    rng = np.random.default_rng(3)
    log_probs = np.log(rng.dirichlet(np.ones(6), size=6))
    placement = hungarian_placement(log_probs)
    best = log_probs[placement, np.arange(6)].sum()
    from itertools import permutations
    brute = max(log_probs[list(p), np.arange(6)].sum() for p in permutations(range(6)))
    assert best == pytest.approx(brute)


def test_refinement_with_the_solver_repairs_a_noisy_position_model(photos):
    """A position model right only ~25% of the time, plus the solver's seams on real photo
    tiles, puts nearly every 16 px tile of a shuffled photo back."""
    rng = np.random.default_rng(0)
    for name in ("coffee", "chelsea"):
        perm = throwaway_permutations(1, 196)[0]
        encrypted = shuffle(photos[name], perm, 16)
        scores = rng.normal(0.0, 1.0, (196, 196))
        scores[np.arange(196), perm] += 2.0
        log_probs = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
        alone = hungarian_placement(log_probs)
        refined = refine_placement(log_probs, to_tokens(encrypted, 16), (14, 14))
        assert direct_accuracy(alone, perm) < 0.4
        assert direct_accuracy(refined, perm) > 0.9, name
        assert neighbour_accuracy(refined, perm, (14, 14)) > 0.9, name


def test_refinement_does_not_trust_blank_tiles(attacker, victims):
    """Fashion-MNIST's black tiles fit each other perfectly; the solver's ties must not
    override the position model."""
    _, perms, encrypted = victims
    alone = attack(attacker, encrypted[:60], TILE, GRID)
    refined = attack(attacker, encrypted[:60], TILE, GRID, refine=True)
    for p in refined:
        assert np.array_equal(np.sort(p), np.arange(N))
    direct = lambda ps: np.mean([direct_accuracy(p, q) for p, q in zip(ps, perms)])  # noqa: E731
    neighbour = lambda ps: np.mean([neighbour_accuracy(p, q, GRID) for p, q in zip(ps, perms)])  # noqa: E731
    assert direct(refined) > 0.75 * direct(alone), (direct(refined), direct(alone))
    assert neighbour(refined) > neighbour(alone), (neighbour(refined), neighbour(alone))


def test_public_photos_exclude_the_victim_photos():
    from skimage import data

    public = public_photos()
    assert len(public) >= 10
    assert all(p.ndim == 3 and p.shape[2] == 3 and p.dtype == np.uint8 for p in public)
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry"):
        victim = getattr(data, name)()[..., :3]
        assert not any(p.shape == victim.shape and np.array_equal(p, victim) for p in public), name


def test_bad_input_is_refused_with_a_clear_message(attacker, victims):
    _, _, encrypted = victims
    with pytest.raises(ValueError, match="trained for tile 4"):
        attack(attacker, encrypted, 2, (16, 16))
    with pytest.raises(ValueError, match="do not fit the attacker"):
        attack(attacker, encrypted[:, :16, :16], TILE, GRID)
    tiny = train_position_attacker(np.zeros((4, 16, 16), np.uint8), 2, (8, 8), steps=1,
                                   batch_size=2, dim=8, depth=1, heads=1)
    with pytest.raises(ValueError, match="at least 3 px"):
        attack(tiny, np.zeros((1, 16, 16), np.uint8), 2, (8, 8), refine=True)
    with pytest.raises(ValueError, match="grid of at least 2 tiles"):
        train_position_attacker(np.zeros((4, 16, 16), np.uint8), 16, (1, 1), steps=1)
    with pytest.raises(ValueError, match="sub-patch 3 does not divide patch 4"):
        train_position_attacker(np.zeros((4, 32, 32), np.uint8), 3, (8, 8), steps=1, mixed_from_patch=4)


def test_public_corpus_reads_a_folder_of_photos_once_each(tmp_path):
    """The corpus loader on real photos laid out as wallpaper packages ship them."""
    from PIL import Image
    from skimage import data

    from audit.attacks.learned import corpus_files, public_corpus

    coffee, rocket = data.coffee(), data.rocket()
    kde = tmp_path / "wallpapers" / "Coffee" / "contents" / "images"
    kde.mkdir(parents=True)
    Image.fromarray(coffee).save(kde / "600x400.png")  # the same picture at two sizes
    Image.fromarray(coffee).resize((300, 200)).save(kde / "300x200.png")
    Image.fromarray(rocket).save(tmp_path / "rocket.jpg", quality=95)
    Image.fromarray(rocket).resize((100, 60)).save(tmp_path / "tiny.png")  # too small to crop 224 px from
    (tmp_path / "vector.svg").write_text("<svg/>")
    assert [p.name for p in corpus_files(tmp_path)] == ["rocket.jpg", "tiny.png", "600x400.png"]
    corpus = public_corpus([tmp_path], max_side=320)
    assert [p.shape for p in corpus] == [(320, 480, 3), (320, 480, 3)]
    assert all(p.dtype == np.uint8 for p in corpus)
    with pytest.raises(ValueError, match="no photos"):
        public_corpus([tmp_path / "wallpapers"], min_side=1000)
