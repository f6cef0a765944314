"""audit-shards verify on real releases of Fashion-MNIST: a clean release passes, and every
tampering the issue lists fails with the check that caught it named."""
from __future__ import annotations

import base64
import dataclasses
import io
import json
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image

from audit.cli import cli
from audit.verify import CHECKS, VerifyReport, verify_release
from encrypt.main import encrypt_dataset
from encrypt.sources import list_imagefolder
from keys.custody import CustodyLog, canonical_json, line_hash, read_identity
from keys.keystore import create_keystore
from shards.manifest import Manifest, ShardEntry
from shards.reader import count_samples, sha256_file
from shards.writer import ShardWriter
from releases import job_settings as settings, read_samples, write_imagefolder

PASSPHRASE = b"Tamarin-Gecko-6620-audit-tests"
BIN = Path(sys.executable).parent


@dataclass
class Owner:
    store: object
    release: Path       # shuffle, PNG, 56 samples in 5 shards
    other: Path         # the same images under another dataset key
    jpeg: Path          # mix-shuffle, JPEG
    identity: Path
    log: Path


@pytest.fixture(scope="module")
def owner(tmp_path_factory) -> Owner:
    base = tmp_path_factory.mktemp("audit")
    write_imagefolder(base / "src", {"train": 40, "val": 16})
    listing = list_imagefolder(base / "src")
    store = create_keystore(base / "keystore", PASSPHRASE)
    encrypt_dataset(listing, base / "release", store, "fm-audit", settings(shard_samples=12), progress=False)
    encrypt_dataset(listing, base / "other", store, "fm-other", settings(shard_samples=12), progress=False)
    encrypt_dataset(listing, base / "jpeg", store, "fm-jpeg",
                    settings(mode="mix-shuffle", sub_patch=2, format="jpeg", quality=90, shard_samples=30),
                    progress=False)
    identity = base / "identity.json"
    identity.write_text(json.dumps(store.public_identity()))
    return Owner(store, base / "release", base / "other", base / "jpeg", identity, store.custody.path)


@pytest.fixture()
def case(tmp_path, owner) -> tuple[Path, Path]:
    """A private copy of the release and of the custody log, to tamper with."""
    shutil.copytree(owner.release, tmp_path / "release")
    shutil.copyfile(owner.log, tmp_path / "custody.log")
    return tmp_path / "release", tmp_path / "custody.log"


def verify(owner: Owner, out: Path, log: Path | None) -> VerifyReport:
    return verify_release(out, read_identity(owner.identity), custody_log=log, progress=False)


def failures(report: VerifyReport) -> dict[str, str]:
    """Failed check name → its problems, one per line."""
    return {c.name: "\n".join(c.problems) for c in report.checks if c.status == "fail"}


# -- helpers that tamper like an attacker or a careless tool would -------------------------

def rewrite_shard(shard: Path, edit) -> None:
    """Write the shard again with `edit(samples)` applied, through the real shard writer."""
    samples = read_samples(shard)
    edit(samples)
    split, index = shard.stem.rsplit("-", 1)
    with ShardWriter(shard.parent, split, int(index)) as writer:
        for key, members in samples:
            ext = "png" if "png" in members else "jpg"
            writer.write(key, members[ext], ext, cls=int(members["cls"]),
                         meta=json.loads(members["json"]) if "json" in members else None)


def reissue(owner: Owner, out: Path, log: Path, *, refresh_info: bool = False, **changes) -> Manifest:
    """The owner's key signs OUT as it now is and the log vouches for it, so only the content
    checks stand between the tampering and a passing audit. `refresh_info`: also rewrite the
    signed `_info.json` for the new counts, as the job would."""
    manifest = Manifest.load(out / "manifest.json")
    splits = {split: [ShardEntry(e.name, sha256_file(out / e.name), (out / e.name).stat().st_size,
                                 count_samples(out / e.name)) for e in entries]
              for split, entries in manifest.splits.items()}
    new = dataclasses.replace(manifest, splits=splits, public_key=None, signature=None, **changes)
    if refresh_info and new.info_sha256 is not None:
        from shards.info import INFO_NAME, info_bytes, info_sha256

        info = info_bytes(new)
        (out / INFO_NAME).write_bytes(info)
        new = dataclasses.replace(new, info_sha256=info_sha256(info))
    new = new.signed(owner.store.sign, owner.store.public_key)
    new.save(out / "manifest.json")
    CustodyLog(log).append("used-for-job", {"dataset_id": new.dataset_id, "key_id": new.dataset_key_id,
                                            "manifest_digest": new.digest()},
                           owner.store.signing_key_id, owner.store.sign)
    return new


