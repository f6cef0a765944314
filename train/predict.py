"""Using a trained classifier: `predict` on new plain images, `export` to a plain timm checkpoint.

Which images need the data owner's key? Only what the key decides and the model is not
built to ignore. Per mode: `none` and `mix` use no key (mix is a keyless average, applied
here with torch, bit for bit as the encryptor does it, rounding included); `shuffle` and
`mix-shuffle` key only the tile order, which a model without position embedding (PEViT)
cannot see, so plain (or keylessly mixed) tiles in their own order do; `mix-shuffle-orient`
also keys each tile's turn, which D4-ViT's embedding averages away. So the families
`--model auto` picks need no key in any mode. A model that does see the keyed part (e.g.
`--model vit_*` with a position embedding on shuffled shards) is refused: its input must be
encrypted by the owner (`--encrypted` takes such stored images as they are).

`train` never imports `encrypt` (the layering rule): the keyless mix is reimplemented here
and tested against shards the real job wrote.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from shards.manifest import CipherSpec
from shards.modes import mode_of
from train.checkpoint import CheckpointError, cipher_of, load_checkpoint
from train.errors import TrainError

__all__ = ["Predictor", "export_checkpoint", "key_needed", "keyless_mix", "load_image"]

def keyless_mix(images: torch.Tensor, patch: int, sub_patch: int) -> torch.Tensor:
    """uint8 B×C×H×W → the mixed image: each p×p patch's k² s×s sub-patches averaged, rounded half up."""
    b, c, h, w = images.shape
    k = patch // sub_patch
    x = images.to(torch.int32).reshape(b, c, h // patch, k, sub_patch, w // patch, k, sub_patch)
    sums = x.sum(dim=(3, 6))  # (b, c, rows, s, cols, s)
    count = k * k
    mixed = torch.div(sums + count // 2, count, rounding_mode="floor")
    return mixed.reshape(b, c, h // patch * sub_patch, w // patch * sub_patch).to(torch.uint8)


def key_needed(model: nn.Module, mode: str) -> str | None:
    """What the key decides that `model` is not invariant to (None: plain images will do)."""
    from train.models.dihedral import DihedralPatchEmbed

    facts = mode_of(mode)  # the key decides the tile order (shuffles) and each tile's turn (turns)
    if facts.shuffles and getattr(model, "pos_embed", None) is not None:
        return "the tile order (the model has a position embedding)"
    if facts.turns and not isinstance(getattr(model, "patch_embed", None), DihedralPatchEmbed):
        return "each tile's turn (the model's embedding is not turn invariant)"
    return None


def load_image(path: str | os.PathLike, size: tuple[int, int], channels: int) -> np.ndarray:
    """H×W×C uint8: decoded, shorter side resized to cover `size` (bicubic), centre-cropped."""
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            h, w = size
            if (img.height, img.width) != (h, w):
                scale = max(h / img.height, w / img.width)
                nw, nh = max(w, round(img.width * scale)), max(h, round(img.height * scale))
                img = img.resize((nw, nh), Image.Resampling.BICUBIC)
                left, top = (nw - w) // 2, (nh - h) // 2
                img = img.crop((left, top, left + w, top + h))
            pixels = np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as e:
        raise TrainError(f"{path}: not a readable image ({e})") from None
    return pixels[..., None] if pixels.ndim == 2 else pixels


class Predictor:
    """A classification checkpoint ready to score plain images (or stored ones with `encrypted`)."""

    def __init__(self, checkpoint: str | os.PathLike, *, encrypted: bool = False,
                 device: str | torch.device = "cpu") -> None:
        from train.config import TrainConfig
        from train.losses import build_loss
        from train.tasks import create_model

        state = load_checkpoint(checkpoint)
        if state.get("task", "classification") != "classification":
            raise CheckpointError(f"{checkpoint}: a {state['task']} checkpoint; predict takes a classify run's")
        self.cipher: CipherSpec = cipher_of(state)
        self.encrypted, self.device = encrypted, torch.device(device)
        config = TrainConfig.from_dict(state["config"])
        num_classes = state["release"]["num_classes"]
        try:
            self.model = create_model(state["model"]["name"], state["model"]["kwargs"])
            self.model.load_state_dict(state["weights"])
            self.criterion, _ = build_loss(config.loss, num_classes, label_smoothing=config.label_smoothing,
                                           anchors=config.anchors, scale=config.anchor_scale, seed=config.seed)
            self.criterion.load_state_dict(state["criterion"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{checkpoint}: does not hold a model this code can load "
                                  f"({str(e).strip().splitlines()[0][:160]})") from None
        self.model.to(self.device).eval()
        self.criterion.to(self.device).eval()
        if not encrypted and (gap := key_needed(self.model, self.cipher.mode)):
            raise CheckpointError(f"{checkpoint}: trained on {self.cipher.mode} shards and sees {gap}: plain "
                                  "images cannot stand in for encrypted ones without the data owner's key; "
                                  "have the owner encrypt them and pass --encrypted")
        names = state["release"].get("class_names")
        self.names = list(names) if names else [str(i) for i in range(num_classes)]
        from train.data import channel_stats

        channels = self.cipher.channels
        self.mean = torch.tensor(channel_stats(state["normalize"]["mean"], channels)).view(1, -1, 1, 1)
        self.std = torch.tensor(channel_stats(state["normalize"]["std"], channels)).view(1, -1, 1, 1)

    def stored(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 plain B×C×H×W → what the model was trained on, as far as no key is needed."""
        if mode_of(self.cipher.mode).mixes:
            return keyless_mix(images, self.cipher.patch, self.cipher.sub_patch)
        return images  # none; shuffle: the order-invariant model reads the tiles in any order

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (softmax of the loss's own logits) for a uint8 plain batch."""
        x = images if self.encrypted else self.stored(images)
        x = (x.to(self.device).float() / 255.0 - self.mean.to(self.device)) / self.std.to(self.device)
        return self.criterion.logits(self.model(x).float()).softmax(-1)

    def predict(self, paths: Sequence[str | os.PathLike], top_k: int = 5, batch_size: int = 64) -> list[dict]:
        """One record per image: its path and the top-k classes (index, name, probability)."""
        size = self.cipher.stored_size if self.encrypted else self.cipher.image_size
        out = []
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            batch = torch.from_numpy(np.stack([load_image(p, size, self.cipher.channels) for p in chunk]))
            probs = self.probabilities(batch.permute(0, 3, 1, 2).contiguous())
            values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
            for path, v, i in zip(chunk, values.tolist(), indices.tolist()):
                out.append({"image": str(path), "top": [{"class": c, "name": self.names[c], "prob": round(p, 6)}
                                                        for c, p in zip(i, v)]})
        return out


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike) -> dict[str, Any]:
    """Write the model's weights as a plain timm checkpoint (`.safetensors` or `.pth`) and a
    `<output>.json` beside it saying how to build the model; returns that description.

    timm drops a checkpoint's head unless the config's class count matches it, so the load
    call carries `num_classes` in the overlay (as the description spells out).
    """
    state = load_checkpoint(checkpoint)
    output = Path(output)
    if output.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
        raise TrainError(f"{output}: choose a .safetensors or .pth file name")
    weights = {k: v.contiguous() for k, v in state["weights"].items()}
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(weights, str(output))
    else:
        torch.save(weights, output)
    name, kwargs = state["model"]["name"], dict(state["model"]["kwargs"])
    head = kwargs.get("num_classes", state["release"]["num_classes"])
    overlay = {"file": str(output.resolve()), "num_classes": head}
    loss = state["config"].get("loss", "ce")
    description = {
        "model": name, "kwargs": kwargs, "pretrained_cfg_overlay": overlay, "task": state.get("task"),
        "normalize": state["normalize"], "class_names": state["release"].get("class_names"),
        "cipher": state["release"]["cipher"], "loss": loss,
        "load": f"import train.models, timm; timm.create_model({name!r}, pretrained=True, "
                f"pretrained_cfg_overlay={overlay!r}, **{kwargs!r})",
        "note": ("the head outputs features: the class is the nearest anchor (anchors in the checkpoint's "
                 "criterion)") if loss != "ce" else "the head outputs class logits",
    }
    output.with_suffix(".json").write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")
    return description
