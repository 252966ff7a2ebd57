"""WebDataset `.tar` shards as a source, and `read_shards`, the one place a WebDataset reader is
built.

Listing a shard reads only its tar headers, seeking from one to the next (an uncompressed tar's
members are byte ranges of the file); each record points at its image member's byte range, which
the worker reads itself. Samples, keys and which member is the image follow core.samples
(webdataset's own rules), so a shard lists the same samples here as in any reader.

With `labels`, each record also carries the class its sample was labelled with (`pipeline shards
--label-from`): the `"class"` of its `.json`, else its `.cls` index looked up in the
`labels.json` beside the shard. Those small members are read while listing; the class name is
taken exactly as written, since the sample's key went through `core.samples.safe_key` and
`a.b`, `a_b` and `ünïcødé` would not survive it.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator

from core.samples import image_extension, is_image, split_member
from pipeline.sources.records import (
    DEFAULT_MAX_BYTES,
    Record,
    SourceError,
    file_identity,
    input_fingerprint,
)

LABELS_NAME = "labels.json"  # the class names of labelled shards, beside them (index i: labels[i])
LABEL_MEMBERS = ("json", "cls")  # the members that say a sample's class
MAX_LABEL_BYTES = 1 << 16  # a larger .json or .cls is not a label a shard stage wrote


class ShardSource:
    """WebDataset .tar shards, in the order given (brace patterns and globs expanded). Iteration
    reads only the tar headers (and, with `labels`, each sample's small .json and .cls members:
    the class it carries); each record points at its image member's byte range."""

    kind = "shards"

    def __init__(self, urls: list[str], counts: list[int] | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, labels: bool = False):
        self.urls = urls
        self.counts = counts
        self.max_bytes = max_bytes
        self.labels = labels
        self._class_lists: dict[str, list | None] = {}  # labels.json by shard folder

    def count(self) -> int | None:
        return sum(self.counts) if self.counts is not None else None

    def fingerprint(self) -> str:
        return input_fingerprint([url, file_identity(url)] for url in self.urls)

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
                    parts = split_member(member.name)
                    if not member.isreg() or parts is None:
                        continue
                    if parts[0] != key:
                        if key is not None:
                            yield self._record(url, stamp, key, sample)
                        key, sample = parts[0], {}
                    suffix = parts[1]
                    if suffix in sample:
                        raise SourceError(f"{url}: sample {key!r} has two .{suffix} members")
                    sample[suffix] = (member, self._member_bytes(tar, member, seekable, suffix))
                if key is not None:
                    yield self._record(url, stamp, key, sample)

    def _member_bytes(self, tar: tarfile.TarFile, member: tarfile.TarInfo, seekable: bool,
                      suffix: str) -> bytes | None:
        """A label member's bytes (with `labels`); an image member's bytes when no worker could
        seek to them (a compressed shard, a sparse member) and they are within max_bytes; else
        None, the worker reads them."""
        if self.labels and suffix in LABEL_MEMBERS and member.size <= MAX_LABEL_BYTES:
            return tar.extractfile(member).read()
        if seekable and not member.issparse():
            return None
        if not is_image(suffix) or member.size > self.max_bytes:
            return None
        return tar.extractfile(member).read()

    def _record(self, url: str, stamp: tuple[int, int], key: str, sample: dict) -> Record:
        meta = {"source": url, "source_key": key}
        extension = image_extension(sample)
        if extension is None:
            return Record(key, meta, max_bytes=self.max_bytes,
                          error=f"the sample has no image member ({', '.join(sorted(sample))})")
        member, data = sample[extension]
        label = self._carried_label(url, sample) if self.labels else None
        return Record(key, meta, data=data, path=url, max_bytes=self.max_bytes,
                      span=(member.offset_data, member.size), stamp=stamp, label=label)

    def _carried_label(self, url: str, sample: dict) -> str | None:
        """The class a sample was labelled with: `"class"` in its .json, else its .cls index in
        the labels.json beside its shard; None when it carries none."""
        try:
            meta = json.loads(sample.get("json", (None, None))[1] or b"{}")
        except ValueError:
            meta = None
        name = meta.get("class") if isinstance(meta, dict) else None
        if isinstance(name, str) and name:
            return name
        text = (sample.get("cls", (None, None))[1] or b"").decode("ascii", "replace").strip()
        classes = self._class_list(os.path.dirname(url))
        if text.isdigit() and classes is not None and int(text) < len(classes):
            return classes[int(text)]
        return None

    def _class_list(self, folder: str) -> list | None:
        """The class names of the labels.json in `folder` (read once), or None without one."""
        if folder not in self._class_lists:
            try:
                with open(os.path.join(folder, LABELS_NAME), encoding="utf-8") as f:
                    names = json.load(f)
            except (OSError, ValueError):
                names = None
            valid = isinstance(names, list) and all(isinstance(n, str) and n for n in names)
            self._class_lists[folder] = names if valid else None
        return self._class_lists[folder]


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
