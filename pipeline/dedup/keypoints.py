"""The geometric second opinion of `pipeline dedup`: do two pictures share many local features
in one consistent placement?

The thumbnail distance (pipeline.dedup.verify) compares whole frames, so a crop, a rotation, a
letterbox or a large overlay moves a true copy past its threshold. Local features survive
those: each image keeps the ORB keypoints (position and 256-bit descriptor) of its grey frame
brought to `KEYPOINT_SIDE` (`keypoint_frame`), at most `KEYPOINTS` of them, in a fixed-size
record (`RECORD`) computed in the crops pass while the image is decoded anyway. A borderline
candidate (a thumbnail distance above the threshold but below `BORDERLINE`) is then accepted
when its ratio-tested descriptor matches fit one similarity transform (rotation, uniform
scale, translation; RANSAC, cv2.estimateAffinePartial2D) with at least `MIN_INLIERS` inliers
that spread over at least `MIN_COVER` of the smaller image (so a shared logo or a patch of text
is not enough). In a trial on 3,000 random pairs of different photographs of the reduced quality set
(with 96 keypoints on 3 levels, more than kept here) none reached more than 6 inliers; the
acceptance asks for 10, on candidates the hash already found close.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from pipeline.dedup.resizing import shrink

if TYPE_CHECKING:
    from pipeline.engines import Engine

KEYPOINT_SIDE = 128  # the longer side of the grey frame the keypoints are found on
KEYPOINTS = 64  # at most this many per image (the strongest FAST corners)
FAST_THRESHOLD = 10  # grey levels a FAST corner must stand out by ...
SPARSE = 32  # ... but a frame with fewer corners than this is searched again ...
SPARSE_FAST_THRESHOLD = 3  # ... at this threshold (smooth pictures: skin, sky, a retina)
RATIO = 0.8  # Lowe's ratio test on the two nearest descriptors
REPROJECTION_PX = 3.0  # RANSAC inlier distance, pixels of the KEYPOINT_SIDE frame
MIN_INLIERS = 10
MIN_COVER = 0.05  # the inliers' convex hull, as a fraction of the smaller frame's area
SCALES = (0.5, 2.0)  # a fitted scale outside this is not a re-upload
# Thumbnail distances in (threshold, BORDERLINE] get the geometric check. On the reduced quality
# set, 0.9 left out crop + resize copies that the check accepts at distances 0.92-1.11; 1.1 took
# them for ~50 % more checks on the speed benchmark's set (docs/dedup.md).
BORDERLINE = 1.1
GEOMETRIC_BATCH = 4096  # borderline pairs whose records are unpacked together (bounded memory)
GEOMETRIC_CHUNK = 512  # borderline pairs per task on the engine's workers (~30 ms of work)

RECORD = np.dtype([("count", "<u2"), ("height", "<u2"), ("width", "<u2"),
                   ("xy", "<f2", (KEYPOINTS, 2)), ("descriptors", "u1", (KEYPOINTS, 32))])

_DETECTORS: dict[int, cv2.ORB] = {}


def _orb(threshold: int = FAST_THRESHOLD) -> cv2.ORB:
    """One detector per FAST threshold and process (workers make their own): small patches for
    small frames, and a single scale. The frame is already brought to KEYPOINT_SIDE
    (`keypoint_frame`), so a downscaled copy is found at the original's scale; a second pyramid
    level (1.3x) cost ~90 us an image (~230 against ~145) and bought no recall on the reduced
    quality set (0.964-0.967 over three trained hashes either way). Keypoints are ranked by
    their FAST score, not the Harris response (~7 % cheaper, the same recall; no random pair of
    different photographs came above 5 inliers)."""
    if threshold not in _DETECTORS:
        _DETECTORS[threshold] = cv2.ORB_create(
            nfeatures=KEYPOINTS, nlevels=1, edgeThreshold=15, patchSize=15,
            fastThreshold=threshold, scoreType=cv2.ORB_FAST_SCORE)
    return _DETECTORS[threshold]


def keypoint_frame(grey: np.ndarray) -> np.ndarray:
    """The grey frame brought to KEYPOINT_SIDE on its longer side: shrunk by area averaging,
    or enlarged (bilinear) when smaller. ORB looks at one scale only (`_orb`), so a downscaled
    copy (a re-upload at half size, say) must be found at the original's scale.
    The crops pass makes it once per image: the keypoints are found on it, and the whole-frame
    thumbnail of verification is made from it (much cheaper than from the full frame)."""
    h, w = grey.shape
    scale = KEYPOINT_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if scale < 1:
        return shrink(grey, *size)
    if scale > 1:
        return cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR)
    return grey


def keypoints(grey: np.ndarray) -> np.ndarray:
    """One RECORD: the keypoints of the grey frame brought to KEYPOINT_SIDE
    (`keypoint_frame`)."""
    grey = keypoint_frame(grey)
    record = np.zeros((), RECORD)
    record["height"], record["width"] = grey.shape
    found, descriptors = _orb().detectAndCompute(grey, None)
    if len(found) < SPARSE:  # a smooth picture: its faint corners are all it has to match on
        found, descriptors = _orb(SPARSE_FAST_THRESHOLD).detectAndCompute(grey, None)
    if descriptors is not None:
        count = min(len(found), KEYPOINTS)
        record["count"] = count
        record["xy"][:count] = cv2.KeyPoint_convert(found[:count])
        record["descriptors"][:count] = descriptors[:count]
    return record


def ratio_matches(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into a, into b) of the descriptor matches that pass Lowe's ratio test: b's
    nearest descriptor to each of a's (Hamming distance) is closer than RATIO times the second
    nearest. cv2.batchDistance is what OpenCV's brute-force matcher runs; called directly it
    gives arrays, the same matches without a Python object per match (~35 -> ~20 us a pair)."""
    distance, nearest = cv2.batchDistance(a, b, cv2.CV_32S, normType=cv2.NORM_HAMMING, K=2)
    keep = distance[:, 0] < RATIO * distance[:, 1]
    return np.flatnonzero(keep), nearest[keep, 0]


