"""Ciphertext-domain augmentations prove what they claim, on real photos.

Stored images come from the project's own cipher (`encrypt.ciphers`, imported here in the
tests only: `train` itself never imports `encrypt`).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from timm.data.mixup import mixup_target

from encrypt import ciphers
from train.augment import (
    ColorJitter,
    TokenMix,
    adjust_color,
    per_patch_hflip,
    token_cutmix,
    token_drop,
    token_mixup,
)

PATCH, SUB = 16, 8
GRID = 224 // PATCH


def column_mirror(rows: int, cols: int) -> np.ndarray:
    """Token index of (r, c) → token index of (r, cols − 1 − c)."""
    return np.arange(rows * cols).reshape(rows, cols)[:, ::-1].reshape(-1)


def batch(images: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """N×H×W×C (uint8, or float on the 0–255 scale) → float batch (N, C, H, W) in [0, 1]."""
    return torch.from_numpy(np.stack(images).astype(np.float64) / 255).permute(0, 3, 1, 2).float()


def unbatch(x: torch.Tensor) -> np.ndarray:
    """Float batch in [0, 1] → N×H×W×C float64 on the 0–255 scale."""
    return x.permute(0, 2, 3, 1).double().numpy() * 255


@pytest.fixture(scope="module")
def images(photos: dict[str, np.ndarray]) -> np.ndarray:
    """Five real 224 px RGB photos, N×H×W×C uint8."""
    return np.stack(list(photos.values()))


@pytest.fixture(scope="module")
def photo_batch(images: np.ndarray) -> torch.Tensor:
    """Four real 224 px photos (an even batch, as the mixers need)."""
    return batch(images[:4])


@pytest.fixture(scope="module")
def perms(images: np.ndarray) -> np.ndarray:
    """One permutation of the 14×14 tokens per photo (test data, not keyed)."""
    rng = np.random.default_rng(0)
    return np.stack([rng.permutation(GRID * GRID) for _ in images])


# --- per-patch horizontal flip -----------------------------------------------------------

def test_per_patch_hflip_of_rs_image_equals_encrypted_flipped_image(images: np.ndarray, perms: np.ndarray) -> None:
    mirrored = column_mirror(GRID, GRID)[perms]
    encrypted = batch(ciphers.shuffle(images, perms, PATCH))
    flipped_then_encrypted = batch(ciphers.shuffle(images[:, :, ::-1], mirrored, PATCH))
    assert torch.equal(per_patch_hflip(encrypted, PATCH), flipped_then_encrypted)
    # the unmapped permutation does not do it: the column mirror is part of the claim
    naive = batch(ciphers.shuffle(images[:, :, ::-1], perms, PATCH))
    assert not torch.equal(per_patch_hflip(encrypted, PATCH), naive)


def test_per_patch_hflip_of_mix_shuffle_image_equals_encrypted_flipped_image(
        images: np.ndarray, perms: np.ndarray) -> None:
    mirrored = column_mirror(GRID, GRID)[perms]
    encrypted = batch(ciphers.mix_shuffle(images, perms, PATCH, SUB))  # stored uint8, rounded
    flipped_then_encrypted = batch(ciphers.mix_shuffle(images[:, :, ::-1], mirrored, PATCH, SUB))
    assert encrypted.shape[-2:] == (112, 112)
    assert torch.equal(per_patch_hflip(encrypted, SUB), flipped_then_encrypted)


def test_whole_image_flip_commutes_with_mix(images: np.ndarray) -> None:
    mixed = batch(ciphers.mix(images, PATCH, SUB))
    assert torch.equal(mixed.flip(-1), batch(ciphers.mix(images[:, :, ::-1], PATCH, SUB)))


def test_per_patch_hflip_is_an_involution_that_changes_the_image(photo_batch: torch.Tensor) -> None:
    once = per_patch_hflip(photo_batch, PATCH)
    assert not torch.equal(once, photo_batch)
    assert torch.equal(per_patch_hflip(once, PATCH), photo_batch)


def test_per_patch_hflip_rejects_partial_tiles(photo_batch: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="image 224×224 is not a whole number of 15 px tiles"):
        per_patch_hflip(photo_batch, 15)


# --- colour jitter -----------------------------------------------------------------------

def test_adjust_color_matches_torchvision(photo_batch: torch.Tensor) -> None:
    brightness, contrast, saturation = 1.2, 0.7, 1.4
    ours = adjust_color(photo_batch, brightness, contrast, saturation)
    for i, image in enumerate(photo_batch):
        expected = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(image, brightness), contrast),
                                        saturation)
        torch.testing.assert_close(ours[i], expected, atol=1e-5, rtol=0)


def test_color_jitter_commutes_with_patch_shuffle(images: np.ndarray, perms: np.ndarray) -> None:
    plain, shuffled = batch(images), batch(ciphers.shuffle(images, perms, PATCH))
    jittered_plain = ColorJitter(0.4, 0.4, 0.4, generator=torch.Generator().manual_seed(3))(plain)
    jittered_shuffled = ColorJitter(0.4, 0.4, 0.4, generator=torch.Generator().manual_seed(3))(shuffled)
    assert not torch.allclose(jittered_plain, plain, atol=1e-2)
    expected = batch(ciphers.shuffle(unbatch(jittered_plain), perms, PATCH))
    torch.testing.assert_close(jittered_shuffled, expected, atol=1e-5, rtol=0)


def test_color_jitter_commutes_with_exact_mix_when_nothing_clips(images: np.ndarray) -> None:
    factors = torch.tensor([0.6, 0.8, 0.9, 0.95, 0.7])  # factors ≤ 1 keep every value in [0, 1]
    jittered = adjust_color(batch(images), factors, factors.flip(0), factors)
    jittered_then_mixed = batch(ciphers.mix_float(unbatch(jittered), PATCH, SUB))
    mixed_then_jittered = adjust_color(batch(ciphers.mix_float(images, PATCH, SUB)),
                                       factors, factors.flip(0), factors)
    torch.testing.assert_close(mixed_then_jittered, jittered_then_mixed, atol=1e-5, rtol=0)


def test_color_jitter_draws_a_factor_per_image(photo_batch: torch.Tensor) -> None:
    same = photo_batch[:1].expand(4, -1, -1, -1)
    out = ColorJitter(brightness=0.5, contrast=0.0, saturation=0.0,
                      generator=torch.Generator().manual_seed(4))(same * 0.5)  # no clipping
    ratios = out.flatten(1).sum(1) / (same * 0.5).flatten(1).sum(1)
    assert ((ratios >= 0.5 - 1e-4) & (ratios <= 1.5 + 1e-4)).all()
    assert ratios.max() - ratios.min() > 0.05


# --- token mixing and dropping -----------------------------------------------------------

def tile_matches(a: torch.Tensor, b: torch.Tensor, tile: int) -> torch.Tensor:
    """(B, N) bool: tile n of a[i] equals tile n of b[i] exactly."""
    bsz, c, h, w = a.shape
    diff = (a - b).abs().reshape(bsz, c, h // tile, tile, w // tile, tile).amax(dim=(1, 3, 5))
    return (diff == 0).reshape(bsz, -1)


def soft(labels: list[int], num_classes: int = 10) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(labels), num_classes).float()


def test_token_cutmix_replaces_exactly_the_fraction_and_weights_labels(photo_batch: torch.Tensor) -> None:
    partner = photo_batch.flip(0)
    assert not tile_matches(photo_batch, partner, PATCH).any()  # every tile tells its source
    targets = soft([0, 1, 2, 3])
    mixed, mixed_targets, kept = token_cutmix(photo_batch, targets, PATCH, lam=0.7,
                                              generator=torch.Generator().manual_seed(5))
    replaced = round(0.3 * 196)
    from_partner, from_self = tile_matches(mixed, partner, PATCH), tile_matches(mixed, photo_batch, PATCH)
    assert (from_partner.sum(1) == replaced).all() and (from_self.sum(1) == 196 - replaced).all()
    assert (from_partner ^ from_self).all()
    assert kept == 1 - replaced / 196
    assert torch.equal(mixed_targets, kept * targets + (1 - kept) * targets.flip(0))
    assert not torch.equal(from_partner[0], from_partner[1])  # positions drawn per image


def test_token_mixup_blends_images_and_labels(photo_batch: torch.Tensor) -> None:
    targets = soft([4, 5, 6, 7])
    mixed, mixed_targets = token_mixup(photo_batch, targets, lam=0.25)
    torch.testing.assert_close(mixed, 0.25 * photo_batch + 0.75 * photo_batch.flip(0))
    torch.testing.assert_close(mixed_targets[0], 0.25 * soft([4])[0] + 0.75 * soft([7])[0])


def test_token_drop_zeroes_exactly_the_fraction(photo_batch: torch.Tensor) -> None:
    lifted = 0.9 * photo_batch + 0.05  # the photos hold black tiles; lift them so zeros stand out
    zeros = torch.zeros_like(lifted)
    assert not tile_matches(lifted, zeros, PATCH).any()
    dropped, keep = token_drop(lifted, PATCH, fraction=0.25, generator=torch.Generator().manual_seed(6))
    assert keep.shape == (4, 196) and ((~keep).sum(1) == 49).all()
    assert torch.equal(tile_matches(dropped, zeros, PATCH), ~keep)
    assert torch.equal(tile_matches(dropped, lifted, PATCH), keep)


def test_token_mix_cutmix_labels_follow_the_tiles_it_moved(photo_batch: torch.Tensor) -> None:
    np.random.seed(7)  # timm draws lam with numpy's global generator
    mixer = TokenMix(tile=PATCH, num_classes=10, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1,
                     generator=torch.Generator().manual_seed(7))
    labels = torch.tensor([1, 3, 5, 9])
    mixed, targets = mixer(photo_batch.clone(), labels)
    moved = tile_matches(mixed, photo_batch.flip(0), PATCH).sum(1)
    assert 0 < moved[0] < 196 and (moved == moved[0]).all()
    kept = 1 - moved[0].item() / 196
    torch.testing.assert_close(targets, mixup_target(labels, 10, kept, 0.1))
    torch.testing.assert_close(targets.sum(1), torch.ones(4))


def test_token_mix_mixup_blends_by_the_label_weight(photo_batch: torch.Tensor) -> None:
    np.random.seed(8)
    mixer = TokenMix(tile=PATCH, num_classes=10, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0)
    labels = torch.tensor([0, 2, 4, 6])
    mixed, targets = mixer(photo_batch.clone(), labels)
    lam = targets[0, 0].item()
    assert 0.0 < lam < 1.0
    torch.testing.assert_close(mixed, lam * photo_batch + (1 - lam) * photo_batch.flip(0), atol=1e-6, rtol=0)
