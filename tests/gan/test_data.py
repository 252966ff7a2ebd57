"""Reading training shards (open, check, decode, iterate) and the batches built on it: equal
epochs per rank, reproducible order, exact skip, the uint8 cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gan.config import default_loader_workers
from gan.data import (
    CachedBatches,
    DataError,
    StreamingBatches,
    build_cache,
    check_gpu_cache_fits,
    check_image_size,
    epoch_shards,
    idle_workers_warning,
    image_batches,
    open_cache,
    open_shards,
    rank_share,
    sample_tensor,
    streaming_steps,
    to_model_input,
    training_dataset,
)
from pipeline.geometry import encode_image
from pipeline.sinks import read_index
from pipeline.sources import SourceError
from tests.gan.conftest import write_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """30 images in 5 shards, enough to split across two loader workers."""
    return write_shards(tmp_path_factory.mktemp("reader") / "shards", shards=5, per_shard=6)


def test_loader_yields_every_sample_once_in_tanh_range(shards: Path) -> None:
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


def test_shuffle_changes_order_but_not_content(shards: Path) -> None:
    plain = torch.stack(list(training_dataset(shards, image_size=32, shuffle=0)))
    mixed = torch.stack(list(training_dataset(shards, image_size=32, shuffle=16, seed=3)))
    assert not torch.equal(plain, mixed)
    assert torch.allclose(plain.sum(0), mixed.sum(0), atol=1e-3)
    # Analyses read the same images in stored order, in batches, up to a limit.
    batches = list(image_batches(open_shards(shards)[0], 32, batch_size=4, limit=10))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat(batches), plain[:10])


def test_wrong_image_size_says_how_to_fix(shards: Path) -> None:
    sample = next(iter(training_dataset(shards, shuffle=0).map(lambda x: x)))
    assert sample.shape == (3, 32, 32)
    raw = {"__key__": "k", "png": encode_image(np.zeros((48, 48, 3), np.uint8), "png")}
    with pytest.raises(DataError, match="--size 64"):
        sample_tensor(raw, image_size=64)
    urls, _ = open_shards(shards)
    check_image_size(urls, 32)
    with pytest.raises(DataError, match="is 32x32, expected 64x64: make shards with --size 64"):
        check_image_size(urls, 64)
    with pytest.raises(DataError, match="--size 64"):
        next(image_batches(urls, 64))


def test_sample_tensor_pixel_values() -> None:
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0] = 255  # red in RGB
    tensor = sample_tensor({"__key__": "k", "png": encode_image(img, "png")}, 4)
    assert torch.all(tensor[0] == 1) and torch.all(tensor[1:] == -1)


def _stream(shards: Path, workers: int, seed: int = 0) -> StreamingBatches:
    urls, counts = open_shards(shards)
    return StreamingBatches(urls, counts, image_size=32, batch_size=8, workers=workers, seed=seed)


@pytest.mark.parametrize("workers", [0, 2])
def test_steps_per_epoch_is_what_the_loader_delivers(training_shards, workers: int) -> None:
    shards = training_shards(shards=3, per_shard=20)
    batches = _stream(shards, workers)
    # Worker 0 of 2 reads shards 0 and 2, worker 1 shard 1; each drops its own partial batch.
    expected = {0: 60 // 8, 2: (40 // 8) + (20 // 8)}[workers]
    assert batches.steps_per_epoch == expected
    assert len(list(batches.epoch(0))) == expected


def test_ranks_get_the_same_number_of_steps() -> None:
    # rank 0 holds shards 0 and 2 (30 samples), rank 1 shard 1 (8): the epoch is rank 1's.
    assert streaming_steps([20, 8, 10], batch_size=4, world=2, workers=1) == 2
    assert streaming_steps([20, 8, 10], batch_size=4, world=1, workers=1) == 9


def test_epoch_order_is_reproducible_and_changes_per_epoch(training_shards) -> None:
    batches = _stream(training_shards(shards=2, per_shard=24), workers=0)
    first = torch.cat(list(batches.epoch(0)))
    assert torch.equal(first, torch.cat(list(batches.epoch(0))))
    assert not torch.equal(first, torch.cat(list(batches.epoch(1))))
    tail = torch.cat(list(batches.epoch(0, skip=2)))
    assert torch.equal(tail, first[2 * 8:])


def test_loader_workers_send_uint8_images(training_shards) -> None:
    batches = _stream(training_shards(shards=2, per_shard=16), workers=2)
    batch = next(iter(batches.epoch(0)))
    assert batch.dtype == torch.uint8 and batch.shape == (8, 32, 32, 3)  # bytes, not floats
    real = to_model_input(batch, torch.device("cpu"))
    assert real.dtype == torch.float32 and real.shape == (8, 3, 32, 32)


def test_every_epoch_permutes_all_shards_the_same_way_on_every_rank() -> None:
    urls = [f"shard-{i}.tar" for i in range(8)]
    orders = [epoch_shards(urls, seed=0, epoch=e) for e in range(4)]
    assert all(sorted(order) == urls for order in orders)  # every shard, once
    assert orders[0] == epoch_shards(urls, seed=0, epoch=0)  # a function of (seed, epoch) only
    # Worker 0 of rank 0 (2 ranks x 2 workers) reads other shards from one epoch to the next.
    assert len({tuple(order[0::2][0::2]) for order in orders}) > 1


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 40), min_size=1, max_size=12), world=st.integers(1, 4),
       workers=st.integers(0, 3), batch=st.integers(1, 8), seed=st.integers(0, 5))
def test_steps_per_epoch_hold_for_every_rank_in_every_epoch(counts, world, workers, batch,
                                                             seed) -> None:
    """Each rank's loader workers deliver at least steps_per_epoch full batches in every epoch,
    modelled as webdataset splits the permuted shards (rank: every world-th, worker: every
    workers-th of those)."""
    steps = streaming_steps(counts, batch, world, workers)
    for epoch in range(4):
        order = epoch_shards(list(range(len(counts))), seed, epoch)
        for rank in range(world):
            mine = order[rank::world]
            parts = max(workers, 1)
            delivered = sum(sum(counts[i] for i in mine[w::parts]) // batch
                            for w in range(parts))
            assert delivered >= steps


def test_shards_split_unevenly_between_workers_give_every_epoch_its_steps(
        training_shards) -> None:
    urls, counts = open_shards(training_shards(shards=3, per_shard=20))  # workers get 2 and 1
    batches = StreamingBatches(urls, counts, image_size=32, batch_size=8, workers=2, seed=4)
    assert [len(list(batches.epoch(e))) for e in range(3)] == [batches.steps_per_epoch] * 3


def test_idle_workers_are_warned_with_the_maxcount_that_fixes_it() -> None:
    warning = idle_workers_warning([100, 100, 50], world=2, workers=4)
    assert "\n" not in warning and "5 worker(s) idle" in warning
    assert "--maxcount 31" in warning  # 250 images in shards of 31: 9 shards for 8 workers
    assert idle_workers_warning([100] * 8, world=2, workers=4) is None


def test_loader_workers_share_the_node_between_torchrun_processes(monkeypatch) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    alone = default_loader_workers()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
    assert 1 <= alone <= 8 and default_loader_workers() == 1


def test_too_few_samples_for_a_batch(training_shards) -> None:
    with pytest.raises(DataError, match="no full batch"):
        _stream(training_shards(shards=1, per_shard=5), workers=0)


def test_shards_without_index_are_counted(training_shards) -> None:
    shards = training_shards(shards=2, per_shard=7)
    (shards / "index.json").unlink()
    urls, counts = open_shards(str(shards / "*.tar"))
    assert counts == [7, 7] and len(urls) == 2


def test_not_shards(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file or folder"):
        open_shards(tmp_path / "missing")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"x")
    with pytest.raises(DataError, match="expected WebDataset shards"):
        open_shards(tmp_path / "photos")
    with pytest.raises(DataError, match="expected WebDataset shards"):
        training_dataset(tmp_path / "photos")


def test_cache_holds_every_image_exactly(training_shards, tmp_path: Path) -> None:
    shards = training_shards(shards=2, per_shard=12)
    urls, counts = open_shards(shards)
    images = build_cache(urls, counts, tmp_path / "cache", image_size=32, workers=2,
                         progress=False)
    assert images.shape == (24, 32, 32, 3) and images.dtype == np.uint8
    streamed = torch.cat(list(_stream(shards, workers=0).epoch(0))).numpy()  # all 24
    assert sorted(x.tobytes() for x in streamed) == sorted(x.tobytes() for x in images)
    # A second build reuses the file; changed shards rebuild it.
    stamp = (tmp_path / "cache" / "images-32px.u8").stat().st_mtime_ns
    build_cache(urls, counts, tmp_path / "cache", image_size=32, workers=0, progress=False)
    assert (tmp_path / "cache" / "images-32px.u8").stat().st_mtime_ns == stamp
    shutil.rmtree(shards)
    shards = training_shards(shards=1, per_shard=12, seed=9)
    urls, counts = open_shards(shards)
    assert build_cache(urls, counts, tmp_path / "cache", image_size=32, workers=0,
                       progress=False).shape[0] == 12


def test_a_rank_without_rank_0s_cache_fails_in_one_line(training_shards, tmp_path: Path) -> None:
    urls, counts = open_shards(training_shards(shards=1, per_shard=8))
    with pytest.raises(DataError, match="rank 0's decoded cache is not here") as err:
        open_cache(urls, counts, tmp_path / "node-local", image_size=32)
    assert "\n" not in str(err.value) and not (tmp_path / "node-local").exists()


def test_cached_ranks_split_each_epoch(tmp_path: Path) -> None:
    images = np.arange(40, dtype=np.uint8)[:, None, None, None].repeat(2, 1).repeat(2, 2)
    images = np.repeat(images, 3, axis=3)
    seen = []
    for rank in range(2):
        cache = CachedBatches(images, batch_size=4, seed=0, device=torch.device("cpu"),
                              rank=rank, world=2)
        assert cache.steps_per_epoch == 5
        batches = list(cache.epoch(0))
        assert all(b.shape == (4, 2, 2, 3) and b.dtype == torch.uint8 for b in batches)
        seen.append(torch.cat(batches)[:, 0, 0, 0].tolist())
        assert torch.equal(torch.cat(list(cache.epoch(0, skip=3))), torch.cat(batches[3:]))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(40))


def test_uint8_batches_become_the_tanh_range() -> None:
    batch = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 2, 2, 3)
    x = to_model_input(batch, torch.device("cpu"))
    assert x.shape == (2, 3, 2, 2)
    assert x[0].eq(-1).all() and x[1].eq(1).all()


def test_rank_shares_are_fixed_disjoint_and_cover_the_cache() -> None:
    shares = [rank_share(41, seed=3, rank=r, world=4) for r in range(4)]
    assert sorted(np.concatenate(shares).tolist()) == list(range(41))
    assert [len(s) for s in shares] == [11, 10, 10, 10]
    assert np.array_equal(shares[1], rank_share(41, seed=3, rank=1, world=4))  # every epoch


def test_gpu_cache_that_would_not_fit_is_refused_with_the_numbers() -> None:
    gib = 2**30
    check_gpu_cache_fits(1_000_000, 64, world=8, free_bytes=10 * gib, device="cuda:3")
    with pytest.raises(DataError, match=r"needs 11\.4 GiB on cuda:0 .* 8\.0 GiB is free: use "
                                        r"--cache ram"):
        check_gpu_cache_fits(1_000_000, 64, world=1, free_bytes=8 * gib, device="cuda:0")
