"""Every kind of input becomes one stream of `Record`s: a stable `key`, provenance `meta`, and
where the image bytes are, which the worker reads with `Record.read()`.

Like stylegan2-ada's dataset_tool, each input kind is an adapter with the same contract
(`count()`, `fingerprint()`, `record_keys()` and iteration in a stable order) and one function,
`open_source`, picks the adapter by looking at the path: users never say what kind of source
they have.

- `records`: the Record, the bounded read a worker does, the errors, the fingerprint helpers;
- `folders`: a folder of image files, a text file listing paths;
- `lmdb_source`: an LSUN-style LMDB;
- `shard_source`: WebDataset `.tar` shards, and `read_shards`, the one WebDataset reader;
- `detect`: `open_source(s)`, which looks at a path and picks one of them.

This package is where the other packages import every input name from.
"""

from pipeline.sources.detect import (
    EXPECTED,
    SOURCE_KINDS,
    SOURCES_HELP,
    MultiSource,
    Source,
    open_source,
    open_sources,
)
from pipeline.sources.folders import FolderSource, ListSource
from pipeline.sources.lmdb_source import LmdbSource
from pipeline.sources.records import DEFAULT_MAX_BYTES, ReadError, Record, SourceError
from pipeline.sources.shard_source import LABELS_NAME, ShardSource, read_shards

__all__ = [
    "DEFAULT_MAX_BYTES", "EXPECTED", "LABELS_NAME", "SOURCES_HELP", "SOURCE_KINDS", "FolderSource",
    "ListSource", "LmdbSource", "MultiSource", "ReadError", "Record", "ShardSource", "Source",
    "SourceError", "open_source", "open_sources", "read_shards",
]
