"""DatasetKey: opaque ids, per-sample seeds and permutations, keyed order, sub-keys."""
from __future__ import annotations

import hashlib
import hmac
import pickle
from pathlib import Path, PureWindowsPath

import pytest

from conftest import SAMPLE_DIR
from keys.derive import DatasetKey, dataset_key_id_from_commitment, normalise_path

KEY = hashlib.sha256(b"patchveil test dataset key").digest()
OTHER_KEY = hashlib.sha256(b"another dataset key").digest()


@pytest.fixture(scope="module")
def real_paths() -> list[str]:
    """Relative paths of the real Fashion-MNIST sample files the repo ships."""
    paths = sorted(p.relative_to(SAMPLE_DIR).as_posix() for p in SAMPLE_DIR.glob("*/*/*.png"))
    assert len(paths) >= 1000
    return paths


def _frame(*fields: bytes) -> bytes:
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def test_derivations_follow_the_documented_formulas():
    key = DatasetKey("fmnist", KEY)
    assert key.commitment == hmac.new(KEY, b"patchveil/commitment", hashlib.sha256).hexdigest()
    assert key.dataset_key_id == "pv-" + hashlib.sha256(bytes.fromhex(key.commitment)).hexdigest()[:16]
    assert key.dataset_key_id == dataset_key_id_from_commitment(key.commitment)
    seed = hmac.new(KEY, _frame(b"seed", b"train", b"abc", (2).to_bytes(4, "big")), hashlib.sha256).digest()
    assert key.sample_seed("train", "abc", view=2) == seed
    sid = hmac.new(KEY, _frame(b"id", b"train/bag/x.png"), hashlib.sha256).hexdigest()[:24]
    assert key.sample_id("train/bag/x.png") == sid


def test_same_key_and_sample_give_the_same_permutation_every_time(real_paths):
    a, b = DatasetKey("fmnist", KEY), DatasetKey("fmnist", bytes(KEY))
    for path in real_paths[:50]:
        sid = a.sample_id(path)
        assert sid == b.sample_id(path)
        assert a.permutation(196, "train", sid) == b.permutation(196, "train", sid)
        assert sorted(a.permutation(196, "train", sid)) == list(range(196))


def test_samples_splits_views_and_datasets_each_change_the_permutation(real_paths):
    key, other = DatasetKey("fmnist", KEY), DatasetKey("fmnist-v2", OTHER_KEY)
    sid = key.sample_id(real_paths[0])
    base = key.permutation(196, "train", sid)
    variants = {
        "sample": key.permutation(196, "train", key.sample_id(real_paths[1])),
        "split": key.permutation(196, "val", sid),
        "view": key.permutation(196, "train", sid, view=1),
        "dataset": other.permutation(196, "train", sid),
    }
    for what, perm in variants.items():
        assert perm != base, what
    all_perms = [tuple(key.permutation(196, "train", key.sample_id(p))) for p in real_paths]
    assert len(set(all_perms)) == len(real_paths)


def test_fields_are_framed_so_concatenations_cannot_collide():
    key = DatasetKey("fmnist", KEY)
    assert key.sample_seed("ab", "c") != key.sample_seed("a", "bc")
    assert key.order_key("ab", "c") != key.order_key("a", "bc")
    assert key.sample_seed("train", "abc") != key.order_key("train", "abc")


def test_sample_ids_are_opaque_unique_and_stable_on_real_files(real_paths):
    key = DatasetKey("fmnist", KEY)
    ids = [key.sample_id(p) for p in real_paths]
    assert len(set(ids)) == len(ids)
    assert all(len(sid) == 24 and int(sid, 16) >= 0 for sid in ids)
    # the id depends on the whole path, not the file name alone
    name = Path(real_paths[0]).name
    assert key.sample_id(f"train/bag/{name}") != key.sample_id(f"val/bag/{name}")
    other_ids = [DatasetKey("fmnist", OTHER_KEY).sample_id(p) for p in real_paths]
    assert not set(ids) & set(other_ids)


def test_sample_paths_are_normalised_before_hashing():
    key = DatasetKey("fmnist", KEY)
    sid = key.sample_id("train/bag/train-00042.png")
    assert key.sample_id("./train//bag/./train-00042.png") == sid
    assert key.sample_id(Path("train/bag/train-00042.png")) == sid
    assert key.sample_id(PureWindowsPath("train\\bag\\train-00042.png")) == sid
    assert key.sample_id("train/bag/train-00043.png") != sid
    for bad in ("/etc/passwd", "../outside.png", "", "a/../../b", "a/.."):
        with pytest.raises(ValueError):
            normalise_path(bad)


def test_order_key_gives_a_keyed_order_unrelated_to_paths(real_paths):
    key, other = DatasetKey("fmnist", KEY), DatasetKey("fmnist", OTHER_KEY)
    order = sorted(real_paths, key=lambda p: key.order_key("train", key.sample_id(p)))
    again = sorted(real_paths, key=lambda p: key.order_key("train", key.sample_id(p)))
    other_order = sorted(real_paths, key=lambda p: other.order_key("train", other.sample_id(p)))
    assert order == again
    assert order != real_paths and order != other_order
    # the first tenth of the keyed order mixes classes instead of following the folder layout
    classes = {Path(p).parent.name for p in order[: len(order) // 10]}
    assert len(classes) == 10


def test_subkeys_are_independent_per_purpose():
    key = DatasetKey("fmnist", KEY)
    index_key, other = key.subkey("path-index"), key.subkey("something-else")
    assert len(index_key) == 32 and index_key != other and index_key != KEY
    assert key.subkey("path-index") == index_key
    assert DatasetKey("fmnist", OTHER_KEY).subkey("path-index") != index_key
    with pytest.raises(ValueError):
        key.subkey("")


def test_repr_and_str_never_show_the_key():
    key = DatasetKey("fmnist", KEY)
    for text in (repr(key), str(key), f"{key}"):
        assert KEY.hex()[:12] not in text and "fmnist" in text and key.dataset_key_id in text


def test_keys_refuse_to_be_pickled_and_seeds_pickle_intact():
    # the dataset key and release subkeys never leave the owner's process; workers get seeds
    key = DatasetKey("fmnist", KEY)
    release = key.release_key({"cipher": {"mode": "shuffle"}}, bytes(32))
    for obj in (key, release):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(obj)
    seeds = release.sample_keys("train", "abc")
    copy = pickle.loads(pickle.dumps(seeds))
    assert copy == seeds and copy.permutation(49) == seeds.permutation(49)
    assert KEY.hex()[:12] not in repr(seeds) + repr(release)


@pytest.mark.parametrize("args", [("", KEY), ("fmnist", KEY[:16]), ("fmnist", "k" * 32)])
def test_bad_construction_is_refused(args):
    with pytest.raises(ValueError):
        DatasetKey(*args)


@pytest.mark.parametrize("call", [
    lambda k: k.sample_seed("", "abc"),
    lambda k: k.sample_seed("train", ""),
    lambda k: k.sample_seed("train", "abc", view=-1),
    lambda k: k.permutation(-1, "train", "abc"),
])
def test_bad_arguments_are_refused(call):
    with pytest.raises(ValueError):
        call(DatasetKey("fmnist", KEY))
