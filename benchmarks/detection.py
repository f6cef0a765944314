"""Detection on encrypted shards: COCO mAP of `mix` against the plain (`none`) baseline.

One canvas set (real Fashion-MNIST items pasted on canvases, a real COCO JSON, see
examples/canvas_coco.py) is encrypted twice through `encrypt-dataset coco`'s code path,
once with `--mode none` and once with `--mode mix`, into train and val splits. The same
YOLOS detector recipe (same widths, same token grid, same epochs, batch, learning rate and
seed) is trained on each with `train.detection_engine.fit_detection` and scored on val with
pycocotools. Prints one JSON object; `map_ratio` = mix mAP ÷ plain mAP (target ≥ 0.9).

    python benchmarks/detection.py [--train-images 512] [--val-images 128] [--epochs 30]
"""
from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "examples"))


def build_canvas_set(root: Path, train_images: int, val_images: int, canvas: int) -> tuple[Path, dict[str, Path]]:
    """Write the canvases once and split their COCO JSON by image into train and val files."""
    from canvas_coco import write_canvas_coco
    from conftest import load_fashion_mnist

    items, labels = load_fashion_mnist("train", limit=4000)
    image_dir, ann_path = write_canvas_coco(root, items, labels, images=train_images + val_images, canvas=canvas)
    coco = json.loads(ann_path.read_text())
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
    """Encrypt both splits into one release, as `encrypt-dataset coco` does for one."""
    from encrypt.main import encrypt_dataset
    from encrypt.plan import JobSettings
    from encrypt.sources import SourceListing, list_coco

    train, val = list_coco(image_dir, files["train"], "train"), list_coco(image_dir, files["val"], "val")
    listing = SourceListing(train.items + val.items, train.skipped + val.skipped, train.class_names,
                            task="detection", categories=train.categories, splits=["train", "val"])
    settings = JobSettings(mode=mode, patch=patch, sub_patch=sub_patch if mode == "mix" else None, size=size,
                           resize=size, views=1, format="png", quality=95, channels=1, shard_samples=64,
                           task="detection", min_side=1)
    encrypt_dataset(listing, out, keystore, "canvas", settings, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=512)
    parser.add_argument("--val-images", type=int, default=128)
    parser.add_argument("--canvas", type=int, default=96, help="canvas height in pixels (source images)")
    parser.add_argument("--size", type=int, default=64, help="letterboxed plain image size")
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--sub-patch", type=int, default=4)
    parser.add_argument("--model", default="nano")
    parser.add_argument("--det-tokens", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    parser.add_argument("--modes", default="none,mix")
    parser.add_argument("--work", type=Path, default=None, help="keep releases and runs here")
    args = parser.parse_args()

    import torch

    from keys.keystore import create_keystore
    from train.detection_engine import DetectionConfig, fit_detection

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        image_dir, files = build_canvas_set(work / "canvases", args.train_images, args.val_images, args.canvas)
        # a throwaway keystore for throwaway data: the passphrase is random and never shown
        keystore = create_keystore(work / "keystore", secrets.token_urlsafe(24).encode())
        results = {}
        for mode in args.modes.split(","):
            release = work / f"release-{mode}"
            start = time.perf_counter()
            encrypt_release(image_dir, files, release, keystore, mode, args.size, args.patch, args.sub_patch)
            encrypt_s = time.perf_counter() - start
            config = DetectionConfig(shards=str(release), out=str(work / f"run-{mode}"), model=args.model,
                                     num_det_tokens=args.det_tokens, epochs=args.epochs,
                                     batch_size=args.batch_size, lr=args.lr, warmup_epochs=1,
                                     seed=args.seed, workers=0, eval_every=args.epochs, progress=False,
                                     log_every=10_000)
            summary = fit_detection(config, device="cpu")
            val = summary["val"]
            results[mode] = {"map": val["map"], "ap50": val["ap50"], "ap75": val["ap75"], "ar100": val["ar100"],
                             "val_images": val["images"], "train_s": summary["seconds"],
                             "encrypt_s": round(encrypt_s, 2)}
    report = {"benchmark": "detection", "results": results,
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "target_map_ratio": 0.9}
    if "none" in results and "mix" in results and results["none"]["map"]:
        report["map_ratio"] = round(results["mix"]["map"] / results["none"]["map"], 3)
        report["ap50_ratio"] = round(results["mix"]["ap50"] / max(results["none"]["ap50"], 1e-9), 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
