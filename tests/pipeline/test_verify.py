"""Verification of candidate pairs: re-uploads of a real photo pass, other photos do not."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.decode import decode_image
from pipeline.dedup.reuploads import KINDS, reupload
from pipeline.dedup.verify import (
    DEFAULT_THRESHOLD,
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


def views_of(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The images' thumbnails and their framed flags, as pass 1 of dedup keeps them."""
    views, _, framed = zip(*(frame_views(img) for img in images), strict=True)
    return np.stack(views), np.array(framed)


def reupload_distances(photos, kinds, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base, base_framed = views_of(photos)
    out = {}
    for kind in kinds:
        copies, framed = views_of([decode_image(reupload(p, kind, rng)) for p in photos])
        out[kind] = distances(features(base), features(copies), base_framed & framed)
    return out


def other_photo_distances(photos) -> np.ndarray:
    left, right = np.triu_indices(len(photos), 1)
    return pair_distances(*views_of(photos), left, right)


def test_reuploads_of_real_photos_are_closer_than_any_two_different_photos(photos):
    same = reupload_distances(photos, ("jpeg", "webp", "downscale", "gamma", "border", "noise",
                                       "brightness_contrast", "blur"))
    different = other_photo_distances(photos)
    for kind, d in same.items():
        assert np.quantile(d, 0.9) < different.min(), kind


def test_a_calibrated_threshold_lies_between_the_two_distributions(photos):
    same = np.concatenate(list(reupload_distances(photos, KINDS[2:], seed=1).values()))
    left, right = random_distinct_pairs(len(photos), 500, seed=0)
    assert (left != right).all()
    different = pair_distances(*views_of(photos), left, right)
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
    assert pair_distances(*views_of([photo, framed]), np.array([0]), np.array([1]))[0] < 1e-3


def test_two_photos_in_the_same_frame_do_not_match_on_the_frame(photos):
    """Thick white frames make two different photos' whole frames alike; framed pictures are
    compared inside their frames only."""
    a, b = (np.pad(p, ((32, 32), (32, 32), (0, 0)), constant_values=255) for p in photos[:2])
    views, framed = views_of([a, b])
    assert framed.all()
    pair = np.array([0]), np.array([1])
    with_frames = distances(features(views[:1]), features(views[1:]), np.array([False]))
    inside = pair_distances(views, framed, *pair)[0]
    assert with_frames[0] < 0.75 * inside  # the frames would have made them look alike
    assert inside == pytest.approx(other_photo_distances(photos[:2])[0], abs=0.05)


def test_a_flat_edge_cut_in_one_copy_only_still_matches(photos):
    """A dark band along one edge is the picture's own; noise can keep part of a copy's band
    from being cut. Such pictures are not framed, so their whole frames are compared too."""
    banded = np.pad(photos[3], ((0, 24), (0, 0), (0, 0)))  # a black floor, one side only
    noisy = banded.copy()
    noise = np.random.default_rng(0).normal(0, 8, noisy[96:108].shape)
    noisy[96:108] = np.clip(noise + 8, 0, 255).astype(np.uint8)  # the band's upper half
    views, framed = views_of([banded, noisy])
    assert not framed.any() and not np.array_equal(views[0, 1], views[1, 1])  # cut differently
    d = pair_distances(views, framed, np.array([0]), np.array([1]))[0]
    trimmed_only = distances(features(views[:1]), features(views[1:]), np.array([True]))[0]
    assert d < 0.2 < trimmed_only


def test_distances_stream_in_batches_with_the_same_values(photos, monkeypatch):
    import pipeline.dedup.verify as verify

    views, framed = views_of(photos)
    left, right = np.triu_indices(len(photos), 1)
    whole = pair_distances(views, framed, left, right)
    monkeypatch.setattr(verify, "VERIFY_BATCH", 7)
    assert np.allclose(pair_distances(views, framed, left, right), whole, atol=1e-5)


def test_with_no_pairs_of_different_images_the_threshold_is_the_default_not_zero():
    """A threshold of 0 would reject every copy but the exact ones."""
    calibration = calibrate(np.array([0.1, 0.2, 0.3], np.float32), np.zeros(0, np.float32))
    assert calibration.threshold == DEFAULT_THRESHOLD > 0
    assert calibration.describe()["threshold_source"].startswith("default: only 0 pairs")
