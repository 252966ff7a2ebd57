"""Palette codes for `pipeline dedup`: candidates that survive a zoom of a fine texture.

The semantic hash reads the exact pixels of a 32x32 center crop. In a smooth picture a small
crop or zoom moves those pixels a little and the code stays close; in gravel, grass, a brick
wall or a star field it replaces every pixel's neighbourhood, so a copy cropped and resized by a
few per cent gets a code 20-40 bits from its original's and is never proposed (docs/dedup.md,
"Where the misses are lost"). What such a copy keeps is its colours: the histogram of the center
crop over a coarse RGB grid changes little however the crop is shifted or zoomed.

Each crop's histogram (square roots of its bin fractions, so that the distance between two is the
Hellinger distance) becomes a 128-bit code by the signs of fixed random projections of the
histogram minus the data's median histogram (sign random projection: codes agree on the more
bits, the smaller the angle between the histograms). These codes go through the same bounded
neighbour search as the hash codes (pipeline.dedup.grouping.code_neighbours), with their own
radius and tighter caps: a palette is shared by many unrelated pictures, so it only proposes,
and every pair it proposes is judged like any other (pipeline.dedup.verify,
pipeline.dedup.keypoints).
"""

from __future__ import annotations

import numpy as np

from pipeline.dedup.grouping import CodeNeighbours, code_neighbours

LEVELS = 4  # per channel: a 4x4x4 grid (finer grids split the copies of a texture apart)
BINS = LEVELS**3
BITS = 128
PROJECTION_SEED = 0  # fixed: the codes do not depend on the run's seed
MEDIAN_SAMPLE = 4096  # rows, evenly spaced, that the median histogram is taken over
CHUNK = 8192  # crops turned into codes at a time (bounded memory)
RADIUS = 7  # bits: palette codes this close propose (an exact search; copies are ~2 apart)
NEAREST = 12  # a palette code's candidate codes (docs/dedup.md, "Palette codes")
IMAGES_PER_CODE = 2  # images that stand for one palette code (copies of a texture share it)


def histograms(crops: np.ndarray) -> np.ndarray:
    """float32 N x BINS: the square roots of each uint8 RGB crop's colour-bin fractions."""
    n = len(crops)
    shift = 8 - int(np.log2(LEVELS))  # grey level -> level in uint8 (LEVELS: a power of 2)
    level = np.asarray(crops, np.uint8).reshape(n, -1, 3) >> shift
    bins = (level[..., 0] * LEVELS + level[..., 1]) * LEVELS + level[..., 2]
    bins = bins + np.arange(n, dtype=np.int64)[:, None] * BINS
    counts = np.bincount(bins.ravel(), minlength=n * BINS).reshape(n, BINS)
    return np.sqrt(counts / counts.sum(axis=1, keepdims=True).clip(min=1)).astype(np.float32)


def palette_codes(crops: np.ndarray) -> np.ndarray:
    """uint8 N x BITS / 8: the palette code of each crop (a memory map is read CHUNK at a
    time)."""
    n = len(crops)
    if n == 0:
        return np.zeros((0, BITS // 8), np.uint8)
    sample = np.unique(np.linspace(0, n - 1, min(n, MEDIAN_SAMPLE)).astype(np.int64))
    median = np.median(histograms(crops[sample]), axis=0)
    projection = np.random.default_rng(PROJECTION_SEED).standard_normal((BINS, BITS))
    projection = projection.astype(np.float32)
    return np.concatenate([
        np.packbits((histograms(crops[start : start + CHUNK]) - median) @ projection > 0, axis=1)
        for start in range(0, n, CHUNK)])


def palette_neighbours(crops: np.ndarray) -> CodeNeighbours:
    """The candidate structure of the crops' palette codes (one code per image)."""
    return code_neighbours(palette_codes(crops), RADIUS, nearest=NEAREST,
                           per_code=IMAGES_PER_CODE)
