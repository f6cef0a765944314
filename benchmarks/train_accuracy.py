"""Accuracy on real Fashion-MNIST: plain vs each cipher, and the three losses, same budget.

Builds one release per mode from the real Fashion-MNIST (train → train split, t10k → val
split) through the real job (`encrypt.main.encrypt_dataset`, in-process), trains each row
through the real engine (`train.engine.train`) with the same model size, epochs, batch size,
learning rate and seed, and prints one JSON object with top-1 per row and the ratio of each
encrypted row to the plain row (the issue's goal: ≥ 0.98 for shuffle, ≥ 0.97 for the others).

    python benchmarks/train_accuracy.py [--train-limit 60000] [--epochs 5] [--depth 6] [--dim 128]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

ROWS = [  # (name, mode, loss)
    ("plain", "none", "ce"),
    ("shuffle", "shuffle", "ce"),
    ("mix", "mix", "ce"),
    ("mix-shuffle", "mix-shuffle", "ce"),
    ("shuffle+anchor-euclidean", "shuffle", "anchor-euclidean"),
    ("shuffle+anchor-cosine", "shuffle", "anchor-cosine"),
]


def write_imagefolder(root: Path, train_limit: int, val_limit: int) -> None:
    from conftest import FMNIST_CLASSES, load_fashion_mnist

    for split, source, limit in (("train", "train", train_limit), ("val", "test", val_limit)):
        images, labels = load_fashion_mnist(source, limit=limit)
        for cls in FMNIST_CLASSES:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
        for i, (img, lab) in enumerate(zip(images, labels)):
            Image.fromarray(img).save(root / split / FMNIST_CLASSES[lab] / f"{i:05d}.png", compress_level=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-limit", type=int, default=60000)
    parser.add_argument("--val-limit", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rows", default=",".join(r[0] for r in ROWS), help="comma-separated row names")
    parser.add_argument("--keep", type=Path,
                        help="keep releases and runs here instead of a temp folder; releases already "
                             "there are reused, so rows can run as separate processes")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: several single-thread processes scale better on few cores)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers per run")
    parser.add_argument("--prepare-only", action="store_true",
                        help="build the releases the rows need (into --keep) and stop")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from encrypt.main import encrypt_dataset
    from encrypt.plan import JobSettings
    from shards.modes import MODES
    from encrypt.sources import list_imagefolder
    from keys.keystore import create_keystore
    from train.engine import TrainConfig, train

    work = args.keep or Path(tempfile.mkdtemp(prefix="pv-acc-"))
    work.mkdir(parents=True, exist_ok=True)
    wanted = [r for r in ROWS if r[0] in args.rows.split(",")]
    try:
        src = work / "fmnist"
        if not src.exists():
            write_imagefolder(src, args.train_limit, args.val_limit)
        listing = list_imagefolder(src)
        store = None
        releases = {}
        for mode in dict.fromkeys(m for _, m, _ in wanted):
            out = work / f"release-{mode}"
            releases[mode] = out
            if (out / "manifest.json").exists():
                continue
            store = store or create_keystore(work / f"ks-{time.time_ns()}", b"benchmark passphrase, throwaway")
            settings = JobSettings(mode=mode, patch=4, sub_patch=2 if MODES[mode].mixes else None,
                                   size=32, resize=32, views=1, format="png", quality=95, channels=1,
                                   shard_samples=2000, min_side=8)
            encrypt_dataset(listing, out, store, f"fmnist-{mode}", settings, progress=False)
        if args.prepare_only:
            print(json.dumps({"releases": {m: str(p) for m, p in releases.items()}}))
            return
        results = {}
        for name, mode, loss in wanted:
            config = TrainConfig(shards=str(releases[mode]), out=str(work / f"run-{name}-{time.time_ns()}"),
                                 model_kwargs={"depth": args.depth, "embed_dim": args.dim, "num_heads": args.heads},
                                 epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, loss=loss,
                                 workers=args.workers, seed=0, progress=False, log_every=10**9)
            t0 = time.perf_counter()
            summary = train(config)
            last = summary["val"]
            results[name] = {"mode": mode, "loss": loss, "best_top1": round(summary["best_top1"], 4),
                             "last_top1": round(last["top1"], 4), "last_top5": round(last["top5"], 4),
                             "seconds": round(time.perf_counter() - t0, 1)}
            print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)
        plain = results.get("plain", {}).get("best_top1")
        for name, row in results.items():
            if plain and name != "plain":
                row["ratio_to_plain"] = round(row["best_top1"] / plain, 4)
        print(json.dumps({
            "data": f"Fashion-MNIST {args.train_limit} train / {args.val_limit} val, 32 px, patch 4, sub-patch 2",
            "budget": {"epochs": args.epochs, "depth": args.depth, "dim": args.dim, "heads": args.heads,
                       "batch_size": args.batch_size, "lr": args.lr},
            "rows": results,
            "goals": {"shuffle": 0.98, "others": 0.97},
        }, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
