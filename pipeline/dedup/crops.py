"""Pass 1 of `pipeline dedup`: every record's small center crop and whole-frame thumbnails,
streamed to files on disk.

Each record is decoded once by a pure per-chunk worker (`crop_chunk`) mapped over all cores, or a
Ray cluster's (pipeline.engines), into its side x side center crop (what the paper's hash reads) and
the grey thumbnails of its whole frame that verification compares
(pipeline.dedup.verify.frame_views). Both stream in input order into uint8 files that the later
passes read as memory maps, so no pass ever holds the images in RAM. A picture in a uniform frame or
between letterbox bars also gets the center crop of what is inside them, to a third file: its code
proposes candidates next to the frame's own (a framed copy's center crop is shifted and shrunk
against the original's, so their codes are far apart). Every picture also gets the center crop
zoomed in to its central `ZOOM`, to a fourth file: a crop or a small rotation of a copy zooms
its center crop by about that much, so the original's zoomed code proposes the pair that the
two plain codes are too far apart to propose. Alongside, a JSON-lines log gets one line per
input, in input order: the crop's row, or why the record could not be decoded (the manifest is
written from it once the groups are known).

A sample of the records, chosen by key (pipeline.dedup.verify.sampled), also gets a synthetic
re-upload (pipeline.dedup.reuploads) whose thumbnails the worker returns: the "same picture" side of
the threshold calibration, made while the image is decoded anyway. Every record's ORB keypoints
(pipeline.dedup.keypoints, a fixed-size record) go to a fourth file, for the geometric check of
borderline candidates.
"""

from __future__ import annotations

import json
import zlib
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pipeline.decode import DEFAULT_MAX_PIXELS, decode_image, image_size
from pipeline.dedup.keypoints import KEYPOINT_SIDE, RECORD, keypoint_frame, keypoints
from pipeline.dedup.resizing import shrink
from pipeline.dedup.reuploads import KINDS, SINGLE, reuploaded
from pipeline.dedup.verify import SIDE as VIEW_SIDE
from pipeline.dedup.verify import VIEWS, frame_views, grey_views, sampled
from pipeline.engines import Engine, LocalEngine
from pipeline.engines.local import chunked
from pipeline.geometry import center_crop, resize_area
from pipeline.sources import Record, Source
from pipeline.statuses import RecordError

CROPS_NAME = "crops.u8"  # scratch: the crops, removed when dedup ends
VIEWS_NAME = "views.u8"  # scratch: the whole-frame thumbnails, removed when dedup ends
INNER_NAME = "inner.u8"  # scratch: center crops of framed pictures inside their borders
KEYPOINTS_NAME = "keypoints.u8"  # scratch: every record's keypoints (keypoints.RECORD)
ZOOM_NAME = "zoomed.u8"  # scratch: every record's center crop zoomed to its central ZOOM
LOG_NAME = "records.jsonl"  # scratch: one line per input, in input order
SIDE = 32  # the paper's 32x32 downsampled center crops
ZOOM = 0.9  # the zoomed crop: this central fraction of the center crop's side (docs/dedup.md)
MID_SIDE = 4 * SIDE  # the center crop is first shrunk to this side; the crop and its zoomed-in
# version are made from that (two area resizes of the full square cost about 4x more)
REUPLOAD_SIDE = 128  # a sampled image is shrunk to this longer side before its re-upload is made
CALIBRATION_KINDS = (*SINGLE, KINDS[-1])  # every change but the trivial exact/lossless copies
VIEW_SHAPE = (VIEWS, VIEW_SIDE, VIEW_SIDE)
JPEG_START = b"\xff\xd8"  # the only format decode_image may decode at a reduced scale


@dataclass(frozen=True)
class CropParams:
    side: int = SIDE
    max_pixels: int = DEFAULT_MAX_PIXELS
    calibration_rate: float = 0.0  # fraction of records that also get a synthetic re-upload
    seed: int = 0
    verify: bool = True  # make what verification needs: keypoints and zoomed crops


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
    zoomed: np.ndarray  # k x side x side x 3 uint8, the center crops zoomed in to ZOOM (0 rows
    # without verification, as `keypoints`)
    views: np.ndarray  # k x VIEW_SHAPE uint8, the whole-frame thumbnails
    keypoints: np.ndarray  # k keypoints.RECORD
    pixels: list[int]  # header width * height of each decoded record (the keep rule uses it)
    framed: list[bool]  # each decoded record: is it framed (pipeline.dedup.verify.is_frame)
    inner_rows: list[int]  # which of the k decoded records have a uniform border ...
    inner: np.ndarray  # ... and the center crop of the picture inside it, len(inner_rows) x crop
    sampled: list[int]  # which of the k decoded records have a synthetic re-upload ...
    reuploads: np.ndarray  # ... and its thumbnails, len(sampled) x VIEW_SHAPE ...
    reuploads_framed: list[bool]  # ... and whether it is framed


