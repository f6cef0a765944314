"""The signed manifest: schema, canonical JSON, Ed25519 signature, strict loading, atomic save.

The manifests here describe real shards of real Fashion-MNIST images written by ShardWriter.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from PIL import Image

from shards.manifest import (
    FORMAT_VERSION,
    CipherSpec,
    Manifest,
    ManifestError,
    ShardEntry,
    canonical_json,
    utc_timestamp,
)
from shards.signing import verify_signature
from shards.writer import ShardWriter

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def raw_public(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def owner_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def release(tmp_path_factory, fmnist_small) -> tuple[Path, Manifest]:
    """Three real shards of Fashion-MNIST PNGs and the unsigned manifest describing them."""
    out = tmp_path_factory.mktemp("release")
    images, labels = fmnist_small
    splits: dict[str, list[ShardEntry]] = {"train": [], "val": []}
    layout = [("train", 0, range(0, 30)), ("train", 1, range(30, 60)), ("val", 0, range(60, 80))]
    for split, index, rows in layout:
        with ShardWriter(out, split, index) as writer:
            for i in rows:
                writer.write(hashlib.sha256(b"id%d" % i).hexdigest()[:16], png_bytes(images[i]), "png",
                             cls=int(labels[i]))
        splits[split].append(writer.close())
    cipher = CipherSpec(mode="none", patch=4, sub_patch=None, image_size=(28, 28), stored_size=(28, 28),
                        format="png", quality=None, channels=1)
    manifest = Manifest(task="classification", dataset_id="fashion-mnist", cipher=cipher, splits=splits,
                        num_classes=10, class_names=CLASSES, categories=None, key_id="k1a2b3c4d5e6",
                        tool_version="0.1.0", created=utc_timestamp(), extra={"note": "baseline"})
    return out, manifest


@pytest.fixture(scope="module")
def signed(release, owner_key) -> Manifest:
    return release[1].signed(owner_key.sign, raw_public(owner_key))


# -- JSON --------------------------------------------------------------------------------

def test_saved_manifest_holds_every_field_the_design_lists_and_loads_back_equal(tmp_path, release, signed):
    out, _ = release
    path = tmp_path / "manifest.json"
    signed.save(path)
    on_disk = json.loads(path.read_text())
    assert on_disk["format_version"] == FORMAT_VERSION == 2  # 2: optional info_sha256
    assert on_disk["cipher"] == {"mode": "none", "patch": 4, "sub_patch": None, "image_size": [28, 28],
                                 "stored_size": [28, 28], "format": "png", "quality": None, "channels": 1}
    first = on_disk["splits"]["train"][0]
    assert first["name"] == "train-000000.tar" and first["samples"] == 30
    assert first["bytes"] == (out / "train-000000.tar").stat().st_size
    assert first["sha256"] == hashlib.sha256((out / "train-000000.tar").read_bytes()).hexdigest()
    assert on_disk["num_classes"] == 10 and on_disk["class_names"] == CLASSES
    for field in ("key_id", "tool_version", "created", "public_key", "signature"):
        assert isinstance(on_disk[field], str) and on_disk[field]
    loaded = Manifest.load(path)
    assert loaded == signed
    assert len(signed.public_key_bytes) == 32
    loaded.verify(signed.public_key_bytes)
    assert not [p for p in tmp_path.iterdir() if p.name != "manifest.json"], "a temporary file was left"


def test_canonical_bytes_are_sorted_compact_and_leave_out_only_the_signature(release, signed):
    d = signed.to_dict()
    del d["signature"]
    assert signed.canonical_bytes() == json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    assert b'"signature"' not in signed.canonical_bytes()
    assert b'"public_key"' in signed.canonical_bytes()
    reordered = dataclasses.replace(signed, splits=dict(reversed(list(signed.splits.items()))))
    assert list(reordered.splits) != list(signed.splits)
    assert reordered.canonical_bytes() == signed.canonical_bytes()
    reordered.verify(signed.public_key_bytes)


def test_digest_covers_the_signature_too(release, owner_key, signed):
    assert signed.digest() == hashlib.sha256(canonical_json(signed.to_dict())).hexdigest()
    resigned = release[1].signed(owner_key.sign, raw_public(owner_key))
    # Ed25519 is deterministic: same key and content, same signature and digest
    assert resigned.digest() == signed.digest()
    edited = dataclasses.replace(release[1], tool_version="0.1.1")
    edited = edited.signed(owner_key.sign, raw_public(owner_key))
    assert edited.digest() != signed.digest()


def test_to_dict_returns_copies(signed):
    d = signed.to_dict()
    d["splits"]["train"][0]["samples"] = 999
    d["class_names"][0] = "changed"
    d["extra"]["note"] = "changed"
    assert signed.splits["train"][0].samples == 30
    assert signed.class_names[0] == "t-shirt" and signed.extra == {"note": "baseline"}


# -- signature -----------------------------------------------------------------------------

def test_signature_verifies_with_the_owner_key(signed, owner_key):
    signed.verify(raw_public(owner_key))
    signed.verify()
    signature = base64.b64decode(signed.signature)
    assert verify_signature(raw_public(owner_key), signed.canonical_bytes(), signature)
    assert not verify_signature(raw_public(owner_key), signed.canonical_bytes() + b" ", signature)


def test_another_public_key_is_refused(signed):
    with pytest.raises(ManifestError, match="different key"):
        signed.verify(raw_public(Ed25519PrivateKey.generate()))


def test_a_manifest_resigned_by_someone_else_fails_against_the_owner_key(signed, owner_key):
    attacker = Ed25519PrivateKey.generate()
    forged = dataclasses.replace(signed, num_classes=9, class_names=CLASSES[:9]).signed(
        attacker.sign, raw_public(attacker))
    with pytest.raises(ManifestError, match="public_key: .*different key"):
        forged.verify(raw_public(owner_key))
    # the documented weakness: the key named inside vouches only for itself
    forged.verify()


def test_signature_copied_onto_an_attacker_key_fails(signed):
    attacker = raw_public(Ed25519PrivateKey.generate())
    swapped = dataclasses.replace(signed, public_key=base64.b64encode(attacker).decode())
    with pytest.raises(ManifestError, match="signature: does not match"):
        swapped.verify()


def test_signing_callback_holding_another_key_is_refused(release, owner_key):
    other = Ed25519PrivateKey.generate()
    with pytest.raises(ManifestError, match="does not verify under the given public key"):
        release[1].signed(other.sign, raw_public(owner_key))


def test_unsigned_manifest_does_not_verify(release, owner_key):
    with pytest.raises(ManifestError, match="not signed"):
        release[1].verify(raw_public(owner_key))


@pytest.mark.parametrize("edit", [
    lambda d: d["splits"]["train"][1].update(samples=31),
    lambda d: d["splits"]["val"][0].update(sha256="0" * 64),
    lambda d: d["splits"]["train"][0].update(bytes=d["splits"]["train"][0]["bytes"] + 512),
    lambda d: d["cipher"].update(mode="shuffle"),
    lambda d: d["cipher"].update(patch=2),
    lambda d: d.update(key_id="someone-elses-key"),
    lambda d: d["class_names"].reverse(),
    lambda d: d["splits"].pop("val"),
    lambda d: d["extra"].update(note="edited"),
], ids=["samples", "sha256", "bytes", "mode", "patch", "key_id", "class_names", "drop-split", "extra"])
def test_an_edited_field_breaks_the_signature(signed, owner_key, edit):
    d = signed.to_dict()
    edit(d)
    edited = Manifest.from_dict(d)
    assert edited != signed
    with pytest.raises(ManifestError, match="signature: does not match"):
        edited.verify(raw_public(owner_key))


def test_every_flipped_byte_of_the_saved_manifest_is_caught(tmp_path, signed, owner_key):
    """Flip the low bit of each byte in turn: load or verify must fail every time."""
    path = tmp_path / "manifest.json"
    signed.save(path)
    original = path.read_bytes()
    public = raw_public(owner_key)
    undetected = []
    fd = os.open(path, os.O_RDWR)
    try:
        for i, byte in enumerate(original):
            os.pwrite(fd, bytes([byte ^ 0x01]), i)
            try:
                Manifest.load(path).verify(public)
            except ManifestError:
                continue
            finally:
                os.pwrite(fd, bytes([byte]), i)
            undetected.append(i)
    finally:
        os.close(fd)
    assert undetected == [], f"flips at {undetected[:5]} went unnoticed"
    assert path.read_bytes() == original
    Manifest.load(path).verify(public)


def test_a_second_spelling_of_the_same_signature_is_refused(signed):
    """64 bytes leave 4 unused bits in the last base64 digit: setting one decodes to the same
    signature, so a lenient decoder would accept an edited manifest file as unchanged."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = signed.signature.rstrip("=")[-1]
    respelled = signed.signature[:-3] + alphabet[alphabet.index(last) ^ 1] + "=="
    assert base64.b64decode(respelled) == base64.b64decode(signed.signature)
    with pytest.raises(ManifestError, match="signature: expected 64 bytes in canonical base64"):
        Manifest.from_dict({**signed.to_dict(), "signature": respelled})


