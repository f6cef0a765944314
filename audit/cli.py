"""``audit-shards``: the auditor's commands. Thin click wrappers; each subcommand is one module.

Exit codes: 0 every check passed, 1 a check failed (each failure named), 2 bad usage or
unreadable input (one line on stderr, ``error: <file>: <reason>``, from the shared renderer in
``shards.console``). Add a command with ``@cli.command()`` and raise ``AuditError`` for bad input.
A command that needs an optional extra (torch, scipy, ...) goes in ``LAZY_COMMANDS`` instead:
it is imported only when run, so ``verify`` and ``--help`` start on a core install.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

import click

from audit.verify import VerifyReport, verify_release
from audit.errors import AuditError
from keys.checkpoint import parse_checkpoint
from keys.custody import read_identity
from shards.console import Commands, command_group
from shards import storage


class LazyCommand(NamedTuple):
    """A subcommand imported only when it runs: ``module:attr``, what ``--help`` lists for it,
    and the modules its extra installs (checked first, so a missing one is named, not a traceback)."""

    target: str
    short_help: str
    needs: tuple[str, ...] = ()

    def load(self, name: str) -> click.Command:
        import importlib

        from shards.errors import require

        for module in self.needs:
            require(module, f"audit-shards {name}", extra="audit")
        module_name, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module_name), attr)


class LazyGroup(Commands):
    """The shared command group (`shards.console.Commands`), with heavy subcommands imported on
    first use.

    ``audit-shards --help`` lists them with their stored short help without importing them, so
    the start-up of ``verify`` (and of ``--help``) never pays for torch, timm, scipy or skimage,
    and a core install without the ``audit`` extra can still verify. A missing extra surfaces
    while the group resolves the command, so the shared renderer shows it as one line, exit 2.
    """

    def __init__(self, *args: Any, lazy: dict[str, LazyCommand] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})
        self._listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = self.lazy.get(cmd_name)
        if spec is not None and cmd_name not in self.commands:
            if self._listing:  # the group's --help: a stand-in carrying the short help
                return click.Command(cmd_name, help=spec.short_help)
            self.add_command(spec.load(cmd_name), name=cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            self._listing = False


# Subcommands that pull in an optional extra: imported only when run.
LAZY_COMMANDS = {
    # the learned attacks train models (torch, timm); metrics and inversion use skimage, scipy
    "privacy": LazyCommand("audit.privacy:privacy_command",
                           "Attack a cipher on real images: REPORT/privacy.json and an HTML/PNG gallery.",
                           needs=("scipy", "skimage", "torch", "timm")),
}


@command_group("audit-shards", cls=LazyGroup, lazy=LAZY_COMMANDS)
def cli() -> None:
    """Audit a release of encrypted shards with only the data owner's public identity.

    \b
    Example:
      audit-shards verify ~/release --public-key identity.json --custody-log custody.log
    """


@cli.command()
@click.argument("out")  # a folder or a store URL (s3://...): click.Path would mangle a URL
@click.option("--public-key", "public_key", required=True, metavar="PUB.json",
              type=click.Path(path_type=Path),
              help="The owner's public identity (`dataset-keys export-public`), obtained out of band.")
@click.option("--custody-log", type=click.Path(path_type=Path), metavar="FILE",
              help="The owner's custody log; without it that check is skipped.")
@click.option("--checkpoint", "checkpoint_file", type=click.Path(path_type=Path), metavar="OLD.txt",
              help="A checkpoint you kept (`dataset-keys checkpoint`): prove the custody log still "
                   "extends it (nothing you saw cut, rewritten or forked). Needs --custody-log.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON for machines.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar (default: on for releases over 256 MB, on a terminal).")
@click.option("--quiet", is_flag=True, help="No progress bar (same as --no-progress).")
def verify(out: str, public_key: Path, custody_log: Path | None, checkpoint_file: Path | None,
           as_json: bool, progress: bool | None, quiet: bool) -> None:
    """Check a release: manifest signature, shard files, sample contents, custody log, key id;
    with --checkpoint, also that the log extends a checkpoint you kept.

    Exit 0 when every check passes, 1 when any fails (named), 2 on bad usage.

    \b
    Example:
      audit-shards verify ~/release --public-key identity.json
      audit-shards verify ~/release --public-key identity.json --custody-log custody.log --json
      audit-shards verify ~/release --public-key identity.json --custody-log custody.log --checkpoint old.txt
      audit-shards verify s3://bucket/release --public-key identity.json
    """
    out = storage.location(out)
    if isinstance(out, Path) and not out.is_dir():
        raise AuditError(out, "not a release folder")
    identity = read_identity(public_key)
    if custody_log is not None and not custody_log.is_file():
        raise AuditError(custody_log, "custody log not found")
    checkpoint = None
    if checkpoint_file is not None:
        if custody_log is None:
            raise AuditError("--checkpoint", "needs --custody-log: a checkpoint is checked against the log")
        try:
            data = checkpoint_file.read_bytes()
        except OSError as exc:
            raise AuditError(checkpoint_file, f"cannot read the checkpoint ({exc.strerror})") from None
        checkpoint = parse_checkpoint(data, str(checkpoint_file))
    report = verify_release(out, identity, custody_log=custody_log, progress=False if quiet else progress,
                            checkpoint=checkpoint)
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


def main() -> None:
    cli(prog_name="audit-shards")


if __name__ == "__main__":
    main()
