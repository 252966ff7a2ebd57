"""The images a score compares, as uint8 batches: N images picked from a set on disk (shards, a
folder, any source `pipeline` reads) or N samples drawn from a generator; and their features.

Generated samples are rounded to 8 bits, as a saved PNG would be, so fakes and reals reach the
extractor alike. Which N images of a larger set are used is a seeded draw over the whole set
(not its first N, which may all come from one shard or class), read back in stored order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from core.errors import UserError
from core.pixels import to_float, to_uint8
from gan.quality.extractors import Extractor
from gan.sample import generate, sample_z
from pipeline.decode import decode_image
from pipeline.sources import Source, open_source
from pipeline.statuses import RecordError

MIN_IMAGES = 4  # precision/recall's k = 3 neighbours need 4 points; a covariance needs 2


class ImageSetError(UserError):
    """An image set cannot be scored (empty, an unreadable image, mixed sizes)."""


def open_images(spec: str | os.PathLike) -> tuple[Source, int]:
    """The source behind `spec` and how many images it holds."""
    source = open_source(spec)
    count = source.count()
    if count is None:  # shards without an index.json: list them once
        count = sum(1 for _ in source)
    if count < MIN_IMAGES:
        raise ImageSetError(f"{spec}: {count} images; a score needs at least {MIN_IMAGES}")
    return source, count


def pick(count: int, n: int, seed: int) -> np.ndarray:
    """Sorted positions of min(n, count) images out of `count`, drawn with `seed`."""
    if n >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, n, replace=False))


def set_batches(source: Source, positions: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """The images at `positions` (sorted) as uint8 (B, S, S, 3) batches, in stored order; one
    that does not read or decode, or whose size differs from the first, is an ImageSetError."""
    wanted, batch, shape = iter(positions.tolist()), [], None
    target = next(wanted, None)
    for index, record in enumerate(source):
        if index != target:
            continue
        try:
            pixels = decode_image(record.read())
        except RecordError as err:  # unreadable or not an image: the set is not usable
            raise ImageSetError(f"{record.key}: {err.reason}") from None
        if shape is None:
            shape = pixels.shape
        elif pixels.shape != shape:
            raise ImageSetError(f"{record.key} is {pixels.shape[1]}x{pixels.shape[0]}, the set's "
                                f"first image {shape[1]}x{shape[0]}: score images of one size")
        batch.append(pixels)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
        target = next(wanted, None)
        if target is None:
            break
    if batch:
        yield np.stack(batch)


def generated_batches(G: nn.Module, nz: int, prior: str, n: int, seed: int, batch_size: int,
                      bn: str, device: torch.device) -> Iterator[np.ndarray]:
    """`n` samples of G as uint8 batches; z is drawn on the CPU from `seed`, so the same seed
    gives the same samples on any device."""
    rng = torch.Generator().manual_seed(seed)
    for start in range(0, n, batch_size):
        z = sample_z(min(batch_size, n - start), nz, prior, rng).to(device)
        yield to_uint8(generate(G, z, bn))


def embed(extractor: Extractor, batches: Iterator[np.ndarray], device: torch.device, n: int,
          desc: str, progress: bool) -> Iterator[torch.Tensor]:
    """Features of uint8 batches, on `device` (the bytes cross to it, then become floats)."""
    module = extractor.module.to(device)
    with torch.inference_mode(), tqdm(total=n, desc=desc, unit="img",
                                      disable=not progress) as bar:
        for pixels in batches:
            features = module(to_float(torch.from_numpy(pixels).to(device)))
            bar.update(len(pixels))
            yield features
