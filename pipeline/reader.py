"""Read training shards back as float tensors in [-1, 1] (the GAN's tanh range).

A small webdataset chain (shard shuffle -> split across ranks and loader workers -> sample
shuffle -> decode), so memory stays flat however many shards there are. `gan/data.py` wraps it
in a DataLoader and adds the decoded caches for GPUs.
"""

from __future__ import annotations

import functools
import os

import cv2
import numpy as np
import torch
import webdataset as wds

from pipeline.pixels import to_float
from pipeline.sources import SHARD_IMAGE_EXTS, ShardSource, SourceError, open_source


def shard_urls(spec: str | os.PathLike) -> list[str]:
    """The .tar files of a shard source: a stage output folder, a .tar, a glob or brace pattern."""
    source = open_source(spec)
    if not isinstance(source, ShardSource):
        raise SourceError(f"{spec}: expected WebDataset shards (a folder with index.json, a .tar, "
                          f"a glob or a brace pattern), found a {source.kind} source")
    return source.urls


def decode_sample(sample: dict, image_size: int | None = None) -> torch.Tensor:
    """One shard sample -> 3xHxW float32 in [-1, 1]; a wrong size is an error, not a resize."""
    ext = next((e for e in SHARD_IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise ValueError(f"sample {sample.get('__key__')} in {sample.get('__url__')} has no image")
    bgr = cv2.imdecode(np.frombuffer(sample[ext], np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"sample {sample['__key__']}: image does not decode")
    if image_size is not None and bgr.shape[:2] != (image_size, image_size):
        raise ValueError(
            f"sample {sample['__key__']} is {bgr.shape[1]}x{bgr.shape[0]}, expected "
            f"{image_size}x{image_size}: make shards with --size {image_size}"
        )
    return to_float(np.ascontiguousarray(bgr[..., ::-1]))


def training_dataset(
    shards: str | os.PathLike | list[str],
    *,
    image_size: int | None = None,
    shuffle: int = 1000,
    seed: int = 0,
) -> wds.WebDataset:
    """An iterable of image tensors for a DataLoader; shards are split across DDP ranks and
    loader workers, and shuffled (shard order, then a `shuffle`-sample buffer) unless 0."""
    urls = shards if isinstance(shards, list) else shard_urls(shards)
    dataset = wds.WebDataset(
        urls,
        shardshuffle=len(urls) if shuffle else False,
        nodesplitter=wds.split_by_node,
        workersplitter=wds.split_by_worker,
        seed=seed,
        empty_check=False,
    )
    if shuffle:
        dataset = dataset.shuffle(shuffle, seed=seed)
    return dataset.map(functools.partial(decode_sample, image_size=image_size))
