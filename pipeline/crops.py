"""Pass 1 of `pipeline dedup`: every record's small center crop, streamed to a file on disk.

Each record is decoded and turned into its side x side center crop by a pure per-chunk worker
(`crop_chunk`) mapped over all cores, or a Ray cluster's (pipeline.engines). Crops stream in
input order into a uint8 file that the later passes read as a memory map, so no pass ever holds
the images in RAM. Alongside, a JSON-lines log gets one line per input, in input order: the
crop's row, or why the record could not be decoded (the manifest is written from it once the
groups are known).
"""

from __future__ import annotations

import json
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image, image_size
from pipeline.engines import Engine, LocalEngine
from pipeline.geometry import center_crop, resize_area
from pipeline.parallel import chunked
from pipeline.sources import Record, Source
from pipeline.statuses import UNREADABLE

CROPS_NAME = "crops.u8"  # scratch: the crops, removed when dedup ends
LOG_NAME = "records.jsonl"  # scratch: one line per input, in input order
SIDE = 32  # the paper's 32x32 downsampled center crops


@dataclass(frozen=True)
class CropParams:
    side: int = SIDE
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class CropEntry:
    """One record's fate in pass 1: `status` is None when it decoded (its crop is in the chunk),
    else the decoder's rejection status, with `reason`."""

    key: str
    status: str | None = None
    reason: str = ""


@dataclass
class CropChunk:
    """What a worker returns for one chunk: one entry per record, crops for the decoded ones."""

    entries: list[CropEntry]
    crops: np.ndarray  # k x side x side x 3 uint8, k = decoded records, in order
    pixels: list[int]  # header width * height of each decoded record (the keep rule uses it)


def crop_chunk(records: list[Record], params: CropParams) -> CropChunk:
    """Decode each record into its side x side center crop, or record why it cannot be."""
    entries, crops, pixels = [], [], []
    for rec in records:
        try:
            data = rec.read()
        except OSError as err:
            entries.append(CropEntry(rec.key, UNREADABLE, str(err)))
            continue
        try:
            rgb = decode_image(data, max_pixels=params.max_pixels, draft_side=params.side)
            width, height = image_size(data)
        except DecodeError as err:
            entries.append(CropEntry(rec.key, err.status, err.reason))
            continue
        entries.append(CropEntry(rec.key))
        crops.append(resize_area(center_crop(rgb), params.side))
        pixels.append(width * height)
    stacked = (np.stack(crops) if crops
               else np.zeros((0, params.side, params.side, 3), np.uint8))
    return CropChunk(entries, stacked, pixels)


@dataclass
class Crops:
    """Pass-1 result: the crops on disk, and what the records log holds."""

    images: np.ndarray  # memmap, n x side x side x 3
    pixels: np.ndarray  # n, header pixel counts
    inputs: int
    rejected: dict[str, int] = field(default_factory=dict)


def extract_crops(source: Source, out: Path, params: CropParams, workers: int, *,
                  engine: Engine | None = None, chunk_size: int = 64,
                  progress: bool = True) -> Crops:
    """Stream every record's crop into OUT/crops.u8 and its key into OUT/records.jsonl, the
    chunks mapped on `engine` (default: the local pool of `workers` processes)."""
    engine = engine or LocalEngine(workers)
    total = source.count()
    pixels = array("q")  # 8 bytes per image, not a Python int object each
    rejected: dict[str, int] = {}
    inputs = 0
    bar = tqdm(total=total, unit="img", desc="crops", disable=not progress, dynamic_ncols=True)
    with open(out / CROPS_NAME, "wb") as crop_file, \
            open(out / LOG_NAME, "w", encoding="utf-8") as log:
        for chunk in engine.map(crop_chunk, params, chunked(iter(source), chunk_size)):
            crop_file.write(chunk.crops.tobytes())
            row = len(pixels)
            for entry in chunk.entries:
                if entry.status is None:
                    log.write(json.dumps({"key": entry.key, "row": row}) + "\n")
                    row += 1
                else:
                    log.write(json.dumps({"key": entry.key, "status": entry.status,
                                          "reason": entry.reason}) + "\n")
                    rejected[entry.status] = rejected.get(entry.status, 0) + 1
            pixels.extend(chunk.pixels)
            inputs += len(chunk.entries)
            bar.update(len(chunk.entries))
    bar.close()
    n = len(pixels)
    shape = (n, params.side, params.side, 3)
    images = (np.memmap(out / CROPS_NAME, np.uint8, "r", shape=shape) if n
              else np.zeros(shape, np.uint8))
    return Crops(images, np.asarray(pixels, np.int64), inputs, rejected)
