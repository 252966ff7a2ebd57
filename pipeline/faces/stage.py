"""`pipeline faces`: find faces in scraped photos and write one training crop per face: the
paper's faces set came from an OpenCV face detector run over web photos, keeping only the
detections of sufficiently high resolution.

`faces_chunk` is the pure per-chunk worker the runner maps over the photos; `detect_faces` is
the Python entry point the CLI calls with the same defaults; `find_faces` and `face_crop` are
the single-photo pieces, for notebooks.

Choices a user should know about:
- The detector also looks for faces somewhat below `--min-size` (down to `--search-below`,
  3/4, of it) so that a photo whose faces are all too small is recorded as `faces_too_small`,
  not `no_face`. That is not free: it costs ~1.5x the detection time of searching from
  `--min-size` (every halving of the smallest face size roughly quadruples it); 1.0 turns it
  off for a large run that does not need the distinction.
- A crop is the square around the box, enlarged by `margin` times the box side on every side.
  At the photo's border the square is *shifted* to lie inside the photo (and shrunk to the
  photo's shorter side if it is larger), never padded: padded borders would become something
  the GAN learns to draw.
"""

from __future__ import annotations

import math
import os
import statistics
from collections import Counter
from dataclasses import dataclass
from functools import partial
from itertools import takewhile
from pathlib import Path

import cv2
import numpy as np

from core.files import read_jsonl, write_png_atomic
from core.samples import safe_key
from core.sheets import contact_sheet
from pipeline.decode import DEFAULT_MAX_PIXELS, decode_image
from pipeline.engines.local import default_workers
from pipeline.faces.detectors import (
    DEFAULT_CASCADE,
    Box,
    DetectorSpec,
    detect,
    load_detector,
    make_spec,
)
from pipeline.geometry import encode_image, resize_area
from pipeline.manifest import MANIFEST_NAME, Outcome
from pipeline.runner import Stage, run_stage
from pipeline.sinks import Sample
from pipeline.sources import DEFAULT_MAX_BYTES, Record, Source, open_sources
from pipeline.statuses import FACES, FACES_TOO_SMALL, NO_FACE, RecordError

DEBUG_NAME = "debug_boxes.png"
DEBUG_PHOTOS = 16
DEBUG_TILE = 320
KEPT_COLOR, SMALL_COLOR, CROP_COLOR = (0, 200, 0), (230, 0, 0), (255, 200, 0)


@dataclass(frozen=True)
class FaceParams:
    detector: DetectorSpec
    min_size: int = 64
    margin: float = 0.25
    size: int = 64
    max_side: int = 1024
    fmt: str = "png"
    max_pixels: int = DEFAULT_MAX_PIXELS
    search_below: float = 0.75  # look for faces down to this fraction of min_size

    @property
    def search_floor(self) -> int:
        return max(1, math.ceil(self.min_size * self.search_below))

    def provenance(self) -> dict:
        """What a sample's .json records about how it was made."""
        return {"detector": self.detector.kind, "model": Path(self.detector.path).name,
                "scale_factor": self.detector.scale_factor,
                "min_neighbors": self.detector.min_neighbors, "min_size": self.min_size,
                "margin": self.margin, "size": self.size, "max_side": self.max_side}


def square_around(box: Box, width: int, height: int, margin: float) -> Box:
    """The crop square for a face box: enlarged by `margin` per side, shifted inside the photo."""
    x, y, w, h = box
    side = min(round(max(w, h) * (1 + 2 * margin)), width, height)
    left = min(max(0, round(x + w / 2 - side / 2)), width - side)
    top = min(max(0, round(y + h / 2 - side / 2)), height - side)
    return (left, top, side, side)


def face_crop(rgb: np.ndarray, box: Box, margin: float = 0.25, size: int = 64) -> np.ndarray:
    """The size x size training image for one face box (full-resolution pixels, area resize)."""
    left, top, side, _ = square_around(box, rgb.shape[1], rgb.shape[0], margin)
    return resize_area(rgb[top : top + side, left : left + side], size)


