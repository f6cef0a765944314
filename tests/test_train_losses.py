"""Cross-entropy and the anchor-based nearest class mean loss (arXiv 1804.08087)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from train.losses import (
    AnchorNCMLoss,
    build_loss,
    cross_entropy,
    orthogonal_anchors,
    simplex_anchors,
)

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def fmnist_features(fmnist_small: tuple[np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Real Fashion-MNIST pixels (500 × 784, standardised) and their labels."""
    images, labels = fmnist_small
    x = torch.from_numpy(images.reshape(len(images), -1)).float() / 255
    x = (x - x.mean(0)) / (x.std(0) + 1e-3)
    return x, torch.from_numpy(labels)


def pairwise_cosine(anchors: torch.Tensor) -> torch.Tensor:
    unit = F.normalize(anchors.double(), dim=-1)
    return unit @ unit.T


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    return matrix[~torch.eye(len(matrix), dtype=torch.bool)]


# --- cross-entropy -----------------------------------------------------------------------

def test_cross_entropy_matches_torch_with_label_smoothing() -> None:
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(16, NUM_CLASSES, generator=g), torch.randint(0, NUM_CLASSES, (16,), generator=g)
    for smoothing in (0.0, 0.1, 0.3):
        expected = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        torch.testing.assert_close(cross_entropy(smoothing)(logits, labels), expected)


def test_cross_entropy_takes_soft_targets_as_given() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, NUM_CLASSES, generator=g)
    soft = torch.softmax(torch.randn(8, NUM_CLASSES, generator=g), dim=-1)
    expected = -(soft * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
    torch.testing.assert_close(cross_entropy(0.1)(logits, soft), expected)  # not smoothed twice


def test_cross_entropy_rejects_bad_smoothing() -> None:
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\), got 1.0"):
        cross_entropy(1.0)


# --- anchors -----------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [NUM_CLASSES - 1, NUM_CLASSES, 64])
def test_simplex_anchors_are_a_regular_simplex(dim: int) -> None:
    anchors = simplex_anchors(NUM_CLASSES, dim, scale=3.0)
    assert anchors.shape == (NUM_CLASSES, dim)
    torch.testing.assert_close(anchors.norm(dim=-1), torch.full((NUM_CLASSES,), 3.0))
    cosines = off_diagonal(pairwise_cosine(anchors))
    torch.testing.assert_close(cosines, torch.full_like(cosines, -1 / (NUM_CLASSES - 1)))
    torch.testing.assert_close(anchors.sum(0), torch.zeros(dim), atol=1e-5, rtol=0)


def test_simplex_anchors_are_further_apart_than_orthogonal_ones() -> None:
    simplex = torch.cdist(simplex_anchors(NUM_CLASSES), simplex_anchors(NUM_CLASSES))
    orthogonal = torch.cdist(orthogonal_anchors(NUM_CLASSES), orthogonal_anchors(NUM_CLASSES))
    assert off_diagonal(simplex).min() > off_diagonal(orthogonal).max() + 0.05


def test_orthogonal_anchors_are_orthogonal_and_seeded() -> None:
    anchors = orthogonal_anchors(NUM_CLASSES, 32, scale=2.0, seed=7)
    gram = anchors.double() @ anchors.double().T
    torch.testing.assert_close(gram, 4.0 * torch.eye(NUM_CLASSES, dtype=torch.float64), atol=1e-5, rtol=0)
    assert torch.equal(anchors, orthogonal_anchors(NUM_CLASSES, 32, scale=2.0, seed=7))
    assert not torch.allclose(anchors, orthogonal_anchors(NUM_CLASSES, 32, scale=2.0, seed=8))


def test_anchor_builders_reject_too_few_dimensions() -> None:
    with pytest.raises(ValueError, match="needs dim >= 9, got 8"):
        simplex_anchors(NUM_CLASSES, 8)
    with pytest.raises(ValueError, match="need dim >= 10, got 9"):
        orthogonal_anchors(NUM_CLASSES, 9)


# --- the anchor loss ---------------------------------------------------------------------

ANCHOR_SETS = {
    "simplex": lambda: simplex_anchors(NUM_CLASSES, 16, scale=2.0),
    "orthogonal": lambda: orthogonal_anchors(NUM_CLASSES, 16, scale=2.0, seed=3),
}


def test_anchors_are_a_buffer_not_parameters() -> None:
    loss = AnchorNCMLoss(simplex_anchors(NUM_CLASSES), "euclidean")
    assert list(loss.parameters()) == []
    assert torch.equal(loss.state_dict()["anchors"], simplex_anchors(NUM_CLASSES))


