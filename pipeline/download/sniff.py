"""What a downloaded body is, from its first bytes: servers label HTML error pages `image/jpeg`
and photos `application/octet-stream`, so the header is recorded but never trusted.

The sniffed type names the shard member's suffix (`.jpg` for JPEG bytes whatever the URL ends
in), which is how every reader of the shards (core.samples) finds a sample's image.
"""

from __future__ import annotations

from pipeline.statuses import NOT_IMAGE, RecordError

# (magic prefix, offset, MIME type, member suffix); checked in order.
SIGNATURES = (
    (b"\xff\xd8\xff", 0, "image/jpeg", "jpg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png", "png"),
    (b"GIF87a", 0, "image/gif", "gif"),
    (b"GIF89a", 0, "image/gif", "gif"),
    (b"BM", 0, "image/bmp", "bmp"),
    (b"II*\x00", 0, "image/tiff", "tiff"),
    (b"MM\x00*", 0, "image/tiff", "tiff"),
)
WEBP = (b"RIFF", b"WEBP")  # RIFF <size> WEBP
TEXT_HINTS = (b"<!doctype", b"<html", b"<?xml", b"<svg", b"{", b"[")


def sniff_image(body: bytes, served_type: str) -> tuple[str, str]:
    """(MIME type, member suffix) of an image body; RecordError(not_image) with what it looks
    like instead (HTML, text, empty, unknown) and what the server called it."""
    for magic, offset, mime, suffix in SIGNATURES:
        if body.startswith(magic, offset):
            return mime, suffix
    if body[:4] == WEBP[0] and body[8:12] == WEBP[1]:
        return "image/webp", "webp"
    raise RecordError(NOT_IMAGE, f"{_looks_like(body)}, served as {served_type or 'no type'}")


def _looks_like(body: bytes) -> str:
    if not body:
        return "empty body"
    head = body[:256].lstrip().lower()
    if head.startswith(TEXT_HINTS[:2]) or b"<html" in head:
        return "an HTML page"
    if head.startswith(TEXT_HINTS[2:]):
        return "text (XML, SVG or JSON)"
    return f"unknown bytes starting {body[:8].hex()}"
