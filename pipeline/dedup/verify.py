"""The verdict on a candidate pair of `pipeline dedup`: are the two whole pictures the same?

The semantic hash sees a 32x32 center crop, which a border, a letterbox or a crop moves more
than the whole frame; so candidates proposed by the hash are judged on a thumbnail of the whole
image. Each image keeps a grey `SIDE` x `SIDE` thumbnail of its frame twice: as decoded, and with
uniform borders trimmed (a framed or letterboxed copy then matches its original).

The comparison is on the lowest spatial frequencies of the thumbnail, as pHash does, but
without binarizing: the 8x8 lowest DCT coefficients but the mean, each scaled by the typical
magnitude of its frequency in photographs (so fine structure counts as much as the coarse
layout), as a unit vector. The distance of two images is the smallest Euclidean distance between
their views, at least one of the two trimmed (`distances`). Brightness, contrast and most of a gamma
change only scale the coefficients, which the unit length removes; re-encoding, noise, scaling
and blur change the high frequencies this leaves out; a few per cent of crop or rotation moves
the low frequencies little.

The threshold is calibrated on the data itself, without labels (`calibrate`): distances of
sampled images to synthetic re-uploads of themselves (pipeline.dedup.reuploads) against distances of
random pairs of different images. "Different" is what the hash says when it is sure: random pairs
whose codes are more than twice the candidate radius apart (further than any two members of a
group). Random pairs alone would not do on a collection with many copies: where 0.3 % of all
pairs are duplicates, the 0.1 % quantile of random pairs is a duplicate's distance.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from pipeline.dedup.keypoints import BORDERLINE, geometric_verdicts_on, keypoint_frame
from pipeline.dedup.resizing import shrink

if TYPE_CHECKING:
    from pipeline.engines import Engine

SIDE = 32  # the thumbnail of the whole frame, grey, SIDE x SIDE
LOW = 8  # the LOW x LOW lowest DCT frequencies are compared (as in pHash)
VIEWS = 2  # as decoded, borders trimmed
BORDER_STD = 3.0  # a border row: grey levels vary by at most this much along it ...
BORDER_STEP = 6.0  # ... and its mean is within this of the outermost row's
MAX_TRIM = 0.4  # more than this of a side in "border" is a dark or flat picture, not a frame
VERIFY_BATCH = 1 << 15  # candidate pairs compared at a time (bounded memory)

# Calibration: a random different pair passes the threshold with at most this probability, and
# the threshold never exceeds the distance that SAME_QUANTILE of the synthetic re-uploads reach
# (the hardest tenth of synthetic changes, mostly crops and rotations, is given up: on the
# quality set, 0.98 let in ~20x more false pairs for 0.02 more recall, and 0.93 merged a few
# pairs of look-alike tiles when the sample was large; benchmarks/dedup_quality.py).
DISTINCT_QUANTILE = 1e-3
SAME_QUANTILE = 0.90
DISTINCT_PAIRS = 20_000  # random pairs of different images the calibration measures
# With fewer different pairs than this (a tiny set, or one whose codes are all near), their tail
# is not measured and the threshold is DEFAULT_THRESHOLD instead: a little below the thresholds
# calibrated on both quality sets (0.517 and 0.572, docs/dedup.md "Quality").
MIN_DISTINCT_PAIRS = 100
DEFAULT_THRESHOLD = 0.5


# ---- per image (in the crops worker) ---------------------------------------------------------

def frame_views(rgb: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice] | None, bool]:
    """uint8 VIEWS x SIDE x SIDE: the grey whole frame as decoded and with uniform borders
    trimmed (the same twice when there is no border); where the picture inside the borders is
    (`inner_box`, for dedup's inner crop); and whether those borders are a frame (`is_frame`)."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return grey_views(grey, keypoint_frame(grey))


def grey_views(grey: np.ndarray,
               small: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice] | None, bool]:
    """`frame_views` of a grey frame, given it also at KEYPOINT_SIDE (`small`,
    keypoints.keypoint_frame, which the crops pass has anyway): the whole frame's thumbnail is
    made from that, and the trimmed one the same way (a photo and its letterboxed copy then
    give the same thumbnail)."""
    whole = _thumb(small)
    box = inner_box(grey)
    views = np.stack([whole, whole if box is None else _thumb(keypoint_frame(grey[box]))])
    return views, box, is_frame(grey, box)


