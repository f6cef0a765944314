"""Start-up time and memory of the command lines, against `python -c "import click"`, in one run.

Each command runs through its real console script (.venv/bin/audit-shards, ...) in a fresh
process, `--repeats` times, each under a small parent that times it and reads its peak
resident size (getrusage RUSAGE_CHILDREN: that parent's only child). Medians are reported, and
for each command the ratio to the baseline measured in the same run, on:
- `full`: this venv with every extra installed;
- `core`: the same venv seen as a core install (`pip install patchveil`, no extras): torch,
  torchvision, timm, scipy, skimage, ray and pycocotools cannot be imported
  (tests/core_install.py).

`audit-shards verify` checks a real release made here from the shipped Fashion-MNIST sample
(2,000 train + 500 val 32 px images, mix-shuffle, PNG, 10 shards). Goal for every command
here, on a core install: under 1 s wall and 150 MB peak RSS (`pass`).

    python benchmarks/cli_startup.py [--repeats 7] [--train 2000] [--val 500]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

BIN = Path(sys.executable).parent
GOAL_SECONDS = 1.0
GOAL_MB = 150.0

# Times one child and reads its peak RSS (Linux: KiB); prints JSON. Its own start-up is not timed.
PROBE = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
wall = time.perf_counter() - t
print(json.dumps({"rc": rc, "wall": wall,
                  "rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def make_release(base: Path, train: int, val: int) -> tuple[Path, Path, Path]:
    """A real release of the shipped sample; returns (release, identity, custody log)."""
    from encrypt.main import encrypt_dataset
    from encrypt.sources import list_imagefolder
    from keys.keystore import create_keystore
    from releases import job_settings, write_imagefolder

    write_imagefolder(base / "src", {"train": train, "val": val})
    store = create_keystore(base / "keystore", b"cli-startup benchmark: Heron-Lantern-8812")
    settings = job_settings(mode="mix-shuffle", sub_patch=2, shard_samples=250)
    encrypt_dataset(list_imagefolder(base / "src"), base / "release", store, "fm-startup", settings,
                    progress=False)
    identity = base / "identity.json"
    identity.write_text(json.dumps(store.public_identity()))
    return base / "release", identity, store.custody.path


def measure(argv: list[str], env: dict[str, str], repeats: int) -> dict[str, float]:
    runs = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", PROBE, *argv], env=env, capture_output=True, text=True,
                              check=True)
        run = json.loads(done.stdout)
        if run["rc"] != 0:
            raise SystemExit(f"{' '.join(argv)} exited {run['rc']}")
        runs.append(run)
    return {"wall_s": round(statistics.median(r["wall"] for r in runs), 4),
            "peak_rss_mb": round(statistics.median(r["rss_mb"] for r in runs), 1),
            "wall_s_min": round(min(r["wall"] for r in runs), 4),
            "wall_s_max": round(max(r["wall"] for r in runs), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--train", type=int, default=2000, help="train images of the verified release")
    parser.add_argument("--val", type=int, default=500, help="val images of the verified release")
    args = parser.parse_args()

    from core_install import core_env

    with tempfile.TemporaryDirectory(prefix="cli-startup-") as tmp:
        release, identity, log = make_release(Path(tmp), args.train, args.val)
        release_mb = sum(p.stat().st_size for p in release.iterdir()) / 1e6
        shards = len(list(release.glob("*.tar")))
        commands = {
            "audit-shards --help": [str(BIN / "audit-shards"), "--help"],
            "audit-shards verify": [str(BIN / "audit-shards"), "verify", str(release), "--public-key",
                                    str(identity), "--custody-log", str(log)],
            "dataset-keys --help": [str(BIN / "dataset-keys"), "--help"],
            "encrypt-dataset --help": [str(BIN / "encrypt-dataset"), "--help"],
        }
        baseline_cmd = [sys.executable, "-c", "import click"]
        base_env = {**os.environ, "OMP_NUM_THREADS": "1"}
        envs = {"full": base_env, "core": core_env(base_env)}
        results: dict[str, dict] = {}
        for install, env in envs.items():
            baseline = measure(baseline_cmd, env, args.repeats)
            rows = {}
            for name, argv in commands.items():
                m = measure(argv, env, args.repeats)
                m["wall_ratio"] = round(m["wall_s"] / baseline["wall_s"], 2)
                m["rss_ratio"] = round(m["peak_rss_mb"] / baseline["peak_rss_mb"], 2)
                m["pass"] = m["wall_s"] < GOAL_SECONDS and m["peak_rss_mb"] < GOAL_MB
                rows[name] = m
            results[install] = {"baseline python -c 'import click'": baseline, "commands": rows}

    print(json.dumps({
        "benchmark": "cli_startup",
        "python": sys.version.split()[0],
        "repeats": args.repeats,
        "verified_release": {"samples": args.train + args.val, "shards": shards,
                             "megabytes": round(release_mb, 2)},
        "goal": {"wall_s_below": GOAL_SECONDS, "peak_rss_mb_below": GOAL_MB},
        "installs": results,
        "all_pass_on_core": all(m["pass"] for m in results["core"]["commands"].values()),
    }, indent=2))


if __name__ == "__main__":
    main()
