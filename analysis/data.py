"""What every analysis reads: a trained run (checkpoint) and real images (training shards).

Both turn the problems a user can cause (no checkpoint, shards made at another size) into one
`AnalysisError` whose message the CLI prints as a single line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from gan.checkpoint import CheckpointError, load_models
from gan.models import Discriminator, Generator
from pipeline.reader import shard_urls, training_dataset
from pipeline.sources import SourceError


class AnalysisError(Exception):
    """A problem with the user's request or inputs; the message is for them."""


def load_run(ckpt: str | os.PathLike, device: str = "cpu") -> tuple[Generator, Discriminator, dict]:
    """G, D and the run config of a checkpoint, or an AnalysisError saying why not."""
    if not Path(ckpt).is_file():
        raise AnalysisError(f"{ckpt}: no such checkpoint file")
    try:
        return load_models(ckpt, device=device)
    except CheckpointError as err:
        raise AnalysisError(str(err)) from None


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
    try:
        urls = shard_urls(shards)
    except SourceError as err:
        raise AnalysisError(str(err)) from None
    batch: list[torch.Tensor] = []
    seen = 0
    try:
        for image in training_dataset(urls, image_size=image_size, shuffle=0):
            batch.append(image)
            seen += 1
            if len(batch) == batch_size or seen == limit:
                yield torch.stack(batch)
                batch = []
            if seen == limit:
                return
    except ValueError as err:
        raise AnalysisError(f"{shards}: {err} (the checkpoint makes {image_size}x{image_size} "
                            "images)") from None
    if batch:
        yield torch.stack(batch)
    if seen == 0:
        raise AnalysisError(f"{shards}: no images in these shards")


def check_image_size(shards: str | os.PathLike, image_size: int) -> None:
    """Fail now, with the fix, if the shards hold images of another size (not after an hour)."""
    next(image_batches(shards, image_size, batch_size=1, limit=1))


