"""What re-uploading does to a photo: the changes a near duplicate of it may carry.

Two users: dedup calibrates its verification threshold on the data itself by comparing sampled
images with synthetic re-uploads of them (pipeline.dedup.verify), and benchmarks/dedup_quality.py
builds its labelled quality set from the same kinds. Each kind returns the encoded file a
re-upload would be, so the copy goes through the same decoder as every real input.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

# Every kind of change; "combined" applies two of the single changes in a row.
KINDS = ("exact", "lossless", "jpeg", "webp", "downscale", "upscale", "blur", "noise", "gamma",
         "brightness_contrast", "border", "text", "crop", "crop_resize", "rotate", "combined")
SINGLE = KINDS[2:-1]  # the changes "combined" draws from (exact and lossless change nothing)
WORDS = ("sale", "photo", "(c) 2015", "HOME", "bedroom", "www.example.com", "stock", "#42")


def encode(rgb: np.ndarray, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **params)
    return buf.getvalue()


def reupload(rgb: np.ndarray, kind: str, rng: np.random.Generator) -> bytes:
    """The encoded bytes of a copy of `rgb` changed by `kind` (lossless PNG unless the kind is a
    lossy re-encode)."""
    if kind == "exact":
        return encode(rgb, "PNG")
    if kind == "lossless":
        return encode(rgb, "WEBP", lossless=True)
    if kind == "jpeg":
        return encode(rgb, "JPEG", quality=int(rng.integers(30, 96)))
    if kind == "webp":
        return encode(rgb, "WEBP", quality=int(rng.integers(30, 96)))
    if kind == "combined":
        first, second = rng.choice(SINGLE, 2, replace=False)
        return reupload(changed(rgb, str(first), rng), str(second), rng)
    return encode(changed(rgb, kind, rng), "PNG")


def reuploaded(rgb: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """The pixels that `reupload(rgb, kind, rng)`'s bytes decode to, with the same random draws,
    without the lossless PNG round trip that changes nothing but costs ~10x the change itself
    (what dedup's calibration uses: it needs the pixels, not a file)."""
    if kind in ("exact", "lossless"):
        return rgb
    if kind == "combined":
        first, second = rng.choice(SINGLE, 2, replace=False)
        return changed(changed(rgb, str(first), rng), str(second), rng)
    return changed(rgb, kind, rng)


def changed(rgb: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """The pixels of `rgb` after one change (re-encodes are decoded back)."""
    h, w = rgb.shape[:2]
    if kind in ("jpeg", "webp"):
        with Image.open(io.BytesIO(reupload(rgb, kind, rng))) as img:
            return np.asarray(img.convert("RGB"))
    if kind == "downscale":
        return resized(rgb, rng.uniform(0.4, 0.85))
    if kind == "upscale":
        return resized(rgb, rng.uniform(1.2, 2.0), cv2.INTER_CUBIC)
    if kind == "blur":
        return cv2.GaussianBlur(rgb, (0, 0), rng.uniform(0.6, 1.5) * max(h, w) / 128)
    if kind == "noise":
        noise = rng.normal(0, rng.uniform(3, 10), rgb.shape)
        return np.clip(rgb + noise, 0, 255).astype(np.uint8)
    if kind == "gamma":
        gamma = rng.uniform(0.6, 0.85) if rng.uniform() < 0.5 else rng.uniform(1.2, 1.6)
        return (255 * (rgb / 255.0) ** gamma).round().astype(np.uint8)
    if kind == "brightness_contrast":
        contrast, offset = rng.uniform(0.7, 1.3), rng.uniform(-30, 30)
        return np.clip((rgb - 128.0) * contrast + 128 + offset, 0, 255).astype(np.uint8)
    if kind == "border":
        return bordered(rgb, rng)
    if kind == "text":
        return with_text(rgb, rng)
    if kind == "crop":
        return cropped(rgb, rng, 0.02, 0.10)
    if kind == "crop_resize":
        return resized(cropped(rgb, rng, 0.03, 0.12), rng.uniform(0.5, 0.9))
    if kind == "rotate":
        return rotated(rgb, rng.uniform(1, 5) * rng.choice([-1, 1]))
    raise ValueError(f"unknown kind of change {kind!r}")


def resized(rgb: np.ndarray, factor: float, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (max(8, round(w * factor)), max(8, round(h * factor))),
                      interpolation=interpolation)


def cropped(rgb: np.ndarray, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """A total of `low`-`high` of each side cut, split unevenly between the two edges."""
    h, w = rgb.shape[:2]
    cut_y, cut_x = rng.uniform(low, high, 2) * (h, w)
    top, left = (int(c * rng.uniform()) for c in (cut_y, cut_x))
    return np.ascontiguousarray(rgb[top : h - int(cut_y) + top, left : w - int(cut_x) + left])


def bordered(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A frame of one colour on every side, or letterbox bars on two opposite sides."""
    h, w = rgb.shape[:2]
    colour = [int(c) for c in rng.choice([0, 255, 128, 32], 1).repeat(3)]
    if rng.uniform() < 0.5:
        pad = max(2, int(min(h, w) * rng.uniform(0.03, 0.1)))
        sides = (pad, pad, pad, pad)
    else:
        bar = max(2, int(rng.uniform(0.08, 0.2) * (h if rng.uniform() < 0.5 else w)))
        sides = (bar, bar, 0, 0) if rng.uniform() < 0.5 else (0, 0, bar, bar)
    return cv2.copyMakeBorder(rgb, *sides, cv2.BORDER_CONSTANT, value=colour)


def with_text(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A caption or a half-transparent watermark, somewhere on the picture."""
    h, w = rgb.shape[:2]
    words = str(rng.choice(WORDS))
    scale = rng.uniform(0.3, 0.6) * w / 96
    thickness = max(1, round(scale * 2))
    (tw, th), _ = cv2.getTextSize(words, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x = int(rng.uniform(0, max(1, w - tw)))
    y = int(rng.uniform(th, max(th + 1, h - 2)))
    colour = (255, 255, 255) if rng.uniform() < 0.5 else (0, 0, 0)
    marked = cv2.putText(rgb.copy(), words, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour,
                         thickness, cv2.LINE_AA)
    alpha = 1.0 if rng.uniform() < 0.5 else rng.uniform(0.35, 0.6)
    return cv2.addWeighted(marked, alpha, rgb, 1 - alpha, 0)


def rotated(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """Rotated about the centre and cropped to the largest upright rectangle inside (what a
    straightened re-upload looks like: no blank corners)."""
    h, w = rgb.shape[:2]
    turn = cv2.warpAffine(rgb, cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0), (w, h),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    a = np.radians(abs(degrees))
    keep = 1 / (np.cos(a) + np.sin(a) * max(h, w) / min(h, w))
    ch, cw = int(h * keep), int(w * keep)
    top, left = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(turn[top : top + ch, left : left + cw])
