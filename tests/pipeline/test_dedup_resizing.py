"""The crops pass's fast area downscale: exact sizes, and the picture an area resize gives."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.dedup.resizing import shrink
from tests.conftest import natural_tiles


@pytest.mark.parametrize(("size", "target"), [((256, 300), (128, 109)), ((341, 257), (32, 32)),
                                              ((130, 129), (128, 128)), ((64, 64), (64, 64))])
def test_shrink_gives_the_exact_size_and_about_the_area_average(size, target):
    photo = cv2.resize(natural_tiles(1, side=128)[0], size, interpolation=cv2.INTER_CUBIC)
    small = shrink(photo, *target)
    assert small.shape == (target[1], target[0], 3) and small.dtype == np.uint8
    plain = cv2.resize(photo, target, interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(float) - plain).mean() < 4  # grey levels
