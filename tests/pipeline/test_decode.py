"""The one decoder: every awkward kind of input either decodes upright RGB or says why not."""

from __future__ import annotations

import io
import time

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline import demo
from pipeline.decode import DecodeError, decode_image, image_size
from pipeline.statuses import CORRUPT, EMPTY, NOT_IMAGE, TOO_LARGE, TOO_SMALL


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return demo.photo("astronaut.png")[::4, ::4].copy()  # 128x128, real content


def reject(data: bytes, **kwargs) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode_image(data, **kwargs)
    return info.value


def test_plain_jpeg_and_png_decode_to_rgb(photo):
    for fmt in ("PNG", "JPEG", "WEBP", "BMP"):
        rgb = decode_image(demo.encode(photo, fmt))
        assert rgb.dtype == np.uint8 and rgb.shape == photo.shape
        assert np.abs(rgb.astype(int) - photo).mean() < 8, fmt


def test_png_is_exact(photo):
    assert np.array_equal(decode_image(demo.encode(photo, "PNG")), photo)


def test_truncated_jpeg_is_corrupt(photo):
    jpeg = demo.encode(photo, "JPEG")
    err = reject(jpeg[: len(jpeg) // 2])
    assert err.status == CORRUPT and "truncated" in err.reason


def test_zero_bytes_is_empty():
    assert reject(b"").status == EMPTY


def test_html_and_text_named_as_images_are_not_images():
    html = reject(b"<!DOCTYPE html><html><body>Not found</body></html>")
    assert html.status == NOT_IMAGE and "HTML" in html.reason
    text = reject(b"just some words\nin a file\n")
    assert text.status == NOT_IMAGE and "text" in text.reason
    junk = reject(bytes(range(256)) * 4)
    assert junk.status == NOT_IMAGE and "unrecognized" in junk.reason


def test_rgba_is_flattened_onto_white(photo):
    rgba = np.dstack([photo, np.zeros(photo.shape[:2], np.uint8)])  # fully transparent
    rgba[:10, :10, 3] = 255
    rgb = decode_image(demo.encode(rgba, "PNG"))
    assert rgb.shape[2] == 3
    assert (rgb[50:, 50:] == 255).all()  # transparent -> white
    assert np.array_equal(rgb[:10, :10], photo[:10, :10])  # opaque kept


def test_palette_with_transparency_is_flattened_onto_white():
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.info["transparency"] = 0
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=0)
    assert (decode_image(buf.getvalue()) == 255).all()


def test_sixteen_bit_png_is_scaled(photo):
    rgb = decode_image(demo.png16(photo))
    assert rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - photo).max() <= 1


def test_sixteen_bit_grayscale_png_is_scaled():
    gray = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    ok, buf = cv2.imencode(".png", gray)
    rgb = decode_image(buf.tobytes())
    assert rgb.shape == (64, 64, 3)
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255
    assert np.array_equal(rgb[..., 0], rgb[..., 2])


def test_cmyk_jpeg_is_converted(photo):
    data = demo.encode(Image.fromarray(photo).convert("CMYK"), "JPEG", quality=95)
    rgb = decode_image(data)
    assert rgb.shape == photo.shape
    assert np.abs(rgb.astype(int) - photo).mean() < 12


def test_grayscale_becomes_three_equal_channels(photo):
    rgb = decode_image(demo.encode(photo[..., 0], "PNG"))
    assert rgb.shape == photo.shape and np.array_equal(rgb[..., 0], rgb[..., 1])


def test_exif_rotation_is_applied(photo):
    wide = photo[:64]  # 64 tall x 128 wide: rotation is visible in the shape
    rgb = decode_image(demo.exif_rotated_jpeg(wide))
    assert rgb.shape == wide.shape
    assert np.abs(rgb.astype(int) - wide).mean() < 10


def test_animated_gif_gives_first_frame(photo):
    frames = [photo, np.zeros_like(photo), np.full_like(photo, 255)]
    rgb = decode_image(demo.animated_gif(frames))
    assert np.abs(rgb.astype(int) - photo).mean() < 20  # GIF palette quantization
    assert np.abs(rgb.astype(int) - 0).mean() > 40


def test_one_pixel_image_decodes_but_is_too_small_for_a_crop(photo):
    one = demo.encode(photo[:1, :1], "PNG")
    assert decode_image(one).shape == (1, 1, 3)
    err = reject(one, min_side=64)
    assert err.status == TOO_SMALL and "1x1" in err.reason


def test_decompression_bomb_is_refused_fast_from_its_header():
    """Refused from the header's claimed size, in well under the time decoding 900 Mpixel
    would take."""
    bomb = demo.png_bomb(30_000, 30_000)
    assert len(bomb) < 1_000_000
    start = time.perf_counter()
    err = reject(bomb)
    assert time.perf_counter() - start < 0.5
    assert err.status == TOO_LARGE and "30000x30000" in err.reason
    assert image_size(bomb) == (30_000, 30_000)


def test_pixel_limit_is_the_callers(photo):
    data = demo.encode(photo, "PNG")
    assert reject(data, max_pixels=100 * 100).status == TOO_LARGE
    big = demo.png_bomb(20_000, 20_000)  # 400 Mpixel: over Pillow's own limit too
    assert "400.0 Mpixel" in reject(big, max_pixels=300_000_000).reason


def test_huge_legitimate_image_decodes():
    big = np.zeros((4000, 6000, 3), np.uint8)
    big[::7] = 200
    rgb = decode_image(demo.encode(big, "PNG"))
    assert rgb.shape == (4000, 6000, 3) and np.array_equal(rgb, big)


def test_draft_decoding_keeps_requested_side(photo):
    large = cv2.resize(photo, (1000, 700))
    rgb = decode_image(demo.encode(large, "JPEG"), draft_side=64)
    assert min(rgb.shape[:2]) >= 64 and rgb.shape[0] < 700
    assert rgb.shape[1] / rgb.shape[0] == pytest.approx(1000 / 700, rel=0.05)