def match(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """(inliers, cover) of the similarity fit between two RECORDs; (0, 0.0) when there is none."""
    return fit(*unpacked(a), *unpacked(b))


def unpacked(record: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """A RECORD's descriptors, its positions as float32 (what OpenCV fits), its frame's area."""
    count = int(record["count"])
    return (record["descriptors"][:count], record["xy"][:count].astype(np.float32),
            float(record["height"]) * float(record["width"]))


def fit(descriptors_a: np.ndarray, xy_a: np.ndarray, area_a: float, descriptors_b: np.ndarray,
        xy_b: np.ndarray, area_b: float) -> tuple[int, float]:
    """`match` on unpacked records (`unpacked`)."""
    if len(xy_a) < 2 or len(xy_b) < 2:
        return 0, 0.0
    query, train = ratio_matches(descriptors_a, descriptors_b)
    if len(query) < 3:
        return 0, 0.0
    src, dst = xy_a[query], xy_b[train]
    transform, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC,
                                                  ransacReprojThreshold=REPROJECTION_PX,
                                                  maxIters=500, confidence=0.99)
    if transform is None or \
            not SCALES[0] < float(np.hypot(transform[0, 0], transform[0, 1])) < SCALES[1]:
        return 0, 0.0
    inliers = mask.ravel().astype(bool)
    if inliers.sum() < 3:
        return int(inliers.sum()), 0.0
    hulls = (cv2.contourArea(cv2.convexHull(points[inliers])) for points in (src, dst))
    return int(inliers.sum()), min(hulls) / max(min(area_a, area_b), 1.0)


def accepted(inliers: int, cover: float) -> bool:
    return inliers >= MIN_INLIERS and cover >= MIN_COVER


def geometric_verdicts(records: np.ndarray, left: np.ndarray, right: np.ndarray, *,
                       batch: int = GEOMETRIC_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Per pair (rows of `records`, e.g. the memory map): accepted flags and inlier counts.

    `batch` pairs at a time, each record among them read once from the memory map (in row
    order) and unpacked once, not once per pair it is in: ~60 -> ~50 us a pair on the speed
    benchmark, where an image is in a few borderline pairs."""
    ok = np.zeros(len(left), bool)
    inliers = np.zeros(len(left), np.int32)
    for start in range(0, len(left), batch):
        i, j = left[start : start + batch], right[start : start + batch]
        rows, inverse = np.unique(np.concatenate([i, j]), return_inverse=True)
        points = [unpacked(record) for record in np.asarray(records[rows])]
        for k, (a, b) in enumerate(zip(inverse[: len(i)], inverse[len(i) :], strict=True)):
            count, cover = fit(*points[a], *points[b])
            inliers[start + k], ok[start + k] = count, accepted(count, cover)
    return ok, inliers


@dataclass(frozen=True)
class GeometricJob:
    """Where a worker finds the keypoint records: OUT/keypoints.u8, which every worker sees (as
    it sees OUT/crops.u8 for hashing on a cluster)."""

    records: str
    count: int


def geometric_chunk(chunk: list[np.ndarray], job: GeometricJob) -> tuple[np.ndarray, np.ndarray]:
    """`geometric_verdicts` of one chunk [left, right] of pairs, on a worker."""
    records = np.memmap(job.records, RECORD, "r", shape=(job.count,))
    return geometric_verdicts(records, *chunk)


def geometric_verdicts_on(engine: Engine | None, records: np.ndarray, left: np.ndarray,
                          right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`geometric_verdicts` as GEOMETRIC_CHUNK-pair tasks on `engine`, or here without one (or
    when the records are not in a file). The checks are the driver's largest serial step
    otherwise (~50 us a pair, thousands of pairs where many images overlap), while the workers
    that made the records wait; each pair's verdict does not depend on its chunk."""
    if engine is None or not isinstance(records, np.memmap) or len(left) == 0:
        return geometric_verdicts(records, left, right)
    job = GeometricJob(str(records.filename), len(records))
    chunks = ([left[start : start + GEOMETRIC_CHUNK], right[start : start + GEOMETRIC_CHUNK]]
              for start in range(0, len(left), GEOMETRIC_CHUNK))
    ok, inliers = zip(*engine.map(geometric_chunk, job, chunks), strict=True)
    return np.concatenate(ok), np.concatenate(inliers)
