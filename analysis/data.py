"""What every analysis reads: a trained run (checkpoint) and real images (training shards).

The reading itself is training's (gan.checkpoint, gan.data), and so are its errors for users
(CheckpointError, DataError); this module adds what only an analysis knows: which checkpoint an
image size must match, said in the error when the shards were made at another size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch

from core.errors import UserError
from gan import data
from gan.checkpoint import load_models
from gan.models import Discriminator, Generator


class AnalysisError(UserError):
    """A problem with the user's request or inputs to an analysis; the message is for them."""


def load_run(ckpt: str | os.PathLike, device: torch.device) -> tuple[Generator, Discriminator,
                                                                     dict]:
    """G, D and the run config of a checkpoint on `device` (a CheckpointError says why not)."""
    return load_models(ckpt, device=device)


def shard_files(shards: str | os.PathLike) -> list[str]:
    """The .tar files of a shard source (a DataError if there are none or they are empty)."""
    return data.open_shards(shards)[0]


def count_images(shards: str | os.PathLike) -> int:
    """How many images a shard source holds (from its index.json, else its tar headers)."""
    return sum(data.open_shards(shards)[1])


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
    urls = shard_files(shards)
    try:
        yield from data.image_batches(urls, image_size, batch_size, limit)
    except data.DataError as err:
        raise _size_error(shards, image_size, err) from None


def check_image_size(shards: str | os.PathLike, image_size: int) -> None:
    """Fail now, with the fix, if the shards hold images of another size (not after an hour)."""
    urls = shard_files(shards)
    try:
        data.check_image_size(urls, image_size)
    except data.DataError as err:
        raise _size_error(shards, image_size, err) from None


def _size_error(shards: str | os.PathLike, image_size: int, err: data.DataError) -> AnalysisError:
    return AnalysisError(f"{shards}: {err} (the checkpoint makes {image_size}x{image_size} "
                         "images)")
