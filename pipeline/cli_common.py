"""What the three command lines (`pipeline`, `gan`, `analysis`) share: the one-line error rule
and the options that mean the same thing everywhere.

An option defined here has one spelling, one default and one help text in every command that
takes it, so `--device`, `--bn`, `--ckpt`, `--overwrite` or `--progress` never mean two things.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import click

BN_MODES = ("batch", "running")
BN_HELP = (
    "BatchNorm statistics when sampling G: 'batch' = statistics of the batch being drawn (the "
    "authors' Theano code, so each figure is drawn as one batch), 'running' = running averages "
    "from training (PyTorch eval())."
)
DEVICE_HELP = "'auto' (CUDA if present, else CPU), 'cpu', 'cuda', 'cuda:1', ..."


class MissingExtra(ImportError):
    """An optional dependency the command needs is not installed; the message says which
    `pip install` brings it."""


def one_line_errors(*errors: type[Exception]) -> Callable:
    """A decorator turning `errors` (and missing/unreadable files, and missing optional
    dependencies) into click's one-line 'Error: ...' with exit code 1 instead of a traceback.
    Anything else is a bug and keeps its traceback."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (*errors, MissingExtra) as err:
                raise click.ClickException(str(err)) from None
            except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
                raise click.ClickException(f"{err.filename}: {err.strerror}") from None

        return wrapper

    return decorate


def ckpt_option(fn: Callable) -> Callable:
    return click.option("--ckpt", required=True, type=click.Path(dir_okay=False, path_type=Path),
                        help="Checkpoint from `gan train` (e.g. RUN/checkpoints/last.pt).")(fn)


def out_dir_option(fn: Callable) -> Callable:
    """--out as a folder the command owns (see pipeline.outputs for the rule)."""
    return click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
                        help="Output folder (created if missing; a finished run in it is "
                             "refused unless --overwrite).")(fn)


def device_option(fn: Callable) -> Callable:
    return click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)(fn)


def bn_option(extra_help: str = "") -> Callable:
    """--bn for commands that sample G; `extra_help` adds what it changes in that command."""
    return click.option("--bn", type=click.Choice(BN_MODES), default="batch", show_default=True,
                        help=BN_HELP + (" " + extra_help if extra_help else ""))


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