def crop_chunk(records: list[Record], params: CropParams) -> CropChunk:
    """Decode each record into its center crop and frame thumbnails, or record why it cannot
    be; sampled records also get a synthetic re-upload's thumbnails."""
    entries, crops, zoomed, views, points, pixels, framed, chosen = [], [], [], [], [], [], [], []
    inner_rows, inner, reuploads, reuploads_framed = [], [], [], []
    for rec in records:
        try:
            data = rec.read()
            rgb = decode_image(data, max_pixels=params.max_pixels,
                               draft_side=max(params.side, KEYPOINT_SIDE) if params.verify
                               else params.side)
            header = header_pixels(data, rgb)
        except RecordError as err:  # too_large, unreadable, or a decoder reason
            entries.append(CropEntry(rec.key, err.status, err.reason))
            continue
        entries.append(CropEntry(rec.key))
        if sampled(rec.key, params.calibration_rate):
            chosen.append(len(crops))
            copy, copy_framed = reupload_views(rgb, rec.key, params.seed)
            reuploads.append(copy)
            reuploads_framed.append(copy_framed)
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        small = keypoint_frame(grey)
        frame, box, is_framed = grey_views(grey, small)
        if box is not None:
            inner_rows.append(len(crops))
            inner.append(resize_area(center_crop(rgb[box]), params.side))
        side = min(MID_SIDE, *rgb.shape[:2])
        square = shrink(center_crop(rgb), side, side)
        crops.append(resize_area(square, params.side))
        if params.verify:
            zoomed.append(shrink(center_crop_fraction(square, ZOOM), params.side, params.side))
            points.append(keypoints(small))
        views.append(frame)
        framed.append(is_framed)
        pixels.append(header)
    crop_shape = (params.side, params.side, 3)
    return CropChunk(entries, _stack(crops, crop_shape), _stack(zoomed, crop_shape),
                     _stack(views, VIEW_SHAPE),
                     np.array(points, RECORD).reshape(-1), pixels,
                     framed, inner_rows, _stack(inner, crop_shape), chosen,
                     _stack(reuploads, VIEW_SHAPE), reuploads_framed)


def header_pixels(data: bytes, rgb: np.ndarray) -> int:
    """Width x height as the file's header states them (what the keep rule compares): the
    decoded frame's, but for a JPEG, which decode_image may have decoded at a reduced scale
    (its draft), so its header is read again (~20-60 us, spared for the other formats). An
    EXIF rotation swaps the sides, not their product."""
    if data[:2] == JPEG_START:
        width, height = image_size(data)
        return width * height
    return rgb.shape[0] * rgb.shape[1]


def center_crop_fraction(square: np.ndarray, fraction: float) -> np.ndarray:
    """The central `fraction` of a square's side (at least one pixel)."""
    side = max(1, round(square.shape[0] * fraction))
    start = (square.shape[0] - side) // 2
    return square[start : start + side, start : start + side]


