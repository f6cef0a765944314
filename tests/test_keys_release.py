"""Key separation (issue 14): every keyed draw comes from a release subkey bound to the whole
cipher spec and a fresh salt; only per-sample seeds reach a worker; releases made before
(derivation 1, the committed fixture) still decrypt, verify, forget and audit.

Each test fails on the code before key separation: there the seeds were HMAC(dataset key,
split ‖ id ‖ view), so a `shuffle` and a `mix-shuffle` release of one dataset id shared every
sample id and permutation, two runs were identical, and Ray got the dataset key itself.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import encrypt.distribute as distribute
import encrypt.main as job_main
from audit.privacy import cases_from_release
from encrypt.ciphers import DerivationError, ShardKeys, cipher_of, mix, release_keys, unshuffle
from encrypt.decode import decode_image
from encrypt.decrypt import decrypt_release
from encrypt.forget import forget_samples
from encrypt.geometry import resize_center_crop
from encrypt.main import encrypt_dataset
from encrypt.sources import InputError, list_imagefolder
from keys.derive import DatasetKey, SampleKeys
from keys.errors import KeystoreError
from keys.index import load_index
from keys.keystore import open_keystore
from releases import job_settings, keys_of, make_keystore, write_imagefolder
from shards.common import canonical_json
from shards.manifest import MANIFEST_NAME, Manifest
from shards.modes import MODES
from shards.reader import iter_samples, load_manifest, verify_shards

FIXTURE = Path(__file__).parent / "fixtures" / "v1-releases"
FIXTURE_PASSPHRASE = b"v1 fixture keystore: not a secret, tests only"  # tests/fixtures/make_v1_releases.py
FIXTURE_MODES = ("shuffle", "mix-shuffle", "mix-shuffle-orient")
DATASET = "fm-same-folder"  # one id for every release: what --dataset-id's default gives


@pytest.fixture(scope="module")
def keystore(tmp_path_factory):
    return make_keystore(tmp_path_factory)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("src") / "fmnist"
    return root, write_imagefolder(root, {"train": 12, "val": 4})


def _settings(mode: str, **overrides):
    return job_settings(mode=mode, sub_patch=2 if MODES[mode].mixes else None, **overrides)


# -- the derivation --------------------------------------------------------------------------

BINDING = {"cipher": {"mode": "shuffle", "patch": 4, "sub_patch": None, "image_size": [32, 32],
                      "stored_size": [32, 32], "format": "png", "quality": None, "channels": 1},
           "task": "classification", "views": 1, "resize": 32}


def _frame(*fields: bytes) -> bytes:
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def test_release_key_follows_the_documented_formula():
    raw, salt = bytes(range(32)), bytes(range(100, 132))
    key = DatasetKey("fm", raw)
    release = key.release_key(BINDING, salt)
    sub = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
               info=b"patchveil/release/v2/" + canonical_json(BINDING)).derive(raw)
    mac = lambda *f: hmac.new(sub, _frame(*f), hashlib.sha256).digest()  # noqa: E731
    assert release.sample_id("train/bag/x.png") == mac(b"v2/id", b"train/bag/x.png").hex()[:24]
    assert release.order_key("train", "abc") == mac(b"v2/order", b"train", b"abc")
    assert release.sample_keys("val", "abc") == SampleKeys(mac(b"v2/perm", b"val", b"abc"),
                                                           mac(b"v2/turn", b"val", b"abc"),
                                                           mac(b"v2/crop", b"val", b"abc"))
    assert release.release_id == hmac.new(raw, _frame(b"release-id", salt), hashlib.sha256).hexdigest()[:24]
    # pinned, so a later change cannot silently make derivation-2 releases undecryptable
    perm = np.asarray(release.permutation(64, "train", "sample-7"), dtype=np.int64)
    assert hashlib.sha256(perm.tobytes()).hexdigest()[:16] == PINNED_V2_PERM


PINNED_V2_PERM = "7eded2363cfc0a6b"  # computed when derivation 2 was introduced; never change


@pytest.mark.parametrize("field, value", [
    ("mode", "mix-shuffle"), ("patch", 8), ("sub_patch", 2), ("image_size", [64, 64]), ("stored_size", [16, 16]),
    ("format", "jpeg"), ("quality", 90), ("channels", 3), ("views", 2), ("resize", 36), ("task", "detection"),
    ("salt", bytes(31) + b"\x01")])
def test_every_bound_setting_and_the_salt_change_every_draw(field, value):
    key = DatasetKey("fm", bytes(range(32)))
    base = key.release_key(BINDING, bytes(32))
    binding, salt = json.loads(json.dumps(BINDING)), bytes(32)
    if field == "salt":
        salt = value
    elif field in binding["cipher"]:
        binding["cipher"][field] = value
    else:
        binding[field] = value
    other = key.release_key(binding, salt)
    assert other.sample_id("train/a.png") != base.sample_id("train/a.png")
    assert other.sample_keys("train", "x") != base.sample_keys("train", "x")
    assert other.permutation(64, "train", "x") != base.permutation(64, "train", "x")
    assert other.order_key("train", "x") != base.order_key("train", "x")


# -- releases of one folder share nothing ----------------------------------------------------

def _draws(keystore, out: Path) -> dict[str, set]:
    """Every keyed draw of a release, per kind, read back as decrypt reads them."""
    keys, manifest = keys_of(keystore, out), load_manifest(out)
    n, turns = MODES[manifest.cipher.mode].draws(manifest.cipher.image_size, manifest.cipher.patch)
    out_draws: dict[str, set] = {k: set() for k in ("id", "perm", "turn", "crop", "order")}
    for split in manifest.splits:
        for sample in iter_samples(out, split):
            seeds = keys.sample_keys(split, sample.key)
            out_draws["id"].add(sample.key)
            out_draws["order"].add(keys.order_key(split, sample.key))
            out_draws["crop"].add(seeds.crop_seed)
            out_draws["perm"].add(tuple(seeds.permutation(64)))  # the length every release below shares
            out_draws["turn"].add(tuple(seeds.orientations(64)))
            secrets = cipher_of(manifest.cipher.mode).secrets(keys, split, sample.key, manifest.cipher)
            assert (secrets.perm is not None) == bool(n) and (secrets.turns is not None) == bool(turns)
    return out_draws


def test_one_folder_in_every_mode_and_twice_shares_no_key_permutation_turn_or_crop(keystore, src, tmp_path):
    root, files = src
    listing = list_imagefolder(root)
    runs = [_settings(m) for m in MODES] + [_settings("shuffle"), _settings("shuffle", views=2, resize=36)]
    draws = []
    for i, settings in enumerate(runs):
        out = tmp_path / f"r{i}"
        encrypt_dataset(listing, out, keystore, DATASET, settings, progress=False)
        assert load_manifest(out).extra["derivation"] == 2
        draws.append(_draws(keystore, out))
    for kind in draws[0]:
        seen: set = set()
        for d in draws:
            assert not (seen & d[kind]), f"a {kind} repeats across two releases of one folder"
            seen |= d[kind]
    # one sealed index keeps every release's salt, each under its manifest's release id
    releases = {load_manifest(tmp_path / f"r{i}").extra["release"] for i in range(len(runs))}
    assert len(releases) == len(runs)


def test_the_shuffle_key_does_not_unshuffle_the_mix_shuffle_release(keystore, src, tmp_path):
    """The red-team case: solve the weak release, apply its permutation to the strong one."""
    root, files = src
    listing = list_imagefolder(root)
    weak, strong = tmp_path / "shuffle", tmp_path / "mix-shuffle"
    encrypt_dataset(listing, weak, keystore, DATASET, _settings("shuffle"), progress=False)
    encrypt_dataset(listing, strong, keystore, DATASET, _settings("mix-shuffle"), progress=False)
    weak_keys, strong_keys = keys_of(keystore, weak), keys_of(keystore, strong)
    recovered = 0
    for rel, path in files.items():
        if not rel.startswith("val/"):
            continue
        plain = resize_center_crop(decode_image(path, 1), 32, 32)
        stored = {s.key: s.image for s in iter_samples(strong, "val")}[strong_keys.sample_id(rel)]
        solved = weak_keys.permutation(64, "val", weak_keys.sample_id(rel))  # what a jigsaw solver finds
        recovered += np.array_equal(unshuffle(stored, solved, 2), mix(plain, 4, 2))
    assert recovered == 0


# -- resume, rebuild, Ray ------------------------------------------------------------------

def test_a_resumed_job_keeps_its_salt_and_a_rebuild_is_byte_identical(keystore, src, tmp_path, monkeypatch):
    root, _ = src
    listing, settings = list_imagefolder(root), _settings("mix-shuffle-orient", shard_samples=4)
    out = tmp_path / "release"
    real = job_main.run_shards

    def dies_after_one(tasks, *args, **kwargs):
        real(tasks[:1], *args, **kwargs)
        raise RuntimeError("killed")

    monkeypatch.setattr(job_main, "run_shards", dies_after_one)
    with pytest.raises(RuntimeError, match="killed"):
        encrypt_dataset(listing, out, keystore, DATASET, settings, progress=False)
    monkeypatch.setattr(job_main, "run_shards", real)
    summary = encrypt_dataset(listing, out, keystore, DATASET, settings, progress=False, resume=True)
    assert summary.resumed_shards == 1
    manifest = load_manifest(out, public_key=keystore.public_key)
    assert verify_shards(out, manifest) == []

    again = tmp_path / "again"
    encrypt_dataset(listing, again, keystore, DATASET, settings, progress=False, rebuild_from=out)
    assert load_manifest(again).splits == manifest.splits and load_manifest(again).extra == manifest.extra
    fresh = tmp_path / "fresh"
    encrypt_dataset(listing, fresh, keystore, DATASET, settings, progress=False)
    assert load_manifest(fresh).extra["release"] != manifest.extra["release"]
    fresh_digests = {e.sha256 for es in load_manifest(fresh).splits.values() for e in es}
    assert not fresh_digests & {e.sha256 for es in manifest.splits.values() for e in es}


def test_rebuild_from_refuses_other_settings_datasets_and_old_releases(keystore, src, tmp_path):
    root, _ = src
    listing = list_imagefolder(root)
    out = tmp_path / "release"
    encrypt_dataset(listing, out, keystore, DATASET, _settings("shuffle"), progress=False)
    cases = [(DATASET, _settings("shuffle", patch=8), out, "other settings"),
             ("another-dataset", _settings("shuffle"), out, "not 'another-dataset'"),
             (DATASET, _settings("mix-shuffle"), out, "other settings")]
    for i, (dataset, settings, release, reason) in enumerate(cases):
        with pytest.raises(InputError, match=reason):
            encrypt_dataset(listing, tmp_path / f"x{i}", keystore, dataset, settings, progress=False,
                            rebuild_from=release)
        assert not (tmp_path / f"x{i}").exists()


def test_no_shard_task_is_given_the_dataset_key_or_the_release_key(keystore, src, tmp_path, monkeypatch):
    """In process and on real Ray workers: pickle what each task gets and search it for key bytes."""
    ray = pytest.importorskip("ray")
    root, _ = src
    listing, settings = list_imagefolder(root), _settings("mix-shuffle-orient", shard_samples=8, views=2, resize=36)
    captured: list[bytes] = []

    real_shard = distribute.encrypt_shard

    def spy_shard(*args):
        captured.append(pickle.dumps(args))
        return real_shard(*args)

    monkeypatch.setattr(distribute, "encrypt_shard", spy_shard)
    local = tmp_path / "local"
    encrypt_dataset(listing, local, keystore, DATASET, settings, progress=False)
    monkeypatch.setattr(distribute, "encrypt_shard", real_shard)

    import ray.cloudpickle as cloudpickle

    real_remote, real_put = ray.remote, ray.put

    def spy_remote(*a, **k):
        decorate = real_remote(*a, **k)

        def wrap(fn):
            remote_fn = decorate(fn)

            class Spy:
                def remote(self, *args):
                    captured.append(cloudpickle.dumps(args))
                    return remote_fn.remote(*args)
            return Spy()
        return wrap

    def spy_put(value, *a, **k):
        captured.append(cloudpickle.dumps(value))
        return real_put(value, *a, **k)

    monkeypatch.setattr(ray, "remote", spy_remote)
    monkeypatch.setattr(ray, "put", spy_put)
    on_ray = tmp_path / "ray"
    encrypt_dataset(listing, on_ray, keystore, DATASET, settings, workers=1, progress=False, rebuild_from=local)
    assert load_manifest(on_ray).splits == load_manifest(local).splits  # same bytes on a worker

    shards = sum(len(es) for es in load_manifest(local).splits.values())
    assert len(captured) >= 2 * shards + 1  # every task on both paths, and Ray's put of the settings
    secrets = {"dataset key": keystore.dataset_key(DATASET)._key, "release key": keys_of(keystore, local)._key}
    leaked = [name for name, secret in secrets.items() if any(secret in blob for blob in captured)]
    assert leaked == []  # names only: a failure must not print key bytes
    # what a task does get: the seeds of its own samples, nothing of another shard's
    seeds = [pickle.loads(b)[2] for b in captured[:shards]]
    assert all(isinstance(s, ShardKeys) for s in seeds)
    first = load_manifest(local).splits["train"][0].name
    other = next(s.key for s in iter_samples(local, "train") if s.key not in _keys_in(local / first))
    with pytest.raises(KeyError, match="not in this shard"):
        seeds[0].sample_keys("train", other)


def _keys_in(shard: Path) -> set[str]:
    import tarfile

    with tarfile.open(shard) as tar:
        return {m.name.partition(".")[0] for m in tar}


# -- releases made before key separation (derivation 1) -------------------------------------

@pytest.fixture()
def v1(tmp_path):
    copy = tmp_path / "v1"
    shutil.copytree(FIXTURE, copy)  # decrypt and forget write the custody log and the index
    return copy, open_keystore(copy / "keystore", FIXTURE_PASSPHRASE)


def test_the_v1_fixture_has_the_flaw_it_documents():
    ids = [{s.key for s in iter_samples(FIXTURE / m, "val")} for m in FIXTURE_MODES]
    assert ids[0] == ids[1] == ids[2]  # one dataset id, three modes: the same sample keys
    assert all("derivation" not in load_manifest(FIXTURE / m).extra for m in FIXTURE_MODES)


@pytest.mark.parametrize("mode", FIXTURE_MODES)
def test_a_v1_release_still_verifies_and_decrypts(v1, mode, tmp_path):
    root, store = v1
    release = root / mode
    manifest = load_manifest(release, public_key=store.public_key)
    assert verify_shards(release, manifest) == []
    assert isinstance(release_keys(store, manifest), DatasetKey)  # derivation 1: the dataset key's own draws
    summary = decrypt_release(release, tmp_path / "back", store, progress=False)
    assert summary.samples == 40 and summary.named_by == "path"
    for rel in load_index(store, manifest.dataset_id).values():
        plain = resize_center_crop(decode_image(root / "src" / rel["rel_path"], 1), 32, 32)
        want = mix(plain, 4, 2) if MODES[mode].mixes else plain
        back = decode_image(tmp_path / "back" / Path(rel["rel_path"]).with_suffix(".png"), 1)
        assert np.array_equal(back, want)


def test_v1_and_v2_releases_share_a_keystore_and_both_decrypt(v1, tmp_path):
    root, store = v1
    v2 = tmp_path / "v2"
    encrypt_dataset(list_imagefolder(root / "src"), v2, store, "fm-fixture", _settings("shuffle"), progress=False)
    index_file = json.loads(next((root / "keystore").glob("index-*.json")).read_text())
    assert index_file["format"] == "patchveil-index/2"  # rewritten with the release table
    assert not {s.key for s in iter_samples(v2, "val")} & {s.key for s in iter_samples(root / "shuffle", "val")}
    for i, release in enumerate((root / "shuffle", v2)):
        assert decrypt_release(release, tmp_path / f"back{i}", store, progress=False).samples == 40
    a, b = (sorted(p.read_bytes() for p in (tmp_path / f"back{i}").rglob("*.png")) for i in (0, 1))
    assert a == b  # both give back the same pictures


def test_forget_and_the_privacy_audit_read_a_v1_release(v1, tmp_path):
    root, store = v1
    release = root / "shuffle"
    cases, cipher = cases_from_release(release, store, root / "src", limit=4, resize=32)
    for case in cases:
        assert np.array_equal(unshuffle(case.stored, case.perm, 4), case.original)
    rel = sorted(e["rel_path"] for e in load_index(store, "fm-fixture").values())[0]
    assert forget_samples(release, store, [rel], progress=False).removed == 1
    assert "derivation" not in load_manifest(release).extra
    assert decrypt_release(release, tmp_path / "back", store, progress=False).samples == 39


def test_a_v2_release_is_forgotten_audited_and_decrypted_with_its_salt(keystore, src, tmp_path):
    root, files = src
    out = tmp_path / "release"
    encrypt_dataset(list_imagefolder(root), out, keystore, DATASET, _settings("shuffle"), progress=False)
    cases, _ = cases_from_release(out, keystore, root, limit=3, resize=32)
    assert len(cases) == 3 and all(np.array_equal(unshuffle(c.stored, c.perm, 4), c.original) for c in cases)
    forget_samples(out, keystore, [sorted(files)[0]], progress=False)
    assert decrypt_release(out, tmp_path / "back", keystore, progress=False).samples == len(files) - 1


def test_an_unknown_derivation_is_refused_by_decrypt(keystore, src, tmp_path):
    root, _ = src
    out = tmp_path / "release"
    encrypt_dataset(list_imagefolder(root), out, keystore, DATASET, _settings("shuffle"), progress=False)
    manifest = load_manifest(out)
    for extra in ({**manifest.extra, "derivation": 3}, {"derivation": 2}, {**manifest.extra, "release": "0" * 24}):
        dataclasses.replace(manifest, extra=extra, public_key=None, signature=None) \
            .signed(keystore.sign, keystore.public_key).save(out / MANIFEST_NAME)
        with pytest.raises((InputError, DerivationError, KeystoreError), match="derivation|no salt"):
            decrypt_release(out, tmp_path / "back", keystore, progress=False)
        assert not (tmp_path / "back").exists()
        assert isinstance(Manifest.load(out / MANIFEST_NAME), Manifest)  # still a loadable manifest
