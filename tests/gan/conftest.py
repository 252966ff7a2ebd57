"""Tiny synthetic training shards: solid-ish orange images, so learning is easy to check."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.sinks import write_image_shards

# The colour every training image is close to (RGB); G's samples should drift towards it.
TARGET_RGB = (220, 120, 30)


def orange_images(n: int, size: int, seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for _ in range(n):
        rgb = np.clip(np.array(TARGET_RGB) + rng.normal(0, 12, (size, size, 3)), 0, 255)
        yield rgb.astype(np.uint8)


def write_shards(out: Path, shards: int = 2, per_shard: int = 32, size: int = 32,
                 seed: int = 0) -> Path:
    """`shards` PNG shards of `per_shard` orange size x size images, with index.json."""
    write_image_shards(out, orange_images(shards * per_shard, size, seed), prefix="train",
                       per_shard=per_shard, image_size=size, format="png")
    return out


@pytest.fixture
def training_shards(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str = "shards", **kwargs) -> Path:
        return write_shards(tmp_path / name, **kwargs)

    return make


@pytest.fixture(autouse=True)
def one_thread():
    """The machine is shared: one intra-op thread keeps these tiny models fast and steady."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# A model small enough to train in a fraction of a second per step. Pinned to the CPU: the
# bit-exact assertions hold there, and a GPU machine must run these tests the same way
# (tests/gan/test_gpu.py holds the GPU ones).
TINY = {"image_size": 32, "batch_size": 8, "nz": 16, "width": 32, "arch": "compact",
        "workers": 0, "log_every": 2, "progress": False, "device": "cpu"}
