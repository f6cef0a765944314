"""Shared test data: real Fashion-MNIST images and real natural photos.

Fashion-MNIST comes from one place, `fashion_mnist_dir()`: the real idx files in
../shared/datasets/fashion-mnist when they sit beside the checkout, else the sample the repo
ships under examples/fashion-mnist-sample (the first 2,000 training and first 500 test images
of the real set, by index). PATCHVEIL_TEST_DATA picks on purpose: `sample` uses the shipped
sample even when ../shared is there (a fresh clone's view), `shared` insists on ../shared,
`auto` (the default) takes ../shared when present.
"""
from __future__ import annotations

import functools
import gzip
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_FMNIST = REPO.parent / "shared" / "datasets" / "fashion-mnist"
SAMPLE_DIR = REPO / "examples" / "fashion-mnist-sample"
TEST_DATA_ENV = "PATCHVEIL_TEST_DATA"
FMNIST_CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
]
_SAMPLE_NAME = re.compile(r"(train|t10k)-(\d+)\.png")


def fashion_mnist_dir(choice: str | None = None) -> Path | None:
    """The real Fashion-MNIST idx folder the tests read, or None for the shipped sample.

    `choice` is 'auto', 'sample' or 'shared'; by default PATCHVEIL_TEST_DATA's value. The only
    place in tests/ (and in the benchmarks and examples that import this module) that looks
    at ../shared.
    """
    if choice is None:
        choice = os.environ.get(TEST_DATA_ENV, "auto")
    choice = choice.strip().lower() or "auto"
    if choice not in ("auto", "sample", "shared"):
        raise ValueError(f"{TEST_DATA_ENV}={choice!r}: use 'auto', 'sample' or 'shared'")
    if choice == "sample":
        return None
    present = (SHARED_FMNIST / "train-images-idx3-ubyte.gz").is_file()
    if choice == "shared" and not present:
        raise FileNotFoundError(f"{TEST_DATA_ENV}=shared but {SHARED_FMNIST} holds no Fashion-MNIST")
    return SHARED_FMNIST if present else None


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def sample_files(split: str = "train") -> list[Path]:
    """The shipped sample's PNGs of a split in the real set's index order (train-00000.png, ...)."""
    split_dir = SAMPLE_DIR / ("train" if split == "train" else "val")
    files = []
    for f in split_dir.glob("*/*.png"):
        match = _SAMPLE_NAME.fullmatch(f.name)
        if match is None:
            raise ValueError(f"{f}: sample files are named like train-00023.png")
        files.append((int(match.group(2)), f))
    files.sort()
    return [f for _, f in files]


@functools.lru_cache(maxsize=4)
def _fashion_mnist(split: str, source: Path | None) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    if source is not None:
        images = _read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
    else:
        files = sample_files(split)
        images = np.stack([np.asarray(Image.open(f)) for f in files])
        labels = np.array([FMNIST_CLASSES.index(f.parent.name) for f in files], dtype=np.uint8)
    images.flags.writeable = False
    labels = labels.astype(np.int64)
    labels.flags.writeable = False
    return images, labels


def load_fashion_mnist(split: str = "train", limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (images N×28×28 uint8, labels N) of real Fashion-MNIST, in the real set's order.

    `limit` takes the first `limit` images by index, from ../shared or from the shipped sample
    alike, so small limits mix the classes the same way. The sample holds 2,000 training and
    500 test images: a larger limit gets those (see `fashion_mnist_size`).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    images, labels = _fashion_mnist("train" if split == "train" else "test", fashion_mnist_dir())
    return images[:limit].copy(), labels[:limit].copy()


def fashion_mnist_size(split: str = "train") -> int:
    """How many images `load_fashion_mnist(split)` can return with the data the tests have."""
    return len(_fashion_mnist("train" if split == "train" else "test", fashion_mnist_dir())[1])


def natural_photos(size: int = 224) -> dict[str, np.ndarray]:
    """Real RGB photos from scikit-image, centre-cropped to size×size."""
    from skimage import data

    out = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry"):
        img = getattr(data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        pil = Image.fromarray(img[..., :3])
        scale = size / min(pil.size)
        pil = pil.resize((max(size, round(pil.width * scale)), max(size, round(pil.height * scale))),
                         Image.Resampling.BICUBIC)
        left, top = (pil.width - size) // 2, (pil.height - size) // 2
        out[name] = np.asarray(pil.crop((left, top, left + size, top + size)))
    return out


@pytest.fixture(scope="session")
def fmnist_small() -> tuple[np.ndarray, np.ndarray]:
    """500 real Fashion-MNIST training images with labels."""
    return load_fashion_mnist("train", limit=500)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    return natural_photos(224)


# examples/ holds data builders shared by tests, benchmarks and the demo (e.g. canvas_coco).
import sys as _sys

_sys.path.insert(0, str(REPO / "examples"))
# benchmarks/research holds research code only the benchmarks use (tested here as `research.*`).
_sys.path.insert(0, str(REPO / "benchmarks"))


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One torch thread for the whole suite: the models here are tiny, and two threads on a
    2-core machine with another busy process make small ops 50-300x slower."""
    try:
        import torch
    except ImportError:  # a train-less install: nothing to set
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
