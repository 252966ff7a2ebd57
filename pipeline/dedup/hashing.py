"""Pass 3 of `pipeline dedup`: every crop's binary code from the semantic-hash autoencoder,
encoded in large batches from the crops' memory map, here or as tasks on a cluster
(`--engine ray`), in the same batches either way so the codes are the same.

Applying the trained hash is one matrix product and a sign test, so it runs in numpy on the
CPU (`HashEncoder`), whatever `--device` trained the model: the codes then do not depend on the
device, and a Ray worker hashes without importing torch (which alone takes longer than hashing
a few thousand crops). 3M crops are about 2.4 TFLOP: seconds on a few cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from pipeline.engines import Engine

BITS = 128  # the paper's 3072-128-3072 autoencoder
ENCODE_BATCH = 8192  # crops per matrix product (bounded memory, large matmuls)
STD_FLOOR = 8.0  # grey levels: the least standard deviation a crop is divided by


def standardize(crops: np.ndarray) -> np.ndarray:
    """float32 N x pixels: each crop (uint8 or float grey levels) minus its mean, over its
    standard deviation (at least STD_FLOOR grey levels).

    A brightness or contrast change then leaves the code untouched, and low-contrast crops
    (night shots, haze) spread over the code space instead of all landing on the few codes the
    encoder's biases pick for "nearly flat" - the main source of false collisions we measured.
    Training applies the same rule to torch tensors (pipeline.dedup.autoencoder.standardize,
    checked equal to this one by the tests); the result does not depend on the pixel scale.
    """
    x = np.asarray(crops, np.float32).reshape(len(crops), -1)
    x -= x.mean(axis=1, keepdims=True)
    # The standard deviation from each centred row's dot product with itself: numpy's std
    # makes two more copies of the batch (~7x slower on 8192 crops; the same codes).
    std = np.sqrt(np.einsum("ij,ij->i", x, x) / (x.shape[1] - 1))
    x /= np.maximum(std, STD_FLOOR)[:, None]
    return x


@dataclass(frozen=True)
class HashEncoder:
    """The trained hash as it is applied: the encoder's weights, as numpy arrays
    (pipeline.dedup.autoencoder.hash_encoder takes them from a trained model)."""

    weight: np.ndarray  # bits x pixels float32, columns in the crops' own (row, column, RGB) order
    bias: np.ndarray  # bits float32

    @property
    def bits(self) -> int:
        return len(self.bias)

    def codes(self, crops: np.ndarray) -> np.ndarray:
        """uint8 N x (bits / 8) codes of uint8 N x side x side x 3 crops: bit i is set where
        code unit i's pre-activation is > 0 (its ReLU is active), each crop standardized as in
        training."""
        return np.packbits(standardize(crops) @ self.weight.T + self.bias > 0, axis=1)


def hash_crops(encoder: HashEncoder, crops: np.ndarray, *, batch: int = ENCODE_BATCH,
               progress: bool = True, mirrored: bool = False) -> np.ndarray:
    """uint8 n x 16 codes, encoding `batch` crops at a time from the memory map (`mirrored`:
    of the crops flipped left to right)."""
    codes = np.zeros((len(crops), encoder.bits // 8), np.uint8)
    starts = range(0, len(crops), batch)
    for start in tqdm(starts, unit="batch", desc="hash", disable=not progress,
                      dynamic_ncols=True):
        chunk = crops[start : start + batch]
        codes[start : start + len(chunk)] = encoder.codes(chunk[:, :, ::-1] if mirrored else chunk)
    return codes


@dataclass(frozen=True)
class HashJob:
    """What every hashing task shares: the encoder (in Ray's object store once) and the crops
    file, which the workers read themselves (OUT must be on a filesystem every node reads)."""

    encoder: HashEncoder
    crops: str
    shape: tuple[int, ...]
    mirrored: bool = False


def hash_all(encoder: HashEncoder | None, crops: np.ndarray, engine: Engine, *,
             progress: bool, mirrored: bool = False) -> np.ndarray:
    """Every crop's code (`mirrored`: of the crop flipped left to right): on the cluster's
    workers, or here; all zero without an encoder (no model: fewer than two images to train
    on)."""
    if encoder is None:
        return np.zeros((len(crops), BITS // 8), np.uint8)
    if engine.distributed:
        return hash_on_cluster(encoder, crops, engine, progress=progress, mirrored=mirrored)
    return hash_crops(encoder, crops, progress=progress, mirrored=mirrored)


def hash_rows(chunk: list[int], job: HashJob) -> np.ndarray:
    """Codes of crops [start, stop) (`chunk`), on the worker's CPU."""
    start, stop = chunk
    crops = np.memmap(job.crops, np.uint8, "r", shape=job.shape)[start:stop]
    return job.encoder.codes(crops[:, :, ::-1] if job.mirrored else crops)


def hash_on_cluster(encoder: HashEncoder, crops: np.ndarray, engine: Engine, *,
                    batch: int = ENCODE_BATCH, progress: bool = True,
                    mirrored: bool = False) -> np.ndarray:
    """`hash_crops` as tasks on `engine`, in the same batches, so the codes are the same."""
    if len(crops) == 0:
        return np.zeros((0, encoder.bits // 8), np.uint8)
    job = HashJob(encoder, str(crops.filename), crops.shape, mirrored)
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
