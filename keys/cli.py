"""``dataset-keys``: the data owner's commands over ``keys.keystore``; parse, call, print.

Errors are one line, ``error: <file>: <reason>``, exit status 2, nothing changed. A failed
``log --verify`` exits 1. The passphrase never comes from argv; where it comes from is the one
rule in ``keys.passphrase`` (``PRECEDENCE``), stated in every ``--passphrase-file`` help.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from shards.console import command_group
from keys.custody import IDENTITY_FORMAT, verify_chain
from keys.errors import KeystoreError
from keys.keystore import Keystore, atomic_write, create_keystore, open_keystore
from keys.passphrase import NEW_PASSPHRASE_HELP, PASSPHRASE_HELP, read_new_passphrase, read_passphrase


_keystore_option = click.option(
    "--keystore", "keystore_dir", envvar="PATCHVEIL_KEYSTORE", required=True, metavar="DIR",
    type=click.Path(path_type=Path), help="Keystore directory (default: $PATCHVEIL_KEYSTORE).")
_passphrase_option = click.option(
    "--passphrase-file", type=click.Path(path_type=Path), metavar="FILE", default=None,
    help=PASSPHRASE_HELP)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")


def _open(keystore_dir: Path, passphrase_file: Path | None) -> Keystore:
    return open_keystore(keystore_dir, read_passphrase(passphrase_file))


def _print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


@command_group("dataset-keys")
def cli() -> None:
    """Keys and custody for a data owner: create a keystore, inspect it, export the public
    identity an auditor needs, show or verify the signed custody log, sign a checkpoint of
    it, rotate keys, change the passphrase, and destroy a dataset's key.

    The passphrase is never an argument: each command's --passphrase-file help gives the rule.

    \b
    Example:
      dataset-keys init --keystore ~/patchveil-keys
      dataset-keys info --keystore ~/patchveil-keys
    """


@cli.command()
@_keystore_option
@_passphrase_option
def init(keystore_dir: Path, passphrase_file: Path | None) -> None:
    """Create a new keystore: a 256-bit master secret and an Ed25519 signing key, sealed
    under a passphrase (asked twice at the prompt). Refuses an existing keystore.

    \b
    Example:
      dataset-keys init --keystore ~/patchveil-keys
      dataset-keys init --keystore ./keys --passphrase-file ./passphrase.txt
    """
    store = create_keystore(keystore_dir, read_passphrase(passphrase_file, confirm=True))
    click.echo(f"created keystore {store.directory}")
    click.echo(f"key id      {store.signing_key_id}")
    click.echo(f"public key  {base64.b64encode(store.public_key).decode('ascii')}")


@cli.command()
@_keystore_option
@_passphrase_option
@_json_option
def info(keystore_dir: Path, passphrase_file: Path | None, as_json: bool) -> None:
    """Show the key id, creation time, public key and the datasets derived so far.

    \b
    Example:
      dataset-keys info --keystore ~/patchveil-keys
      PATCHVEIL_KEYSTORE=~/patchveil-keys dataset-keys info --json
    """
    store = _open(keystore_dir, passphrase_file)
    datasets = store.datasets()
    public_key = base64.b64encode(store.public_key).decode("ascii")
    if as_json:
        _print_json({"keystore": str(store.directory), "key_id": store.signing_key_id,
                     "created": store.created, "public_key": public_key, "datasets": datasets,
                     "signing_keys": store.signing_keys()})
        return
    click.echo(f"keystore    {store.directory}")
    click.echo(f"key id      {store.signing_key_id}")
    click.echo(f"created     {store.created}")
    click.echo(f"public key  {public_key}")
    retired = [k["key_id"] for k in store.signing_keys()[:-1]]
    if retired:
        click.echo(f"retired     {', '.join(retired)} (kept sealed for old releases)")
    click.echo(f"datasets    {len(datasets)}")
    for item in datasets:
        state = f"  DESTROYED {item['destroyed']}" if "destroyed" in item else ""
        click.echo(f"  {item['dataset_id']}  {item['key_id']}  derived {item['derived']}{state}")


@cli.command("export-public")
@_keystore_option
@_passphrase_option
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, metavar="FILE",
              help="Where to write the public identity (JSON).")
def export_public(keystore_dir: Path, passphrase_file: Path | None, output: Path) -> None:
    """Write the public identity an auditor needs (public keys, the datasets released so far,
    custody log length; no secrets) and log `exported-public` with the file's sha256. A dataset
    whose key was derived but never used for a signed release is not listed.

    \b
    Example:
      dataset-keys export-public --keystore ~/patchveil-keys -o identity.json
    """
    parent = output.absolute().parent
    if not parent.is_dir():
        raise KeystoreError(output, f"directory {parent} does not exist")
    if output.is_dir():
        raise KeystoreError(output, "is a directory")
    if not os.access(parent, os.W_OK):
        raise KeystoreError(output, f"directory {parent} is not writable")
    store = _open(keystore_dir, passphrase_file)
    identity = store.public_identity()
    data = (json.dumps(identity, indent=2, sort_keys=True) + "\n").encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    store.log("exported-public", {"identity_sha256": digest,
                                  "custody_entries": identity["custody"]["entries"]})
    atomic_write(output, data, mode=0o644)
    click.echo(f"wrote {output} (key id {store.signing_key_id}, {len(identity['datasets'])} datasets, "
               f"sha256 {digest[:16]}…)")


@cli.command()
@_keystore_option
@_passphrase_option
@click.option("--verify", is_flag=True,
              help="Check hashes, order, times and signatures; exit 1 if anything is wrong.")
@_json_option
def log(keystore_dir: Path, passphrase_file: Path | None, verify: bool, as_json: bool) -> None:
    """Show the custody log; with --verify, check the whole chain against the signing key.

    \b
    Example:
      dataset-keys log --keystore ~/patchveil-keys --verify
      dataset-keys log --keystore ~/patchveil-keys --json
    """
    store = _open(keystore_dir, passphrase_file)
    if not verify:
        entries = store.custody.entries()
        if as_json:
            _print_json({"entries": entries})
        else:
            _print_entries(entries)
        return
    first = store.signing_keys()[0]  # the key that created the log; rotations hand over from it
    report = verify_chain(store.custody.path, {"format": IDENTITY_FORMAT, **first,
                                               "signing_keys": [first]})
    if as_json:
        _print_json({"entries": report.entries, "ok": report.ok, "problems": report.problems})
    else:
        _print_entries(report.entries)
        if report.ok:
            click.echo(f"chain ok: {len(report.entries)} entries, every link and signature valid")
        else:
            click.echo(f"chain BROKEN: {len(report.problems)} problem(s)")
            for problem in report.problems:
                click.echo(f"  {problem}")
    if not report.ok:
        raise SystemExit(1)


@cli.command()
@_keystore_option
@_passphrase_option
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="Write the checkpoint to FILE (default: print it).")
def checkpoint(keystore_dir: Path, passphrase_file: Path | None, output: Path | None) -> None:
    """Sign a checkpoint of the custody log: its size and head hash, in the C2SP signed-note
    checkpoint format, signed by the current signing key. Give it to auditors: one who keeps
    it can prove later logs extend it (audit-shards verify --checkpoint). Refuses a log that
    does not verify. Logs nothing, so the size it attests stays the log's size.

    \b
    Example:
      dataset-keys checkpoint --keystore ~/patchveil-keys -o checkpoint-2026-12.txt
      dataset-keys checkpoint --keystore ~/patchveil-keys
    """
    if output is not None:
        parent = output.absolute().parent
        if not parent.is_dir():
            raise KeystoreError(output, f"directory {parent} does not exist")
        if output.is_dir():
            raise KeystoreError(output, "is a directory")
    store = _open(keystore_dir, passphrase_file)
    note = store.checkpoint()
    if output is None:
        click.echo(note.decode("utf-8"), nl=False)
        return
    atomic_write(output, note, mode=0o644)  # public: it holds no secret
    size = note.split(b"\n")[1].decode("ascii")
    click.echo(f"wrote {output} (custody log of {size} entries, signed by {store.signing_key_id})")


@cli.command()
@_keystore_option
@_passphrase_option
def rotate(keystore_dir: Path, passphrase_file: Path | None) -> None:
    """Start a new master secret and signing key. The old ones stay sealed so old releases
    still decrypt and verify; both keys sign the `rotated` log entry, so the custody chain
    continues. New releases use the new keys. Export the public identity again afterwards.

    \b
    Example:
      dataset-keys rotate --keystore ~/patchveil-keys
      dataset-keys export-public --keystore ~/patchveil-keys -o identity.json
    """
    store = _open(keystore_dir, passphrase_file)
    entry = store.rotate()
    details = entry["details"]
    click.echo(f"rotated: {details['old_key_id']} retired (kept sealed for old releases), "
               f"{details['new_key_id']} is now the signing key (log entry {entry['seq']})")
    click.echo("export the public identity again: dataset-keys export-public -o identity.json")


@cli.command("change-passphrase")
@_keystore_option
@_passphrase_option
@click.option("--new-passphrase-file", type=click.Path(path_type=Path), metavar="FILE", default=None,
              help=NEW_PASSPHRASE_HELP)
def change_passphrase(keystore_dir: Path, passphrase_file: Path | None,
                      new_passphrase_file: Path | None) -> None:
    """Re-seal the keystore under a new passphrase (fresh scrypt salt); keys do not change.
    Logs `passphrase-changed`.

    \b
    Example:
      dataset-keys change-passphrase --keystore ~/patchveil-keys
      dataset-keys change-passphrase --keystore ./keys --passphrase-file old.txt --new-passphrase-file new.txt
    """
    store = _open(keystore_dir, passphrase_file)
    new = read_new_passphrase(new_passphrase_file)
    entry = store.change_passphrase(new)
    click.echo(f"passphrase changed; the old one no longer opens {store.directory} (log entry {entry['seq']})")


@cli.command()
@click.argument("dataset")
@_keystore_option
@_passphrase_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
def destroy(dataset: str, keystore_dir: Path, passphrase_file: Path | None, yes: bool) -> None:
    """Crypto-erase every key of DATASET: no release made with it can be decrypted again, by
    anyone holding this keystore. Other datasets keep their keys. Logs `destroyed`.
    Irreversible; backups of the keystore made before still hold the key: destroy them too.

    \b
    Example:
      dataset-keys destroy imagenet-2012 --keystore ~/patchveil-keys
      dataset-keys destroy old-scan --keystore ./keys --yes
    """
    store = _open(keystore_dir, passphrase_file)
    if not yes:
        if not sys.stdin.isatty():
            raise KeystoreError(dataset, "refusing to destroy a key without --yes when not interactive")
        typed = click.prompt(f"This cannot be undone. Type the dataset id ({dataset}) to destroy its key",
                             default="", show_default=False)
        if typed != dataset:
            raise KeystoreError(dataset, "confirmation did not match; nothing destroyed")
    entry = store.destroy(dataset)
    details = entry["details"]
    click.echo(f"destroyed the key(s) {', '.join(details['key_ids'])} of dataset {dataset} "
               f"(log entry {entry['seq']}); its releases can no longer be decrypted")
    click.echo("keystore backups made before now still hold this key: destroy them too")


def _print_entries(entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        details = json.dumps(entry["details"], sort_keys=True, separators=(",", ":"))
        click.echo(f"{entry['seq']:>4}  {entry['time']}  {entry['event']:<16} {details}")


main = cli

if __name__ == "__main__":
    main()
