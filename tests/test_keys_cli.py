"""`dataset-keys`: each command end to end, one-line errors with exit 2, no passphrase in output."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from keys.cli import cli
from keys.custody import read_identity, verify_chain
from keys.keystore import open_keystore

PASSPHRASE = "Narwhal-Okapi-4096-never-print-me"
SCRIPT = Path(sys.executable).parent / "dataset-keys"


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    """Invoke the CLI; every run must keep the passphrase out of its output."""
    result = CliRunner().invoke(cli, list(args), env={"PATCHVEIL_PASSPHRASE": PASSPHRASE,
                                                      "PATCHVEIL_KEYSTORE": None, **(env or {})})
    assert PASSPHRASE not in result.output and PASSPHRASE not in result.stderr
    return result


def one_line_error(result: Result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("cli") / "keys"
    result = run("init", "--keystore", str(directory))
    assert result.exit_code == 0, result.output
    assert "key id      pk-" in result.stdout
    return directory


@pytest.fixture()
def store_copy(tmp_path, store_dir) -> Path:
    copy = tmp_path / "keys"
    shutil.copytree(store_dir, copy)
    return copy


def test_init_makes_a_keystore_that_opens(store_dir):
    store = open_keystore(store_dir, PASSPHRASE.encode())
    assert [e["event"] for e in store.custody.entries()][0] == "key-created"
    for path in store_dir.iterdir():
        assert PASSPHRASE.encode() not in path.read_bytes()


def test_init_refuses_an_existing_keystore(store_dir):
    before = snapshot(store_dir)
    line = one_line_error(run("init", "--keystore", str(store_dir)))
    assert line == f"error: {store_dir / 'keystore.json'}: a keystore already exists here; refusing to overwrite it"
    assert snapshot(store_dir) == before


def test_init_reads_a_passphrase_file(tmp_path):
    secret = tmp_path / "passphrase.txt"
    secret.write_text("file-held passphrase\n")
    result = run("init", "--keystore", str(tmp_path / "k"), "--passphrase-file", str(secret),
                 env={"PATCHVEIL_PASSPHRASE": None})
    assert result.exit_code == 0, result.output
    open_keystore(tmp_path / "k", b"file-held passphrase")
    line = one_line_error(run("info", "--keystore", str(tmp_path / "k"), "--passphrase-file",
                              str(tmp_path / "nope.txt"), env={"PATCHVEIL_PASSPHRASE": None}))
    assert line == f"error: {tmp_path / 'nope.txt'}: passphrase file not found"


def test_info_shows_identity_and_datasets(store_copy):
    store = open_keystore(store_copy, PASSPHRASE.encode())
    dataset = store.dataset_key("fmnist")
    text = run("info", "--keystore", str(store_copy))
    assert text.exit_code == 0
    assert f"key id      {store.signing_key_id}" in text.stdout and f"created     {store.created}" in text.stdout
    assert f"fmnist  {dataset.dataset_key_id}" in text.stdout
    as_json = run("info", "--json", env={"PATCHVEIL_KEYSTORE": str(store_copy)})
    info = json.loads(as_json.stdout)
    assert info["key_id"] == store.signing_key_id and info["created"] == store.created
    assert [d["dataset_id"] for d in info["datasets"]] == ["fmnist"]


def test_export_public_writes_what_an_auditor_needs_and_logs_it(store_copy, tmp_path):
    out = tmp_path / "identity.json"
    result = run("export-public", "--keystore", str(store_copy), "-o", str(out))
    assert result.exit_code == 0, result.output
    identity = read_identity(out)
    store = open_keystore(store_copy, PASSPHRASE.encode())
    assert identity["key_id"] == store.signing_key_id
    last = store.custody.entries()[-1]
    assert last["event"] == "exported-public"
    assert last["details"]["identity_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert verify_chain(store_copy / "custody.log", identity).ok
    secret_seed = store.dataset_key("fmnist").sample_seed("train", "x").hex()
    assert PASSPHRASE not in out.read_text() and secret_seed not in out.read_text()


def test_export_public_to_a_missing_directory_changes_nothing(store_copy, tmp_path):
    before = snapshot(store_copy)
    line = one_line_error(run("export-public", "--keystore", str(store_copy), "-o",
                              str(tmp_path / "no" / "identity.json")))
    assert "does not exist" in line
    assert snapshot(store_copy) == before


def test_log_shows_and_verifies_the_chain(store_dir):
    shown = run("log", "--keystore", str(store_dir), "--verify")
    assert shown.exit_code == 0, shown.output
    assert "key-created" in shown.stdout and "chain ok: 1 entries" in shown.stdout
    as_json = json.loads(run("log", "--keystore", str(store_dir), "--json").stdout)
    assert [e["event"] for e in as_json["entries"]] == ["key-created"]


def test_log_verify_names_a_tampered_entry_and_exits_1(store_copy):
    store = open_keystore(store_copy, PASSPHRASE.encode())
    store.dataset_key("fmnist")
    store.log("used-for-job", {"manifest_sha256": "ab" * 32})
    log = store_copy / "custody.log"
    log.write_bytes(log.read_bytes().replace(b'"manifest_sha256":"ab', b'"manifest_sha256":"cd'))
    result = run("log", "--keystore", str(store_copy), "--verify")
    assert result.exit_code == 1
    assert "chain BROKEN" in result.stdout and "entry 2: signature invalid" in result.stdout
    report = json.loads(run("log", "--keystore", str(store_copy), "--verify", "--json").stdout)
    assert report["ok"] is False and any(p.startswith("entry 2:") for p in report["problems"])


def test_wrong_passphrase_and_missing_keystore_are_one_line_exit_2(store_dir, tmp_path):
    before = snapshot(store_dir)
    for command in ("info", "log", "export-public"):
        extra = ["-o", str(tmp_path / "id.json")] if command == "export-public" else []
        line = one_line_error(run(command, "--keystore", str(store_dir), *extra,
                                  env={"PATCHVEIL_PASSPHRASE": "not it"}))
        assert line == f"error: {store_dir / 'keystore.json'}: wrong passphrase, or the file was edited"
    assert snapshot(store_dir) == before and not (tmp_path / "id.json").exists()
    line = one_line_error(run("info", "--keystore", str(tmp_path / "missing")))
    assert line == f"error: {tmp_path / 'missing'}: keystore directory not found"


def test_every_command_has_help_with_an_example():
    for args in ([], ["init"], ["info"], ["export-public"], ["log"]):
        result = run(*args, "--help")
        assert result.exit_code == 0 and "Example:" in result.stdout and "dataset-keys" in result.stdout
    assert "--passphrase " not in run("init", "--help").stdout  # never a passphrase on argv


def test_console_script_runs_for_real(store_dir):
    assert SCRIPT.exists(), f"console script missing: {SCRIPT}"
    env = {**os.environ, "PATCHVEIL_PASSPHRASE": PASSPHRASE, "PATCHVEIL_KEYSTORE": str(store_dir)}
    done = subprocess.run([str(SCRIPT), "info", "--json"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["key_id"].startswith("pk-")
    assert PASSPHRASE not in done.stdout + done.stderr
    failed = subprocess.run([str(SCRIPT), "info"], env={**env, "PATCHVEIL_PASSPHRASE": "wrong"},
                            capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2 and failed.stdout == ""
    assert failed.stderr.strip().splitlines() == [
        f"error: {store_dir / 'keystore.json'}: wrong passphrase, or the file was edited"]
