"""What every analysis reads: a trained run (checkpoint) and real images (training shards).

The reading itself is training's (gan.checkpoint, gan.data); this module turns the problems a
user can cause (no checkpoint, shards made at another size) into one `AnalysisError` whose
message the CLI prints as a single line, and says which checkpoint a size must match.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from gan import data
from gan.checkpoint import CheckpointError, load_models
from gan.models import Discriminator, Generator
from pipeline.devices import resolve_device


class AnalysisError(Exception):
    """A problem with the user's request or inputs; the message is for them."""


def load_run(
    ckpt: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[Generator, Discriminator, dict]:
    """G, D and the run config of a checkpoint on `device` ('auto' as everywhere), or an
    AnalysisError saying why not."""
    if not Path(ckpt).is_file():
        raise AnalysisError(f"{ckpt}: no such checkpoint file")
    try:
        return load_models(ckpt, device=resolve_device(device))
    except (CheckpointError, ValueError) as err:
        raise AnalysisError(str(err)) from None


def _open(shards: str | os.PathLike) -> list[str]:
    try:
        return data.open_shards(shards)[0]
    except data.DataError as err:
        raise AnalysisError(str(err)) from None


def shard_files(shards: str | os.PathLike) -> list[str]:
    """The .tar files of a shard source (an AnalysisError if there are none or they are empty)."""
    return _open(shards)


def count_images(shards: str | os.PathLike) -> int:
    """How many images a shard source holds (from its index.json, else its tar headers)."""
    try:
        return sum(data.open_shards(shards)[1])
    except data.DataError as err:
        raise AnalysisError(str(err)) from None


def _size_error(shards: str | os.PathLike, image_size: int, err: data.DataError) -> AnalysisError:
    return AnalysisError(f"{shards}: {err} (the checkpoint makes {image_size}x{image_size} "
                         "images)")


def image_batches(
    shards: str | os.PathLike,
    image_size: int,
    batch_size: int = 256,
    limit: int | None = None,
) -> Iterator[torch.Tensor]:
    """Images of a shard source in stored order, as [B, 3, S, S] float batches in [-1, 1].

    Streams (memory stays flat). Shards of another image size than the checkpoint's are a user
    error, found on the first image rather than after a long run.
    """
    urls = _open(shards)
    try:
        yield from data.image_batches(urls, image_size, batch_size, limit)
    except data.DataError as err:
        raise _size_error(shards, image_size, err) from None


def check_image_size(shards: str | os.PathLike, image_size: int) -> None:
    """Fail now, with the fix, if the shards hold images of another size (not after an hour)."""
    urls = _open(shards)
    try:
        data.check_image_size(urls, image_size)
    except data.DataError as err:
        raise _size_error(shards, image_size, err) from None
