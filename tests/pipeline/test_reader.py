"""Reading shards back for training: [-1, 1] tensors, every sample once, split over workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.reader import decode_sample, shard_urls, training_dataset
from pipeline.shards import make_shards
from pipeline.sinks import read_index
from pipeline.sources import SourceError
from tests.pipeline.test_shards import make_corpus


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader")
    make_corpus(root / "in", 30)
    make_shards([root / "in"], root / "out", size=32, maxcount=7, workers=1, progress=False)
    return root / "out"


def test_loader_yields_every_sample_once_in_tanh_range(shards):
    dataset = training_dataset(shards, image_size=32, shuffle=16, seed=1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=2)
    batches = list(loader)
    images = torch.cat(batches)
    total = sum(s["samples"] for s in read_index(shards))
    assert len(read_index(shards)) > 2  # several shards to split across the two workers
    assert images.shape == (total, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0.1
    unique = {tuple(img.flatten()[:64].tolist()) for img in images}
    assert len(unique) == total  # split across workers without loss or repetition


def test_shuffle_changes_order_but_not_content(shards):
    plain = torch.stack(list(training_dataset(shards, image_size=32, shuffle=0)))
    mixed = torch.stack(list(training_dataset(shards, image_size=32, shuffle=16, seed=3)))
    assert not torch.equal(plain, mixed)
    assert torch.allclose(plain.sum(0), mixed.sum(0), atol=1e-3)


def test_wrong_image_size_says_how_to_fix(shards):
    sample = next(iter(training_dataset(shards, shuffle=0).map(lambda x: x)))
    assert sample.shape == (3, 32, 32)
    raw = {"__key__": "k", "png": (shards / "contact_sheet.png").read_bytes()}
    with pytest.raises(ValueError, match="--size 64"):
        decode_sample(raw, image_size=64)


def test_non_shard_source_is_refused(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(SourceError, match="expected WebDataset shards"):
        shard_urls(tmp_path)


def test_decode_sample_pixel_values():
    import cv2

    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0] = 255  # red in RGB
    ok, buf = cv2.imencode(".png", img[..., ::-1])
    tensor = decode_sample({"__key__": "k", "png": buf.tobytes()}, 4)
    assert torch.all(tensor[0] == 1) and torch.all(tensor[1:] == -1)
