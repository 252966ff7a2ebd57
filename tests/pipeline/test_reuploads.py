"""Synthetic re-uploads: the quality set's files and dedup's calibration see the same copies."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import demo
from pipeline.decode import decode_image
from pipeline.dedup.reuploads import KINDS, reupload, reuploaded


@pytest.mark.parametrize("kind", KINDS)
def test_the_pixels_are_what_the_reuploaded_file_decodes_to(kind):
    """dedup's calibration skips the lossless file; its copies must still be the files'."""
    photo = demo.photo("coffee.png")[:96, :128]
    data = reupload(photo, kind, np.random.default_rng(7))
    pixels = reuploaded(photo, kind, np.random.default_rng(7))
    assert np.array_equal(decode_image(data), pixels)
