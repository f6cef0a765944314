"""Keys over their life: rotation, passphrase change, crypto-erasure, and the CLI for each."""
from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keys import keystore as keystore_module
from keys.cli import cli
from keys.custody import CustodyLog, canonical_json, signing_key_id, verify_chain
from keys.derive import DatasetKey
from keys.errors import KeystoreError
from keys.index import index_path, save_index
from keys.keystore import KEYSTORE_FILE, create_keystore, open_keystore

PASSPHRASE = "Pangolin-Heron-8842-lifecycle"
NEW_PASSPHRASE = "Axolotl-Marmot-1907-after-change"


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A keystore that derived two dataset keys and indexed one of them."""
    directory = tmp_path_factory.mktemp("life") / "keystore"
    store = create_keystore(directory, PASSPHRASE.encode())
    key = store.dataset_key("fm-a")
    store.dataset_key("fm-b")
    save_index(store, "fm-a", {key.sample_id("train/bag/1.png"): {"split": "train",
                                                                 "rel_path": "train/bag/1.png", "view": -1}})
    return directory


@pytest.fixture()
def store_dir(tmp_path, base_dir) -> Path:
    shutil.copytree(base_dir, tmp_path / "keystore")
    return tmp_path / "keystore"


@pytest.fixture()
def store(store_dir):
    return open_keystore(store_dir, PASSPHRASE.encode())


def root_identity(store) -> dict:
    """The identity an auditor got before any rotation: only the first signing key."""
    first = store.signing_keys()[0]
    return {"format": "patchveil-identity/1", **first, "signing_keys": [first]}


def sealed_secrets(directory: Path, passphrase: str) -> dict:
    """Open keystore.json by hand, to check what the file itself still holds."""
    data = json.loads((directory / KEYSTORE_FILE).read_bytes())
    header = {k: v for k, v in data.items() if k != "sealed"}
    key = keystore_module._scrypt(passphrase.encode(), base64.b64decode(data["kdf"]["salt"]))
    plaintext = AESGCM(key).decrypt(base64.b64decode(data["cipher"]["nonce"]),
                                    base64.b64decode(data["sealed"]), canonical_json(header))
    return json.loads(plaintext)


# -- rotation ------------------------------------------------------------------------------

def test_rotation_keeps_old_keys_and_both_keys_sign_the_hand_over(store, store_dir):
    old_id, old_public = store.signing_key_id, store.public_key
    a_before = store.dataset_key("fm-a")
    entry = store.rotate()
    assert entry["event"] == "rotated" and entry["key_id"] == old_id
    assert entry["details"]["old_key_id"] == old_id and entry["details"]["new_key_id"] == store.signing_key_id
    assert store.signing_key_id != old_id and store.public_key != old_public

    # old releases still decrypt: the old dataset key is found by its key id; new ones get a new key
    assert store.dataset_key("fm-a", dataset_key_id=a_before.dataset_key_id).permutation(64, "train", "ab" * 12) == \
        a_before.permutation(64, "train", "ab" * 12)
    a_after = store.dataset_key("fm-a")
    assert a_after.dataset_key_id != a_before.dataset_key_id
    reopened = open_keystore(store_dir, PASSPHRASE.encode())
    assert reopened.signing_key_id == store.signing_key_id
    assert [k["key_id"] for k in reopened.signing_keys()] == [old_id, store.signing_key_id]
    assert reopened.dataset_key("fm-a", dataset_key_id=a_before.dataset_key_id).dataset_key_id == a_before.dataset_key_id
    assert {(d["dataset_id"], d["key_id"]) for d in reopened.datasets()} >= \
        {("fm-a", a_before.dataset_key_id), ("fm-a", a_after.dataset_key_id)}

    # an auditor holding only the pre-rotation identity follows the chain to the new key
    report = verify_chain(store_dir / "custody.log", root_identity(store))
    assert report.ok, report.problems
    assert report.active_key_id == store.signing_key_id
    assert report.signing_keys[store.signing_key_id] == store.public_key
    assert [e["key_id"] for e in report.entries][-1] == store.signing_key_id  # dataset-derived by the new key


def test_identity_after_rotation_lists_every_signing_key(store):
    old_id = store.signing_key_id
    store.rotate()
    identity = store.public_identity()
    assert [k["key_id"] for k in identity["signing_keys"]] == [old_id, store.signing_key_id]
    assert identity["key_id"] == store.signing_key_id
    assert verify_chain(store.custody.path, identity).ok


def _two_key_log(path: Path, cosigner=None):
    """A log created by one key and rotated to another; `cosigner` signs in the new key's place."""
    old, new, log = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate(), CustodyLog(path)
    old_id, new_id = (signing_key_id(k.public_key().public_bytes_raw()) for k in (old, new))
    log.append("key-created", {}, old_id, old.sign)
    log.append("rotated", {"old_key_id": old_id, "new_key_id": new_id,
                           "new_public_key": base64.b64encode(new.public_key().public_bytes_raw()).decode()},
               old_id, old.sign, cosign=(cosigner or new).sign)
    identity = {"format": "patchveil-identity/1", "key_id": old_id,
                "public_key": base64.b64encode(old.public_key().public_bytes_raw()).decode()}
    return log, identity, (old, old_id), (new, new_id)


