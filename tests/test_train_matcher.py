"""Hungarian matcher, set criterion and box conversions against hand-computed cases."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from train.box_ops import generalized_box_iou, normalized_to_pixels, pixels_to_normalized
from train.detection_losses import SetCriterion
from train.matcher import HungarianMatcher


def logits_for(probs: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is exactly `probs` (one row per detection token)."""
    return torch.tensor(probs, dtype=torch.float64).log().unsqueeze(0)


def target(labels: list[int], boxes: list[list[float]]) -> dict[str, torch.Tensor]:
    return {"labels": torch.tensor(labels, dtype=torch.int64),
            "boxes": torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)}


# Two disjoint 0.2-wide boxes: IoU 0, enclosing box 0.6×0.6 = 0.36, union 0.08,
# GIoU = 0 − (0.36 − 0.08)/0.36 = −7/9.
BOX_A = [0.1, 0.1, 0.2, 0.2]  # cx, cy, w, h → corners (0, 0)-(0.2, 0.2)
BOX_B = [0.5, 0.5, 0.2, 0.2]  # corners (0.4, 0.4)-(0.6, 0.6)
GIOU_AB = -7 / 9


def test_box_normalisation_by_hand() -> None:
    # a 40×20 box at (10, 30) in a 64 (high) × 128 (wide) image
    px = torch.tensor([[10.0, 30.0, 40.0, 20.0]])
    norm = pixels_to_normalized(px, (64, 128))
    torch.testing.assert_close(norm, torch.tensor([[30 / 128, 40 / 64, 40 / 128, 20 / 64]]))
    torch.testing.assert_close(normalized_to_pixels(norm, (64, 128)), px)
    # per-image sizes for a batch of box sets
    batch = torch.stack([norm, norm])
    back = normalized_to_pixels(batch, torch.tensor([[64, 128], [32, 64]]))
    torch.testing.assert_close(back[1], px / 2)


def test_giou_of_disjoint_boxes_by_hand() -> None:
    corners = torch.tensor([[0.0, 0.0, 0.2, 0.2], [0.4, 0.4, 0.6, 0.6]])
    giou = generalized_box_iou(corners, corners)
    torch.testing.assert_close(giou, torch.tensor([[1.0, GIOU_AB], [GIOU_AB, 1.0]]))


def test_cost_matrix_by_hand() -> None:
    matcher = HungarianMatcher(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0)
    outputs = {"pred_logits": logits_for([[0.5, 0.25, 0.25], [0.1, 0.6, 0.3]]),
               "pred_boxes": torch.tensor([[BOX_A, BOX_B]], dtype=torch.float64)}
    cost = matcher.cost_matrices(outputs, [target([1, 0], [BOX_A, BOX_B])])[0]
    l1_ab = 0.4 + 0.4  # |0.1 − 0.5| twice, sizes equal
    expected = torch.tensor([
        [-0.25 + 0.0 + 2 * -1.0, -0.5 + 5 * l1_ab + 2 * -GIOU_AB],
        [-0.6 + 5 * l1_ab + 2 * -GIOU_AB, -0.1 + 0.0 + 2 * -1.0],
    ], dtype=torch.float32)
    torch.testing.assert_close(cost, expected)


def test_matcher_takes_the_crossed_assignment_when_boxes_say_so() -> None:
    # Token 0 sits on object 1 and token 1 on object 0: the identity assignment is wrong.
    outputs = {"pred_logits": logits_for([[0.5, 0.25, 0.25], [0.1, 0.6, 0.3]]),
               "pred_boxes": torch.tensor([[BOX_B, BOX_A]], dtype=torch.float64)}
    (rows, cols), = HungarianMatcher()(outputs, [target([1, 0], [BOX_A, BOX_B])])
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


def test_matcher_is_optimal_where_greedy_is_not() -> None:
    # Class cost alone, objects of class 0 and 1. Cost = −p:  [[−0.50, −0.45],
    #                                                          [−0.40, −0.05]]
    # Greedy takes the cheapest pair first (token 0 ↔ object 0) and is left with −0.05:
    # total −0.55. The optimum is token 0 ↔ object 1, token 1 ↔ object 0: −0.85.
    outputs = {"pred_logits": logits_for([[0.50, 0.45, 0.05], [0.40, 0.05, 0.55]]),
               "pred_boxes": torch.full((1, 2, 4), 0.5, dtype=torch.float64)}
    truth = target([0, 1], [BOX_A, BOX_B])
    matcher = HungarianMatcher(cost_class=1.0, cost_bbox=0.0, cost_giou=0.0)
    torch.testing.assert_close(matcher.cost_matrices(outputs, [truth])[0],
                               torch.tensor([[-0.50, -0.45], [-0.40, -0.05]]))
    (rows, cols), = matcher(outputs, [truth])
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


def test_matcher_equals_brute_force_on_random_outputs() -> None:
    g = torch.Generator().manual_seed(3)
    outputs = {"pred_logits": torch.randn(2, 6, 4, generator=g),
               "pred_boxes": torch.rand(2, 6, 4, generator=g) * 0.5 + 0.1}
    targets = [target([0, 2, 1], (torch.rand(3, 4, generator=g) * 0.5 + 0.1).tolist()),
               target([1], [[0.5, 0.5, 0.3, 0.3]])]
    matcher = HungarianMatcher()
    for (rows, cols), cost in zip(matcher(outputs, targets), matcher.cost_matrices(outputs, targets)):
        n, m = cost.shape
        best = min(sum(cost[r, c] for r, c in zip(perm, range(m)))
                   for perm in itertools.permutations(range(n), m))
        assert len(rows) == m and sorted(cols.tolist()) == list(range(m))
        assert float(cost[rows, cols].sum()) == pytest.approx(float(best), abs=1e-5)


