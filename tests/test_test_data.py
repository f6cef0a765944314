"""The tests' Fashion-MNIST: the shipped sample behaves like the real set, and PATCHVEIL_TEST_DATA is honoured.

A fresh clone has no ../shared beside it, so every test must work from the sample; these tests
pin down that the sample gives the same class mix as the real set for small limits.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import conftest
from conftest import FMNIST_CLASSES, SAMPLE_DIR, TEST_DATA_ENV, fashion_mnist_dir, load_fashion_mnist


@pytest.fixture
def sample_mode(monkeypatch):
    monkeypatch.setenv(TEST_DATA_ENV, "sample")


def test_the_switch_forces_the_shipped_sample(sample_mode):
    assert fashion_mnist_dir() is None
    images, labels = load_fashion_mnist("train", limit=3)
    # the real set's first training images, read straight from the shipped PNGs by name
    for i in range(3):
        (path,) = SAMPLE_DIR.glob(f"train/*/train-{i:05d}.png")
        np.testing.assert_array_equal(images[i], np.asarray(Image.open(path)))
        assert FMNIST_CLASSES[labels[i]] == path.parent.name
    (path,) = SAMPLE_DIR.glob("val/*/t10k-00000.png")
    np.testing.assert_array_equal(load_fashion_mnist("test", limit=1)[0][0], np.asarray(Image.open(path)))


@pytest.mark.parametrize("split", ["train", "test"])
def test_small_limits_of_the_sample_mix_the_classes(sample_mode, split):
    _, labels = load_fashion_mnist(split, limit=24)
    assert len(labels) == 24
    counts = np.bincount(labels, minlength=10)
    assert (counts > 0).sum() >= 6, counts  # folder order would give one class
    assert counts.max() <= 6, counts
    _, labels = load_fashion_mnist(split, limit=100)
    assert set(labels.tolist()) == set(range(10))


def test_the_sample_is_in_the_real_sets_index_order(sample_mode):
    for split, folder, prefix, size in (("train", "train", "train", 2000), ("test", "val", "t10k", 500)):
        images, labels = load_fashion_mnist(split)
        assert images.shape == (size, 28, 28) and images.dtype == np.uint8 and labels.shape == (size,)
        by_index = {int(p.stem.split("-")[1]): p.parent.name for p in SAMPLE_DIR.glob(f"{folder}/*/{prefix}-*.png")}
        assert sorted(by_index) == list(range(size))
        assert [FMNIST_CLASSES[lab] for lab in labels] == [by_index[i] for i in range(size)]


def test_limit_takes_a_prefix_and_stops_at_what_the_sample_holds(sample_mode):
    images, labels = load_fashion_mnist("train")
    first, first_labels = load_fashion_mnist("train", limit=50)
    np.testing.assert_array_equal(first, images[:50])
    np.testing.assert_array_equal(first_labels, labels[:50])
    assert len(load_fashion_mnist("train", limit=0)[1]) == 0
    assert len(load_fashion_mnist("train", limit=60_000)[1]) == conftest.fashion_mnist_size("train") == 2000
    assert conftest.fashion_mnist_size("test") == 500
    with pytest.raises(ValueError, match="limit must be >= 0"):
        load_fashion_mnist("train", limit=-1)
    # callers get their own arrays: changing one must not change what the next test reads
    first[0] = 0
    assert images[0].any() and load_fashion_mnist("train", limit=1)[0][0].any()


def test_auto_uses_the_sample_when_nothing_is_beside_the_checkout(monkeypatch, tmp_path):
    monkeypatch.setattr(conftest, "SHARED_FMNIST", tmp_path / "shared" / "datasets" / "fashion-mnist")
    monkeypatch.delenv(TEST_DATA_ENV, raising=False)
    assert fashion_mnist_dir() is None
    monkeypatch.setenv(TEST_DATA_ENV, "auto")
    assert fashion_mnist_dir() is None
    assert len(load_fashion_mnist("train")[1]) == 2000
    monkeypatch.setenv(TEST_DATA_ENV, "shared")
    with pytest.raises(FileNotFoundError, match="holds no Fashion-MNIST"):
        fashion_mnist_dir()
    monkeypatch.setenv(TEST_DATA_ENV, "full")
    with pytest.raises(ValueError, match="use 'auto', 'sample' or 'shared'"):
        fashion_mnist_dir()


def test_fixture_folders_get_several_classes_from_the_sample(sample_mode, tmp_path):
    from releases import write_imagefolder

    files = write_imagefolder(tmp_path, {"train": 24, "val": 8})
    classes = {Path(rel).parts[1] for rel in files if rel.startswith("train/")}
    assert len(files) == 32 and len(classes) >= 6 and "bag" in classes, classes
    assert len({Path(rel).parts[1] for rel in files if rel.startswith("val/")}) >= 4


@pytest.mark.skipif(conftest.fashion_mnist_dir("auto") is None,
                    reason="compares the sample with the real 60,000 + 10,000 Fashion-MNIST idx files "
                           "in ../shared/datasets/fashion-mnist, absent here")
def test_the_sample_is_the_real_sets_first_images(monkeypatch):
    monkeypatch.setenv(TEST_DATA_ENV, "shared")
    real = {split: load_fashion_mnist(split) for split in ("train", "test")}
    assert len(real["train"][1]) == 60_000 and len(real["test"][1]) == 10_000
    monkeypatch.setenv(TEST_DATA_ENV, "sample")
    for split, (images, labels) in real.items():
        sample_images, sample_labels = load_fashion_mnist(split)
        np.testing.assert_array_equal(sample_images, images[:len(sample_images)])
        np.testing.assert_array_equal(sample_labels, labels[:len(sample_labels)])
