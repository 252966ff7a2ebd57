"""The one base class for errors a user can fix.

A bad path, a refused output folder, shards of the wrong size, a damaged checkpoint, an option
that cannot work: each stage raises a subclass of `UserError` (SourceError, OutputError,
DataError, ...) with a one-line message that says what is wrong and what to do. The command
lines turn exactly this class into `Error: <message>` and exit code 1 (core.cli); any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's request, inputs or machine; the message is for them."""


class MissingExtra(UserError):
    """An optional dependency the command needs is not installed; the message says which
    `pip install` brings it."""
