"""Where raw samples come from: an ImageFolder tree or a COCO annotation file.

A source only lists work (paths, labels, boxes); it never decodes. Problems that make the
whole input unusable raise InputError (one line, exit 2); problems with one file become a
Skipped entry so the job never stops on a single bad file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}
KNOWN_SPLITS = ("train", "val", "test")


class InputError(Exception):
    """The input as a whole cannot be used; the message is one line naming the path."""


@dataclass(frozen=True)
class SourceItem:
    """One raw image to encrypt. rel_path is relative to the source root, posix style."""

    split: str
    rel_path: str
    path: Path
    label: int | None = None
    annotation: dict | None = None  # COCO: {"image_id", "width", "height", "objects": [...]}


@dataclass(frozen=True)
class Skipped:
    """Something left out, with why: a whole sample, or only one of its annotations.

    Owner-side only: it names paths.
    """

    split: str
    rel_path: str
    reason: str
    whole_sample: bool = True  # False: the sample was written, one annotation was dropped


@dataclass
class SourceListing:
    items: list[SourceItem]
    skipped: list[Skipped]
    class_names: list[str]
    task: str = "classification"
    categories: list[dict] | None = None
    splits: list[str] = field(default_factory=list)


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_class_folder(root: Path, split: str, class_dir: Path, label: int,
                       items: list[SourceItem], skipped: list[Skipped]) -> None:
    found = 0
    # followlinks=False: a symlink loop cannot trap the walk; linked files are still listed.
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if not _is_image_name(name):
                skipped.append(Skipped(split, rel, "not an image file (extension)"))
                continue
            items.append(SourceItem(split, rel, path, label))
            found += 1
    if found == 0:
        skipped.append(Skipped(split, class_dir.relative_to(root).as_posix() + "/", "empty class folder"))


def _class_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def list_imagefolder(src: Path, split: str | None = None) -> SourceListing:
    """List SRC/{train,val,test}/{class}/* (splits detected) or SRC/{class}/* as one split.

    Classes are the sorted union of class folder names over all splits, so a label index
    means the same class in every split.
    """
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src}: source folder does not exist")
    if not src.is_dir():
        raise InputError(f"{src}: source is not a folder")
    top = _class_dirs(src)
    split_dirs = [d for d in top if d.name in KNOWN_SPLITS]
    if split_dirs and split is None:
        layout = {d.name: _class_dirs(d) for d in split_dirs}
    else:
        layout = {split or "train": top}
    class_names = sorted({d.name for dirs in layout.values() for d in dirs})
    if not class_names:
        raise InputError(f"{src}: no class folders found (expected SRC/[split/]class/image)")
    items: list[SourceItem] = []
    skipped: list[Skipped] = []
    for split_name, dirs in layout.items():
        for d in dirs:
            _walk_class_folder(src, split_name, d, class_names.index(d.name), items, skipped)
    if not items:
        raise InputError(f"{src}: no image files found")
    return SourceListing(items, skipped, class_names, splits=list(layout))


def list_coco(images: Path, annotations: Path, split: str = "train") -> SourceListing:
    """List the images of a COCO detection annotation file, with their objects.

    Images without annotations are kept (they teach the detector what background is);
    annotations that point at unknown images or categories are reported and dropped.
    """
    images, annotations = Path(images), Path(annotations)
    if not images.is_dir():
        raise InputError(f"{images}: image folder does not exist")
    try:
        data = json.loads(annotations.read_text())
    except FileNotFoundError:
        raise InputError(f"{annotations}: annotation file does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{annotations}: not a readable COCO JSON file ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise InputError(f"{annotations}: not a COCO detection file (needs images, annotations, categories lists)")
    categories = sorted(({"id": int(c["id"]), "name": str(c.get("name", c["id"]))} for c in data["categories"]),
                        key=lambda c: c["id"])
    known_cats = {c["id"] for c in categories}
    by_image: dict[int, list[dict]] = {}
    skipped: list[Skipped] = []
    for ann in data["annotations"]:
        try:
            image_id, cat = int(ann["image_id"]), int(ann["category_id"])
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            skipped.append(Skipped(split, str(annotations.name), f"malformed annotation id={ann.get('id')}"))
            continue
        if cat not in known_cats:
            skipped.append(Skipped(split, str(annotations.name), f"annotation id={ann.get('id')} has unknown category {cat}"))
            continue
        by_image.setdefault(image_id, []).append({
            "bbox": [x, y, w, h], "category_id": cat, "iscrowd": int(ann.get("iscrowd", 0)),
        })
    items: list[SourceItem] = []
    seen_ids = set()
    for img in sorted(data["images"], key=lambda i: str(i.get("file_name", ""))):
        try:
            image_id, name = int(img["id"]), str(img["file_name"])
        except (KeyError, TypeError, ValueError):
            skipped.append(Skipped(split, str(annotations.name), f"malformed image entry {img!r:.60}"))
            continue
        seen_ids.add(image_id)
        path = images / name
        if not path.is_file():
            skipped.append(Skipped(split, name, "image listed in annotations is missing"))
            continue
        items.append(SourceItem(split, Path(name).as_posix(), path, None, {
            "image_id": image_id, "width": img.get("width"), "height": img.get("height"),
            "objects": by_image.get(image_id, []),
        }))
    for image_id in sorted(set(by_image) - seen_ids):
        skipped.append(Skipped(split, str(annotations.name), f"annotations reference unknown image id {image_id}"))
    if not items:
        raise InputError(f"{annotations}: no usable images")
    return SourceListing(items, skipped, [c["name"] for c in categories], task="detection",
                         categories=categories, splits=[split])
