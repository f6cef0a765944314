"""``dataset-keys``: the data owner's commands over ``keys.keystore``; parse, call, print.

Errors are one line, ``error: <file>: <reason>``, exit status 2, nothing changed. A failed
``log --verify`` exits 1. The passphrase never comes from argv: ``$PATCHVEIL_PASSPHRASE``,
``--passphrase-file``, or a hidden prompt.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import click

from keys.custody import IDENTITY_FORMAT, verify_chain
from keys.errors import KeystoreError
from keys.keystore import Keystore, atomic_write, create_keystore, open_keystore
from keys.passphrase import read_passphrase


class CliError(click.ClickException):
    """Bad input or a refused operation: one line on stderr, exit status 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def _one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeystoreError as exc:
            raise CliError(str(exc)) from None
        except OSError as exc:
            raise CliError(f"{exc.filename or 'file system'}: {exc.strerror or exc}") from None
    return wrapper


_keystore_option = click.option(
    "--keystore", "keystore_dir", envvar="PATCHVEIL_KEYSTORE", required=True, metavar="DIR",
    type=click.Path(path_type=Path), help="Keystore directory (default: $PATCHVEIL_KEYSTORE).")
_passphrase_option = click.option(
    "--passphrase-file", type=click.Path(path_type=Path), metavar="FILE", default=None,
    help="Read the passphrase from FILE (one trailing newline is ignored). Without it: "
         "$PATCHVEIL_PASSPHRASE, else a hidden prompt.")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")


def _open(keystore_dir: Path, passphrase_file: Path | None) -> Keystore:
    return open_keystore(keystore_dir, read_passphrase(passphrase_file))


def _print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Keys and custody for a data owner: create a keystore, inspect it, export the public
    identity an auditor needs, and show or verify the signed custody log.

    \b
    Example:
      dataset-keys init --keystore ~/patchveil-keys
      dataset-keys info --keystore ~/patchveil-keys
    """


@cli.command()
@_keystore_option
@_passphrase_option
@_one_line_errors
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
    click.echo(f"key id      {store.key_id}")
    click.echo(f"public key  {base64.b64encode(store.public_key).decode('ascii')}")


@cli.command()
@_keystore_option
@_passphrase_option
@_json_option
@_one_line_errors
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
        _print_json({"keystore": str(store.directory), "key_id": store.key_id,
                     "created": store.created, "public_key": public_key, "datasets": datasets})
        return
    click.echo(f"keystore    {store.directory}")
    click.echo(f"key id      {store.key_id}")
    click.echo(f"created     {store.created}")
    click.echo(f"public key  {public_key}")
    click.echo(f"datasets    {len(datasets)}")
    for item in datasets:
        click.echo(f"  {item['dataset_id']}  {item['key_id']}  derived {item['derived']}")


@cli.command("export-public")
@_keystore_option
@_passphrase_option
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, metavar="FILE",
              help="Where to write the public identity (JSON).")
@_one_line_errors
def export_public(keystore_dir: Path, passphrase_file: Path | None, output: Path) -> None:
    """Write the public identity an auditor needs (public key, datasets, custody log length;
    no secrets) and log `exported-public` with the file's sha256.

    \b
    Example:
      dataset-keys export-public --keystore ~/patchveil-keys -o identity.json
    """
    parent = output.absolute().parent
    if not parent.is_dir():
        raise CliError(f"{output}: directory {parent} does not exist")
    if output.is_dir():
        raise CliError(f"{output}: is a directory")
    if not os.access(parent, os.W_OK):
        raise CliError(f"{output}: directory {parent} is not writable")
    store = _open(keystore_dir, passphrase_file)
    identity = store.public_identity()
    data = (json.dumps(identity, indent=2, sort_keys=True) + "\n").encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    store.log("exported-public", {"identity_sha256": digest,
                                  "custody_entries": identity["custody"]["entries"]})
    atomic_write(output, data, mode=0o644)
    click.echo(f"wrote {output} (key id {store.key_id}, {len(identity['datasets'])} datasets, "
               f"sha256 {digest[:16]}…)")


@cli.command()
@_keystore_option
@_passphrase_option
@click.option("--verify", is_flag=True,
              help="Check hashes, order, times and signatures; exit 1 if anything is wrong.")
@_json_option
@_one_line_errors
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
    public_key = base64.b64encode(store.public_key).decode("ascii")
    signer = {"key_id": store.key_id, "public_key": public_key}
    report = verify_chain(store.custody.path, {"format": IDENTITY_FORMAT, **signer,
                                               "signing_keys": [signer]})
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


def _print_entries(entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        details = json.dumps(entry["details"], sort_keys=True, separators=(",", ":"))
        click.echo(f"{entry['seq']:>4}  {entry['time']}  {entry['event']:<16} {details}")


main = cli

if __name__ == "__main__":
    main()
