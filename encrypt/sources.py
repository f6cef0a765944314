"""Where raw samples come from: an ImageFolder tree or a COCO annotation file.

A source only lists work (paths, labels, boxes); it never decodes. Problems that make the
whole input unusable raise InputError (one line, exit 2); problems with one file become a
Skipped entry so the job never stops on a single bad file.

File names are identities, not text: a name whose bytes are not valid UTF-8 is listed like any
other (its `rel_path` holds the bytes as surrogate escapes, the way Python's os functions give
them, and `keys.derive` hashes those same bytes), so the image is encrypted and decrypts back
to the same name. Only where a name is shown (`Skipped.rel_path`, reasons) are such bytes
written as ``\\xNN``.
"""
from __future__ import annotations

import json
import math
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from shards import storage
from shards.errors import PatchveilError, escape_path

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}
KNOWN_SPLITS = ("train", "val", "test")


class InputError(PatchveilError):
    """encrypt's error root: the input or an option cannot be used; one line naming the path."""


@dataclass(frozen=True)
class SourceItem:
    """One raw image to encrypt. rel_path is relative to the source root, posix style."""

    split: str
    rel_path: str
    path: Path | str  # a local file, or a store URL (read through shards.storage)
    label: int | None = None
    annotation: dict | None = None  # COCO: {"image_id", "width", "height", "objects": [...]}


@dataclass(frozen=True)
class Skipped:
    """Something left out, with why: a whole sample, or only one of its annotations.

    Owner-side only: it names paths. `rel_path` is the name as shown to a person: bytes of a
    file name that are not valid UTF-8 are written as ``\\xNN`` (see `display_path`), so the
    record always serialises and prints on one line.
    """

    split: str
    rel_path: str
    reason: str
    whole_sample: bool = True  # False: the sample was written, one annotation was dropped

    def __post_init__(self) -> None:
        object.__setattr__(self, "rel_path", display_path(self.rel_path))