def log_lines(log: Path) -> list[bytes]:
    return log.read_bytes().split(b"\n")[:-1]


def write_lines(log: Path, lines: list[bytes]) -> None:
    log.write_bytes(b"".join(line + b"\n" for line in lines))


def edit_manifest(out: Path, edit) -> None:
    data = json.loads((out / "manifest.json").read_text())
    edit(data)
    (out / "manifest.json").write_text(json.dumps(data, indent=2))


def png_with_exif(png: bytes) -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "holiday at the lake"
    buf = io.BytesIO()
    with Image.open(io.BytesIO(png)) as img:
        img.save(buf, "PNG", exif=exif)
    return buf.getvalue()


# -- a genuine release ---------------------------------------------------------------------

def test_a_genuine_release_passes_every_check(owner):
    report = verify(owner, owner.release, owner.log)
    assert report.ok and [c.name for c in report.checks] == list(CHECKS)
    assert {c.status for c in report.checks} == {"pass"}
    summaries = {c.name: c.summary for c in report.checks}
    assert "56 samples" in summaries["sample-contents"]
    assert "used-for-job entry" in summaries["custody-log"]
    assert "fm-audit" in summaries["key-id"]
    jpeg = verify(owner, owner.jpeg, owner.log)
    assert jpeg.ok, failures(jpeg)


def test_without_a_custody_log_that_check_is_skipped_not_passed(owner):
    report = verify(owner, owner.release, None)
    assert report.ok
    assert {c.name: c.status for c in report.checks}["custody-log"] == "skip"


# -- shard files ---------------------------------------------------------------------------

def test_a_flipped_label_byte_is_caught_by_the_digest(owner, case):
    out, log = case
    shard = out / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    with tarfile.open(shard) as tar:
        cls = next(m for m in tar if m.name.endswith(".cls"))
    data[cls.offset_data] = ord("9") if data[cls.offset_data] != ord("9") else ord("8")
    shard.write_bytes(bytes(data))  # a still-valid shard that now teaches a wrong label
    failed = failures(verify(owner, out, log))
    assert set(failed) == {"shard-files"}
    assert "train-000001.tar: sha256" in failed["shard-files"]


def test_a_flipped_byte_anywhere_fails_shard_files(owner, case):
    out, log = case
    shard = out / "val-000000.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert "shard-files" in failures(verify(owner, out, log))


def test_a_removed_shard_is_named(owner, case):
    out, log = case
    (out / "train-000002.tar").unlink()
    failed = failures(verify(owner, out, log))
    assert set(failed) == {"shard-files"} and "train-000002.tar: missing" in failed["shard-files"]


def test_an_added_shard_is_named(owner, case):
    out, log = case
    shutil.copyfile(owner.other / "train-000000.tar", out / "train-000099.tar")
    failed = failures(verify(owner, out, log))
    assert set(failed) == {"shard-files"}
    assert "train-000099.tar: shard present but not listed in the manifest" in failed["shard-files"]


def test_a_shard_replaced_by_one_from_another_release_is_named(owner, case):
    out, log = case
    shutil.copyfile(owner.other / "train-000000.tar", out / "train-000000.tar")
    failed = failures(verify(owner, out, log))
    assert set(failed) == {"shard-files"}  # its samples are genuine, just not this release's
    assert "train-000000.tar: sha256" in failed["shard-files"]