def test_a_retired_key_cannot_extend_the_log(tmp_path):
    log, identity, (old, old_id), (new, new_id) = _two_key_log(tmp_path / "custody.log")
    log.append("used-for-job", {"manifest_digest": "ab" * 32}, new_id, new.sign)
    assert verify_chain(log.path, identity).ok
    log.append("decrypted", {"samples": 70000}, old_id, old.sign)  # a thief with the retired key
    report = verify_chain(log.path, identity)
    assert report.problems == [f"entry 3: signed by {old_id}, but {new_id} was the signing key in "
                               "office (a retired key cannot extend the log)"]


def test_a_rotation_to_a_key_the_rotator_does_not_hold_is_refused(tmp_path):
    """The outgoing key alone cannot hand the log to someone else's public key."""
    log, identity, _, (new, new_id) = _two_key_log(tmp_path / "custody.log", cosigner=Ed25519PrivateKey.generate())
    log.append("used-for-job", {"manifest_digest": "ab" * 32}, new_id, new.sign)
    report = verify_chain(log.path, identity)
    assert "entry 1: the incoming key's signature on the rotated entry is invalid (the new key was not " \
           "held by whoever rotated)" in report.problems
    assert f"entry 2: signed by unknown key id {new_id!r}" in report.problems


def test_an_interrupted_rotation_is_logged_by_the_next_write(store, store_dir, monkeypatch):
    old_id = store.signing_key_id
    real_append = CustodyLog.append

    def crash_on_rotated(self, event, *args, **kwargs):
        if event == "rotated":
            raise OSError(28, "No space left on device")
        return real_append(self, event, *args, **kwargs)

    monkeypatch.setattr(CustodyLog, "append", crash_on_rotated)
    with pytest.raises(OSError):
        store.rotate()
    monkeypatch.setattr(CustodyLog, "append", real_append)
    reopened = open_keystore(store_dir, PASSPHRASE.encode())
    assert reopened.signing_key_id != old_id  # the new key was sealed before the log entry
    assert "rotated" not in [e["event"] for e in reopened.custody.entries()]
    reopened.log("exported-public", {"identity_sha256": "00" * 32})
    events = [(e["event"], e["key_id"]) for e in reopened.custody.entries()[-2:]]
    assert events == [("rotated", old_id), ("exported-public", reopened.signing_key_id)]
    assert verify_chain(store_dir / "custody.log", root_identity(reopened)).ok


# -- passphrase ----------------------------------------------------------------------------

def test_change_passphrase_reseals_the_same_keys(store, store_dir):
    before = store.dataset_key("fm-b").dataset_key_id
    salt_before = json.loads((store_dir / KEYSTORE_FILE).read_bytes())["kdf"]["salt"]
    store.change_passphrase(NEW_PASSPHRASE.encode())
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        open_keystore(store_dir, PASSPHRASE.encode())
    reopened = open_keystore(store_dir, NEW_PASSPHRASE.encode())
    assert reopened.signing_key_id == store.signing_key_id and reopened.dataset_key("fm-b").dataset_key_id == before
    assert json.loads((store_dir / KEYSTORE_FILE).read_bytes())["kdf"]["salt"] != salt_before
    assert reopened.custody.entries()[-1]["event"] == "passphrase-changed"
    text = (store_dir / KEYSTORE_FILE).read_text() + (store_dir / "custody.log").read_text()
    assert NEW_PASSPHRASE not in text and PASSPHRASE not in text


def test_a_keystore_changed_elsewhere_is_not_overwritten(store, store_dir):
    other = open_keystore(store_dir, PASSPHRASE.encode())
    other.rotate()
    after_other = (store_dir / KEYSTORE_FILE).read_bytes()
    with pytest.raises(KeystoreError, match="changed by another process"):
        store.rotate()
    assert (store_dir / KEYSTORE_FILE).read_bytes() == after_other


# -- destroy -------------------------------------------------------------------------------

