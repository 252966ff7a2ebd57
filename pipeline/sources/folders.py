"""Image files on disk as a source: a folder (recursively) or a text file listing paths.

A run sees one input set: a folder or list is listed once (the first time it is counted or
read) and that listing is what the run processes, so a file deleted meanwhile becomes an
`unreadable` record instead of a miscount, and a file added meanwhile is not half-included.
`fingerprint()` hashes that input set (keys, sizes, modification times) so that `--resume` can
tell whether it is continuing over the same inputs. A folder that cannot be listed becomes a
record too (`unreadable`, with the reason), so the counts still add up to what is on disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from core.outputs import MARKER_NAMES
from pipeline.sources.records import (
    DEFAULT_MAX_BYTES,
    Record,
    SourceError,
    file_identity,
    input_fingerprint,
)


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


class FolderSource:
    """Every file under a folder, recursively, in sorted order; content decides later. Listed
    once per run (see the module doc); `skip` is a folder never read (the run's own --out), and
    an output folder's bookkeeping files (core.outputs.MARKER_NAMES) are never inputs."""

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
        yield from ((prefix + e.name, None) for e in entries
                    if not _is_folder(e) and e.name not in MARKER_NAMES)
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
