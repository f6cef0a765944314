"""Bad source files never stop an encryption job (issue 12), on real Fashion-MNIST images.

Each test builds a real source (ImageFolder or COCO-format canvases of real items), lists it
with the real listing, runs the real job in-process and checks three things: the job
finishes, every good image is in the shards, and OUT.owner/skipped.json names each bad one
(undecodable name bytes shown as \\xNN) with the right reason.
"""
from __future__ import annotations

import errno
import json
import os
import resource
import signal
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from canvas_coco import write_canvas_coco
from conftest import load_fashion_mnist
from encrypt.ciphers import unshuffle
from encrypt.decrypt import decrypt_release
from encrypt.forget import forget_samples
from encrypt.geometry import resize_center_crop
from encrypt.main import encrypt_dataset
from encrypt.plan import JobSettings
from encrypt.sources import InputError, list_coco, list_imagefolder
from keys.index import load_index
from releases import job_settings, make_keystore, write_imagefolder, keys_of
from shards.errors import describe_os_error
from shards.reader import iter_samples, load_manifest, verify_shards


@pytest.fixture(scope="module")
def keystore(tmp_path_factory):
    return make_keystore(tmp_path_factory)


def _extra_items(count: int, start: int = 100) -> list[np.ndarray]:
    """Real Fashion-MNIST images that write_imagefolder's first items do not use."""
    images, _ = load_fashion_mnist("train", limit=start + count)
    return list(images[start:start + count])


def _save_png_bytes_name(folder: Path, name: bytes, pixels: np.ndarray) -> str:
    """Save a real PNG under a raw byte file name; return its name as os.listdir gives it."""
    path = os.path.join(os.fsencode(folder), name)
    with open(path, "wb") as f:
        Image.fromarray(pixels).save(f, "PNG")
    return os.fsdecode(name)


def _skipped(out: Path) -> tuple[list[dict], str]:
    text = (out.parent / f"{out.name}.owner" / "skipped.json").read_text(encoding="utf-8")
    return json.loads(text), text


def _keys(out: Path, split: str = "train") -> list[str]:
    return [s.key for s in iter_samples(out, split)]


# ---------------------------------------------------------------- undecodable file names

@pytest.fixture(scope="module")
def undecodable(tmp_path_factory, keystore):
    """A release of 30 items plus one valid image named with byte \\xff and two bad \\xNN files."""
    base = tmp_path_factory.mktemp("undecodable")
    root = base / "src"
    files = write_imagefolder(root, {"train": 30})
    cls = sorted(p.name for p in (root / "train").iterdir())[0]
    folder = root / "train" / cls
    good_pixels = _extra_items(1)[0]
    good = f"train/{cls}/" + _save_png_bytes_name(folder, b"bad\xff.png", good_pixels)
    (folder / os.fsdecode(b"junk\xfe.png")).write_text("not an image at all")
    (folder / os.fsdecode(b"notes\xfd.txt")).write_text("a stray file")
    out = base / "release"
    summary = encrypt_dataset(list_imagefolder(root), out, keystore, "fm-undecodable", job_settings(),
                              progress=False)
    return {"root": root, "files": files, "cls": cls, "good": good, "good_pixels": good_pixels,
            "out": out, "summary": summary, "base": base}


def test_a_file_name_that_is_not_utf8_is_encrypted_like_any_other(undecodable, keystore):
    u = undecodable
    assert u["summary"].images_written == 31
    dk = keys_of(keystore, u["out"])
    wanted = {dk.sample_id(rel) for rel in u["files"]} | {dk.sample_id(u["good"])}
    assert sorted(_keys(u["out"])) == sorted(wanted)
    manifest = load_manifest(u["out"], public_key=keystore.public_key)
    assert verify_shards(u["out"], manifest) == []
    # The sample is the real image under the key's permutation, like every other sample.
    key = dk.sample_id(u["good"])
    sample = next(s for s in iter_samples(u["out"], "train") if s.key == key)
    plain = resize_center_crop(u["good_pixels"][..., None], 32, 32)
    assert unshuffle(sample.image, dk.permutation(64, "train", key), 4).tobytes() == plain.tobytes()
    # Its id is the HMAC of the file name's bytes; valid UTF-8 names keep the ids they always had.
    assert key != dk.sample_id(f"train/{u['cls']}/bad\\xff.png")
    # The owner's sealed index keeps the name itself (its bytes), for decrypt and forget.
    index = load_index(keystore, "fm-undecodable")
    assert index[key]["rel_path"] == u["good"]


