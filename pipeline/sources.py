"""Every kind of input becomes one stream of `Record`s (pipeline.records): a stable `key`,
provenance `meta`, and where the image bytes are, which the worker reads with `Record.read()`.

Like stylegan2-ada's dataset_tool, each input kind is an adapter with the same contract
(`count()` and iteration in a stable order) and one function, `open_source`, picks the adapter by
looking at the path: users never say what kind of source they have. The folder, list and LMDB
adapters live here; WebDataset shards, whose tar walking is longer, in pipeline.shard_source.
This module is where the other packages import every input name from, so the record types and
the shard names are importable from here too.

A run sees one input set: a folder or list is listed once (the first time it is counted or
read) and that listing is what the run processes, so a file deleted meanwhile becomes an
`unreadable` record instead of a miscount, and a file added meanwhile is not half-included.
`fingerprint()` hashes that input set (keys, sizes, modification times) so that `--resume` can
tell whether it is continuing over the same inputs. A folder that cannot be listed becomes a
record too (`unreadable`, with the reason), so the counts still add up to what is on disk.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from pipeline.records import (
    DEFAULT_MAX_BYTES,
    ReadError,
    Record,
    SourceError,
    file_identity,
    input_fingerprint,
    lmdb_env,
)
from pipeline.shard_source import SHARD_IMAGE_EXTS, ShardSource, read_shards

__all__ = [
    "DEFAULT_MAX_BYTES", "EXPECTED", "SHARD_IMAGE_EXTS", "SOURCES_HELP", "SOURCE_KINDS",
    "FolderSource", "ListSource", "LmdbSource", "MultiSource", "ReadError", "Record",
    "ShardSource", "Source", "SourceError", "open_source", "open_sources", "read_shards",
    "safe_key",
]


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


class FolderSource:
    """Every file under a folder, recursively, in sorted order; content decides later. Listed
    once per run (see the module doc); `skip` is a folder never read (the run's own --out)."""

    kind = "folder"

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES, skip: Path | None = None):
        self.root = root
        self.max_bytes = max_bytes
        self.skip = os.path.realpath(skip) if skip is not None else None
        self._listing: list[tuple[str, str | None]] | None = None

    def listing(self) -> list[tuple[str, str | None]]:
        """(key, error) of every file, and of every folder that could not be listed (its key
        ends with '/'); taken once, then kept."""
        if self._listing is None:
            self._listing = list(self._walk())
        return self._listing

    def _walk(self, folder: str = "", prefix: str = "") -> Iterator[tuple[str, str | None]]:
        """In os.walk's order: a folder's files sorted, then its subfolders, each in turn.
        Symbolic links to folders are not followed (a loop would never end)."""
        try:
            with os.scandir(folder or self.root) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError as err:
            if not prefix:
                raise SourceError(f"{self.root}: cannot list it ({err.strerror})") from None
            yield prefix, f"folder not listed: {err.strerror}"
            return
        folders = [e for e in entries if _is_folder(e)]
        yield from ((prefix + e.name, None) for e in entries if not _is_folder(e))
        for entry in folders:
            if not entry.is_symlink() and os.path.realpath(entry.path) != self.skip:
                yield from self._walk(entry.path, prefix + entry.name + "/")

    def count(self) -> int:
        return len(self.listing())

    def record_keys(self) -> Iterator[tuple[str, str]]:
        return ((key, key) for key, _ in self.listing())

    def fingerprint(self) -> str:
        return input_fingerprint([key, error, file_identity(os.path.join(self.root, key))]
                            for key, error in self.listing())

    def __iter__(self) -> Iterator[Record]:
        source = str(self.root)
        for key, error in self.listing():
            yield Record(key, {"source": source, "source_key": key},
                         path=os.path.join(source, key), max_bytes=self.max_bytes, error=error)


