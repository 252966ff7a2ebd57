"""The names and command-line options of sample-quality scoring, without torch: `gan metrics`
and `gan train --metrics-every` read them while the command line is parsed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

METRICS = ("fid", "kid", "pr")
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                 + INCEPTION_FILE)
INCEPTION_ENV = "DCGAN_INCEPTION"
CACHE_ENV = "DCGAN_CACHE"


def metric_list(_ctx, _param, value: str) -> tuple[str, ...]:
    """--metrics fid,kid,pr -> ("fid", "kid", "pr"), each checked."""
    names = tuple(dict.fromkeys(v.strip().lower() for v in value.split(",") if v.strip()))
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise click.BadParameter(f"expected some of {','.join(METRICS)}, got {value!r}")
    return names


def extractor_options(prefix: str = "") -> Callable:
    """--inception and --features (with `prefix`, e.g. --metrics-inception in `gan train`)."""

    def decorate(fn: Callable) -> Callable:
        fn = click.option(
            f"--{prefix}features", type=click.Path(dir_okay=False, path_type=Path),
            help="Score in the features of this TorchScript module (images in [-1, 1], "
                 "N x 3 x S x S -> N x D) instead of Inception's, for domains where Inception "
                 "is the wrong yardstick. A TorchScript file is a program: use files you "
                 "trust.")(fn)
        return click.option(
            f"--{prefix}inception", type=click.Path(dir_okay=False, path_type=Path),
            help=f"pytorch-fid's FID Inception weights ({INCEPTION_FILE}; never downloaded). "
                 f"Default: ${INCEPTION_ENV}, else the file in the cache folder "
                 f"($DCGAN_CACHE or ~/.cache/dcgan-pipeline) or torch's hub checkpoints "
                 "folder.")(fn)

    return decorate
