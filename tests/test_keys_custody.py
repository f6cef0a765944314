"""Custody log: a clean chain verifies; every kind of tampering is detected and named."""
from __future__ import annotations

import base64
import json
import multiprocessing
import shutil
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keys.custody import (CustodyLog, canonical_json, line_hash, read_identity,
                          signing_key_id, verify_chain)
from keys.errors import KeystoreError

RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def _public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(*RAW)


def _identity(key: Ed25519PrivateKey, **extra) -> dict:
    signer = {"key_id": signing_key_id(_public(key)),
              "public_key": base64.b64encode(_public(key)).decode()}
    return {"format": "patchveil-identity/1", **signer, "signing_keys": [signer], **extra}


@pytest.fixture(scope="module")
def owner() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


@pytest.fixture(scope="module")
def clean_log(tmp_path_factory, owner) -> Path:
    """A genuine six-entry log, as a keystore writes it."""
    path = tmp_path_factory.mktemp("custody") / "custody.log"
    log, key_id = CustodyLog(path), signing_key_id(_public(owner))
    log.append("key-created", {"public_key": base64.b64encode(_public(owner)).decode()}, key_id, owner.sign)
    log.append("dataset-derived", {"dataset_id": "fmnist", "key_id": "pv-0123456789abcdef"}, key_id, owner.sign)
    log.append("used-for-job", {"manifest_sha256": "ab" * 32, "samples": 500}, key_id, owner.sign)
    log.append("exported-public", {"identity_sha256": "cd" * 32}, key_id, owner.sign)
    log.append("decrypted", {"count": 3}, key_id, owner.sign)
    log.append("used-for-job", {"manifest_sha256": "ef" * 32, "samples": 20}, key_id, owner.sign)
    return path


@pytest.fixture()
def log_copy(tmp_path, clean_log) -> Path:
    path = tmp_path / "custody.log"
    shutil.copyfile(clean_log, path)
    return path


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def _write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def _forged(entry: dict, signer: Ed25519PrivateKey) -> bytes:
    unsigned = {k: v for k, v in entry.items() if k != "sig"}
    return canonical_json({**unsigned, "sig": base64.b64encode(signer.sign(canonical_json(unsigned))).decode()})


def _problems(path: Path, identity: dict) -> str:
    report = verify_chain(path, identity)
    assert not report.ok and report.problems
    return "\n".join(report.problems)


def test_a_genuine_log_verifies(clean_log, owner):
    report = verify_chain(clean_log, _identity(owner))
    assert report.ok, report.problems
    assert [e["seq"] for e in report.entries] == list(range(6))
    assert [e["event"] for e in report.entries][:2] == ["key-created", "dataset-derived"]
    assert report.head == line_hash(_lines(clean_log)[-1])
    for prev_line, entry in zip(_lines(clean_log), report.entries[1:]):
        assert entry["prev"] == line_hash(prev_line)
    assert stat.S_IMODE(clean_log.stat().st_mode) == 0o600


def test_edited_entry_is_named(log_copy, owner):
    lines = _lines(log_copy)
    entry = json.loads(lines[2])
    entry["details"]["samples"] = 499
    lines[2] = canonical_json(entry)
    _write_lines(log_copy, lines)
    problems = _problems(log_copy, _identity(owner))
    assert "entry 2: signature invalid" in problems
    assert "entry 3: prev hash does not match" in problems


def test_deleted_entry_is_named(log_copy, owner):
    lines = _lines(log_copy)
    del lines[2]
    _write_lines(log_copy, lines)
    problems = _problems(log_copy, _identity(owner))
    assert "entry 3 (line 3): seq 3 where 2 was expected" in problems
    assert "prev hash does not match" in problems


def test_reordered_entries_are_named(log_copy, owner):
    lines = _lines(log_copy)
    lines[2], lines[3] = lines[3], lines[2]
    _write_lines(log_copy, lines)
    problems = _problems(log_copy, _identity(owner))
    assert "entry 3 (line 3)" in problems and "entry 2 (line 4)" in problems


def test_truncation_mid_entry_is_named(log_copy, owner):
    data = log_copy.read_bytes()
    log_copy.write_bytes(data[:-40])
    assert "line 6: incomplete last entry" in _problems(log_copy, _identity(owner))


def test_removed_tail_is_caught_by_the_exported_identity(log_copy, owner):
    lines = _lines(log_copy)
    identity = _identity(owner, custody={"entries": 6, "head": line_hash(lines[-1])})
    assert verify_chain(log_copy, identity).ok
    _write_lines(log_copy, lines[:4])
    problems = _problems(log_copy, identity)
    assert "log has 4 entries but had 6 when the identity was exported" in problems


def test_tail_replaced_after_export_is_caught(log_copy, owner):
    lines = _lines(log_copy)
    identity = _identity(owner, custody={"entries": 6, "head": line_hash(lines[-1])})
    # the owner's key rewrites history after the export: still signed, but not what was exported
    entry = json.loads(lines[5])
    entry["details"]["samples"] = 21
    _write_lines(log_copy, lines[:5] + [_forged(entry, owner)])
    assert verify_chain(log_copy, _identity(owner)).ok  # internally consistent...
    assert "entry 5: differs from the entry the identity was exported with" in _problems(log_copy, identity)


