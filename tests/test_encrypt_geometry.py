"""Geometry before the cipher: crops, keyed views, and boxes that follow the pixels."""
from __future__ import annotations

import numpy as np
import pytest

from encrypt.geometry import clip_boxes, letterbox, random_resized_crop, resize_center_crop
from keys.keystream import KeyStream


def test_resize_center_crop_shapes(photos):
    img = photos["rocket"][:, :180]  # 224×180
    out = resize_center_crop(img, 256, 224)
    assert out.shape == (224, 224, 3)
    gray = resize_center_crop(img[..., :1], 36, 32)
    assert gray.shape == (32, 32, 1)
    with pytest.raises(ValueError, match="smaller than the crop"):
        resize_center_crop(img, 200, 224)


def test_keyed_views_are_reproducible_and_differ(photos):
    img = photos["chelsea"]
    a = random_resized_crop(img, 64, KeyStream(b"\x01" * 32))
    b = random_resized_crop(img, 64, KeyStream(b"\x01" * 32))
    c = random_resized_crop(img, 64, KeyStream(b"\x02" * 32))
    assert a.shape == (64, 64, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_letterbox_moves_boxes_with_the_object(fmnist_small):
    item = fmnist_small[0][1]  # a real 28×28 Fashion-MNIST item
    canvas = np.zeros((120, 200, 1), np.uint8)
    canvas[50:78, 130:158, 0] = item
    out, boxes, scale = letterbox(canvas, 100, np.array([[130, 50, 28, 28]]))
    assert out.shape == (100, 100, 1) and scale == pytest.approx(0.5)
    x, y, w, h = boxes[0]
    assert (x, y, w, h) == pytest.approx((65, 25, 14, 14))
    inside = out[int(y):int(y + h), int(x):int(x + w)].astype(float).sum()
    assert inside > 0.9 * out.astype(float).sum()  # the object's pixels sit inside its box
    assert (out[60:] == 0).all()  # padding below the 60 px-high content


def test_boxes_outside_are_clipped_to_nothing():
    boxes = clip_boxes(np.array([[-10.0, -10, 5, 5], [90, 10, 30, 10], [10, 10, 5, 5]]), 100, 50)
    assert boxes.tolist() == [[0, 0, 0, 0], [90, 10, 10, 10], [10, 10, 5, 5]]