def is_frame(grey: np.ndarray, box: tuple[slice, slice] | None) -> bool:
    """Whether `box` (from `inner_box`) cuts borders of one grey off two opposite sides: a
    frame or letterbox bars, which two different photos can share. A flat edge, or two of
    different greys (a sky above, a dark floor below), is more likely the picture's own, which
    a re-upload's noise or gamma may cut differently."""
    if box is None:
        return False
    (rows, cols), (h, w) = box, grey.shape
    bars = rows.start > 0 and rows.stop < h and _alike(grey[0], grey[-1])
    return bars or (cols.start > 0 and cols.stop < w and _alike(grey[:, 0], grey[:, -1]))


def _alike(a: np.ndarray, b: np.ndarray) -> bool:
    return abs(float(a.mean()) - float(b.mean())) <= BORDER_STEP


def inner_box(grey: np.ndarray) -> tuple[slice, slice] | None:
    """Where the picture is inside uniform borders (rows, columns), or None when it has none,
    or when they would take more than MAX_TRIM of either side (a dark or flat picture)."""
    h, w = grey.shape
    top, bottom = _border(grey), _border(grey[::-1])
    left, right = _border(grey.T), _border(grey.T[::-1])
    if top + bottom > MAX_TRIM * h or left + right > MAX_TRIM * w or \
            top + bottom + left + right == 0:
        return None
    return slice(top, h - bottom), slice(left, w - right)


def _border(grey: np.ndarray) -> int:
    """How many leading rows are one uniform grey, the same as the first row's (counted up to
    just past MAX_TRIM of the side); most photos leave at the first row."""
    if int(grey[0].max()) - int(grey[0].min()) > 6 * BORDER_STD:
        return 0
    rows = grey[: int(MAX_TRIM * len(grey)) + 2].astype(np.float32)
    flat = (rows.std(axis=1) <= BORDER_STD) & (np.abs(rows.mean(axis=1) - rows[0].mean())
                                                <= BORDER_STEP)
    return len(flat) if flat.all() else int(np.argmin(flat))


def _thumb(grey: np.ndarray) -> np.ndarray:
    return shrink(grey, SIDE, SIDE)


# ---- comparing ---------------------------------------------------------------------------------

def _dct_rows(side: int, low: int) -> np.ndarray:
    """The first `low` rows of the orthonormal DCT-II matrix of size `side`."""
    k, x = np.meshgrid(np.arange(low), np.arange(side), indexing="ij")
    basis = np.cos(np.pi * (2 * x + 1) * k / (2 * side)) * np.sqrt(2 / side)
    basis[0] /= np.sqrt(2)
    return basis.astype(np.float32)


_BASIS = _dct_rows(SIDE, LOW)
_FREQ = np.add.outer(np.arange(LOW), np.arange(LOW)).ravel()[1:]  # u + v, the mean left out
_WEIGHT = (1.0 + _FREQ).astype(np.float32)  # photographs' coefficients fall about as 1 / f


def features(views: np.ndarray) -> np.ndarray:
    """float32 m x VIEWS x (LOW*LOW - 1): each view's low DCT frequencies, whitened, unit length."""
    x = views.astype(np.float32)
    coef = np.einsum("ui,mvij,kj->mvuk", _BASIS, x, _BASIS, optimize=True)
    flat = coef.reshape(*coef.shape[:2], LOW * LOW)[..., 1:] * _WEIGHT
    return flat / np.maximum(np.linalg.norm(flat, axis=-1, keepdims=True), 1e-3)