def test_bad_files_with_undecodable_names_are_named_escaped_in_skipped_json(undecodable):
    u = undecodable
    report, text = _skipped(u["out"])
    reasons = {r["rel_path"]: r["reason"] for r in report}
    cls = u["cls"]
    assert reasons == {f"train/{cls}/junk\\xfe.png": "not a recognised image format",
                       f"train/{cls}/notes\\xfd.txt": "not an image file (extension)"}
    assert "\\udc" not in text  # shown as \xNN bytes, not as Python's surrogate escapes
    text.encode("utf-8")  # and the report is plain UTF-8


def test_decrypt_and_forget_find_the_undecodable_file_by_its_own_name(undecodable, keystore, tmp_path):
    u = undecodable
    release = tmp_path / "release"
    shutil.copytree(u["out"], release)
    dest = tmp_path / "plain"
    summary = decrypt_release(release, dest, keystore, progress=False)
    assert summary.samples == 31 and summary.named_by == "path"
    # decrypt writes the file under its original bytes, next to its class mates
    names = os.listdir(os.fsencode(dest / "train" / u["cls"]))
    assert b"bad\xff.png" in names
    back = np.asarray(Image.open(dest / u["good"]))
    assert back.tobytes() == resize_center_crop(u["good_pixels"][..., None], 32, 32)[..., 0].tobytes()

    # forget --path gets the name as the shell passes it: on Linux, argv bytes decode the same way
    dk = keys_of(keystore, release)
    gone = forget_samples(release, keystore, [u["good"]], progress=False)
    assert gone.removed == 1 and gone.already_absent == 0
    assert dk.sample_id(u["good"]) not in _keys(release)
    assert len(_keys(release)) == 30


def test_a_skipped_undecodable_file_is_not_in_the_sealed_index(undecodable, keystore):
    index = load_index(keystore, "fm-undecodable")
    assert set(index) == set(_keys(undecodable["out"]))


def test_an_undecodable_class_folder_name_is_shown_escaped_in_the_manifest(tmp_path, keystore):
    root = tmp_path / "src"
    write_imagefolder(root, {"train": 20})
    odd = Path(os.fsdecode(os.path.join(os.fsencode(root / "train"), b"caf\xe9")))
    odd.mkdir()
    for i, pixels in enumerate(_extra_items(3)):
        Image.fromarray(pixels).save(odd / f"item-{i}.png")
    out = tmp_path / "release"
    summary = encrypt_dataset(list_imagefolder(root), out, keystore, "fm-odd-class", job_settings(), progress=False)
    assert summary.images_written == 23
    manifest = load_manifest(out, public_key=keystore.public_key)
    assert "caf\\xe9" in manifest.class_names
    odd_label = manifest.class_names.index("caf\\xe9")
    assert sum(s.label == odd_label for s in iter_samples(out, "train")) == 3
    (out / "manifest.json").read_bytes().decode("utf-8")
    assert b"\\udc" not in (out / "manifest.json").read_bytes()


# ---------------------------------------------------------------- unreadable folders

