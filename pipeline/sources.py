"""Every kind of input becomes one stream of `Record`s: a stable `key`, provenance `meta`, and
either the image bytes (`data`) or the `path` to read them from (`Record.read()` gives both).

Like stylegan2-ada's dataset_tool, each input kind is an adapter with the same contract
(`count()` and iteration in a stable order) and one function, `open_source`, picks the adapter by
looking at the path: users never say what kind of source they have.

Records carry where the bytes are, not the bytes: a file's path (folder, list), a shard and the
byte range of the image member in it (`.tar` shards: the main process reads only the tar
headers), or an LMDB folder and the key (LMDB: the main process walks the keys alone). The
worker process reads the bytes itself (`Record.read()`), so the main process never becomes the
bottleneck reading and copying image bytes through pipes or a cluster's object store. Only a
member that is not one byte range of its file (a compressed or sparse tar) travels as bytes.

A run sees one input set: a folder or list is listed once (the first time it is counted or
read) and that listing is what the run processes, so a file deleted meanwhile becomes an
`unreadable` record instead of a miscount, and a file added meanwhile is not half-included.
`fingerprint()` hashes that input set (keys, sizes, modification times) so that `--resume` can
tell whether it is continuing over the same inputs. A folder that cannot be listed becomes a
record too (`unreadable`, with the reason), so the counts still add up to what is on disk.

Reads are bounded: only regular files are opened (a FIFO or a device in a list would hang or
never end), and a record larger than `max_bytes` is `too_large` before a byte of it is read.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import lmdb

from pipeline.statuses import TOO_LARGE, UNREADABLE

# Sample members that hold the image when reading WebDataset shards, in order of preference.
SHARD_IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "bmp", "ppm", "tif", "tiff", "gif")
# Larger files are `too_large` unread: no image a 64x64 training set needs comes near it, and a
# worker holding a few of them stays within a laptop's memory.
DEFAULT_MAX_BYTES = 256 * 2**20


class SourceError(Exception):
    """The path cannot be read as any kind of source; the message is for the user."""


class ReadError(OSError):
    """A record's bytes cannot be had; `status` is what the manifest records for it."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Record:
    """One input item. `key` is stable and unique within its source. The bytes are `data`, or
    are read from `path`: the whole file; with `span`, the (offset, size) byte range of a tar
    member, from a shard that must still have the (size, mtime in ns) `stamp` it was listed
    with (a rewritten shard's offsets point into other members); with `lmdb_key`, the value
    under that key of the LMDB folder `path`. `error` is set when the source already knows the
    item cannot be read (a folder it could not list)."""

    key: str
    meta: dict = field(default_factory=dict)
    data: bytes | None = None
    path: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    error: str | None = None
    span: tuple[int, int] | None = None
    stamp: tuple[int, int] | None = None
    lmdb_key: bytes | None = None

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
        with _lmdb_env(folder).begin(buffers=True) as txn:
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


