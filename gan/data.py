"""Training batches from shards: streamed (the default) or decoded once into a uint8 cache.

Streaming wraps `pipeline.reader.training_dataset` in a DataLoader: shards are split across DDP
ranks and loader workers, shuffled per epoch with a seed derived from (seed, epoch), and decoded
per sample. Decoding PNG/JPEG costs ~2.5-4.7k images/s per core, far below what a GPU consumes
at 64x64, so `cache="ram"|"gpu"` decodes the shards once into a uint8 array (a memory-mapped
file, optionally copied to the GPU), shuffles by index each epoch and converts to float on the
device.

Both sources have a fixed number of full batches per epoch, the same on every rank (DDP would
hang if one rank ran out of data first), and can start an epoch `skip` batches in, which is how
`--resume` continues exactly where a run stopped.
"""

from __future__ import annotations

import functools
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.files import write_json_atomic
from pipeline.pixels import to_float
from pipeline.reader import decode_sample, training_dataset
from pipeline.sources import SHARD_IMAGE_EXTS, ShardSource, SourceError, open_source

SHUFFLE_BUFFER = 1000
CACHES = ("none", "ram", "gpu")


class DataError(Exception):
    """The shards cannot feed this run (empty, too few for the ranks, wrong size); for users."""


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct, reproducible shuffle seed per epoch."""
    return seed * 100_003 + epoch


def open_shards(spec: str | os.PathLike) -> tuple[list[str], list[int]]:
    """The shard files of a source and their sample counts (from index.json, else counted)."""
    try:
        source = open_source(spec)
    except SourceError as err:
        raise DataError(str(err)) from None
    if not isinstance(source, ShardSource):
        raise DataError(f"{spec}: expected WebDataset shards (a folder with index.json, a .tar, a "
                        f"glob or a brace pattern), found a {source.kind} source")
    counts = source.counts or [_count_samples(url) for url in source.urls]
    if sum(counts) == 0:
        raise DataError(f"{spec}: the shards hold no samples")
    return source.urls, counts


def _count_samples(url: str) -> int:
    """Samples with an image in one .tar (reads member headers only, not the images)."""
    exts = {f".{e}" for e in SHARD_IMAGE_EXTS}
    with tarfile.open(url) as tar:
        keys = {m.name.rsplit(".", 1)[0] for m in tar if os.path.splitext(m.name)[1] in exts}
    return len(keys)


def streaming_steps(counts: list[int], batch_size: int, world: int, workers: int) -> int:
    """Full batches per epoch that every rank can deliver when streaming.

    webdataset gives rank r the shards r::world and its loader worker w the shards w::workers of
    those; each worker batches its own samples and drops its last partial batch. The epoch is the
    smallest rank's count, so all ranks take the same number of steps.
    """
    per_rank = []
    for rank in range(world):
        rank_counts = counts[rank::world]
        per_rank.append(sum(sum(rank_counts[w::max(workers, 1)]) // batch_size
                            for w in range(max(workers, 1))))
    return min(per_rank)


class StreamingBatches:
    """Float batches in [-1, 1] decoded from shards by `workers` DataLoader processes."""

    def __init__(self, urls: list[str], counts: list[int], *, image_size: int, batch_size: int,
                 workers: int, seed: int, rank: int = 0, world: int = 1, pin_memory: bool = False):
        self.urls, self.image_size, self.batch_size = urls, image_size, batch_size
        self.workers, self.seed, self.pin_memory = workers, seed, pin_memory
        self.steps_per_epoch = streaming_steps(counts, batch_size, world, workers)
        if self.steps_per_epoch == 0:
            raise DataError(
                f"{sum(counts)} samples in {len(urls)} shards give no full batch of {batch_size} "
                f"for every one of {world} rank(s) x {max(workers, 1)} loader worker(s): use more "
                f"shards, a smaller --batch-size or fewer --workers")

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[torch.Tensor]:
        """This epoch's batches, starting after `skip` of them (decoded and dropped: exact)."""
        dataset = training_dataset(self.urls, image_size=self.image_size,
                                   shuffle=SHUFFLE_BUFFER, seed=epoch_seed(self.seed, epoch))
        loader = DataLoader(dataset, batch_size=self.batch_size, drop_last=True,
                            num_workers=self.workers, pin_memory=self.pin_memory,
                            prefetch_factor=4 if self.workers else None)
        for i, batch in enumerate(loader):
            if i >= self.steps_per_epoch:
                break
            if i >= skip:
                yield batch


