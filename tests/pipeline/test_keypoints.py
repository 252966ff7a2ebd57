"""The geometric check of dedup's borderline candidates: crops and rotations of a real photo fit
one similarity transform, different photos do not."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.dedup.keypoints import (
    BORDERLINE,
    KEYPOINTS,
    MIN_INLIERS,
    RECORD,
    SPARSE,
    accepted,
    geometric_verdicts,
    geometric_verdicts_on,
    keypoints,
    match,
)
from pipeline.dedup.reuploads import reuploaded
from pipeline.dedup.verify import frame_views, pair_distances, verify_pairs
from pipeline.engines import LocalEngine
from tests.conftest import natural_tiles


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return natural_tiles(24, side=128)


def record(rgb: np.ndarray) -> np.ndarray:
    return keypoints(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))


def test_a_record_has_a_fixed_size_and_at_most_the_keypoints_asked_for(photos):
    big = cv2.resize(photos[0], (512, 384))
    points = record(big)
    assert points.dtype == RECORD and 0 < points["count"] <= KEYPOINTS
    assert max(points["height"], points["width"]) == 128  # found on the shrunk frame
    assert record(np.zeros((40, 40, 3), np.uint8))["count"] == 0  # a flat picture: none


def test_crops_and_rotations_fit_one_transform_and_other_photos_do_not(photos):
    rng = np.random.default_rng(0)
    records = [record(p) for p in photos]
    found = []
    for photo, original in zip(photos[:12], records, strict=False):
        for kind in ("crop", "crop_resize", "rotate"):
            found.append(accepted(*match(original, record(reuploaded(photo, kind, rng)))))
    assert np.mean(found) >= 0.6  # most geometric copies (some tiles have too few corners)
    others = [match(records[i], records[j]) for i in range(len(photos))
              for j in range(i + 1, len(photos))]
    assert max(inliers for inliers, _ in others) < MIN_INLIERS
    assert not any(accepted(*m) for m in others)


def test_a_smooth_picture_keeps_its_faint_corners_and_its_copies_fit(photos):
    """Blurred photos have few corners that stand out by 10 grey levels (a fifth of these
    copies fit on those alone); searched again for fainter ones, half the crops, crops +
    resizes and rotations fit, and no two different smooth photos reach the inlier threshold."""
    rng = np.random.default_rng(4)
    smooth = [cv2.GaussianBlur(p, (0, 0), 2.5) for p in photos]
    records = [record(p) for p in smooth]
    assert np.mean([r["count"] >= SPARSE for r in records]) >= 0.3
    found = [accepted(*match(original, record(reuploaded(photo, kind, rng))))
             for photo, original in zip(smooth[:12], records, strict=False)
             for kind in ("crop", "crop_resize", "rotate")]
    assert np.mean(found) >= 0.4  # 0.5 here; 0.22 without the second search
    others = [match(records[i], records[j]) for i in range(len(smooth))
              for j in range(i + 1, len(smooth))]
    assert max(inliers for inliers, _ in others) < MIN_INLIERS


def test_the_checks_on_the_workers_give_the_verdicts_made_here(photos, tmp_path):
    """Borderline pairs go to the engine's workers in chunks, which read the records from
    their file: every pair gets the verdict and inlier count it gets in this process."""
    rng = np.random.default_rng(1)
    copies = [reuploaded(p, kind, rng) for p in photos[:8] for kind in ("crop", "rotate")]
    records = np.array([record(img) for img in photos + copies], RECORD)
    records.tofile(tmp_path / "keypoints.u8")
    on_disk = np.memmap(tmp_path / "keypoints.u8", RECORD, "r", shape=(len(records),))
    left, right = np.triu_indices(len(records), 1)  # 780 pairs: two chunks
    with LocalEngine(2) as engine:
        ok, inliers = geometric_verdicts_on(engine, on_disk, left, right)
    here_ok, here_inliers = geometric_verdicts(records, left, right)
    assert np.array_equal(ok, here_ok) and np.array_equal(inliers, here_inliers)
    source = np.concatenate([np.arange(len(photos)), np.repeat(np.arange(8), 2)])
    assert ok.sum() >= 12 and (source[left[ok]] == source[right[ok]]).all()  # copies only


def test_a_half_size_copy_fits_the_original(photos):
    """A re-upload at half size: its frame is enlarged to the original's 128 px, so its keypoints
    are found at the original's scale (ORB runs on one scale; found on the 64 px frame itself,
    none of these pairs fit). 10 of the 12 fit (12 with a second pyramid level, which costs
    ~90 us an image; a half-size copy is caught by the thumbnail distance anyway)."""
    fits = []
    for photo in photos[:12]:
        half = cv2.resize(photo, (64, 64), interpolation=cv2.INTER_AREA)
        assert max(record(half)["height"], record(half)["width"]) == 128
        fits.append(accepted(*match(record(photo), record(half))))
    assert np.mean(fits) >= 0.8


def test_a_borderline_candidate_passes_on_its_keypoints_and_is_counted(photos):
    """The thumbnail distance of a crop is above a strict threshold; the geometric check takes
    it, and a pair of different photos in the same band stays refused."""
    rng = np.random.default_rng(3)
    copies = [reuploaded(p, "crop", rng) for p in photos[:6]]
    images = [*photos[:6], *copies]
    views, _, framed = zip(*(frame_views(img) for img in images), strict=True)
    views, framed = np.stack(views), np.array(framed)
    points = np.array([record(img) for img in images], RECORD)
    left, right = np.array([0, 1, 2, 3, 4, 5, 0]), np.array([6, 7, 8, 9, 10, 11, 1])
    d = pair_distances(views, framed, left, right)
    threshold = float(d[:6].min()) - 1e-3  # every copy above it: all borderline or beyond
    plain = verify_pairs(views, framed, iter([(left, right)]), threshold)
    assert len(plain.left) == 0
    checked = verify_pairs(views, framed, iter([(left, right)]), threshold, points)
    pairs = set(zip(checked.left.tolist(), checked.right.tolist(), strict=True))
    band = (d > threshold) & (d <= BORDERLINE)
    assert checked.geometric_checked == band.sum()
    assert checked.geometric_accepted == len(pairs) >= 3
    assert (0, 1) not in pairs
    ok, inliers = geometric_verdicts(points, left, right)
    assert (checked.accepted_near[:, 0] >= MIN_INLIERS).all()
    assert inliers[ok].min() >= MIN_INLIERS