def find_faces(
    rgb: np.ndarray,
    *,
    min_size: int = 64,
    detector: str = "haar",
    cascade: str = DEFAULT_CASCADE,
    yunet_onnx: str | os.PathLike | None = None,
    scale_factor: float = 1.1,
    min_neighbors: int = 5,
    max_side: int = 1024,
) -> list[Box]:
    """Face boxes (x, y, w, h in `rgb`'s pixels) at least `min_size` px, left to right."""
    spec = load_detector(make_spec(detector, cascade=cascade, yunet_onnx=yunet_onnx,
                                   scale_factor=scale_factor, min_neighbors=min_neighbors))
    return detect(spec, rgb, smallest=min_size, max_side=max_side)


def faces_chunk(records: list[Record], params: FaceParams) -> list[Outcome]:
    """One outcome per photo: its face crops as samples, or the reason there are none."""
    return [_faces_one(rec, params) for rec in records]


def _faces_one(rec: Record, params: FaceParams) -> Outcome:
    try:
        rgb = decode_image(rec.read(), max_pixels=params.max_pixels, min_side=params.min_size)
    except RecordError as err:
        return Outcome(rec.key, err.status, err.reason)
    found = detect(params.detector, rgb, smallest=params.search_floor, max_side=params.max_side)
    kept = [b for b in found if max(b[2], b[3]) >= params.min_size]
    small = [list(b) for b in found if max(b[2], b[3]) < params.min_size]
    if not found:
        return Outcome(rec.key, NO_FACE, info={"faces": 0})
    info = {"faces": len(kept), **({"boxes": [list(b) for b in kept]} if kept else {}),
            **({"too_small": small} if small else {})}
    if not kept:
        largest = max(max(b[2], b[3]) for b in small)
        return Outcome(rec.key, FACES_TOO_SMALL, f"{len(small)} face(s), largest {largest} px, "
                       f"below --min-size {params.min_size}", info=info)
    height, width = rgb.shape[:2]
    samples = [_face_sample(rec, rgb, i, box, len(kept), params) for i, box in enumerate(kept)]
    return Outcome(rec.key, FACES, info={**info, "photo_hw": [height, width]}, samples=samples)


def _face_sample(rec: Record, rgb: np.ndarray, index: int, box: Box, count: int,
                 params: FaceParams) -> Sample:
    height, width = rgb.shape[:2]
    meta = {**rec.meta, "stage": "faces", "face": index, "faces_in_photo": count,
            "box": list(box), "crop": list(square_around(box, width, height, params.margin)),
            "photo_hw": [height, width], **params.provenance()}
    crop = face_crop(rgb, box, params.margin, params.size)
    return Sample(safe_key(f"{rec.key}/face{index}"), params.fmt,
                  encode_image(crop, params.fmt), meta)


def face_size_summary(out: Path, min_size: int) -> dict:
    """Faces kept and their size distribution (longer box side, original pixels), in octaves
    from --min-size; read back from the manifest so that resumed runs count every photo."""
    sizes: list[int] = []
    too_small = photos = 0
    for line in read_jsonl(out / MANIFEST_NAME):
        photos += 1
        sizes.extend(max(b[2], b[3]) for b in line.get("boxes", []))
        too_small += len(line.get("too_small", []))
    stats = ({"min": min(sizes), "median": statistics.median(sizes), "max": max(sizes)}
             if sizes else {})
    return {"photos_in": photos, "faces_kept": len(sizes), "faces_below_min_size": too_small,
            "face_sizes": {**stats, "histogram": _octaves(sizes, min_size)}}


def _octaves(sizes: list[int], min_size: int) -> dict[str, int]:
    """Faces per octave of size from --min-size: {"64-127": n, "128-255": n, ...}."""
    counts = Counter(int(math.log2(s / min_size)) for s in sizes)
    return {f"{min_size << k}-{(min_size << (k + 1)) - 1}": counts[k]
            for k in range(max(counts, default=-1) + 1)}


