"""PEViT and MI-ViT: registry, token-order invariance, mixed-vs-plain equality, cipher → model.

Shuffled and mixed inputs come from the project's own cipher (`encrypt.ciphers`, imported
here in the tests only: `train` itself never imports `encrypt`).
"""
from __future__ import annotations


import numpy as np
import pytest
import timm
import torch

import train.models  # noqa: F401  (registers pevit_* and mivit_*)
from conftest import natural_photos
from encrypt import ciphers
from train.models import MixedPatchEmbed, RPEPatchEmbed, model_for_cipher

REGISTERED = timm.list_models("pevit_*") + timm.list_models("mivit_*")


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


def _nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float()


def shuffle_tokens(x: torch.Tensor, tile: int, perms: torch.Tensor) -> torch.Tensor:
    """The ``shuffle`` cipher on a batch, one permutation per image."""
    return _nchw(ciphers.shuffle(_nhwc(x), perms.numpy(), tile))


def mix_float(x: torch.Tensor, patch: int, sub: int) -> torch.Tensor:
    """The exact (unrounded) ``mix`` cipher on a batch."""
    return _nchw(ciphers.mix_float(_nhwc(x), patch, sub))


def random_perms(batch: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g) for _ in range(batch)])


@pytest.fixture(autouse=True)
def seeded_init() -> None:
    """Model weights are drawn from torch's global generator: fix it so no test depends on order."""
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def fmnist32(fmnist_small: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
    """Eight real Fashion-MNIST images padded to 32×32, float in [0, 1], one channel."""
    images = np.pad(fmnist_small[0][:8], ((0, 0), (2, 2), (2, 2)))
    return torch.from_numpy(images).float().div(255).unsqueeze(1)


@pytest.fixture(scope="module")
def photos32() -> torch.Tensor:
    """Five real RGB photos at 32 px, float in [0, 1]."""
    images = np.stack(list(natural_photos(32).values()))
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)


def test_expected_names_are_registered() -> None:
    expected = {
        "pevit_tiny_patch16_224", "pevit_small_patch16_224", "pevit_base_patch16_224",
        "pevit_tiny_patch4_32", "pevit_tiny_patch2_16",
        "mivit_tiny_patch16_224", "mivit_small_patch16_224", "mivit_tiny_patch4_32",
    }
    assert expected <= set(REGISTERED)


@pytest.mark.parametrize("name", REGISTERED)
def test_every_registered_model_builds(name: str) -> None:
    tiny = "tiny" in name  # wider variants are built on the meta device (no memory, no init)
    model = timm.create_model(name, pretrained=False, num_classes=7, device=None if tiny else "meta").eval()
    embed = model.patch_embed
    if name.startswith("pevit"):
        assert isinstance(embed, RPEPatchEmbed)
        assert model.pos_embed is None
    else:
        assert isinstance(embed, MixedPatchEmbed)
        assert model.pos_embed.shape[1] == embed.num_patches + 1
    assert model.cls_token is not None
    if not tiny:
        return
    channels, height, width = model.pretrained_cfg["input_size"]
    x = torch.rand(2, channels, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model.forward_head(features)
    assert features.shape[1] == embed.num_patches + 1  # class token survived pos_embed='none'
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()


def test_pevit_logits_invariant_to_token_order(fmnist32: torch.Tensor) -> None:
    model = timm.create_model("pevit_tiny_patch4_32", num_classes=10, in_chans=1).eval()
    perms = random_perms(len(fmnist32), 64, seed=1)
    shuffled = shuffle_tokens(fmnist32, 4, perms)
    assert not torch.equal(shuffled, fmnist32)
    with torch.no_grad():
        plain, permuted = model(fmnist32), model(shuffled)
    assert plain.abs().max() > 1e-3  # a dead network would be trivially invariant
    torch.testing.assert_close(permuted, plain, atol=1e-5, rtol=0)


def test_plain_vit_with_position_embedding_is_not_invariant(fmnist32: torch.Tensor) -> None:
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, in_chans=1,
                              patch_size=4, img_size=32).eval()
    shuffled = shuffle_tokens(fmnist32, 4, random_perms(len(fmnist32), 64, seed=1))
    with torch.no_grad():
        change = (model(shuffled) - model(fmnist32)).abs().max()
    assert change > 1e-3


def test_pevit_on_mix_shuffle_tiles_is_invariant(photos32: torch.Tensor) -> None:
    model = timm.create_model("pevit_tiny_patch2_16", num_classes=5).eval()
    mixed = mix_float(photos32, patch=4, sub=2)
    assert mixed.shape[-2:] == (16, 16)
    shuffled = shuffle_tokens(mixed, 2, random_perms(len(mixed), 64, seed=2))
    with torch.no_grad():
        torch.testing.assert_close(model(shuffled), model(mixed), atol=1e-5, rtol=0)


def test_pevit_accepts_any_multiple_of_its_tile(photos32: torch.Tensor) -> None:
    model = timm.create_model("pevit_tiny_patch4_32", num_classes=3).eval()
    wide = torch.cat([photos32, photos32.flip(-1)], dim=-1)  # 32×64: no grid to match
    with torch.no_grad():
        assert model(wide).shape == (5, 3)