def test_a_truncated_shard_is_named(owner, case):
    out, log = case
    shard = out / "val-000001.tar"
    shard.write_bytes(shard.read_bytes()[:1500])
    failed = failures(verify(owner, out, log))
    assert "val-000001.tar: truncated" in failed["shard-files"]


# -- the manifest --------------------------------------------------------------------------

@pytest.mark.parametrize("what, edit, also", [
    ("count", lambda m: m["splits"]["train"][0].update(samples=m["splits"]["train"][0]["samples"] + 1),
     {"shard-files"}),
    ("cipher", lambda m: m["cipher"].update(patch=8), set()),
    ("digest", lambda m: m["splits"]["val"][0].update(sha256="0" * 64), {"shard-files"}),
])
def test_an_edited_manifest_fails_its_signature(owner, case, what, edit, also):
    out, log = case
    edit_manifest(out, edit)
    failed = failures(verify(owner, out, log))
    # the edited manifest is not the one the owner logged either
    assert set(failed) == {"manifest-signature", "custody-log"} | also
    assert "signature: does not match" in failed["manifest-signature"]
    assert "no used-for-job or forgotten entry records this manifest's digest" in failed["custody-log"]


def test_a_manifest_re_signed_with_an_attackers_key_is_named(owner, case):
    out, log = case
    attacker = Ed25519PrivateKey.generate()
    manifest = Manifest.load(out / "manifest.json")
    forged = dataclasses.replace(manifest, class_names=list(reversed(manifest.class_names)),
                                 public_key=None, signature=None)
    forged.signed(attacker.sign, attacker.public_key().public_bytes_raw()).save(out / "manifest.json")
    assert Manifest.load(out / "manifest.json").verify() is None  # valid under the key it names
    failed = failures(verify(owner, out, log))
    # the owner's signed _info.json still lists the real class order, so it no longer matches
    assert set(failed) == {"manifest-signature", "custody-log", "shard-files"}
    assert "a key the exported identity does not list" in failed["manifest-signature"]
    assert "_info.json: does not describe the manifest" in failed["shard-files"]


def test_an_unreadable_manifest_fails_every_check_that_needs_it(owner, case):
    out, log = case
    (out / "manifest.json").write_text('{"format_version": 1, "task": ')
    failed = failures(verify(owner, out, log))
    assert set(failed) == set(CHECKS)
    assert "no readable manifest" in failed["shard-files"]


def test_a_key_id_the_identity_does_not_know_is_named(owner, case):
    out, log = case
    reissue(owner, out, log, key_id="pv-00000000deadbeef")
    failed = failures(verify(owner, out, log))
    assert set(failed) == {"key-id"}
    assert "pv-00000000deadbeef of dataset 'fm-audit' is not among the identity's datasets" in failed["key-id"]


# -- the custody log -----------------------------------------------------------------------

def _edit_entry(lines: list[bytes]) -> list[bytes]:
    entry = json.loads(lines[2])
    entry["details"]["samples"] = 5
    return lines[:2] + [canonical_json(entry)] + lines[3:]


def _append_forged(lines: list[bytes]) -> list[bytes]:
    last = json.loads(lines[-1])
    forged = {**last, "seq": last["seq"] + 1, "prev": line_hash(lines[-1]), "event": "decrypted",
              "details": {"samples": 56}}
    unsigned = {k: v for k, v in forged.items() if k != "sig"}
    forged["sig"] = base64.b64encode(Ed25519PrivateKey.generate().sign(canonical_json(unsigned))).decode()
    return lines + [canonical_json(forged)]


