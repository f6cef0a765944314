"""Shards written with ShardWriter read back exactly, reproducibly, and fail loudly when damaged.

Real data throughout: Fashion-MNIST images stored as PNG, scikit-image photos stored as JPEG.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from PIL import Image

from shards.manifest import CipherSpec, Manifest, ManifestError, utc_timestamp
from shards.reader import (
    ShardError,
    count_samples,
    iter_samples,
    load_manifest,
    sha256_file,
    verify_shards,
    webdataset_pipeline,
)
from shards.writer import ShardWriter, shard_name

REPO = Path(__file__).resolve().parents[1]
PER_SHARD = 30


def opaque_key(i: int) -> str:
    return hashlib.sha256(b"sample %d" % i).hexdigest()[:16]


def encode(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(image).save(buf, "JPEG", quality=90)
    else:
        Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def raw_public(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def write_release(out: Path, splits: dict[str, list[tuple]], cipher: CipherSpec, key: Ed25519PrivateKey,
                  task: str = "classification", num_classes: int = 10) -> Manifest:
    """Write (key, image bytes, ext, cls, meta) samples PER_SHARD to a shard, then a signed manifest."""
    entries = {}
    for split, samples in splits.items():
        entries[split] = []
        for index, start in enumerate(range(0, len(samples), PER_SHARD)):
            with ShardWriter(out, split, index) as writer:
                for sample_key, data, ext, cls, meta in samples[start:start + PER_SHARD]:
                    writer.write(sample_key, data, ext, cls=cls, meta=meta)
            entries[split].append(writer.close())
    manifest = Manifest(task=task, dataset_id="test-release", cipher=cipher, splits=entries,
                        num_classes=num_classes, class_names=None, categories=None, key_id="k0123456789",
                        tool_version="0.1.0", created=utc_timestamp())
    manifest = manifest.signed(key.sign, raw_public(key))
    manifest.save(out / "manifest.json")
    return manifest


FMNIST_CIPHER = CipherSpec(mode="none", patch=4, sub_patch=None, image_size=(28, 28), stored_size=(28, 28),
                           format="png", quality=None, channels=1)
PHOTO_CIPHER = CipherSpec(mode="none", patch=16, sub_patch=None, image_size=(224, 224),
                          stored_size=(224, 224), format="jpeg", quality=90, channels=3)


@pytest.fixture(scope="module")
def owner_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def fmnist_samples(fmnist_small) -> dict[str, list[tuple]]:
    """120 train + 30 val real Fashion-MNIST samples, PNG-encoded."""
    images, labels = fmnist_small
    make = lambda rows: [(opaque_key(i), encode(images[i], "png"), "png", int(labels[i]), None) for i in rows]
    return {"train": make(range(120)), "val": make(range(120, 150))}


@pytest.fixture()
def fmnist_release(tmp_path, fmnist_samples, owner_key) -> tuple[Path, Manifest]:
    out = tmp_path / "out"
    out.mkdir()
    return out, write_release(out, fmnist_samples, FMNIST_CIPHER, owner_key)


@pytest.fixture(scope="module")
def photo_samples(photos) -> list[tuple]:
    """The five real photos as JPEG, with detection-style json (boxes in stored pixels)."""
    samples = []
    for i, (name, image) in enumerate(sorted(photos.items())):
        meta = {"boxes": [[10.5, 20.0, 100.0, 80.25]], "category_ids": [i + 1], "size": [224, 224]}
        samples.append((opaque_key(1000 + i), encode(image, "jpeg"), "jpg", None, meta))
    return samples


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


# -- round trips -----------------------------------------------------------------------------

def test_fashion_mnist_pngs_read_back_pixel_exact(fmnist_release, fmnist_small):
    out, manifest = fmnist_release
    images, labels = fmnist_small
    assert [e.samples for e in manifest.splits["train"]] == [30, 30, 30, 30]
    got = list(iter_samples(out, "train"))
    assert [s.key for s in got] == [opaque_key(i) for i in range(120)]
    assert np.array_equal(np.stack([s.image for s in got]), images[:120, :, :, None])
    assert [s.label for s in got] == labels[:120].tolist()
    assert all(s.meta is None and s.image.dtype == np.uint8 for s in got)
    val = list(iter_samples(out, "val", manifest))
    assert np.array_equal(np.stack([s.image[..., 0] for s in val]), images[120:150])


def test_photos_as_jpeg_keep_their_bytes_and_meta(tmp_path, photo_samples, photos, owner_key):
    manifest = write_release(tmp_path, {"val": photo_samples}, PHOTO_CIPHER, owner_key,
                             task="detection", num_classes=5)
    with tarfile.open(tmp_path / "val-000000.tar") as tar:
        stored = {m.name: tar.extractfile(m).read() for m in tar}
    for key, data, _, _, meta in photo_samples:
        assert stored[f"{key}.jpg"] == data
        assert json.loads(stored[f"{key}.json"]) == meta
        assert f"{key}.cls" not in stored
    got = list(iter_samples(tmp_path, "val", manifest))
    originals = [photos[name] for name in sorted(photos)]
    for sample, (key, data, _, _, meta), original in zip(got, photo_samples, originals):
        assert sample.key == key and sample.label is None and sample.meta == meta
        assert np.array_equal(sample.image, np.asarray(Image.open(io.BytesIO(data))))
        mse = np.mean((sample.image.astype(float) - original.astype(float)) ** 2)
        assert 10 * np.log10(255 ** 2 / mse) > 30, "the stored photo is not the photo that was written"


def test_close_reports_what_is_on_disk(fmnist_release):
    out, manifest = fmnist_release
    for entry in manifest.splits["train"] + manifest.splits["val"]:
        path = out / entry.name
        assert entry.sha256 == sha256_file(path)
        assert entry.bytes == path.stat().st_size
        assert entry.samples == count_samples(path)
    assert verify_shards(out, manifest) == []


# -- reproducible bytes ----------------------------------------------------------------------

def test_the_same_samples_give_identical_shards(tmp_path, fmnist_samples, photo_samples):
    digests = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        with ShardWriter(tmp_path / run, "train", 3) as writer:
            for key, data, ext, cls, meta in fmnist_samples["train"][:20] + photo_samples:
                writer.write(key, data, ext, cls=cls, meta=meta)
        digests.append(writer.close().sha256)
    assert digests[0] == digests[1]
    first, second = (tmp_path / run / "train-000003.tar" for run in ("a", "b"))
    assert first.read_bytes() == second.read_bytes()


def test_shards_are_byte_for_byte_what_tarfile_writes(tmp_path, fmnist_samples, photo_samples):
    """The writer builds its own USTAR headers; the stdlib's tarfile, given the same members and
    fixed fields, must produce the very same file (so earlier releases keep their digests)."""
    samples = fmnist_samples["train"][:20] + photo_samples
    with ShardWriter(tmp_path, "train", 0) as writer:
        for key, data, ext, cls, meta in samples:
            writer.write(key, data, ext, cls=cls, meta=meta)
    reference = io.BytesIO()
    with tarfile.open(fileobj=reference, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for key, data, ext, cls, meta in samples:
            members = {ext: data}
            if cls is not None:
                members["cls"] = str(cls).encode()
            if meta is not None:
                members["json"] = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
            for member_ext in sorted(members):
                info = tarfile.TarInfo(f"{key}.{member_ext}")
                info.size, info.mtime, info.mode = len(members[member_ext]), 0, 0o444
                info.uname = info.gname = "patchveil"
                tar.addfile(info, io.BytesIO(members[member_ext]))
    written = (tmp_path / "train-000000.tar").read_bytes()
    assert len(written) % tarfile.RECORDSIZE == 0
    assert written == reference.getvalue()
    assert writer.close().sha256 == hashlib.sha256(written).hexdigest()


def test_tar_headers_carry_nothing_but_the_opaque_names(fmnist_release):
    out, _ = fmnist_release
    with tarfile.open(out / "train-000001.tar") as tar:
        members = tar.getmembers()
        assert tar.pax_headers == {}
    assert len(members) == 60
    for m in members:
        key, ext = m.name.split(".")
        assert ext in ("png", "cls") and len(key) == 16
        assert (m.mtime, m.uid, m.gid, m.mode) == (0, 0, 0, 0o444)
        assert (m.uname, m.gname) == ("patchveil", "patchveil")
        assert m.pax_headers == {} and m.isfile()
    raw = (out / "train-000001.tar").read_bytes()
    assert raw[257:263] == b"ustar\x00", "not a USTAR header"


# -- webdataset pipeline ---------------------------------------------------------------------

def test_pipeline_yields_what_iter_samples_yields(fmnist_release):
    out, manifest = fmnist_release
    expected = list(iter_samples(out, "train", manifest))
    got = list(webdataset_pipeline(out, "train", nodesplitter=None, workersplitter=None))
    assert len(got) == len(expected) == 120
    for (image, label, meta), sample in zip(got, expected):
        assert np.array_equal(image, sample.image) and label == sample.label and meta is None
    chosen = {expected[3].key, expected[77].key}
    picked = list(iter_samples(out, "train", manifest, only=chosen))
    assert [p.key for p in picked] == [expected[3].key, expected[77].key]
    assert np.array_equal(picked[1].image, expected[77].image)


def test_pipeline_shuffles_shards_and_samples_but_keeps_every_sample(fmnist_release, fmnist_samples):
    out, _ = fmnist_release
    stored = [data for _, data, _, _, _ in fmnist_samples["train"]]
    got = [data for data, _, _ in webdataset_pipeline(out, "train", shuffle=40, seed=7, decode=False)]
    assert sorted(got) == sorted(stored)
    assert got != stored


def test_pipeline_without_decoding_gives_the_stored_bytes_and_labels(fmnist_release, fmnist_samples):
    out, _ = fmnist_release
    got = list(webdataset_pipeline(out, "val", decode=False))
    assert [(data, label) for data, label, _ in got] == [(d, c) for _, d, _, c, _ in fmnist_samples["val"]]


def test_resampled_pipeline_has_the_epoch_length_asked_for(fmnist_release, fmnist_samples):
    out, _ = fmnist_release
    stored = {data for _, data, _, _, _ in fmnist_samples["train"]}
    epoch = list(webdataset_pipeline(out, "train", resampled=True, epoch_length=75, shuffle=10, decode=False))
    assert len(epoch) == 75
    assert {data for data, _, _ in epoch} <= stored


def test_nodes_and_workers_get_disjoint_shards_covering_the_split(fmnist_release, monkeypatch):
    out, _ = fmnist_release
    seen: dict[tuple[int, int], list[bytes]] = {}
    for rank in range(2):
        for worker in range(2):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", "2")
            monkeypatch.setenv("WORKER", str(worker))
            monkeypatch.setenv("NUM_WORKERS", "2")
            seen[rank, worker] = [d for d, _, _ in webdataset_pipeline(out, "train", decode=False)]
    assert all(len(v) == PER_SHARD for v in seen.values()), "each of 4 readers should get one of 4 shards"
    everything = [d for v in seen.values() for d in v]
    assert len(set(everything)) == 120 == len(everything)


TORCH_FREE = r"""
import importlib.abc, json, os, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoTorch())
from shards.reader import webdataset_pipeline

