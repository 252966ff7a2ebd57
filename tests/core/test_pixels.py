"""uint8 pixels <-> [-1, 1]: the one conversion every model's input and output goes through."""

from __future__ import annotations

import numpy as np
import torch

from core.pixels import to_float, to_uint8


def test_to_uint8_maps_the_tanh_range_and_clips() -> None:
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    out = to_uint8(x)
    assert out.shape == (1, 2, 2, 3) and out.dtype == np.uint8
    assert out[0, :, :, 0].ravel().tolist() == [0, 128, 255, 255]


def test_to_float_is_channels_first_in_range_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    x = to_float(pixels)
    assert x.shape == (2, 3, 5, 5) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert to_float(pixels[0]).shape == (3, 5, 5)
    np.testing.assert_array_equal(to_uint8(x), pixels)


def test_to_float_takes_a_read_only_memmap_without_warning(tmp_path, recwarn) -> None:
    path = tmp_path / "crops.u8"
    np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3).tofile(path)
    crops = np.memmap(path, np.uint8, "r", shape=(2, 4, 4, 3))
    np.testing.assert_array_equal(to_uint8(to_float(crops)), crops)
    assert not [w for w in recwarn if "not writable" in str(w.message)]