def test_an_unreadable_folder_is_reported_not_silently_left_out(tmp_path, keystore, monkeypatch):
    root = tmp_path / "src"
    files = write_imagefolder(root, {"train": 30})
    classes = sorted(p.name for p in (root / "train").iterdir())
    locked = root / "train" / classes[0] / "locked"
    locked.mkdir()
    for i, pixels in enumerate(_extra_items(2)):
        Image.fromarray(pixels).save(locked / f"hidden-{i}.png")
    locked_class = root / "train" / "locked-class"
    locked_class.mkdir()
    Image.fromarray(_extra_items(1, start=110)[0]).save(locked_class / "x.png")
    os.symlink(root / "train" / classes[1], root / "train" / classes[0] / "linked")

    # Tests run as root, where chmod 000 does not stop reading: the folder is real, only the
    # listing of these two folders fails the way it does for any other user.
    real_scandir = os.scandir
    blocked = {str(locked), str(locked_class)}

    def scandir(path="."):
        if os.fspath(path) in blocked:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    listing = list_imagefolder(root)
    monkeypatch.undo()

    out = tmp_path / "release"
    summary = encrypt_dataset(listing, out, keystore, "fm-locked", job_settings(), progress=False)
    assert summary.images_written == 30
    dk = keys_of(keystore, out)
    assert sorted(_keys(out)) == sorted(dk.sample_id(rel) for rel in files)
    report, _ = _skipped(out)
    reasons = {r["rel_path"]: r["reason"] for r in report}
    assert reasons == {
        f"train/{classes[0]}/locked/": "unreadable folder (Permission denied); nothing in it was listed",
        "train/locked-class/": "unreadable folder (Permission denied); nothing in it was listed",
        f"train/{classes[0]}/linked/": "symbolic link to a folder (not followed)",
    }  # and no "empty class folder" for the class that could not be read


