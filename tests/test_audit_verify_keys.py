"""verify's release-wide checks: sample keys unique across shards and exactly the job's id
format, and no symbolic links standing in for shards or the manifest. Each tampering is on a
real release, re-signed and logged by the owner, so only the tampering itself can fail."""
from __future__ import annotations

import io
import os
import random
import shutil
import tarfile
from pathlib import Path

import pytest

from audit.keyset import SampleKeys
from releases import read_samples
from test_audit_verify import case, failures, invoke, owner, reissue, verify  # noqa: F401  (fixtures)


def write_tar(shard: Path, samples) -> None:
    """A shard written with the stdlib alone (not through our writer, which refuses bad keys)."""
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext in sorted(members):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(members[ext])
                tar.addfile(info, io.BytesIO(members[ext]))


def test_a_sample_key_in_two_shards_is_named(owner, case):
    out, log = case
    twin = read_samples(out / "train-000000.tar")[5]
    val = read_samples(out / "val-000001.tar")
    write_tar(out / "val-000001.tar", val + [twin])  # one training image shipped twice
    reissue(owner, out, log, refresh_info=True)
    failed = failures(verify(owner, out, log))
    assert set(failed) == {"sample-contents"}
    assert f"sample {twin[0]} is in 2 shards (train-000000.tar, val-000001.tar); a sample key must be unique " \
           "in the release" in failed["sample-contents"]
    cli = invoke(out, "--public-key", owner.identity, "--custody-log", log)
    assert cli.exit_code == 1 and "FAILED: sample-contents" in cli.stdout
    assert f"sample {twin[0]} is in 2 shards" in cli.stdout


@pytest.mark.parametrize("bad", [
    "item-val-0001.png".encode().hex(),  # a file name, hex-encoded: 34 hex digits, "no names" before
    "ab" * 8,                              # 16 hex digits: too short for the job's ids
    "AB" * 12,                             # right length, upper case
    "0123456789abcdef0123456g",            # right length, not hex
])
def test_a_key_not_of_the_jobs_format_is_named(owner, case, bad):
    out, log = case
    samples = read_samples(out / "val-000000.tar")
    samples[1] = (bad, samples[1][1])
    write_tar(out / "val-000000.tar", samples)
    reissue(owner, out, log, refresh_info=True)
    failed = failures(verify(owner, out, log))
    assert set(failed) == {"sample-contents"}
    assert f"val-000000.tar: sample key {bad!r} is not an opaque id (exactly 24 lowercase hex digits" \
        in failed["sample-contents"]
    assert invoke(out, "--public-key", owner.identity, "--custody-log", log).exit_code == 1


def test_a_symlinked_shard_is_named_even_with_the_right_bytes(owner, case, tmp_path):
    out, log = case
    elsewhere = tmp_path / "elsewhere.tar"
    shutil.move(out / "train-000002.tar", elsewhere)
    os.symlink(elsewhere, out / "train-000002.tar")  # same bytes, same digest: only the link is wrong
    failed = failures(verify(owner, out, log))
    assert set(failed) == {"shard-files"}
    assert "train-000002.tar: a symbolic link, not a file of the release" in failed["shard-files"]
    cli = invoke(out, "--public-key", owner.identity, "--custody-log", log)
    assert cli.exit_code == 1 and "FAILED: shard-files" in cli.stdout


def test_a_symlinked_manifest_is_named(owner, case, tmp_path):
    out, log = case
    shutil.move(out / "manifest.json", tmp_path / "manifest.json")
    os.symlink(tmp_path / "manifest.json", out / "manifest.json")
    failed = failures(verify(owner, out, log))
    assert "manifest.json is a symbolic link, not a file of the release" in failed["manifest-signature"]
    assert "shard-files" in failed and "sample-contents" in failed
    cli = invoke(out, "--public-key", owner.identity, "--custody-log", log)
    assert cli.exit_code == 1 and "symbolic link" in cli.stdout


def test_duplicates_are_found_across_spilled_runs():
    """Tiny runs force the on-disk merge; every cross-shard duplicate is found, nothing else."""
    rng = random.Random(7)
    keys = [f"{rng.getrandbits(96):024x}" for _ in range(500)]
    found = SampleKeys(chunk=16)
    for i, key in enumerate(keys):
        found.add(key, i % 9)
    found.add(keys[3], 4)      # shard 3 and shard 4
    found.add(keys[20], 2)     # shard 2 twice: a within-shard repeat is the per-shard check's
    found.add(keys[499], 0)    # the very last key: shard 4 and shard 0
    assert list(found.duplicates()) == sorted([(keys[3], [3, 4]), (keys[499], [0, 4])])
    assert found._dir is None  # the temporary runs are gone
