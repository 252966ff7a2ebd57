"""WebDataset's naming rules, in one place: how a sample's key is written into a tar (`safe_key`)
and how a tar member name is read back as (sample key, extension) and whether that member is the
sample's image (`split_member`, `is_image`, `image_extension`).

Every reader of shards in the project (the pipeline's shard source, training, the caches, the
analyses, the runner's contact sheet, the shard writer's key check) goes through these, so they
all see the same samples as webdataset itself does:
- a member's sample key is its name up to the first dot of its last path part; the rest is its
  extension, lower-cased (webdataset groups members with `lcase=True`): `x/a.b.c.PNG` is sample
  `x/a` with extension `b.c.png`;
- names of the form `__name__` are metadata, not samples;
- an extension is an image when its last part is an image suffix (`b.c.png` is, as webdataset's
  own decoders read it); a sample's image is its first image extension in `IMAGE_EXTENSIONS`
  order (then by name), and a sample without one has no image (readers skip it; the pipeline
  records it).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

# Suffixes that hold an image, in order of preference when a sample has several.
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "ppm", "tif", "tiff", "gif")

_META_NAME = re.compile(r"__[^/]*__($|/)")
_KEY_SUFFIX = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-/]")


def split_member(name: str) -> tuple[str, str] | None:
    """(sample key, lower-cased extension) of a tar member name, or None for a name that is not
    part of a sample (webdataset's `__name__` metadata, or a name without an extension)."""
    if _META_NAME.match(name):
        return None
    match = _KEY_SUFFIX.match(name)
    if match is None:
        return None
    return match.group(1), match.group(2).lower()


def is_image(extension: str) -> bool:
    """Whether a member with this (lower-cased) extension holds an image: its last part is an
    image suffix (`png`, `b.c.png`)."""
    return extension.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS


def image_extension(extensions: Iterable[str]) -> str | None:
    """The extension of a sample's image among its members' `extensions` (lower-cased), or
    None when it has no image."""
    images = [e for e in extensions if is_image(e)]
    if not images:
        return None
    return min(images, key=lambda e: (IMAGE_EXTENSIONS.index(e.rsplit(".", 1)[-1]), e))


def safe_key(key: str) -> str:
    """A WebDataset-safe key: no dots (webdataset splits member names at the first dot), no
    characters a tar tool might mangle, no absolute or parent-relative parts.

    Dots become '_' ("photo.jpg" -> "photo_jpg"); other unusual characters also become '_',
    and then a short hash of the original key is appended. Dots and underscores still meet
    ("a.b.png" and "a_b.png" both give "a_b_png"), so the shard writer, which sees every key of
    an output, makes a repeated key unique (pipeline.sinks.ShardSink). The original key always
    travels in the sample's .json.
    """
    raw_parts = key.replace("\\", "/").split("/")
    parts = [p for p in raw_parts if p not in ("", ".", "..")]
    cleaned = "/".join(_UNSAFE.sub("_", p) for p in parts) or "_"
    lossy = len(parts) != len(raw_parts) or any(_UNSAFE.search(p.replace(".", "")) for p in parts)
    if lossy:
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:8]
        cleaned = f"{cleaned}-{digest}"
    return cleaned
