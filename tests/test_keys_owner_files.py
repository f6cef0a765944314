"""What the owner keeps stays the owner's: the exported identity names only released
datasets, and every owner-side file is 0600 in a 0700 folder, on a real keystore and a real job."""
from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

import encrypt.main
from encrypt.journal import Journal, owner_dir
from encrypt.main import JobRefused, encrypt_dataset
from encrypt.sources import list_imagefolder
from keys.cli import cli as keys_cli
from keys.custody import read_identity
from shards.manifest import ShardEntry
from releases import job_settings, make_keystore, write_imagefolder

PASSPHRASE = b"test keystore: correct horse battery 5c1e"  # make_keystore's


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    """One keystore: a released dataset, a job aborted after deriving its key, a refused job,
    and a key derived by hand."""
    base = tmp_path_factory.mktemp("owner")
    write_imagefolder(base / "src", {"train": 12, "val": 4})
    listing = list_imagefolder(base / "src")
    store = make_keystore(tmp_path_factory)
    encrypt_dataset(listing, base / "released", store, "fm-released", job_settings(), progress=False)

    def power_cut(*args, **kwargs):
        raise OSError(5, "Input/output error")

    original = encrypt.main.save_index
    encrypt.main.save_index = power_cut  # dies after dataset-derived, before the release is signed
    try:
        with pytest.raises(OSError):
            encrypt_dataset(listing, base / "aborted", store, "fm-aborted", job_settings(), progress=False)
    finally:
        encrypt.main.save_index = original
    with pytest.raises(JobRefused):
        encrypt_dataset(listing, base / "refused", store, "fm-refused", job_settings(min_side=64), progress=False,
                        probe=0)  # refused after the run, so OUT.owner/skipped.json is written
    store.dataset_key("fm-by-hand")
    return base, store


def test_the_identity_lists_only_released_datasets(owner, tmp_path):
    base, store = owner
    derived = {d["dataset_id"] for d in store.datasets()}
    assert {"fm-released", "fm-aborted", "fm-by-hand"} <= derived  # the owner's own view keeps them
    result = CliRunner().invoke(keys_cli, ["export-public", "--keystore", str(store.directory),
                                           "-o", str(tmp_path / "identity.json")],
                                env={"PATCHVEIL_PASSPHRASE": PASSPHRASE.decode(), "PATCHVEIL_KEYSTORE": None})
    assert result.exit_code == 0, result.output
    identity = read_identity(tmp_path / "identity.json")
    assert [d["dataset_id"] for d in identity["datasets"]] == ["fm-released"]
    text = (tmp_path / "identity.json").read_text()
    for hidden in ("fm-aborted", "fm-refused", "fm-by-hand"):
        assert hidden not in text


def test_keystore_files_are_0600_in_a_0700_folder(owner):
    base, store = owner
    names = sorted(p.name for p in store.directory.iterdir())
    assert "custody.log" in names and "keystore.json" in names and any(n.startswith("index-") for n in names)
    assert mode(store.directory) == 0o700
    for path in store.directory.iterdir():
        assert mode(path) == 0o600, path


def test_the_jobs_owner_folder_is_private(owner):
    base, _ = owner
    private = owner_dir(base / "released")
    assert sorted(p.name for p in private.iterdir()) == ["journal.jsonl", "skipped.json", "summary.json"]
    assert mode(private) == 0o700
    for path in private.iterdir():
        assert mode(path) == 0o600, path
    refused = owner_dir(base / "refused")
    assert mode(refused) == 0o700 and mode(refused / "skipped.json") == 0o600


def test_an_owner_folder_or_journal_left_readable_is_made_private_again(tmp_path):
    """Left by an older version (folder 0755, journal 0644): a new job narrows the folder, the
    next record narrows the journal."""
    private = tmp_path / "out.owner"
    private.mkdir(mode=0o755)
    private.chmod(0o755)
    journal = Journal.start(private / "journal.jsonl", "fingerprint", bytes(32))
    assert mode(private) == 0o700
    journal.path.chmod(0o644)
    journal.record(ShardEntry("train-000000.tar", "0" * 64, 1024, 1), [])
    assert mode(journal.path) == 0o600
    assert json.loads(journal.path.read_text().splitlines()[1])["entry"]["name"] == "train-000000.tar"
