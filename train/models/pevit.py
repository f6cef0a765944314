"""PEViT: a timm VisionTransformer for shuffled tokens (``shuffle`` and ``mix-shuffle`` shards).

The absolute position embedding is dropped (``pos_embed='none'``) and replaced by RPE on
the patch tokens (see ``rpe.py``); the class token is kept and read out by the head, so the
logits do not depend on the order of the input tokens. timm >= 1.0.26 is needed: before
it ``pos_embed='none'`` silently dropped the class token.

The token tile is the model's ``patch_size``:

- ``shuffle`` shards: the stored image is the full image, tile = patch ``p``
  (``pevit_tiny_patch16_224``, ``pevit_tiny_patch4_32`` for 32 px images);
- ``mix-shuffle`` shards: the stored image is the mixed (H·s/p)×(W·s/p) image, tile = the
  sub-patch ``s`` (``pevit_tiny_patch2_16``: 16 px stored image, 2 px tiles — a 32 px image
  with patch 4 and sub-patch 2).

Any ``patch_size``/``img_size`` can be passed to ``timm.create_model``; any input whose
sides are multiples of the tile is accepted, since there is no grid to match.
"""
from __future__ import annotations

from functools import partial
from typing import Any

from timm.models import build_model_with_cfg
from timm.models.vision_transformer import VisionTransformer

from train.models.registry import Variant, declare_family, register_family, sized_variants
from train.models.rpe import RPEPatchEmbed

__all__ = ["build_position_free", "create_pevit"]


def build_position_free(name: str, variant: str, pretrained: bool, embed_layer, **kwargs: Any) -> VisionTransformer:
    """A timm VisionTransformer with no absolute position embedding and its class token kept:
    what every model for shuffled tokens is, whatever its token embedding (`embed_layer`)."""
    if kwargs.get("pos_embed", "none") not in ("", "none"):
        raise ValueError(f"{variant}: {name} has no absolute position embedding by design")
    if not kwargs.get("class_token", True):
        raise ValueError(f"{variant}: {name} reads out its class token; class_token must stay on")
    kwargs.pop("pos_embed", None)
    kwargs.pop("class_token", None)
    return build_model_with_cfg(
        VisionTransformer,
        variant,
        pretrained=pretrained,  # only a local file (train-encrypted export): nothing to download
        pos_embed="none",
        class_token=True,
        embed_layer=embed_layer,
        feature_cfg=dict(out_indices=3, feature_cls="getter"),
        **kwargs,
    )


def create_pevit(variant: str, pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Build a PEViT through timm's model builder (configs, feature extraction, overrides).

    ``rpe_hidden_dim`` sets the RPE hidden width (default: the embedding width).
    """
    embed_layer = partial(RPEPatchEmbed, rpe_hidden_dim=kwargs.pop("rpe_hidden_dim", None))
    return build_position_free("PEViT", variant, pretrained, embed_layer, **kwargs)


# Tiles moved but upright: position-free tokens read them in any order.
declare_family("pevit", "classification", ("shuffle", "mix-shuffle"))
register_family(__name__, create_pevit, {
    **sized_variants("pevit_{size}_patch16_224", dict(patch_size=16, img_size=224), (3, 224, 224),
                     "PEViT-{abbr}/16 for shuffled 224 px images."),
    "pevit_tiny_patch4_32": Variant("tiny", dict(patch_size=4, img_size=32), (3, 32, 32),
                                    "PEViT-Ti with 4 px tiles on 32 px images (shuffle shards of small images)."),
    "pevit_tiny_patch2_16": Variant("tiny", dict(patch_size=2, img_size=16), (3, 16, 16),
                                    "PEViT-Ti with 2 px tiles on the 16 px stored image of mix-shuffle "
                                    "(32 px, p=4, s=2)."),
})