@pytest.mark.parametrize("tamper, expected", [
    ("edited", "entry 2: signature invalid"),
    ("deleted", "where 1 was expected: an entry was deleted"),
    ("reordered", "prev hash does not match"),
    ("appended", "signature invalid (entry edited, or signed without the key)"),
    ("truncated mid-entry", "incomplete last entry (log truncated mid-entry)"),
    ("truncated to before the job", "no used-for-job or forgotten entry records this manifest"),
])
def test_a_tampered_custody_log_is_named(owner, case, tamper, expected):
    out, log = case
    lines = log_lines(log)
    job = next(i for i, line in enumerate(lines) if b'"used-for-job"' in line)
    if tamper == "edited":
        lines = _edit_entry(lines)
    elif tamper == "deleted":
        lines = lines[:1] + lines[2:]
    elif tamper == "reordered":
        lines[1], lines[2] = lines[2], lines[1]
    elif tamper == "appended":
        lines = _append_forged(lines)
    if tamper == "truncated mid-entry":
        log.write_bytes(log.read_bytes()[:-40])
    elif tamper == "truncated to before the job":
        write_lines(log, lines[:job])
    else:
        write_lines(log, lines)
    failed = failures(verify(owner, out, log))
    assert set(failed) == {"custody-log"}
    assert expected in failed["custody-log"]


def test_a_log_cut_below_the_exported_length_is_named(owner, case):
    out, log = case
    identity = json.loads(owner.identity.read_text())
    count = identity["custody"]["entries"]
    write_lines(log, log_lines(log)[:count - 1])
    failed = failures(verify(owner, out, log))
    assert f"had {count} when the identity was exported" in failed["custody-log"]


# -- sample contents -----------------------------------------------------------------------

def test_a_sample_with_exif_is_named(owner, case):
    out, log = case

    def add_exif(samples):
        samples[3][1]["png"] = png_with_exif(samples[3][1]["png"])

    rewrite_shard(out / "train-000000.tar", add_exif)
    assert {"shard-files", "sample-contents"} <= set(failures(verify(owner, out, log)))
    reissue(owner, out, log)  # even the owner's own signature does not make it acceptable
    key = read_samples(out / "train-000000.tar")[3][0]
    failed = failures(verify(owner, out, log))
    assert set(failed) == {"sample-contents"}
    assert f"train-000000.tar: sample {key}: PNG chunk 'eXIf' (EXIF) is not allowed" in failed["sample-contents"]


def test_a_jpeg_sample_with_exif_and_a_comment_is_named(owner, tmp_path):
    out, log = tmp_path / "jpeg", tmp_path / "custody.log"
    shutil.copytree(owner.jpeg, out)
    shutil.copyfile(owner.log, log)

    def add_exif(samples):
        with Image.open(io.BytesIO(samples[0][1]["jpg"])) as img:
            exif = Image.Exif()
            exif[0x9286] = "taken on holiday"
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90, exif=exif, comment=b"from camera roll")
        samples[0][1]["jpg"] = buf.getvalue()

    rewrite_shard(out / "train-000000.tar", add_exif)
    reissue(owner, out, log)
    failed = failures(verify(owner, out, log))
    assert set(failed) == {"sample-contents"}
    assert "JPEG segment APP1 (EXIF or XMP) is not allowed" in failed["sample-contents"]
    assert "JPEG segment COM (comment) is not allowed" in failed["sample-contents"]


@pytest.mark.parametrize("meta, expected", [
    ({"source": "IMG_2041.jpg"}, "value 'IMG_2041.jpg' at source looks like a path or file name"),
    ({"note": "/home/owner/photos/a"}, "looks like a path or file name"),
    ({"file_name": "a"}, "field 'file_name' names a file, path or URL"),
])
def test_a_sample_whose_json_carries_a_file_name_is_named(owner, case, meta, expected):
    out, log = case

    def add_json(samples):
        samples[0][1]["json"] = canonical_json(meta)

    rewrite_shard(out / "val-000001.tar", add_json)
    reissue(owner, out, log)
    failed = failures(verify(owner, out, log))
    assert set(failed) == {"sample-contents"}
    assert expected in failed["sample-contents"]


