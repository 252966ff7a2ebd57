"""The embedded demo corpus `make shards` uses when no data is configured.

Built on the fly from real photographs that ship inside installed packages (scikit-image's data
module, matplotlib's sample data), so it needs no download. It mimics the paper's two inputs:

- `scraped/`: a folder of "scraped web photos": people (faces) and other scenes at assorted
  sizes and encodings, plus the awkward files a real scrape holds (truncated, zero-byte, HTML
  saved as .jpg, a decompression bomb, CMYK, 16-bit, RGBA, EXIF-rotated, animated, 1x1).
- `lsun/demo_train_lmdb/`: an LSUN-format LMDB (key: 40 hex chars, value: WebP bytes) of
  distinct scene crops with near-duplicate variants (re-encoded, resized, shifted, brightened).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

import cv2
import lmdb
import numpy as np
from PIL import Image

from core.files import write_json_atomic
from core.outputs import claim_output, hold_output
from pipeline.engines.local import chunked
from pipeline.sources import LmdbSource

COMMAND = "pipeline demo"  # the owner named in the demo folder
BUILT_NAME = "demo.json"  # written last: the settings of the corpus the folder holds
# Files inside scikit-image's data folder (shipped with the wheel, no download needed).
SKIMAGE_SCENES = ("coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
                  "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png",
                  "camera.png", "coins.png", "moon.png", "brick.png", "grass.png", "gravel.png",
                  "color.png", "page.png", "clock_motion.png")
FACE_PHOTOS = ("astronaut.png", "grace_hopper.jpg")


def _require_demo_packages():
    try:
        import matplotlib.cbook  # noqa: F401
        import skimage.data  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "the demo corpus needs scikit-image and matplotlib: "
            "pip install 'dcgan-pipeline[demo]'"
        ) from None


def photo(name: str) -> np.ndarray:
    """A real photograph shipped with scikit-image or matplotlib (by file name), as RGB uint8."""
    _require_demo_packages()
    if name == "grace_hopper.jpg":
        from matplotlib import cbook

        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    else:
        import skimage.data

        path = Path(skimage.data.__file__).parent / name
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def encode(pixels: np.ndarray | Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


# ---- awkward files a real scrape contains ------------------------------------------------------

def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid 1-bit PNG whose header claims width x height; deflates to well under 1 MB."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row * 1000) for _ in range(height // 1000))
    idat += comp.compress(row * (height % 1000)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def exif_rotated_jpeg(rgb: np.ndarray) -> bytes:
    """A JPEG stored sideways with EXIF Orientation=6: viewers (and our decoder) show `rgb`."""
    stored = np.ascontiguousarray(np.rot90(rgb, k=1))  # 90° counter-clockwise on disk
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    return encode(stored, "JPEG", quality=92, exif=exif.tobytes())


def animated_gif(frames: list[np.ndarray]) -> bytes:
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=100)
    return buf.getvalue()


def png16(rgb: np.ndarray) -> bytes:
    """A 16-bit RGB PNG with the same picture (values * 257)."""
    ok, buf = cv2.imencode(".png", (rgb[..., ::-1].astype(np.uint16) * 257))
    assert ok
    return buf.tobytes()


def awkward_files(base: np.ndarray) -> dict[str, bytes]:
    """Named awkward inputs; the names say what each is (extensions deliberately misleading)."""
    jpeg = encode(base, "JPEG", quality=90)
    rgba = np.dstack([base, np.full(base.shape[:2], 128, np.uint8)])
    return {
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "zero_bytes.jpg": b"",
        "error_page.jpg": b"<!DOCTYPE html><html><body>403 Forbidden</body></html>\n",
        "notes.png": b"this is a plain text note, saved with an image extension\n",
        "one_pixel.png": encode(base[:1, :1], "PNG"),
        "bomb.png": png_bomb(),
        "alpha.png": encode(rgba, "PNG"),
        "sixteen_bit.png": png16(base),
        "cmyk.jpg": encode(Image.fromarray(base).convert("CMYK"), "JPEG"),
        "rotated_exif.jpg": exif_rotated_jpeg(base),
        "animated.gif": animated_gif([base, base[::-1], base[:, ::-1]]),
        "no_extension": jpeg,
    }


# ---- the corpus -------------------------------------------------------------------------------

def variant(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible re-upload of `img`: rescaled, slightly cropped, maybe mirrored or brightened."""
    h, w = img.shape[:2]
    crop = rng.uniform(0.0, 0.08)
    top, left = int(h * crop * rng.uniform()), int(w * crop * rng.uniform())
    img = img[top : h - int(h * crop) + top, left : w - int(w * crop) + left]
    scale = rng.uniform(0.45, 1.0)
    img = cv2.resize(img, (max(8, int(img.shape[1] * scale)), max(8, int(img.shape[0] * scale))),
                     interpolation=cv2.INTER_AREA)
    if rng.uniform() < 0.3:
        img = img[:, ::-1]
    if rng.uniform() < 0.3:
        img = np.clip(img.astype(np.int16) + int(rng.integers(-20, 20)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def scene_crops(rng: np.random.Generator, n: int, side: int = 160) -> list[np.ndarray]:
    """Distinct scene crops: random windows of the non-face photos, at an LSUN-like size."""
    photos = [photo(name) for name in SKIMAGE_SCENES]
    crops = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        win = int(min(h, w) * rng.uniform(0.35, 0.6))
        y, x = int(rng.integers(0, h - win + 1)), int(rng.integers(0, w - win + 1))
        crops.append(cv2.resize(img[y : y + win, x : x + win], (side, side),
                                interpolation=cv2.INTER_AREA))
    return crops


def near_duplicate(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One of the transforms the dedup stage must see through."""
    if kind == "reencode":
        jpeg = encode(img, "JPEG", quality=int(rng.integers(60, 85)))
        return np.asarray(Image.open(io.BytesIO(jpeg)))
    if kind == "resize":
        h, w = img.shape[:2]
        f = rng.uniform(0.6, 0.85)
        return cv2.resize(img, (int(w * f), int(h * f)), interpolation=cv2.INTER_AREA)
    if kind == "shift":
        d = int(rng.integers(2, 5))
        return np.ascontiguousarray(img[d:, d:])
    if kind == "brightness":
        return np.clip(img.astype(np.int16) + int(rng.integers(8, 16)), 0, 255).astype(np.uint8)
    raise ValueError(kind)


def build_scraped(folder: Path, rng: np.random.Generator, copies: int) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    faces = {name: photo(name) for name in FACE_PHOTOS}
    for filename, img in faces.items():
        name = filename.split(".")[0]
        files[f"people/{name}.jpg"] = encode(img, "JPEG", quality=92)
        for i in range(copies):
            fmt = ("JPEG", "PNG", "WEBP")[i % 3]
            files[f"people/{name}_{i:02d}.{fmt.lower()}"] = encode(variant(img, rng), fmt)
    pair = np.hstack([cv2.resize(img, (400, 400)) for img in faces.values()])
    files["people/two_people.jpg"] = encode(pair, "JPEG", quality=92)
    for filename in SKIMAGE_SCENES:
        img, name = photo(filename), filename.split(".")[0]
        files[f"scenes/{name}.jpg"] = encode(img, "JPEG", quality=90)
        for i in range(max(1, copies // 4)):
            files[f"scenes/{name}_{i}.png"] = encode(variant(img, rng), "PNG")
    for name, data in awkward_files(faces["astronaut.png"]).items():
        files[f"awkward/{name}"] = data
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return len(files)


def build_lmdb(folder: Path, rng: np.random.Generator, n_scenes: int = 160,
               dup_fraction: float = 0.5) -> int:
    """LSUN layout: one LMDB, key = 40 hex chars (sha1), value = WebP bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds = ("reencode", "resize", "shift", "brightness")
    images = []
    for i, crop in enumerate(scene_crops(rng, n_scenes)):
        images.append(crop)
        if rng.uniform() < dup_fraction:
            images.append(near_duplicate(crop, kinds[i % len(kinds)], rng))
    values = (encode(img, "WEBP", quality=90) for img in images)
    return write_lmdb(folder, ((hashlib.sha1(f"demo-{i}".encode() + value).hexdigest(), value)
                               for i, value in enumerate(values)))


def write_lmdb(folder: Path, items: Iterable[tuple[str | bytes, bytes]], *,
               map_size: int = 1 << 30) -> int:
    """An LMDB in LSUN's layout (FOLDER/data.mdb) holding the (key, encoded image) `items`;
    committed every 1000 items, so memory stays flat however many there are. Returns the
    number written. The one LMDB writer: the demo, the tests and the benchmarks use it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    with lmdb.open(str(folder), map_size=map_size, subdir=True) as env:
        for batch in chunked(items, 1000):
            with env.begin(write=True) as txn:
                for key, value in batch:
                    txn.put(key.encode("ascii") if isinstance(key, str) else key, value)
            count += len(batch)
    return count


def build_demo(out: str | Path, *, copies: int = 12, seed: int = 0,
               overwrite: bool = False) -> dict:
    """Write the demo corpus into `out`, a folder `pipeline demo` owns (core.outputs). A corpus
    already built there with the same `copies` and `seed` is reused (so `make shards` can ask
    for it every time); one built with others is refused unless `overwrite`, which rebuilds it.
    """
    _require_demo_packages()
    settings = {"copies": copies, "seed": seed}
    with hold_output(Path(out), command=COMMAND) as out:
        scraped, lmdb_dir = out / "scraped", out / "lsun" / "demo_train_lmdb"
        built = out / BUILT_NAME
        reused = built.is_file() and json.loads(built.read_text()) == settings
        if not reused:
            claim_output(out, command=COMMAND, overwrite=overwrite, finished=BUILT_NAME)
            for folder in (scraped, out / "lsun"):
                shutil.rmtree(folder, ignore_errors=True)
            rng = np.random.default_rng(seed)
            build_scraped(scraped, rng, copies)
            build_lmdb(lmdb_dir, rng)
            write_json_atomic(built, settings)
        n_files = sum(1 for p in scraped.rglob("*") if p.is_file())
        n_lmdb = LmdbSource(lmdb_dir).count()  # the sources' handle: one per LMDB per process
    return {"scraped_dir": str(scraped), "scraped": n_files, "lmdb_dir": str(lmdb_dir),
            "lmdb": n_lmdb, "reused": reused}
