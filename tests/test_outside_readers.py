"""Readers outside patchveil read a real release as docs/ml-engineer.md shows.

One release of the shipped sample (2000 train + 500 val, 32 px, 250 per shard). Each test is
one reader: plain webdataset with brace URLs, timm's `wds/` dataset (needs the signed
`_info.json`), Ray Data with the manifest's shard list (`OUT` itself holds manifest.json,
which Ray would open as a tar), Hugging Face `datasets`' webdataset builder.
"""
from __future__ import annotations

import dataclasses
import json

import pytest

from audit.verify import verify_release
from keys.custody import read_identity
from releases import make_keystore, make_release
from shards.info import INFO_NAME, release_info
from shards.manifest import Manifest
from shards.reader import verify_shards

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keystore(tmp_path_factory):
    return make_keystore(tmp_path_factory)


@pytest.fixture(scope="module")
def release(tmp_path_factory, keystore):
    out = tmp_path_factory.mktemp("readers") / "release"
    return out, make_release(out, keystore)


def _shards(out, manifest, split):
    return [str(p) for p in manifest.shard_paths(out, split)]


def test_the_job_writes_a_signed_info_json_that_verify_accepts(release, keystore, tmp_path):
    """Today there is no _info.json, and a hand-made one is a stray file for verify."""
    out, manifest = release
    info = json.loads((out / INFO_NAME).read_text())
    assert info == release_info(manifest) and manifest.info_sha256
    assert info["splits"]["train"]["num_samples"] == 2000 and len(info["splits"]["train"]["filenames"]) == 8
    assert info["class_names"] == manifest.class_names
    assert verify_shards(out, manifest) == []
    identity = tmp_path / "identity.json"
    identity.write_text(json.dumps(keystore.public_identity()))
    report = verify_release(out, read_identity(identity), custody_log=keystore.directory / "custody.log")
    assert report.ok, report.to_dict()


def test_an_edited_info_json_fails_verify(release, keystore, tmp_path):
    out, manifest = release
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in out.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    info = json.loads((copy / INFO_NAME).read_text())
    info["splits"]["train"]["num_samples"] = 1
    (copy / INFO_NAME).write_text(json.dumps(info))
    assert any(p.startswith(f"{INFO_NAME}: sha256") for p in verify_shards(copy, manifest))
    identity = tmp_path / "identity.json"
    identity.write_text(json.dumps(keystore.public_identity()))
    report = verify_release(copy, read_identity(identity))
    assert "shard-files" in report.failed


def test_a_format_1_manifest_still_loads_and_verifies(release, keystore):
    """Old releases: no info_sha256 key at all, so their signed bytes are unchanged."""
    _, manifest = release
    old = dataclasses.replace(manifest, format_version=1, info_sha256=None, public_key=None, signature=None)
    signed = old.signed(keystore.sign, keystore.public_key)
    assert "info_sha256" not in signed.to_dict()
    Manifest.from_dict(json.loads(json.dumps(signed.to_dict()))).verify()


def test_plain_webdataset_with_brace_urls(release):
    import webdataset as wds

    out, manifest = release
    urls = f"{out}/train-{{000000..000007}}.tar"
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("png", "cls"))
    assert len(samples) == manifest.samples("train") == 2000
    assert samples[0][0].size == (32, 32) and 0 <= samples[0][1] < 10


def test_timm_wds_dataset_finds_the_split_by_name(release):
    """Today: `split train not found in info` (timm needs _info.json)."""
    from timm.data import create_dataset

    out, manifest = release
    ds = create_dataset("wds/fm", root=str(out), split="val", is_training=False, input_img_mode="L")
    items = list(ds)
    assert len(items) == manifest.samples("val") == 500
    assert items[0][0].size == (32, 32) and isinstance(items[0][1], int)
    train = create_dataset("wds/fm", root=str(out), split="train", is_training=True, batch_size=1)
    assert len(train) == 2000


def test_ray_data_reads_the_manifest_shard_list(release):
    """Reading OUT itself fails (`invalid header`: Ray opens manifest.json); the shard list works."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("pyarrow")
    out, manifest = release
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        rows = ray.data.read_webdataset(_shards(out, manifest, "val")).take_all()
        assert len(rows) == 500 and {"png", "cls"} <= set(rows[0])
        globbed = ray.data.read_webdataset(sorted(str(p) for p in out.glob("val-*.tar"))).count()
        assert globbed == 500
    finally:
        ray.shutdown()


def test_hugging_face_datasets_webdataset_builder(release, tmp_path):
    datasets = pytest.importorskip("datasets")
    out, manifest = release
    ds = datasets.load_dataset("webdataset", data_files={"val": _shards(out, manifest, "val")}, split="val",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert len(ds) == 500
    first = ds[0]
    assert first["png"].size == (32, 32)
    assert manifest.class_names[int(first["cls"])] in manifest.class_names  # names come from the manifest
