"""Fixtures every test folder may use: real-photograph material and torch's thread setting.

Writers of test inputs live in the project itself where a user needs them too (`pipeline.demo`
for photographs, encodings and LSUN-layout LMDBs; `pipeline.sinks.write_image_shards` for
shards); what only tests need is here.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import demo


def natural_tiles(n: int, side: int = 64) -> list[np.ndarray]:
    """`n` distinct, non-overlapping side x side tiles of real photographs (none flat)."""
    out = []
    for name in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png"):
        img = demo.photo(name)
        for y in range(0, img.shape[0] - side + 1, side):
            for x in range(0, img.shape[1] - side + 1, side):
                tile = np.ascontiguousarray(img[y : y + side, x : x + side])
                if tile.std() > 20:
                    out.append(tile)
    assert len(out) >= n
    return out[:n]


@pytest.fixture(scope="session")
def tiles() -> list[np.ndarray]:
    """60 natural 64x64 tiles (see `natural_tiles`)."""
    return natural_tiles(60)


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the test, restored afterwards: CI boxes are small and
    shared, and one thread avoids OpenMP oversubscription stalls."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- a hostile corpus: what a careless or hostile user hands a stage -------------------------

COLLIDING_NAMES = ("a.b.png", "a_b.png", "a.b_png", "a_b_png")  # all "a_b_png" once tar-safe


def write_photos(folder, names, tiles) -> list:
    """PNG photos (distinct tiles) under `names` in `folder`; returns their paths."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, tile in zip(names, tiles, strict=False):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(cv2.imencode(".png", np.ascontiguousarray(tile[..., ::-1]))[1].tobytes())
        paths.append(path)
    return paths


def make_fifo(path):
    """A named pipe nobody writes to: reading it blindly blocks forever."""
    import os

    os.mkfifo(path)
    return path


def make_sparse_file(path, size: int = 6 * 2**30):
    """A file of `size` bytes that takes no disk space (reading it whole needs `size` of RAM)."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def make_foreign_out(folder):
    """A folder of someone else's that looks like a stage's output."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shards-000007.tar").write_bytes(b"someone else's shard")
    (folder / "manifest.jsonl").write_text('{"key": "theirs", "status": "kept"}\n')
    return folder
