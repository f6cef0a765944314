"""Command-line plumbing the four commands share: one error renderer, --version, progress bars.

Every command (`dataset-keys`, `encrypt-dataset`, `train-encrypted`, `audit-shards`) is a
`Commands` group, so they all fail the same way: ``error: <file>: <reason>`` on one line,
exit 2 for bad usage or input, 1 for a failed check or run. Progress bars are drawn only on a
terminal, so logs of batch jobs stay free of carriage returns.
"""
from __future__ import annotations

import os
import sys
from typing import Any

import click

from shards.errors import render


def version_option(prog_name: str):
    """`--version` for a command group: the installed patchveil version."""
    return click.version_option(package_name="patchveil", prog_name=prog_name,
                                message="%(prog)s (patchveil) %(version)s")


def progress_bar(*, enabled: bool = True, **kwargs: Any):
    """A tqdm bar, drawn only when asked for and stderr is a terminal (never in logs)."""
    from tqdm import tqdm

    show = enabled and sys.stderr.isatty()
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(disable=not show, **kwargs)


class CommandError(click.ClickException):
    """What a command shows for any failure: ``error: <line>`` on stderr, with its exit code."""

    def __init__(self, line: str, exit_code: int) -> None:
        super().__init__(line)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _rendered(invoke, ctx: click.Context) -> Any:
    """Run `invoke(ctx)`; any failure leaves as a one-line `CommandError` with its exit code."""
    try:
        return invoke(ctx)
    except click.UsageError as exc:  # one line too, naming the option (click says which)
        raise CommandError(" ".join(exc.format_message().split()), exc.exit_code) from None
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except Exception as exc:  # noqa: BLE001 - the one place every error is shown
        if os.environ.get("PATCHVEIL_DEBUG"):
            raise
        line, code = render(exc)
        raise CommandError(line, code) from None


class Command(click.Command):
    """A command that fails through `shards.errors.render`, also when invoked on its own."""

    def invoke(self, ctx: click.Context) -> Any:
        return _rendered(super().invoke, ctx)


class Commands(click.Group):
    """A command group whose subcommands all fail through `shards.errors.render`.

    This is the one error renderer: click's own usage errors keep click's message (exit 2),
    on one line, project errors render themselves, and anything unexpected is still one line
    (exit 1). Set PATCHVEIL_DEBUG=1 to see the traceback instead.
    """

    command_class = Command

    def invoke(self, ctx: click.Context) -> Any:
        return _rendered(super().invoke, ctx)


def command_group(prog_name: str, cls: type[Commands] = Commands, **kwargs: Any):
    """The decorator each command line starts from: a `Commands` group with -h and --version."""
    def decorate(fn):
        group = click.group(cls=cls, context_settings={"help_option_names": ["-h", "--help"]},
                            **kwargs)(fn)
        return version_option(prog_name)(group)
    return decorate
