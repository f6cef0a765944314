"""Inversion of the `mix` cipher: recover the plain image from its mixed (averaged) image.

`mix` is keyless and linear: every stored pixel is the mean of k² = (patch/sub_patch)² plain
pixels spaced sub_patch apart inside one patch, y = A·x. Each plain pixel feeds exactly one
stored pixel, so A loses k² − 1 of every k² numbers and no attack can be exact; the question
is how much an attacker gets back. From weakest to strongest:

- `upsample`: resize the stored image to the plain size (nearest, bicubic) or replicate
  every mixed patch k×k times ("tile", the minimum-norm solution A⁺y: the ghost image).
- `deconvolve`: the known operator with a smoothness prior (Tikhonov / Wiener with a
  gradient penalty): argmin ‖A·x − y‖² + λ‖∇x‖², one sparse factorisation per geometry.
- `train_upsampler` + `invert`: a small convolutional net trained on public images to
  correct the deconvolution.
Both last answers are projected onto the images that are valid (0..255) and mix to y.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from PIL import Image
from scipy.sparse.linalg import splu
from timm.scheduler import CosineLRScheduler
from torch import nn

from audit.attacks.learned import public_set, random_windows
from encrypt.ciphers import mix_float

# Where the inversion is the whole attack (audit.privacy chooses from these); on the other
# mixing modes it finishes every placement attack instead.
APPLIES_TO = ("mix",)

# λ of the gradient penalty, in units where A has rows summing to 1. Small: the rounded
# stored image is trusted to ±0.5 grey levels, the prior only picks among consistent images.
DEFAULT_SMOOTHNESS = 0.002
UPSAMPLE_METHODS = ("nearest", "bicubic", "tile")


def _geometry(mixed: np.ndarray, patch: int, sub_patch: int) -> tuple[np.ndarray, int, int, int]:
    """A batch of mixed images (N×h×w or N×h×w×C) as N×h×w×C float64, and (k, plain h, plain w)."""
    x = np.asarray(mixed)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"expected a batch of mixed images of shape N×h×w[×C], "
                         f"got {np.asarray(mixed).shape}")
    if sub_patch <= 0 or patch % sub_patch:
        raise ValueError(f"sub-patch {sub_patch} does not divide patch {patch}")
    if x.shape[1] % sub_patch or x.shape[2] % sub_patch:
        raise ValueError(f"mixed image {x.shape[1]}x{x.shape[2]} is not a grid of {sub_patch} px sub-patches")
    k = patch // sub_patch
    return x.astype(np.float64), k, x.shape[1] * k, x.shape[2] * k


def _restore_shape(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Drop the channel axis again when the input batch had none (N×h×w)."""
    return out[..., 0] if np.asarray(like).ndim == 3 else out


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _stored_index(side: int, patch: int, sub_patch: int) -> np.ndarray:
    """For each plain row (or column), the stored row (column) it is averaged into."""
    y = np.arange(side)
    return (y // patch) * sub_patch + y % sub_patch


def mixing_matrix(height: int, width: int, patch: int, sub_patch: int) -> sp.csr_matrix:
    """The `mix` operator A as a sparse (h·s/p · w·s/p) × (h·w) matrix on one channel."""
    if height % patch or width % patch:
        raise ValueError(f"image {height}x{width} is not divisible by patch {patch}")
    k = patch // sub_patch
    rows = _stored_index(height, patch, sub_patch)
    cols = _stored_index(width, patch, sub_patch)
    stored_w = width // patch * sub_patch
    target = (rows[:, None] * stored_w + cols[None, :]).reshape(-1)
    n = height * width
    return sp.csr_matrix((np.full(n, 1.0 / (k * k)), (target, np.arange(n))),
                         shape=(height // patch * sub_patch * stored_w, n))


def _gradient_penalty(height: int, width: int) -> sp.csr_matrix:
    """DᵀD for first differences along rows and columns (the discrete Laplacian)."""
    def diff(m: int) -> sp.csr_matrix:
        return sp.diags([-np.ones(m - 1), np.ones(m - 1)], [0, 1], shape=(m - 1, m))
    dy = sp.kron(diff(height), sp.identity(width))
    dx = sp.kron(sp.identity(height), diff(width))
    return (dy.T @ dy + dx.T @ dx).tocsr()


# Geometries up to this many plain pixels keep the whole inverse as a dense matrix (fast
# for thousands of small images); larger ones solve with the sparse factorisation.
_DENSE_PIXELS = 4096


@functools.lru_cache(maxsize=8)
def _solver(height: int, width: int, patch: int, sub_patch: int, smoothness: float):
    """y (stored pixels × m) → x (plain pixels × m) for the normal equations
    (AᵀA + λ DᵀD) x = Aᵀ y of one geometry."""
    a = mixing_matrix(height, width, patch, sub_patch)
    k2 = (patch // sub_patch) ** 2
    # Scale A so a stored pixel is the mean (rows sum to 1) and λ is geometry-independent.
    normal = (a.T @ a) * k2 + smoothness * _gradient_penalty(height, width)
    lu, at = splu(normal.tocsc()), (a.T * k2).tocsr()
    if height * width <= _DENSE_PIXELS:
        inverse = lu.solve(at.toarray())
        return lambda y: inverse @ y
    return lambda y: lu.solve(np.ascontiguousarray(at @ y))


def upsample(mixed: np.ndarray, patch: int, sub_patch: int, method: str = "nearest") -> np.ndarray:
    """Baseline inversions: resize the stored image to the plain size, or tile it (A⁺y)."""
    if method not in UPSAMPLE_METHODS:
        raise ValueError(f"unknown upsampling method {method!r}; choose one of {', '.join(UPSAMPLE_METHODS)}")
    x, k, h, w = _geometry(mixed, patch, sub_patch)
    if method == "tile":
        out = x[:, _stored_index(h, patch, sub_patch)][:, :, _stored_index(w, patch, sub_patch)]
    else:
        resample = Image.Resampling.NEAREST if method == "nearest" else Image.Resampling.BICUBIC
        out = np.stack([np.stack([np.asarray(Image.fromarray(img[..., c].astype(np.float32), mode="F")
                                             .resize((w, h), resample)) for c in range(img.shape[-1])], -1)
                        for img in x])
    return _restore_shape(_to_uint8(out), mixed)


def _deconvolve_float(x: np.ndarray, h: int, w: int, patch: int, sub_patch: int,
                      smoothness: float) -> np.ndarray:
    n, sh, sw, c = x.shape
    solve = _solver(h, w, patch, sub_patch, float(smoothness))
    sol = solve(x.transpose(1, 2, 0, 3).reshape(sh * sw, n * c))
    return sol.reshape(h, w, n, c).transpose(2, 0, 1, 3)


def deconvolve(mixed: np.ndarray, patch: int, sub_patch: int,
               smoothness: float = DEFAULT_SMOOTHNESS) -> np.ndarray:
    """argmin_x ‖A·x − y‖² + λ‖∇x‖² per channel, then made valid pixels (`feasible`);
    uint8 at the plain size."""
    if not smoothness > 0:
        raise ValueError(f"smoothness must be positive, got {smoothness}")
    x, _, h, w = _geometry(mixed, patch, sub_patch)
    smooth = _deconvolve_float(x, h, w, patch, sub_patch, smoothness)
    return _restore_shape(_to_uint8(feasible(smooth, x, patch, sub_patch)), mixed)


def project_consistent(images: np.ndarray, mixed: np.ndarray, patch: int, sub_patch: int) -> np.ndarray:
    """The nearest image (least squares) whose mix is exactly `mixed`: add each stored
    pixel's residual to the k² plain pixels it averages. N×H×W×C float in, float out."""
    x, _, h, w = _geometry(mixed, patch, sub_patch)
    rows, cols = _stored_index(h, patch, sub_patch), _stored_index(w, patch, sub_patch)
    residual = x - mix_float(images, patch, sub_patch)
    return images + residual[:, rows][:, :, cols]


def feasible(images: np.ndarray, mixed: np.ndarray, patch: int, sub_patch: int,
             iterations: int = 20) -> np.ndarray:
    """Alternate projections onto the pixel range [0, 255] and onto consistency with `mixed`
    (POCS): both sets hold the original image, so this only removes impossible answers."""
    x = images
    for _ in range(iterations):
        x = project_consistent(np.clip(x, 0.0, 255.0), mixed, patch, sub_patch)
    return x


class Upsampler(nn.Module):
    """A residual CNN that sharpens the deconvolved image; dilations widen its view to a patch."""

    def __init__(self, patch: int, sub_patch: int, channels: int, width: int = 32,
                 smoothness: float = DEFAULT_SMOOTHNESS) -> None:
        super().__init__()
        self.patch, self.sub_patch, self.channels = int(patch), int(sub_patch), int(channels)
        self.smoothness = float(smoothness)
        dilations = [1, 2, 4, 8, 2, 1] if patch >= 8 else [1, 2, 1, 1]
        layers: list[nn.Module] = []
        c_in = channels
        for d in dilations:
            layers += [nn.Conv2d(c_in, width, 3, padding=d, dilation=d), nn.GELU()]
            c_in = width
        last = nn.Conv2d(width, channels, 3, padding=1)
        # Zero-initialised output: an untrained net is exactly the deconvolution.
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.body = nn.Sequential(*layers, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N×C×H×W deconvolved image in 0..1 → corrected image in 0..1."""
        return x + self.body((x - 0.5) / 0.25) * 0.25


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float()


def train_upsampler(public_images: np.ndarray | Sequence[np.ndarray], patch: int, sub_patch: int,
                    steps: int, *, window: int | None = None, batch_size: int = 32,
                    lr: float = 2e-3, width: int = 32, flip: bool = False, seed: int = 0,
                    smoothness: float = DEFAULT_SMOOTHNESS) -> Upsampler:
    """Train an Upsampler on public plain images (N×H×W[×C] uint8, or larger photos to crop
    `window`-sized, patch-aligned training windows from), mixed on the fly; `flip` adds
    mirrored windows."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    public_images, channels = public_set(public_images)
    side_h, side_w = (window, window) if window else np.asarray(public_images[0]).shape[:2]
    if side_h % patch or side_w % patch:
        raise ValueError(f"training window {side_h}x{side_w} is not divisible by patch {patch}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Upsampler(patch, sub_patch, channels, width, smoothness)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = CosineLRScheduler(opt, t_initial=steps, lr_min=lr / 100, warmup_t=max(1, steps // 20),
                              warmup_lr_init=lr / 100, t_in_epochs=False)
    model.train()
    for step in range(steps):
        plain = random_windows(public_images, side_h, side_w, batch_size, gen, flip=flip, align=patch)
        plain_np = plain.permute(0, 2, 3, 1).numpy().astype(np.float64) * 255.0
        # The stored image is rounded to uint8, as the cipher does.
        mixed = np.rint(mix_float(plain_np, patch, sub_patch))
        start = _deconvolve_float(mixed, side_h, side_w, patch, sub_patch, smoothness)
        pred = model(_nchw(start / 255.0))
        loss = nn.functional.l1_loss(pred, plain)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step_update(step + 1)
    model.eval()
    return model


@torch.no_grad()
def invert(model: Upsampler, mixed: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The learned inversion: deconvolve, correct with the net, project onto valid images
    consistent with the ciphertext."""
    x, _, h, w = _geometry(mixed, model.patch, model.sub_patch)
    if x.shape[-1] != model.channels:
        raise ValueError(f"mixed images have {x.shape[-1]} channels, the upsampler expects {model.channels}")
    out = []
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size]
        base = _deconvolve_float(chunk, h, w, model.patch, model.sub_patch, model.smoothness)
        pred = model(_nchw(base / 255.0)).permute(0, 2, 3, 1).numpy().astype(np.float64) * 255.0
        out.append(feasible(pred, chunk, model.patch, model.sub_patch))
    return _restore_shape(_to_uint8(np.concatenate(out)), mixed)
