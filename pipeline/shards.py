"""`pipeline shards`: center-crop, area-resize and write training shards, the
input every training run reads.

The per-chunk worker is pure (records in, outcomes out); `make_shards` is the Python entry point
the CLI calls with the same defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from pipeline.geometry import center_crop, encode_image, resize_area
from pipeline.manifest import Outcome
from pipeline.parallel import default_workers
from pipeline.runner import Stage, run_stage
from pipeline.sinks import Sample
from pipeline.sources import Record, open_sources, safe_key
from pipeline.statuses import EXCLUDED, KEPT, UNREADABLE


@dataclass(frozen=True)
class ShardParams:
    size: int = 64
    fmt: str = "png"
    max_pixels: int = DEFAULT_MAX_PIXELS
    exclude: frozenset[str] = frozenset()


def shard_chunk(records: list[Record], params: ShardParams) -> list[Outcome]:
    """Turn each record into one size x size center crop, or a recorded reason why not."""
    return [_shard_one(rec, params) for rec in records]


def _shard_one(rec: Record, params: ShardParams) -> Outcome:
    if rec.key in params.exclude:
        return Outcome(rec.key, EXCLUDED, "listed in --exclude")
    try:
        data = rec.read()
    except OSError as err:
        return Outcome(rec.key, UNREADABLE, str(err))
    try:
        rgb = decode_image(data, max_pixels=params.max_pixels, min_side=params.size,
                           draft_side=params.size)
    except DecodeError as err:
        return Outcome(rec.key, err.status, err.reason)
    height, width = rgb.shape[:2]
    crop = resize_area(center_crop(rgb), params.size)
    meta = {**rec.meta, "stage": "shards", "size": params.size, "decoded_hw": [height, width]}
    sample = Sample(safe_key(rec.key), params.fmt, encode_image(crop, params.fmt), meta)
    return Outcome(rec.key, KEPT, samples=[sample])


def read_exclude(path: str | os.PathLike) -> frozenset[str]:
    """Keys to leave out, one per line (the format of dedup's duplicates.txt)."""
    with open(path, encoding="utf-8") as f:
        return frozenset(line.rstrip("\n") for line in f if line.strip())


def make_shards(
    sources: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    size: int = 64,
    fmt: str = "png",
    maxcount: int = 10_000,
    exclude: str | os.PathLike | None = None,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Center-crop every image in `sources` to `size` and write WebDataset shards to `out`."""
    if size < 1:
        raise ValueError("size must be positive")
    source = open_sources(list(sources))
    excluded = read_exclude(exclude) if exclude else frozenset()
    params = ShardParams(size=size, fmt=fmt, max_pixels=max_pixels, exclude=excluded)
    settings = {"sources": [str(s) for s in sources], "size": size, "format": fmt,
                "maxcount": maxcount, "max_pixels": max_pixels,
                "exclude": str(exclude) if exclude else None, "excluded_keys": len(excluded)}
    stage = Stage("shards", shard_chunk, params, settings, KEPT,
                  index_info={"image_size": size, "format": fmt})
    return run_stage(stage, source, Path(out), workers=workers or default_workers(),
                     maxcount=maxcount, resume=resume, overwrite=overwrite, progress=progress)
