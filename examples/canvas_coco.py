"""A small real detection set in COCO format: Fashion-MNIST items pasted on canvases.

Every object is a real Fashion-MNIST image placed at a known position and scale, so the boxes
are exact. The output is an image folder plus an instances JSON laid out like a COCO download,
so it goes through `encrypt-dataset coco` on exactly the code path COCO itself would.
    python examples/canvas_coco.py OUT [--images 200] [--canvas 96]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def write_canvas_coco(out_dir: Path, items: np.ndarray, labels: np.ndarray, *, images: int = 200,
                      canvas: int = 96, max_objects: int = 3, seed: int = 0) -> tuple[Path, Path]:
    """Write out_dir/images/*.png and out_dir/instances.json; return (images dir, json path).

    Layout randomness is public test-data randomness (numpy, seeded), not keyed.
    """
    rng = np.random.default_rng(seed)
    image_dir = Path(out_dir) / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [],
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}
    next_item = 0
    for image_id in range(1, images + 1):
        h = canvas
        w = int(canvas * rng.choice([1.0, 1.25, 1.5]))
        img = np.zeros((h, w), np.uint8)
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            side = int(rng.integers(24, min(h, w) // 2 + 1))
            for _attempt in range(20):
                x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
                if all(x + side <= px or px + ps <= x or y + side <= py or py + ps <= y
                       for px, py, ps, _ in placed):
                    break
            else:
                continue
            item = items[next_item % len(items)]
            label = int(labels[next_item % len(items)])
            next_item += 1
            patch = np.asarray(Image.fromarray(item).resize((side, side), Image.Resampling.BILINEAR))
            img[y:y + side, x:x + side] = np.maximum(img[y:y + side, x:x + side], patch)
            placed.append((x, y, side, label))
        name = f"{image_id:012d}.png"
        Image.fromarray(img).convert("RGB").save(image_dir / name)
        coco["images"].append({"id": image_id, "file_name": name, "width": w, "height": h})
        for x, y, side, label in placed:
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": label + 1,
                "bbox": [x, y, side, side], "area": side * side, "iscrowd": 0})
    ann_path = Path(out_dir) / "instances.json"
    ann_path.write_text(json.dumps(coco))
    return image_dir, ann_path


def main() -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--canvas", type=int, default=96)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import load_fashion_mnist

    items, labels = load_fashion_mnist("train", limit=2000)
    image_dir, ann = write_canvas_coco(args.out, items, labels, images=args.images, canvas=args.canvas)
    print(f"wrote {args.images} canvases to {image_dir} and {ann}")


if __name__ == "__main__":
    main()
