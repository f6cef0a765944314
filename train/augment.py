"""Ciphertext-domain augmentations on batches (B, C, H, W) of stored images.

An ML engineer only ever holds encrypted images, so every augmentation here works on them
directly and is one of two kinds:

- it commutes with the cipher, so it equals an augmentation of the plain image followed
  by encryption: ``per_patch_hflip`` (with the permutation mapped through the column mirror
  for shuffled shards), ``ColorJitter`` (per-pixel or image-wide statistics: unchanged by any
  tile permutation, and by mixing too up to clipping);
- it is natural for a set of tokens: ``token_cutmix``, ``token_mixup``, ``token_drop`` and
  the ``TokenMix`` batch mixer, which only ever move whole tiles or blend images.

``tile`` is the token tile in the stored image: the patch p for ``shuffle`` and ``none``,
the sub-patch s for ``mix`` and ``mix-shuffle``. Geometry-based augmentation (crops,
resizes) cannot commute with a secret shuffle; it happens at encryption time (``--views``).
Random draws use torch's RNG (optionally a ``torch.Generator``) and, in ``TokenMix``,
timm's numpy draws: nothing here is keyed.
"""
from __future__ import annotations

import torch
from timm.data.mixup import Mixup

__all__ = [
    "ColorJitter",
    "TokenMix",
    "adjust_color",
    "per_patch_hflip",
    "token_cutmix",
    "token_drop",
    "token_mixup",
]

_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision uses


def _grid(x: torch.Tensor, tile: int) -> tuple[int, int]:
    """(rows, cols) of tiles, after checking the batch shape and tile size."""
    if x.ndim != 4:
        raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if tile <= 0 or height % tile or width % tile:
        raise ValueError(f"image {height}×{width} is not a whole number of {tile} px tiles")
    return height // tile, width // tile


def _tile_view(x: torch.Tensor, tile: int) -> torch.Tensor:
    """View (B, C, rows, tile, cols, tile) of a batch; tile (r, c) is token r·cols + c."""
    rows, cols = _grid(x, tile)
    return x.reshape(x.shape[0], x.shape[1], rows, tile, cols, tile)


