"""Signed checkpoints of the custody log, end to end: the owner signs one (`dataset-keys
checkpoint`), the auditor keeps it, and `audit-shards verify --checkpoint` proves the log
given later extends it. Cutting, rewriting or forking what the auditor saw, and a checkpoint
with a bad signature or by another key, each fail verify (exit 1) with the failure named;
a log that only grew passes."""
from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit.cli import cli as audit_cli
from audit.verify import CHECKS, verify_release
from encrypt.main import encrypt_dataset
from encrypt.sources import list_imagefolder
from keys.checkpoint import format_checkpoint, parse_checkpoint
from keys.cli import cli as keys_cli
from keys.custody import CustodyLog, canonical_json, line_hash, read_identity
from keys.keystore import create_keystore, open_keystore
from releases import job_settings, write_imagefolder

PASSPHRASE = "Caracal-Dugong-2718-checkpoints"


@dataclass
class Audited:
    store: object
    keystore: Path
    release: Path
    identity: Path
    checkpoint: Path     # what the auditor kept, at `size` entries
    size: int
    log: Path            # the log as it is now: it grew after the checkpoint


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> Audited:
    """A release, an identity exported after it, two more entries, then a checkpoint (via the
    CLI), then the log grows by two entries more."""
    base = tmp_path_factory.mktemp("checkpoint")
    write_imagefolder(base / "src", {"train": 12, "val": 4})
    store = create_keystore(base / "keystore", PASSPHRASE.encode())
    encrypt_dataset(list_imagefolder(base / "src"), base / "release", store, "fm-cp", job_settings(),
                    progress=False)
    (base / "identity.json").write_text(json.dumps(store.public_identity()))
    store.log("decrypted", {"samples": 3})
    store.log("decrypted", {"samples": 4})
    result = CliRunner().invoke(keys_cli, ["checkpoint", "--keystore", str(base / "keystore"),
                                           "-o", str(base / "kept.txt")],
                                env={"PATCHVEIL_PASSPHRASE": PASSPHRASE, "PATCHVEIL_KEYSTORE": None})
    assert result.exit_code == 0, result.output
    size = len(store.custody.entries())
    store.log("decrypted", {"samples": 5})
    store.log("decrypted", {"samples": 6})
    return Audited(store, base / "keystore", base / "release", base / "identity.json", base / "kept.txt",
                   size, store.custody.path)


def lines_of(log: Path) -> list[bytes]:
    return log.read_bytes().split(b"\n")[:-1]


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def audit(a: Audited, log: Path, checkpoint: Path) -> tuple[int, dict]:
    """`audit-shards verify --json` through the CLI: exit code and report."""
    result = CliRunner().invoke(audit_cli, ["verify", str(a.release), "--public-key", str(a.identity),
                                            "--custody-log", str(log), "--checkpoint", str(checkpoint),
                                            "--json"])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def failed(report: dict) -> dict[str, str]:
    return {c["name"]: "\n".join(c["problems"]) for c in report["checks"] if c["status"] == "fail"}


# -- the format ----------------------------------------------------------------------------

def test_the_checkpoint_is_a_c2sp_signed_note_of_size_and_head(audited):
    """Checked against the spec by hand, not through keys.checkpoint's own parser."""
    data = audited.checkpoint.read_bytes()
    text, _, signatures = data.partition(b"\n\n")
    origin, size, head = text.decode().split("\n")
    root = audited.store.signing_keys()[0]["key_id"]
    assert origin == f"patchveil/custody/{root}"
    assert int(size) == audited.size
    assert base64.b64decode(head).hex() == line_hash(lines_of(audited.log)[audited.size - 1])
    match = re.fullmatch(r"\u2014 (\S+) (\S+)\n", signatures.decode())
    assert match, signatures
    name, blob = match.group(1), base64.b64decode(match.group(2))
    assert name == f"patchveil/custody/{audited.store.signing_key_id}"
    public = audited.store.public_key
    assert blob[:4] == hashlib.sha256(name.encode() + b"\n\x01" + public).digest()[:4]
    Ed25519PublicKey.from_public_bytes(public).verify(blob[4:], text + b"\n")


