"""Every kind of input becomes one stream of `Record`s: a stable `key`, provenance `meta`, and
either the image bytes (`data`) or the `path` to read them from (`Record.read()` gives both).

Like stylegan2-ada's dataset_tool, each input kind is an adapter with the same contract
(`count()` and iteration in a stable order) and one function, `open_source`, picks the adapter by
looking at the path: users never say what kind of source they have.

Folder and list sources hand out the *path* and let the worker process read the bytes, so the
main process does not become a bottleneck copying file contents through pipes.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lmdb

# Sample members that hold the image when reading WebDataset shards, in order of preference.
SHARD_IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "bmp", "ppm", "tif", "tiff", "gif")


class SourceError(Exception):
    """The path cannot be read as any kind of source; the message is for the user."""


@dataclass(frozen=True)
class Record:
    """One input item. `key` is stable and unique within its source."""

    key: str
    meta: dict = field(default_factory=dict)
    data: bytes | None = None
    path: str | None = None

    def read(self) -> bytes:
        """The item's bytes; raises OSError with a readable message if they cannot be had."""
        if self.data is not None:
            return self.data
        if self.path is None:
            raise OSError("record carries no image data")
        with open(self.path, "rb") as f:
            return f.read()


class FolderSource:
    """Every regular file under a folder, recursively, in sorted order; content decides later."""

    kind = "folder"

    def __init__(self, root: Path):
        self.root = root

    def _files(self) -> Iterator[tuple[str, str]]:
        """(path, key) of every regular file; plain strings, as this runs once per image."""
        root = str(self.root)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, root)
            prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if os.path.isfile(path):  # skips FIFOs and sockets, which would block a read
                    yield path, prefix + name

    def count(self) -> int:
        return sum(1 for _ in self._files())

    def __iter__(self) -> Iterator[Record]:
        source = str(self.root)
        for path, key in self._files():
            yield Record(key, {"source": source, "source_key": key}, path=path)


class LmdbSource:
    """An LSUN-style LMDB: key = image id, value = encoded image bytes (WebP in LSUN's release)."""

    kind = "lmdb"

    def __init__(self, folder: Path):
        self.folder = folder

    def _open(self) -> lmdb.Environment:
        return lmdb.open(
            str(self.folder), readonly=True, lock=False, readahead=False, max_readers=64
        )

    def count(self) -> int:
        with self._open() as env:
            return env.stat()["entries"]

    def __iter__(self) -> Iterator[Record]:
        with self._open() as env, env.begin(write=False) as txn:
            for raw_key, value in txn.cursor():
                key = raw_key.decode("utf-8", errors="backslashreplace")
                yield Record(key, {"source": str(self.folder), "source_key": key}, data=value)


class ShardSource:
    """WebDataset .tar shards, in the order given (brace patterns and globs expanded)."""

    kind = "shards"

    def __init__(self, urls: list[str], counts: list[int] | None = None):
        self.urls = urls
        self.counts = counts

    def count(self) -> int | None:
        return sum(self.counts) if self.counts is not None else None

    def __iter__(self) -> Iterator[Record]:
        for sample in read_shards(self.urls):
            key = sample["__key__"]
            url = sample.get("__url__", "")
            ext = next((e for e in SHARD_IMAGE_EXTS if e in sample), None)
            meta = {"source": url, "source_key": key}
            yield Record(key, meta, data=sample[ext] if ext else None)


def read_shards(urls: list[str], *, shuffle: int = 0, seed: int = 0, by_rank: bool = False,
                by_worker: bool = False):
    """The one place a `webdataset.WebDataset` is built: raw samples (dicts of member bytes) of
    `urls` in stored order, or, with `shuffle`, in shuffled shard order through a `shuffle`-sample
    buffer. `by_rank` / `by_worker` give each DDP rank / DataLoader worker its own shards
    (training); without them every sample is read once, in one process."""
    import webdataset as wds  # imports torch (~1 s): keep it out of worker processes

    dataset = wds.WebDataset(
        urls,
        shardshuffle=len(urls) if shuffle else False,
        nodesplitter=wds.split_by_node if by_rank else None,
        workersplitter=wds.split_by_worker if by_worker else None,
        seed=seed,
        empty_check=False,
    )
    return dataset.shuffle(shuffle, seed=seed) if shuffle else dataset