def _tile_mask(mask: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Broadcast a (B, N) token mask against ``_tile_view``."""
    return mask.reshape(mask.shape[0], 1, rows, 1, cols, 1)


def _random_tokens(batch: int, tokens: int, count: int, generator: torch.Generator | None,
                   device: torch.device) -> torch.Tensor:
    """(B, N) bool mask with exactly ``count`` tokens set per row, positions uniform."""
    source = generator.device if generator is not None else device
    scores = torch.rand(batch, tokens, generator=generator, device=source).to(device)
    chosen = scores.argsort(dim=1)[:, :count]
    return torch.zeros(batch, tokens, dtype=torch.bool, device=device).scatter_(1, chosen, True)


def per_patch_hflip(x: torch.Tensor, tile: int) -> torch.Tensor:
    """Mirror every tile left-right in place of itself.

    For a shuffled image this equals encrypting the mirrored plain image under the
    permutation mapped through the column mirror (tested); for ``mix`` shards use a plain
    whole-image flip instead, since positions are kept there.
    """
    _, cols = _grid(x, tile)
    return x.reshape(*x.shape[:-1], cols, tile).flip(-1).reshape(x.shape)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ValueError(f"colour jitter needs 1 or 3 channels, got {x.shape[1]}")
    weights = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _per_sample(factor: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(factor, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)


def adjust_color(x: torch.Tensor, brightness: torch.Tensor | float = 1.0,
                 contrast: torch.Tensor | float = 1.0,
                 saturation: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Brightness, then contrast, then saturation, with one factor per image (or one for all).

    ``x`` is float in [0, 1]. Same formulas as torchvision's ``adjust_*`` (tested against
    them), vectorised over per-image factors. Contrast blends towards the image's mean grey
    level, which no tile permutation changes.
    """
    if not x.is_floating_point():
        raise ValueError(f"colour jitter needs a float batch in [0, 1], got {x.dtype}")
    x = (x * _per_sample(brightness, x)).clamp(0.0, 1.0)
    mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    ratio = _per_sample(contrast, x)
    x = (ratio * x + (1.0 - ratio) * mean).clamp(0.0, 1.0)
    ratio = _per_sample(saturation, x)
    return (ratio * x + (1.0 - ratio) * _grayscale(x)).clamp(0.0, 1.0)


class ColorJitter:
    """Random per-image brightness, contrast and saturation on a float batch in [0, 1].

    Each factor is drawn uniformly from [max(0, 1 − v), 1 + v] per image.
    """

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 generator: torch.Generator | None = None) -> None:
        for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if value < 0:
                raise ValueError(f"{name} jitter must be >= 0, got {value}")
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation
        self.generator = generator

    def _factors(self, spread: float, x: torch.Tensor) -> torch.Tensor:
        low, high = max(0.0, 1.0 - spread), 1.0 + spread
        draw = torch.rand(x.shape[0], generator=self.generator, dtype=torch.float64)
        return (low + (high - low) * draw).to(device=x.device, dtype=x.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return adjust_color(
            x,
            brightness=self._factors(self.brightness, x),
            contrast=self._factors(self.contrast, x),
            saturation=self._factors(self.saturation, x),
        )

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(brightness={self.brightness}, contrast={self.contrast}, "
                f"saturation={self.saturation})")


def _mixed_targets(targets: torch.Tensor, kept: float) -> torch.Tensor:
    if targets.ndim != 2 or not targets.is_floating_point():
        raise ValueError(f"expected soft targets (B, num_classes), got {tuple(targets.shape)} {targets.dtype}")
    return kept * targets + (1.0 - kept) * targets.flip(0)


def _cutmix_images(x: torch.Tensor, tile: int, lam: float,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, float]:
    """Images of ``token_cutmix`` and the exact fraction of tiles each keeps."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    rows, cols = _grid(x, tile)
    tokens = rows * cols
    replaced = round((1.0 - lam) * tokens)
    mask = _tile_mask(_random_tokens(x.shape[0], tokens, replaced, generator, x.device), rows, cols)
    mixed = torch.where(mask, _tile_view(x.flip(0), tile), _tile_view(x, tile)).reshape(x.shape)
    return mixed, 1.0 - replaced / tokens


def token_cutmix(x: torch.Tensor, targets: torch.Tensor, tile: int, lam: float,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Replace round((1 − lam)·N) random tiles of each image by the same tiles of its partner.

    The partner of image i is image B−1−i (the batch reversed, as timm pairs them). Every
    image gets the same count at its own random positions, so the label weight is exact:
    returns ``(images, kept · targets + (1 − kept) · partner targets, kept)`` with
    ``kept = 1 − replaced / N``. ``targets`` are soft (B, num_classes).
    """
    mixed, kept = _cutmix_images(x, tile, lam, generator)
    return mixed, _mixed_targets(targets, kept), kept


def token_mixup(x: torch.Tensor, targets: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend each image with its partner (batch reversed): ``lam·x + (1 − lam)·partner``.

    Tile-wise this is the blend of the two tokens at every position, so it holds for any
    cipher that keeps the tile grid. Targets are blended by the same ``lam``.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    return lam * x + (1.0 - lam) * x.flip(0), _mixed_targets(targets, lam)


def token_drop(x: torch.Tensor, tile: int, fraction: float,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero round(fraction·N) random tiles of each image; return ``(images, keep mask (B, N))``.

    Zero is black before normalisation and the mean colour after it; a model that takes the
    keep mask can drop the tokens instead.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    rows, cols = _grid(x, tile)
    tokens = rows * cols
    dropped = _random_tokens(x.shape[0], tokens, round(fraction * tokens), generator, x.device)
    out = _tile_view(x, tile).masked_fill(_tile_mask(dropped, rows, cols), 0.0).reshape(x.shape)
    return out, ~dropped


class TokenMix(Mixup):
    """timm's ``Mixup`` (batch mode) with cutmix done on whole tiles instead of a box.

    A box means nothing in a shuffled image; whole tiles do. timm draws ``lam`` and the
    mixup/cutmix switch exactly as it does for images, and builds the smoothed soft targets.
    Call with ``(x, labels)``; returns ``(x, soft targets)``, mixing ``x`` in place as timm
    does. The batch must be even.
    """

    def __init__(self, tile: int, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 prob: float = 1.0, switch_prob: float = 0.5, label_smoothing: float = 0.1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob,
                         switch_prob=switch_prob, mode="batch", correct_lam=True,
                         label_smoothing=label_smoothing, num_classes=num_classes)
        if tile <= 0:
            raise ValueError(f"tile must be positive, got {tile}")
        self.tile = tile
        self.generator = generator

    def _mix_batch(self, x: torch.Tensor) -> float:
        lam, use_cutmix = self._params_per_batch()
        if lam == 1.0:
            return 1.0
        if use_cutmix:
            mixed, lam = _cutmix_images(x, self.tile, lam, self.generator)
        else:
            mixed = lam * x + (1.0 - lam) * x.flip(0)
        x.copy_(mixed)
        return lam
