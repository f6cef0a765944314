"""``audit-shards``: the auditor's commands. Thin click wrappers; each subcommand is one module.

Exit codes: 0 every check passed, 1 a check failed (each failure named), 2 bad usage or
unreadable input (one line on stderr, ``error: <file>: <reason>``). Add a command with
``@cli.command()`` and ``@one_line_errors``; ``AuditUsageError`` gives the exit code 2 line.
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable

import click

from audit.verify import VerifyReport, verify_release
from keys.custody import read_identity
from keys.errors import KeystoreError
from shards.manifest import ManifestError


class AuditUsageError(click.ClickException):
    """Bad usage or input the audit cannot start from: one line on stderr, exit status 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn input errors into one clear line and exit code 2."""
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (KeystoreError, ManifestError, ValueError) as exc:
            raise AuditUsageError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        except OSError as exc:
            raise AuditUsageError(f"{exc.filename or 'file system'}: {exc.strerror or exc}") from None
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Audit a release of encrypted shards with only the data owner's public identity.

    \b
    Example:
      audit-shards verify ~/release --public-key identity.json --custody-log custody.log
    """


@cli.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--public-key", "public_key", required=True, metavar="PUB.json",
              type=click.Path(path_type=Path),
              help="The owner's public identity (`dataset-keys export-public`), obtained out of band.")
@click.option("--custody-log", type=click.Path(path_type=Path), metavar="FILE",
              help="The owner's custody log; without it that check is skipped.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON for machines.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar (default: on for releases over 256 MB, on a terminal).")
@one_line_errors
def verify(out: Path, public_key: Path, custody_log: Path | None, as_json: bool,
           progress: bool | None) -> None:
    """Check a release: manifest signature, shard files, sample contents, custody log, key id.

    Exit 0 when every check passes, 1 when any fails (named), 2 on bad usage.

    \b
    Example:
      audit-shards verify ~/release --public-key identity.json
      audit-shards verify ~/release --public-key identity.json --custody-log custody.log --json
    """
    if not out.is_dir():
        raise AuditUsageError(f"{out}: not a release folder")
    identity = read_identity(public_key)
    if custody_log is not None and not custody_log.is_file():
        raise AuditUsageError(f"{custody_log}: custody log not found")
    report = verify_release(out, identity, custody_log=custody_log, progress=progress)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        _print_table(report)
    if not report.ok:
        sys.exit(1)


def _print_table(report: VerifyReport) -> None:
    width = max(len(c.name) for c in report.checks)
    click.echo(f"release {report.release}")
    for check in report.checks:
        click.echo(f"  {check.name:<{width}}  {check.status.upper():<4}  {check.summary}")
        for problem in check.problems:
            click.echo(f"  {'':<{width}}        - {problem}")
        if check.more:
            click.echo(f"  {'':<{width}}        - … and {check.more} more")
    if report.ok:
        passed = sum(c.status == "pass" for c in report.checks)
        click.echo(f"verified: {passed} of {len(report.checks)} checks passed"
                   + ("" if passed == len(report.checks) else
                      f" ({', '.join(c.name for c in report.checks if c.status == 'skip')} skipped)"))
    else:
        click.echo(f"FAILED: {', '.join(report.failed)}")


def _register_privacy() -> None:
    """`privacy` lives in audit.privacy (it pulls in torch for the learned attacks)."""
    from audit.privacy import privacy_command

    cli.add_command(privacy_command, name="privacy")


_register_privacy()


def main() -> None:
    cli(prog_name="audit-shards")


if __name__ == "__main__":
    main()
