"""Pass 3 of `pipeline dedup`: every crop's binary code from the semantic-hash autoencoder,
encoded in large batches from the crops' memory map, here or as tasks on a cluster
(`--engine ray`), in the same batches either way so the codes are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from pipeline.engines import Engine

if TYPE_CHECKING:  # torch is imported only when hashing, so `pipeline --help` stays quick
    from pipeline.autoencoder import SemanticHashAutoencoder

BITS = 128  # the paper's 3072-128-3072 autoencoder
ENCODE_BATCH = 8192  # crops per encoder call (bounded memory, large matmuls)


def hash_crops(model: SemanticHashAutoencoder, crops: np.ndarray, *, device: str = "auto",
               batch: int = ENCODE_BATCH, progress: bool = True) -> np.ndarray:
    """uint8 n x 16 codes, encoding `batch` crops at a time from the memory map."""
    from pipeline.autoencoder import semantic_hash
    from pipeline.devices import resolve_device

    dev = resolve_device(device)
    codes = np.zeros((len(crops), model.config.bits // 8), np.uint8)
    starts = range(0, len(crops), batch)
    for start in tqdm(starts, unit="batch", desc="hash", disable=not progress,
                      dynamic_ncols=True):
        chunk = np.asarray(crops[start : start + batch])
        codes[start : start + len(chunk)] = semantic_hash(model, chunk, dev)
    return codes


@dataclass(frozen=True)
class HashJob:
    """What every hashing task shares: the model (in Ray's object store once) and the crops
    file, which the workers read themselves (OUT must be on a filesystem every node reads)."""

    model: SemanticHashAutoencoder
    crops: str
    shape: tuple[int, ...]


def hash_all(model: SemanticHashAutoencoder | None, crops: np.ndarray, engine: Engine, *,
             device: str, progress: bool) -> np.ndarray:
    """Every crop's code: on the cluster's workers, or here on `device`; all zero without a
    model (fewer than two images to train on)."""
    if model is None:
        return np.zeros((len(crops), BITS // 8), np.uint8)
    if engine.distributed:
        return hash_on_cluster(model, crops, engine, progress=progress)
    return hash_crops(model, crops, device=device, progress=progress)


def hash_rows(chunk: list[int], job: HashJob) -> np.ndarray:
    """Codes of crops [start, stop) (`chunk`), on the worker's CPU."""
    from pipeline.autoencoder import semantic_hash

    start, stop = chunk
    crops = np.memmap(job.crops, np.uint8, "r", shape=job.shape)
    return semantic_hash(job.model, np.asarray(crops[start:stop]), "cpu")


def hash_on_cluster(model: SemanticHashAutoencoder, crops: np.ndarray, engine: Engine, *,
                    batch: int = ENCODE_BATCH, progress: bool = True) -> np.ndarray:
    """`hash_crops` as tasks on `engine`, in the same batches, so the codes are the same."""
    if len(crops) == 0:
        return np.zeros((0, model.config.bits // 8), np.uint8)
    job = HashJob(model, str(crops.filename), crops.shape)
    chunks = ([start, min(start + batch, len(crops))] for start in range(0, len(crops), batch))
    results = engine.map(hash_rows, job, chunks)
    return np.concatenate(list(tqdm(results, total=-(-len(crops) // batch), unit="batch",
                                    desc="hash", disable=not progress, dynamic_ncols=True)))


def bit_usage(codes: np.ndarray) -> dict:
    """How many code bits ever fire / always fire: dead or saturated bits weaken the hash."""
    bits = codes.shape[1] * 8
    if len(codes) == 0:
        return {"bits": bits, "ever_on": 0, "always_on": 0, "never_on": bits,
                "mean_on_fraction": 0.0, "distinct_codes": 0}
    rate = np.zeros(bits)
    for start in range(0, len(codes), 1 << 16):
        rate += np.unpackbits(codes[start : start + (1 << 16)], axis=1).sum(axis=0)
    rate /= len(codes)
    return {"bits": bits, "ever_on": int((rate > 0).sum()), "always_on": int((rate == 1).sum()),
            "never_on": int((rate == 0).sum()), "mean_on_fraction": round(float(rate.mean()), 4),
            "distinct_codes": int(len(np.unique(codes, axis=0)))}
