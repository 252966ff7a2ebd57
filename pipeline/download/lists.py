"""URL lists as a source: `.txt`, `.csv`, `.tsv`, `.jsonl` and `.parquet` rows as Records.

Every row of every list is one record, in list order, so every row gets exactly one status in
the manifest: a row without a usable URL (an empty cell, a malformed JSON line) is a record too,
marked `bad_url` here and never fetched, and a URL seen earlier in the lists is marked
`duplicate_url`. Rows are streamed, never loaded whole; the set of URLs seen so far is the one
thing that grows with the list (about 100 bytes a URL: a 16-byte digest in a dict).

A record's key is its row number across all lists, zero-padded (`000000000`, ...), so keys are
unique and sort in list order; its meta holds the URL, the list and the row's other columns,
which the downloaded sample carries into its `.json`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from core.errors import MissingExtra, UserError
from pipeline.sources.records import Record, file_identity, input_fingerprint
from pipeline.statuses import BAD_URL, DUPLICATE_URL

LIST_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl", ".parquet")
PARQUET_MISSING = "reading .parquet URL lists needs pyarrow: pip install 'dcgan-pipeline[parquet]'"
KEY_DIGITS = 9


class ListError(UserError):
    """A URL list cannot be read as asked (unknown suffix, missing URL column); for the user."""


def read_rows(path: Path, url_col: str) -> Iterator[tuple[str | None, dict, str]]:
    """(url or None, other columns, problem) for every row of one list, in order; `problem`
    says why a row has no URL."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return _text_rows(path)
    if suffix in (".csv", ".tsv"):
        return _csv_rows(path, url_col, "\t" if suffix == ".tsv" else ",")
    if suffix == ".jsonl":
        return _jsonl_rows(path, url_col)
    if suffix == ".parquet":
        return _parquet_rows(path, url_col)
    raise ListError(f"{path}: not a URL list (expected one of {', '.join(LIST_SUFFIXES)})")


def _text_rows(path: Path) -> Iterator[tuple[str | None, dict, str]]:
    """A URL a line; blank lines and `#` comments are not rows."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                yield line, {}, ""


def _csv_rows(path: Path, url_col: str, delimiter: str) -> Iterator[tuple[str | None, dict, str]]:
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if reader.fieldnames is None or url_col not in reader.fieldnames:
            raise ListError(f"{path}: no column {url_col!r} (columns: "
                            f"{', '.join(reader.fieldnames or []) or 'none'}); name the URL "
                            "column with --url-col")
        for row in reader:
            url = row.pop(url_col) or None
            row.pop(None, None)  # cells beyond the header
            yield url, row, "" if url else f"empty {url_col!r} cell"


def _jsonl_rows(path: Path, url_col: str) -> Iterator[tuple[str | None, dict, str]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                yield None, {}, f"line {number}: not JSON ({err.msg})"
                continue
            if not isinstance(row, dict):
                yield None, {}, f"line {number}: not a JSON object"
                continue
            url = row.pop(url_col, None)
            if not isinstance(url, str) or not url:
                yield None, row, f"line {number}: no {url_col!r} string"
                continue
            yield url, row, ""


def _parquet_rows(path: Path, url_col: str) -> Iterator[tuple[str | None, dict, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingExtra(PARQUET_MISSING) from None
    table = pq.ParquetFile(path)
    if url_col not in table.schema_arrow.names:
        raise ListError(f"{path}: no column {url_col!r} (columns: "
                        f"{', '.join(table.schema_arrow.names)}); name the URL column with "
                        "--url-col")
    for batch in table.iter_batches(batch_size=8192):
        for row in batch.to_pylist():
            url = row.pop(url_col)
            row = {k: v for k, v in row.items() if _json_able(v)}
            ok = isinstance(url, str) and url
            yield (url if ok else None), row, "" if ok else f"empty {url_col!r} cell"


def _json_able(value: object) -> bool:
    """Whether a parquet cell can go into a sample's .json (bytes and timestamps cannot)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _check_header(path: Path, url_col: str) -> None:
    """Read a list's first row, so that a missing URL column is refused before the run
    creates its output folder, not when the first chunk is read."""
    rows = read_rows(path, url_col)
    try:
        next(rows, None)
    finally:
        rows.close()


class UrlListSource:
    """The rows of one or more URL lists as records (the runner's source contract: `count`,
    `fingerprint`, stable iteration). Iteration marks rows with no URL (`bad_url`) and URLs seen
    before (`duplicate_url`) in `Record.error` as "<status>: <reason>"."""

    kind = "urls"

    def __init__(self, paths: list[Path], url_col: str = "url"):
        for path in paths:
            if path.suffix.lower() not in LIST_SUFFIXES:
                raise ListError(f"{path}: not a URL list (expected one of "
                                f"{', '.join(LIST_SUFFIXES)})")
            if not path.is_file():
                raise ListError(f"{path}: no such file")
            _check_header(path, url_col)
        self.paths = paths
        self.url_col = url_col

    def count(self) -> int:
        return sum(1 for _ in self._rows())

    def fingerprint(self) -> str:
        return input_fingerprint([[str(p), file_identity(str(p))] for p in self.paths]
                                 + [["url_col", self.url_col]])

    def _rows(self) -> Iterator[tuple[Path, int, str | None, dict, str]]:
        for path in self.paths:
            for row, (url, columns, problem) in enumerate(read_rows(path, self.url_col), 1):
                yield path, row, url, columns, problem

    def __iter__(self) -> Iterator[Record]:
        seen: dict[bytes, str] = {}  # URL digest -> key of its first row
        for number, (path, row, url, columns, problem) in enumerate(self._rows()):
            key = f"{number:0{KEY_DIGITS}d}"
            meta = {"url": url, "list": os.path.basename(path), "row": row, "columns": columns}
            error = f"{BAD_URL}: {problem}" if url is None else None
            if url is not None:
                digest = hashlib.blake2b(url.encode("utf-8", "replace"), digest_size=16).digest()
                first = seen.setdefault(digest, key)
                if first != key:
                    error = f"{DUPLICATE_URL}: same URL as row {first}"
            yield Record(key, meta, error=error)


def record_problem(record: Record) -> tuple[str, str] | None:
    """(status, reason) of a row the source already knows not to fetch, else None."""
    if record.error is None:
        return None
    status, reason = record.error.split(": ", 1)
    return status, reason