def test_matcher_handles_an_image_without_objects_and_refuses_nan() -> None:
    outputs = {"pred_logits": torch.zeros(1, 3, 3), "pred_boxes": torch.full((1, 3, 4), 0.5)}
    (rows, cols), = HungarianMatcher()(outputs, [target([], [])])
    assert rows.numel() == 0 and cols.numel() == 0
    outputs["pred_boxes"][0, 1, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite"):
        HungarianMatcher()(outputs, [target([0], [BOX_A])])


def test_set_criterion_by_hand() -> None:
    # 2 classes + no-object; 3 tokens; one object of class 1 at BOX_A.
    probs = [[0.2, 0.7, 0.1],   # token 0: on BOX_B, confident class 1
             [0.3, 0.3, 0.4],   # token 1: on BOX_A, unsure -> the match (box cost wins)
             [0.1, 0.1, 0.8]]   # token 2: no object
    outputs = {"pred_logits": logits_for(probs).float(),
               "pred_boxes": torch.tensor([[BOX_B, BOX_A, [0.8, 0.8, 0.1, 0.1]]])}
    criterion = SetCriterion(2, eos_coef=0.1)
    terms = criterion(outputs, [target([1], [BOX_A])])
    # matched token 1 targets class 1 (weight 1); tokens 0 and 2 target no-object (weight 0.1)
    ce = (1.0 * -math.log(0.3) + 0.1 * -math.log(0.1) + 0.1 * -math.log(0.8)) / (1.0 + 0.1 + 0.1)
    assert float(terms["loss_ce"]) == pytest.approx(ce, rel=1e-5)
    assert float(terms["loss_bbox"]) == pytest.approx(0.0, abs=1e-6)
    assert float(terms["loss_giou"]) == pytest.approx(0.0, abs=1e-6)
    assert float(terms["loss"]) == pytest.approx(ce, rel=1e-5)


def test_box_terms_average_over_all_objects_in_the_batch() -> None:
    # Image 0: one object, predicted at the disjoint BOX_B (L1 0.8, 1 − GIoU = 16/9).
    # Image 1: two objects, predicted exactly. Averages divide by 3 objects.
    outputs = {"pred_logits": torch.zeros(2, 2, 3),
               "pred_boxes": torch.tensor([[BOX_B, [0.9, 0.9, 0.05, 0.05]], [BOX_A, BOX_B]])}
    targets = [target([0], [BOX_A]), target([1, 0], [BOX_A, BOX_B])]
    criterion = SetCriterion(2, HungarianMatcher(cost_class=0.0, cost_bbox=5.0, cost_giou=2.0))
    terms = criterion(outputs, targets)
    matches = criterion.matcher(outputs, targets)
    assert matches[0][0].tolist() == [0]  # BOX_B is nearer BOX_A than the corner box
    assert float(terms["loss_bbox"]) == pytest.approx(0.8 / 3, rel=1e-5)
    assert float(terms["loss_giou"]) == pytest.approx((1 - GIOU_AB) / 3, rel=1e-5)
    expected = terms["loss_ce"] + 5 * terms["loss_bbox"] + 2 * terms["loss_giou"]
    assert float(terms["loss"]) == pytest.approx(float(expected), rel=1e-6)


def test_aux_outputs_add_their_own_matched_terms() -> None:
    final = {"pred_logits": torch.zeros(1, 2, 3), "pred_boxes": torch.tensor([[BOX_A, BOX_B]])}
    aux = {"pred_logits": torch.zeros(1, 2, 3), "pred_boxes": torch.tensor([[BOX_B, BOX_B]])}
    criterion = SetCriterion(2)
    targets = [target([0], [BOX_A])]
    alone = criterion(final, targets)
    both = criterion({**final, "aux_outputs": [aux]}, targets)
    assert float(both["loss_bbox"]) == pytest.approx(float(alone["loss_bbox"]))
    assert float(both["loss_bbox_0"]) == pytest.approx(0.8)
    assert float(both["loss_giou_0"]) == pytest.approx(1 - GIOU_AB, rel=1e-5)
    extra = both["loss_ce_0"] + 5 * both["loss_bbox_0"] + 2 * both["loss_giou_0"]
    assert float(both["loss"]) == pytest.approx(float(alone["loss"] + extra), rel=1e-6)


def test_criterion_gradients_pull_the_box_towards_the_object() -> None:
    boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2]]], requires_grad=True)
    outputs = {"pred_logits": torch.zeros(1, 1, 3, requires_grad=True), "pred_boxes": boxes}
    SetCriterion(2)(outputs, [target([0], [BOX_B])])["loss"].backward()
    assert boxes.grad[0, 0, 0] < 0 and boxes.grad[0, 0, 1] < 0  # descending moves cx, cy up to 0.5


def test_criterion_rejects_bad_settings_and_shapes() -> None:
    with pytest.raises(ValueError, match="eos_coef"):
        SetCriterion(2, eos_coef=0.0)
    with pytest.raises(ValueError, match="unknown loss weights"):
        SetCriterion(2, weights={"loss_mask": 1.0})
    outputs = {"pred_logits": torch.zeros(1, 2, 5), "pred_boxes": torch.full((1, 2, 4), 0.5)}
    with pytest.raises(ValueError, match="predicts 4 classes"):
        SetCriterion(2)(outputs, [target([0], [BOX_A])])
