"""`open_source`: one function looks at a path and picks the source adapter for it, so users never
say what kind of source they have; several paths become one key-prefixed `MultiSource`."""

from __future__ import annotations

import glob
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from core.samples import is_image, safe_key
from pipeline.sources.folders import FolderSource, ListSource
from pipeline.sources.lmdb_source import LmdbSource
from pipeline.sources.records import DEFAULT_MAX_BYTES, Record, SourceError, input_fingerprint
from pipeline.sources.shard_source import ShardSource


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
    "{000000..000009} brace pattern, a stage output folder with index.json, or a folder of .tar "
    "files), or a .txt file listing image paths"
)
SOURCES_HELP = f"SRC is any mix of: {SOURCE_KINDS}."
EXPECTED = f"expected {SOURCE_KINDS}"


def open_source(spec: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES,
                skip: Path | None = None, labels: bool = False) -> Source:
    """Detect what `spec` is and return the matching source; SourceError if it is none.
    Records over `max_bytes` are `too_large`; the folder `skip` (the run's --out) is never
    read, and a source inside it is refused. With `labels`, shards' records carry the class
    their samples were labelled with (pipeline.sources.shard_source)."""
    spec = str(spec)
    if _is_pattern(spec):
        return _shards_from_pattern(spec, max_bytes, labels)
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"{spec}: no such file or folder ({EXPECTED})")
    if skip is not None and Path(skip).resolve() in (path.resolve(), *path.resolve().parents):
        raise SourceError(f"{spec}: it is inside --out {skip}, and a run never reads its own "
                          "output; choose another --out")
    if path.is_dir():
        return _open_folder(path, max_bytes, skip, labels)
    if not path.is_file():  # a FIFO or device would hang or never end when sniffed
        raise SourceError(f"{spec}: not a regular file or folder ({EXPECTED})")
    if path.name == "data.mdb":
        return LmdbSource(path.parent, max_bytes)
    if _is_tar(path):
        return ShardSource([str(path)], max_bytes=max_bytes, labels=labels)
    if _is_text(path):
        return ListSource(path, max_bytes)
    raise SourceError(f"{spec}: not a recognised source ({EXPECTED})")


def open_sources(specs: list[str | os.PathLike], *, max_bytes: int = DEFAULT_MAX_BYTES,
                 skip: Path | None = None, labels: bool = False) -> Source:
    """One source for one spec; a key-prefixed chain for several (see `open_source`)."""
    if not specs:
        raise SourceError(f"no source given ({EXPECTED})")
    sources = [open_source(s, max_bytes=max_bytes, skip=skip, labels=labels) for s in specs]
    if len(sources) == 1:
        return sources[0]
    prefixes: list[str] = []
    for spec in specs:
        prefix = safe_key(Path(str(spec).rstrip("/")).name or "source")
        while prefix in prefixes:
            prefix += "_"
        prefixes.append(prefix)
    return MultiSource(sources, prefixes)


def _open_folder(path: Path, max_bytes: int, skip: Path | None, labels: bool) -> Source:
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
                           max_bytes, labels)
    tars = _shard_files(path)
    if tars:
        return ShardSource(tars, max_bytes=max_bytes, labels=labels)
    return FolderSource(path, max_bytes, skip)


def _shard_files(path: Path) -> list[str]:
    """The .tar files of a folder of shards without index.json (img2dataset's layout, and many
    tools': shards beside .parquet or _stats.json sidecars); none when the folder also holds
    images or subfolders, which makes it a folder of images that happens to hold a .tar."""
    tars = []
    for entry in sorted(path.iterdir()):
        extension = entry.name.rpartition(".")[2].lower()
        if entry.is_dir() or is_image(extension):
            return []
        if extension == "tar" and _is_tar(entry):
            tars.append(str(entry))
    return tars


def _is_pattern(spec: str) -> bool:
    return bool(re.search(r"\{[^}]*\.\.[^}]*\}|[*?\[]", spec))


def _shards_from_pattern(spec: str, max_bytes: int, labels: bool) -> ShardSource:
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
    return ShardSource(urls, max_bytes=max_bytes, labels=labels)


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