counts = {}
os.environ["NUM_WORKERS"] = "2"
for worker in ("0", "1"):
    os.environ["WORKER"] = worker
    counts[worker] = [int(label) for _, label, _ in webdataset_pipeline(sys.argv[1], "train")]
assert "torch" not in sys.modules
print(json.dumps(counts))
"""


def test_worker_splitting_works_without_torch(fmnist_release, fmnist_small):
    out, _ = fmnist_release
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "WORKER", "NUM_WORKERS")}
    result = subprocess.run([sys.executable, "-c", TORCH_FREE, str(out)], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    labels = json.loads(result.stdout)
    _, all_labels = fmnist_small
    # worker 0 reads shards 0 and 2, worker 1 reads shards 1 and 3
    assert labels["0"] == all_labels[0:30].tolist() + all_labels[60:90].tolist()
    assert labels["1"] == all_labels[30:60].tolist() + all_labels[90:120].tolist()


def test_pipeline_refuses_bad_arguments_before_reading(fmnist_release):
    out, _ = fmnist_release
    with pytest.raises(ValueError, match="shuffle: expected a buffer size"):
        webdataset_pipeline(out, "train", shuffle=-1)
    with pytest.raises(ValueError, match="epoch_length: expected a positive number"):
        webdataset_pipeline(out, "train", resampled=True, epoch_length=0)
    with pytest.raises(ManifestError, match="no split 'test'"):
        webdataset_pipeline(out, "test")


def test_pipeline_checks_digests_on_demand(fmnist_release):
    out, _ = fmnist_release
    flip_byte(out / "train-000002.tar", 5000)
    with pytest.raises(ShardError, match="train-000002.tar: sha256"):
        webdataset_pipeline(out, "train", check_digests=True)
    webdataset_pipeline(out, "val", check_digests=True)


# -- damage is reported --------------------------------------------------------------------

def test_a_flipped_byte_in_image_data_is_reported(fmnist_release):
    out, manifest = fmnist_release
    flip_byte(out / "train-000001.tar", 2000)
    problems = verify_shards(out, manifest)
    assert len(problems) == 1 and problems[0].startswith("train-000001.tar: sha256")
    assert verify_shards(out, manifest, check_digests=False) == []


def test_a_flipped_byte_in_a_tar_header_is_reported_not_read_as_a_short_shard(fmnist_release):
    out, manifest = fmnist_release
    path = out / "train-000000.tar"
    with tarfile.open(path) as tar:
        header_offset = tar.getmembers()[10].offset
    flip_byte(path, header_offset + 3)
    problems = verify_shards(out, manifest)
    assert any(p.startswith("train-000000.tar: sha256") for p in problems)
    corrupt = f"train-000000.tar: corrupt tar header at byte {header_offset}"
    assert any(p.startswith(corrupt) for p in problems)
    with pytest.raises(ShardError, match="train-000000.tar: corrupt tar header"):
        list(iter_samples(out, "train", manifest))
    # The training stream reads shards the same strict way (a tar stream would stop quietly).
    with pytest.raises(ShardError, match="train-000000.tar: corrupt tar header"):
        list(webdataset_pipeline(out, "train", manifest=manifest, decode=False))


def test_truncated_missing_unlisted_and_leftover_files_are_reported(fmnist_release):
    out, manifest = fmnist_release
    data = (out / "train-000003.tar").read_bytes()
    (out / "train-000003.tar").write_bytes(data[:-512])
    (out / "val-000000.tar").unlink()
    shutil.copy(out / "train-000000.tar", out / "train-000099.tar")
    (out / ".train-000004.tar.k2j3h4.tmp").write_bytes(b"half a shard")
    (out / "notes.txt").write_text("hello")
    problems = verify_shards(out, manifest)
    assert f"train-000003.tar: size {len(data) - 512} bytes, the manifest says {len(data)}" in problems
    assert "val-000000.tar: missing" in problems
    assert "train-000099.tar: shard present but not listed in the manifest" in problems
    assert ".train-000004.tar.k2j3h4.tmp: temporary file left by an interrupted write" in problems
    assert any(p.startswith("notes.txt: not part of the release") for p in problems)
    with pytest.raises(ShardError, match="val-000000.tar: missing"):
        list(iter_samples(out, "val", manifest))


def test_a_sample_count_that_disagrees_with_the_manifest_is_reported(fmnist_release):
    out, manifest = fmnist_release
    d = manifest.to_dict()
    d["splits"]["val"][0]["samples"] = 31
    problems = verify_shards(out, Manifest.from_dict(d))
    assert problems == ["val-000000.tar: 30 samples, the manifest says 31"]


def test_a_foreign_member_in_a_shard_is_refused(tmp_path, fmnist_samples, owner_key):
    manifest = write_release(tmp_path, {"val": fmnist_samples["val"][:2]}, FMNIST_CIPHER, owner_key)
    path = tmp_path / "val-000000.tar"
    with tarfile.open(path, "a") as tar:
        info = tarfile.TarInfo(f"{opaque_key(121)}.txt")
        payload = b"/home/owner/photos/cat.jpg"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(ShardError, match=r"val-000000.tar: sample [0-9a-f]+: member .txt is not part"):
        list(iter_samples(tmp_path, "val", manifest))
    with pytest.raises(ShardError, match=r"val-000000.tar: sample [0-9a-f]+: member .txt"):
        list(webdataset_pipeline(tmp_path, "val"))


def test_tars_written_with_other_header_layouts_read_the_same(fmnist_release, tmp_path):
    # The reader parses plain ustar headers itself and leaves any other header to tarfile:
    # a pax global header first (tarfile from the start) or GNU headers read alike.
    out, manifest = fmnist_release
    with tarfile.open(out / "val-000000.tar") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    expected = list(iter_samples(out, "val", manifest))
    for fmt, pax in ((tarfile.PAX_FORMAT, {"comment": "written elsewhere"}), (tarfile.GNU_FORMAT, None)):
        copy = tmp_path / f"copy-{fmt}"
        shutil.copytree(out, copy)
        os.chmod(copy / "val-000000.tar", 0o644)
        with tarfile.open(copy / "val-000000.tar", "w", format=fmt, pax_headers=pax) as tar:
            for info, data in members:
                tar.addfile(info, io.BytesIO(data))
        got = list(iter_samples(copy, "val", manifest))
        assert [(s.key, s.label) for s in got] == [(s.key, s.label) for s in expected]
        assert all(np.array_equal(a.image, b.image) for a, b in zip(got, expected))


def test_a_header_tarfile_would_refuse_is_corrupt_even_with_a_valid_checksum(fmnist_release, tmp_path):
    out, manifest = fmnist_release
    path = out / "train-000001.tar"
    with tarfile.open(path) as tar:
        infos = tar.getmembers()
    original = path.read_bytes()
    data = bytearray(original)
    at = infos[7].offset
    data[at + 136:at + 148] = b"0000000009x\0"  # mtime: not octal
    data[at + 148:at + 156] = b" " * 8
    data[at + 148:at + 156] = b"%06o\0 " % (sum(data[at:at + 512]))
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=f"train-000001.tar: corrupt tar header at byte {at} "):
        count_samples(path)
    # and a member whose data runs past the end of the file
    path.write_bytes(original[:infos[-1].offset_data + 10])
    for read in (lambda: count_samples(path), lambda: list(iter_samples(out, "train", manifest))):
        with pytest.raises(ShardError, match=r"train-000001.tar: corrupt tar \(unexpected end of data\)"):
            read()


def test_images_that_disagree_with_the_cipher_are_refused(tmp_path, fmnist_samples, owner_key):
    wrong = CipherSpec("none", 4, None, (32, 32), (32, 32), "png", None, 1)
    manifest = write_release(tmp_path, {"val": fmnist_samples["val"][:3]}, wrong, owner_key)
    with pytest.raises(ShardError, match="image is 28x28x1, the cipher says 32x32x1"):
        list(iter_samples(tmp_path, "val", manifest))
    as_jpeg = CipherSpec("none", 4, None, (28, 28), (28, 28), "jpeg", 90, 1)
    manifest = Manifest.from_dict({**manifest.to_dict(), "cipher": as_jpeg.to_dict()})
    with pytest.raises(ShardError, match="a png image in a release stored as jpeg"):
        list(iter_samples(tmp_path, "val", manifest))


def test_load_manifest_checks_the_signature(fmnist_release, owner_key):
    out, manifest = fmnist_release
    assert load_manifest(out, raw_public(owner_key)) == manifest
    with pytest.raises(ManifestError, match="manifest.json: public_key: .*different key"):
        load_manifest(out, raw_public(Ed25519PrivateKey.generate()))
    path = out / "manifest.json"
    path.write_text(path.read_text().replace('"samples": 30', '"samples": 29', 1))
    with pytest.raises(ManifestError, match=f"{path}: signature: does not match"):
        load_manifest(out, raw_public(owner_key))
    with pytest.raises(ManifestError, match="signature: does not match"):
        list(iter_samples(out, "train"))


# -- the writer refuses bad input and never leaves half a shard ---------------------------

def test_an_exception_inside_the_writer_leaves_no_file(tmp_path, fmnist_samples):
    with pytest.raises(RuntimeError, match="decoder crashed"):
        with ShardWriter(tmp_path, "train", 0) as writer:
            for key, data, ext, cls, _ in fmnist_samples["train"][:5]:
                writer.write(key, data, ext, cls=cls)
            raise RuntimeError("decoder crashed")
    assert list(tmp_path.iterdir()) == []


def test_nothing_appears_under_the_final_name_before_close(tmp_path, fmnist_samples):
    writer = ShardWriter(tmp_path, "train", 0)
    key, data, ext, cls, _ = fmnist_samples["train"][0]
    writer.write(key, data, ext, cls=cls)
    assert not (tmp_path / "train-000000.tar").exists()
    assert [p.name.startswith(".train-000000.tar.") for p in tmp_path.iterdir()] == [True]
    entry = writer.close()
    assert [p.name for p in tmp_path.iterdir()] == ["train-000000.tar"] and entry.samples == 1
    assert writer.close() == entry


@pytest.mark.parametrize("key", ["../../etc/passwd", "0123abcd.png", "0123abcd/x", "0123ABCD", "0123abc",
                                 "", "0123abcd_v", "n01440764_10026", "a" * 65])
def test_path_like_or_non_opaque_keys_are_refused(tmp_path, fmnist_samples, key):
    _, data, ext, cls, _ = fmnist_samples["train"][0]
    with ShardWriter(tmp_path, "train", 0) as writer:
        with pytest.raises(ValueError, match="train-000000.tar: sample key .* is not an opaque id"):
            writer.write(key, data, ext, cls=cls)
        writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_other_bad_samples_are_refused(tmp_path, fmnist_samples, photo_samples):
    key, png, _, _, _ = fmnist_samples["train"][0]
    jpg = photo_samples[0][1]
    with ShardWriter(tmp_path, "val", 0) as writer:
        writer.write(key, png, "png", cls=3)
        cases = [
            (dict(key=key, image=png, ext="png"), "written twice"),
            (dict(key=opaque_key(1), image=png, ext="jpg"), "not a jpg file"),
            (dict(key=opaque_key(1), image=jpg, ext="png"), "not a png file"),
            (dict(key=opaque_key(1), image=png, ext="gif"), "not one of jpg, png"),
            (dict(key=opaque_key(1), image=png, ext="png", cls=-1), "not a non-negative integer"),
            (dict(key=opaque_key(1), image=png, ext="png", meta={"area": float("nan")}),
             "not JSON-serialisable"),
        ]
        for kwargs, message in cases:
            with pytest.raises(ValueError, match=message):
                writer.write(**kwargs)
    assert writer.close().samples == 1


def test_shard_names():
    assert shard_name("train", 0) == "train-000000.tar"
    assert shard_name("val", 123456) == "val-123456.tar"
    bad = [("../x", 0), ("a/b", 0), ("", 1), ("train", -1), ("train", 10 ** 6), ("train", True)]
    for split, index in bad:
        with pytest.raises(ValueError):
            shard_name(split, index)


def test_writer_needs_an_existing_directory(tmp_path):
    with pytest.raises(NotADirectoryError, match="does-not-exist: output directory does not exist"):
        ShardWriter(tmp_path / "does-not-exist", "train", 0)
