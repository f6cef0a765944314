"""Building blocks for tests that need a real release: real images in, real job, real shards out."""
from __future__ import annotations

import tarfile
from pathlib import Path

from PIL import Image

from conftest import FMNIST_CLASSES, SAMPLE_DIR, load_fashion_mnist
from encrypt.main import encrypt_dataset
from encrypt.plan import JobSettings
from encrypt.sources import list_imagefolder
from shards.reader import load_manifest

SAMPLE = SAMPLE_DIR  # the shipped 2000 train + 500 val real Fashion-MNIST images


def write_imagefolder(root: Path, per_split: dict[str, int]) -> dict[str, Path]:
    """Real Fashion-MNIST as root/{split}/{class}/*.png (val from the test set); rel_path -> file."""
    files = {}
    for split, count in per_split.items():
        images, labels = load_fashion_mnist("train" if split == "train" else "test", limit=count)
        for i, (img, lab) in enumerate(zip(images, labels)):
            path = root / split / FMNIST_CLASSES[lab] / f"item-{split}-{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
            files[path.relative_to(root).as_posix()] = path
    return files


def job_settings(**overrides) -> JobSettings:
    """The small geometry tests use: 32 px grayscale PNG, patch 4 (an 8×8 token grid)."""
    base = dict(mode="shuffle", patch=4, sub_patch=None, size=32, resize=32, views=1, format="png",
                quality=95, channels=1, shard_samples=16, min_side=8)
    base.update(overrides)
    return JobSettings(**base)


def make_release(out: Path, keystore, src: Path = SAMPLE, mode: str = "shuffle", *,
                 sub_patch: int | None = None, shard_samples: int = 250, dataset_id: str = "fm-train"):
    """A release as `encrypt-dataset imagefolder` writes it; returns its manifest."""
    settings = job_settings(mode=mode, sub_patch=sub_patch, shard_samples=shard_samples)
    encrypt_dataset(list_imagefolder(src), out, keystore, dataset_id, settings, progress=False)
    return load_manifest(out)


def read_samples(shard: Path) -> list[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) per sample in tar order, read with the stdlib (independent of shards)."""
    samples: list[tuple[str, dict[str, bytes]]] = []
    with tarfile.open(shard) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][ext] = tar.extractfile(member).read()
    return samples


def make_keystore(tmp_path_factory, passphrase: bytes = b"test keystore: correct horse battery 5c1e"):
    """A fresh keystore in a pytest temporary folder (scrypt makes this ~0.4 s: share it)."""
    from keys.keystore import create_keystore

    return create_keystore(tmp_path_factory.mktemp("ks") / "keystore", passphrase)


def keys_of(keystore, out: Path):
    """The keys a release's draws come from (its recorded derivation, its salt), as decrypt reads them."""
    from encrypt.ciphers import release_keys

    return release_keys(keystore, load_manifest(out))