def distances(a: np.ndarray, b: np.ndarray, both_framed: np.ndarray) -> np.ndarray:
    """Per pair, the smallest distance between their views (feature arrays from `features`,
    m x VIEWS x F each): trimmed against trimmed, one side as decoded against the other
    trimmed (a frame one copy's noise kept from being cut), and both as decoded (a flat edge of
    the picture cut in one copy only) - except when both pictures are framed (`both_framed`,
    per pair): two different photos in the same kind of frame would match on the frame."""
    d = np.linalg.norm(a[:, :, None, :] - b[:, None, :, :], axis=-1)
    best = np.minimum(d[:, 1, 1], np.minimum(d[:, 0, 1], d[:, 1, 0]))
    return np.where(both_framed, best, np.minimum(best, d[:, 0, 0]))


def pair_distances(views: np.ndarray, framed: np.ndarray, left: np.ndarray,
                   right: np.ndarray, mirrors: bool = False) -> np.ndarray:
    """float32 distance of every pair (left[k], right[k]) of rows of `views` (n x VIEWS x SIDE
    x SIDE, e.g. the memory map; `framed`: n flags from `is_frame`), `VERIFY_BATCH` pairs at a
    time so memory stays flat. With `mirrors`, the smaller of the distances to the right image
    as it is and flipped left to right (`dedup --mirrors same`)."""
    out = np.empty(len(left), np.float32)
    for start in range(0, len(left), VERIFY_BATCH):
        i, j = left[start : start + VERIFY_BATCH], right[start : start + VERIFY_BATCH]
        rows, inverse = np.unique(np.concatenate([i, j]), return_inverse=True)
        thumbs = np.asarray(views[rows])  # each image once, read in row order
        feats, both = features(thumbs), framed[i] & framed[j]
        a, b = feats[inverse[: len(i)]], feats[inverse[len(i) :]]
        d = distances(a, b, both)
        if mirrors:
            flipped = features(thumbs[..., ::-1])[inverse[len(i) :]]
            d = np.minimum(d, distances(a, flipped, both))
        out[start : start + len(i)] = d
    return out


# ---- calibration -------------------------------------------------------------------------------

def sampled(key: str, rate: float) -> bool:
    """Whether `key` is in the calibration sample: decided by the key alone, so any worker, any
    chunking and any engine sample the same images."""
    return zlib.crc32(key.encode("utf-8")) < rate * 2**32


@dataclass(frozen=True)
class Calibration:
    threshold: float
    same: np.ndarray  # distances of sampled images to synthetic re-uploads of themselves
    distinct: np.ndarray  # distances of random pairs of different images
    fallback: bool = False  # too few different pairs: the threshold is DEFAULT_THRESHOLD

    def describe(self) -> dict:
        return {"threshold": round(self.threshold, 4),
                "threshold_source": self.source(),
                "same_pairs": int(len(self.same)), "distinct_pairs": int(len(self.distinct)),
                "same_passing": round(float(np.mean(self.same <= self.threshold)), 4)
                if len(self.same) else None,
                "distinct_passing": float(np.mean(self.distinct <= self.threshold))
                if len(self.distinct) else None,
                "rule": f"min(same {SAME_QUANTILE:g} quantile, "
                        f"distinct {DISTINCT_QUANTILE:g} quantile); the default "
                        f"{DEFAULT_THRESHOLD:g} with fewer than {MIN_DISTINCT_PAIRS} "
                        "distinct pairs"}

    def source(self) -> str:
        """Where the threshold came from, in words (the summary and the one-line report)."""
        if self.fallback:
            return (f"default: only {len(self.distinct)} pairs of different images to "
                    f"calibrate on (< {MIN_DISTINCT_PAIRS})")
        return "calibrated"


