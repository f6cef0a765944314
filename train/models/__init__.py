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
from train.models.registry import declare_family, family_for, served_modes
from train.models.rpe import ReferencePositionalEncoding, RPEPatchEmbed
from shards.modes import GeometryError, mode_of

__all__ = [
    "DihedralPatchEmbed",
    "MixedPatchEmbed",
    "RPEPatchEmbed",
    "ReferencePositionalEncoding",
    "SIZES",
    "model_for_cipher",
]

SIZES = ("tiny", "small", "base")
# The plain baseline reads timm's own ViT; the other families declare their modes beside them.
declare_family("vit", "classification", ("none",))


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
    channels). The family is the one that declares the mode (`declare_family`: plain ViT for
    ``none``, PEViT, MI-ViT, D4-ViT); the geometry is checked by the mode table's own rule
    (shards.modes) and always spelled out in the kwargs, so the name only fixes the width:
    MI-ViT takes patch p, sub-patch s and the plain size, the others their token tile on the
    stored image.
    """
    mode = cipher.get("mode")
    family = family_for("classification", mode)
    if family is None:
        raise ValueError(f"cipher mode {mode!r} is not one of {served_modes('classification')}")
    if size not in SIZES:
        raise ValueError(f"model size {size!r} is not one of {list(SIZES)}")
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    facts = mode_of(mode)
    patch = int(cipher["patch"])
    image = _side(cipher["image_size"], "image_size")
    sub_patch = int(cipher["sub_patch"]) if facts.mixes else None
    try:
        stored = facts.stored_size(image, patch, sub_patch)
    except GeometryError as exc:
        raise ValueError(f"cipher {exc}") from None
    if "stored_size" in cipher and _side(cipher["stored_size"], "stored_size") != stored:
        raise ValueError(f"cipher stored_size {cipher['stored_size']!r} does not match "
                         f"{mode} of image_size {image} (stores {stored})")
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": int(cipher.get("channels", 3))}
    if family.plain_geometry:
        tile, img = patch, image
        kwargs["sub_patch"] = sub_patch
    else:
        tile, img = facts.tile(patch, sub_patch), stored
    kwargs.update(patch_size=tile, img_size=img if img[0] != img[1] else img[0])
    return _pick_name(family.prefix, size, tile, img), kwargs
