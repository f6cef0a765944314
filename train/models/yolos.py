"""YOLOS-style detector: a timm ViT whose extra detection tokens each predict one object.

YOLOS ("You Only Look at One Sequence") keeps the plain ViT and appends N learnable
detection tokens, with their own position embeddings, to the class and patch tokens. After
the last block each detection token goes through two MLP heads: class logits (object
classes plus "no object") and a normalised (cx, cy, w, h) box. Training matches tokens to
objects one-to-one (``train.matcher``, ``train.detection_losses``).

Two initialisations let a small detector learn from scratch in a few thousand steps (on
the canvas set, without them every token still predicted the same box for every image
after 2,500 steps). Each detection token owns a learnable reference point, spread on an
even grid at the start, and predicts its box centre relative to it
(``sigmoid(Δ + logit(reference))``, the reference points of Deformable DETR), so Hungarian
matching gives each token the objects near it instead of pulling all tokens to the mean box.
The patch position embeddings start as timm's 2-D sin-cos embedding (still learned), so
positions are readable from the first step.

Detection needs positions, so it runs on ``mix`` shards (positions kept) with MI-ViT's
``MixedPatchEmbed``, or on the plain ``none`` baseline with timm's ``PatchEmbed``. The
backbone is built with ``dynamic_img_size``: its patch position embeddings are interpolated
(timm's ``resample_abs_pos_embed``) to whatever grid the input image has, so a detector made
for one image size reads shards of another, and ``load_backbone`` resamples a checkpoint's
position embeddings to this model's grid. Names follow timm's and describe the plain image:
``yolos_mivit_tiny_patch16_224`` takes the 112 px mixed image of a 224 px image.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import timm
import torch
from torch import nn
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models import build_model_with_cfg
from timm.models.vision_transformer import VisionTransformer

from train.models.mivit import create_mivit
from train.models.registry import (WIDTHS, Variant, declare_family, family_for, register_family, served_modes,
                                   sized_variants)

__all__ = ["SIZES", "YOLOS", "detector_for_cipher", "reference_grid"]

SIZES = ("nano", "tiny", "small", "base")
_DIMS = {"nano": dict(embed_dim=128, depth=4, num_heads=4), **WIDTHS}  # nano: tests and CPU benchmarks


class MLP(nn.Sequential):
    """``layers`` linear layers with ReLU between them (the DETR/YOLOS prediction head)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int = 3) -> None:
        dims = [in_dim] + [hidden_dim] * (layers - 1)
        modules: list[nn.Module] = []
        for a, b in zip(dims, dims[1:]):
            modules += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        super().__init__(*modules, nn.Linear(dims[-1], out_dim))