def random_distinct_pairs(n: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` random pairs of different rows (sorted, so the memory map is read in order)."""
    rng = np.random.default_rng(seed)
    left = rng.integers(0, n, count)
    right = (left + rng.integers(1, n, count)) % n
    order = np.argsort(left, kind="stable")
    return left[order], right[order]


def calibrate(same: np.ndarray, distinct: np.ndarray) -> Calibration:
    """The largest distance that a random different pair reaches only with probability
    DISTINCT_QUANTILE, but no larger than what SAME_QUANTILE of true re-uploads need; with fewer
    than MIN_DISTINCT_PAIRS different pairs, DEFAULT_THRESHOLD (a tail of a handful of pairs
    says nothing, and none at all would reject every copy)."""
    if len(distinct) < MIN_DISTINCT_PAIRS:
        return Calibration(DEFAULT_THRESHOLD, same, distinct, fallback=True)
    limit = float(np.quantile(distinct, DISTINCT_QUANTILE))
    if len(same):
        limit = min(limit, float(np.quantile(same, SAME_QUANTILE)))
    return Calibration(limit, same, distinct)


def calibration_distances(views: np.ndarray, framed: np.ndarray, codes: np.ndarray,
                          radius: int, rows: np.ndarray, reuploads: np.ndarray,
                          reuploads_framed: np.ndarray, *, pairs: int = DISTINCT_PAIRS,
                          seed: int = 0, mirrors: bool = False) -> Calibration:
    """Calibrate on the data: `rows` of `views` against their synthetic re-uploads
    (`reuploads`, same order; `framed` and `reuploads_framed` flag the framed ones), and up to
    `pairs` random pairs of rows whose hash `codes` are more than 2 * `radius` bits apart, each
    pair measured once (a small set draws the same pairs many times)."""
    same = (distances(features(np.asarray(views[rows])), features(reuploads),
                      framed[rows] & reuploads_framed) if len(rows)
            else np.zeros(0, np.float32))
    if len(views) < 2:
        return calibrate(same, np.zeros(0, np.float32))
    left, right = random_distinct_pairs(len(views), pairs, seed)
    left, right = np.unique(np.column_stack([np.minimum(left, right),
                                             np.maximum(left, right)]), axis=0).T
    apart = np.bitwise_count(codes[left] ^ codes[right]).sum(axis=1) > 2 * radius
    return calibrate(same, pair_distances(views, framed, left[apart], right[apart], mirrors))


BINS = np.linspace(0.0, 2.0, 101)  # unit vectors are at most 2 apart
NEAREST_REJECTED = 32  # rejected candidates kept for the sheet a person checks


NEAREST_GEOMETRIC = 16  # borderline decisions kept per side (accepted, refused) for the sheets


@dataclass
class Verdicts:
    """What verification found: the pairs that passed, how many were judged, a histogram of
    all candidates' distances, the rejected pairs closest to the threshold, and the geometric
    check's borderline decisions nearest its inlier threshold."""

    left: np.ndarray
    right: np.ndarray
    distance: np.ndarray
    candidates: int
    counts: np.ndarray  # per BINS interval
    rejected: np.ndarray  # k x 4 (distance, left, right, inliers), nearest the threshold first
    geometric_checked: int = 0  # borderline candidates given the geometric check ...
    geometric_accepted: int = 0  # ... and those it accepted
    accepted_near: np.ndarray = field(  # k x 4 (inliers, left, right, distance), fewest first
        default_factory=lambda: np.zeros((0, 4)))


@dataclass
class Screened:
    """The thumbnail pass over all candidates (`screen_pairs`): the pairs it passed, the
    borderline ones left for the geometric check, a histogram of all candidates' distances
    and the refused pairs closest to the threshold."""

    passed: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # (left, right, distance) chunks
    borderline: tuple[np.ndarray, np.ndarray, np.ndarray]  # left, right, distance
    candidates: int
    counts: np.ndarray  # per BINS interval
    rejected: np.ndarray  # k x 4 (distance, left, right, -1), nearest the threshold first


def verify_pairs(views: np.ndarray, framed: np.ndarray, pairs, threshold: float,
                 points: np.ndarray | None = None, mirrors: bool = False,
                 engine: Engine | None = None) -> Verdicts:
    """Judge every candidate pair from `pairs` (an iterator of (left, right) chunks) on the
    thumbnails `views` (`framed`: which are framed); a pair above `threshold` but within
    keypoints.BORDERLINE passes when its keypoints (`points`, keypoints.RECORD per row) fit
    one similarity transform (pipeline.dedup.keypoints). `mirrors`: a left-right mirror image
    counts as the same picture (thumbnails only; keypoints are not mirror-invariant). The
    geometric checks run on `engine`'s workers when one is given. A pair proposed twice passes
    once. The two steps, `screen_pairs` and `second_opinion`, are also called apart: dedup
    draws the histogram between them, while the workers check."""
    screened = screen_pairs(views, framed, pairs, threshold, mirrors)
    return second_opinion(screened, threshold, points, engine)


def screen_pairs(views: np.ndarray, framed: np.ndarray, pairs, threshold: float,
                 mirrors: bool = False) -> Screened:
    """The thumbnail distance of every candidate pair: those within `threshold` pass, those
    within keypoints.BORDERLINE are kept for the geometric check. Memory holds one chunk, the
    passing and borderline pairs, and a histogram."""
    passed, borderline = [], []
    counts, candidates = np.zeros(len(BINS) - 1, np.int64), 0
    rejected = np.zeros((0, 4))
    for left, right in pairs:
        d = pair_distances(views, framed, left, right, mirrors)
        candidates += len(d)
        counts += np.histogram(np.clip(d, 0, 2), BINS)[0]
        ok, border = d <= threshold, (d > threshold) & (d <= BORDERLINE)
        passed.append((left[ok], right[ok], d[ok]))
        borderline.append((left[border], right[border], d[border]))
        out = ~ok & ~border
        near = np.column_stack([d[out], left[out], right[out], np.full(out.sum(), -1)])
        rejected = np.unique(np.concatenate([rejected, near]), axis=0)[:NEAREST_REJECTED]
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    left, right, d = (np.concatenate(x) for x in zip(empty, *borderline, strict=True))
    return Screened(passed, (left, right, d), candidates, counts, rejected)


def second_opinion(screened: Screened, threshold: float, points: np.ndarray | None = None,
                   engine: Engine | None = None) -> Verdicts:
    """The verdicts: the pairs the thumbnails passed, and the borderline ones whose keypoints
    (`points`) fit one transform, checked on `engine`'s workers (refused without `points`)."""
    left, right, d = screened.borderline
    ok, inliers = np.zeros(len(d), bool), np.full(len(d), -1)  # -1: not checked
    if points is not None:
        ok, inliers = geometric_verdicts_on(engine, points, left, right)
    near = np.column_stack([d[~ok], left[~ok], right[~ok], inliers[~ok]])
    rejected = np.unique(np.concatenate([screened.rejected, near]), axis=0)[:NEAREST_REJECTED]
    accepted_near = np.unique(np.column_stack([inliers[ok], left[ok], right[ok], d[ok]]),
                              axis=0)[:NEAREST_GEOMETRIC]
    kept = [*screened.passed, (left[ok], right[ok], d[ok])]
    left, right, distance = (np.concatenate(x) for x in zip(*kept, strict=True))
    _, once = np.unique(np.column_stack([left, right]), axis=0, return_index=True)
    geometric = int(np.sum(distance[once] > threshold))
    return Verdicts(left[once], right[once], distance[once], screened.candidates,
                    screened.counts, rejected, len(d) if points is not None else 0, geometric,
                    accepted_near)


def histogram(calibration: Calibration, candidate_counts: np.ndarray | None = None):
    """A matplotlib figure: both calibration distributions (and the hash candidates'
    distances) with the chosen threshold, the picture to check before trusting it."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    ax = fig.add_subplot()
    for values, label in ((calibration.same, "image vs its synthetic re-upload"),
                          (calibration.distinct, "random different images")):
        if len(values):
            counts = np.histogram(np.clip(values, 0, 2), BINS)[0]
            ax.stairs(counts / counts.sum(), BINS, linewidth=1.5, label=label)
    if candidate_counts is not None and candidate_counts.sum():
        ax.stairs(candidate_counts / candidate_counts.sum(), BINS, linewidth=1.5,
                  label="hash candidates")
    ax.axvline(calibration.threshold, color="k", linestyle="--",
               label=f"threshold {calibration.threshold:.3f}")
    ax.set_xlabel("distance of whole-frame thumbnails")
    ax.set_ylabel("fraction of pairs")
    ax.set_yscale("log")
    ax.yaxis.set_minor_locator(NullLocator())  # unlabelled anyway; they cost ~40 ms to draw
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.11, right=0.98, bottom=0.14, top=0.97)  # tight_layout: ~0.25 s
    return fig
