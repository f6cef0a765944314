"""Inversion of `mix` on real Fashion-MNIST and real photos: how much of the image comes back."""
from __future__ import annotations

import numpy as np
import pytest

from audit.attacks.inversion import (deconvolve, invert, mixing_matrix, project_consistent,
                                     train_upsampler, upsample)
from audit.metrics import psnr, ssim
from research.recognize import resize_batch
from conftest import load_fashion_mnist
from encrypt.ciphers import mix, mix_float


@pytest.fixture(scope="module")
def fmnist_plain() -> np.ndarray:
    plain, _ = load_fashion_mnist("test", 300)
    return resize_batch(plain, 32)[..., None]  # the project's 32 px geometry, N×32×32×1


def mean_psnr(originals: np.ndarray, reconstructions: np.ndarray) -> float:
    return float(np.mean([psnr(a, b) for a, b in zip(originals, reconstructions)]))


def mean_ssim(originals: np.ndarray, reconstructions: np.ndarray) -> float:
    return float(np.mean([ssim(a, b) for a, b in zip(originals, reconstructions)]))


def test_mixing_matrix_is_the_cipher(fmnist_plain, photos):
    img = fmnist_plain[0, ..., 0].astype(np.float64)
    a = mixing_matrix(32, 32, 4, 2)
    np.testing.assert_allclose((a @ img.reshape(-1)).reshape(16, 16), mix_float(img, 4, 2), atol=1e-9)
    rgb = photos["coffee"].astype(np.float64)
    a = mixing_matrix(224, 224, 16, 8)
    ours = np.stack([(a @ rgb[..., c].reshape(-1)).reshape(112, 112) for c in range(3)], -1)
    np.testing.assert_allclose(ours, mix_float(rgb, 16, 8), atol=1e-4)


def test_deconvolution_beats_every_upsampling_baseline_on_fashion_mnist(fmnist_plain):
    mixed = mix(fmnist_plain, 4, 2)
    deconvolved = deconvolve(mixed, 4, 2)
    assert deconvolved.shape == fmnist_plain.shape and deconvolved.dtype == np.uint8
    ours = mean_psnr(fmnist_plain, deconvolved)
    for method in ("nearest", "bicubic", "tile"):
        baseline = upsample(mixed, 4, 2, method)
        assert baseline.shape == fmnist_plain.shape
        assert ours > mean_psnr(fmnist_plain, baseline) + 0.5, method
    assert mean_ssim(fmnist_plain, deconvolved) > mean_ssim(fmnist_plain, upsample(mixed, 4, 2, "nearest"))


def test_deconvolution_beats_nearest_upsampling_on_natural_photos(photos):
    plain = np.stack([photos["astronaut"], photos["rocket"]])
    mixed = mix(plain, 16, 8)
    assert mean_psnr(plain, deconvolve(mixed, 16, 8)) > mean_psnr(plain, upsample(mixed, 16, 8)) + 1.0


def test_deconvolution_agrees_with_the_ciphertext(fmnist_plain):
    mixed = mix(fmnist_plain[:50], 4, 2)
    again = mix(deconvolve(mixed, 4, 2), 4, 2)
    # Projected onto valid, consistent images: only the rounding to uint8 separates them.
    assert np.abs(again.astype(int) - mixed).max() <= 1


def test_projection_makes_any_guess_consistent(fmnist_plain):
    mixed = mix(fmnist_plain[:10], 4, 2)
    guess = np.full(fmnist_plain[:10].shape, 128.0)
    projected = project_consistent(guess, mixed, 4, 2)
    np.testing.assert_allclose(mix_float(projected, 4, 2), mixed, atol=1e-4)


def test_learned_upsampler_improves_on_deconvolution(fmnist_plain):
    public, _ = load_fashion_mnist("train", 4000)  # public: train split; victims: test split
    model = train_upsampler(resize_batch(public, 32), 4, 2, steps=60, batch_size=16, width=16, seed=0)
    mixed = mix(fmnist_plain, 4, 2)
    learned = invert(model, mixed)
    assert learned.shape == fmnist_plain.shape and learned.dtype == np.uint8
    assert mean_psnr(fmnist_plain, learned) > mean_psnr(fmnist_plain, deconvolve(mixed, 4, 2))
    assert mean_psnr(fmnist_plain, learned) > mean_psnr(fmnist_plain, upsample(mixed, 4, 2)) + 1.0


def test_bad_input_is_refused_with_a_clear_message(fmnist_plain):
    mixed = mix(fmnist_plain[:2], 4, 2)
    with pytest.raises(ValueError, match="unknown upsampling method 'lanczos'"):
        upsample(mixed, 4, 2, "lanczos")
    with pytest.raises(ValueError, match="sub-patch 3 does not divide patch 4"):
        deconvolve(mixed, 4, 3)
    with pytest.raises(ValueError, match="not a grid of 4 px sub-patches"):
        deconvolve(mixed[:, :15, :15], 8, 4)
    with pytest.raises(ValueError, match="smoothness must be positive"):
        deconvolve(mixed, 4, 2, smoothness=0.0)
