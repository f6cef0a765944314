"""Checkpoints: what a run needs to continue at the very step it stopped, or to be evaluated.

A checkpoint is a plain dict saved with `torch.save` and read back with
`torch.load(weights_only=True)`, so loading one never runs code from the file: only
tensors, numbers, strings, lists and dicts are in it (numpy's RNG state is stored as a
tensor for that reason). It names the release it was trained on (cipher, class count,
dataset id, key id) so a model is never evaluated on shards it cannot read. Writes go to a
temporary file beside the target and are renamed when complete. Nothing secret is in it:
the key id is public and the model never saw a key.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.errors import TrainError
from shards.common import atomic_writer
from shards.manifest import CipherSpec, Manifest

__all__ = [
    "CheckpointError",
    "FORMAT",
    "capture_rng",
    "check_release",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]

FORMAT = "patchveil-checkpoint/1"
# Cipher fields that decide which tensors a model reads; storage format and quality do not.
GEOMETRY = ("mode", "patch", "sub_patch", "image_size", "stored_size", "channels")


class CheckpointError(TrainError):
    """A checkpoint cannot be read or does not fit the release; one line naming the file."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """`torch.save` to a temporary name in the same folder, fsync, rename into place."""
    # 0644: nothing secret inside; a private temp file's 0600 would lock out the team.
    with atomic_writer(path, 0o644) as f:
        torch.save({"format": FORMAT, **state}, f)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (tensors and plain values only)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or foreign file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a patchveil checkpoint (expected format {FORMAT})")
    return state


def release_record(manifest: Manifest) -> dict[str, Any]:
    """What a checkpoint remembers about the release it was trained on."""
    return {"cipher": manifest.cipher.to_dict(), "num_classes": manifest.num_classes,
            "dataset_id": manifest.dataset_id, "key_id": manifest.dataset_key_id,
            "manifest_digest": manifest.digest(), "encrypted": manifest.cipher.encrypted,
            "class_names": manifest.class_names}


def _describe(cipher: dict[str, Any]) -> str:
    size = "x".join(map(str, cipher["image_size"]))
    sub = f" s={cipher['sub_patch']}" if cipher.get("sub_patch") else ""
    return f"{cipher['mode']} p={cipher['patch']}{sub} {size} {cipher['channels']}ch"


def check_release(state: dict[str, Any], manifest: Manifest, path: str | os.PathLike) -> None:
    """Refuse a checkpoint whose model cannot read this release's images or classes."""
    trained = state["release"]
    ours = manifest.cipher.to_dict()
    for field in GEOMETRY:
        if trained["cipher"][field] != ours[field]:  # both from CipherSpec.to_dict
            raise CheckpointError(f"{path}: trained on {_describe(trained['cipher'])} shards, "
                                  f"this release is {_describe(ours)} ({field} differs)")
    if trained["num_classes"] != manifest.num_classes:
        raise CheckpointError(f"{path}: trained for {trained['num_classes']} classes, "
                              f"this release has {manifest.num_classes}")


def capture_rng() -> dict[str, Any]:
    """This process's random generators (python, numpy, torch CPU and CUDA) as plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put the generators back as `capture_rng` found them."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def cipher_of(state: dict[str, Any]) -> CipherSpec:
    """The cipher a checkpoint was trained on."""
    return CipherSpec.from_dict(state["release"]["cipher"])