def reference_grid(n: int) -> torch.Tensor:
    """n (cx, cy) points in (0, 1), row by row on the most even grid that holds n."""
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    i = torch.arange(n, dtype=torch.float32)
    return torch.stack([(i % cols + 0.5) / cols, (i // cols + 0.5) / rows], dim=-1)


class YOLOS(nn.Module):
    """A ViT backbone plus ``num_det_tokens`` detection tokens and class/box heads.

    ``forward(images)`` returns ``pred_logits`` (B, N, num_classes + 1; the last class is
    "no object"), ``pred_boxes`` (B, N, 4) normalised (cx, cy, w, h) in [0, 1], and, with
    ``aux_loss``, ``aux_outputs``: the same for the detection tokens after each earlier block.
    Before training, token i predicts a box centred on its reference point.
    """

    def __init__(self, backbone: VisionTransformer, num_classes: int, num_det_tokens: int = 100,
                 aux_loss: bool = False) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if num_det_tokens < 1:
            raise ValueError(f"num_det_tokens must be at least 1, got {num_det_tokens}")
        if backbone.pos_embed is None:
            raise ValueError("YOLOS needs a backbone with absolute position embeddings")
        self.backbone = backbone
        self.num_classes, self.num_det_tokens, self.aux_loss = num_classes, num_det_tokens, aux_loss
        dim = backbone.embed_dim
        self.det_token = nn.Parameter(torch.zeros(1, num_det_tokens, dim))
        self.det_pos_embed = nn.Parameter(torch.zeros(1, num_det_tokens, dim))
        trunc_normal_(self.det_token, std=0.02)
        trunc_normal_(self.det_pos_embed, std=0.02)
        self.det_reference = nn.Parameter(reference_grid(num_det_tokens).logit())
        self.class_embed = MLP(dim, dim, num_classes + 1)
        self.bbox_embed = MLP(dim, dim, 4)
        nn.init.zeros_(self.bbox_embed[-1].weight)  # start exactly on the reference points
        nn.init.zeros_(self.bbox_embed[-1].bias)
        self._sincos_position_embedding()
        self.pretrained_cfg = getattr(backbone, "pretrained_cfg", {})

    @torch.no_grad()
    def _sincos_position_embedding(self) -> None:
        """Patch position embeddings start as the 2-D sin-cos table (class token's stays)."""
        vit = self.backbone
        if vit.embed_dim % 4 or vit.pos_embed.device.type == "meta":
            return
        prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
        table = build_sincos2d_pos_embed(list(vit.patch_embed.grid_size), vit.embed_dim)
        vit.pos_embed[0, prefix:] = table.to(vit.pos_embed.dtype)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Tokens and position embeddings are not decayed (timm's optimizer factory reads this)."""
        return {"det_token", "det_pos_embed", "det_reference",
                *(f"backbone.{n}" for n in self.backbone.no_weight_decay())}

    def _heads(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        delta = self.bbox_embed(tokens)
        centre = (delta[..., :2] + self.det_reference).sigmoid()
        return {"pred_logits": self.class_embed(tokens),
                "pred_boxes": torch.cat([centre, delta[..., 2:].sigmoid()], dim=-1)}

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        vit = self.backbone
        x = vit.patch_embed(images)
        x = vit._pos_embed(x)  # class token + patch position embeddings, resampled to the grid
        x = vit.norm_pre(vit.patch_drop(x))
        det = (self.det_token + self.det_pos_embed).expand(x.shape[0], -1, -1)
        x = torch.cat([x, det], dim=1)
        aux = []
        for i, block in enumerate(vit.blocks):
            x = block(x)
            if self.aux_loss and i < len(vit.blocks) - 1:
                aux.append(self._heads(vit.norm(x[:, -self.num_det_tokens:])))
        out = self._heads(vit.norm(x)[:, -self.num_det_tokens:])
        if self.aux_loss:
            out["aux_outputs"] = aux
        return out

    def load_backbone(self, state_dict: Mapping[str, torch.Tensor], strict: bool = False) -> list[str]:
        """Load ViT weights (e.g. a classification run's) into the backbone, position
        embeddings resampled to this model's grid; returns the keys that were not loaded."""
        vit = self.backbone
        state = {k.removeprefix("backbone."): v for k, v in state_dict.items()}
        if "pos_embed" in state and state["pos_embed"].shape != vit.pos_embed.shape:
            prefix = vit.num_prefix_tokens
            old = state["pos_embed"].shape[1] - prefix
            side = int(round(old ** 0.5))
            if side * side != old:
                raise ValueError(f"pos_embed with {old} patch positions is not a square grid")
            state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], list(vit.patch_embed.grid_size),
                                                        old_size=[side, side], num_prefix_tokens=prefix)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        result = vit.load_state_dict(state, strict=strict)
        return list(result.missing_keys)


def _create_yolos(variant: str, pretrained: bool, mixed: bool, *, num_classes: int = 80,
                  num_det_tokens: int = 100, aux_loss: bool = False, **kwargs: Any) -> YOLOS:
    """Build the backbone through timm (MI-ViT for ``mix``, plain ViT otherwise), then YOLOS."""
    if pretrained:
        raise ValueError(f"{variant}: no pretrained weights exist; use pretrained=False")
    kwargs.update(num_classes=0, global_pool="", dynamic_img_size=True)
    if mixed:
        backbone = create_mivit(variant, False, **kwargs)
    else:
        backbone = build_model_with_cfg(VisionTransformer, variant, pretrained=False, **kwargs)
    model = YOLOS(backbone, num_classes, num_det_tokens, aux_loss)
    model.default_cfg = model.pretrained_cfg
    return model


def _create_mixed(variant: str, pretrained: bool = False, **kwargs: Any) -> YOLOS:
    return _create_yolos(variant, pretrained, True, **kwargs)


def _create_plain(variant: str, pretrained: bool = False, **kwargs: Any) -> YOLOS:
    return _create_yolos(variant, pretrained, False, **kwargs)


# Boxes need tokens where they were: only position-keeping modes have a detector.
declare_family("mivit", "detection", ("mix",), plain_geometry=True)
declare_family("vit", "detection", ("none",))
_CFG = dict(num_classes=80, first_conv="backbone.patch_embed.proj", classifier="class_embed")
register_family(__name__, _create_mixed, {  # input: the stored mixed image
    "yolos_mivit_nano_patch8_64": Variant("nano", dict(patch_size=8, sub_patch=4, img_size=64), (3, 32, 32),
                                          "YOLOS on MI-ViT, 4 blocks of width 128, patch 8, sub-patch 4: "
                                          "the 32 px mixed image of 64 px."),
    **sized_variants("yolos_mivit_{size}_patch16_224", dict(patch_size=16, sub_patch=8, img_size=224),
                     (3, 112, 112), "YOLOS on MI-ViT-{abbr}/16, sub-patch 8: the 112 px mixed image of 224 px."),
}, widths=_DIMS, **_CFG)
register_family(__name__, _create_plain, {
    "yolos_vit_nano_patch8_64": Variant("nano", dict(patch_size=8, img_size=64), (3, 64, 64),
                                        "Plain-image baseline of yolos_mivit_nano_patch8_64 (same widths, "
                                        "same token grid)."),
    **sized_variants("yolos_vit_{size}_patch16_224", dict(patch_size=16, img_size=224), (3, 224, 224),
                     "Plain-image baseline: YOLOS on ViT-{abbr}/16."),
}, widths=_DIMS, **_CFG)


def detector_for_cipher(cipher: Mapping[str, Any], num_classes: int, size: str = "tiny",
                        num_det_tokens: int = 100, aux_loss: bool = False) -> tuple[str, dict[str, Any]]:
    """``(timm name, create_model kwargs)`` of the detector that reads a release's images.

    ``cipher`` is a manifest's cipher dict. ``mix`` → YOLOS on MI-ViT (patch p, sub-patch s,
    plain image size), ``none`` → YOLOS on a plain ViT (patch p); shuffled modes cannot carry
    boxes. The kwargs spell out the geometry, so the name only fixes the width.
    """
    mode = cipher.get("mode")
    family = family_for("detection", mode)
    if family is None:
        raise ValueError(f"cipher mode {mode!r} cannot be used for detection "
                         f"(shuffled patches lose positions); use {' or '.join(served_modes('detection'))}")
    if size not in SIZES:
        raise ValueError(f"detector size {size!r} is not one of {list(SIZES)}")
    image = cipher["image_size"]
    height, width = (image, image) if isinstance(image, int) else (int(image[0]), int(image[1]))
    patch = int(cipher["patch"])
    kwargs: dict[str, Any] = {"num_classes": num_classes, "num_det_tokens": num_det_tokens,
                              "aux_loss": aux_loss, "in_chans": int(cipher.get("channels", 3)),
                              "patch_size": patch, "img_size": height if height == width else (height, width)}
    if family.plain_geometry:
        kwargs["sub_patch"] = int(cipher["sub_patch"])
    exact = f"yolos_{family.prefix}_{size}_patch{patch}_{height}"
    names = ([exact] if height == width and timm.is_model(exact)
             else timm.list_models(f"yolos_{family.prefix}_{size}_*"))
    return names[0], kwargs