# -- strict loading ------------------------------------------------------------------------

def test_a_newer_format_version_is_refused_with_a_clear_message(tmp_path, signed):
    d = signed.to_dict()
    d["format_version"] = FORMAT_VERSION + 1
    d["some_future_field"] = {"x": 1}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ManifestError) as err:
        Manifest.load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: format_version: {FORMAT_VERSION + 1} is newer")
    assert "upgrade" in message and "\n" not in message


def _broken(d: dict, how: str) -> dict:
    if how == "missing":
        del d["key_id"]
    elif how == "unknown":
        d["source_dir"] = "/home/owner/imagenet"
    elif how == "patch-type":
        d["cipher"]["patch"] = "16"
    elif how == "sha256":
        d["splits"]["train"][0]["sha256"] = "XYZ"
    elif how == "path-name":
        d["splits"]["train"][0]["name"] = "../../etc/train-000000.tar"
    elif how == "wrong-split":
        d["splits"]["val"][0]["name"] = "train-000007.tar"
    elif how == "twice":
        d["splits"]["train"].append(dict(d["splits"]["train"][0]))
    elif how == "class-names":
        d["class_names"] = d["class_names"][:3]
    elif how == "negative":
        d["splits"]["val"][0]["samples"] = -1
    elif how == "bool-int":
        d["num_classes"] = True
    elif how == "no-timezone":
        d["created"] = "2026-01-01T00:00:00"
    elif how == "sig-length":
        d["signature"] = "AAAA"
    elif how == "task":
        d["task"] = "segmentation"
    return d