def test_destroy_crypto_erases_one_dataset_and_keeps_the_others(store, store_dir):
    a1, b1 = store.dataset_key("fm-a"), store.dataset_key("fm-b")
    store.rotate()
    a2, c2 = store.dataset_key("fm-a"), store.dataset_key("fm-c")
    assert index_path(store, a1.dataset_key_id).exists()

    entry = store.destroy("fm-a")
    assert entry["event"] == "destroyed"
    assert entry["details"] == {"dataset_id": "fm-a", "key_ids": sorted([a1.dataset_key_id, a2.dataset_key_id]),
                                "masters_erased": 2}
    for key_id in (None, a1.dataset_key_id, a2.dataset_key_id):
        with pytest.raises(KeystoreError, match="'fm-a': its key was destroyed on"):
            store.dataset_key("fm-a", dataset_key_id=key_id)
    assert not index_path(store, a1.dataset_key_id).exists()

    reopened = open_keystore(store_dir, PASSPHRASE.encode())
    with pytest.raises(KeystoreError, match="destroyed"):
        reopened.dataset_key("fm-a")
    # the other datasets keep exactly their keys, old generation and current
    assert reopened.dataset_key("fm-b", dataset_key_id=b1.dataset_key_id).commitment == b1.commitment
    assert reopened.dataset_key("fm-c").commitment == c2.commitment
    assert reopened.dataset_key("fm-new").dataset_key_id not in {a1.dataset_key_id, a2.dataset_key_id}

    # and nothing left in the sealed file can derive fm-a's keys again
    secrets = sealed_secrets(store_dir, PASSPHRASE)
    masters = [base64.b64decode(g["master"]) for g in secrets["generations"] if g["master"]]
    assert len(masters) == 1  # the old generation's master is gone; the current one is fresh
    derived = {DatasetKey("fm-a", keystore_module._hkdf(m, "fm-a")).dataset_key_id for m in masters}
    assert not derived & {a1.dataset_key_id, a2.dataset_key_id}
    assert all("fm-a" not in g["pinned"] for g in secrets["generations"])
    assert secrets["destroyed"].keys() == {"fm-a"}
    assert verify_chain(store_dir / "custody.log", root_identity(reopened)).ok


def test_no_secret_shows_in_any_repr_after_rotation_and_destroy(store, store_dir):
    store.rotate()
    store.dataset_key("fm-a")
    store.dataset_key("fm-c")
    store.destroy("fm-a")  # both masters derived fm-a: pinned keys, one erased, one fresh master
    secrets = sealed_secrets(store_dir, PASSPHRASE)
    values = [g[k] for g in secrets["generations"] for k in ("master", "signing_key") if g[k]]
    values += [v for g in secrets["generations"] for v in g["pinned"].values()]
    assert len(values) == 5  # 2 signing keys, 1 fresh master, fm-b and fm-c pinned
    shown = repr(store) + repr(vars(store)) + str(store.public_identity())
    for value in values:
        assert value not in shown and base64.b64decode(value).hex() not in shown
        assert repr(base64.b64decode(value)) not in shown


def test_destroy_refuses_unknown_and_repeated_datasets(store, store_dir):
    with pytest.raises(KeystoreError, match="'never-made': no key of it was ever derived"):
        store.destroy("never-made")
    store.destroy("fm-b")
    with pytest.raises(KeystoreError, match="'fm-b': already destroyed"):
        store.destroy("fm-b")
    assert [e["event"] for e in store.custody.entries()].count("destroyed") == 1


def test_a_format_1_keystore_opens_and_upgrades_on_the_first_change(tmp_path, store_dir):
    """Keystores written before rotation existed hold one master and one signing key."""
    signing_key, master = Ed25519PrivateKey.generate(), bytes(range(32))
    public = signing_key.public_key().public_bytes_raw()
    salt, nonce = bytes(16), bytes(12)
    header = {"format": "patchveil-keystore/1", "created": "2026-01-01T00:00:00Z",
              "key_id": signing_key_id(public), "public_key": base64.b64encode(public).decode(),
              "kdf": {"name": "scrypt", **keystore_module.SCRYPT_PARAMS, "salt": base64.b64encode(salt).decode()},
              "cipher": {"name": "aes-256-gcm", "nonce": base64.b64encode(nonce).decode()}}
    secrets = json.dumps({"master": base64.b64encode(master).decode(),
                          "signing_key": base64.b64encode(signing_key.private_bytes_raw()).decode()}).encode()
    sealed = AESGCM(keystore_module._scrypt(PASSPHRASE.encode(), salt)).encrypt(nonce, secrets, canonical_json(header))
    old = tmp_path / "v1"
    old.mkdir()
    (old / KEYSTORE_FILE).write_bytes(keystore_module._keystore_bytes({**header, "sealed": base64.b64encode(sealed).decode()}))
    CustodyLog(old / "custody.log").append("key-created", {}, header["key_id"], signing_key.sign)

    store = open_keystore(old, PASSPHRASE.encode())
    expected = DatasetKey("fm-old", keystore_module._hkdf(master, "fm-old")).dataset_key_id
    assert store.dataset_key("fm-old").dataset_key_id == expected
    store.rotate()
    assert json.loads((old / KEYSTORE_FILE).read_bytes())["format"] == "patchveil-keystore/2"
    reopened = open_keystore(old, PASSPHRASE.encode())
    assert reopened.dataset_key("fm-old", dataset_key_id=expected).dataset_key_id == expected


