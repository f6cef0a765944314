"""Keystore: sealed round trip, refusal of every bad input with nothing changed, secrets kept in."""
from __future__ import annotations

import json
import pickle
import shutil
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from keys.custody import read_identity, verify_chain
from keys.errors import KeystoreError
from keys.keystore import create_keystore, open_keystore
from keys.passphrase import read_passphrase

PASSPHRASE = b"Quokka-Zebra-7731-unlikely-phrase"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    """One real keystore (scrypt n=2**17 costs ~0.4 s per open, so build it once)."""
    directory = tmp_path_factory.mktemp("owner") / "keystore"
    create_keystore(directory, PASSPHRASE)
    return directory


@pytest.fixture(scope="module")
def store(store_dir):
    return open_keystore(store_dir, PASSPHRASE)


@pytest.fixture()
def store_copy(tmp_path, store_dir) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(store_dir, copy)
    return copy


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _assert_refused(directory: Path, passphrase: bytes, match: str) -> KeystoreError:
    before = _snapshot(directory) if directory.is_dir() else None
    with pytest.raises(KeystoreError, match=match) as info:
        open_keystore(directory, passphrase)
    message = str(info.value)
    assert "\n" not in message and PASSPHRASE.decode() not in message
    if before is not None:
        assert _snapshot(directory) == before
    return info.value


def test_round_trip_keeps_keys_and_derivations(store_dir, store):
    again = open_keystore(store_dir, PASSPHRASE)
    assert (again.signing_key_id, again.public_key, again.created) == (store.signing_key_id, store.public_key, store.created)
    assert store.signing_key_id.startswith("pk-") and len(store.public_key) == 32
    assert store.created.endswith("Z")
    perm = store.dataset_key("fmnist").permutation(196, "train", "0123abcd")
    assert again.dataset_key("fmnist").permutation(196, "train", "0123abcd") == perm
    signature = again.sign(b"manifest bytes")
    Ed25519PublicKey.from_public_bytes(store.public_key).verify(signature, b"manifest bytes")


def test_files_are_private(store_dir):
    assert stat.S_IMODE(store_dir.stat().st_mode) == 0o700
    assert sorted(p.name for p in store_dir.iterdir()) == ["custody.log", "keystore.json"]
    for path in store_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_passphrase_never_lands_in_files_or_reprs(store_dir, store):
    for path in store_dir.iterdir():
        data = path.read_bytes()
        assert PASSPHRASE not in data and PASSPHRASE.hex().encode() not in data
    text = repr(store) + repr(store.dataset_key("fmnist")) + repr(store.custody)
    assert PASSPHRASE.decode() not in text
    with pytest.raises(TypeError):
        pickle.dumps(store)


def test_wrong_passphrase_is_refused_and_changes_nothing(store_dir):
    error = _assert_refused(store_dir, b"Quokka-Zebra-7731-unlikely-phrasE", "wrong passphrase")
    assert error.path.endswith("keystore.json")


def test_truncated_keystore_is_refused(store_copy):
    path = store_copy / "keystore.json"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    _assert_refused(store_copy, PASSPHRASE, r"keystore\.json: not valid JSON")


@pytest.mark.parametrize("field", ["created", "salt", "nonce", "sealed", "key_id", "public_key", "indent"])
def test_one_flipped_byte_anywhere_is_refused(store_copy, field):
    path = store_copy / "keystore.json"
    raw = bytearray(path.read_bytes())
    data = json.loads(raw)
    value = {"salt": data["kdf"]["salt"], "nonce": data["cipher"]["nonce"]}.get(field) or data.get(field)
    position = raw.index(b"\n  ") + 1 if field == "indent" else raw.index(value.encode()) + len(value) // 2
    raw[position] ^= 0x01
    path.write_bytes(bytes(raw))
    _assert_refused(store_copy, PASSPHRASE, r"keystore\.json: ")


def test_rewritten_keystore_is_refused_even_with_the_same_content(store_copy):
    path = store_copy / "keystore.json"
    path.write_text(json.dumps(json.loads(path.read_bytes())))  # same fields, other layout
    _assert_refused(store_copy, PASSPHRASE, "file was edited")


def test_changed_scrypt_parameters_are_refused_before_any_work(store_copy):
    path = store_copy / "keystore.json"
    path.write_bytes(path.read_bytes().replace(b'"n": 131072', b'"n": 1073741824'))
    _assert_refused(store_copy, PASSPHRASE, "unexpected key-derivation parameters")


def test_missing_directory_or_files_are_refused(tmp_path, store_copy):
    _assert_refused(tmp_path / "nowhere", PASSPHRASE, "nowhere: keystore directory not found")
    (tmp_path / "empty").mkdir()
    _assert_refused(tmp_path / "empty", PASSPHRASE, "not a keystore")
    (store_copy / "custody.log").unlink()
    _assert_refused(store_copy, PASSPHRASE, r"custody\.log: custody log missing")


