"""Loader throughput and train-step speed, each as a ratio against a baseline in the same run.

- loader_ratio: images/s from encrypted shards to batched uint8 tensors (train.data.ShardLoader)
  ÷ a torchvision ImageFolder + DataLoader over the same images: the release's own encrypted
  JPEG bytes written out as one file each, so both read and decode identical bytes and only
  the loading differs. Same batch size and workers, interleaved repeats, medians. Target ≥ 1.
  Also `source_ratio`: against the plain source files (224 px natural-photo crops), which
  adds whatever the cipher costs at decode time. Both for ImageNet-like 224 px JPEG and for
  the shipped 28 px Fashion-MNIST PNGs, where per-file overhead dominates. Each twice:
  `warm` (every file already in the OS page cache) and `cold` (this benchmark's files
  evicted from the cache before every epoch, as for a data set larger than memory).
- step_ratio: PEViT train steps/s ÷ a timm ViT of the same size (same depth, width, tokens,
  batch). Target ≥ 0.95. Interleaved repeats; medians.
Prints one JSON object.

    python benchmarks/loader_and_step.py [--workers 2] [--batch-size 128] [--steps 30]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "fashion-mnist-sample"


def make_photo_folder(root: Path, count: int) -> None:
    """224×224 JPEG crops of natural photos, ten classes: an ImageNet-like ImageFolder."""
    import sys

    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import natural_photos

    rng = np.random.default_rng(0)  # public benchmark data, not keyed
    bases = list(natural_photos(448).values())
    for i in range(count):
        top, left = rng.integers(0, 448 - 224, size=2)
        img = bases[i % len(bases)][top:top + 224, left:left + 224]
        path = root / "train" / f"class{i % 10}" / f"img{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, quality=95, subsampling=0)


def write_release_as_files(release_dir: Path, split: str, root: Path) -> None:
    """The release's stored image bytes, unchanged, as ImageFolder files (class folder per label)."""
    import tarfile

    for shard in sorted(release_dir.glob(f"{split}-*.tar")):
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                members.setdefault(key, {})[ext] = tar.extractfile(info).read()
        for key, parts in members.items():
            ext = "jpg" if "jpg" in parts else "png"
            path = root / split / f"class{int(parts['cls'])}" / f"{key}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(parts[ext])


def loader_figures(work: Path, src: Path, size: int, fmt: str, channels: int, workers: int,
                   batch_size: int, repeats: int) -> dict:
    import torch
    from torchvision import datasets, transforms

    from encrypt.main import encrypt_dataset
    from encrypt.plan import JobSettings
    from encrypt.sources import list_imagefolder
    from keys.keystore import create_keystore
    from train.data import ShardLoader, open_release

    store = create_keystore(work / f"ks-{size}", b"benchmark passphrase, throwaway")
    out = work / f"release-{size}"
    settings = JobSettings(mode="shuffle", patch=4 if size == 28 else 16, sub_patch=None, size=size, resize=size,
                           views=1, format=fmt, quality=95, channels=channels, shard_samples=250, min_side=8)
    encrypt_dataset(list_imagefolder(src), out, store, "loader-bench", settings, progress=False)
    release = open_release(out, ("train",))
    same = work / f"files-{size}"
    write_release_as_files(out, "train", same)
    shards = ShardLoader(release, "train", batch_size=batch_size, train=True, workers=workers, seed=0)

    def folder_loader(root: Path):
        folder = datasets.ImageFolder(str(root / "train"), transform=transforms.PILToTensor())
        return torch.utils.data.DataLoader(folder, batch_size=batch_size, shuffle=True, num_workers=workers,
                                           drop_last=True, persistent_workers=False)

    same_bytes, source = folder_loader(same), folder_loader(src)

    def rate(batches, files: list[Path], cold: bool) -> float:
        if cold:
            evict_from_page_cache(files)
        t0, n = time.perf_counter(), 0
        for images, _labels in batches:
            n += images.shape[0]
        return n / (time.perf_counter() - t0)

    files = {"shards": sorted(out.glob("train-*.tar")), "same": sorted(same.rglob("*.*")),
             "source": sorted(p for p in (src / "train").rglob("*") if p.is_file())}
    figures = {}
    for cold in (False, True):
        shard_rates, same_rates, source_rates = [], [], []
        for epoch in range(repeats):  # interleaved, so a busy moment hits all three alike
            shard_rates.append(rate(shards.epoch(epoch), files["shards"], cold))
            same_rates.append(rate(same_bytes, files["same"], cold))
            source_rates.append(rate(source, files["source"], cold))
        s, f, p = (statistics.median(r) for r in (shard_rates, same_rates, source_rates))
        figures["cold" if cold else "warm"] = {
            "shards_images_per_s": round(s, 1), "imagefolder_same_bytes_images_per_s": round(f, 1),
            "imagefolder_source_images_per_s": round(p, 1), "loader_ratio": round(s / f, 3),
            "source_ratio": round(s / p, 3)}
    return {**figures, "images": len(source.dataset), "image": f"{size} px {fmt}",
            "workers": workers, "repeats": repeats}


def evict_from_page_cache(files: list[Path]) -> None:
    """Drop these files' pages from the OS cache (no root needed), so the next read hits the disk.

    `cold` figures are what a data set larger than memory (ImageNet) sees every epoch.
    """
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def step_figures(batch_size: int, steps: int, repeats: int, threads: int) -> dict:
    import timm
    import torch

    torch.set_num_threads(threads)
    import train.models  # noqa: F401  registers pevit_* / mivit_*

    common = dict(num_classes=10, img_size=32, patch_size=4, in_chans=1, depth=6, embed_dim=192, num_heads=3)
    models = {"pevit": timm.create_model("pevit_tiny_patch4_32", **common),
              "vit": timm.create_model("vit_tiny_patch16_224", **common)}
    x = torch.randn(batch_size, 1, 32, 32)
    y = torch.randint(0, 10, (batch_size,))

    def rate(model) -> float:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        loss_fn = torch.nn.CrossEntropyLoss()
        for _ in range(3):  # warm-up
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        return steps / (time.perf_counter() - t0)

    rates = {k: [] for k in models}
    for _ in range(repeats):
        for name, model in models.items():
            rates[name].append(rate(model))
    med = {k: statistics.median(v) for k, v in rates.items()}
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    return {"pevit_steps_per_s": round(med["pevit"], 2), "vit_steps_per_s": round(med["vit"], 2),
            "step_ratio": round(med["pevit"] / med["vit"], 3), "params": params,
            "batch_size": batch_size, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the step benchmark (1: immune to a busy second core)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pv-loader-"))
    try:
        make_photo_folder(work / "photos", args.photos)
        photos = loader_figures(work, work / "photos", 224, "jpeg", 3, args.workers, args.batch_size, args.repeats)
        small = loader_figures(work, SAMPLE, 28, "png", 1, args.workers, args.batch_size, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    step = step_figures(64, args.steps, args.repeats, args.threads)
    print(json.dumps({"loader": photos, "loader_fashion_mnist_28px": small, "train_step": step,
                      "targets": {"loader_ratio": 1.0, "step_ratio": 0.95}}, indent=2))


if __name__ == "__main__":
    main()