def _lmdb_env(folder: str) -> lmdb.Environment:
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


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _fingerprint(parts: Iterator[object]) -> str:
    """A short hash of an input set, from its items' identities (key, size, mtime, ...)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part).encode("utf-8") + b"\n")
    return digest.hexdigest()[:16]


def _file_identity(path: str) -> list:
    """(size, mtime in ns) of a file, or the error that stands in for them."""
    try:
        info = os.stat(path)
    except OSError as err:
        return [err.strerror]
    return [info.st_size, info.st_mtime_ns]


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
        return _fingerprint([key, error, _file_identity(os.path.join(self.root, key))]
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
        return _lmdb_env(str(self.folder)).stat()["entries"]

    def fingerprint(self) -> str:
        return _fingerprint([self.count(), _file_identity(str(self.folder / "data.mdb"))])

    def record_keys(self) -> Iterator[tuple[str, str]]:
        return ((rec.key, rec.key) for rec in self)

    def __iter__(self) -> Iterator[Record]:
        folder = str(self.folder)
        with _lmdb_env(folder).begin() as txn:
            # A key-only cursor: the values' pages are never touched here.
            for raw_key in txn.cursor().iternext(keys=True, values=False):
                key = raw_key.decode("utf-8", errors="backslashreplace")
                yield Record(key, {"source": folder, "source_key": key}, path=folder,
                             lmdb_key=raw_key, max_bytes=self.max_bytes)


# webdataset's rules for tar members (webdataset.tariterators), so that keys and samples are
# those every WebDataset reader sees: names like this are metadata, not samples; a member's
# sample key is its name up to the first dot of its last part, and its suffix is the rest.
_META_NAME = re.compile(r"__[^/]*__($|/)")
_KEY_SUFFIX = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


class ShardSource:
    """WebDataset .tar shards, in the order given (brace patterns and globs expanded). Iteration
    reads only the tar headers; each record points at its image member's byte range."""

    kind = "shards"

    def __init__(self, urls: list[str], counts: list[int] | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        self.urls = urls
        self.counts = counts
        self.max_bytes = max_bytes

    def count(self) -> int | None:
        return sum(self.counts) if self.counts is not None else None

    def fingerprint(self) -> str:
        return _fingerprint([url, _file_identity(url)] for url in self.urls)

    def record_keys(self) -> Iterator[tuple[str, str]]:
        return ((rec.key, rec.key) for rec in self)

    def __iter__(self) -> Iterator[Record]:
        for url in self.urls:
            try:
                yield from self._shard_records(url)
            except tarfile.ReadError as err:
                raise SourceError(f"{url}: not a readable tar shard ({err})") from None

    def _shard_records(self, url: str) -> Iterator[Record]:
        """One shard's samples: consecutive members with the same key, grouped as webdataset
        groups them (regular files only, suffixes lower-cased)."""
        # Unbuffered: a read-ahead buffer would pull in the start of each image with its header.
        with open(url, "rb", buffering=0) as f:
            info = os.fstat(f.fileno())
            stamp = (info.st_size, info.st_mtime_ns)
            tar, seekable = _open_tar(f)
            with tar:
                key, sample = None, {}
                while (member := tar.next()) is not None:
                    tar.members = []  # tarfile keeps every header read: a shard's worth
                    match = _KEY_SUFFIX.match(member.name)
                    if not member.isreg() or _META_NAME.match(member.name) or match is None:
                        continue
                    if match.group(1) != key:
                        if key is not None:
                            yield self._record(url, stamp, key, sample)
                        key, sample = match.group(1), {}
                    suffix = match.group(2).lower()
                    if suffix in sample:
                        raise SourceError(f"{url}: sample {key!r} has two .{suffix} members")
                    sample[suffix] = (member, self._unseekable_bytes(tar, member, seekable,
                                                                     suffix))
                if key is not None:
                    yield self._record(url, stamp, key, sample)

    def _unseekable_bytes(self, tar: tarfile.TarFile, member: tarfile.TarInfo, seekable: bool,
                          suffix: str) -> bytes | None:
        """An image member's bytes when no worker could seek to them (a compressed shard, a
        sparse member) and they are within max_bytes; else None, the worker reads them."""
        if seekable and not member.issparse():
            return None
        if suffix not in SHARD_IMAGE_EXTS or member.size > self.max_bytes:
            return None
        return tar.extractfile(member).read()

    def _record(self, url: str, stamp: tuple[int, int], key: str, sample: dict) -> Record:
        meta = {"source": url, "source_key": key}
        image = next((sample[e] for e in SHARD_IMAGE_EXTS if e in sample), None)
        if image is None:
            return Record(key, meta, max_bytes=self.max_bytes)
        member, data = image
        return Record(key, meta, data=data, path=url, max_bytes=self.max_bytes,
                      span=(member.offset_data, member.size), stamp=stamp)


def _open_tar(f) -> tuple[tarfile.TarFile, bool]:
    """A shard opened to walk its headers, and whether its members are byte ranges of the file:
    an uncompressed tar is walked by seeking from header to header (the data in between is
    never read); a compressed one can only be read as a stream."""
    try:
        return tarfile.open(fileobj=f, mode="r:"), True
    except tarfile.ReadError:
        f.seek(0)
        return tarfile.open(fileobj=f, mode="r|*"), False


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
        return _fingerprint([e, _file_identity(self._path(e))] for e in self.entries())

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
        return _fingerprint([label, source.fingerprint()]
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
