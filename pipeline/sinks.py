"""WebDataset shard writing and the index that lists the shards.

A shard is written under a `.tmp` name and renamed only once it is complete, so a crashed run
never leaves a truncated `.tar` that a training job would happily read. The runner decides when
a shard ends (always at an input record boundary, so one photo's faces never straddle two
shards); that is why this uses webdataset's TarWriter per shard rather than ShardWriter,
whose size/count rollover can split a record's samples.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds

from pipeline.files import write_json_atomic

INDEX_NAME = "index.json"


@dataclass
class Sample:
    """One training sample: `key` is tar-safe (see sources.safe_key), `meta` becomes `.json`."""

    key: str
    ext: str
    image: bytes
    meta: dict = field(default_factory=dict)


class ShardSink:
    """Writes samples to `OUT/<prefix>-000000.tar`, `...-000001.tar`, ... one shard at a time."""

    def __init__(self, out: Path, prefix: str, start_shard: int = 0):
        self.out = out
        self.prefix = prefix
        self.next_shard = start_shard
        self.count = 0  # samples in the open shard
        self._writer: wds.TarWriter | None = None
        self._tmp: Path | None = None

    def shard_name(self, number: int) -> str:
        return f"{self.prefix}-{number:06d}.tar"

    def write(self, sample: Sample) -> None:
        if self._writer is None:
            self._tmp = self.out / (self.shard_name(self.next_shard) + ".tmp")
            # mtime fixed so that the same samples always give byte-identical shards.
            self._writer = wds.TarWriter(str(self._tmp), encoder=False, mtime=0.0)
        self._writer.write(
            {
                "__key__": sample.key,
                sample.ext: sample.image,
                "json": json.dumps(sample.meta, sort_keys=True).encode("utf-8"),
            }
        )
        self.count += 1

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


def read_index(folder: Path) -> list[dict]:
    """The shard list of a finished stage output folder."""
    with open(folder / INDEX_NAME, encoding="utf-8") as f:
        return json.load(f)["shards"]