class CachedBatches:
    """uint8 images decoded once, shuffled by index per epoch; float conversion on the device.

    The cache is a memory-mapped file (`RUN/cache/`, reused by a resumed run when the shards are
    unchanged); with `on_device` it is copied once to the GPU so a batch never crosses PCIe.
    Rank r of `world` takes every world-th index of each epoch's permutation.
    """

    def __init__(self, images: np.ndarray, *, batch_size: int, seed: int, device: torch.device,
                 on_device: bool = False, rank: int = 0, world: int = 1):
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.device = device
        self.images = torch.from_numpy(images)
        if on_device:
            self.images = self.images.to(device)
        self.steps_per_epoch = len(images) // world // batch_size
        if self.steps_per_epoch == 0:
            raise DataError(f"{len(images)} cached images give no full batch of {batch_size} "
                            f"for each of {world} rank(s)")

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[torch.Tensor]:
        rng = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(len(self.images), generator=rng)
        mine = order[self.rank::self.world].to(self.images.device)
        pin = self.device.type == "cuda" and self.images.device.type == "cpu"
        for step in range(skip, self.steps_per_epoch):
            batch = self.images[mine[step * self.batch_size:(step + 1) * self.batch_size]]
            yield batch.pin_memory() if pin else batch


def to_model_input(batch: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A loader batch on `device` as float NCHW in [-1, 1].

    Cached batches arrive as uint8 NHWC: they cross to the device as bytes (4x less than float)
    and are converted there; their NCHW view is channels_last already.
    """
    batch = batch.to(device, non_blocking=True)
    if batch.dtype == torch.uint8:
        return to_float(batch)
    return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch


def build_cache(urls: list[str], counts: list[int], folder: Path, *, image_size: int,
                workers: int, progress: bool = True) -> np.ndarray:
    """Decode every sample once into `folder/images-<S>px.u8` (N, S, S, 3); reuse it if it was
    made from the same shards."""
    folder.mkdir(parents=True, exist_ok=True)
    data_path = folder / f"images-{image_size}px.u8"
    meta_path = data_path.with_suffix(".json")
    total = sum(counts)
    meta = {"urls": [str(u) for u in urls], "counts": counts, "image_size": image_size,
            "shape": [total, image_size, image_size, 3]}
    shape = (total, image_size, image_size, 3)
    if meta_path.is_file() and data_path.is_file() and _same_meta(meta_path, meta):
        return np.memmap(data_path, np.uint8, "c", shape=shape)  # torch wants writable
    meta_path.unlink(missing_ok=True)
    images = np.memmap(data_path, np.uint8, "w+", shape=shape)
    # Every shard, whatever this process's rank (training_dataset would split them by rank).
    dataset = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None,
                             workersplitter=wds.split_by_worker, empty_check=False)
    dataset = dataset.map(functools.partial(decode_sample, image_size=image_size))
    loader = DataLoader(dataset, batch_size=256, num_workers=workers)
    filled = 0
    with tqdm(total=total, desc="decoding cache", unit="img", disable=not progress) as bar:
        for batch in loader:
            pixels = batch.add(1).mul_(127.5).round_().to(torch.uint8).permute(0, 2, 3, 1)
            images[filled:filled + len(batch)] = pixels.numpy()
            filled += len(batch)
            bar.update(len(batch))
    if filled != total:
        raise DataError(f"the shard index lists {total} samples but {filled} were read")
    images.flush()
    write_json_atomic(meta_path, meta)
    return np.memmap(data_path, np.uint8, "c", shape=shape)  # torch wants writable


def _same_meta(path: Path, meta: dict) -> bool:
    with open(path, encoding="utf-8") as f:
        return json.load(f) == meta
