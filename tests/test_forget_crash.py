"""forget survives kill -9 at every step, and one job at a time holds a release (real processes).

Each crash runs the real `encrypt-dataset forget` console script with PATCHVEIL_FORGET_CRASH_AT
naming a step (encrypt.forget.STEPS), so the process SIGKILLs itself there; a plain rerun must
then leave a verified release, no trace of the forgotten sample anywhere under the test's
folder, and exactly one `forgotten` custody entry.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audit.verify import verify_release
from encrypt.forget import CRASH_AT_ENV, STEPS
from encrypt.main import encrypt_dataset
from encrypt.sources import list_imagefolder
from keys.custody import read_identity
from keys.keystore import create_keystore, open_keystore
from releases import job_settings as settings, read_samples, write_imagefolder, keys_of
from shards.reader import load_manifest

PASSPHRASE = "Quokka-Marten-5521-forget-crash"
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    base = tmp_path_factory.mktemp("crash")
    files = write_imagefolder(base / "src", {"train": 30, "val": 10})
    store = create_keystore(base / "keystore", PASSPHRASE.encode())
    encrypt_dataset(list_imagefolder(base / "src"), base / "release", store, "fm-crash",
                    settings(shard_samples=8), progress=False)
    return {"base": base, "files": files, "store": store}


@pytest.fixture()
def copy(tmp_path, owner):
    """The test's own release and keystore; everything the test checks lives under tmp_path."""
    shutil.copytree(owner["base"] / "keystore", tmp_path / "keystore")
    shutil.copytree(owner["base"] / "release", tmp_path / "release")
    return tmp_path / "release", tmp_path / "keystore"


def env(keystore: Path, **extra) -> dict:
    return {**os.environ, "PATCHVEIL_PASSPHRASE": PASSPHRASE, "PATCHVEIL_KEYSTORE": str(keystore),
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **extra}


def forget(out: Path, keystore: Path, rel: str, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "encrypt-dataset"), "forget", str(out), "--path", rel, "--quiet"],
                          env=env(keystore, **extra), capture_output=True, text=True, timeout=120)


def forgotten_entries(keystore: Path) -> list[dict]:
    lines = (keystore / "custody.log").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "forgotten"]


def target(owner, out: Path) -> tuple[str, str, bytes, str]:
    """A train sample in the release's second train shard: (path, id, stored image bytes, shard)."""
    dk = keys_of(owner["store"], out)
    shard = load_manifest(out).splits["train"][1].name
    key, members = read_samples(out / shard)[2]
    rel = next(r for r in owner["files"] if dk.sample_id(r) == key)
    return rel, key, members["png"], shard


def files_holding(root: Path, *needles: bytes) -> list[str]:
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            data = (Path(folder) / name).read_bytes()
            found += [f"{Path(folder, name).relative_to(root)}" for n in needles if n in data]
    return found


@pytest.mark.parametrize("step", STEPS)
def test_kill_9_at_any_step_then_a_rerun_gives_a_verified_release_without_the_sample(owner, copy, tmp_path, step):
    out, keystore = copy
    rel, key, image, shard = target(owner, out)
    before = load_manifest(out)
    assert files_holding(tmp_path, key.encode(), image)  # the sample is on disk before

    killed = forget(out, keystore, rel, **{CRASH_AT_ENV: step})
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr)
    assert (out / "manifest.json").is_file()  # OUT is never missing, whatever the step

    rerun = forget(out, keystore, rel)
    assert rerun.returncode == 0, rerun.stderr
    assert "removed 1 sample(s)" in rerun.stdout
    after = load_manifest(out, public_key=owner["store"].public_key)
    assert after.extra["previous_manifest"] == before.digest()
    assert after.samples("train") == before.samples("train") - 1

    identity = tmp_path / "identity.json"
    identity.write_text(json.dumps(open_keystore(keystore, PASSPHRASE.encode()).public_identity()))
    report = verify_release(out, read_identity(identity), custody_log=keystore / "custody.log", progress=False)
    assert report.ok, [c.problems for c in report.checks]
    assert len(forgotten_entries(keystore)) == 1
    assert forgotten_entries(keystore)[0]["details"]["manifest_digest"] == after.digest()
    assert not (out / shard).exists()  # the old version is gone ...
    assert files_holding(tmp_path, key.encode(), image) == []  # ... and the sample with it, everywhere
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    private = tmp_path / "release.owner"
    assert not private.exists() or not list(private.iterdir())  # no record, staging or lock left

    again = forget(out, keystore, rel)
    assert again.returncode == 0 and "nothing to remove" in again.stdout
    assert len(forgotten_entries(keystore)) == 1


HOLD = """
import sys, time
from encrypt.lock import release_lock
with release_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_job_on_the_same_release_is_refused_until_the_holder_dies(owner, copy):
    out, keystore = copy
    rel = target(owner, out)[0]
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], env=env(keystore),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = forget(out, keystore, rel)
        assert refused.returncode == 2 and refused.stdout == ""
        lines = refused.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {out}: another patchveil job"), refused.stderr
        assert "holds this release" in lines[0]
        encrypt = subprocess.run([str(BIN / "encrypt-dataset"), "imagefolder", str(owner["base"] / "src"), str(out),
                                  "--resume", "--patch", "4", "--size", "32", "--resize", "32", "--grayscale",
                                  "--format", "png", "--mode", "shuffle", "--shard-samples", "8",
                                  "--num-cpus", "0", "--quiet", "--dataset-id", "fm-crash"],
                                 env=env(keystore), capture_output=True, text=True, timeout=120)
        assert encrypt.returncode == 2 and "another patchveil job" in encrypt.stderr, encrypt.stderr
        decrypt = subprocess.run([str(BIN / "encrypt-dataset"), "decrypt", str(out), str(out.parent / "plain"),
                                  "--quiet"], env=env(keystore), capture_output=True, text=True, timeout=120)
        assert decrypt.returncode == 2 and "another patchveil job" in decrypt.stderr, decrypt.stderr
        assert not forgotten_entries(keystore)
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the kernel drops the flock
        holder.wait()
    done = forget(out, keystore, rel)
    assert done.returncode == 0 and "removed 1 sample(s)" in done.stdout, done.stderr


def test_the_lock_leaves_no_trace_and_a_refused_job_no_owner_folder(tmp_path):
    from encrypt.lock import release_lock

    out = tmp_path / "release"
    with release_lock(out) as lock:
        assert lock == tmp_path / "release.owner" / "lock" and oct(lock.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    start = time.time()
    with release_lock(out), pytest.raises(Exception, match="another patchveil job"):
        with release_lock(out):  # a second open file description, as another process has
            pass
    assert time.time() - start < 5