def test_create_refuses_to_overwrite_and_changes_nothing(store_dir, tmp_path):
    before = _snapshot(store_dir)
    with pytest.raises(KeystoreError, match="refusing to overwrite"):
        create_keystore(store_dir, b"another passphrase")
    assert _snapshot(store_dir) == before
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("owner's notes")
    with pytest.raises(KeystoreError, match="not empty"):
        create_keystore(busy, PASSPHRASE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]  # no staging directory left
    with pytest.raises(KeystoreError, match="empty passphrase"):
        create_keystore(tmp_path / "new", b"")
    with pytest.raises(KeystoreError, match="parent directory does not exist"):
        create_keystore(tmp_path / "a" / "b", PASSPHRASE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_create_in_an_existing_empty_directory(tmp_path):
    target = tmp_path / "fresh"
    target.mkdir(mode=0o755)
    created = create_keystore(target, PASSPHRASE)
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert [e["event"] for e in created.custody.entries()] == ["key-created"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh"]


def test_dataset_keys_are_logged_once_and_listed(store_copy):
    first = open_keystore(store_copy, PASSPHRASE)
    a = first.dataset_key("imagenet-2012")
    first.dataset_key("imagenet-2012")
    b = first.dataset_key("coco-2017")
    assert a.dataset_key_id != b.dataset_key_id
    assert a.permutation(196, "train", "x") != b.permutation(196, "train", "x")
    reopened = open_keystore(store_copy, PASSPHRASE)
    assert reopened.dataset_key("imagenet-2012").dataset_key_id == a.dataset_key_id
    derived = [e for e in reopened.custody.entries() if e["event"] == "dataset-derived"]
    assert [e["details"]["dataset_id"] for e in derived].count("imagenet-2012") == 1
    listed = {d["dataset_id"]: d for d in reopened.datasets()}
    assert listed["imagenet-2012"]["key_id"] == a.dataset_key_id
    assert listed["coco-2017"]["commitment"] == b.commitment


def test_public_identity_verifies_the_log_and_holds_no_secret(store_copy, tmp_path):
    owner = open_keystore(store_copy, PASSPHRASE)
    dataset = owner.dataset_key("fmnist")
    owner.log("used-for-job", {"dataset_id": "fmnist", "key_id": dataset.dataset_key_id,
                               "manifest_digest": "ab" * 32})
    identity = owner.public_identity()
    assert set(identity) == {"format", "key_id", "public_key", "created", "datasets",
                             "signing_keys", "custody"}
    assert [d["key_id"] for d in identity["datasets"]] == [dataset.dataset_key_id]
    text = json.dumps(identity)
    assert PASSPHRASE.decode() not in text
    assert dataset.sample_seed("train", "x").hex() not in text
    path = tmp_path / "identity.json"
    path.write_text(text)
    report = verify_chain(store_copy / "custody.log", read_identity(path))
    assert report.ok, report.problems
    assert [e["event"] for e in report.entries] == ["key-created", "dataset-derived", "used-for-job"]


def test_passphrase_precedence_flag_then_file_variable_then_variable(monkeypatch, tmp_path):
    """The explicit flag beats the environment (it once lost to it, silently)."""
    monkeypatch.setenv("PATCHVEIL_PASSPHRASE", "from the environment")
    monkeypatch.setenv("PATCHVEIL_PASSPHRASE_FILE", str(tmp_path / "named"))
    (tmp_path / "pass").write_text("from the flag's file\n")
    (tmp_path / "named").write_text("from the named file\n")
    assert read_passphrase(tmp_path / "pass") == b"from the flag's file"
    assert read_passphrase() == b"from the named file"
    monkeypatch.delenv("PATCHVEIL_PASSPHRASE_FILE")
    assert read_passphrase() == b"from the environment"
    monkeypatch.setenv("PATCHVEIL_PASSPHRASE", "")
    with pytest.raises(KeystoreError, match="PATCHVEIL_PASSPHRASE: empty passphrase"):
        read_passphrase()


def test_passphrase_file_loses_exactly_one_trailing_newline(monkeypatch, tmp_path):
    monkeypatch.delenv("PATCHVEIL_PASSPHRASE", raising=False)
    monkeypatch.delenv("PATCHVEIL_PASSPHRASE_FILE", raising=False)
    for content, expected in [(b"secret words\n", b"secret words"), (b"secret\n\n", b"secret\n"),
                              (b"secret\r\n", b"secret"), (b" padded ", b" padded ")]:
        (tmp_path / "pass").write_bytes(content)
        assert read_passphrase(tmp_path / "pass") == expected
    (tmp_path / "pass").write_bytes(b"\n")
    with pytest.raises(KeystoreError, match="pass: empty passphrase"):
        read_passphrase(tmp_path / "pass")
    with pytest.raises(KeystoreError, match="missing.txt: passphrase file not found"):
        read_passphrase(tmp_path / "missing.txt")


def test_prompt_asks_twice_when_confirming(monkeypatch):
    monkeypatch.delenv("PATCHVEIL_PASSPHRASE", raising=False)
    monkeypatch.delenv("PATCHVEIL_PASSPHRASE_FILE", raising=False)
    answers = iter(["first try", "first try", "one", "two"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert read_passphrase(confirm=True) == b"first try"
    with pytest.raises(KeystoreError) as info:
        read_passphrase(confirm=True)
    assert str(info.value) == "passphrase prompt: the two passphrases do not match"
