"""Verification of candidate pairs: re-uploads of a real photo pass, other photos do not."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.decode import decode_image
from pipeline.reuploads import KINDS, reupload
from pipeline.verify import (
    calibrate,
    distances,
    features,
    frame_views,
    inner_box,
    pair_distances,
    random_distinct_pairs,
)
from tests.conftest import natural_tiles


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """96 px tiles of real photographs: LSUN-like texture at a size the tests afford."""
    return natural_tiles(40, side=96)


def views_of(images: list[np.ndarray]) -> np.ndarray:
    return np.stack([frame_views(img)[0] for img in images])


def reupload_distances(photos, kinds, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = features(views_of(photos))
    out = {}
    for kind in kinds:
        copies = [decode_image(reupload(p, kind, rng)) for p in photos]
        out[kind] = distances(base, features(views_of(copies)))
    return out


def other_photo_distances(photos) -> np.ndarray:
    views = views_of(photos)
    left, right = np.triu_indices(len(photos), 1)
    return pair_distances(views, left, right)


def test_reuploads_of_real_photos_are_closer_than_any_two_different_photos(photos):
    same = reupload_distances(photos, ("jpeg", "webp", "downscale", "gamma", "border", "noise",
                                       "brightness_contrast", "blur"))
    different = other_photo_distances(photos)
    for kind, d in same.items():
        assert np.quantile(d, 0.9) < different.min(), kind


def test_a_calibrated_threshold_lies_between_the_two_distributions(photos):
    same = np.concatenate(list(reupload_distances(photos, KINDS[2:], seed=1).values()))
    views = views_of(photos)
    left, right = random_distinct_pairs(len(photos), 500, seed=0)
    assert (left != right).all()
    different = pair_distances(views, left, right)
    calibration = calibrate(same, different)
    assert np.median(same) < calibration.threshold < np.median(different)
    assert np.mean(different <= calibration.threshold) <= 0.01  # few different pairs pass
    assert np.mean(same <= calibration.threshold) >= 0.5  # most re-uploads do
    report = calibration.describe()
    assert report["threshold"] == round(calibration.threshold, 4)
    assert report["same_pairs"] == len(same) and report["distinct_pairs"] == 500


def test_a_frame_or_letterbox_is_trimmed_before_the_comparison(photos):
    photo = photos[0]
    framed = np.pad(photo, ((10, 10), (0, 0), (0, 0)))  # black letterbox bars
    assert framed[..., 0][inner_box(framed[..., 0])].shape == photo.shape[:2]
    d = distances(features(views_of([photo])), features(views_of([framed])))
    assert d[0] < 1e-3


def test_distances_stream_in_batches_with_the_same_values(photos, monkeypatch):
    import pipeline.verify as verify

    views = views_of(photos)
    left, right = np.triu_indices(len(photos), 1)
    whole = pair_distances(views, left, right)
    monkeypatch.setattr(verify, "VERIFY_BATCH", 7)
    assert np.allclose(pair_distances(views, left, right), whole, atol=1e-5)
