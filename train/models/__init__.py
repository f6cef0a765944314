"""Models for encrypted shards, registered with timm on import.

``import train.models`` registers ``pevit_*`` (shuffled tokens), ``mivit_*`` (mixed
sub-patches) and ``d4vit_*`` (shuffled tokens each turned by a secret flip or quarter turn); after that ``timm.create_model(name, num_classes=..., img_size=...)`` builds
any of them. ``model_for_cipher`` picks the model that matches a shard manifest's cipher.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import timm

from train.models import dihedral, mivit, pevit, rpe  # noqa: F401  (registers the models with timm)
from train.models.dihedral import DihedralPatchEmbed
from train.models.mivit import MixedPatchEmbed
from train.models.rpe import ReferencePositionalEncoding, RPEPatchEmbed

__all__ = [
    "DihedralPatchEmbed",
    "MixedPatchEmbed",
    "RPEPatchEmbed",
    "ReferencePositionalEncoding",
    "SIZES",
    "model_for_cipher",
]

SIZES = ("tiny", "small", "base")
_FAMILY = {"none": "vit", "shuffle": "pevit", "mix": "mivit", "mix-shuffle": "pevit",
           "mix-shuffle-orient": "d4vit"}


def _side(value: int | Sequence[int], field: str) -> tuple[int, int]:
    """Normalise an int or [h, w] manifest field to (h, w)."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"cipher {field} must be an int or [height, width], got {value!r}")


def _pick_name(family: str, size: str, tile: int, img: tuple[int, int]) -> str:
    """The registered name that already has this geometry, else the ``_patch16_224`` one."""
    exact = f"{family}_{size}_patch{tile}_{img[0]}"
    if img[0] == img[1] and timm.is_model(exact):
        return exact
    return f"{family}_{size}_patch16_224"


def model_for_cipher(cipher: Mapping[str, Any], num_classes: int,
                     size: str = "tiny") -> tuple[str, dict[str, Any]]:
    """Return ``(timm name, create_model kwargs)`` for the model that fits a cipher.

    ``cipher`` is a manifest's cipher dict (mode, patch, sub_patch, image_size, stored_size,
    channels). The kwargs always spell out the geometry, so the name only fixes the width:
    ``none`` → plain timm ViT (baseline), ``shuffle`` → PEViT with tile p on the full image,
    ``mix`` → MI-ViT (patch p, sub-patch s, plain size), ``mix-shuffle`` → PEViT with tile s
    on the stored mixed image, ``mix-shuffle-orient`` → D4-ViT (PEViT with a patch embedding
    invariant to each tile's turn) with tile s on the stored mixed image.
    """
    mode = cipher.get("mode")
    if mode not in _FAMILY:
        raise ValueError(f"cipher mode {mode!r} is not one of {sorted(_FAMILY)}")
    if size not in SIZES:
        raise ValueError(f"model size {size!r} is not one of {list(SIZES)}")
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    patch = int(cipher["patch"])
    image = _side(cipher["image_size"], "image_size")
    if image[0] % patch or image[1] % patch:
        raise ValueError(f"cipher image_size {image} is not a multiple of patch {patch}")
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": int(cipher.get("channels", 3))}
    family = _FAMILY[mode]
    if mode in ("none", "shuffle"):
        tile, img = patch, image
    else:
        sub_patch = int(cipher["sub_patch"])
        if sub_patch <= 0 or patch % sub_patch:
            raise ValueError(f"cipher sub_patch {sub_patch} does not divide patch {patch}")
        stored = (image[0] * sub_patch // patch, image[1] * sub_patch // patch)
        if "stored_size" in cipher and _side(cipher["stored_size"], "stored_size") != stored:
            raise ValueError(f"cipher stored_size {cipher['stored_size']!r} does not match "
                             f"image_size {image} mixed from patch {patch} to sub_patch {sub_patch}")
        if mode == "mix":
            tile, img = patch, image
            kwargs["sub_patch"] = sub_patch
        else:
            tile, img = sub_patch, stored
    kwargs.update(patch_size=tile, img_size=img if img[0] != img[1] else img[0])
    return _pick_name(family, size, tile, img), kwargs
