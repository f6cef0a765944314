"""Throughput of encrypt-dataset against a plain pipeline over the same images, in one run.

Prints one JSON object. Figures are ratios against baselines measured in the same process,
so they hold on a noisy machine:
- cipher_cost_ratio: encrypt job (mix-shuffle) images/s ÷ the same job with --mode none.
- vs_bare_ratio: encrypt job images/s ÷ a bare loop (decode, resize, crop, JPEG encode,
  webdataset TarWriter) with the same encoder settings. Target ≥ 0.95.
- ray_scaling_ratio: 2 Ray workers ÷ 1 Ray worker images/s (target ≥ 1.7 on 2 free cores),
  with the Ray start-up cost measured separately.
- peak_worker_rss_mb: the largest resident size of a worker, against one shard's bytes.

    python benchmarks/encrypt_throughput.py [--images 600] [--repeats 3]
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def make_photos(root: Path, count: int) -> None:
    """Natural-photo JPEGs of ImageNet-like size (about 500×375), ten classes."""
    from conftest import natural_photos

    rng = np.random.default_rng(0)  # public benchmark data, not keyed
    bases = list(natural_photos(512).values())
    for i in range(count):
        base = bases[i % len(bases)]
        top, left = rng.integers(0, 512 - 375), rng.integers(0, 12)
        img = base[top:top + 375, left:left + 500]
        path = root / "train" / f"class{i % 10}" / f"img{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, quality=90)


def bare_pipeline(src: Path, out: Path, size: int, resize: int, quality: int, shard_samples: int) -> int:
    """The plain reference: what any ImageNet-to-WebDataset script does, no cipher, no keys."""
    import webdataset as wds

    from encrypt.geometry import resize_center_crop

    files = sorted(src.rglob("*.jpg"))
    out.mkdir(parents=True)
    for start in range(0, len(files), shard_samples):
        with open(out / f"plain-{start // shard_samples:06d}.tar", "wb") as f, wds.TarWriter(f, mtime=0) as tw:
            for i, path in enumerate(files[start:start + shard_samples], start):
                with Image.open(path) as im:
                    arr = np.asarray(im.convert("RGB"))
                arr = resize_center_crop(arr, resize, size)
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, "JPEG", quality=quality, subsampling=0)
                tw.write({"__key__": f"{i:08d}", "jpg": buf.getvalue(), "cls": str(i % 10)})
    return len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shard-samples", type=int, default=50)
    args = parser.parse_args()

    from encrypt.main import encrypt_dataset
    from encrypt.plan import JobSettings
    from shards.modes import MODES
    from encrypt.sources import list_imagefolder
    from keys.keystore import create_keystore

    work = Path(tempfile.mkdtemp(prefix="pv-bench-"))
    try:
        src = work / "src"
        make_photos(src, args.images)
        store = create_keystore(work / "ks", b"benchmark passphrase, throwaway")
        listing = list_imagefolder(src)

        def settings(mode: str) -> JobSettings:
            return JobSettings(mode=mode, patch=16, sub_patch=8 if MODES[mode].mixes else None,
                               size=224, resize=256, views=1, format="jpeg", quality=95, channels=3,
                               shard_samples=args.shard_samples, min_side=56)

        def run_job(mode: str, workers: int, tag: str) -> tuple[float, object]:
            t0 = time.perf_counter()
            summary = encrypt_dataset(listing, work / tag, store, "bench", settings(mode), workers=workers,
                                      progress=False)
            return time.perf_counter() - t0, summary

        def bare(tag: str) -> float:
            t0 = time.perf_counter()
            bare_pipeline(src, work / tag, 224, 256, 95, args.shard_samples)
            return time.perf_counter() - t0

        rows = {"bare": [], "none": [], "mix-shuffle": [], "shuffle": []}
        for r in range(args.repeats):  # interleaved, so drift hits every pipeline alike
            rows["bare"].append(bare(f"bare{r}"))
            for mode in ("none", "mix-shuffle", "shuffle"):
                rows[mode].append(run_job(mode, 0, f"{mode}{r}")[0])
        med = {k: float(np.median(v)) for k, v in rows.items()}
        ips = {k: args.images / v for k, v in med.items()}

        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
        ray.shutdown()
        ray_start = time.perf_counter() - t0
        scale = {}
        for workers in (1, 2):
            seconds, summary = run_job("mix-shuffle", workers, f"ray{workers}")
            scale[workers] = {"seconds": round(seconds, 2), "images_per_s": round(args.images / seconds, 1),
                              "peak_worker_rss_mb": summary.peak_worker_rss_mb}
        shard_mb = max(p.stat().st_size for p in (work / "ray2").glob("*.tar")) / 1e6
        print(json.dumps({
            "images": args.images, "repeats": args.repeats, "image_size": "500x375 -> 224",
            "images_per_s": {k: round(v, 1) for k, v in ips.items()},
            "cipher_cost_ratio": round(ips["mix-shuffle"] / ips["none"], 3),
            "shuffle_cipher_cost_ratio": round(ips["shuffle"] / ips["none"], 3),
            "vs_bare_ratio": round(ips["mix-shuffle"] / ips["bare"], 3),
            "ray_start_seconds": round(ray_start, 2),
            "ray": scale,
            "ray_scaling_ratio": round(scale[2]["images_per_s"] / scale[1]["images_per_s"], 3),
            "ray_scaling_ratio_excluding_start": round(
                (scale[1]["seconds"] - ray_start) / max(scale[2]["seconds"] - ray_start, 1e-9), 3),
            "largest_shard_mb": round(shard_mb, 2),
            "targets": {"vs_bare_ratio": 0.95, "ray_scaling_ratio": 1.7},
        }, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
