"""Bytes -> upright RGB uint8, or a specific reason why not.

All image decoding in the project is here, in two entry points:
- `decode_image` for input images, whatever a scrape holds: every stage rejects bad input the
  same way and with the same words. Pillow is used because it exposes the header (size, mode,
  frames) before any pixel is decoded: that is what lets us refuse decompression bombs without
  allocating for them, and skip decoding entirely for images too small to use.
- `decode_shard_image` for the images of training shards, read back by training, its caches,
  the analyses and contact sheets: PNG or JPEG crops of one size, upright RGB already, decoded
  millions of times per run. It checks the size from the header, then decodes with OpenCV
  (about 1.5x faster than the full path at 64x64, which a GPU waiting for data notices).

Conventions (documented in docs/pipeline.md):
- EXIF orientation is applied, so the array is upright as a person would see it.
- Transparency is flattened onto **white** (scraped product shots and logos usually assume a
  white page; black would turn them into dark silhouettes).
- 16-bit data is scaled to 8 bits (value >> 8); grayscale, palette, CMYK, YCbCr, LAB are
  converted to RGB; animations (GIF, APNG, WebP) contribute their first frame.
"""

from __future__ import annotations

import io
import struct
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.statuses import CORRUPT, EMPTY, NOT_IMAGE, TOO_LARGE, TOO_SMALL, RecordError

DEFAULT_MAX_PIXELS = 64_000_000

EXIF_ORIENTATION = 0x0112
# Formats a scraped corpus realistically holds. Restricting Pillow to these keeps it from
# "succeeding" on text that happens to parse as an obscure format (e.g. XBM, which is C source).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "ICO")


class DecodeError(RecordError):
    """An input that cannot become a training image; `status` is the manifest status."""


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = 0,
    draft_side: int | None = None,
) -> np.ndarray:
    """Decode `data` into an upright HxWx3 uint8 RGB array.

    `min_side` rejects images whose shorter side is below it (checked from the header, before
    decoding). `draft_side` lets JPEG decoding use DCT scaling when the caller will shrink the
    image anyway: the result keeps its shorter side >= `draft_side`, which is several times
    faster for large photos and loses nothing the later area resize would have kept.
    Raises DecodeError with a status from `pipeline.statuses` and a human-readable reason.
    """
    if len(data) == 0:
        raise DecodeError(EMPTY, "zero-byte file")
    img = _open(data)
    width, height = img.size
    if width * height > max_pixels:
        raise DecodeError(
            TOO_LARGE,
            f"header claims {width}x{height} = {width * height / 1e6:.1f} Mpixel, "
            f"over the {max_pixels / 1e6:.0f} Mpixel limit",
        )
    if min(width, height) < min_side:
        raise DecodeError(
            TOO_SMALL, f"{width}x{height} is smaller than the required {min_side} px side"
        )
    if draft_side and img.format == "JPEG":
        img.draft("RGB", _draft_request(img, draft_side))
    try:
        img.load()
        if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
            img = ImageOps.exif_transpose(img)  # copies: only pay for it when needed
        rgb = _to_rgb(img)
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise DecodeError(CORRUPT, f"damaged or truncated image data ({err})") from None
    return rgb


def decode_shard_image(data: bytes, side: int | None = None) -> np.ndarray:
    """A training shard's image (PNG, JPEG, ...) -> H x W x 3 uint8 RGB. With `side`, an image
    that is not side x side is refused from its header, before decoding; without, one over
    DEFAULT_MAX_PIXELS is. DecodeError (with a manifest status) when it cannot be decoded."""
    width, height = _shard_image_size(data)
    if side is not None and (width, height) != (side, side):
        raise DecodeError(TOO_LARGE if max(width, height) > side else TOO_SMALL,
                          f"{width}x{height}, expected {side}x{side}")
    if width * height > DEFAULT_MAX_PIXELS:
        raise DecodeError(TOO_LARGE, f"header claims {width}x{height}, over the "
                                     f"{DEFAULT_MAX_PIXELS / 1e6:.0f} Mpixel limit")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DecodeError(CORRUPT, "damaged or truncated image data (OpenCV cannot decode it)")
    return np.ascontiguousarray(bgr[..., ::-1])


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _shard_image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an image: a PNG's from its IHDR chunk directly (the shards' default
    format, read a million times), any other from Pillow's header parser."""
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if len(data) == 0:
        raise DecodeError(EMPTY, "zero-byte image member")
    return image_size(data)


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone, without decoding pixels."""
    return _open(data).size


def _open(data: bytes) -> Image.Image:
    """Parse the header only.

    Pillow's own bomb check is switched off for the call: decode_image applies the caller's
    `max_pixels` to every image right after this, before any pixel is decoded, with a clearer
    message, and a user's larger limit must not be overridden by Pillow's fixed one.
    """
    pillow_limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise DecodeError(NOT_IMAGE, _describe_non_image(data)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise DecodeError(CORRUPT, f"unreadable image header ({err})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit


def _describe_non_image(data: bytes) -> str:
    head = data[:512].lstrip()
    lowered = head.lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "HTML page saved as an image"
    if lowered.startswith(b"<?xml") or lowered.startswith(b"<svg"):
        return "XML/SVG document, not a raster image"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "text file, not an image"
    return f"unrecognized image format (first bytes {data[:8].hex()})"


def _draft_request(img: Image.Image, side: int) -> tuple[int, int]:
    """The draft size that keeps the shorter side >= `side` (Pillow keeps both dims >= request)."""
    width, height = img.size
    scale = side / min(width, height)
    return max(1, int(np.ceil(width * scale))), max(1, int(np.ceil(height * scale)))


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        gray = np.asarray(img)
        if img.mode == "I" and gray.max(initial=0) <= 255:
            gray8 = gray.astype(np.uint8)
        else:
            gray8 = (gray.astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray8[:, :, None], 3, axis=2))
    if img.mode == "F":
        gray8 = np.asarray(img).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray8[:, :, None], 3, axis=2))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)
