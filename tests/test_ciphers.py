"""The ciphers on real images: exact inverses, exact means, every patch kept once."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from shards.modes import MODES
from encrypt import ciphers


def tiles_of(img: np.ndarray, tile: int) -> list[bytes]:
    h, w = img.shape[:2]
    return [img[r:r + tile, c:c + tile].tobytes() for r in range(0, h, tile) for c in range(0, w, tile)]


def test_unshuffle_restores_photos_byte_exact(photos):
    rng = np.random.default_rng(0)  # test permutations only; production ones come from keys
    for name, img in photos.items():
        perm = rng.permutation(196)
        enc = ciphers.shuffle(img, perm, 16)
        assert enc.shape == img.shape and enc.dtype == np.uint8
        assert not np.array_equal(enc, img), name
        assert ciphers.unshuffle(enc, perm, 16).tobytes() == img.tobytes(), name


def test_shuffle_moves_token_perm_i_to_position_i(photos):
    img = photos["astronaut"]
    perm = np.random.default_rng(1).permutation(196)
    enc = ciphers.shuffle(img, perm, 16)
    for i in (0, 5, 13, 14, 100, 195):
        r, c = divmod(i, 14)
        sr, sc = divmod(int(perm[i]), 14)
        assert np.array_equal(enc[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16],
                              img[sr * 16:(sr + 1) * 16, sc * 16:(sc + 1) * 16])


def test_every_patch_appears_exactly_once(photos):
    img = photos["coffee"]
    perm = np.random.default_rng(2).permutation(196)
    enc = ciphers.shuffle(img, perm, 16)
    assert Counter(tiles_of(enc, 16)) == Counter(tiles_of(img, 16))


def test_batch_with_one_permutation_per_image(fmnist_small):
    images = fmnist_small[0][:64, :, :, None]  # N×28×28×1 (a 3-D array is read as H×W×C), 7×7 grid
    rng = np.random.default_rng(3)
    perms = np.stack([rng.permutation(49) for _ in range(len(images))])
    enc = ciphers.shuffle(images, perms, 4)
    assert enc.shape == images.shape
    for i in (0, 17, 63):
        assert np.array_equal(enc[i], ciphers.shuffle(images[i], perms[i], 4))
    assert np.array_equal(ciphers.unshuffle(enc, perms, 4), images)


def test_shuffle_of_constant_image_is_constant():
    img = np.full((64, 48, 3), 137, dtype=np.uint8)
    out = ciphers.shuffle(img, np.random.default_rng(4).permutation(12), 16)
    assert np.array_equal(out, img)


def direct_mix(img: np.ndarray, patch: int, sub: int) -> np.ndarray:
    """Per-patch mean of sub-patches, written the slow and obvious way."""
    h, w, c = img.shape
    k = patch // sub
    out = np.zeros((h // patch * sub, w // patch * sub, c))
    for r in range(h // patch):
        for q in range(w // patch):
            block = img[r * patch:(r + 1) * patch, q * patch:(q + 1) * patch].astype(np.float64)
            subs = [block[i * sub:(i + 1) * sub, j * sub:(j + 1) * sub] for i in range(k) for j in range(k)]
            out[r * sub:(r + 1) * sub, q * sub:(q + 1) * sub] = np.mean(subs, axis=0)
    return out


def test_mix_equals_direct_per_patch_mean(photos):
    img = photos["chelsea"]
    exact = direct_mix(img, 16, 8)
    got = ciphers.mix(img, 16, 8)
    assert got.shape == (112, 112, 3) and got.dtype == np.uint8
    assert np.array_equal(got, np.floor(exact + 0.5).astype(np.uint8))  # rounded half up
    assert np.allclose(ciphers.mix_float(img, 16, 8), exact, atol=1e-4)


def test_mix_on_fashion_mnist_grayscale(fmnist_small):
    img = fmnist_small[0][0]  # 28×28, patch 4, sub-patch 2 → 14×14
    got = ciphers.mix(img, 4, 2)
    assert got.shape == (14, 14)
    assert np.array_equal(got, np.floor(direct_mix(img[..., None], 4, 2)[..., 0] + 0.5))


def test_mix_shuffle_is_mix_then_shuffle(photos):
    img = photos["rocket"]
    perm = np.random.default_rng(5).permutation(196)
    got = ciphers.mix_shuffle(img, perm, 16, 8)
    assert np.array_equal(got, ciphers.shuffle(ciphers.mix(img, 16, 8), perm, 8))
    assert np.array_equal(ciphers.unshuffle_mixed(got, perm, 8), ciphers.mix(img, 16, 8))


def test_encrypt_image_dispatches_each_mode(photos):
    img = photos["astronaut"]
    perm = np.random.default_rng(6).permutation(196)
    assert np.array_equal(ciphers.encrypt_image(img, "shuffle", perm, 16, None), ciphers.shuffle(img, perm, 16))
    assert np.array_equal(ciphers.encrypt_image(img, "mix", None, 16, 8), ciphers.mix(img, 16, 8))
    assert np.array_equal(ciphers.encrypt_image(img, "mix-shuffle", perm, 16, 8), ciphers.mix_shuffle(img, perm, 16, 8))
    with pytest.raises(ValueError, match="unknown cipher mode"):
        ciphers.encrypt_image(img, "rot13", perm, 16, 8)


def test_sizes_not_divisible_are_refused_with_the_sizes():
    img = np.zeros((30, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="30x32.*patch 16"):
        ciphers.shuffle(img, np.arange(4), 16)
    with pytest.raises(ValueError, match="sub-patch 5 does not divide patch 16"):
        ciphers.mix(np.zeros((32, 32, 3), np.uint8), 16, 5)
    with pytest.raises(ValueError, match="permutation has 3 entries"):
        ciphers.shuffle(np.zeros((32, 32, 3), np.uint8), np.arange(3), 16)


def test_sizes_and_permutation_lengths():
    # The mode table's facts (shards.modes), which the ciphers' entries ask.
    assert MODES["mix"].stored_size((224, 224), 16, 8) == (112, 112)
    assert MODES["shuffle"].stored_size((224, 160), 16, None) == (224, 160)
    assert MODES["shuffle"].draws((224, 224), 16) == (196, 0)
    assert MODES["mix-shuffle"].draws((224, 224), 16) == (196, 0)
    assert MODES["mix"].draws((224, 224), 16) == (0, 0)
