"""Classification losses: cross-entropy and the anchor-based nearest class mean loss.

The anchor loss (arXiv 1804.08087) fixes one anchor a_c per class before training and
asks the network to map each sample onto its class anchor:

    p(c | x) = softmax_c(−scale · d(f(x), a_c)),   loss = −log p(y | x)

with d the Euclidean distance ‖f − a‖ or the cosine distance 1 − cos(f, a). No pairs or
triplets are needed, and the prediction is the nearest anchor. The model's head outputs
``dim`` features (the anchors' width) instead of class logits.

Every loss here has the same surface, so the engine treats them alike:
``loss(outputs, target)`` with integer labels (B,) or soft targets (B, C) from mixup/cutmix,
``logits(outputs)`` (B, C) for top-k metrics, ``predict(outputs)`` (B,) class ids.

Anchor choices follow the paper's two selection principles:

- ``simplex_anchors`` — *maximal separation*: the C anchors are the vertices of a regular
  simplex centred at the origin, so every pair is equally far apart and that distance is
  the largest any C points of the same norm can all keep (pairwise cosine −1/(C−1)).
- ``orthogonal_anchors`` — *orthogonality*: mutually orthogonal anchors of equal norm
  (pairwise cosine 0, all distances equal) in a random orientation, so no single feature
  coordinate stands for a class.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

__all__ = [
    "AnchorNCMLoss",
    "CrossEntropy",
    "LOSSES",
    "build_loss",
    "cross_entropy",
    "orthogonal_anchors",
    "simplex_anchors",
]

LOSSES = ("ce", "anchor-euclidean", "anchor-cosine")
ANCHORS = ("simplex", "orthogonal")


def _is_soft(target: torch.Tensor) -> bool:
    return target.ndim == 2 and target.is_floating_point()


class CrossEntropy(nn.Module):
    """Cross-entropy on logits: label smoothing for integer labels, soft targets as given.

    Soft targets (mixup/cutmix) already carry their smoothing, the way timm's mixers make
    them, so they are not smoothed twice.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.hard = LabelSmoothingCrossEntropy(label_smoothing) if label_smoothing else nn.CrossEntropyLoss()
        self.soft = SoftTargetCrossEntropy()

    def forward(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.soft(outputs, target) if _is_soft(target) else self.hard(outputs, target)

    def logits(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.argmax(dim=-1)


def cross_entropy(label_smoothing: float = 0.0) -> CrossEntropy:
    """Cross-entropy with optional label smoothing (timm's implementations)."""
    return CrossEntropy(label_smoothing)


class AnchorNCMLoss(nn.Module):
    """Negative log-likelihood of ``softmax(−scale · d(f, a_c))`` over fixed class anchors.

    ``anchors`` (C, D) are a buffer: saved with the model, moved with ``.to()``, never
    trained. ``distance`` is ``"euclidean"`` (‖f − a‖, not squared: squared distances reduce
    to a linear classifier whose loss keeps falling as features grow, while ‖f − a‖ is
    smallest exactly when f sits on its anchor) or ``"cosine"`` (1 − cos, blind to the
    feature norm). ``scale`` sharpens the softmax; with unit anchors 10 makes a feature on
    its anchor near-certain. For Euclidean distance only ``scale × anchor norm`` matters.
    """

    anchors: torch.Tensor

    def __init__(self, anchors: torch.Tensor, distance: str = "euclidean", scale: float = 10.0) -> None:
        super().__init__()
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
        if anchors.ndim != 2 or anchors.shape[0] < 2:
            raise ValueError(f"anchors must be (num_classes >= 2, dim), got {tuple(anchors.shape)}")
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.distance = distance
        self.scale = float(scale)
        self.register_buffer("anchors", anchors.detach().clone().float())

    @property
    def num_classes(self) -> int:
        return self.anchors.shape[0]

    @property
    def dim(self) -> int:
        return self.anchors.shape[1]

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """d(f_b, a_c) for every sample and anchor: (B, C)."""
        if features.shape[-1] != self.dim:
            raise ValueError(f"features have {features.shape[-1]} dims, anchors have {self.dim}")
        anchors = self.anchors.to(features.dtype)
        if self.distance == "cosine":
            return 1.0 - F.normalize(features, dim=-1) @ F.normalize(anchors, dim=-1).T
        squared = (features.unsqueeze(-2) - anchors).pow(2).sum(-1)
        return squared.clamp_min(1e-12).sqrt()  # finite gradient on the anchor itself

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``−scale · d``: the log-probabilities up to a per-sample constant."""
        return -self.scale * self.distances(features)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Index of the nearest anchor."""
        return self.distances(features).argmin(dim=-1)

    def forward(self, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(self.logits(features), dim=-1)
        if _is_soft(target):
            return -(target * log_p).sum(-1).mean()
        return F.nll_loss(log_p, target)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, distance={self.distance}, scale={self.scale}"


def simplex_anchors(num_classes: int, dim: int | None = None, scale: float = 1.0) -> torch.Tensor:
    """Vertices of a regular simplex of norm ``scale`` (principle: maximal separation).

    Built from the Helmert basis of the sum-zero subspace, so it needs ``dim >= C − 1``;
    extra dimensions are zero. Deterministic: no seed.
    """
    dim = num_classes if dim is None else dim
    if num_classes < 2:
        raise ValueError(f"anchors need at least 2 classes, got {num_classes}")
    if dim < num_classes - 1:
        raise ValueError(f"a regular simplex of {num_classes} anchors needs dim >= {num_classes - 1}, got {dim}")
    helmert = torch.zeros(num_classes - 1, num_classes, dtype=torch.float64)
    for k in range(1, num_classes):
        helmert[k - 1, :k] = 1.0
        helmert[k - 1, k] = -k
        helmert[k - 1] /= math.sqrt(k * (k + 1))
    vertices = helmert.T / math.sqrt(1.0 - 1.0 / num_classes)  # unit norm, sum to zero
    anchors = torch.zeros(num_classes, dim, dtype=torch.float64)
    anchors[:, : num_classes - 1] = vertices
    return (scale * anchors).float()


def orthogonal_anchors(num_classes: int, dim: int | None = None, scale: float = 1.0,
                       seed: int = 0) -> torch.Tensor:
    """Random mutually orthogonal anchors of norm ``scale`` (principle: orthogonality).

    QR of a Gaussian matrix from a seeded torch generator, signs fixed so the draw is
    uniform over orientations. Not keyed: anchors are public model parameters.
    """
    dim = num_classes if dim is None else dim
    if num_classes < 2:
        raise ValueError(f"anchors need at least 2 classes, got {num_classes}")
    if dim < num_classes:
        raise ValueError(f"{num_classes} orthogonal anchors need dim >= {num_classes}, got {dim}")
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(dim, num_classes, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r))
    return (scale * q.T).float()


def build_loss(name: str, num_classes: int, *, label_smoothing: float = 0.0,
               anchors: str = "simplex", anchor_dim: int | None = None, anchor_scale: float = 1.0,
               scale: float = 10.0, seed: int = 0) -> tuple[nn.Module, int]:
    """Return ``(loss, head width)`` for a loss name in ``LOSSES``.

    The head width is what ``timm.create_model(num_classes=...)`` must output: the class
    count for ``ce``, the anchor dimension (default: the class count) for anchor losses.
    """
    if name == "ce":
        return cross_entropy(label_smoothing), num_classes
    if name not in LOSSES:
        raise ValueError(f"loss {name!r} is not one of {list(LOSSES)}")
    if anchors == "simplex":
        points = simplex_anchors(num_classes, anchor_dim, anchor_scale)
    elif anchors == "orthogonal":
        points = orthogonal_anchors(num_classes, anchor_dim, anchor_scale, seed)
    else:
        raise ValueError(f"anchors {anchors!r} is not one of {list(ANCHORS)}")
    loss = AnchorNCMLoss(points, distance=name.removeprefix("anchor-"), scale=scale)
    return loss, loss.dim
