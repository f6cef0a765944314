"""Issue 15: a job on a two-node cluster survives a killed worker and a killed node, and
nothing is signed that the driver has not read back.

The cluster is `ray.cluster_utils.Cluster` (two raylets, run from a fresh process, token
auth with this test's own token, its own RAY_TMPDIR), all on 127.0.0.1: Ray rewrites
loopback addresses to the machine's IP unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0. Shard
writes are slowed by a worker setup hook (test-only, shipped through Ray's runtime env), so
the kills land while shards are half written.
"""
from __future__ import annotations

import os
import secrets
import json
import shutil
import tempfile
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from encrypt.confirm import ShardNotSeen, confirm_shard, read_back, sweep_temps
from encrypt.job import ShardResult
from encrypt.main import encrypt_dataset
from encrypt.sources import list_imagefolder
from releases import SAMPLE, job_settings, make_keystore
from shards.manifest import ShardEntry
from shards.reader import iter_samples, load_manifest, sha256_file, verify_shards

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PASSPHRASE = b"test keystore: correct horse battery 5c1e"

HOOK = '''
import os, time
import shards.writer as writer

def slow_writes():
    """Sleep before each sample a shard task writes: a kill then finds shards half written."""
    delay = float(os.environ.get("PV_TEST_WRITE_DELAY_S", "0"))
    original = writer.ShardWriter.write
    def write(self, *args, **kwargs):
        time.sleep(delay)
        return original(self, *args, **kwargs)
    writer.ShardWriter.write = write
'''


@pytest.fixture(scope="module")
def keystore(tmp_path_factory):
    return make_keystore(tmp_path_factory)


@pytest.mark.slow
def test_worker_and_node_killed_mid_job_leave_an_identical_verified_release(tmp_path, keystore):
    pytest.importorskip("ray")
    listing = list_imagefolder(SAMPLE)
    reference = tmp_path / "reference"
    encrypt_dataset(listing, reference, keystore, "fm-faults", job_settings(shard_samples=250), workers=0,
                    progress=False)  # 10 shards: 8 train, 2 val
    want = {e.name: e.sha256 for entries in load_manifest(reference).splits.values() for e in entries}

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "pv_test_hooks.py").write_text(HOOK)
    ray_tmp = tempfile.mkdtemp(prefix="pv-")  # Ray's socket paths must stay under 108 bytes
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),  # this test's own token
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PV_TEST_WRITE_DELAY_S": "0.005",
           "PATCHVEIL_PASSPHRASE": PASSPHRASE.decode(), "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE), str(hooks)])}
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "release"
    try:
        run = subprocess.run([sys.executable, str(HERE / "cluster_faults_run.py"), str(SAMPLE), str(out),
                              str(keystore.directory), "fm-faults", "250", str(reference)], env=env,
                             capture_output=True,
                             text=True, timeout=240, start_new_session=True)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["nodes"] == 2 and report["finished"] and "error" not in report, report
    assert report["worker_killed_mid_job"] and report["node_killed_mid_job"], report
    assert report["temps_at_kill"], "no shard was half written when the worker was killed"

    manifest = load_manifest(out, public_key=keystore.public_key)
    assert verify_shards(out, manifest) == []  # no temp file left, no --resume
    got = {e.name: e.sha256 for entries in manifest.splits.values() for e in entries}
    assert got == want  # byte-identical to the uninterrupted in-process run
    keys = [s.key for split in ("train", "val") for s in iter_samples(out, split)]
    assert len(keys) == 2500 and max(Counter(keys).values()) == 1
    assert set(keys) == {s.key for split in ("train", "val") for s in iter_samples(reference, split)}


def _entry(path: Path) -> ShardEntry:
    size, sha = read_back(path)
    return ShardEntry(name=path.name, sha256=sha, bytes=size, samples=1)


def test_read_back_is_the_readers_sha256(tmp_path):
    path = tmp_path / "train-000000.tar"
    path.write_bytes(os.urandom((1 << 20) * 2 + 123))
    assert read_back(path) == (path.stat().st_size, sha256_file(path))


def test_a_shard_the_driver_cannot_see_names_the_shard_and_node(tmp_path):
    elsewhere, out = tmp_path / "node-disk", tmp_path / "out"
    elsewhere.mkdir(), out.mkdir()
    (elsewhere / "train-000000.tar").write_bytes(b"x" * 1000)
    entry = _entry(elsewhere / "train-000000.tar")
    node = "10.0.0.9 (node id abc123)"
    with pytest.raises(ShardNotSeen, match=r"train-000000\.tar.*on node 10\.0\.0\.9 \(node id abc123\).*"
                                           r"no such file.*shared file system.*nothing was signed"):
        confirm_shard(out, entry, node)
    (out / "train-000000.tar").write_bytes(b"x" * 999)
    with pytest.raises(ShardNotSeen, match="reads 999 bytes, not 1000"):
        confirm_shard(out, entry, node)
    (out / "train-000000.tar").write_bytes(b"y" * 1000)
    with pytest.raises(ShardNotSeen, match="sha256 differs"):
        confirm_shard(out, entry, node)
    (out / "train-000000.tar").write_bytes(b"x" * 1000)
    confirm_shard(out, entry, node)


def test_a_node_local_out_fails_the_job_in_one_line_and_signs_nothing(tmp_path, keystore, monkeypatch):
    """As a second node with OUT on its own disk: its shards land elsewhere; exit 2 from the CLI."""
    import encrypt.main as main

    real = main.run_shards
    node_disk = tmp_path / "node-disk"

    def on_another_disk(tasks, settings, key, out_dir, *, on_result=None, **kwargs):
        node_disk.mkdir(exist_ok=True)

        def tagged(result: ShardResult):
            result.node = "10.0.0.9 (node id abc123)"
            on_result(result)
        return real(tasks, settings, key, node_disk, on_result=tagged, **kwargs)

    monkeypatch.setattr(main, "run_shards", on_another_disk)
    from click.testing import CliRunner

    from encrypt.cli import cli
    out = tmp_path / "release"
    env = {"PATCHVEIL_KEYSTORE": str(keystore.directory),
           "PATCHVEIL_PASSPHRASE": "test keystore: correct horse battery 5c1e"}
    result = CliRunner().invoke(cli, ["imagefolder", str(SAMPLE), str(out), "--size", "32", "--resize", "32",
                                      "--patch", "4", "--grayscale", "--format", "png", "--mode", "shuffle",
                                      "--shard-samples", "1000", "--num-cpus", "0", "--quiet",
                                      "--dataset-id", "fm-local"], env=env)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert lines[-1].startswith("error: ") and sum(line.startswith("error: ") for line in lines) == 1
    assert "-000000.tar" in lines[-1] and "on node 10.0.0.9 (node id abc123)" in lines[-1], lines[-1]
    assert not (out / "manifest.json").exists() and not (out / "_info.json").exists()


def test_sweep_removes_only_temp_files_of_the_jobs_shards(tmp_path):
    for name in (".train-000001.tar.abc123.tmp", ".train-000009.tar.x.tmp", ".manifest.json.q.tmp",
                 "notes.txt", "train-000001.tar"):
        (tmp_path / name).write_bytes(b"")
    assert sweep_temps(tmp_path, ["train-000001.tar"]) == [".train-000001.tar.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".manifest.json.q.tmp", ".train-000009.tar.x.tmp",
                                                         "notes.txt", "train-000001.tar"]