@pytest.mark.parametrize(("distance", "anchor_set"), [
    ("euclidean", "simplex"), ("euclidean", "orthogonal"), ("cosine", "simplex"),
])
def test_loss_is_smallest_when_features_sit_on_their_anchors(distance: str, anchor_set: str) -> None:
    anchors = ANCHOR_SETS[anchor_set]()
    loss = AnchorNCMLoss(anchors, distance, scale=2.0)
    labels = torch.arange(NUM_CLASSES)
    on_anchor = loss(anchors, labels)
    g = torch.Generator().manual_seed(5)
    for radius in (1e-2, 0.1, 0.5, 2.0):
        for _ in range(20):
            nudged = anchors + radius * torch.randn(anchors.shape, generator=g)
            assert loss(nudged, labels) > on_anchor
    far = 10.0 * anchors  # further out along its own anchor still is not better
    assert loss(far, labels) >= on_anchor


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_gradient_step_moves_features_toward_their_anchor(distance: str) -> None:
    anchors = simplex_anchors(NUM_CLASSES, 16, scale=2.0)
    loss = AnchorNCMLoss(anchors, distance, scale=4.0)
    g = torch.Generator().manual_seed(6)
    features = torch.randn(64, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, NUM_CLASSES, (64,), generator=g)

    def closeness() -> torch.Tensor:  # distance to the right anchor, per sample
        return loss.distances(features.detach())[torch.arange(64), labels]

    before = closeness()
    loss(features, labels).backward()
    with torch.no_grad():
        features -= 0.05 * features.grad
    after = closeness()
    assert (after < before).all()


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_linear_head_learns_fashion_mnist_with_the_anchor_loss(
        fmnist_features: tuple[torch.Tensor, torch.Tensor], distance: str) -> None:
    x, labels = fmnist_features
    loss = AnchorNCMLoss(simplex_anchors(NUM_CLASSES, 16), distance, scale=10.0)
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], 16)
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-2)
    start = (loss.predict(head(x)) == labels).float().mean()
    for _ in range(60):
        optimiser.zero_grad()
        loss(head(x), labels).backward()
        optimiser.step()
    accuracy = (loss.predict(head(x)) == labels).float().mean()
    assert start < 0.4 and accuracy > 0.85


def test_predict_is_the_nearest_anchor() -> None:
    anchors = orthogonal_anchors(NUM_CLASSES, 16, scale=2.0, seed=1)
    features = torch.randn(200, 16, generator=torch.Generator().manual_seed(2))
    euclidean = AnchorNCMLoss(anchors, "euclidean")
    assert torch.equal(euclidean.predict(features), torch.cdist(features, anchors).argmin(-1))
    cosine = AnchorNCMLoss(anchors, "cosine")
    similarity = F.cosine_similarity(features[:, None], anchors[None], dim=-1)
    assert torch.equal(cosine.predict(features), similarity.argmax(-1))
    assert torch.equal(euclidean.predict(anchors), torch.arange(NUM_CLASSES))


def test_logits_are_the_scaled_negative_distance_and_give_the_loss() -> None:
    anchors = simplex_anchors(NUM_CLASSES, 12)
    loss = AnchorNCMLoss(anchors, "euclidean", scale=3.0)
    g = torch.Generator().manual_seed(3)
    features, labels = torch.randn(32, 12, generator=g), torch.randint(0, NUM_CLASSES, (32,), generator=g)
    torch.testing.assert_close(loss.logits(features), -3.0 * torch.cdist(features, anchors), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss(features, labels), F.cross_entropy(loss.logits(features), labels))


def test_cosine_loss_ignores_feature_scale_and_euclidean_does_not() -> None:
    anchors = simplex_anchors(NUM_CLASSES, 16)
    g = torch.Generator().manual_seed(4)
    features, labels = torch.randn(32, 16, generator=g), torch.randint(0, NUM_CLASSES, (32,), generator=g)
    cosine = AnchorNCMLoss(anchors, "cosine", scale=8.0)
    torch.testing.assert_close(cosine(3.7 * features, labels), cosine(features, labels))
    euclidean = AnchorNCMLoss(anchors, "euclidean", scale=8.0)
    assert not math.isclose(euclidean(3.7 * features, labels).item(), euclidean(features, labels).item(), rel_tol=1e-3)


def test_soft_targets_mix_the_hard_losses_linearly() -> None:
    loss = AnchorNCMLoss(simplex_anchors(NUM_CLASSES), "euclidean")
    g = torch.Generator().manual_seed(5)
    features = torch.randn(1, NUM_CLASSES, generator=g)
    a, b = torch.tensor([2]), torch.tensor([7])
    soft = 0.3 * F.one_hot(a, NUM_CLASSES).float() + 0.7 * F.one_hot(b, NUM_CLASSES).float()
    expected = 0.3 * loss(features, a) + 0.7 * loss(features, b)
    torch.testing.assert_close(loss(features, soft), expected)


def test_loss_rejects_features_of_the_wrong_width() -> None:
    loss = AnchorNCMLoss(simplex_anchors(NUM_CLASSES), "cosine")
    with pytest.raises(ValueError, match="features have 7 dims, anchors have 10"):
        loss(torch.randn(2, 7), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="distance must be 'euclidean' or 'cosine', got 'manhattan'"):
        AnchorNCMLoss(simplex_anchors(NUM_CLASSES), "manhattan")


def test_build_loss_gives_the_head_width() -> None:
    ce, width = build_loss("ce", NUM_CLASSES, label_smoothing=0.1)
    assert width == NUM_CLASSES and ce.label_smoothing == 0.1
    anchor, width = build_loss("anchor-cosine", NUM_CLASSES, anchors="orthogonal", anchor_dim=32, seed=2)
    assert width == 32 and anchor.distance == "cosine"
    assert torch.equal(anchor.anchors, orthogonal_anchors(NUM_CLASSES, 32, seed=2))
    with pytest.raises(ValueError, match="loss 'hinge' is not one of"):
        build_loss("hinge", NUM_CLASSES)