def test_rpe_reference_is_learned(fmnist32: torch.Tensor) -> None:
    model = timm.create_model("pevit_tiny_patch4_32", num_classes=10, in_chans=1)
    loss = torch.nn.functional.cross_entropy(model(fmnist32), torch.arange(8) % 10)
    loss.backward()
    grad = model.patch_embed.rpe.reference.grad
    assert grad is not None and grad.abs().sum() > 0


def test_mivit_plain_input_equals_mixed_input(fmnist32: torch.Tensor) -> None:
    on_plain = timm.create_model("mivit_tiny_patch4_32", num_classes=10, in_chans=1, input_mixed=False).eval()
    on_mixed = timm.create_model("mivit_tiny_patch4_32", num_classes=10, in_chans=1).eval()
    on_mixed.load_state_dict(on_plain.state_dict())
    mixed = mix_float(fmnist32, patch=4, sub=2)
    with torch.no_grad():
        from_plain, from_mixed = on_plain(fmnist32), on_mixed(mixed)
    assert from_plain.abs().max() > 1e-3
    torch.testing.assert_close(from_mixed, from_plain, atol=1e-4, rtol=1e-4)


def test_mivit_plain_equals_mixed_on_224px_photos(photos: dict[str, np.ndarray]) -> None:
    images = torch.from_numpy(np.stack(list(photos.values())[:2])).permute(0, 3, 1, 2).float().div(255)
    on_plain = timm.create_model("mivit_tiny_patch16_224", num_classes=4, input_mixed=False).eval()
    on_mixed = timm.create_model("mivit_tiny_patch16_224", num_classes=4).eval()
    on_mixed.load_state_dict(on_plain.state_dict())
    mixed = mix_float(images, patch=16, sub=8)
    assert mixed.shape[-2:] == (112, 112)
    with torch.no_grad():
        torch.testing.assert_close(on_mixed(mixed), on_plain(images), atol=1e-4, rtol=1e-4)


def test_mivit_keeps_positions(photos32: torch.Tensor) -> None:
    model = timm.create_model("mivit_tiny_patch4_32", num_classes=5).eval()
    mixed = mix_float(photos32, patch=4, sub=2)
    shuffled = shuffle_tokens(mixed, 2, random_perms(len(mixed), 64, seed=3))
    with torch.no_grad():
        assert (model(shuffled) - model(mixed)).abs().max() > 1e-3


def test_mivit_rejects_the_wrong_input_size(photos32: torch.Tensor) -> None:
    model = timm.create_model("mivit_tiny_patch4_32", num_classes=5).eval()
    with pytest.raises(ValueError, match=r"mixed input of \(16, 16\), got \(32, 32\)"):
        model(photos32)


def test_mivit_rejects_a_sub_patch_that_does_not_divide_the_patch() -> None:
    with pytest.raises(ValueError, match="sub_patch 3 must divide patch size 4"):
        timm.create_model("mivit_tiny_patch4_32", sub_patch=3)


FMNIST_CIPHER = dict(patch=4, sub_patch=2, image_size=32, channels=1)


@pytest.mark.parametrize(("mode", "name", "stored", "tile"), [
    ("none", "vit_tiny_patch16_224", 32, 4),
    ("shuffle", "pevit_tiny_patch4_32", 32, 4),
    ("mix", "mivit_tiny_patch4_32", 16, 2),
    ("mix-shuffle", "pevit_tiny_patch2_16", 16, 2),
])
def test_model_for_cipher_builds_a_model_for_the_stored_images(
        fmnist32: torch.Tensor, mode: str, name: str, stored: int, tile: int) -> None:
    cipher = dict(FMNIST_CIPHER, mode=mode, stored_size=stored)
    picked, kwargs = model_for_cipher(cipher, num_classes=10)
    assert picked == name
    model = timm.create_model(picked, **kwargs).eval()
    stored_images = fmnist32 if stored == 32 else mix_float(fmnist32, 4, 2)
    if mode in ("shuffle", "mix-shuffle"):
        stored_images = shuffle_tokens(stored_images, tile, random_perms(8, 64, seed=4))
    with torch.no_grad():
        assert model(stored_images).shape == (8, 10)


def test_model_for_cipher_on_224px_geometry() -> None:
    base = dict(patch=16, sub_patch=8, image_size=224, stored_size=112, channels=3)
    assert model_for_cipher(dict(base, mode="mix-shuffle"), 1000, size="small") == (
        "pevit_small_patch16_224",
        {"num_classes": 1000, "in_chans": 3, "patch_size": 8, "img_size": 112})
    assert model_for_cipher(dict(base, mode="mix"), 1000, size="base") == (
        "mivit_base_patch16_224",
        {"num_classes": 1000, "in_chans": 3, "sub_patch": 8, "patch_size": 16, "img_size": 224})


@pytest.mark.parametrize(("change", "message"), [
    (dict(mode="rot13"), "cipher mode 'rot13' is not one of"),
    (dict(mode="mix", stored_size=20), "stored_size 20 does not match"),
    (dict(mode="mix", sub_patch=3), "cipher sub_patch: 3 must be smaller than and divide the patch 4"),
    (dict(mode="shuffle", image_size=30), "cipher image_size: 30x30 is not divisible by the patch 4"),
])
def test_model_for_cipher_rejects_inconsistent_ciphers(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model_for_cipher({**FMNIST_CIPHER, "stored_size": 16, **change}, num_classes=10)
