"""Registering a family of untrained ViT variants with timm, written once for every family.

PEViT, MI-ViT and D4-ViT differ only in how they build a model; their widths, the config
timm keeps for an untrained model and the `register_model` entry points are the same, so
each family module lists its variants and calls `register_family`. Each family also
declares the cipher modes whose stored images it reads (`declare_family`), and
`model_for_cipher` / `detector_for_cipher` choose from those declarations only.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.models import generate_default_cfgs, register_model

from shards.modes import MODES

__all__ = ["FAMILIES", "WIDTHS", "Family", "Variant", "declare_family", "family_for", "register_family",
           "sized_variants", "untrained_cfg"]

WIDTHS = {  # the ViT-Ti/S/B widths of the ViT paper (DeiT naming)
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}


@dataclass(frozen=True)
class Family:
    """A model family, the modes it serves and how it spells their geometry.

    `plain_geometry`: the family takes the plain image size, patch p and the sub-patch (MI-ViT's
    embedding mixes inside the model's geometry); otherwise it takes the stored image and its
    token tile.
    """

    prefix: str                 # timm names: {prefix}_{size}_patch{tile}_{img}
    task: str                   # "classification" or "detection"
    serves: tuple[str, ...]     # cipher modes (shards.modes) whose stored images it reads
    plain_geometry: bool = False


FAMILIES: dict[tuple[str, str], Family] = {}


def declare_family(prefix: str, task: str, serves: tuple[str, ...], *, plain_geometry: bool = False) -> Family:
    """Declare which modes a family reads; a mode may have one family per task."""
    unknown = [m for m in serves if m not in MODES]
    if unknown:
        raise ValueError(f"family {prefix}: {', '.join(unknown)} is not a cipher mode (shards.modes)")
    for other in FAMILIES.values():
        taken = set(serves) & set(other.serves)
        if other.task == task and other.prefix != prefix and taken:
            raise ValueError(f"family {prefix}: {', '.join(sorted(taken))} already served by {other.prefix}")
    family = Family(prefix, task, tuple(serves), plain_geometry)
    FAMILIES[(task, prefix)] = family
    return family


def family_for(task: str, mode: Any) -> Family | None:
    """The family declared for `mode` in `task`, or None."""
    return next((f for f in FAMILIES.values() if f.task == task and mode in f.serves), None)


def served_modes(task: str) -> list[str]:
    """Every mode some family of `task` reads, in the table's order."""
    return [m for m in MODES if family_for(task, m) is not None]


@dataclass(frozen=True)
class Variant:
    """One registered name: its size, geometry (`patch_size`, `img_size`, …), input and docstring."""

    size: str
    geometry: Mapping[str, Any]
    input_size: tuple[int, int, int]
    doc: str


def sized_variants(name: str, geometry: Mapping[str, Any], input_size: tuple[int, int, int], doc: str,
                   sizes: tuple[str, ...] = ("tiny", "small", "base")) -> dict[str, Variant]:
    """One variant per size: `name` and `doc` have `{size}` / `{abbr}` (Ti, S, B) filled in."""
    abbr = {"tiny": "Ti", "small": "S", "base": "B"}
    return {name.format(size=size): Variant(size, geometry, input_size, doc.format(abbr=abbr.get(size, size)))
            for size in sizes}


def untrained_cfg(input_size: tuple[int, int, int], *, fixed_input_size: bool,
                  **overrides: Any) -> dict[str, Any]:
    """timm's pretrained-config dict for a model that has no weights to download."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": input_size,
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "fixed_input_size": fixed_input_size,
        "mean": IMAGENET_INCEPTION_MEAN,
        "std": IMAGENET_INCEPTION_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        **overrides,
    }


def register_family(module_name: str, create: Callable[..., Any], variants: Mapping[str, Variant], *,
                    fixed_input_size: bool = False, widths: Mapping[str, Mapping[str, Any]] = WIDTHS,
                    **cfg_overrides: Any) -> None:
    """Register `name → create(name, pretrained, **(width | geometry | kwargs))` for each variant.

    The entry points live in `module_name` (timm lists models by module, and reads the
    module's `default_cfgs`, which this extends first), with the variant's docstring.
    `cfg_overrides` change the untrained config (e.g. a detector's `classifier`).
    """
    module = sys.modules[module_name]
    cfgs = generate_default_cfgs({
        f"{name}.untrained": untrained_cfg(v.input_size, fixed_input_size=fixed_input_size, **cfg_overrides)
        for name, v in variants.items()
    })
    module.default_cfgs = {**getattr(module, "default_cfgs", {}), **cfgs}
    for name, variant in variants.items():
        entry = _entry_point(name, create, {**widths[variant.size], **variant.geometry})
        entry.__module__, entry.__doc__ = module_name, variant.doc
        setattr(module, name, register_model(entry))


def _entry_point(name: str, create: Callable[..., Any], args: dict[str, Any]) -> Callable[..., Any]:
    def entry(pretrained: bool = False, **kwargs: Any) -> Any:
        return create(name, pretrained, **{**args, **kwargs})

    entry.__name__ = entry.__qualname__ = name
    return entry