class LmdbSource:
    """An LSUN-style LMDB: key = image id, value = encoded image bytes (WebP in LSUN's release).
    Iteration walks the keys alone; each record reads its value in the worker."""

    kind = "lmdb"

    def __init__(self, folder: Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.folder = folder
        self.max_bytes = max_bytes

    def count(self) -> int:
        return lmdb_env(str(self.folder)).stat()["entries"]

    def fingerprint(self) -> str:
        return input_fingerprint([self.count(), file_identity(str(self.folder / "data.mdb"))])

    def record_keys(self) -> Iterator[tuple[str, str]]:
        return ((rec.key, rec.key) for rec in self)

    def __iter__(self) -> Iterator[Record]:
        folder = str(self.folder)
        with lmdb_env(folder).begin() as txn:
            # A key-only cursor: the values' pages are never touched here.
            for raw_key in txn.cursor().iternext(keys=True, values=False):
                key = raw_key.decode("utf-8", errors="backslashreplace")
                yield Record(key, {"source": folder, "source_key": key}, path=folder,
                             lmdb_key=raw_key, max_bytes=self.max_bytes)


class ListSource:
    """A text file of image paths, one per line (relative to the list's folder, or absolute)."""

    kind = "list"

    def __init__(self, list_file: Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.list_file = list_file
        self.max_bytes = max_bytes
        self._entries: list[str] | None = None

    def entries(self) -> list[str]:
        """The listed paths, read once per run (see the module doc)."""
        if self._entries is None:
            with open(self.list_file, encoding="utf-8") as f:
                self._entries = [e for e in (line.strip() for line in f)
                                 if e and not e.startswith("#")]
        return self._entries

    def _path(self, entry: str) -> str:
        return entry if os.path.isabs(entry) else str(self.list_file.parent / entry)

    def count(self) -> int:
        return len(self.entries())

    def fingerprint(self) -> str:
        return input_fingerprint([e, file_identity(self._path(e))] for e in self.entries())

    def record_keys(self) -> Iterator[tuple[str, str]]:
        return ((entry, entry) for entry in self.entries())

    def __iter__(self) -> Iterator[Record]:
        for entry in self.entries():
            meta = {"source": str(self.list_file), "source_key": entry}
            yield Record(entry, meta, path=self._path(entry), max_bytes=self.max_bytes)


class MultiSource:
    """Several sources chained; keys are prefixed with each source's name to stay unique."""

    kind = "multi"

    def __init__(self, sources: list, labels: list[str]):
        self.sources = sources
        self.labels = labels

    def count(self) -> int | None:
        counts = [s.count() for s in self.sources]
        return None if None in counts else sum(counts)

    def fingerprint(self) -> str:
        return input_fingerprint([label, source.fingerprint()]
                            for label, source in zip(self.labels, self.sources, strict=True))

    def record_keys(self) -> Iterator[tuple[str, str]]:
        for label, source in zip(self.labels, self.sources, strict=True):
            for key, own in source.record_keys():
                yield f"{label}/{key}", own

    def __iter__(self) -> Iterator[Record]:
        for label, source in zip(self.labels, self.sources, strict=True):
            for rec in source:
                yield replace(rec, key=f"{label}/{rec.key}")


Source = FolderSource | LmdbSource | ShardSource | ListSource | MultiSource

# What a source may be: said once, in the CLI's help and in every "not a source" error.
SOURCE_KINDS = (
    "a folder of images (recursive, any extension: files are sniffed by content), an LSUN LMDB "
    "folder (holding data.mdb, or its parent), WebDataset shards (a .tar, a glob, a "
    "{000000..000009} brace pattern, or a stage output folder with index.json), or a .txt file "
    "listing image paths"
)
SOURCES_HELP = f"SRC is any mix of: {SOURCE_KINDS}."
EXPECTED = f"expected {SOURCE_KINDS}"


def open_source(spec: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES,
                skip: Path | None = None) -> Source:
    """Detect what `spec` is and return the matching source; SourceError if it is none.
    Records over `max_bytes` are `too_large`; the folder `skip` (the run's --out) is never
    read, and a source inside it is refused."""
    spec = str(spec)
    if _is_pattern(spec):
        return _shards_from_pattern(spec, max_bytes)
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"{spec}: no such file or folder ({EXPECTED})")
    if skip is not None and Path(skip).resolve() in (path.resolve(), *path.resolve().parents):
        raise SourceError(f"{spec}: it is inside --out {skip}, and a run never reads its own "
                          "output; choose another --out")
    if path.is_dir():
        return _open_folder(path, max_bytes, skip)
    if not path.is_file():  # a FIFO or device would hang or never end when sniffed
        raise SourceError(f"{spec}: not a regular file or folder ({EXPECTED})")
    if path.name == "data.mdb":
        return LmdbSource(path.parent, max_bytes)
    if _is_tar(path):
        return ShardSource([str(path)], max_bytes=max_bytes)
    if _is_text(path):
        return ListSource(path, max_bytes)
    raise SourceError(f"{spec}: not a recognised source ({EXPECTED})")


def open_sources(specs: list[str | os.PathLike], *, max_bytes: int = DEFAULT_MAX_BYTES,
                 skip: Path | None = None) -> Source:
    """One source for one spec; a key-prefixed chain for several (see `open_source`)."""
    if not specs:
        raise SourceError(f"no source given ({EXPECTED})")
    sources = [open_source(s, max_bytes=max_bytes, skip=skip) for s in specs]
    if len(sources) == 1:
        return sources[0]
    labels: list[str] = []
    for spec in specs:
        label = safe_key(Path(str(spec).rstrip("/")).name or "source")
        while label in labels:
            label += "_"
        labels.append(label)
    return MultiSource(sources, labels)


def _open_folder(path: Path, max_bytes: int, skip: Path | None) -> Source:
    if (path / "data.mdb").is_file():
        return LmdbSource(path, max_bytes)
    lmdb_children = sorted(p.parent for p in path.glob("*/data.mdb"))
    if lmdb_children:
        if len(lmdb_children) > 1:
            names = ", ".join(str(p) for p in lmdb_children)
            raise SourceError(f"{path}: holds several LMDB folders ({names}); name one of them")
        return LmdbSource(lmdb_children[0], max_bytes)
    index = path / "index.json"
    if index.is_file():
        from pipeline.sinks import read_index

        shards = read_index(path)
        return ShardSource([str(path / s["name"]) for s in shards], [s["samples"] for s in shards],
                           max_bytes)
    return FolderSource(path, max_bytes, skip)


def _is_pattern(spec: str) -> bool:
    return bool(re.search(r"\{[^}]*\.\.[^}]*\}|[*?\[]", spec))


def _shards_from_pattern(spec: str, max_bytes: int) -> ShardSource:
    import braceexpand

    urls: list[str] = []
    for expanded in braceexpand.braceexpand(spec):
        is_glob = any(c in expanded for c in "*?[")
        urls.extend(sorted(glob.glob(expanded)) if is_glob else [expanded])
    missing = [u for u in urls if not os.path.isfile(u)]
    if not urls:
        raise SourceError(f"{spec}: the pattern matches no shard files")
    if missing:
        raise SourceError(f"{spec}: {len(missing)} shard(s) missing, first {missing[0]}")
    return ShardSource(urls, max_bytes=max_bytes)


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _is_text(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in head


_UNSAFE = re.compile(r"[^A-Za-z0-9_\-/]")


def safe_key(key: str) -> str:
    """A WebDataset-safe key: no dots (webdataset splits member names at the first dot), no
    characters a tar tool might mangle, no absolute or parent-relative parts.

    Dots become '_' ("photo.jpg" -> "photo_jpg"); other unusual characters also become '_',
    and then a short hash of the original key is appended. Dots and underscores still meet
    ("a.b.png" and "a_b.png" both give "a_b_png"), so the shard writer, which sees every key of
    an output, makes a repeated key unique (`sinks.ShardSink`). The original key always
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
