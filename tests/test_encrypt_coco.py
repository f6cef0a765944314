"""encrypt-dataset coco on a real COCO-format set built from Fashion-MNIST items."""
from __future__ import annotations

import json

import numpy as np
import pytest

from canvas_coco import write_canvas_coco
from encrypt.main import encrypt_dataset
from encrypt.plan import JobSettings
from encrypt.sources import InputError, list_coco
from keys.keystore import create_keystore
from shards.reader import iter_samples, load_manifest, verify_shards
from releases import keys_of


@pytest.fixture(scope="module")
def keystore(tmp_path_factory):
    return create_keystore(tmp_path_factory.mktemp("ks") / "keystore", b"coco test passphrase 91")


def coco_settings() -> JobSettings:
    return JobSettings(mode="mix", patch=8, sub_patch=4, size=64, resize=64, views=1, format="png",
                       quality=95, channels=1, shard_samples=8, task="detection", min_side=1)


def test_boxes_follow_the_objects_into_the_mixed_image(tmp_path, keystore, fmnist_small):
    images, labels = fmnist_small
    image_dir, ann_path = write_canvas_coco(tmp_path / "coco", images, labels, images=12, canvas=96)
    coco = json.loads(ann_path.read_text())
    coco["images"].append({"id": 999, "file_name": "gone.png", "width": 96, "height": 96})
    coco["annotations"].append({"id": 5000, "image_id": 1, "category_id": 3, "bbox": [400, 400, 20, 20],
                                "area": 400, "iscrowd": 0})
    coco["annotations"].append({"id": 5001, "image_id": 4242, "category_id": 3, "bbox": [1, 1, 5, 5],
                                "area": 25, "iscrowd": 0})
    ann_path.write_text(json.dumps(coco))

    out = tmp_path / "release"
    listing = list_coco(image_dir, ann_path)
    summary = encrypt_dataset(listing, out, keystore, "canvas", coco_settings(), progress=False)
    assert summary.images_written == 12
    assert summary.skipped == {"image listed in annotations is missing": 1,
                               "annotations reference unknown image id 4242": 1,
                               "annotation dropped: box outside the image or under one pixel": 1}
    manifest = load_manifest(out, public_key=keystore.public_key)
    assert manifest.task == "detection" and manifest.cipher.stored_size == (32, 32)
    assert [c["id"] for c in manifest.categories] == list(range(1, 11))
    assert verify_shards(out, manifest) == []

    dk = keys_of(keystore, out)
    by_key = {dk.sample_id(img["file_name"]): img for img in coco["images"]}
    anns = {}
    for a in coco["annotations"]:
        if a["id"] < 5000:
            anns.setdefault(a["image_id"], []).append(a)
    checked = 0
    for sample in iter_samples(out, "train"):
        info = by_key[sample.key]
        scale = 64 / max(info["width"], info["height"]) * (4 / 8)  # letterbox, then mix keeps s/p
        meta = sample.meta
        assert meta["image_size"] == [32, 32]
        truth = anns.get(info["id"], [])
        assert meta["category_ids"] == [a["category_id"] for a in truth]
        for box, a in zip(meta["boxes"], truth):
            assert box == pytest.approx([v * scale for v in a["bbox"]], abs=1e-3)
            x, y, w, h = box
            img = sample.image[..., 0].astype(float)
            inner = img[int(np.ceil(y)):int(y + h), int(np.ceil(x)):int(x + w)]
            assert inner.mean() > img.mean()  # the object is where its box says
            checked += 1
    assert checked >= 12


def test_coco_json_problems_are_one_line_input_errors(tmp_path):
    (tmp_path / "imgs").mkdir()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json: not a readable COCO JSON"):
        list_coco(tmp_path / "imgs", bad)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(InputError, match="not a COCO detection file"):
        list_coco(tmp_path / "imgs", bad)
    with pytest.raises(InputError, match="annotation file does not exist"):
        list_coco(tmp_path / "imgs", tmp_path / "missing.json")