def test_issuing_a_checkpoint_logs_nothing_and_prints_to_stdout(audited, tmp_path):
    """A checkpoint attests the log's size, so issuing one must not change it."""
    copy = tmp_path / "keystore"
    shutil.copytree(audited.keystore, copy)
    before = (copy / "custody.log").read_bytes()
    result = CliRunner().invoke(keys_cli, ["checkpoint", "--keystore", str(copy)],
                                env={"PATCHVEIL_PASSPHRASE": PASSPHRASE, "PATCHVEIL_KEYSTORE": None})
    assert result.exit_code == 0, result.output
    assert (copy / "custody.log").read_bytes() == before
    printed = parse_checkpoint(result.stdout.encode(), "stdout")
    assert printed.size == len(lines_of(copy / "custody.log"))


def test_the_owner_refuses_to_checkpoint_a_damaged_log(audited, tmp_path):
    copy = tmp_path / "keystore"
    shutil.copytree(audited.keystore, copy)
    lines = lines_of(copy / "custody.log")
    entry = json.loads(lines[1])
    entry["details"]["samples"] = 999
    write_lines(copy / "custody.log", lines[:1] + [canonical_json(entry)] + lines[2:])
    result = CliRunner().invoke(keys_cli, ["checkpoint", "--keystore", str(copy), "-o", str(tmp_path / "c.txt")],
                                env={"PATCHVEIL_PASSPHRASE": PASSPHRASE, "PATCHVEIL_KEYSTORE": None})
    assert result.exit_code == 2 and result.stdout == ""
    assert "refusing to sign a checkpoint" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "c.txt").exists()


# -- the auditor ---------------------------------------------------------------------------

def test_a_log_that_only_grew_passes(audited):
    code, report = audit(audited, audited.log, audited.checkpoint)
    assert code == 0 and report["ok"], failed(report)
    assert [c["name"] for c in report["checks"]] == [*CHECKS, "checkpoint"]
    summary = report["checks"][-1]["summary"]
    assert f"extends the checkpoint of {audited.size} entries" in summary and "2 entries added since" in summary
    table = CliRunner().invoke(audit_cli, ["verify", str(audited.release), "--public-key", str(audited.identity),
                                           "--custody-log", str(audited.log), "--checkpoint",
                                           str(audited.checkpoint)])
    assert table.exit_code == 0 and "verified: 6 of 6 checks passed" in table.stdout


def test_a_log_cut_after_the_checkpoint_is_named_truncated(audited, tmp_path):
    """Above the identity's exported length, so only the checkpoint can see the cut."""
    log = write_lines(tmp_path / "custody.log", lines_of(audited.log)[:audited.size - 1])
    code, report = audit(audited, log, audited.checkpoint)
    assert code == 1 and set(failed(report)) == {"checkpoint"}
    assert failed(report)["checkpoint"].startswith(
        f"truncated: the log has {audited.size - 1} entries, the checkpoint you kept attests {audited.size}")


def test_a_rewritten_tail_is_named_rewritten(audited, tmp_path):
    lines = lines_of(audited.log)
    last = json.loads(lines[audited.size - 1])
    last["details"]["samples"] = 40
    lines[audited.size - 1] = canonical_json(last)
    code, report = audit(audited, write_lines(tmp_path / "custody.log", lines), audited.checkpoint)
    assert code == 1 and set(failed(report)) == {"custody-log", "checkpoint"}
    assert failed(report)["checkpoint"].startswith(f"rewritten: entry {audited.size - 1} differs")


def test_a_fork_is_named_forked(audited, tmp_path):
    """Two continuations of one prefix, both signed by the owner's key: the auditor holds a
    checkpoint of fork A and is shown fork B, a log that verifies on its own."""
    prefix = lines_of(audited.log)[:audited.size - 2]
    store = audited.store
    fork_a = CustodyLog(write_lines(tmp_path / "a.log", prefix))
    fork_b = CustodyLog(write_lines(tmp_path / "b.log", prefix))
    for samples in (7, 8):
        fork_a.append("decrypted", {"samples": samples}, store.signing_key_id, store.sign)
    for samples in (9, 10, 11):
        fork_b.append("decrypted", {"samples": samples}, store.signing_key_id, store.sign)
    head = line_hash(lines_of(fork_a.path)[-1])
    kept = tmp_path / "a.txt"
    kept.write_bytes(format_checkpoint(store.signing_keys()[0]["key_id"], len(lines_of(fork_a.path)), head,
                                       store.signing_key_id, store.public_key, store.sign))
    assert audit(audited, fork_a.path, kept)[0] == 0
    code, report = audit(audited, fork_b.path, kept)
    assert code == 1 and set(failed(report)) == {"checkpoint"}
    assert failed(report)["checkpoint"].startswith(f"forked: entry {audited.size - 1} differs")


