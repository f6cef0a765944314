"""encrypt-dataset decrypt and forget on real Fashion-MNIST releases made by the real job."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from audit.verify import verify_release
from encrypt.ciphers import mix
from encrypt.cli import cli
from encrypt.decode import decode_image
from encrypt.geometry import resize_center_crop
from encrypt.main import encrypt_dataset
from encrypt.sources import list_imagefolder
from keys.custody import read_identity
from keys.keystore import create_keystore, open_keystore
from shards.manifest import Manifest
from shards.reader import iter_samples, load_manifest
from releases import job_settings as settings, read_samples, write_imagefolder, keys_of

PASSPHRASE = "Okapi-Lemur-3318-decrypt-forget"


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    """Source images, a keystore, and a release of the same images in every keyed mode and mix."""
    base = tmp_path_factory.mktemp("owner")
    files = write_imagefolder(base / "src", {"train": 40, "val": 16})
    listing = list_imagefolder(base / "src")
    store = create_keystore(base / "keystore", PASSPHRASE.encode())
    releases = {}
    for mode, extra in (("shuffle", {}), ("mix-shuffle", {"sub_patch": 2}), ("mix", {"sub_patch": 2}),
                        ("mix-shuffle-orient", {"sub_patch": 2})):
        releases[mode] = base / mode
        encrypt_dataset(listing, releases[mode], store, f"fm-{mode}",
                        settings(mode=mode, shard_samples=12, **extra), progress=False)
    return {"base": base, "files": files, "store": store, "releases": releases}


@pytest.fixture()
def keystore_copy(tmp_path, owner) -> Path:
    shutil.copytree(owner["store"].directory, tmp_path / "keystore")
    return tmp_path / "keystore"


@pytest.fixture()
def shuffle_copy(tmp_path, owner) -> Path:
    shutil.copytree(owner["releases"]["shuffle"], tmp_path / "release")
    return tmp_path / "release"


def run(*args, keystore: Path) -> Result:
    result = CliRunner().invoke(cli, [*map(str, args), "--keystore", str(keystore), "--quiet"],
                                env={"PATCHVEIL_PASSPHRASE": PASSPHRASE, "PATCHVEIL_KEYSTORE": None})
    assert PASSPHRASE not in result.output and PASSPHRASE not in result.stderr
    return result


def one_line_error(result: Result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def plain(owner, rel: str) -> np.ndarray:
    """What the cipher saw: the source file decoded, resized and centre-cropped like the job does."""
    return resize_center_crop(decode_image(owner["files"][rel], 1), 32, 32)


def events(keystore: Path) -> list[dict]:
    return [json.loads(line) for line in (keystore / "custody.log").read_text().splitlines()]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# -- decrypt -------------------------------------------------------------------------------

def test_shuffle_decrypts_pixel_exact_to_the_original_paths(owner, keystore_copy, tmp_path):
    dest = tmp_path / "restored"
    result = run("decrypt", owner["releases"]["shuffle"], dest, keystore=keystore_copy)
    assert result.exit_code == 0, result.output
    assert "decrypted 56 shuffle samples" in result.stdout
    restored = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.png"))
    assert restored == sorted(owner["files"])  # same names, same folders, nothing else
    for rel in owner["files"]:
        assert np.array_equal(np.asarray(Image.open(dest / rel)), plain(owner, rel)[..., 0]), rel
    last = events(keystore_copy)[-1]
    assert last["event"] == "decrypted"
    assert last["details"]["samples"] == 56 and last["details"]["selection"] == "all"
    assert last["details"]["manifest_digest"] == load_manifest(owner["releases"]["shuffle"]).digest()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


@pytest.mark.parametrize("mode", ["mix-shuffle", "mix-shuffle-orient"])
def test_mixing_modes_decrypt_to_the_mixed_image(owner, keystore_copy, tmp_path, mode):
    stored = next(iter_samples(owner["releases"][mode], "train")).image
    dest = tmp_path / "mixed"
    result = run("decrypt", owner["releases"][mode], dest, keystore=keystore_copy)
    assert result.exit_code == 0, result.output
    assert f"decrypted 56 {mode} samples" in result.stdout
    assert "averaging cannot be undone" in result.stdout
    mixed = [mix(plain(owner, rel), 4, 2)[..., 0] for rel in owner["files"]]
    assert not any(np.array_equal(stored[..., 0], m) for m in mixed)  # stored tiles are moved (and turned)
    for rel in owner["files"]:
        restored = np.asarray(Image.open(dest / rel))
        assert restored.shape == (16, 16)
        assert np.array_equal(restored, mix(plain(owner, rel), 4, 2)[..., 0]), rel


def test_mix_has_nothing_to_decrypt(owner, keystore_copy, tmp_path):
    error = one_line_error(run("decrypt", owner["releases"]["mix"], tmp_path / "dest", keystore=keystore_copy))
    assert "mode mix keeps no key" in error and "nothing to decrypt" in error
    assert not (tmp_path / "dest").exists()


def test_only_the_requested_ids_are_decrypted(owner, keystore_copy, tmp_path):
    release = owner["releases"]["shuffle"]
    wanted = [s.key for s in iter_samples(release, "val")][:2]
    by_id = {keys_of(owner["store"], owner["releases"]["shuffle"]).sample_id(rel): rel for rel in owner["files"]}
    result = run("decrypt", release, tmp_path / "two", "--ids", ",".join(wanted), keystore=keystore_copy)
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(tmp_path / "two").as_posix() for p in (tmp_path / "two").rglob("*.png")) == \
        sorted(by_id[k] for k in wanted)
    assert events(keystore_copy)[-1]["details"]["selection"] == "ids"

    before = len(events(keystore_copy))
    error = one_line_error(run("decrypt", release, tmp_path / "none", "--ids", "ab" * 12, keystore=keystore_copy))
    assert "1 requested id(s) are not samples of this dataset" in error
    assert not (tmp_path / "none").exists() and len(events(keystore_copy)) == before


@pytest.mark.parametrize("problem", ["dest not empty", "dest inside release", "tampered shard", "not ours"])
def test_decrypt_refuses_bad_input_with_one_line_and_writes_nothing(owner, keystore_copy, shuffle_copy,
                                                                    tmp_path, problem):
    dest = tmp_path / "dest"
    if problem == "dest not empty":
        dest.mkdir()
        (dest / "keep.txt").write_text("mine")
    elif problem == "dest inside release":
        dest = shuffle_copy / "restored"
    elif problem == "tampered shard":
        shard = shuffle_copy / "train-000001.tar"
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 1
        shard.write_bytes(bytes(data))
    elif problem == "not ours":
        other = create_keystore(tmp_path / "other-keys", PASSPHRASE.encode())
        keystore_copy = other.directory
    before = snapshot(shuffle_copy)
    error = one_line_error(run("decrypt", shuffle_copy, dest, keystore=keystore_copy))
    expected = {"dest not empty": "destination exists and is not an empty folder",
                "dest inside release": "destination is inside the release",
                "tampered shard": "train-000001.tar: sha256 differs from the signed manifest",
                "not ours": "signed by a key this keystore does not hold"}[problem]
    assert expected in error
    assert snapshot(shuffle_copy) == before
    assert problem == "dest not empty" or not dest.exists()
    assert events(keystore_copy)[-1]["event"] != "decrypted"


def test_after_rotation_old_releases_still_decrypt(owner, keystore_copy, tmp_path):
    store = open_keystore(keystore_copy, PASSPHRASE.encode())
    store.rotate()
    result = run("decrypt", owner["releases"]["shuffle"], tmp_path / "old", keystore=keystore_copy)
    assert result.exit_code == 0, result.output
    rel = sorted(owner["files"])[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "old" / rel)), plain(owner, rel)[..., 0])


def test_after_destroy_decrypt_fails_clearly(owner, keystore_copy, tmp_path):
    open_keystore(keystore_copy, PASSPHRASE.encode()).destroy("fm-shuffle")
    error = one_line_error(run("decrypt", owner["releases"]["shuffle"], tmp_path / "dest", keystore=keystore_copy))
    assert "dataset 'fm-shuffle': its key was destroyed on" in error
    assert "nothing made with it can be decrypted" in error
    assert not (tmp_path / "dest").exists()
    # the other datasets of the keystore are untouched
    assert run("decrypt", owner["releases"]["mix-shuffle"], tmp_path / "ms", keystore=keystore_copy).exit_code == 0


# -- forget --------------------------------------------------------------------------------

def test_forget_rewrites_only_the_affected_shards_and_verifies(owner, keystore_copy, shuffle_copy, tmp_path):
    dk = keys_of(owner["store"], owner["releases"]["shuffle"])
    gone = [sorted(r for r in owner["files"] if r.startswith(split + "/"))[3] for split in ("train", "val")]
    gone_ids = {dk.sample_id(rel) for rel in gone}
    before = load_manifest(shuffle_copy)
    holding = {name for name in (e.name for es in before.splits.values() for e in es)
               if gone_ids & {k for k, _ in read_samples(shuffle_copy / name)}}
    kept_members = {name: [s for s in read_samples(shuffle_copy / name) if s[0] not in gone_ids]
                    for name in holding}
    inodes = {p.name: p.stat().st_ino for p in shuffle_copy.iterdir()}

    result = run("forget", shuffle_copy, *[a for rel in gone for a in ("--path", rel)], keystore=keystore_copy)
    assert result.exit_code == 0, result.output
    assert f"removed 2 sample(s); rewrote {len(holding)} shard(s); manifest version 2" in result.stdout

    after = load_manifest(shuffle_copy, public_key=owner["store"].public_key)
    assert after.extra == {"version": 2, "previous_manifest": before.digest(),  # the derivation is kept
                           "derivation": 2, "release": before.extra["release"]}
    assert after.samples("train") + after.samples("val") == 54
    for split, entries in after.splits.items():
        old_names = [e.name for e in before.splits[split]]
        assert len(entries) == len(old_names)  # same order; a rewritten shard gets a fresh name
        for old, entry in zip(old_names, entries):
            path = shuffle_copy / entry.name
            if old in holding:  # rewritten: the other samples byte for byte, in the same order
                assert entry.name not in inodes and not (shuffle_copy / old).exists()
                assert read_samples(path) == kept_members[old]
            else:  # untouched: the very same file, not a copy
                assert entry.name == old and path.stat().st_ino == inodes[entry.name]
    left = {s.key for split in after.splits for s in iter_samples(shuffle_copy, split, after)}
    assert not left & gone_ids and len(left) == 54

    last = events(keystore_copy)[-1]
    assert last["event"] == "forgotten"
    assert last["details"]["samples_removed"] == 2 and last["details"]["manifest_digest"] == after.digest()
    assert last["details"]["previous_manifest_digest"] == before.digest()
    log_text = (keystore_copy / "custody.log").read_text()
    assert not any(rel in log_text or Path(rel).stem in log_text for rel in gone)

    identity = tmp_path / "identity.json"
    identity.write_text(json.dumps(open_keystore(keystore_copy, PASSPHRASE.encode()).public_identity()))
    report = verify_release(shuffle_copy, read_identity(identity), custody_log=keystore_copy / "custody.log")
    assert report.ok, [c.problems for c in report.checks]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".release")]

    again = run("forget", shuffle_copy, "--path", gone[0], keystore=keystore_copy)
    assert again.exit_code == 0 and "nothing to remove" in again.stdout
    assert load_manifest(shuffle_copy).digest() == after.digest()


def test_forgetting_every_sample_of_a_shard_drops_it(owner, keystore_copy, shuffle_copy):
    dk = keys_of(owner["store"], owner["releases"]["shuffle"])
    manifest = load_manifest(shuffle_copy)
    last_val = manifest.splits["val"][-1]
    ids = {k for k, _ in read_samples(shuffle_copy / last_val.name)}
    paths = [rel for rel in owner["files"] if dk.sample_id(rel) in ids]
    assert len(paths) == last_val.samples == 4
    result = run("forget", shuffle_copy, *[a for rel in paths for a in ("--path", rel)], keystore=keystore_copy)
    assert result.exit_code == 0, result.output
    assert "dropped 1 now-empty shard(s)" in result.stdout
    after = Manifest.load(shuffle_copy / "manifest.json")
    assert last_val.name not in {e.name for e in after.splits["val"]}
    assert not (shuffle_copy / last_val.name).exists()


def test_forget_an_unknown_path_changes_nothing(owner, keystore_copy, shuffle_copy):
    before, log_before = snapshot(shuffle_copy), (keystore_copy / "custody.log").read_bytes()
    known = sorted(owner["files"])[0]
    for path, expected in (("train/coat/never-seen.png", "not in the sealed index of dataset 'fm-shuffle'"),
                           ("../outside.png", "sample path must be relative to the dataset root")):
        error = one_line_error(run("forget", shuffle_copy, "--path", known, "--path", path, keystore=keystore_copy))
        assert expected in error and error.startswith(f"error: {path}: ")
    assert snapshot(shuffle_copy) == before
    assert (keystore_copy / "custody.log").read_bytes() == log_before


def test_forget_refuses_a_tampered_shard(owner, keystore_copy, shuffle_copy):
    dk = keys_of(owner["store"], owner["releases"]["shuffle"])
    rel = sorted(owner["files"])[0]
    name = next(e.name for es in load_manifest(shuffle_copy).splits.values() for e in es
                if dk.sample_id(rel) in {k for k, _ in read_samples(shuffle_copy / e.name)})
    shard = shuffle_copy / name
    data = bytearray(shard.read_bytes())
    data[-2000] ^= 1
    shard.write_bytes(bytes(data))
    before = snapshot(shuffle_copy)
    error = one_line_error(run("forget", shuffle_copy, "--path", rel, keystore=keystore_copy))
    assert f"{name}: sha256 differs from the signed manifest" in error
    assert snapshot(shuffle_copy) == before
