"""An LSUN-style LMDB as a source: key = image id, value = encoded image bytes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.sources.records import (
    DEFAULT_MAX_BYTES,
    Record,
    file_identity,
    input_fingerprint,
    lmdb_env,
)


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
