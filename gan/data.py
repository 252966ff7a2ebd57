"""Training images from WebDataset shards: the one way the project opens, counts, checks,
iterates and decodes them, and the two batch sources `gan train` draws from.

Open: `open_shards` turns a spec (a `pipeline shards` output folder, a .tar, a glob or a brace
pattern) into shard files and their sample counts. Check: `check_image_size` reads the first
image, so a run made for another size fails at once, with the fix. Iterate: `training_dataset`
is a small webdataset chain (split across ranks and loader workers -> shard shuffle -> sample
shuffle -> decode) on `pipeline.sources.read_shards`, so memory stays flat however many shards
there are; `image_batches` reads them in stored order for analyses. Which member of a sample is
its image is core.samples' rule, as for every reader; a sample without one is skipped.

Streaming (`StreamingBatches`) wraps `training_dataset` in a DataLoader. Each epoch first
permutes the shard list with a seed derived from (seed, epoch), the same on every rank, so the
split gives each rank and worker other shards every epoch; workers send uint8 images, converted
to float on the device. Decoding PNG/JPEG costs ~2.5-4.7k images/s per core, far below
what a GPU consumes at 64x64, so `cache="ram"|"gpu"` decodes the shards once into a uint8 array
(a memory-mapped file, optionally copied to the GPU), shuffles by index each epoch and converts
to float on the device (`CachedBatches`).

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
from torch.utils.data import DataLoader
from tqdm import tqdm

from core.errors import UserError
from core.files import write_json_atomic
from core.pixels import to_float
from core.samples import image_extension, is_image, split_member
from core.signals import ignore_in_worker
from pipeline.decode import DecodeError, decode_shard_image
from pipeline.sources import ShardSource, open_source, read_shards
from pipeline.statuses import TOO_LARGE, TOO_SMALL

SHUFFLE_BUFFER = 1000


class DataError(UserError):
    """The shards cannot feed this run (empty, too few for the ranks, wrong size); for users."""


# ---------------------------------------------------------------------------------------------
# Open, count, check


def _shard_source(spec: str | os.PathLike) -> ShardSource:
    source = open_source(spec)
    if not isinstance(source, ShardSource):
        raise DataError(f"{spec}: expected WebDataset shards (a folder with index.json, a .tar, a "
                        f"glob or a brace pattern), found a {source.kind} source")
    return source


def open_shards(spec: str | os.PathLike) -> tuple[list[str], list[int]]:
    """The shard files of a source and their sample counts (from index.json, else counted)."""
    source = _shard_source(spec)
    counts = source.counts or [_count_samples(url) for url in source.urls]
    if sum(counts) == 0:
        raise DataError(f"{spec}: the shards hold no samples")
    return source.urls, counts


def _count_samples(url: str) -> int:
    """Samples with an image in one .tar (reads member headers only, not the images)."""
    with tarfile.open(url) as tar:
        parts = (split_member(m.name) for m in tar if m.isreg())
        return len({key for key, extension in filter(None, parts) if is_image(extension)})


def check_image_size(urls: list[str], image_size: int) -> None:
    """Fail before a long run, with the fix, if the shards hold another image size: the first
    image decides (shards are made at one size)."""
    for sample in image_samples(urls):
        sample_pixels(sample, image_size)
        return
    raise DataError("no images in these shards")


# ---------------------------------------------------------------------------------------------
# Decode and iterate


def image_samples(urls: list[str]) -> Iterator[dict]:
    """The samples of `urls` that hold an image, in stored order (a sample's position here is
    its image's index)."""
    return (s for s in read_shards(urls) if has_image(s))


def has_image(sample: dict) -> bool:
    return image_extension(k for k in sample if not k.startswith("__")) is not None


def sample_pixels(sample: dict, image_size: int | None = None) -> np.ndarray:
    """One shard sample's image -> S x S x 3 uint8 RGB; DataError, naming the sample, for one
    without an image, that does not decode, or of another size than `image_size` (never
    resized: shards are made at the size a run trains at)."""
    extension = image_extension(k for k in sample if not k.startswith("__"))
    where = f"sample {sample.get('__key__')} in {sample.get('__url__')}"
    if extension is None:
        raise DataError(f"{where} has no image")
    try:
        return decode_shard_image(sample[extension], image_size)
    except DecodeError as err:
        if image_size is not None and err.status in (TOO_LARGE, TOO_SMALL):
            raise DataError(f"{where} is {err.reason}: make shards with --size {image_size}"
                            ) from None
        raise DataError(f"{where}: {err.reason}") from None


def sample_tensor(sample: dict, image_size: int | None = None) -> torch.Tensor:
    """One shard sample -> 3 x S x S float32 in [-1, 1], the networks' input."""
    return to_float(sample_pixels(sample, image_size))


def training_dataset(
    shards: str | os.PathLike | list[str],
    *,
    image_size: int | None = None,
    shuffle: int = SHUFFLE_BUFFER,
    seed: int = 0,
    decode=sample_tensor,
):
    """An iterable of decoded images for a DataLoader (`decode`: float tensors by default,
    `sample_pixels` for uint8 arrays); shards are split across DDP ranks and loader workers in
    the order given, then shuffled (each worker's shards, then a `shuffle`-sample buffer)
    unless 0."""
    urls = shards if isinstance(shards, list) else _shard_source(shards).urls
    dataset = read_shards(urls, shuffle=shuffle, seed=seed, by_rank=True, by_worker=True)
    return dataset.select(has_image).map(functools.partial(decode, image_size=image_size))


def image_batches(urls: list[str], image_size: int, batch_size: int = 256,
                  limit: int | None = None) -> Iterator[torch.Tensor]:
    """The first `limit` (default all) images of `urls` in stored order, as [B, 3, S, S] float
    batches in [-1, 1]; memory stays flat. A wrong image size is a DataError on the first image.
    """
    batch: list[torch.Tensor] = []
    seen = 0
    for image in training_dataset(urls, image_size=image_size, shuffle=0):
        batch.append(image)
        seen += 1
        if len(batch) == batch_size or seen == limit:
            yield torch.stack(batch)
            batch = []
        if seen == limit:
            return
    if batch:
        yield torch.stack(batch)
    if seen == 0:
        raise DataError("no images in these shards")


# ---------------------------------------------------------------------------------------------
# Batch sources for `gan train`


def leave_stop_signals(_worker: int) -> None:
    """A loader worker leaves Ctrl-C and SIGTERM to the training process, which stops the run
    between two steps and then its loaders (core.signals); a worker that died of a terminal's
    Ctrl-C would end the run in a traceback instead."""
    ignore_in_worker()


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct, reproducible shuffle seed per epoch."""
    return seed * 100_003 + epoch


def streaming_steps(counts: list[int], batch_size: int, world: int, workers: int) -> int:
    """Full batches per epoch that every rank delivers, whatever the epoch's shard order.

    Each epoch permutes the shards (`epoch_shards`), then webdataset gives rank r every
    world-th of them and its loader worker w every workers-th of those; each worker batches its
    own samples and drops its last partial batch. A rank holds at least len // world shards,
    its worker w at least every workers-th of these, and at worst the smallest ones: the sum of
    those per-worker floors holds for every epoch, so all ranks take this many steps in each.
    """
    parts = max(workers, 1)
    smallest = sorted(counts)
    per_rank = len(counts) // world
    return sum(sum(smallest[:len(range(w, per_rank, parts))]) // batch_size
               for w in range(parts))


def epoch_shards(urls: list[str], seed: int, epoch: int) -> list[str]:
    """The shard order of one epoch, the same on every rank (it is split between them after):
    each epoch gives every rank and loader worker other shards, and drops other tails."""
    order = np.random.default_rng(epoch_seed(seed, epoch)).permutation(len(urls))
    return [urls[i] for i in order]


def idle_workers_warning(counts: list[int], world: int, workers: int) -> str | None:
    """One line when some loader workers would get no shard, with the --maxcount that would
    give each at least one; None when there are enough shards."""
    parts = world * max(workers, 1)
    if len(counts) >= parts:
        return None
    maxcount = max(1, sum(counts) // parts)
    return (f"warning: {len(counts)} shards for {world} rank(s) x {max(workers, 1)} loader "
            f"worker(s): {parts - len(counts)} worker(s) idle; remake the shards with "
            f"`pipeline shards --maxcount {maxcount}` (or use fewer --workers)")


class StreamingBatches:
    """uint8 NHWC batches decoded from shards by `workers` DataLoader processes (bytes cross
    the worker queues, pinned memory and PCIe; `to_model_input` converts on the device)."""

    def __init__(self, urls: list[str], counts: list[int], *, image_size: int, batch_size: int,
                 workers: int, seed: int, world: int = 1, pin_memory: bool = False):
        self.urls, self.image_size, self.batch_size = urls, image_size, batch_size
        self.workers, self.seed, self.pin_memory = workers, seed, pin_memory
        self.steps_per_epoch = streaming_steps(counts, batch_size, world, workers)
        self.warning = idle_workers_warning(counts, world, workers)
        if self.steps_per_epoch == 0:
            raise DataError(
                f"{sum(counts)} samples in {len(urls)} shards give no full batch of {batch_size} "
                f"for every one of {world} rank(s) x {max(workers, 1)} loader worker(s): use more "
                f"shards, a smaller --batch-size or fewer --workers")

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[torch.Tensor]:
        """This epoch's batches, starting after `skip` of them (decoded and dropped: exact)."""
        dataset = training_dataset(epoch_shards(self.urls, self.seed, epoch),
                                   image_size=self.image_size, shuffle=SHUFFLE_BUFFER,
                                   seed=epoch_seed(self.seed, epoch), decode=sample_pixels)
        loader = DataLoader(dataset, batch_size=self.batch_size, drop_last=True,
                            worker_init_fn=leave_stop_signals,
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
    unchanged). Each rank owns a fixed share of it for the whole run (every world-th image of a
    permutation seeded by `seed`) and reshuffles only its share each epoch, so with `on_device`
    a rank copies just its share to its GPU, once: 8 GPUs hold one copy of the data between
    them, not 8, and a batch never crosses PCIe.
    """

    def __init__(self, images: np.ndarray, *, batch_size: int, seed: int, device: torch.device,
                 on_device: bool = False, rank: int = 0, world: int = 1):
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.device = device
        share = rank_share(len(images), seed, rank, world)
        if on_device:  # only this rank's images go to its GPU; indices now count within them
            self.images = torch.from_numpy(images[np.sort(share)]).to(device)
            self.share = torch.arange(len(share), device=device)
        else:
            self.images = torch.from_numpy(images)
            self.share = torch.from_numpy(share)
        self.steps_per_epoch = len(images) // world // batch_size
        if self.steps_per_epoch == 0:
            raise DataError(f"{len(images)} cached images give no full batch of {batch_size} "
                            f"for each of {world} rank(s)")

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[torch.Tensor]:
        rng = torch.Generator().manual_seed(epoch_seed(self.seed, epoch) * 1009 + self.rank)
        mine = self.share[torch.randperm(len(self.share), generator=rng).to(self.share.device)]
        pin = self.device.type == "cuda" and self.images.device.type == "cpu"
        for step in range(skip, self.steps_per_epoch):
            batch = self.images[mine[step * self.batch_size:(step + 1) * self.batch_size]]
            yield batch.pin_memory() if pin else batch


def rank_share(n: int, seed: int, rank: int, world: int) -> np.ndarray:
    """The cache rows rank `rank` of `world` trains on for the whole run: disjoint shares of
    (nearly) equal size that together cover all `n` images."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return order[rank::world]


GPU_HEADROOM = 2 << 30  # bytes left free for the models, activations and cuDNN workspaces


def check_gpu_cache_fits(n_images: int, image_size: int, world: int, free_bytes: int,
                         device: str) -> None:
    """DataError, before anything is decoded, when one rank's share of the uint8 cache would
    not fit in `free_bytes` of its GPU with GPU_HEADROOM to spare; the message says how much
    is needed and what to use instead."""
    need = -(-n_images // world) * image_size * image_size * 3
    if need + GPU_HEADROOM > free_bytes:
        raise DataError(
            f"--cache gpu needs {need / 2**30:.1f} GiB on {device} for its share of "
            f"{n_images} {image_size}x{image_size} images (+{GPU_HEADROOM / 2**30:.0f} GiB for "
            f"training), but {free_bytes / 2**30:.1f} GiB is free: use --cache ram instead, "
            f"or more GPUs (each holds 1/N of the images)")


def to_model_input(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A loader batch on `device` as float NCHW in [-1, 1], channels_last in memory.

    Cached batches arrive as uint8 NHWC: they cross to the device as bytes (4x less than float)
    and are converted there; their NCHW view is channels_last already.
    """
    batch = batch.to(device, non_blocking=True)
    if batch.dtype == torch.uint8:
        return to_float(batch)
    return batch.contiguous(memory_format=torch.channels_last)


def cache_path(folder: Path, image_size: int) -> Path:
    return folder / f"images-{image_size}px.u8"


def cache_meta(urls: list[str], counts: list[int], image_size: int) -> dict:
    """What a cache file was made from: it is reused only for the same shards and size."""
    return {"urls": [str(u) for u in urls], "counts": counts, "image_size": image_size,
            "shape": [sum(counts), image_size, image_size, 3]}


def build_cache(urls: list[str], counts: list[int], folder: Path, *, image_size: int,
                workers: int, progress: bool = True) -> np.ndarray:
    """Decode every sample once into `folder/images-<S>px.u8` (N, S, S, 3); reuse it if it was
    made from the same shards. Only one process builds (rank 0); the others `open_cache`."""
    folder.mkdir(parents=True, exist_ok=True)
    data_path = cache_path(folder, image_size)
    meta_path = data_path.with_suffix(".json")
    meta = cache_meta(urls, counts, image_size)
    total = meta["shape"][0]
    if meta_path.is_file() and data_path.is_file() and _same_meta(meta_path, meta):
        return open_cache(urls, counts, folder, image_size=image_size)
    meta_path.unlink(missing_ok=True)
    images = np.memmap(data_path, np.uint8, "w+", shape=tuple(meta["shape"]))
    # Every shard, whatever this process's rank (training_dataset would split them by rank).
    dataset = read_shards(urls, by_worker=True).select(has_image)
    dataset = dataset.map(functools.partial(sample_pixels, image_size=image_size))
    loader = DataLoader(dataset, batch_size=256, num_workers=workers,
                        worker_init_fn=leave_stop_signals)
    filled = 0
    with tqdm(total=total, desc="decoding cache", unit="img", disable=not progress) as bar:
        for batch in loader:
            images[filled:filled + len(batch)] = batch.numpy()
            filled += len(batch)
            bar.update(len(batch))
    if filled != total:
        raise DataError(f"the shard index lists {total} samples but {filled} were read")
    images.flush()
    write_json_atomic(meta_path, meta)
    return open_cache(urls, counts, folder, image_size=image_size)


def open_cache(urls: list[str], counts: list[int], folder: Path, *,
               image_size: int) -> np.ndarray:
    """The finished cache, opened read-only on disk (copy-on-write in memory: torch wants a
    writable array); DataError in one line when this process does not see it, as on a node
    other than rank 0's when --out is node-local storage."""
    data_path = cache_path(folder, image_size)
    meta_path = data_path.with_suffix(".json")
    meta = cache_meta(urls, counts, image_size)
    if not (meta_path.is_file() and data_path.is_file() and _same_meta(meta_path, meta)):
        raise DataError(f"{data_path}: rank 0's decoded cache is not here; with several nodes "
                        f"--out must be a folder every node sees, or use --cache none")
    return np.memmap(data_path, np.uint8, "c", shape=tuple(meta["shape"]))


def _same_meta(path: Path, meta: dict) -> bool:
    with open(path, encoding="utf-8") as f:
        return json.load(f) == meta
