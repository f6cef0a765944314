"""Listing + planning at scale: does ImageNet's file count (1.28 M) plan in < 1 min and < 1 GB?

Builds a synthetic ImageFolder of empty `.jpg` files (train/, 1000 classes) in a temp dir,
runs the job's real driver-side steps, encrypt.sources.list_imagefolder and
encrypt.plan.plan_shards with a throwaway DatasetKey, and prints JSON: seconds and peak memory
(tracemalloc of Python objects; RSS growth of the process) for each, extrapolated linearly to
1,281,167 files. The temp dir is removed.

Run: OMP_NUM_THREADS=1 python benchmarks/plan_scale.py [--files 200000]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encrypt.plan import JobSettings, plan_shards  # noqa: E402
from encrypt.sources import list_imagefolder  # noqa: E402
from keys.derive import DatasetKey  # noqa: E402

IMAGENET = 1_281_167
CLASSES = 1000


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(root: Path, files: int) -> None:
    per_class = -(-files // CLASSES)
    made = 0
    for c in range(CLASSES):
        d = root / "train" / f"n{c:08d}"
        d.mkdir(parents=True)
        for i in range(min(per_class, files - made)):
            open(d / f"n{c:08d}_{i}.JPEG", "wb").close()
        made += min(per_class, files - made)


def measure(tmp: Path, key, settings) -> dict:
    """Peak Python memory of listing then planning, the listing held as the job holds it."""
    rss0 = _rss_mb()
    tracemalloc.start()
    listing = list_imagefolder(tmp)
    listed, listed_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    tasks = plan_shards(listing, key, settings)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    mb = 2**20
    return {"listing_held_mb": round(listed / mb, 1), "listing_peak_mb": round(listed_peak / mb, 1),
            "listing_and_plan_held_mb": round(held / mb, 1), "peak_mb": round(max(peak, listed_peak) / mb, 1),
            "rss_growth_mb": round(_rss_mb() - rss0, 1), "shards": len(tasks)}


def timed(step):
    """The same step without tracemalloc, whose hooks slow allocation-heavy code several-fold."""
    start = time.perf_counter()
    result = step()
    return result, round(time.perf_counter() - start, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pv-plan-"))
    try:
        start = time.perf_counter()
        build(tmp, args.files)
        build_s = time.perf_counter() - start
        key = DatasetKey("plan-scale", os.urandom(32))
        settings = JobSettings(mode="mix-shuffle", patch=16, sub_patch=8, size=224, resize=256, views=1,
                               format="jpeg", quality=90, channels=3, shard_samples=1000, min_side=56)
        listing, list_seconds = timed(lambda: list_imagefolder(tmp))
        files = len(listing.items)
        tasks, plan_seconds = timed(lambda: plan_shards(listing, key, settings))
        del listing, tasks
        memory = measure(tmp, key, settings)
        scale = IMAGENET / files
        total_s = list_seconds + plan_seconds
        peak_mb = memory["peak_mb"]
        report = {
            "files": files, "build_seconds": round(build_s, 1),
            "list_imagefolder_seconds": list_seconds, "plan_shards_seconds": plan_seconds, "memory": memory,
            "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "extrapolated_to_1281167": {
                "seconds": round(total_s * scale, 1),
                "peak_mb": round(peak_mb * scale, 1),
                "goal": "under 60 s and under 1024 MB",
            },
        }
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
