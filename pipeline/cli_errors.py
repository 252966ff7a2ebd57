"""How every command line of the project reports a user's mistake: one line, exit code 1."""

from __future__ import annotations

import functools
from collections.abc import Callable

import click


def one_line_errors(*errors: type[Exception]) -> Callable:
    """A decorator turning `errors` (and missing/unreadable files) into click's one-line
    'Error: ...' with exit code 1 instead of a traceback. Anything else is a bug and keeps its
    traceback."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except errors as err:
                raise click.ClickException(str(err)) from None
            except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
                raise click.ClickException(f"{err.filename}: {err.strerror}") from None

        return wrapper

    return decorate
