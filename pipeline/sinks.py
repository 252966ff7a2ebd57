"""WebDataset shard writing and the index that lists the shards.

A shard is written under a `.tmp` name and renamed only once it is complete, so a crashed run
never leaves a truncated `.tar` that a training job would happily read. The runner decides when
a shard ends (always at an input record boundary, so one photo's faces never straddle two
shards), so this does not use webdataset's ShardWriter, whose size/count rollover can split a
record's samples. A WebDataset shard is a plain tar of `<key>.<ext>` members; the standard
library writes it directly: webdataset's TarWriter would import torch (~1 s in every process)
and add a PAX header to every member. Members have fixed metadata (mtime 0, GNU format) so
the same samples always give byte-identical shards.

Keys are unique per output: a key already written (two names that became the same tar-safe
key, or one key in two input shards) gets a suffix hashed from its sample's provenance, so
webdataset never sees two samples under one name. Ordinary names keep their keys unchanged.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.files import write_json_atomic
from core.samples import split_member
from pipeline.geometry import encode_image

INDEX_NAME = "index.json"


@dataclass
class Sample:
    """One training sample: `key` is tar-safe (see core.samples.safe_key), `meta` becomes `.json`,
    `members` are further `<key>.<ext>` members (e.g. `cls`, a class index as ASCII text)."""

    key: str
    ext: str
    image: bytes
    meta: dict = field(default_factory=dict)
    members: dict[str, bytes] = field(default_factory=dict)


class ShardSink:
    """Writes samples to `OUT/<prefix>-000000.tar`, `...-000001.tar`, ... one shard at a time."""

    def __init__(self, out: Path, prefix: str, start_shard: int = 0,
                 taken: set[str] | None = None):
        self.out = out
        self.prefix = prefix
        self.next_shard = start_shard
        self.count = 0  # samples in the open shard
        self.taken = set(taken or ())  # keys already in the output (a resume's kept shards)
        self._writer: tarfile.TarFile | None = None
        self._tmp: Path | None = None

    def shard_name(self, number: int) -> str:
        return f"{self.prefix}-{number:06d}.tar"

    def write(self, sample: Sample) -> None:
        if self._writer is None:
            self._tmp = self.out / (self.shard_name(self.next_shard) + ".tmp")
            self._writer = tarfile.open(  # noqa: SIM115 - closed in close_shard()
                self._tmp, "w", format=tarfile.GNU_FORMAT)
        meta = json.dumps(sample.meta, sort_keys=True).encode("utf-8")
        members = {**sample.members, sample.ext: sample.image, "json": meta}
        key = self._unique(sample.key, meta)
        for ext, data in sorted(members.items()):
            self._add_member(f"{key}.{ext}", data)
        self.count += 1

    def _unique(self, key: str, meta: bytes) -> str:
        """`key`, or, if the output already has it, `key-<hash of the provenance>` (with a
        counter in the unlikely case that is taken too)."""
        digest = hashlib.sha1(meta).hexdigest()[:8]
        candidate, number = key, 1
        while candidate in self.taken:
            candidate = f"{key}-{digest}" + (f"-{number}" if number > 1 else "")
            number += 1
        self.taken.add(candidate)
        return candidate

    def _add_member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        self._writer.addfile(info, io.BytesIO(data))

    def close_shard(self) -> dict | None:
        """Finish the open shard (if any) and return its index entry."""
        if self._writer is None:
            return None
        self._writer.close()
        name = self.shard_name(self.next_shard)
        os.replace(self._tmp, self.out / name)
        entry = {"name": name, "samples": self.count}
        self._writer, self._tmp = None, None
        self.next_shard += 1
        self.count = 0
        return entry


def write_index(out: Path, shards: list[dict], **info: object) -> None:
    total = sum(s["samples"] for s in shards)
    write_json_atomic(out / INDEX_NAME, {**info, "samples": total, "shards": shards})


def shard_keys(out: Path, shards: list[dict]) -> set[str]:
    """The sample keys in the finished shards `shards` of `out` (what a resumed run keeps)."""
    keys: set[str] = set()
    for shard in shards:
        with tarfile.open(out / shard["name"]) as tar:
            keys.update(parts[0] for parts in map(split_member, tar.getnames()) if parts)
    return keys


def read_index(folder: Path) -> list[dict]:
    """The shard list of a finished stage output folder."""
    with open(folder / INDEX_NAME, encoding="utf-8") as f:
        return json.load(f)["shards"]


def write_image_shards(out: Path, images: Iterable[np.ndarray], *, prefix: str = "images",
                       per_shard: int = 10_000, **index_info: object) -> list[dict]:
    """RGB uint8 images as PNG samples (keys 000000, 000001, ...) in shards plus `index.json`:
    how experiments and tests make training data without running a stage."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sink = ShardSink(out, prefix)
    shards = []
    for i, rgb in enumerate(images):
        sink.write(Sample(f"{i:06d}", "png", encode_image(rgb, "png")))
        if sink.count >= per_shard:
            shards.append(sink.close_shard())
    last = sink.close_shard()
    if last is not None:
        shards.append(last)
    write_index(out, shards, **index_info)
    return shards
