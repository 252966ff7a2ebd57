"""The console scripts `pipeline`, `gan` and `analysis`.

Each takes over the stop signals (core.signals) before its command line's module, and what that
imports, is loaded, so a Ctrl-C or SIGTERM in the first second (while numpy, OpenCV or torch
load) ends the command with one line instead of a traceback, or instead of nothing at all in a
process that inherited SIGINT as ignored.
"""

from __future__ import annotations

import importlib
import sys

from core.signals import exit_code, signal_name, stop_on_signals


def _launch(name: str) -> None:
    stop_on_signals()
    try:
        cli = importlib.import_module(f"{name}.cli")
    except KeyboardInterrupt:
        sys.stderr.write(f"{name}: stopped by {signal_name()} while starting\n")
        sys.exit(exit_code())
    from core.cli import run

    run(cli.main, name)


def pipeline() -> None:
    _launch("pipeline")


def gan() -> None:
    _launch("gan")


def analysis() -> None:
    _launch("analysis")