def write_debug_boxes(source: Source, out: Path, params: FaceParams,
                      count: int = DEBUG_PHOTOS) -> int:
    """OUT/debug_boxes.png: the first `count` photos with detections, boxes drawn (green kept,
    red too small, yellow the crop square). Returns the number of photos drawn."""
    wanted = {}
    for line in read_jsonl(out / MANIFEST_NAME):
        if line.get("boxes") or line.get("too_small"):
            wanted[line["key"]] = line
            if len(wanted) == count:
                break
    tiles = []
    for rec in takewhile(lambda _: len(tiles) < len(wanted), source):
        if rec.key in wanted:
            try:
                rgb = decode_image(rec.read(), max_pixels=params.max_pixels)
            except RecordError:  # changed since the run; the manifest stands
                wanted.pop(rec.key)
                continue
            tiles.append(_debug_tile(rgb, wanted[rec.key], params.margin))
    if tiles:
        write_png_atomic(out / DEBUG_NAME, contact_sheet(tiles, cols=4))
    return len(tiles)


def _debug_tile(rgb: np.ndarray, line: dict, margin: float) -> np.ndarray:
    """The photo fitted into a white square tile with its boxes drawn on top."""
    height, width = rgb.shape[:2]
    scale = DEBUG_TILE / max(height, width)
    small = cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA)
    tile = np.full((DEBUG_TILE, DEBUG_TILE, 3), 255, np.uint8)
    tile[: small.shape[0], : small.shape[1]] = small

    def draw(box, color, thickness):
        x, y, w, h = (round(v * scale) for v in box)
        cv2.rectangle(tile, (x, y), (x + w - 1, y + h - 1), color, thickness)

    for box in line.get("boxes", []):
        draw(square_around(tuple(box), width, height, margin), CROP_COLOR, 1)
        draw(box, KEPT_COLOR, 2)
    for box in line.get("too_small", []):
        draw(box, SMALL_COLOR, 2)
    return tile


def detect_faces(
    sources: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    min_size: int = 64,
    margin: float = 0.25,
    size: int = 64,
    detector: str = "haar",
    cascade: str = DEFAULT_CASCADE,
    yunet_onnx: str | os.PathLike | None = None,
    scale_factor: float = 1.1,
    min_neighbors: int = 5,
    max_side: int = 1024,
    search_below: float = 0.75,
    fmt: str = "png",
    maxcount: int = 10_000,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    debug_boxes: bool = False,
    workers: int | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Detect faces in every photo of `sources` and write one `size` x `size` crop per face
    of at least `min_size` px to WebDataset shards in `out`; returns the summary."""
    if min(min_size, size, max_side) < 1 or margin < 0 or scale_factor <= 1 \
            or not 0 < search_below <= 1:
        raise ValueError("min_size, size, max_side must be positive, margin >= 0, "
                         "scale_factor > 1, 0 < search_below <= 1")
    spec = load_detector(make_spec(detector, cascade=cascade, yunet_onnx=yunet_onnx,
                                   scale_factor=scale_factor, min_neighbors=min_neighbors))
    source = open_sources(list(sources), max_bytes=max_bytes, skip=Path(out))
    params = FaceParams(spec, min_size=min_size, margin=margin, size=size, max_side=max_side,
                        fmt=fmt, max_pixels=max_pixels, search_below=search_below)
    settings = {"sources": [str(s) for s in sources], **params.provenance(),
                "detector_path": spec.path, "search_floor": params.search_floor,
                "format": fmt, "maxcount": maxcount, "max_pixels": max_pixels,
                "max_bytes": max_bytes}
    stage = Stage("faces", faces_chunk, params, settings, FACES, extra_outputs=(DEBUG_NAME,),
                  index_info={"image_size": size, "format": fmt},
                  summarize=partial(face_size_summary, min_size=min_size))
    out = Path(out)
    summary = run_stage(stage, source, out, workers=workers or default_workers(),
                        engine=engine, ray_address=ray_address,
                        maxcount=maxcount, resume=resume, overwrite=overwrite, progress=progress)
    if debug_boxes:
        summary["debug_photos"] = write_debug_boxes(source, out, params)
    sizes = summary["face_sizes"]
    spread = (f" ({sizes['min']}-{sizes['max']} px, median {sizes['median']:g})"
              if summary["faces_kept"] else "")
    summary["line"] += f"; {summary['faces_kept']} face crops{spread}"
    return summary
