"""Recognizability: a plain Fashion-MNIST classifier applied to plain, encrypted and attacked images."""
from __future__ import annotations

import os

import numpy as np
import pytest

from audit.attacks.inversion import deconvolve, upsample
from research.recognize import Recognizer, predict, recognizability, resize_batch, train_recognizer
from conftest import load_fashion_mnist
from encrypt.ciphers import mix, mix_shuffle, shuffle
from keys.derive import DatasetKey

CHANCE = 0.10


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    images, labels = load_fashion_mnist("train", 8000)
    return train_recognizer(resize_batch(images, 32), labels, epochs=2, seed=0)


@pytest.fixture(scope="module")
def test_set() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images, labels = load_fashion_mnist("test", 1000)
    key = DatasetKey("audit", os.urandom(32))  # a throwaway key, as the privacy audit uses
    perms = np.array([key.permutation(64, "test", f"sample-{i}") for i in range(len(images))])
    return resize_batch(images, 32)[..., None], labels, perms


def test_recognizer_recognises_plain_test_images(recognizer, test_set):
    images, labels, _ = test_set
    assert recognizer.size == 32 and recognizer.classes == 10
    score = recognizability(recognizer, images, labels)
    assert score > 0.75, score  # a few seconds of CPU training; the benchmark trains longer


def test_stored_mix_shuffle_is_near_chance(recognizer, test_set):
    images, labels, perms = test_set
    stored = mix_shuffle(images, perms, 4, 2)  # 16×16, resized to 32 by the recognizer
    assert stored.shape[1:3] == (16, 16)
    assert recognizability(recognizer, stored, labels) < CHANCE + 0.12


def test_stored_shuffle_hides_more_than_stored_mix(recognizer, test_set):
    images, labels, perms = test_set
    shuffled = recognizability(recognizer, shuffle(images, perms, 4), labels)
    mixed = recognizability(recognizer, upsample(mix(images, 4, 2), 4, 2, "nearest"), labels)
    # `mix` keeps the layout: its ghost image is still recognised far above chance.
    assert mixed > CHANCE + 0.25, mixed
    assert shuffled < mixed - 0.2, (shuffled, mixed)


def test_inverting_mix_makes_it_more_recognisable(recognizer, test_set):
    images, labels, _ = test_set
    mixed = mix(images, 4, 2)
    stored = recognizability(recognizer, mixed, labels)
    inverted = recognizability(recognizer, deconvolve(mixed, 4, 2), labels)
    assert inverted > stored + 0.05, (stored, inverted)


def test_predictions_follow_the_images_not_their_order(recognizer, test_set):
    images, _, _ = test_set
    first = predict(recognizer, images[:50])
    assert np.array_equal(predict(recognizer, images[:50][::-1]), first[::-1])
    assert len(np.unique(first)) >= 5  # it does not answer one class for everything


def test_bad_input_is_refused_with_a_clear_message(recognizer, test_set):
    images, labels, _ = test_set
    with pytest.raises(ValueError, match="10 reconstructions but labels of shape"):
        recognizability(recognizer, images[:10], labels[:9])
    with pytest.raises(ValueError, match="grayscale images"):
        recognizability(recognizer, np.zeros((2, 32, 32, 3), np.uint8), labels[:2])
    with pytest.raises(ValueError, match="must be square"):
        train_recognizer(np.zeros((4, 32, 28), np.uint8), np.zeros(4, int))
