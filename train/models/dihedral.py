"""D4-ViT: a PEViT whose patch embedding ignores how each tile was flipped or turned.

The `-orient` cipher modes turn every stored tile by its own secret element of the dihedral
group D4 (the 8 flips and quarter turns of a square), drawn per image. A model can use a
tile only up to that turn, so the embedding is made invariant by construction:

    8 turns of the tile  →  shared t×t/t conv  →  GELU  →  mean over the 8  →  1×1 conv  →  RPE

The mean runs over the whole group, so turning the input tile by any element only reorders
the eight terms: the token is exactly the same (tested). The non-linearity sits before the
mean, otherwise the average of a linear map would only see the D4-symmetric part of the
tile. Together with RPE and no position embedding (as in PEViT) the logits do not depend
on the order of the tiles nor on their turns.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from train.models.pevit import build_position_free
from train.models.registry import Variant, declare_family, register_family, sized_variants
from train.models.rpe import ReferencePositionalEncoding

__all__ = ["DihedralPatchEmbed", "create_d4vit", "turn_tiles"]

TURNS = 8


def turn_tiles(x: torch.Tensor, tile: int, element: int) -> torch.Tensor:
    """Turn every tile×tile tile of a B×C×H×W batch in place by D4 element 0..7.

    Same numbering as ``encrypt.ciphers.orient_tiles``: k < 4 is k counter-clockwise quarter
    turns, k >= 4 mirrors left-right first.
    """
    b, c, h, w = x.shape
    t = x.reshape(b, c, h // tile, tile, w // tile, tile).permute(0, 2, 4, 1, 3, 5)
    if element >= 4:
        t = t.flip(-1)
    t = torch.rot90(t, element % 4, dims=(-2, -1))
    return t.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


class DihedralPatchEmbed(PatchEmbed):
    """timm ``PatchEmbed`` made invariant to a D4 turn of each tile, followed by RPE.

    ``hidden_dim`` is the width between the t×t conv and the 1×1 conv (default: the
    embedding width). Any input whose sides are multiples of the tile is accepted.
    """

    def __init__(self, *args: Any, strict_img_size: bool = False, hidden_dim: int | None = None,
                 rpe_hidden_dim: int | None = None, **kwargs: Any) -> None:
        embed_dim = kwargs.pop("embed_dim", 768)
        norm_layer = kwargs.pop("norm_layer", None)
        hidden = hidden_dim or embed_dim
        super().__init__(*args, embed_dim=hidden, strict_img_size=strict_img_size, **kwargs)
        if self.patch_size[0] != self.patch_size[1]:
            raise ValueError(f"D4 embedding needs square tiles, got {self.patch_size}")
        if self.flatten is False or self.output_fmt.value != "NCHW":
            raise ValueError("D4 embedding returns flattened tokens only")
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        self.act = nn.GELU()
        self.proj_out = nn.Linear(hidden, embed_dim, **dd)
        self.norm = norm_layer(embed_dim, **dd) if norm_layer else nn.Identity()
        self.rpe = ReferencePositionalEncoding(embed_dim, rpe_hidden_dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tile = self.patch_size[0]
        height, width = x.shape[-2:]
        if height % tile or width % tile:
            raise ValueError(f"input {(height, width)} is not a multiple of the {tile} px tile")
        turned = torch.cat([turn_tiles(x, tile, k) for k in range(TURNS)])      # (8B, C, H, W)
        feats = self.act(self.proj(turned)).flatten(2).transpose(1, 2)          # (8B, N, hidden)
        feats = feats.reshape(TURNS, x.shape[0], *feats.shape[1:]).mean(0)      # (B, N, hidden)
        return self.rpe(self.norm(self.proj_out(feats)))


def create_d4vit(variant: str, pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Build a D4-ViT through timm (no position embedding, class token kept, like PEViT).

    Extra kwargs: ``d4_hidden_dim`` (width before the mean), ``rpe_hidden_dim``.
    """
    embed_layer = partial(DihedralPatchEmbed, hidden_dim=kwargs.pop("d4_hidden_dim", None),
                          rpe_hidden_dim=kwargs.pop("rpe_hidden_dim", None))
    return build_position_free("D4-ViT", variant, pretrained, embed_layer, **kwargs)


# Tiles moved and each turned: position-free tokens invariant to the turn.
declare_family("d4vit", "classification", ("mix-shuffle-orient",))
register_family(__name__, create_d4vit, {
    **sized_variants("d4vit_{size}_patch16_224", dict(patch_size=16, img_size=224), (3, 224, 224),
                     "D4-ViT-{abbr}/16 for turned and shuffled 224 px images."),
    "d4vit_tiny_patch4_32": Variant("tiny", dict(patch_size=4, img_size=32), (3, 32, 32),
                                    "D4-ViT-Ti with 4 px tiles on 32 px images (turned Fashion-MNIST shards)."),
})