@pytest.mark.parametrize("how, field", [
    ("missing", "key_id: missing"),
    ("unknown", "source_dir: unknown field"),
    ("patch-type", "cipher.patch: expected an integer"),
    ("sha256", "splits.train[0].sha256:"),
    ("path-name", "splits.train[0].name:"),
    ("wrong-split", "splits.val[0]: shard train-000007.tar belongs to split train"),
    ("twice", "listed twice"),
    ("class-names", "class_names: 3 names for 10 classes"),
    ("negative", "splits.val[0].samples: must be at least 0"),
    ("bool-int", "num_classes: expected an integer"),
    ("no-timezone", "created: needs a time zone"),
    ("sig-length", "signature: expected 64 bytes"),
    ("task", "task: expected one of classification, detection"),
])
def test_from_dict_names_the_bad_field(signed, how, field):
    with pytest.raises(ManifestError) as err:
        Manifest.from_dict(_broken(signed.to_dict(), how))
    assert field in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content, reason", [
    (None, "not found"),
    (b"", "not valid JSON"),
    (b'{"task": "classification",', "not valid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"task": "a", "task": "b"}', "task: appears twice"),
    (b'{"format_version": NaN}', "NaN is not a JSON number"),
    (b"\xff\xfe{}", "not UTF-8"),
])
def test_load_names_the_file_and_the_reason(tmp_path, content, reason):
    path = tmp_path / "manifest.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ManifestError) as err:
        Manifest.load(path)
    assert str(err.value).startswith(f"{path}: ")
    assert reason in str(err.value)


def test_load_refuses_a_directory(tmp_path):
    (tmp_path / "manifest.json").mkdir()
    with pytest.raises(ManifestError, match="is a directory"):
        Manifest.load(tmp_path / "manifest.json")


def test_a_failed_save_leaves_the_old_manifest_and_no_temporary_file(tmp_path, signed, monkeypatch):
    path = tmp_path / "manifest.json"
    signed.save(path)
    before = path.read_bytes()

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        dataclasses.replace(signed, tool_version="9.9.9").save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


# -- cipher geometry -----------------------------------------------------------------------

@pytest.mark.parametrize("mode, sub, stored, tile, grid", [
    ("shuffle", None, (224, 224), 16, (14, 14)),
    ("none", None, (224, 224), 16, (14, 14)),
    ("mix", 8, (112, 112), 8, (14, 14)),
    ("mix-shuffle", 4, (56, 56), 4, (14, 14)),
])
def test_cipher_tile_and_grid(mode, sub, stored, tile, grid):
    spec = CipherSpec(mode=mode, patch=16, sub_patch=sub, image_size=(224, 224), stored_size=stored,
                      format="jpeg", quality=90, channels=3)
    assert (spec.tile, spec.grid) == (tile, grid)
    assert spec.encrypted == (mode != "none")
    assert CipherSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_cipher_of_a_non_square_image():
    spec = CipherSpec("mix", 16, 8, (224, 320), (112, 160), "png", None, 3)
    assert spec.grid == (14, 20)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="rot13"), "mode: expected one of"),
    (dict(image_size=(225, 224), stored_size=(225, 224)), "not divisible by the patch 16"),
    (dict(sub_patch=8), "sub_patch: must be null for mode shuffle"),
    (dict(mode="mix", sub_patch=16, stored_size=(224, 224)), "sub_patch: 16 must be smaller"),
    (dict(mode="mix", sub_patch=8), "stored_size: mix of 224x224 stores 112x112"),
    (dict(quality=None), "quality: expected an integer"),
    (dict(format="png"), "quality: must be null for png"),
    (dict(channels=4), "channels: expected 1 or 3"),
])
def test_inconsistent_cipher_specs_are_refused(kwargs, message):
    base = dict(mode="shuffle", patch=16, sub_patch=None, image_size=(224, 224), stored_size=(224, 224),
                format="jpeg", quality=90, channels=3)
    with pytest.raises(ManifestError, match=message):
        CipherSpec(**{**base, **kwargs})


# -- questions a reader asks ---------------------------------------------------------------

def test_samples_and_shard_paths(release, signed):
    out, _ = release
    assert signed.samples("train") == 60 and signed.samples("val") == 20
    paths = signed.shard_paths(out, "train")
    assert [p.name for p in paths] == ["train-000000.tar", "train-000001.tar"]
    assert all(p.is_file() and p.parent == out for p in paths)
    with pytest.raises(ManifestError, match="no split 'test'.*train, val"):
        signed.samples("test")
