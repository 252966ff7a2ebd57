"""The options of `gan` that `analysis` shares, for the commands that read a trained run and
sample its generator. Plain values only: the command lines start without importing torch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

BN_MODES = ("batch", "running")
BN_HELP = (
    "BatchNorm statistics when sampling G: 'batch' = statistics of the batch being drawn (the "
    "authors' Theano code, so each figure is drawn as one batch), 'running' = running averages "
    "from training (PyTorch eval())."
)


def ckpt_option(fn: Callable) -> Callable:
    return click.option("--ckpt", required=True, type=click.Path(dir_okay=False, path_type=Path),
                        help="Checkpoint from `gan train` (e.g. RUN/checkpoints/last.pt).")(fn)


def bn_option(extra_help: str = "") -> Callable:
    """--bn for commands that sample G; `extra_help` adds what it changes in that command."""
    return click.option("--bn", type=click.Choice(BN_MODES), default="batch", show_default=True,
                        help=BN_HELP + (" " + extra_help if extra_help else ""))