def reupload_views(rgb: np.ndarray, key: str, seed: int) -> tuple[np.ndarray, bool]:
    """The frame thumbnails of a synthetic re-upload of `rgb`, and whether it is framed (its
    kind and randomness drawn from the key and the seed, so every run makes the same one)."""
    rng = np.random.default_rng([zlib.crc32(key.encode("utf-8")), seed])
    scale = REUPLOAD_SIDE / max(rgb.shape[:2])
    if scale < 1:
        rgb = shrink(rgb, max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    views, _, framed = frame_views(reuploaded(rgb, str(rng.choice(CALIBRATION_KINDS)), rng))
    return views, framed


def _stack(arrays: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    return np.stack(arrays) if arrays else np.zeros((0, *shape), np.uint8)


@dataclass
class Crops:
    """Pass-1 result: the crops on disk, and what the records log holds."""

    images: np.ndarray  # memmap, n x side x side x 3
    zoomed: np.ndarray  # memmap, n x side x side x 3: the center crops zoomed in to ZOOM (0 rows
    # without verification, as `keypoints`)
    views: np.ndarray  # memmap, n x VIEW_SHAPE
    keypoints: np.ndarray  # memmap, n keypoints.RECORD
    pixels: np.ndarray  # n, header pixel counts
    framed: np.ndarray  # n flags: framed (pipeline.dedup.verify.is_frame)
    inner: np.ndarray  # memmap, m x side x side x 3: the bordered pictures' inner crops ...
    inner_rows: np.ndarray  # ... and their rows (m)
    inputs: int
    rejected: dict[str, int] = field(default_factory=dict)
    sampled: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # rows ...
    reuploads: np.ndarray = field(  # ... and their synthetic re-uploads' thumbnails ...
        default_factory=lambda: np.zeros((0, *VIEW_SHAPE), np.uint8))
    reuploads_framed: np.ndarray = field(  # ... and which of those are framed
        default_factory=lambda: np.zeros(0, bool))


def extract_crops(source: Source, out: Path, params: CropParams, workers: int, *,
                  engine: Engine | None = None, chunk_size: int = 64,
                  progress: bool = True) -> Crops:
    """Stream every record's crop into OUT/crops.u8 (zoomed in: OUT/zoomed.u8), its thumbnails
    into OUT/views.u8, its keypoints into OUT/keypoints.u8 and its key into OUT/records.jsonl,
    the chunks mapped on `engine` (default: the local pool of `workers` processes)."""
    engine = engine or LocalEngine(workers)
    total = source.count()
    pixels = array("q")  # 8 bytes per image, not a Python int object each
    rejected: dict[str, int] = {}
    inputs = 0
    sampled_rows, reuploads, reuploads_framed, inner_rows = [], [], [], []
    framed = array("b")
    bar = tqdm(total=total, unit="img", desc="crops", disable=not progress, dynamic_ncols=True)
    with open(out / CROPS_NAME, "wb") as crop_file, open(out / VIEWS_NAME, "wb") as view_file, \
            open(out / INNER_NAME, "wb") as inner_file, \
            open(out / KEYPOINTS_NAME, "wb") as keypoint_file, \
            open(out / ZOOM_NAME, "wb") as zoom_file, \
            open(out / LOG_NAME, "w", encoding="utf-8") as log:
        for chunk in engine.map(crop_chunk, params, chunked(iter(source), chunk_size)):
            crop_file.write(chunk.crops.tobytes())
            zoom_file.write(chunk.zoomed.tobytes())
            view_file.write(chunk.views.tobytes())
            keypoint_file.write(chunk.keypoints.tobytes())
            inner_file.write(chunk.inner.tobytes())
            row = len(pixels)
            sampled_rows.extend(row + k for k in chunk.sampled)
            inner_rows.extend(row + k for k in chunk.inner_rows)
            framed.extend(chunk.framed)
            reuploads_framed.extend(chunk.reuploads_framed)
            reuploads.append(chunk.reuploads)
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
    n, crop_shape = len(pixels), (params.side, params.side, 3)
    extras = n if params.verify else 0  # zoomed crops and keypoints
    return Crops(_memmap(out / CROPS_NAME, (n, *crop_shape)),
                 _memmap(out / ZOOM_NAME, (extras, *crop_shape)),
                 _memmap(out / VIEWS_NAME, (n, *VIEW_SHAPE)),
                 _memmap(out / KEYPOINTS_NAME, (extras,), RECORD), np.asarray(pixels, np.int64),
                 np.asarray(framed, bool),
                 _memmap(out / INNER_NAME, (len(inner_rows), *crop_shape)),
                 np.asarray(inner_rows, np.int64), inputs, rejected,
                 np.asarray(sampled_rows, np.int64),
                 np.concatenate([np.zeros((0, *VIEW_SHAPE), np.uint8), *reuploads]),
                 np.asarray(reuploads_framed, bool))


def _memmap(path: Path, shape: tuple[int, ...], dtype: np.dtype = np.uint8) -> np.ndarray:
    """A read-only memory map of a scratch file (an empty array when there is nothing in it)."""
    return np.memmap(path, dtype, "r", shape=shape) if shape[0] else np.zeros(shape, dtype)
