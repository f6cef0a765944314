"""Placement and fidelity metrics: hand-made grids, and their tie to the cipher's convention."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from audit.metrics import direct_accuracy, neighbour_accuracy, psnr, recovered_positions, reidentification, ssim
from encrypt.ciphers import shuffle, unshuffle


def _placement_for(origin: list[int], perm: np.ndarray) -> np.ndarray:
    """The placement whose tile at position p came from original position origin[p]."""
    return np.argsort(perm)[np.asarray(origin)]


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def test_two_by_two_by_hand():
    # Original grid 0 1 / 2 3. Shuffled token i = original token perm[i].
    perm = np.array([1, 0, 3, 2])
    # Putting shuffled tile i at position i (no attack at all) shows the original grid
    # as 1 0 / 3 2: no row pair is right, both columns are (1 above 3, 0 above 2).
    identity = np.arange(4)
    assert recovered_positions(identity, perm).tolist() == [1, 0, 3, 2]
    assert direct_accuracy(identity, perm) == 0.0
    assert neighbour_accuracy(identity, perm, (2, 2)) == 0.5
    # The inverse permutation is the perfect answer.
    assert direct_accuracy(perm, perm) == 1.0
    assert neighbour_accuracy(perm, perm, (2, 2)) == 1.0
    # 1 2 / 0 3: "2 right of 1" is consecutive in index but 1 ends an original row.
    wrapped = _placement_for([1, 2, 0, 3], perm)
    assert direct_accuracy(wrapped, perm) == 0.25
    assert neighbour_accuracy(wrapped, perm, (2, 2)) == 0.0


def test_neighbour_accuracy_is_translation_invariant_direct_is_not():
    # Original 0 1 2 / 3 4 5; the result is the original rotated one column to the right.
    perm = np.random.default_rng(7).permutation(6)
    shifted = _placement_for([2, 0, 1, 5, 3, 4], perm)
    assert direct_accuracy(shifted, perm) == 0.0
    # Of 7 true adjacencies (4 across, 3 down), 0-1, 3-4 and all three columns survive.
    assert neighbour_accuracy(shifted, perm, (2, 3)) == pytest.approx(5 / 7)


def test_metrics_follow_the_cipher_convention(photos):
    """placement = inverse of perm is exactly what puts a shuffled photo back."""
    img = photos["chelsea"]
    perm = np.random.default_rng(0).permutation(196)
    shuffled = shuffle(img, perm, 16)
    placement = np.argsort(perm)
    # Arranging shuffled tiles by placement (out tile p = shuffled tile placement[p]) is shuffle().
    assert np.array_equal(shuffle(shuffled, placement, 16), img)
    assert np.array_equal(unshuffle(shuffled, perm, 16), img)
    assert direct_accuracy(placement, perm) == 1.0
    assert neighbour_accuracy(placement, perm, (14, 14)) == 1.0
    # Leaving the shuffled image as it is recovers almost nothing.
    assert neighbour_accuracy(np.arange(196), perm, (14, 14)) < 0.05
    assert direct_accuracy(np.arange(196), perm) < 0.05


@pytest.mark.parametrize("placement, message", [
    ([0, 1, 1, 3], "not a permutation"),
    ([0, 1, 2], "expected 4"),
    ([0.0, 1.0, 2.0, 3.0], "integer"),
])
def test_bad_placements_are_rejected(placement, message):
    with pytest.raises(ValueError, match=message):
        neighbour_accuracy(np.array(placement), np.arange(4), (2, 2))


def test_grid_must_match():
    with pytest.raises(ValueError, match="do not fill a 3x3 grid"):
        neighbour_accuracy(np.arange(4), np.arange(4), (3, 3))


def test_psnr_and_ssim_on_real_photos(photos):
    img = photos["astronaut"]
    assert psnr(img, img) == float("inf")
    assert ssim(img, img) == pytest.approx(1.0)
    q90, q30 = _jpeg(img, 90), _jpeg(img, 30)
    mse = np.mean((img.astype(np.float64) - q90) ** 2)
    assert psnr(img, q90) == pytest.approx(10 * np.log10(255.0 ** 2 / mse))
    # Heavier compression loses more, and a shuffle destroys structure far more than either.
    assert psnr(img, q90) > psnr(img, q30) > 25
    shuffled = shuffle(img, np.random.default_rng(0).permutation(196), 16)
    assert 1.0 > ssim(img, q90) > ssim(img, q30) > ssim(img, shuffled)
    assert ssim(img, shuffled) < 0.5


def test_grayscale_and_shape_errors(fmnist_small):
    images, _ = fmnist_small
    a = images[0]
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=75)
    compressed = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    shuffled = shuffle(a, np.random.default_rng(0).permutation(49), 4)
    assert compressed.shape == a.shape == (28, 28)
    assert ssim(a, compressed) > 0.8 > ssim(a, shuffled)
    assert psnr(a, compressed) > psnr(a, shuffled)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(a, a[:27])
    with pytest.raises(ValueError, match="too small"):
        ssim(a[:2, :2], a[:2, :2])


def test_reidentification_tells_instances_apart_not_classes(fmnist_small):
    images, labels = fmnist_small[0][:300], fmnist_small[1][:300]
    rate, chance = reidentification(images, images, labels)
    assert rate == 1.0
    assert chance == pytest.approx(np.mean([1 / np.sum(labels == c) for c in labels]))
    noisy = np.clip(images.astype(int) + np.random.default_rng(0).integers(-20, 21, images.shape), 0, 255)
    assert reidentification(noisy, images, labels)[0] > 0.95  # a faithful reconstruction is re-identified
    # A class exemplar for every image (what a ciphertext classifier gives): about chance.
    exemplar = np.stack([images[labels == c][0] for c in range(10)])
    rate, chance = reidentification(exemplar[labels], images, labels)
    assert rate <= 2 * chance
    # Shuffled 4 px tiles of Fashion-MNIST, read as they are stored: far from re-identified.
    perm = np.random.default_rng(1).permutation(49)
    stored = shuffle(images[..., None], perm, 4)[..., 0]
    assert reidentification(stored, images, labels)[0] < 0.5
    # Turned as a whole: lost without any_turn, found with it.
    turned = np.rot90(images, 1, axes=(1, 2))
    assert reidentification(turned, images, labels)[0] < 0.5
    assert reidentification(turned, images, labels, any_turn=True)[0] == 1.0
    with pytest.raises(ValueError, match="matching"):
        reidentification(images[:5], images[:6], labels[:6])


# -- galleries and the histogram matcher (issue 17) ------------------------------------------

from audit.metrics import (gallery_reidentification, histogram_similarity, membership_auc,  # noqa: E402
                           pixel_similarity)
from conftest import load_fashion_mnist  # noqa: E402


@pytest.fixture(scope="module")
def fmnist_gallery():
    """200 test images (the victims) and 2,000 train images (the public pool), real data."""
    victims, labels = load_fashion_mnist("test", 200)
    pool, pool_labels = load_fashion_mnist("train", 2000)
    return victims, labels, pool, pool_labels


def test_gallery_reidentification_falls_with_gallery_size_and_sits_at_chance_without_signal(fmnist_gallery):
    victims, labels, pool, pool_labels = fmnist_gallery
    # The originals themselves are found at every size, among their class or among all.
    own = np.diag(pixel_similarity(victims, victims))
    to_pool = pixel_similarity(victims, pool)
    for size in (10, 100):
        for same in (True, False):
            assert gallery_reidentification(own, to_pool, labels, pool_labels, size, same_class=same) == (1.0, 1 / size)
    # A noisy reconstruction: found, but less often as the gallery grows.
    noisy = np.clip(victims.astype(int) + np.random.default_rng(0).integers(-90, 91, victims.shape), 0, 255)
    own_n, pool_n = np.diag(pixel_similarity(noisy, victims)), pixel_similarity(noisy, pool)
    small = gallery_reidentification(own_n, pool_n, labels, pool_labels, 10)[0]
    large = gallery_reidentification(own_n, pool_n, labels, pool_labels, 150)[0]
    assert 0.5 < large <= small, (small, large)
    # Another image of the same class shown for each (no instance information): about chance.
    other = np.array([np.flatnonzero(labels == c)[(np.flatnonzero(np.flatnonzero(labels == c) == i)[0] + 1)
                                                  % np.sum(labels == c)] for i, c in enumerate(labels)])
    rate, chance = gallery_reidentification(np.diag(pixel_similarity(victims[other], victims)),
                                            pixel_similarity(victims[other], pool), labels, pool_labels, 10)
    assert rate <= 2.5 * chance, rate
    # Ties share the hit; impossible galleries and mismatched shapes are refused.
    assert gallery_reidentification(np.zeros(1), np.zeros((1, 3)), np.zeros(1), np.zeros(3), 3)[0] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="a gallery of 1000 needs 999"):
        gallery_reidentification(own, to_pool, labels, pool_labels, 1000)
    with pytest.raises(ValueError, match="pool"):
        gallery_reidentification(own, to_pool[:, :5], labels, pool_labels, 10)


def test_histogram_matcher_sees_through_every_shuffle_and_turn(fmnist_gallery):
    from encrypt.ciphers import mix, orient_tiles

    victims, labels, pool, pool_labels = fmnist_gallery
    x, public = victims[..., None], pool[..., None]
    rng = np.random.default_rng(2)
    perms = np.stack([rng.permutation(49) for _ in x])
    turns = rng.integers(0, 8, (len(x), 49))
    stored = orient_tiles(shuffle(x, perms, 4), turns, 4)
    own = np.diag(histogram_similarity(stored, x))
    assert np.all(own == 0)  # the same multiset of pixel values, exactly
    rate, _ = gallery_reidentification(own, histogram_similarity(stored, public), labels, pool_labels, 150)
    assert rate > 0.95
    # Placed by nothing, the same stored images are hardly found by their pixels.
    assert gallery_reidentification(np.diag(pixel_similarity(stored, x)), pixel_similarity(stored, public),
                                    labels, pool_labels, 150)[0] < 0.3
    # Membership: the release's members match a stored image, outsiders do not.
    mixed = mix(x, 4, 2)
    release = orient_tiles(shuffle(mixed, np.stack([rng.permutation(49) for _ in x]), 2), rng.integers(0, 8, (len(x), 49)), 2)
    members = histogram_similarity(mixed, release).max(axis=1)
    outsiders = histogram_similarity(mix(public[:200], 4, 2), release).max(axis=1)
    assert membership_auc(members, outsiders) > 0.99
    assert membership_auc(np.zeros(3), np.zeros(4)) == 0.5


def test_histogram_matcher_finds_mixed_shuffled_photos(photos):
    from audit.attacks.learned import public_photos
    from encrypt.ciphers import mix
    from encrypt.geometry import resize_center_crop

    victims = np.stack(list(photos.values()))
    others = np.stack([resize_center_crop(p, 224, 224) for p in public_photos() if min(p.shape[:2]) >= 224])
    candidates = mix(np.concatenate([victims, others]), 16, 8)
    rng = np.random.default_rng(3)
    stored = shuffle(mix(victims, 16, 8), np.stack([rng.permutation(196) for _ in victims]), 8)
    assert np.array_equal(np.argmax(histogram_similarity(stored, candidates), axis=1), np.arange(len(victims)))
