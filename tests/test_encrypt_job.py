"""encrypt-dataset imagefolder end to end on real Fashion-MNIST and real odd files."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import FMNIST_CLASSES, natural_photos
from encrypt.ciphers import mix, unshuffle, unshuffle_mixed
from encrypt.cli import cli
from encrypt.decode import decode_image
from encrypt.geometry import resize_center_crop
from encrypt.main import encrypt_dataset
from encrypt.sources import list_imagefolder
from keys.keystore import create_keystore, open_keystore
from releases import job_settings as settings, write_imagefolder, keys_of
from shards.reader import iter_samples, load_manifest, verify_shards

PASSPHRASE = "correct horse battery staple 7f3a"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def keystore(tmp_path_factory):
    return create_keystore(tmp_path_factory.mktemp("ks") / "keystore", PASSPHRASE.encode())


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("src") / "fmnist"
    return root, write_imagefolder(root, {"train": 60, "val": 20})


def test_shuffle_release_decrypts_byte_exact(tmp_path, keystore, src):
    root, files = src
    out = tmp_path / "release"
    summary = encrypt_dataset(list_imagefolder(root), out, keystore, "fm-shuffle", settings(), progress=False)
    assert summary.images_written == 80 and summary.skipped == {}
    manifest = load_manifest(out, public_key=keystore.public_key)
    assert verify_shards(out, manifest) == []
    assert manifest.samples("train") == 60 and manifest.samples("val") == 20
    assert len(manifest.splits["train"]) == 4  # 16 per shard
    dk = keys_of(keystore, out)
    by_key = {dk.sample_id(rel): (rel, path) for rel, path in files.items()}
    seen = Counter()
    for split in ("train", "val"):
        for sample in iter_samples(out, split):
            rel, path = by_key[sample.key]
            seen[rel] += 1
            assert rel.startswith(split + "/")
            assert manifest.class_names[sample.label] == rel.split("/")[1]
            plain = resize_center_crop(decode_image(path, 1), 32, 32)
            perm = dk.permutation(64, split, sample.key)
            assert not np.array_equal(sample.image, plain)
            assert unshuffle(sample.image, perm, 4).tobytes() == plain.tobytes()
    assert set(seen) == set(files) and set(seen.values()) == {1}


def test_mix_shuffle_unshuffles_to_the_mixed_image(tmp_path, keystore, src):
    root, files = src
    out = tmp_path / "release"
    encrypt_dataset(list_imagefolder(root), out, keystore, "fm-ms",
                    settings(mode="mix-shuffle", sub_patch=2), progress=False)
    manifest = load_manifest(out, public_key=keystore.public_key)
    assert manifest.cipher.stored_size == (16, 16)
    dk = keys_of(keystore, out)
    by_key = {dk.sample_id(rel): path for rel, path in files.items()}
    for sample in iter_samples(out, "val"):
        plain = resize_center_crop(decode_image(by_key[sample.key], 1), 32, 32)
        assert sample.image.shape == (16, 16, 1)
        perm = dk.permutation(64, "val", sample.key)
        assert np.array_equal(unshuffle_mixed(sample.image, perm, 2), mix(plain, 4, 2))


def test_keyed_order_hides_source_order(tmp_path, keystore, src):
    root, files = src
    out = tmp_path / "release"
    encrypt_dataset(list_imagefolder(root), out, keystore, "fm-order", settings(shard_samples=100), progress=False)
    dk = keys_of(keystore, out)
    source_order = [dk.sample_id(rel) for rel in sorted(r for r in files if r.startswith("train/"))]
    stored = [s.key for s in iter_samples(out, "train")]
    assert sorted(stored) == sorted(source_order)
    assert stored != source_order
    labels = [s.label for s in iter_samples(out, "train")]
    assert labels != sorted(labels)  # classes interleave instead of coming folder by folder


def test_same_inputs_same_bytes_in_process_and_on_ray(tmp_path, keystore, src):
    root, _ = src
    listing = list_imagefolder(root)
    a = encrypt_dataset(listing, tmp_path / "a", keystore, "fm-det", settings(mode="mix-shuffle", sub_patch=2),
                        progress=False)
    # the same release rebuilt (its salt from the sealed index) on two Ray workers
    b = encrypt_dataset(listing, tmp_path / "b", keystore, "fm-det", settings(mode="mix-shuffle", sub_patch=2),
                        workers=2, progress=False, rebuild_from=tmp_path / "a")
    ma, mb = load_manifest(tmp_path / "a"), load_manifest(tmp_path / "b")
    assert ma.splits == mb.splits  # names, sha256, bytes and counts of every shard
    assert ma.extra == mb.extra == {"derivation": 2, "release": ma.extra["release"]}
    assert a.images_written == b.images_written == 80


def test_out_has_no_names_paths_or_metadata(tmp_path, keystore, src):
    root, files = src
    out = tmp_path / "release"
    listing = list_imagefolder(root)
    photo_dir = root / "train" / "coat"
    exif = Image.Exif()
    exif[0x010E] = "secret-description-in-exif"
    Image.fromarray(natural_photos(64)["coffee"]).save(photo_dir / "holiday-photo.jpg", exif=exif,
                                                       icc_profile=b"\0" * 128)
    encrypt_dataset(list_imagefolder(root), out, keystore, "fm-leak",
                    settings(channels=3, format="jpeg", quality=90), hide_class_names=True, progress=False)
    (photo_dir / "holiday-photo.jpg").unlink()
    blob = b"".join(p.read_bytes() for p in sorted(out.iterdir()))
    needles = [Path(r).stem for r in files] + list(FMNIST_CLASSES) + [
        "holiday-photo", "secret-description", str(root), "Exif", "ICC_PROFILE", "http://ns.adobe.com/xap"]
    for needle in needles:
        assert needle.encode() not in blob, needle
    assert len(listing.items) == 80


def test_bad_files_are_skipped_with_reasons_and_never_stop_the_job(tmp_path, keystore):
    root = tmp_path / "src"
    write_imagefolder(root, {"train": 30})
    bad = root / "train" / "bag"
    photo = natural_photos(64)["astronaut"]
    (bad / "zero.png").touch()
    (bad / "words.jpg").write_text("not an image")
    (bad / "notes.txt").write_text("a stray file")
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "JPEG")
    (bad / "cut.jpg").write_bytes(buf.getvalue()[:700])
    Image.fromarray(photo[:5, :5]).save(bad / "tiny.png")
    os.symlink(bad / "loop2.jpg", bad / "loop1.jpg")
    os.symlink(bad / "loop1.jpg", bad / "loop2.jpg")
    (root / "train" / "empty-class").mkdir()
    good_odd = root / "train" / "coat"
    Image.fromarray(np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)]), "RGBA").save(good_odd / "alpha.png")
    Image.fromarray(photo).convert("P", palette=Image.Palette.ADAPTIVE).save(good_odd / "palette.png")
    Image.fromarray((photo[..., 0].astype(np.uint16) * 257)).save(good_odd / "deep16.png")
    Image.fromarray(photo).convert("CMYK").save(good_odd / "cmyk.jpg")
    out = tmp_path / "release"
    summary = encrypt_dataset(list_imagefolder(root), out, keystore, "fm-bad", settings(), progress=False)
    assert summary.images_written == 30 + 4
    report = json.loads((tmp_path / "release.owner" / "skipped.json").read_text())
    reasons = {r["rel_path"].rsplit("/", 1)[-1] or r["rel_path"]: r["reason"] for r in report}
    assert "not a recognised image" in reasons["zero.png"]
    assert "not a recognised image" in reasons["words.jpg"]
    assert "extension" in reasons["notes.txt"]
    assert "truncated" in reasons["cut.jpg"]
    assert "too small" in reasons["tiny.png"]
    assert "cannot decode" in reasons["loop1.jpg"]
    assert any(r["reason"] == "empty class folder" for r in report)
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no half-written shard
    assert verify_shards(out, load_manifest(out)) == []


def _cli_env(keystore_dir: Path) -> dict:
    return dict(os.environ, PATCHVEIL_PASSPHRASE=PASSPHRASE, PATCHVEIL_KEYSTORE=str(keystore_dir))


COMMON = ["--patch", "4", "--sub-patch", "2", "--size", "32", "--resize", "32", "--grayscale",
          "--format", "png", "--num-cpus", "0", "--quiet"]


@pytest.mark.parametrize("case", ["missing-src", "out-inside-src", "out-not-empty", "wrong-passphrase",
                                  "bad-geometry", "coco-shuffle"])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, keystore, src, case):
    root, _ = src
    out = tmp_path / "out"
    env = _cli_env(keystore.directory)
    args = ["imagefolder", str(root), str(out)] + COMMON
    if case == "missing-src":
        args[1] = str(tmp_path / "nope")
    elif case == "out-inside-src":
        args[2] = str(root / "train" / "release")
    elif case == "out-not-empty":
        out.mkdir()
        (out / "something").write_text("x")
    elif case == "wrong-passphrase":
        env["PATCHVEIL_PASSPHRASE"] = "not the passphrase"
    elif case == "bad-geometry":
        args[args.index("--size") + 1] = "30"
    elif case == "coco-shuffle":
        args = ["coco", str(root), str(tmp_path / "x.json"), str(out), "--mode", "shuffle"]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert PASSPHRASE not in result.output and "not the passphrase" not in result.output
    assert not (out / "manifest.json").exists()


def test_kill_9_then_resume_gives_every_sample_exactly_once(tmp_path, keystore):
    root = tmp_path / "src"
    files = write_imagefolder(root, {"train": 900})
    out = tmp_path / "release"
    cmd = [str(BIN / "encrypt-dataset"), "imagefolder", str(root), str(out), "--patch", "16", "--size", "224",
           "--resize", "256", "--min-side", "8", "--mode", "shuffle", "--format", "jpeg", "--shard-samples", "20",
           "--num-cpus", "0", "--quiet", "--dataset-id", "fm-kill"]
    env = _cli_env(keystore.directory)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journal = tmp_path / "release.owner" / "journal.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 4:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the job finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    done_before = len(journal.read_text().splitlines()) - 1
    assert 3 <= done_before < 45

    again = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr  # not without --resume
    resumed = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((tmp_path / "release.owner" / "summary.json").read_text())
    assert summary["resumed_shards"] >= done_before and summary["images_written"] == 900
    manifest = load_manifest(out, public_key=keystore.public_key)
    assert verify_shards(out, manifest) == []
    keys = [s.key for s in iter_samples(out, "train")]
    dk = keys_of(keystore, out)
    assert Counter(keys) == Counter(dk.sample_id(rel) for rel in files)
    assert not any(p.name.startswith(".") for p in out.iterdir())


def test_used_for_job_is_logged_with_the_manifest_digest(tmp_path, keystore, src):
    root, _ = src
    out = tmp_path / "release"
    summary = encrypt_dataset(list_imagefolder(root), out, keystore, "fm-log", settings(), progress=False)
    reopened = open_keystore(keystore.directory, PASSPHRASE.encode())
    jobs = [e for e in reopened.custody.entries() if e["event"] == "used-for-job"]
    assert jobs[-1]["details"]["manifest_digest"] == load_manifest(out).digest() == summary.manifest_digest


def test_views_are_keyed_crops_of_training_images_only(tmp_path, keystore, src):
    root, files = src
    out = tmp_path / "release"
    summary = encrypt_dataset(list_imagefolder(root), out, keystore, "fm-views",
                              settings(views=3, resize=36), progress=False)
    assert summary.images_written == 60 * 3 + 20
    dk = keys_of(keystore, out)
    train = {s.key: s for s in iter_samples(out, "train")}
    rel = sorted(r for r in files if r.startswith("train/"))[0]
    views = [train[dk.sample_id(f"{rel}\x00view{v}")] for v in range(3)]
    plain = [unshuffle(s.image, dk.permutation(64, "train", s.key), 4) for s in views]
    assert not np.array_equal(plain[0], plain[1]) and not np.array_equal(plain[1], plain[2])
    val_keys = {s.key for s in iter_samples(out, "val")}
    assert val_keys == {dk.sample_id(r) for r in files if r.startswith("val/")}  # one centre crop each
    again = tmp_path / "again"
    encrypt_dataset(list_imagefolder(root), again, keystore, "fm-views", settings(views=3, resize=36), progress=False,
                    rebuild_from=out)
    assert load_manifest(again).splits == load_manifest(out).splits  # keyed views are reproducible
