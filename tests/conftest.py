"""Shared test data: real Fashion-MNIST images and real natural photos.

Fashion-MNIST comes from ../shared/datasets/fashion-mnist when it sits beside the checkout,
else from the sample the repo ships under examples/fashion-mnist-sample.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_FMNIST = REPO.parent / "shared" / "datasets" / "fashion-mnist"
SAMPLE_DIR = REPO / "examples" / "fashion-mnist-sample"
FMNIST_CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(split: str = "train", limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (images N×28×28 uint8, labels N) of real Fashion-MNIST."""
    prefix = "train" if split == "train" else "t10k"
    img_path = SHARED_FMNIST / f"{prefix}-images-idx3-ubyte.gz"
    if img_path.exists():
        images = _read_idx(img_path)
        labels = _read_idx(SHARED_FMNIST / f"{prefix}-labels-idx1-ubyte.gz")
    else:
        split_dir = SAMPLE_DIR / ("train" if split == "train" else "val")
        files = sorted(split_dir.glob("*/*.png"))
        images = np.stack([np.asarray(Image.open(f)) for f in files])
        labels = np.array([FMNIST_CLASSES.index(f.parent.name) for f in files], dtype=np.uint8)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images.copy(), labels.astype(np.int64)


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