def test_wrong_size_extra_members_and_path_keys_are_named(owner, case):
    out, log = case
    shard = out / "val-000000.tar"
    samples = read_samples(shard)
    buf = io.BytesIO()
    Image.new("L", (16, 16)).save(buf, "PNG")
    samples[0][1]["png"] = buf.getvalue()
    samples[1][1]["txt"] = b"original: val/bag/item-val-0001.png"
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:  # a hand-made shard
        for key, members in samples[:2] + [("val_bag_item-0003", samples[2][1])] + samples[3:]:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    reissue(owner, out, log)
    problems = failures(verify(owner, out, log))["sample-contents"]
    assert "image is 16x16, the cipher says 32x32" in problems
    assert "member .txt is not allowed" in problems
    assert "sample key 'val_bag_item-0003' is not an opaque id" in problems


# -- rotation ------------------------------------------------------------------------------

def test_releases_before_and_after_a_rotation_verify_with_the_old_identity_and_the_log(tmp_path):
    write_imagefolder(tmp_path / "src", {"train": 12})
    listing = list_imagefolder(tmp_path / "src")
    store = create_keystore(tmp_path / "keystore", PASSPHRASE)
    encrypt_dataset(listing, tmp_path / "before", store, "fm", settings(), progress=False)
    identity = read_identity_of(store, tmp_path / "identity-before.json")
    store.rotate()
    encrypt_dataset(listing, tmp_path / "after", store, "fm", settings(), progress=False)
    log = store.custody.path
    for release in ("before", "after"):
        report = verify_release(tmp_path / release, identity, custody_log=log, progress=False)
        assert report.ok, failures(report)
    after = {c.name: c.summary for c in verify_release(tmp_path / "after", identity, custody_log=log).checks}
    assert "rotation recorded in the verified custody log" in after["manifest-signature"]
    # without the log the old identity cannot vouch for the new key
    failed = failures(verify_release(tmp_path / "after", identity, custody_log=None))
    assert set(failed) == {"manifest-signature", "key-id"}
    # a new identity lists both keys and both datasets' keys
    fresh = read_identity_of(store, tmp_path / "identity-after.json")
    for release in ("before", "after"):
        assert verify_release(tmp_path / release, fresh, custody_log=None).ok


def read_identity_of(store, path: Path) -> dict:
    path.write_text(json.dumps(store.public_identity()))
    return read_identity(path)


# -- the command line ----------------------------------------------------------------------

def invoke(*args: str):
    return CliRunner().invoke(cli, ["verify", *map(str, args)])


def test_cli_table_json_and_exit_codes(owner, case):
    out, log = case
    ok = invoke(out, "--public-key", owner.identity, "--custody-log", log)
    assert ok.exit_code == 0, ok.output
    for name in CHECKS:
        assert f"{name}" in ok.stdout and "PASS" in ok.stdout
    assert "verified: 5 of 5 checks passed" in ok.stdout
    (out / "val-000001.tar").unlink()
    bad = invoke(out, "--public-key", owner.identity, "--custody-log", log, "--json")
    assert bad.exit_code == 1
    report = json.loads(bad.stdout)
    assert report["ok"] is False and report["failed"] == ["shard-files"]
    table = invoke(out, "--public-key", owner.identity)
    assert table.exit_code == 1 and "FAILED: shard-files" in table.stdout
    assert "- val-000001.tar: missing" in table.stdout


@pytest.mark.parametrize("problem", ["no release", "no identity", "bad identity", "no log"])
def test_cli_bad_usage_is_one_line_and_exit_2(owner, tmp_path, problem):
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    args = {"no release": [tmp_path / "absent", "--public-key", owner.identity],
            "no identity": [owner.release, "--public-key", tmp_path / "absent.json"],
            "bad identity": [owner.release, "--public-key", tmp_path / "bad.json"],
            "no log": [owner.release, "--public-key", owner.identity, "--custody-log", tmp_path / "absent.log"],
            }[problem]
    result = invoke(*args)
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(tmp_path) in lines[0]


def test_console_script_runs_for_real(owner):
    done = subprocess.run([BIN / "audit-shards", "verify", owner.release, "--public-key", owner.identity,
                           "--custody-log", owner.log], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "verified: 5 of 5 checks passed" in done.stdout
    assert "Example:" in subprocess.run([BIN / "audit-shards", "verify", "--help"], capture_output=True,
                                        text=True, timeout=60).stdout
