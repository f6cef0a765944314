"""Rebuild examples/fashion-mnist-sample from the real Fashion-MNIST idx files.

The repo ships the result (2,000 training and 500 test images as an ImageFolder of PNGs) so
that `make demo` runs without ../shared. Run this only to regenerate it:
    python examples/make_sample.py ../shared/datasets/fashion-mnist
"""
from __future__ import annotations

import gzip
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
OUT = Path(__file__).resolve().parent / "fashion-mnist-sample"


def read_idx(path: Path) -> np.ndarray:
    data = gzip.open(path, "rb").read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main(src: Path) -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    for split, prefix, count in (("train", "train", 2000), ("val", "t10k", 500)):
        images = read_idx(src / f"{prefix}-images-idx3-ubyte.gz")[:count]
        labels = read_idx(src / f"{prefix}-labels-idx1-ubyte.gz")[:count]
        for i, (img, lab) in enumerate(zip(images, labels)):
            path = OUT / split / CLASSES[lab] / f"{prefix}-{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path, optimize=True)
    shutil.copy(src / "COPYRIGHT", OUT / "COPYRIGHT")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
