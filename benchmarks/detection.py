"""Detection on encrypted shards: COCO mAP of `mix` against the plain (`none`) baseline.

One canvas set (real Fashion-MNIST items pasted on canvases, a real COCO JSON, see
examples/canvas_coco.py) is encrypted twice through `encrypt-dataset coco`'s code path,
once with `--mode none` and once with `--mode mix`, into train and val splits. The same
YOLOS recipe (same widths, same token grid, same steps, batch, learning rate and seed) is
trained on each with the one engine (`train.engine.train`) and scored on val with
pycocotools. Prints one JSON object; `map_ratio` = mix mAP ÷ plain mAP (target ≥ 0.9).

`--labels agnostic` (the default) gives every object the one category "item": in a CPU
budget of minutes a detector trained from scratch learns where objects are, but not yet
which of ten garments each one is (10-class mAP stays near 0 for both releases), and where
objects are is what the mix cipher could damage. `--labels fashion` keeps the ten classes
for longer budgets. The two runs go in parallel, one CPU thread each.

    python benchmarks/detection.py [--train-images 1024] [--epochs 16] [--labels agnostic]
"""
from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for extra in (REPO, REPO / "tests", REPO / "examples"):
    sys.path.insert(0, str(extra))


def build_canvas_set(root: Path, train_images: int, val_images: int, canvas: int,
                     labels: str) -> tuple[Path, dict[str, Path]]:
    """Write the canvases once and split their COCO JSON by image into train and val files."""
    from canvas_coco import write_canvas_coco
    from conftest import load_fashion_mnist

    items, classes = load_fashion_mnist("train", limit=4000)
    image_dir, ann_path = write_canvas_coco(root, items, classes, images=train_images + val_images, canvas=canvas)
    coco = json.loads(ann_path.read_text())
    if labels == "agnostic":
        coco["categories"] = [{"id": 1, "name": "item"}]
        for a in coco["annotations"]:
            a["category_id"] = 1
    files = {}
    for split, keep in (("train", lambda i: i <= train_images), ("val", lambda i: i > train_images)):
        part = {"images": [i for i in coco["images"] if keep(i["id"])],
                "annotations": [a for a in coco["annotations"] if keep(a["image_id"])],
                "categories": coco["categories"]}
        files[split] = root / f"instances_{split}.json"
        files[split].write_text(json.dumps(part))
    return image_dir, files


def encrypt_release(image_dir: Path, files: dict[str, Path], out: Path, keystore, mode: str,
                    size: int, patch: int, sub_patch: int) -> None:
    """Encrypt both splits into one release, as `encrypt-dataset coco` does for one split."""
    from encrypt.main import encrypt_dataset
    from encrypt.plan import JobSettings
    from shards.modes import MODES
    from encrypt.sources import SourceListing, list_coco

    train, val = list_coco(image_dir, files["train"], "train"), list_coco(image_dir, files["val"], "val")
    listing = SourceListing(train.items + val.items, train.skipped + val.skipped, train.class_names,
                            task="detection", categories=train.categories, splits=["train", "val"])
    settings = JobSettings(mode=mode, patch=patch, sub_patch=sub_patch if MODES[mode].mixes else None, size=size,
                           resize=size, views=1, format="png", quality=95, channels=1, shard_samples=64,
                           task="detection", min_side=1)
    encrypt_dataset(listing, out, keystore, "canvas", settings, progress=False)


def train_release(release: str, out: str, settings: dict) -> dict:
    """One run (in its own process, one thread): fit, then the final val metrics."""
    import torch

    from train.engine import DetectionConfig, train

    torch.set_num_threads(settings["threads"])
    config = DetectionConfig(shards=release, out=out, model=settings["model"],
                             num_det_tokens=settings["det_tokens"], epochs=settings["epochs"],
                             batch_size=settings["batch_size"], lr=settings["lr"], min_lr=settings["lr"] / 100,
                             warmup_epochs=1, seed=settings["seed"], workers=0, eval_every=settings["epochs"],
                             progress=False, log_every=10_000)
    summary = train(config, device="cpu")
    val = summary["val"]
    return {"map": val["map"], "ap50": val["ap50"], "ap75": val["ap75"], "ar100": val["ar100"],
            "val_images": val["images"], "steps": summary["step"], "train_s": summary["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=1024)
    parser.add_argument("--val-images", type=int, default=128)
    parser.add_argument("--canvas", type=int, default=64, help="canvas height in pixels (source images)")
    parser.add_argument("--labels", choices=("agnostic", "fashion"), default="agnostic")
    parser.add_argument("--size", type=int, default=64, help="letterboxed plain image size")
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--sub-patch", type=int, default=4)
    parser.add_argument("--model", default="nano")
    parser.add_argument("--det-tokens", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    parser.add_argument("--sequential", action="store_true", help="one run after the other")
    parser.add_argument("--work", type=Path, default=None, help="keep canvases, releases and runs here")
    args = parser.parse_args()

    from keys.keystore import create_keystore

    started = time.perf_counter()
    settings = {k: v for k, v in vars(args).items() if k != "work"}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        image_dir, files = build_canvas_set(work / "canvases", args.train_images, args.val_images, args.canvas,
                                            args.labels)
        # a throwaway keystore for throwaway data: the passphrase is random and never shown
        keystore = create_keystore(work / "keystore", secrets.token_urlsafe(24).encode())
        modes = ("none", "mix")
        for mode in modes:
            encrypt_release(image_dir, files, work / f"release-{mode}", keystore, mode, args.size, args.patch,
                            args.sub_patch)
        jobs = [(str(work / f"release-{m}"), str(work / f"run-{m}"), settings) for m in modes]
        if args.sequential:
            runs = [train_release(*job) for job in jobs]
        else:
            with ProcessPoolExecutor(len(jobs), mp_context=get_context("spawn")) as pool:
                runs = list(pool.map(train_release, *zip(*jobs)))
    results = dict(zip(modes, runs))
    report = {"benchmark": "detection", "results": results, "settings": settings, "target_map_ratio": 0.9,
              "wall_s": round(time.perf_counter() - started, 1)}
    if results["none"]["map"]:
        report["map_ratio"] = round(results["mix"]["map"] / results["none"]["map"], 3)
    if results["none"]["ap50"]:
        report["ap50_ratio"] = round(results["mix"]["ap50"] / results["none"]["ap50"], 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
