"""train.data on a real release: opening and checking it, streaming batches, the model input.

Releases are built the way a data owner builds them (encrypt.main.encrypt_dataset, real
Fashion-MNIST); `tests/releases.py` builds them for every test file.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from releases import SAMPLE, make_keystore, make_release
from shards.manifest import CipherSpec, ManifestError
from shards.reader import ShardError, load_manifest
from train.augment import per_patch_hflip
from train.data import Augmentation, BatchTransform, ShardLoader, open_release, worker_error_line

def shard_contents(path: Path) -> list[tuple[str, int]]:
    """(sha1 of decoded pixels, label) per sample, read with tarfile + PIL (independent of train)."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    out = []
    for parts in samples.values():
        pixels = np.asarray(Image.open(io.BytesIO(parts["png"])))
        out.append((hashlib.sha1(pixels.tobytes()).hexdigest(), int(parts["cls"])))
    return out


def batch_contents(batches) -> list[tuple[str, int]]:
    return [(hashlib.sha1(img[0].numpy().tobytes()).hexdigest(), int(lab))
            for images, labels in batches for img, lab in zip(images, labels)]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "release"
    make_release(out, make_keystore(tmp_path_factory))
    return out


def copy_release(release: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(release, target)
    return target


def test_open_release_verifies_and_says_what_the_cipher_implies(release):
    opened = open_release(release, ("train", "val"), verify_digests=True)
    assert opened.cipher.mode == "shuffle" and opened.tile == 4
    assert opened.num_classes == 10
    assert opened.samples("train") == 2000 and opened.samples("val") == 500
    with pytest.raises(ManifestError, match="no split 'test'"):
        open_release(release, ("train", "test"))


def test_an_edited_manifest_fails_its_signature(release, tmp_path):
    copy = copy_release(release, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["num_classes"] = 11  # still valid JSON, still a valid manifest: only the signature knows
    manifest["class_names"].append("extra")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError) as err:
        open_release(copy)
    message = str(err.value)
    assert "manifest.json" in message and "signature" in message and "\n" not in message


def test_missing_or_truncated_shards_are_named(release, tmp_path):
    copy = copy_release(release, tmp_path)
    (copy / "val-000001.tar").unlink()
    open_release(copy, ("train",))  # only the splits in use are checked by default
    with pytest.raises(ShardError, match=r"val-000001\.tar: missing"):
        open_release(copy, ("train", "val"))
    with open(copy / "train-000003.tar", "r+b") as f:
        f.truncate(10240)
    with pytest.raises(ShardError, match=r"train-000003\.tar: 10240 bytes, the manifest says \d+"):
        open_release(copy, ("train",))


def test_verify_digests_catches_a_flipped_byte(release, tmp_path):
    copy = copy_release(release, tmp_path)
    shard = copy / "train-000005.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    open_release(copy, ("train",))  # same size: only hashing notices
    with pytest.raises(ShardError, match=r"train-000005\.tar: sha256 .* differs"):
        open_release(copy, ("train",), verify_digests=True)


def test_train_epochs_are_equal_per_rank_reproducible_and_split_by_shard(release):
    opened = open_release(release, ("train",))
    per_shard = {p.name: shard_contents(p) for p in sorted(release.glob("train-*.tar"))}
    names = sorted(per_shard)
    lengths = []
    for rank in range(2):
        loader = ShardLoader(opened, "train", batch_size=50, train=True, workers=2, seed=3,
                             rank=rank, world_size=2)
        batches = list(loader.epoch(0))
        lengths.append(len(batches))
        assert len(batches) == len(loader) == 2000 // (50 * 2)
        images, labels = batches[0]
        assert images.dtype == torch.uint8 and images.shape == (50, 1, 32, 32)
        assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < 10
        # this rank reads every second shard, and nothing else
        mine = {s for name in names[rank::2] for s in per_shard[name]}
        seen = batch_contents(batches)
        assert set(seen) <= mine and len(set(seen)) > 0.9 * len(seen)
        again = list(loader.epoch(0))
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
        later = list(loader.epoch(0, skip=7))
        assert len(later) == len(batches) - 7 and torch.equal(later[0][0], batches[7][0])
        other = next(iter(loader.epoch(1)))
        assert not torch.equal(other[0], batches[0][0])
    assert lengths[0] == lengths[1]


class _CountingLoader(ShardLoader):
    """Records, from inside each worker, every sample it converts (one file per process)."""

    log_dir: Path

    def convert(self, sample):
        with open(self.log_dir / f"{os.getpid()}.log", "a") as log:
            log.write("x\n")
        return super().convert(sample)


def test_workers_decode_only_the_epoch_they_deliver(release, tmp_path):
    opened = open_release(release, ("train",))
    loader = _CountingLoader(opened, "train", batch_size=40, train=True, workers=2, seed=1)
    loader.log_dir = tmp_path
    batches = list(loader.epoch(0))
    converted = sum(len(p.read_text().splitlines()) for p in tmp_path.glob("*.log"))
    assert len(list(tmp_path.glob("*.log"))) == 2  # both workers took part
    assert converted == len(batches) * 40 == len(loader) * 40  # none decoded to be thrown away


def test_every_rank_gets_the_same_batch_count_when_shards_do_not_divide(release):
    opened = open_release(release, ("train",))  # 8 shards over 3 ranks: 3, 3, 2 shards
    counts = [len(list(ShardLoader(opened, "train", batch_size=64, train=True, workers=2,
                                   rank=rank, world_size=3).epoch(0))) for rank in range(3)]
    assert counts == [2000 // (64 * 3)] * 3


def test_evaluation_reads_every_sample_once_with_its_label(release):
    opened = open_release(release, ("val",))
    expected = Counter(s for p in sorted(release.glob("val-*.tar")) for s in shard_contents(p))
    loader = ShardLoader(opened, "val", batch_size=64, train=False, workers=2)
    batches = list(loader.epoch(0))
    assert len(batches) == len(loader) == 2 * 4  # 250 per shard: 3 full batches + 58
    assert Counter(batch_contents(batches)) == expected
    ranks = [batch_contents(ShardLoader(opened, "val", batch_size=64, train=False,
                                        rank=r, world_size=2).epoch(0)) for r in range(2)]
    assert Counter(ranks[0]) + Counter(ranks[1]) == expected and not set(ranks[0]) & set(ranks[1])


def test_batch_transform_normalises_and_flips_as_the_cipher_allows(release):
    opened = open_release(release, ("val",))
    images, labels = next(iter(ShardLoader(opened, "val", batch_size=16, train=False).epoch(0)))
    plain = BatchTransform(opened.cipher, 10, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x, y = plain(images, labels)
    expected = (images.float() / 255 - 0.5) / 0.5
    assert x.dtype == torch.float32 and torch.allclose(x, expected) and torch.equal(y, labels)

    always = Augmentation(hflip=1.0)
    flipped, _ = BatchTransform(opened.cipher, 10, (0.5,), (0.5,), augment=always)(images, labels)
    assert torch.allclose(flipped, per_patch_hflip(expected, 4))  # tokens stay where they are
    assert not torch.allclose(flipped, expected.flip(-1))
    none = CipherSpec(mode="none", patch=4, sub_patch=None, image_size=(32, 32), stored_size=(32, 32),
                      format="png", quality=None, channels=1)
    whole, _ = BatchTransform(none, 10, (0.5,), (0.5,), augment=always)(images, labels)
    assert torch.allclose(whole, expected.flip(-1))

    torch.manual_seed(0)
    mixing = Augmentation(hflip=0.0, mixup=0.8, cutmix=1.0)
    mixed, soft = BatchTransform(opened.cipher, 10, (0.5,), (0.5,), augment=mixing)(images, labels)
    assert soft.shape == (16, 10) and torch.allclose(soft.sum(1), torch.ones(16))
    assert not torch.allclose(mixed, expected)
    with pytest.raises(ValueError, match="even"):
        BatchTransform(opened.cipher, 10, (0.5,), (0.5,), augment=mixing)(images[:15], labels[:15])


def test_a_damaged_image_in_a_worker_is_reported_in_one_line(release, tmp_path):
    copy = copy_release(release, tmp_path)
    shard = copy / "val-000000.tar"
    with tarfile.open(shard) as tar:
        member = next(m for m in tar if m.name.endswith(".png"))
    data = bytearray(shard.read_bytes())
    data[member.offset_data + member.size // 2] ^= 0xFF  # inside the compressed pixels
    shard.write_bytes(bytes(data))
    opened = open_release(copy, ("val",))  # sizes are right; only decoding notices
    loader = ShardLoader(opened, "val", batch_size=64, train=False, workers=1)
    with pytest.raises(ValueError) as err:
        list(loader.epoch(0))
    assert "DataLoader worker" in str(err.value)  # it crossed from the worker process
    line = worker_error_line(err.value)
    assert "\n" not in line and "val-000000.tar" in line and member.name.split(".")[0] in line
