"""Recognizability: does a classifier trained on plain images still recognise an attack's output?

Placement accuracy and PSNR say how many pixels came back; recognizability says whether what
came back still shows the content. A small CNN is trained on plain Fashion-MNIST (in the
geometry the cipher sees, e.g. 32 px) and its top-1 on an attacker's reconstructions of
encrypted test images is the score: ~0.9 on plain images, 0.10 is chance. Images of another
size (a stored mixed image) are resized to the classifier's input first. Nothing is cached:
the classifier lives in memory for one audit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn


def _gray_batch(images, what: str) -> np.ndarray:
    """N×H×W or N×H×W×1 uint8 → N×H×W."""
    x = np.asarray(images)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty batch of grayscale images N×H×W[×1], got shape {x.shape}")
    return x


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    """Resize N×H×W uint8 images to size×size with bicubic filtering (the encrypt geometry's)."""
    x = _gray_batch(images, "images")
    if x.shape[1:] == (size, size):
        return x.astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(np.asarray(img, dtype=np.uint8))
                                .resize((size, size), Image.Resampling.BICUBIC)) for img in x])


class _SmallCNN(nn.Module):
    def __init__(self, classes: int, width: int) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(8 * w, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((x - 0.3) / 0.35))


@dataclass
class Recognizer:
    """A classifier of plain images and the side length it expects."""

    model: nn.Module
    size: int
    classes: int


def train_recognizer(images: np.ndarray, labels: np.ndarray, *, epochs: int = 3,
                     batch_size: int = 64, lr: float = 5e-3, width: int = 16,
                     seed: int = 0) -> Recognizer:
    """Train a small CNN on plain grayscale images (N×S×S[×1] uint8) with integer labels.

    `width` is the first layer's channel count (the net is width, 2·width, 2·width wide).
    """
    x = _gray_batch(images, "training images")
    y = np.asarray(labels)
    if x.shape[1] != x.shape[2]:
        raise ValueError(f"training images must be square, got {x.shape[1]}x{x.shape[2]}")
    if y.shape != (len(x),):
        raise ValueError(f"{len(x)} training images but labels of shape {y.shape}")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    classes = int(y.max()) + 1
    data = torch.from_numpy(np.ascontiguousarray(x)).float().div(255.0)[:, None]
    target = torch.from_numpy(y.astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _SmallCNN(classes, width)
    steps = epochs * math.ceil(len(x) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(model(data[idx]), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return Recognizer(model=model, size=int(x.shape[1]), classes=classes)


@torch.no_grad()
def predict(recognizer: Recognizer, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Predicted class of each image; images of another size are resized to the classifier's."""
    x = resize_batch(images, recognizer.size)
    data = torch.from_numpy(np.ascontiguousarray(x)).float().div(255.0)[:, None]
    return torch.cat([recognizer.model(data[s:s + batch_size]).argmax(-1)
                      for s in range(0, len(data), batch_size)]).numpy()


def recognizability(recognizer: Recognizer, reconstructions: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of the plain-image classifier on reconstructions (chance: 1/classes)."""
    x = _gray_batch(reconstructions, "reconstructions")
    y = np.asarray(labels)
    if y.shape != (len(x),):
        raise ValueError(f"{len(x)} reconstructions but labels of shape {y.shape}")
    return float(np.mean(predict(recognizer, x) == y))
