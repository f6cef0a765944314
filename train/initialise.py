"""`--init-from`: start a run from a plain timm ViT checkpoint or from another patchveil run.

Why: engineers fine-tune; they do not train from scratch. Tensors are matched by name and
shape; what does not fit the cipher's model is converted where an exact or documented
rule exists, and skipped otherwise:

- position embedding: dropped for the shuffled families (PEViT, D4-ViT have none), resampled
  (timm's `resample_abs_pos_embed`) when the token grid differs;
- patch embedding: input channels adapted (timm's `adapt_input_conv`, e.g. RGB summed for
  grayscale); a plain p×p kernel W becomes the s×s kernel acting on the mixed tile,
  ``W_s[i, j] = Σ_{a,b<k} W[a·s+i, b·s+j]`` (k = p/s). The mixed tile m is the mean of the
  k² sub-patches, and the image whose k² sub-patches all equal m (its least-norm preimage
  under mixing) has plain embedding exactly ``W_s * m``: the conversion is exact on images
  whose sub-patches are identical, and otherwise embeds that preimage (the approximation).
  Other kernel sizes are resampled (timm's `resample_patch_embed`);
- the MI (and D4) embeddings put a GELU between the s×s conv and the 1×1 map; the linear map
  is carried through it exactly by a hidden width of 2·D: ``GELU(z) − GELU(−z) = z``, so the
  conv holds ``[W_s; −W_s]`` and the 1×1 map ``[I, −I]``. D4-ViT then averages the kernel
  over the 8 turns (its invariance; not exact for the plain model);
- head: re-initialised when its shape differs (another class count or an anchor width).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shards.modes import mode_of
from train.checkpoint import FORMAT, CheckpointError

__all__ = ["InitReport", "hidden_kwarg", "init_from", "load_weights", "mixed_kernel"]

log = logging.getLogger("train")
POS, PROJ = "pos_embed", "patch_embed.proj"


@dataclass
class InitReport:
    """What `init_from` did, tensor by tensor (names), for the summary line and the run log."""

    source: str
    loaded: list[str] = field(default_factory=list)
    converted: dict[str, str] = field(default_factory=dict)   # target name -> how
    skipped: dict[str, str] = field(default_factory=dict)     # source name -> why
    fresh: list[str] = field(default_factory=list)            # target names left as initialised

    def summary(self) -> str:
        why = sorted(set(self.skipped.values()))
        return (f"init from {self.source}: {len(self.loaded)} tensors loaded, {len(self.converted)} converted, "
                f"{len(self.skipped)} skipped" + (f" ({'; '.join(why)})" if why else "")
                + f", {len(self.fresh)} newly initialised")

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "loaded": len(self.loaded), "converted": self.converted,
                "skipped": self.skipped, "fresh": self.fresh}


# -- reading weights -------------------------------------------------------------------------

def _cached_timm_file(name: str) -> Path:
    """The weights of timm model `name` in the local Hugging Face cache; never downloads."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001  (timm raises several types for an unknown name)
        cfg = None
    if cfg is None or not cfg.hf_hub_id:
        raise CheckpointError(f"timm:{name}: not a timm model with Hugging Face weights")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(cfg.hf_hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    raise CheckpointError(f"timm:{name}: weights not in the local Hugging Face cache ({cfg.hf_hub_id}); "
                          "nothing is downloaded at run time: fetch them once beforehand or pass a file")


def load_weights(source: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a patchveil checkpoint, a timm `.safetensors` / `.pth` file or `timm:NAME`."""
    text = str(source)
    path = _cached_timm_file(text[5:]) if text.startswith("timm:") else Path(text)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (many types for a damaged or foreign file)
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable weights file ({reason})") from None
    if isinstance(state, dict) and state.get("format") == FORMAT:
        return state["weights"]
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):  # timm's own train.py layouts
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}


# -- conversions ---------------------------------------------------------------------------------

def mixed_kernel(weight: torch.Tensor, sub_patch: int) -> torch.Tensor:
    """Plain p×p conv kernel → the s×s kernel on the mixed tile: the sum over the k×k blocks."""
    d, c, p, _ = weight.shape
    k = p // sub_patch
    return weight.reshape(d, c, k, sub_patch, k, sub_patch).sum(dim=(2, 4))


def _dihedral_mean(weight: torch.Tensor) -> torch.Tensor:
    """The kernel averaged over the 8 flips and quarter turns (what D4-ViT's mean makes of it)."""
    turns = [torch.rot90(w, r, dims=(-2, -1)) for w in (weight, weight.flip(-1)) for r in range(4)]
    return torch.stack(turns).mean(0)


def hidden_kwarg(model: nn.Module) -> str | None:
    """The create_model keyword of the width between the embedding's conv and its 1×1 map, if any."""
    from train.models.dihedral import DihedralPatchEmbed
    from train.models.mivit import MixedPatchEmbed

    embed = getattr(model, "patch_embed", None)
    if isinstance(embed, MixedPatchEmbed):
        return "mi_hidden_dim"
    if isinstance(embed, DihedralPatchEmbed):
        return "d4_hidden_dim"
    return None


def _grid_side(tokens: int) -> int | None:
    side = math.isqrt(tokens)
    return side if side * side == tokens else None


def _pos_embed(model: nn.Module, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor | None:
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    side = _grid_side(src.shape[1] - prefix)
    if side is None or src.shape[-1] != dst.shape[-1]:
        return None
    grid = list(model.patch_embed.grid_size)
    return resample_abs_pos_embed(src, new_size=grid, old_size=[side, side], num_prefix_tokens=prefix)


def _plain_kernel(model: nn.Module, src: torch.Tensor, cipher: Any) -> tuple[torch.Tensor, str] | None:
    """The source kernel as the s×s (or t×t) kernel the target's first conv needs, and how."""
    from timm.layers import resample_patch_embed
    from timm.models import adapt_input_conv

    target = model.patch_embed.proj.weight
    notes = []
    w = src
    if w.ndim != 4 or w.shape[0] != model.embed_dim:
        return None
    if w.shape[1] != target.shape[1]:
        w = adapt_input_conv(target.shape[1], w, base_chans=w.shape[1])
        notes.append(f"{src.shape[1]}→{target.shape[1]} channels")
    side = target.shape[-1]
    mixing = cipher is not None and mode_of(cipher.mode).mixes
    if w.shape[-1] != side:
        if mixing and w.shape[-1] == cipher.patch and side == cipher.sub_patch:
            w = mixed_kernel(w, side)
            notes.append(f"p={cipher.patch} kernel summed over its {cipher.patch // side}² sub-patch blocks")
        else:
            w = resample_patch_embed(w, [side, side])
            notes.append(f"kernel resampled {src.shape[-1]}→{side}")
    return w, ", ".join(notes) or "as is"


def _embedding(model: nn.Module, source: dict[str, torch.Tensor], cipher: Any,
               report: InitReport) -> dict[str, torch.Tensor]:
    """Target patch-embedding tensors derived from a plain linear embedding (see module doc)."""
    own = model.state_dict()
    src_w, src_b = source.get(PROJ + ".weight"), source.get(PROJ + ".bias")
    if src_w is None or (PROJ + ".weight") not in own:
        return {}
    linear = hidden_kwarg(model) is not None
    if own[PROJ + ".weight"].shape == src_w.shape and (not linear or "patch_embed.proj_out.weight" in source):
        return {}  # the same kind of embedding: loaded as is
    got = _plain_kernel(model, src_w, cipher)
    if got is None:
        return {}
    w, how = got
    out = {PROJ + ".weight": w}
    bias = src_b if src_b is not None else torch.zeros(w.shape[0])
    if linear:
        embed = model.patch_embed
        d, hidden = model.embed_dim, embed.proj.out_channels
        if hidden != 2 * d:
            return {}
        if type(embed).__name__ == "DihedralPatchEmbed":
            w, how = _dihedral_mean(w), how + ", averaged over the 8 turns"
        out[PROJ + ".weight"] = torch.cat([w, -w])
        out[PROJ + ".bias"] = torch.cat([bias, -bias])
        eye = torch.eye(d)
        proj_out = torch.cat([eye, -eye], dim=1)
        shape = own["patch_embed.proj_out.weight"].shape
        out["patch_embed.proj_out.weight"] = proj_out.reshape(shape)
        out["patch_embed.proj_out.bias"] = torch.zeros(d)
        how += ", carried through the GELU as GELU(z)−GELU(−z)"
    elif src_b is not None:
        out[PROJ + ".bias"] = src_b
    for name in out:
        report.converted[name] = how
    return out


def init_from(model: nn.Module, source: str | os.PathLike, cipher: Any = None, *,
              weights: dict[str, torch.Tensor] | None = None) -> InitReport:
    """Load `source` into `model` as far as it fits (module doc); the report says what happened.
    `weights`: `load_weights(source)` when the caller has read it already."""
    weights = load_weights(source) if weights is None else weights
    report = InitReport(str(source))
    backbone = getattr(model, "backbone", None)  # a detector: a plain ViT's weights go to its backbone
    if isinstance(backbone, nn.Module) and not any(k.startswith("backbone.") for k in weights):
        model = backbone
    own = model.state_dict()
    new = _embedding(model, weights, cipher, report)
    used = {PROJ + ".weight", PROJ + ".bias"} if new else set()
    for name, tensor in weights.items():
        if name in used:
            continue
        if name not in own:
            if name == POS:
                report.skipped[name] = "no position embedding in this model (shuffled tokens)"
            else:
                report.skipped[name] = "not in this model"
            continue
        target = own[name]
        if tensor.shape == target.shape:
            new[name] = tensor
            report.loaded.append(name)
        elif name == POS and (resampled := _pos_embed(model, tensor, target)) is not None \
                and resampled.shape == target.shape:
            new[name] = resampled
            report.converted[name] = f"grid resampled {tuple(tensor.shape)}→{tuple(target.shape)}"
        elif name.startswith("head"):
            report.skipped[name] = "head re-initialised (another class count or width)"
        else:
            report.skipped[name] = f"shape {tuple(tensor.shape)} does not fit {tuple(target.shape)}"
    report.fresh = sorted(set(own) - set(new))
    model.load_state_dict(new, strict=False)
    return report
