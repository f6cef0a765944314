"""Joining a real Ray cluster the way Ray users do: RAY_ADDRESS, `auto`, a runtime environment.

One head node (1 CPU) is started for the module with `ray start --head --block` in its own
process group and temp dir (RAY_TMPDIR, so `auto` finds this head and no one else's), reached
on 127.0.0.1, and torn down by killing that group only (never `ray stop`, which stops every
Ray on the machine).
"""
from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from encrypt.distribute import ClusterError, _init_ray, load_runtime_env
from releases import SAMPLE, make_keystore
from shards.reader import load_manifest, verify_shards

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
GEOMETRY = ["--size", "32", "--resize", "32", "--patch", "4", "--grayscale", "--format", "png",
            "--mode", "shuffle", "--shard-samples", "1000", "--quiet"]
CLUSTER_LINE = re.compile(r"^ray: cluster (\S+)(?: \(asked for \S+\))?: 1 node, 1 CPUs for shard tasks$",
                          re.MULTILINE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A real 1-CPU Ray head; yields (loopback address, env with RAY_TMPDIR)."""
    tmp = Path(tmp_path_factory.mktemp("rayhead"))
    # Token auth (Ray's default for new clusters) with this test's own token, never ~/.ray's.
    env = {**os.environ, "RAY_TMPDIR": str(tmp), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    ray_cli = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen([str(ray_cli), "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                             "--include-dashboard=false", "--disable-usage-stats"],
                            env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not (tmp / "ray" / "ray_current_cluster").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip("a Ray head could not be started here")
            time.sleep(0.3)
        yield address, env
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # raylet, gcs and workers share the group
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def keystore(tmp_path_factory):
    return make_keystore(tmp_path_factory)


def _encrypt(tmp_path, keystore, env, *extra):
    """`encrypt-dataset imagefolder` in its own process, as from a shell where RAY_* are set."""
    out = tmp_path / "release"
    env = {**env, "PATCHVEIL_KEYSTORE": str(keystore.directory), "PYTHONPATH": str(REPO),
           "PATCHVEIL_PASSPHRASE": "test keystore: correct horse battery 5c1e"}
    result = subprocess.run([sys.executable, "-c", "from encrypt.cli import main; main()", "imagefolder",
                             str(SAMPLE), str(out), *GEOMETRY, "--dataset-id", "fm-c", *extra],
                            env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    return out, result


def _check_release(out, result):
    assert result.returncode == 0, result.stderr
    found = CLUSTER_LINE.findall(result.stderr)
    assert len(found) == 1, result.stderr
    assert "ray: " not in result.stdout  # the cluster line is for the log only
    manifest = load_manifest(out)
    host = found[0].rpartition(":")[0]
    assert host not in (out / "manifest.json").read_text()  # nor in what is signed
    assert manifest.samples("train") == 2000 and manifest.samples("val") == 500
    assert verify_shards(out, manifest) == []


def test_ray_address_env_joins_the_cluster_and_says_so(tmp_path, keystore, head):
    """Today: `num_cpus and num_gpus must not be provided` (ray.init reads RAY_ADDRESS itself)."""
    address, env = head
    out, result = _encrypt(tmp_path, keystore, {**env, "RAY_ADDRESS": address}, "--num-cpus", "2")
    _check_release(out, result)


def test_ray_address_auto_finds_the_head_on_this_machine(tmp_path, keystore, head):
    _, env = head
    out, result = _encrypt(tmp_path, keystore, env, "--ray-address", "auto", "--num-cpus", "2")
    _check_release(out, result)
    assert "(asked for auto)" in result.stderr


def test_a_runtime_env_ships_the_package_to_the_nodes(tmp_path, keystore, head):
    """py_modules uploads encrypt, keys and shards through the cluster; the job runs with them."""
    address, env = head
    runtime_env = tmp_path / "runtime_env.json"
    runtime_env.write_text('{"py_modules": [%s]}' % ", ".join(f'"{REPO / m}"' for m in ("encrypt", "keys", "shards")))
    out, result = _encrypt(tmp_path, keystore, env, "--ray-address", address, "--ray-runtime-env", str(runtime_env))
    _check_release(out, result)


def test_runtime_env_reaches_ray_init_and_bad_ones_are_one_line(tmp_path):
    seen = {}

    class FakeRay:
        def init(self, **kwargs):
            seen.update(kwargs)

    _init_ray(FakeRay(), 2, None, load_runtime_env('{"working_dir": "."}'))
    assert seen["runtime_env"] == {"working_dir": "."} and seen["num_cpus"] == 2
    (tmp_path / "env.json").write_text('{"env_vars": {"A": "1"}}')
    assert load_runtime_env(str(tmp_path / "env.json")) == {"env_vars": {"A": "1"}}
    for bad, reason in [("{not json", "not valid JSON"), ("[1]", "expected a JSON object"),
                        (str(tmp_path / "missing.json"), "cannot be read")]:
        with pytest.raises(ClusterError, match=f"^--ray-runtime-env.*{reason}"):
            load_runtime_env(bad)


def test_a_wrong_auth_token_is_one_line_naming_the_address(tmp_path, keystore, head):
    """The head answers (the TCP check passes) but refuses the driver's token."""
    address, env = head
    env = {**env, "RAY_AUTH_TOKEN": "0" * 32, "RAY_ADDRESS": address}
    out, result = _encrypt(tmp_path, keystore, env)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert errors[0].startswith(f"error: Ray cluster at {address}: could not join ("), result.stderr
    assert not (out / "manifest.json").exists()