def display_path(path: str) -> str:
    """A name printable on one line: undecodable file-name bytes as ``\\xNN`` (idempotent)."""
    try:
        return escape_path(path)
    except UnicodeError:  # a lone surrogate no file-name byte maps to (e.g. "\\ud800" from JSON)
        return path.encode("utf-8", "backslashreplace").decode("utf-8").replace("\n", "\\n").replace("\r", "\\r")


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
    unreadable: list[OSError] = []
    # followlinks=False: a symlink loop cannot trap the walk; linked files are still listed.
    # onerror: a folder that cannot be listed is reported, never silently left out.
    for dirpath, dirnames, filenames in os.walk(class_dir, onerror=unreadable.append, followlinks=False):
        for name in sorted(dirnames):
            if os.path.islink(os.path.join(dirpath, name)):
                rel = (Path(dirpath) / name).relative_to(root).as_posix()
                skipped.append(Skipped(split, rel + "/", "symbolic link to a folder (not followed)"))
        dirnames.sort()
        folder = Path(dirpath)
        rel_folder = folder.relative_to(root).as_posix()  # once per folder: the walk's hot path
        for name in sorted(filenames):
            path = folder / name
            rel = f"{rel_folder}/{name}"
            if not _is_image_name(name):
                skipped.append(Skipped(split, rel, "not an image file (extension)"))
                continue
            items.append(SourceItem(split, rel, path, label))
            found += 1
    for exc in unreadable:
        folder = Path(exc.filename) if exc.filename is not None else class_dir
        try:
            rel = folder.relative_to(root).as_posix()
        except ValueError:
            rel = class_dir.relative_to(root).as_posix()
        skipped.append(Skipped(split, rel + "/", f"unreadable folder ({_os_reason(exc)}); nothing in it was listed"))
    if found == 0 and not unreadable:
        skipped.append(Skipped(split, class_dir.relative_to(root).as_posix() + "/", "empty class folder"))


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _class_dirs(folder: Path) -> list[Path]:
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise InputError(display_path(str(folder)), f"cannot list the folder ({_os_reason(exc)})") from None
    return sorted((p for p in entries if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def list_imagefolder(src: Path, split: str | None = None) -> SourceListing:
    """List SRC/{train,val,test}/{class}/* (splits detected) or SRC/{class}/* as one split.

    Classes are the sorted union of class folder names over all splits, so a label index
    means the same class in every split.
    """
    if storage.is_url(src):
        return _list_imagefolder_url(storage.location(src), split)
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
    # A class is named by its folder; a folder name that is not valid UTF-8 is shown escaped
    # (class names go into the manifest, which is text).
    class_names = sorted({display_path(d.name) for dirs in layout.values() for d in dirs})
    if not class_names:
        raise InputError(f"{src}: no class folders found (expected SRC/[split/]class/image)")
    items: list[SourceItem] = []
    skipped: list[Skipped] = []
    for split_name, dirs in layout.items():
        for d in dirs:
            _walk_class_folder(src, split_name, d, class_names.index(display_path(d.name)), items, skipped)
    if not items:
        raise InputError(f"{src}: no image files found")
    return SourceListing(items, skipped, class_names, splits=list(layout))


def _walk_order(rel: str) -> tuple:
    """os.walk's order with sorted names: a folder's files first, then each sub-folder in turn."""
    *folders, name = rel.split("/")
    return (*((1, d) for d in folders), (0, name))


def _list_imagefolder_url(src: str, split: str | None) -> SourceListing:
    """`list_imagefolder` for a store URL, from one recursive listing: the same items, labels,
    order and skip reasons as for the same tree on disk (so the same release)."""
    try:
        files = storage.find_files(src)
    except FileNotFoundError:
        files = []
    except OSError as exc:
        raise InputError(src, f"cannot list the source ({_os_reason(exc)})") from None
    if not files:
        raise InputError(f"{src}: source folder does not exist (or holds no file)")
    tops = {f.split("/")[0] for f in files if "/" in f and not f.startswith(".")}
    splits = sorted(t for t in tops if t in KNOWN_SPLITS)
    layout: dict[str, dict[str, list[str]]] = {}  # split -> class folder (relative) -> files
    for rel in files:
        parts = rel.split("/")
        if splits and split is None:
            if parts[0] not in splits or len(parts) < 3 or parts[1].startswith("."):
                continue
            name, folder = parts[0], "/".join(parts[:2])
        else:
            if len(parts) < 2 or parts[0].startswith("."):
                continue
            name, folder = split or "train", parts[0]
        layout.setdefault(name, {}).setdefault(folder, []).append(rel)
    if splits and split is None:
        layout = {s: layout.get(s, {}) for s in splits}
    class_names = sorted({display_path(folder.rsplit("/", 1)[-1]) for dirs in layout.values() for folder in dirs})
    if not class_names:
        raise InputError(f"{src}: no class folders found (expected SRC/[split/]class/image)")
    items: list[SourceItem] = []
    skipped: list[Skipped] = []
    for split_name, dirs in layout.items():
        for folder in sorted(dirs, key=lambda f: f.rsplit("/", 1)[-1]):
            label = class_names.index(display_path(folder.rsplit("/", 1)[-1]))
            found = 0
            for rel in sorted(dirs[folder], key=lambda r: _walk_order(r[len(folder) + 1:])):
                if not _is_image_name(rel):
                    skipped.append(Skipped(split_name, rel, "not an image file (extension)"))
                    continue
                items.append(SourceItem(split_name, rel, storage.join(src, rel), label))
                found += 1
            if not found:
                skipped.append(Skipped(split_name, folder + "/", "empty class folder"))
    if not items:
        raise InputError(f"{src}: no image files found")
    return SourceListing(items, skipped, class_names, splits=list(layout))


def _coco_int(value) -> int | None:
    """An integer COCO id (int, integral float or decimal string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None  # NaN and inf are not integers
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _coco_bbox(value) -> list[float] | str:
    """The [x, y, w, h] of an annotation, or the reason it cannot be used."""
    if not isinstance(value, (list, tuple)) or len(value) != 4 or any(isinstance(v, bool) for v in value):
        return "bbox is not a list of 4 numbers"
    try:
        box = [float(v) for v in value]
    except (TypeError, ValueError):
        return "bbox is not a list of 4 numbers"
    if not all(math.isfinite(v) for v in box):
        return "bbox is not finite (NaN or infinity)"
    if box[2] < 0 or box[3] < 0:
        return "bbox has a negative width or height"
    return box


def _coco_categories(raw: list, annotations: Path, split: str, skipped: list[Skipped]) -> list[dict]:
    categories: dict[int, dict] = {}
    for c in raw:
        cid = _coco_int(c.get("id")) if isinstance(c, dict) else None
        if cid is None:
            skipped.append(Skipped(split, storage.name_of(annotations), f"malformed category entry {display_path(repr(c))[:60]} "
                                   "(needs an integer id); annotations of it are dropped", whole_sample=False))
            continue
        if cid in categories:
            raise InputError(annotations, f"category id {cid} is listed twice; labels would be ambiguous")
        categories[cid] = {"id": cid, "name": display_path(str(c.get("name", cid)))}
    if raw and not categories:
        raise InputError(annotations, "no usable categories (each needs an integer id)")
    return [categories[k] for k in sorted(categories)]


def _coco_file_name(name: str) -> str | None:
    """The image's path relative to the image folder, normalised, or None if it is not one."""
    if not name or "\x00" in name:
        return None
    try:  # one spelling per file: the name's bytes, decoded the way os functions decode them
        name = name.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")
    except UnicodeError:
        return None
    norm = posixpath.normpath(name)
    if norm in (".", "..") or norm.startswith(("/", "../")):
        return None
    return norm


def list_coco(images: Path, annotations: Path, split: str = "train") -> SourceListing:
    """List the images of a COCO detection annotation file, with their objects.

    Images without annotations are kept (they teach the detector what background is). What is
    wrong with one entry is skipped with a reason in the owner's skipped.json, never a stop:

    - an annotation that is malformed, has a bbox that is not 4 finite numbers or has a
      negative width or height, points at an unknown image or an unknown category: that
      annotation is dropped (the image is still encrypted);
    - a category entry without an integer ``id``: skipped, and so are its annotations. The
      categories are the label space, so if none is usable, or two share an id, the whole file
      is refused with a one-line InputError naming it;
    - an image entry that is malformed, whose ``file_name`` is not a path inside the image
      folder, or whose file is missing: skipped;
    - an image id listed for two or more entries, or one file listed under two or more entries:
      every such entry is skipped (the boxes could belong to either), nothing is merged.
    """
    images, annotations = storage.location(images), storage.location(annotations)  # folders or URLs
    present = None  # a store: the image folder's files from one listing, not a request per image
    if isinstance(images, str):
        try:
            present = set(storage.find_files(images))
        except FileNotFoundError:
            present = set()
        if not present:
            raise InputError(f"{images}: image folder does not exist")
    elif not images.is_dir():
        raise InputError(f"{images}: image folder does not exist")
    try:
        data = json.loads(storage.read_bytes(annotations).decode("utf-8"))
    except FileNotFoundError:
        raise InputError(f"{annotations}: annotation file does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"{annotations}: not a readable COCO JSON file ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise InputError(f"{annotations}: not a COCO detection file (needs images, annotations, categories lists)")
    skipped: list[Skipped] = []
    ann_file = storage.name_of(annotations)
    categories = _coco_categories(data["categories"], annotations, split, skipped)
    known_cats = {c["id"] for c in categories}

    # Image entries first, so every problem below can name the image file it concerns.
    entries: list[tuple[int, str, dict]] = []  # (image id, normalised file name, entry)
    listed_ids: set[int] = set()  # every image id an entry gives, usable or not
    for img in data["images"]:
        image_id = _coco_int(img.get("id")) if isinstance(img, dict) else None
        name = img.get("file_name") if isinstance(img, dict) else None
        if image_id is not None:
            listed_ids.add(image_id)
        if image_id is None or not isinstance(name, str):
            skipped.append(Skipped(split, ann_file, f"malformed image entry {display_path(repr(img))[:60]} "
                                   "(needs an integer id and a file_name)"))
            continue
        norm = _coco_file_name(name)
        if norm is None:
            skipped.append(Skipped(split, name, f"image id {image_id}: file_name is not a path inside the image folder"))
            continue
        entries.append((image_id, norm, img))
    names_of_id: dict[int, list[str]] = {}
    ids_of_name: dict[str, list[int]] = {}
    for image_id, norm, _ in entries:
        names_of_id.setdefault(image_id, []).append(norm)
        ids_of_name.setdefault(norm, []).append(image_id)
    image_names = {i: names[0] for i, names in names_of_id.items() if len(names) == 1}

    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        label = f"annotation id={display_path(str(ann_id))[:40]}"
        if not isinstance(ann, dict):
            skipped.append(Skipped(split, ann_file, "malformed annotation (not a JSON object)", whole_sample=False))
            continue
        fields = {k: _coco_int(ann.get(k, 0 if k == "iscrowd" else None)) for k in ("image_id", "category_id", "iscrowd")}
        bad = [k for k, v in fields.items() if v is None]
        if bad:
            skipped.append(Skipped(split, ann_file, f"malformed {label}: {', '.join(bad)} not an integer",
                                   whole_sample=False))
            continue
        image_id, cat, crowd = fields["image_id"], fields["category_id"], fields["iscrowd"]
        where = image_names.get(image_id, ann_file)
        if cat not in known_cats:
            skipped.append(Skipped(split, ann_file, f"{label} has unknown category {cat}", whole_sample=False))
            continue
        box = _coco_bbox(ann.get("bbox"))
        if isinstance(box, str):
            skipped.append(Skipped(split, where, f"{label} dropped: {box}", whole_sample=False))
            continue
        by_image.setdefault(image_id, []).append({"bbox": box, "category_id": cat, "iscrowd": crowd})

    items: list[SourceItem] = []
    reported: set[tuple[str, str]] = set()

    def skip_image(name: str, reason: str) -> None:
        if (name, reason) not in reported:
            reported.add((name, reason))
            skipped.append(Skipped(split, name, reason))

    for image_id, norm, img in sorted(entries, key=lambda e: (e[1], e[0])):
        shown = display_path(norm)
        if len(names_of_id[image_id]) > 1:
            others = ", ".join(display_path(n) for n in sorted(set(names_of_id[image_id])))
            skip_image(norm, f"image id {image_id} is listed {len(names_of_id[image_id])} times ({others}); "
                             "its boxes cannot be told apart, so no entry of it is used")
            continue
        if len(ids_of_name[norm]) > 1:
            ids = ", ".join(str(i) for i in sorted(ids_of_name[norm]))
            skip_image(norm, f"{shown} is listed {len(ids_of_name[norm])} times (image ids {ids}); "
                             "its boxes would be ambiguous, so no entry of it is used")
            continue
        path = storage.join(images, norm)
        if not (norm in present if present is not None else path.is_file()):
            skip_image(norm, "image listed in annotations is missing")
            continue
        items.append(SourceItem(split, norm, path, None, {
            "image_id": image_id, "width": img.get("width"), "height": img.get("height"),
            "objects": by_image.get(image_id, []),
        }))
    for image_id in sorted(set(by_image) - listed_ids):
        skipped.append(Skipped(split, ann_file, f"annotations reference unknown image id {image_id}",
                               whole_sample=False))
    if not items:
        raise InputError(f"{annotations}: no usable images")
    return SourceListing(items, skipped, [c["name"] for c in categories], task="detection",
                         categories=categories, splits=[split])