# -- the command line ----------------------------------------------------------------------

def run(*args: str, env: dict | None = None, input: str | None = None) -> Result:
    result = CliRunner().invoke(cli, list(args), input=input,
                                env={"PATCHVEIL_PASSPHRASE": PASSPHRASE, "PATCHVEIL_KEYSTORE": None,
                                     "PATCHVEIL_NEW_PASSPHRASE": None, **(env or {})})
    for secret in (PASSPHRASE, NEW_PASSPHRASE):
        assert secret not in result.output and secret not in result.stderr
    return result


def one_line_error(result: Result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_cli_rotate_then_log_verify_and_info(store_dir):
    before = open_keystore(store_dir, PASSPHRASE.encode()).signing_key_id
    result = run("rotate", "--keystore", str(store_dir))
    assert result.exit_code == 0, result.output
    assert f"rotated: {before} retired" in result.stdout and "export-public" in result.stdout
    verified = run("log", "--keystore", str(store_dir), "--verify", "--json")
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.stdout)["entries"][-1]["event"] == "rotated"
    info = run("info", "--keystore", str(store_dir))
    assert f"retired     {before}" in info.stdout


def test_cli_change_passphrase_from_env_and_file(store_dir, tmp_path):
    result = run("change-passphrase", "--keystore", str(store_dir), env={"PATCHVEIL_NEW_PASSPHRASE": NEW_PASSPHRASE})
    assert result.exit_code == 0, result.output
    assert "passphrase changed" in result.stdout
    (tmp_path / "new.txt").write_text(PASSPHRASE + "\n")
    back = run("change-passphrase", "--keystore", str(store_dir), "--new-passphrase-file", str(tmp_path / "new.txt"),
               env={"PATCHVEIL_PASSPHRASE": NEW_PASSPHRASE})
    assert back.exit_code == 0, back.output
    assert open_keystore(store_dir, PASSPHRASE.encode()).custody.entries()[-1]["event"] == "passphrase-changed"
    (tmp_path / "empty.txt").write_text("\n")
    error = one_line_error(run("change-passphrase", "--keystore", str(store_dir),
                               "--new-passphrase-file", str(tmp_path / "empty.txt")))
    assert "empty passphrase" in error


def test_cli_destroy_asks_first_and_then_erases(store_dir):
    before = (store_dir / KEYSTORE_FILE).read_bytes()
    error = one_line_error(run("destroy", "fm-a", "--keystore", str(store_dir)))
    assert "refusing to destroy a key without --yes" in error
    assert (store_dir / KEYSTORE_FILE).read_bytes() == before
    result = run("destroy", "fm-a", "--keystore", str(store_dir), "--yes")
    assert result.exit_code == 0, result.output
    assert "can no longer be decrypted" in result.stdout and "backups" in result.stdout
    error = one_line_error(run("destroy", "fm-a", "--keystore", str(store_dir), "--yes"))
    assert f"{store_dir / KEYSTORE_FILE}: dataset 'fm-a': already destroyed" in error
    info = run("info", "--keystore", str(store_dir))
    assert "fm-a" in info.stdout and "DESTROYED" in info.stdout


def test_cli_wrong_passphrase_is_one_line_and_changes_nothing(store_dir):
    before = {p.name: p.read_bytes() for p in store_dir.iterdir()}
    for command in (["rotate"], ["change-passphrase"], ["destroy", "fm-b", "--yes"]):
        error = one_line_error(run(*command, "--keystore", str(store_dir),
                                   env={"PATCHVEIL_PASSPHRASE": "wrong", "PATCHVEIL_NEW_PASSPHRASE": "x"}))
        assert "wrong passphrase" in error
    assert {p.name: p.read_bytes() for p in store_dir.iterdir()} == before


def test_every_new_command_has_help_with_an_example():
    for command in ("rotate", "change-passphrase", "destroy"):
        result = CliRunner().invoke(cli, [command, "--help"])
        assert result.exit_code == 0 and "Example:" in result.output