class ListSource:
    """A text file of image paths, one per line (relative to the list's folder, or absolute)."""

    kind = "list"

    def __init__(self, list_file: Path):
        self.list_file = list_file

    def _entries(self) -> Iterator[str]:
        with open(self.list_file, encoding="utf-8") as f:
            for line in f:
                entry = line.strip()
                if entry and not entry.startswith("#"):
                    yield entry

    def count(self) -> int:
        return sum(1 for _ in self._entries())

    def __iter__(self) -> Iterator[Record]:
        base = self.list_file.parent
        for entry in self._entries():
            path = Path(entry) if os.path.isabs(entry) else base / entry
            meta = {"source": str(self.list_file), "source_key": entry}
            yield Record(entry, meta, path=str(path))


class MultiSource:
    """Several sources chained; keys are prefixed with each source's name to stay unique."""

    kind = "multi"

    def __init__(self, sources: list, labels: list[str]):
        self.sources = sources
        self.labels = labels

    def count(self) -> int | None:
        counts = [s.count() for s in self.sources]
        return None if None in counts else sum(counts)

    def __iter__(self) -> Iterator[Record]:
        for label, source in zip(self.labels, self.sources, strict=True):
            for rec in source:
                yield Record(f"{label}/{rec.key}", rec.meta, rec.data, rec.path)


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


def open_source(spec: str | os.PathLike) -> Source:
    """Detect what `spec` is and return the matching source; SourceError if it is none."""
    spec = str(spec)
    if _is_pattern(spec):
        return _shards_from_pattern(spec)
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"{spec}: no such file or folder ({EXPECTED})")
    if path.is_dir():
        return _open_folder(path)
    if path.name == "data.mdb":
        return LmdbSource(path.parent)
    if _is_tar(path):
        return ShardSource([str(path)])
    if _is_text(path):
        return ListSource(path)
    raise SourceError(f"{spec}: not a recognised source ({EXPECTED})")


def open_sources(specs: list[str | os.PathLike]) -> Source:
    """One source for one spec; a key-prefixed chain for several."""
    if not specs:
        raise SourceError(f"no source given ({EXPECTED})")
    sources = [open_source(s) for s in specs]
    if len(sources) == 1:
        return sources[0]
    labels: list[str] = []
    for spec in specs:
        label = safe_key(Path(str(spec).rstrip("/")).name or "source")
        while label in labels:
            label += "_"
        labels.append(label)
    return MultiSource(sources, labels)


def _open_folder(path: Path) -> Source:
    if (path / "data.mdb").is_file():
        return LmdbSource(path)
    lmdb_children = sorted(p.parent for p in path.glob("*/data.mdb"))
    if lmdb_children:
        if len(lmdb_children) > 1:
            names = ", ".join(str(p) for p in lmdb_children)
            raise SourceError(f"{path}: holds several LMDB folders ({names}); name one of them")
        return LmdbSource(lmdb_children[0])
    index = path / "index.json"
    if index.is_file():
        from pipeline.sinks import read_index

        shards = read_index(path)
        return ShardSource([str(path / s["name"]) for s in shards], [s["samples"] for s in shards])
    return FolderSource(path)


def _is_pattern(spec: str) -> bool:
    return bool(re.search(r"\{[^}]*\.\.[^}]*\}|[*?\[]", spec))


def _shards_from_pattern(spec: str) -> ShardSource:
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
    return ShardSource(urls)


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
    and then a short hash of the original key is appended so different keys stay different.
    The original key always travels in the sample's .json.
    """
    raw_parts = key.replace("\\", "/").split("/")
    parts = [p for p in raw_parts if p not in ("", ".", "..")]
    cleaned = "/".join(_UNSAFE.sub("_", p) for p in parts) or "_"
    lossy = len(parts) != len(raw_parts) or any(_UNSAFE.search(p.replace(".", "")) for p in parts)
    if lossy:
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:8]
        cleaned = f"{cleaned}-{digest}"
    return cleaned