def test_an_unreadable_split_folder_is_one_line_input_error(tmp_path, monkeypatch):
    root = tmp_path / "src"
    write_imagefolder(root, {"train": 10, "val": 10})
    real_listdir = os.listdir

    def listdir(path="."):
        if os.fspath(path) == str(root / "val"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    with pytest.raises(InputError) as caught:
        list_imagefolder(root)
    assert str(caught.value) == f"{root / 'val'}: cannot list the folder (Permission denied)"


# ---------------------------------------------------------------- COCO

def coco_settings() -> JobSettings:
    return JobSettings(mode="mix", patch=8, sub_patch=4, size=64, resize=64, views=1, format="png",
                       quality=95, channels=1, shard_samples=8, task="detection", min_side=1)


@pytest.fixture()
def canvas(tmp_path, fmnist_small):
    images, labels = fmnist_small
    image_dir, ann_path = write_canvas_coco(tmp_path / "coco", images, labels, images=12, canvas=96)
    return image_dir, ann_path, json.loads(ann_path.read_text())


def test_bad_coco_entries_are_skipped_with_reasons(tmp_path, keystore, canvas):
    image_dir, ann_path, coco = canvas
    truth = {}
    for a in coco["annotations"]:
        truth.setdefault(a["image_id"], []).append(a)
    name = {img["id"]: img["file_name"] for img in coco["images"]}
    bad_anns = [
        (1, ["nan", 2, 10, 10], "bbox is not finite (NaN or infinity)"),
        (1, [2, 2, float("inf"), 10], "bbox is not finite (NaN or infinity)"),
        (2, [float("nan")] * 4, "bbox is not finite (NaN or infinity)"),
        (3, [2, 2, -10, 10], "bbox has a negative width or height"),
        (4, "1234", "bbox is not a list of 4 numbers"),
    ]
    for i, (image_id, box, _) in enumerate(bad_anns):
        coco["annotations"].append({"id": 9000 + i, "image_id": image_id, "category_id": 1, "bbox": box,
                                    "area": 1, "iscrowd": 0})
    coco["annotations"].append({"id": 9100, "image_id": float("inf"), "category_id": 1, "bbox": [1, 1, 5, 5]})
    coco["annotations"].append("not an annotation")
    coco["annotations"].append({"id": 9101, "image_id": 779, "category_id": 1, "bbox": [1, 1, 5, 5]})
    coco["categories"].append({"name": "ghost"})  # no id
    # image id 5 listed for a second file: whose boxes are they?
    shutil.copy(image_dir / name[5], image_dir / "copy-of-5.png")
    coco["images"].append({"id": 5, "file_name": "copy-of-5.png", "width": 96, "height": 96})
    # one file listed under two ids, and one under a second spelling of its name
    coco["images"].append({"id": 777, "file_name": name[7], "width": 96, "height": 96})
    coco["images"].append({"id": 778, "file_name": "./" + name[8], "width": 96, "height": 96})
    coco["images"].append({"id": 779, "file_name": "../instances.json"})
    coco["images"].append({"id": 780, "file_name": "/etc/hostname"})
    coco["images"].append(42)
    ann_path.write_text(json.dumps(coco))  # NaN and Infinity as Python's json writes them

    listing = list_coco(image_dir, ann_path)
    out = tmp_path / "release"
    summary = encrypt_dataset(listing, out, keystore, "canvas-bad", coco_settings(), progress=False)

    kept_ids = [i for i in range(1, 13) if i not in (5, 7, 8)]
    assert summary.images_written == len(kept_ids)
    manifest = load_manifest(out, public_key=keystore.public_key)
    assert [c["id"] for c in manifest.categories] == list(range(1, 11))  # "ghost" dropped
    assert verify_shards(out, manifest) == []
    dk = keys_of(keystore, out)
    by_key = {dk.sample_id(name[i]): i for i in kept_ids}
    samples = list(iter_samples(out, "train"))
    assert sorted(by_key[s.key] for s in samples) == kept_ids
    for s in samples:  # the good boxes of every image are all there, the bad ones are not
        image_id = by_key[s.key]
        assert s.meta["category_ids"] == [a["category_id"] for a in truth.get(image_id, [])]
        assert all(np.isfinite(v) for box in s.meta["boxes"] for v in box)

    report, _ = _skipped(out)
    got = sorted((r["rel_path"], r["reason"], r["whole_sample"]) for r in report)
    expected = [(name[image_id], f"annotation id={9000 + i} dropped: {reason}", False)
                for i, (image_id, _, reason) in enumerate(bad_anns)]
    expected += [
        ("instances.json", "malformed annotation id=9100: image_id not an integer", False),
        ("instances.json", "malformed annotation (not a JSON object)", False),
        ("instances.json", "malformed category entry {'name': 'ghost'} (needs an integer id); "
                           "annotations of it are dropped", False),
        ("instances.json", "malformed image entry 42 (needs an integer id and a file_name)", True),
        ("../instances.json", "image id 779: file_name is not a path inside the image folder", True),
        ("/etc/hostname", "image id 780: file_name is not a path inside the image folder", True),
        (name[5], f"image id 5 is listed 2 times ({name[5]}, copy-of-5.png); its boxes cannot be told "
                  "apart, so no entry of it is used", True),
        ("copy-of-5.png", f"image id 5 is listed 2 times ({name[5]}, copy-of-5.png); its boxes cannot be "
                          "told apart, so no entry of it is used", True),
        (name[7], f"{name[7]} is listed 2 times (image ids 7, 777); its boxes would be ambiguous, "
                  "so no entry of it is used", True),
        (name[8], f"{name[8]} is listed 2 times (image ids 8, 778); its boxes would be ambiguous, "
                  "so no entry of it is used", True),
    ]
    assert got == sorted(expected)


@pytest.mark.parametrize("categories, reason", [
    ([{"name": "a"}, {"id": "x", "name": "b"}], "no usable categories (each needs an integer id)"),
    ([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}], "category id 1 is listed twice; labels would be ambiguous"),
])
def test_unusable_coco_categories_are_one_line_input_error(canvas, categories, reason):
    image_dir, ann_path, coco = canvas
    coco["categories"] = categories
    ann_path.write_text(json.dumps(coco))
    with pytest.raises(InputError) as caught:
        list_coco(image_dir, ann_path)
    assert str(caught.value) == f"{ann_path}: {reason}"


# ---------------------------------------------------------------- disk errors while writing

def test_a_disk_error_while_writing_a_shard_names_the_shard(tmp_path, keystore):
    root = tmp_path / "src"
    write_imagefolder(root, {"train": 20})
    listing = list_imagefolder(root)
    out = tmp_path / "release"
    # A real EFBIG: the kernel refuses to grow any file of this process past 8 KiB
    # (SIGXFSZ ignored, so write() fails with "File too large" instead of killing pytest).
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, hard))
    try:
        with pytest.raises(OSError) as caught:
            encrypt_dataset(listing, out, keystore, "fm-efbig", job_settings(), progress=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    exc = caught.value
    assert exc.errno == errno.EFBIG
    assert exc.filename == str(out / "train-000000.tar")
    assert describe_os_error(exc) == f"{out / 'train-000000.tar'}: File too large"
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no half-written shard left
    assert not (out / "manifest.json").exists()
