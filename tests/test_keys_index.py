"""The owner's sealed index: written by the real job, opens only with its dataset key, names nothing."""
from __future__ import annotations

import base64
import json
import shutil
import stat
from pathlib import Path

import pytest

from conftest import FMNIST_CLASSES
from encrypt.main import encrypt_dataset
from encrypt.sources import list_imagefolder
from keys.errors import KeystoreError
from keys.index import index_path, load_index, save_index
from keys.keystore import create_keystore, open_keystore
from shards.reader import iter_samples, load_manifest
from releases import job_settings as settings, write_imagefolder, keys_of

PASSPHRASE = b"Ibis-Tapir-5512-index-tests"
DATASET = "fm-index"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A real shuffle release of Fashion-MNIST (one file too broken to encrypt, one keyed-view job)."""
    base = tmp_path_factory.mktemp("index")
    root = base / "src"
    files = write_imagefolder(root, {"train": 24, "val": 8})
    (root / "train" / "bag" / "zero-bytes.png").touch()  # skipped by the job: must not be indexed
    store = create_keystore(base / "keystore", PASSPHRASE)
    out = base / "release"
    encrypt_dataset(list_imagefolder(root), out, store, DATASET, settings(), progress=False)
    return store, out, files


@pytest.fixture()
def store_copy(tmp_path, release):
    store, _, _ = release
    shutil.copytree(store.directory, tmp_path / "keystore")
    return open_keystore(tmp_path / "keystore", PASSPHRASE)


def test_the_job_indexes_every_written_sample_and_only_those(release):
    store, out, files = release
    index = load_index(store, DATASET)
    key = keys_of(store, out)
    written = {split: {s.key for s in iter_samples(out, split)} for split in ("train", "val")}
    assert set(index) == written["train"] | written["val"]
    assert len(index) == len(files) == 32
    for sample_id, entry in index.items():
        assert entry["split"] in written and sample_id in written[entry["split"]]
        assert entry["rel_path"] in files and entry["rel_path"].startswith(entry["split"] + "/")
        assert key.sample_id(entry["rel_path"]) == sample_id
        assert entry["view"] == -1
    assert not any(e["rel_path"].endswith("zero-bytes.png") for e in index.values())


def test_index_file_is_private_sealed_and_names_nothing(release):
    store, out, files = release
    path = index_path(store, load_manifest(out).dataset_key_id)
    assert path.parent == store.directory
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes()
    needles = [Path(rel).stem for rel in files] + FMNIST_CLASSES + ["train/", "rel_path"]
    assert not [n for n in needles if n.encode() in raw]
    assert sorted(json.loads(raw)) == ["dataset_id", "format", "key_id", "nonce", "sealed"]
    assert not [p for p in store.directory.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("field", ["sealed", "nonce", "dataset_id"])
def test_an_edited_index_is_refused_naming_the_file(store_copy, field):
    path = index_path(store_copy, store_copy.dataset_key(DATASET).dataset_key_id)
    data = json.loads(path.read_bytes())
    if field == "dataset_id":
        data[field] = "someone-else"
    else:
        raw = bytearray(base64.b64decode(data[field]))
        raw[len(raw) // 2] ^= 0x01
        data[field] = base64.b64encode(bytes(raw)).decode()
    path.write_text(json.dumps(data))
    with pytest.raises(KeystoreError) as info:
        load_index(store_copy, DATASET)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_another_datasets_key_cannot_open_it(store_copy):
    source = index_path(store_copy, store_copy.dataset_key(DATASET).dataset_key_id)
    other = store_copy.dataset_key("fm-other")
    shutil.copyfile(source, index_path(store_copy, other.dataset_key_id))
    with pytest.raises(KeystoreError, match="belongs to dataset 'fm-index'"):
        load_index(store_copy, "fm-other")


def test_truncated_index_is_refused(store_copy):
    path = index_path(store_copy, store_copy.dataset_key(DATASET).dataset_key_id)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(KeystoreError, match="not valid JSON"):
        load_index(store_copy, DATASET)


def test_save_adds_to_the_index_and_refuses_a_conflict_changing_nothing(store_copy):
    path = index_path(store_copy, store_copy.dataset_key(DATASET).dataset_key_id)
    index = load_index(store_copy, DATASET)
    extra_id = store_copy.dataset_key(DATASET).sample_id("train/coat/added-later.png")
    save_index(store_copy, DATASET, {extra_id: {"split": "train", "rel_path": "train/coat/added-later.png",
                                                "view": -1}})
    merged = load_index(store_copy, DATASET)
    assert merged == {**index, extra_id: merged[extra_id]} and len(merged) == len(index) + 1

    before = path.read_bytes()
    some_id = next(iter(index))
    with pytest.raises(KeystoreError, match="already indexed with another path"):
        save_index(store_copy, DATASET, {some_id: {"split": "val", "rel_path": "val/bag/other.png", "view": -1}})
    with pytest.raises(KeystoreError, match="needs split, rel_path and view"):
        save_index(store_copy, DATASET, {extra_id: {"split": "train", "rel_path": "x.png"}})
    with pytest.raises(KeystoreError, match="not an opaque sample id"):
        save_index(store_copy, DATASET, {"train/coat/x.png": {"split": "train", "rel_path": "x.png", "view": -1}})
    assert path.read_bytes() == before
    assert not [p for p in store_copy.directory.iterdir() if p.name.endswith(".tmp")]


def test_a_missing_index_is_named(store_copy):
    with pytest.raises(KeystoreError, match="no sealed index for dataset 'never-encrypted'") as info:
        load_index(store_copy, "never-encrypted")
    assert "index-pv-" in str(info.value)
