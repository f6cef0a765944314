"""MI-ViT: a timm VisionTransformer for mixed shards (``mix``), position embeddings kept.

A ``mix`` shard stores, for every p×p patch, the mean of its (p/s)² s×s sub-patches as one
s×s tile (the (H·s/p)×(W·s/p) stored image). The patch embedding is made linear in the
sub-patches up to the first non-linearity:

    conv s×s stride s  →  (p/s)×(p/s) average  →  GELU  →  1×1 conv

Convolution and averaging are both linear, so they commute: the conv of an averaged tile
equals the average of the convs of its sub-patches. On the stored mixed image
(``input_mixed=True``, the default) the average is therefore already done and is skipped;
with ``input_mixed=False`` the model takes the full plain image and averages after the conv.
Both give the same tokens up to float rounding (tested), so a model trained on mixed shards
is exactly the model the theory describes. Patch positions survive mixing, so the absolute
position embedding is kept.

``img_size`` and ``patch_size`` always describe the plain image (names keep timm's
``_patch16_224``); the stored input is ``img_size · sub_patch / patch_size`` on a side
(112 px for ``mivit_tiny_patch16_224``, 16 px for ``mivit_tiny_patch4_32``).
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import Format, nchw_to, to_2tuple
from timm.models import build_model_with_cfg
from timm.models.vision_transformer import VisionTransformer

from train.models.registry import Variant, declare_family, register_family, sized_variants

__all__ = ["MixedPatchEmbed", "create_mivit"]


class MixedPatchEmbed(nn.Module):
    """Sub-patch-linear patch embedding: conv s×s/s, (p/s)² average, GELU, 1×1 conv.

    ``input_mixed`` says what the forward pass receives: the stored mixed image (True) or the
    full plain image (False). The weights are the same either way.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        norm_layer: type[nn.Module] | None = None,
        flatten: bool = True,
        output_fmt: str | None = None,
        bias: bool = True,
        strict_img_size: bool = True,
        dynamic_img_pad: bool = False,
        sub_patch: int = 8,
        input_mixed: bool = True,
        hidden_dim: int | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        if self.patch_size[0] != self.patch_size[1]:
            raise ValueError(f"MI patch embedding needs square patches, got {self.patch_size}")
        patch = self.patch_size[0]
        if sub_patch <= 0 or patch % sub_patch:
            raise ValueError(f"sub_patch {sub_patch} must divide patch size {patch}")
        if dynamic_img_pad:
            raise ValueError("MI patch embedding cannot pad: mixed tiles have a fixed size")
        self.sub_patch = sub_patch
        self.pool = patch // sub_patch
        self.input_mixed = input_mixed
        self.strict_img_size = strict_img_size
        self.flatten = flatten and output_fmt is None
        self.output_fmt = Format(output_fmt) if output_fmt is not None else Format.NCHW
        self.img_size, self.grid_size, self.num_patches = self._grid(img_size)
        dd = {"device": device, "dtype": dtype}
        hidden_dim = hidden_dim or embed_dim
        self.proj = nn.Conv2d(in_chans, hidden_dim, kernel_size=sub_patch, stride=sub_patch,
                              bias=bias, **dd)
        self.act = nn.GELU()
        self.proj_out = nn.Conv2d(hidden_dim, embed_dim, kernel_size=1, **dd)
        self.norm = norm_layer(embed_dim, **dd) if norm_layer else nn.Identity()

    def _grid(self, img_size: int | tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int], int]:
        size = to_2tuple(img_size)
        if size[0] % self.patch_size[0] or size[1] % self.patch_size[1]:
            raise ValueError(f"image size {size} is not a multiple of patch size {self.patch_size}")
        grid = (size[0] // self.patch_size[0], size[1] // self.patch_size[1])
        return size, grid, grid[0] * grid[1]

    @property
    def input_tile(self) -> int:
        """Pixels per token side in the tensor the forward pass receives."""
        return self.sub_patch if self.input_mixed else self.patch_size[0]

    @property
    def input_size(self) -> tuple[int, int]:
        """Expected (H, W) of the forward input: the stored mixed size or the plain size."""
        return self.grid_size[0] * self.input_tile, self.grid_size[1] * self.input_tile

    def set_input_size(self, img_size: int | tuple[int, int] | None = None,
                       patch_size: int | tuple[int, int] | None = None) -> None:
        if patch_size is not None and to_2tuple(patch_size) != self.patch_size:
            raise ValueError("MI patch embedding cannot change its patch size after construction")
        if img_size is not None:
            self.img_size, self.grid_size, self.num_patches = self._grid(img_size)

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        return self.patch_size[0] if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        return img_size[0] // self.input_tile, img_size[1] // self.input_tile

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        tile = self.input_tile
        if self.strict_img_size and (height, width) != self.input_size:
            kind = "mixed" if self.input_mixed else "plain"
            raise ValueError(f"MI-ViT expects a {kind} input of {self.input_size}, got {(height, width)}")
        if height % tile or width % tile:
            raise ValueError(f"input {(height, width)} is not a multiple of the {tile} px tile")
        x = self.proj(x)
        if not self.input_mixed:
            x = F.avg_pool2d(x, self.pool)
        x = self.proj_out(self.act(x))
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)
        elif self.output_fmt != Format.NCHW:
            x = nchw_to(x, self.output_fmt)
        return self.norm(x)


def create_mivit(variant: str, pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Build an MI-ViT through timm's model builder.

    Extra kwargs: ``sub_patch`` (s), ``input_mixed`` (default True), ``mi_hidden_dim``
    (channels between the s×s conv and the 1×1 conv; default the embedding width).
    """
    embed_layer = partial(
        MixedPatchEmbed,
        sub_patch=kwargs.pop("sub_patch"),
        input_mixed=kwargs.pop("input_mixed", True),
        hidden_dim=kwargs.pop("mi_hidden_dim", None),
    )
    return build_model_with_cfg(
        VisionTransformer,
        variant,
        pretrained=pretrained,  # only a local file (train-encrypted export): nothing to download
        embed_layer=embed_layer,
        feature_cfg=dict(out_indices=3, feature_cls="getter"),
        **kwargs,
    )


# Sub-patches mixed in place: the embedding is linear in them, positions kept.
declare_family("mivit", "classification", ("mix",), plain_geometry=True)
register_family(__name__, create_mivit, {  # input: the stored mixed image
    **sized_variants("mivit_{size}_patch16_224", dict(patch_size=16, sub_patch=8, img_size=224), (3, 112, 112),
                     "MI-ViT-{abbr}/16, sub-patch 8: takes the 112 px mixed image of a 224 px image."),
    "mivit_tiny_patch4_32": Variant("tiny", dict(patch_size=4, sub_patch=2, img_size=32), (3, 16, 16),
                                    "MI-ViT-Ti, patch 4, sub-patch 2: takes the 16 px mixed image of a 32 px image."),
}, fixed_input_size=True)