def test_a_checkpoint_with_a_bad_signature_is_named(audited, tmp_path):
    """The size edited down (to excuse a cut) and a flipped signature byte both fail."""
    data = audited.checkpoint.read_bytes()
    edited = tmp_path / "edited.txt"
    edited.write_bytes(data.replace(f"\n{audited.size}\n".encode(), f"\n{audited.size - 1}\n".encode(), 1))
    text, _, line = data.partition(b"\n\n")
    dash, name, blob = line.decode().split()
    raw = bytearray(base64.b64decode(blob))
    raw[10] ^= 1
    flipped = tmp_path / "flipped.txt"
    flipped.write_bytes(text + b"\n\n" + f"{dash} {name} {base64.b64encode(raw).decode()}\n".encode())
    for checkpoint in (edited, flipped):
        code, report = audit(audited, audited.log, checkpoint)
        assert code == 1 and set(failed(report)) == {"checkpoint"}
        assert failed(report)["checkpoint"].startswith("bad signature:")


def test_a_checkpoint_from_another_key_is_named(audited, tmp_path):
    """Another keystore's key signs a checkpoint naming this log: not the owner's word."""
    other = create_keystore(tmp_path / "other", b"another owner entirely")
    lines = lines_of(audited.log)
    forged = tmp_path / "forged.txt"
    forged.write_bytes(format_checkpoint(audited.store.signing_keys()[0]["key_id"], len(lines),
                                         line_hash(lines[-1]), other.signing_key_id, other.public_key, other.sign))
    code, report = audit(audited, audited.log, forged)
    assert code == 1 and set(failed(report)) == {"checkpoint"}
    expected = f"unknown key: signed by patchveil/custody/{other.signing_key_id}"
    assert failed(report)["checkpoint"].startswith(expected)
    theirs = tmp_path / "theirs.txt"
    theirs.write_bytes(other.checkpoint())
    problems = failed(audit(audited, audited.log, theirs)[1])["checkpoint"]
    assert "unknown key:" in problems and "another log:" in problems


def test_checkpoints_before_and_after_a_rotation_verify_with_the_old_identity(tmp_path):
    """The origin names the log by its first key, so it survives a rotation; the new key
    signs later checkpoints and the log hands it over."""
    write_imagefolder(tmp_path / "src", {"train": 8})
    store = create_keystore(tmp_path / "keystore", PASSPHRASE.encode())
    encrypt_dataset(list_imagefolder(tmp_path / "src"), tmp_path / "release", store, "fm", job_settings(),
                    progress=False)
    (tmp_path / "identity.json").write_text(json.dumps(store.public_identity()))
    identity = read_identity(tmp_path / "identity.json")
    before = parse_checkpoint(store.checkpoint(), "before")
    store.rotate()
    after = parse_checkpoint(store.checkpoint(), "after")
    assert before.origin == after.origin
    for kept in (before, after):
        report = verify_release(tmp_path / "release", identity, custody_log=store.custody.path,
                                checkpoint=kept, progress=False)
        assert report.ok, [(c.name, c.problems) for c in report.checks]
    reopened = open_keystore(tmp_path / "keystore", PASSPHRASE.encode())
    assert reopened.signing_key_id == after.signatures[0].key_name.rsplit("/", 1)[1]


def test_bad_usage_is_one_line_and_exit_2(audited, tmp_path):
    (tmp_path / "junk.txt").write_text("not a checkpoint\n")
    kept = audited.checkpoint.read_bytes()
    (tmp_path / "zero.txt").write_bytes(kept.replace(f"\n{audited.size}\n".encode(), b"\n0\n", 1))
    cases = {"no log": ["--checkpoint", str(audited.checkpoint)],
             "size 0": ["--custody-log", str(audited.log), "--checkpoint", str(tmp_path / "zero.txt")],
             "junk": ["--custody-log", str(audited.log), "--checkpoint", str(tmp_path / "junk.txt")],
             "missing": ["--custody-log", str(audited.log), "--checkpoint", str(tmp_path / "absent.txt")]}
    for args in cases.values():
        result = CliRunner().invoke(audit_cli, ["verify", str(audited.release), "--public-key",
                                                str(audited.identity), *args])
        assert result.exit_code == 2 and result.stdout == "", result.output
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: ")
