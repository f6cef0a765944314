"""shards.common: the one atomic write, fsync policy, canonical JSON, base64 and shard name."""
from __future__ import annotations

import ast
import errno
import os
import stat
import sys
from pathlib import Path

import pytest

from releases import make_keystore, make_release
from shards import common
from shards.common import (SHARD_NAME_PATTERN, atomic_write_bytes, atomic_writer, b64decode_canonical,
                           b64encode, canonical_json, fsync_directory, shard_name)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_common_imports_only_the_stdlib():
    """keys imports it: nothing above the stdlib may come in with it."""
    tree = ast.parse(Path(common.__file__).read_text())
    tops = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    tops |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert tops <= set(sys.stdlib_module_names) | {"__future__"}


@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_atomic_write_replaces_the_file_and_sets_the_mode(tmp_path, mode):
    target = tmp_path / "f.json"
    target.write_bytes(b"old")
    atomic_write_bytes(target, b"new", mode)
    assert target.read_bytes() == b"new" and _mode(target) == mode
    assert os.listdir(tmp_path) == ["f.json"]


def test_a_stream_that_fails_midway_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"old checkpoint")
    with pytest.raises(RuntimeError, match="disk gone"):
        with atomic_writer(target, 0o644) as f:
            f.write(b"half of the new one")
            raise RuntimeError("disk gone")
    assert target.read_bytes() == b"old checkpoint"
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_a_failed_rename_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    target.write_bytes(b"signed")

    def refuse(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(common.os, "replace", refuse)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"unsigned")
    assert target.read_bytes() == b"signed"
    assert os.listdir(tmp_path) == ["manifest.json"]


def test_atomic_write_of_a_new_file_in_a_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "nope" / "f", b"x")


def test_the_temp_name_is_the_one_resume_recognises(tmp_path, monkeypatch):
    """encrypt.journal cleans up `.manifest.json.<random>.tmp` after a kill: keep that name."""
    from encrypt.journal import MANIFEST_TEMP_PATTERN

    seen = []
    real_replace = os.replace
    monkeypatch.setattr(common.os, "replace", lambda src, dst: (seen.append(src), real_replace(src, dst)))
    atomic_write_bytes(tmp_path / "manifest.json", b"{}")
    assert MANIFEST_TEMP_PATTERN.match(Path(seen[0]).name)


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOTSUP, errno.EBADF])
def test_fsync_directory_ignores_platforms_that_cannot(tmp_path, monkeypatch, code):
    def fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(common.os, "fsync", fsync)
    fsync_directory(tmp_path)


def test_fsync_directory_raises_real_errors(tmp_path, monkeypatch):
    def fsync(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(common.os, "fsync", fsync)
    with pytest.raises(OSError) as info:
        fsync_directory(tmp_path)
    assert info.value.errno == errno.EIO
    with pytest.raises(FileNotFoundError):
        fsync_directory(tmp_path / "missing")


def test_fsync_directory_works_on_a_real_folder(tmp_path):
    fsync_directory(tmp_path)
    fsync_directory(str(tmp_path))


def test_canonical_json_is_byte_exact():
    value = {"b": [1, 2.5, None, True], "a": {"z": "é", "y": "x"}, "c": ""}
    assert canonical_json(value) == b'{"a":{"y":"x","z":"\\u00e9"},"b":[1,2.5,null,true],"c":""}'
    with pytest.raises(ValueError):
        canonical_json(float("nan"))


def test_keys_and_shards_sign_the_same_canonical_json():
    from keys import custody
    from shards import manifest

    assert custody.canonical_json is canonical_json and manifest.canonical_json is canonical_json


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    store = make_keystore(tmp_path_factory)
    out = tmp_path_factory.mktemp("release") / "out"
    return make_release(out, store, shard_samples=1000), store


def test_a_real_release_signs_canonical_json_and_still_verifies(release):
    manifest, store = release
    unsigned = manifest.to_dict()
    del unsigned["signature"]
    assert manifest.canonical_bytes() == canonical_json(unsigned)
    manifest.verify(store.public_key)
    assert manifest.dataset_key_id == manifest.key_id and manifest.key_id.startswith("pv-")
    assert store.signing_key_id.startswith("pk-")
    assert "key_id" in manifest.to_dict() and "dataset_key_id" not in manifest.to_dict()
    for entries in manifest.splits.values():
        for entry in entries:
            match = SHARD_NAME_PATTERN.match(entry.name)
            assert shard_name(match["split"], int(match["index"])) == entry.name


def test_base64_round_trips_and_refuses_other_spellings():
    raw = bytes(range(33))
    text = b64encode(raw)
    assert isinstance(text, str) and b64decode_canonical(text, 33) == raw
    assert b64decode_canonical(text) == raw
    for bad in ("not base64!", text[:-1], text + "=", "QQ=", "QR=="):  # "QR==" decodes, non-canonically
        with pytest.raises(ValueError):
            b64decode_canonical(bad)
    with pytest.raises(ValueError, match="32 bytes"):
        b64decode_canonical(text, 32)
    with pytest.raises(ValueError):
        b64decode_canonical(b"QQ==")  # type: ignore[arg-type]


@pytest.mark.parametrize("split,index", [("train", 0), ("val", 123456), ("a_b-c", 999_999)])
def test_shard_name_round_trips_the_pattern(split, index):
    name = shard_name(split, index)
    match = SHARD_NAME_PATTERN.match(name)
    assert match and (match["split"], int(match["index"])) == (split, index)


@pytest.mark.parametrize("split,index", [("", 0), ("a/b", 0), ("train", -1), ("train", 1_000_000),
                                         ("train", True), ("train", 1.0)])
def test_shard_name_refuses_what_the_pattern_would_not_match(split, index):
    with pytest.raises(ValueError):
        shard_name(split, index)


def test_the_old_import_paths_still_work():
    from encrypt.plan import ShardTask
    from shards.manifest import SHARD_NAME_PATTERN as from_manifest, atomic_write_bytes as write
    from shards.writer import shard_name as from_writer

    assert from_manifest is SHARD_NAME_PATTERN and write is atomic_write_bytes and from_writer is shard_name
    assert ShardTask("train", 7, ()).name == "train-000007.tar"
