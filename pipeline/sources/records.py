"""What one input item is, and how a worker gets its bytes: the `Record` every source yields.

Records carry where the bytes are, not the bytes: a file's path (folder, list), a shard and the
byte range of the image member in it (`.tar` shards: the main process reads only the tar
headers), or an LMDB folder and the key (LMDB: the main process walks the keys alone). The
worker process reads the bytes itself (`Record.read()`), so the main process never becomes the
bottleneck reading and copying image bytes through pipes or a cluster's object store. Only a
member that is not one byte range of its file (a compressed or sparse tar) travels as bytes.

Reads are bounded: only regular files are opened (a FIFO or a device in a list would hang or
never end), and a record larger than `max_bytes` is `too_large` before a byte of it is read.

Every source adapter (pipeline.sources, pipeline.sources.shard_source) builds on this module, which
imports none of them: the record, the errors an adapter raises, and the two helpers each
adapter's `fingerprint()` is made of.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

import lmdb

from core.errors import UserError
from pipeline.statuses import TOO_LARGE, UNREADABLE, RecordError

# Larger files are `too_large` unread: no image a 64x64 training set needs comes near it, and a
# worker holding a few of them stays within a laptop's memory.
DEFAULT_MAX_BYTES = 256 * 2**20


class SourceError(UserError):
    """The path cannot be read as any kind of source; the message is for the user."""


class ReadError(RecordError):
    """A record's bytes cannot be had (`unreadable`, `too_large`)."""


@dataclass(frozen=True)
class Record:
    """One input item. `key` is stable and unique within its source. The bytes are `data`, or
    are read from `path`: the whole file; with `span`, the (offset, size) byte range of a tar
    member, from a shard that must still have the (size, mtime in ns) `stamp` it was listed
    with (a rewritten shard's offsets point into other members); with `lmdb_key`, the value
    under that key of the LMDB folder `path`. `error` is set when the source already knows the
    item cannot be read (a folder it could not list). `label` is the class name the item already
    carries (a labelled shard's sample, read exactly as written: never a sanitized key), or
    None."""

    key: str
    meta: dict = field(default_factory=dict)
    data: bytes | None = None
    path: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    error: str | None = None
    span: tuple[int, int] | None = None
    stamp: tuple[int, int] | None = None
    lmdb_key: bytes | None = None
    label: str | None = None

    def read(self) -> bytes:
        """The item's bytes, or ReadError: `unreadable` (vanished, not a regular file, changed,
        I/O error) or `too_large` (over `max_bytes`, refused before reading)."""
        if self.error is not None:
            raise ReadError(UNREADABLE, self.error)
        if self.data is not None:
            self._check_size(len(self.data))
            return self.data
        if self.path is None:
            raise ReadError(UNREADABLE, "record carries no image data")
        try:
            if self.lmdb_key is not None:
                return self._read_lmdb(self.path, self.lmdb_key)
            return self._read_file(self.path)
        except ReadError:
            raise
        except OSError as err:
            raise ReadError(UNREADABLE, f"{err.strerror or err}: {self.path}") from None
        except lmdb.Error as err:
            raise ReadError(UNREADABLE, f"LMDB {self.path}: {err}") from None

    def _read_file(self, path: str) -> bytes:
        if self.span is not None:
            self._check_size(self.span[1])
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ReadError(UNREADABLE, f"not a regular file ({_file_kind(info.st_mode)})")
            if self.span is None:
                self._check_size(info.st_size)
                data = f.read(self.max_bytes + 1)  # the file may have grown since fstat
                self._check_size(len(data))
                return data
            if self.stamp is not None and (info.st_size, info.st_mtime_ns) != self.stamp:
                raise ReadError(UNREADABLE, f"the shard changed since it was listed: {path}")
            offset, size = self.span
            f.seek(offset)
            return f.read(size)

    def _read_lmdb(self, folder: str, key: bytes) -> bytes:
        # buffers=True: the value is a view into the map, so its size is known before a copy
        with lmdb_env(folder).begin(buffers=True) as txn:
            value = txn.get(key)
            if value is None:
                raise ReadError(UNREADABLE, f"the key is no longer in the LMDB {folder}")
            self._check_size(len(value))
            return bytes(value)

    def _check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise ReadError(TOO_LARGE, f"{size} bytes, over the --max-bytes limit of "
                                       f"{self.max_bytes}")


# Per process: the read-only LMDB handles, by real folder path, with the identity of the
# data.mdb each was opened on (a handle maps the file as it was then).
_lmdb_envs: dict[str, tuple[tuple, lmdb.Environment]] = {}


def lmdb_env(folder: str) -> lmdb.Environment:
    """This process's handle on the LMDB in `folder`, opened once and then shared by everything
    in the process (the listing, every record read here): LMDB refuses a second handle on one
    file in one process. Opened afresh if data.mdb was replaced or changed since."""
    info = os.stat(os.path.join(folder, "data.mdb"))
    identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    real = os.path.realpath(folder)
    cached = _lmdb_envs.get(real)
    if cached is not None and cached[0] == identity:
        return cached[1]
    if cached is not None:
        cached[1].close()
    env = lmdb.open(folder, readonly=True, lock=False, readahead=False)
    _lmdb_envs[real] = (identity, env)
    return env


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISDIR, "a folder"))
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def input_fingerprint(parts: Iterator[object]) -> str:
    """A short hash of an input set, from its items' identities (key, size, mtime, ...)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part).encode("utf-8") + b"\n")
    return digest.hexdigest()[:16]


def file_identity(path: str) -> list:
    """(size, mtime in ns) of a file, or the error that stands in for them."""
    try:
        info = os.stat(path)
    except OSError as err:
        return [err.strerror]
    return [info.st_size, info.st_mtime_ns]