def test_entry_appended_without_the_key_is_named(log_copy, owner):
    attacker = Ed25519PrivateKey.generate()
    lines = _lines(log_copy)
    last = json.loads(lines[-1])
    forged = {"seq": 6, "time": last["time"], "event": "decrypted", "details": {"count": 1000},
              "prev": line_hash(lines[-1]), "key_id": last["key_id"], "sig": ""}
    _write_lines(log_copy, lines + [_forged(forged, attacker)])
    assert "entry 6: signature invalid" in _problems(log_copy, _identity(owner))
    # the same entry under the attacker's own key id: not a key the identity knows
    forged["key_id"] = signing_key_id(_public(attacker))
    _write_lines(log_copy, lines + [_forged(forged, attacker)])
    assert "entry 6: signed by unknown key id" in _problems(log_copy, _identity(owner))


def test_entry_inserted_without_the_key_is_named(log_copy, owner):
    attacker = Ed25519PrivateKey.generate()
    lines = _lines(log_copy)
    first = json.loads(lines[1])
    inserted = {**first, "seq": 2, "prev": line_hash(lines[1]), "event": "destroyed",
                "details": {"dataset_id": "fmnist"}}
    _write_lines(log_copy, lines[:2] + [_forged(inserted, attacker)] + lines[2:])
    problems = _problems(log_copy, _identity(owner))
    assert "entry 2: signature invalid" in problems
    assert "entry 2 (line 4)" in problems  # the genuine entry 2 now sits on line 4


def test_time_going_backwards_is_named(log_copy, owner):
    lines = _lines(log_copy)
    backdated = {"seq": 6, "time": "2001-01-01T00:00:00.000000Z", "event": "decrypted",
                 "details": {"count": 1}, "prev": line_hash(lines[-1]),
                 "key_id": signing_key_id(_public(owner)), "sig": ""}
    _write_lines(log_copy, lines + [_forged(backdated, owner)])
    assert "entry 6: time goes backwards" in _problems(log_copy, _identity(owner))


def test_reformatted_line_is_named(log_copy, owner):
    lines = _lines(log_copy)
    lines[5] = json.dumps(json.loads(lines[5]), indent=None).encode()  # spaces after separators
    _write_lines(log_copy, lines)
    assert "entry 5: line is not in canonical form" in _problems(log_copy, _identity(owner))


def test_garbage_line_and_missing_log_are_reported(log_copy, owner, tmp_path):
    lines = _lines(log_copy)
    lines[1] = b"not json at all"
    _write_lines(log_copy, lines)
    assert "line 2: not a valid custody entry" in _problems(log_copy, _identity(owner))
    assert "custody log not found" in _problems(tmp_path / "absent.log", _identity(owner))


def test_append_continues_the_chain(log_copy, owner):
    entry = CustodyLog(log_copy).append("used-for-job", {"manifest_sha256": "12" * 32},
                                        signing_key_id(_public(owner)), owner.sign)
    assert entry["seq"] == 6 and entry["prev"] == line_hash(_lines(log_copy)[5])
    assert verify_chain(log_copy, _identity(owner)).ok


def test_append_refuses_a_damaged_tail_and_changes_nothing(log_copy, owner):
    key_id = signing_key_id(_public(owner))
    lines = _lines(log_copy)
    log_copy.write_bytes(log_copy.read_bytes()[:-10])  # cut mid-entry
    before = log_copy.read_bytes()
    with pytest.raises(KeystoreError, match="custody.log: last entry is incomplete"):
        CustodyLog(log_copy).append("decrypted", {"count": 1}, key_id, owner.sign)
    assert log_copy.read_bytes() == before
    _write_lines(log_copy, lines[:3] + lines[4:5])  # entry 3 cut out: entry 4 no longer links
    before = log_copy.read_bytes()
    with pytest.raises(KeystoreError, match="entry 4 does not link"):
        CustodyLog(log_copy).append("decrypted", {"count": 1}, key_id, owner.sign)
    assert log_copy.read_bytes() == before


def test_append_refuses_unknown_events(log_copy, owner):
    with pytest.raises(ValueError, match="unknown custody event"):
        CustodyLog(log_copy).append("made-up", {}, "pk-x", owner.sign)


def _append_many(path: str, private: bytes, count: int) -> None:
    key = Ed25519PrivateKey.from_private_bytes(private)
    log = CustodyLog(path)
    for i in range(count):
        log.append("used-for-job", {"n": i}, signing_key_id(_public(key)), key.sign)


def test_concurrent_appends_keep_one_valid_chain(log_copy, owner):
    private = owner.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                  serialization.NoEncryption())
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_append_many, args=(str(log_copy), private, 15)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
        assert w.exitcode == 0
    report = verify_chain(log_copy, _identity(owner))
    assert report.ok, report.problems
    assert [e["seq"] for e in report.entries] == list(range(6 + 60))


def test_entries_refuses_a_malformed_log(log_copy):
    log_copy.write_bytes(log_copy.read_bytes() + b"{oops}\n")
    with pytest.raises(KeystoreError, match="line 7 is not a valid custody entry"):
        CustodyLog(log_copy).entries()


def test_identity_cannot_name_a_key_by_another_id(owner, clean_log):
    identity = _identity(owner)
    identity["signing_keys"][0]["key_id"] = "pk-0000000000000000"
    with pytest.raises(KeystoreError, match="not the fingerprint"):
        verify_chain(clean_log, identity)


def test_read_identity_checks_the_file(tmp_path, owner):
    good = tmp_path / "identity.json"
    good.write_text(json.dumps(_identity(owner)))
    assert read_identity(good)["key_id"] == signing_key_id(_public(owner))
    bad = tmp_path / "broken.json"
    bad.write_text(good.read_text()[:-5])
    with pytest.raises(KeystoreError, match=r"broken\.json: not valid JSON"):
        read_identity(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({**_identity(owner), "format": "something/1"}))
    with pytest.raises(KeystoreError, match=r"wrong\.json: not a patchveil-identity/1 file"):
        read_identity(wrong)
