"""What the three command lines (`pipeline`, `gan`, `analysis`) share: how they start and stop,
the one-line error rule, and the options that mean the same thing everywhere.

The error rule: a `UserError` (core.errors) ends the command with `Error: <message>` and exit
code 1, and so does the operating system refusing a file the user named (missing, a folder
where a file was expected, permission denied): both are facts about the user's request or
machine. Anything else is a bug and keeps its traceback.

An option defined here has one spelling, one default and one help text in every command that
takes it, so `--device`, `--out`, `--overwrite` or `--progress` never mean two things. The same
goes for the value types every command shares: a seed (`SEED`) and a range of real numbers
(`FiniteFloatRange`), so the range `--help` shows is the one enforced.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import click

from core.errors import UserError
from core.signals import exit_code, signal_name, stop_on_signals

# Every seed a command takes: the seeds numpy's and scikit-learn's generators accept (a negative
# or larger one would end in their traceback instead of a usage error).
MAX_SEED = 2**32 - 1
SEED = click.IntRange(0, MAX_SEED)


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange that also refuses nan and infinity: nan compares false with both
    ends, so click's own lets it through whatever range `--help` shows."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number.", param, ctx)
        return number


DEVICE_HELP = "'auto' (CUDA if present, else CPU), 'cpu', 'cuda', 'cuda:1', ..."
FILE_REFUSALS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def run(group: click.Group, name: str) -> NoReturn:
    """Run the command line `name` as its console script does: stop signals handled from the
    first moment (core.signals), click's own errors and `--help` as usual, and a stop signal
    anywhere outside a command's own handling (start-up, imports) as one line."""
    stop_on_signals()
    try:
        code = group.main(prog_name=name, standalone_mode=False)
    except click.ClickException as err:
        err.show()
        code = err.exit_code
    except (click.Abort, KeyboardInterrupt) as err:
        cause = err.__context__ if isinstance(err, click.Abort) else err
        message = str(cause or "")
        click.echo(message or f"{name}: stopped by {signal_name()}", err=True)
        code = exit_code()
    sys.exit(code if isinstance(code, int) else 0)


def user_errors(fn: Callable) -> Callable:
    """A command decorator: a UserError, or the system refusing a named file, becomes click's
    one-line 'Error: ...' with exit code 1 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            raise click.ClickException(str(err)) from None
        except FILE_REFUSALS as err:
            raise click.ClickException(f"{err.filename}: {err.strerror}") from None

    return wrapper


def _resolved_device(_ctx: click.Context, _param: click.Parameter, value: str):
    """--device checked and resolved once, while the command line is read: a misspelt name or a
    GPU this torch cannot see is a usage error before any work."""
    from core.devices import resolve_device

    try:
        return resolve_device(value)
    except UserError as err:
        raise click.ClickException(str(err)) from None


def device_option(fn: Callable) -> Callable:
    """--device, handed to the command as a resolved torch.device."""
    return click.option("--device", default="auto", show_default=True, help=DEVICE_HELP,
                        callback=_resolved_device)(fn)


def out_dir_option(fn: Callable) -> Callable:
    """--out as a folder the command owns (see core.outputs for the rule)."""
    return click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
                        help="Output folder (created if missing; a finished run in it is "
                             "refused unless --overwrite).")(fn)


def progress_option(fn: Callable) -> Callable:
    return click.option("--progress/--no-progress", default=True, show_default=True,
                        help="Show progress bars (on stderr).")(fn)


def overwrite_option(fn: Callable) -> Callable:
    return click.option("--overwrite", is_flag=True,
                        help="Replace a finished run in --out (otherwise refused).")(fn)


def restart_options(fn: Callable) -> Callable:
    """--resume and --overwrite, for commands that can continue an interrupted run."""
    fn = click.option("--resume", is_flag=True,
                      help="Continue an interrupted run in --out from its last checkpoint.")(fn)
    return overwrite_option(fn)
