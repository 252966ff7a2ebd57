"""`pipeline shards`: center-crop, area-resize and write training shards, the
input every training run reads.

The per-chunk worker is pure (records in, outcomes out); `make_shards` is the Python entry point
the CLI calls with the same defaults.

With `label_from="folder"` each sample also carries its class (the usual one-folder-per-class
layout, as CIFAR-10 or Tiny-ImageNet unpacked into `SRC/<class>/.../<image>`: the first folder
under SRC, as torchvision's ImageFolder reads it; `"parent"` takes the folder the image sits
in instead): a `.cls` member holding the
class index as ASCII text (the WebDataset convention), `"label"` (the index) and `"class"` (the
folder name) in its `.json`, and `OUT/labels.json` lists the class names, sorted, so index i is
`labels[i]`.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from core.files import write_json_atomic
from core.samples import safe_key
from pipeline.decode import DEFAULT_MAX_PIXELS, decode_image
from pipeline.engines.local import default_workers
from pipeline.geometry import center_crop, encode_image, resize_area
from pipeline.manifest import Outcome
from pipeline.runner import Stage, StageError, run_stage
from pipeline.sinks import Sample
from pipeline.sources import DEFAULT_MAX_BYTES, LABELS_NAME, Record, Source, open_sources
from pipeline.statuses import EXCLUDED, KEPT, RecordError

LABEL_SOURCES = ("folder", "parent")


@dataclass(frozen=True)
class ShardParams:
    size: int = 64
    fmt: str = "png"
    max_pixels: int = DEFAULT_MAX_PIXELS
    exclude: frozenset[str] = frozenset()
    classes: tuple[str, ...] = ()  # sorted class names when samples are labelled
    label_from: str = "folder"  # which folder names the class (`record_label`)


def shard_chunk(records: list[Record], params: ShardParams) -> list[Outcome]:
    """Turn each record into one size x size center crop, or a recorded reason why not."""
    return [_shard_one(rec, params) for rec in records]


def _shard_one(rec: Record, params: ShardParams) -> Outcome:
    if rec.key in params.exclude:
        return Outcome(rec.key, EXCLUDED, "listed in --exclude")
    try:
        rgb = decode_image(rec.read(), max_pixels=params.max_pixels, min_side=params.size,
                           draft_side=params.size)
    except RecordError as err:
        return Outcome(rec.key, err.status, err.reason)
    height, width = rgb.shape[:2]
    crop = resize_area(center_crop(rgb), params.size)
    meta = {**rec.meta, "stage": "shards", "size": params.size, "decoded_hw": [height, width]}
    members = {}
    if params.classes:
        name = record_label(rec, params.label_from)
        label = params.classes.index(name)
        meta.update({"label": label, "class": name})
        members["cls"] = str(label).encode("ascii")
    sample = Sample(safe_key(rec.key), params.fmt, encode_image(crop, params.fmt), meta, members)
    return Outcome(rec.key, KEPT, samples=[sample])


def record_label(rec: Record, label_from: str) -> str:
    """The class of an image: the one it already carries (a labelled shard's, exactly as
    written), else from its path within its source: `folder`, the first folder under the
    source ("cat" for `cat/images/1.jpg`, as torchvision's ImageFolder reads it); `parent`, the
    folder it sits in ("images" there). Empty for an image at the top of the source. Never
    through the key sanitizer: `a.b` and `a_b` are two classes."""
    if rec.label is not None:
        return rec.label
    path = PurePosixPath(rec.meta.get("source_key", rec.key))
    if label_from == "folder":
        return path.parts[0] if len(path.parts) > 1 else ""
    return path.parent.name


def class_names(source: Source, label_from: str) -> tuple[tuple[str, ...], str | None]:
    """The sorted class names of a one-folder-per-class source, and a warning when they look
    wrong: a single class, or one name shared by folders at different paths (`parent` on
    `nest/cat/2020` and `nest/dog/2020`). Every image must be in a class folder, or its class
    would silently be the source folder's own name."""
    folders: dict[str, set[str]] = {}
    for rec in source:
        name = record_label(rec, label_from)
        if not name:
            raise StageError(f"--label-from {label_from}: {rec.key} is not inside a class "
                             "folder; lay the source out as SRC/<class>/<image>")
        paths = folders.setdefault(name, set())
        if rec.label is None:  # a class a shard carries is no folder name
            paths.add(str(PurePosixPath(rec.meta.get("source_key", rec.key)).parent))
    shared = sorted(name for name, paths in folders.items() if len(paths) > 1)
    warning = None
    if len(folders) == 1:
        warning = (f"--label-from {label_from}: every image has the same class "
                   f"{next(iter(folders))!r}; is SRC the folder that holds the class folders?")
    elif shared and label_from == "parent":
        paths = sorted(folders[shared[0]])
        warning = (f"--label-from parent: class {shared[0]!r} is the folder name of "
                   f"{len(paths)} folders at different paths ({paths[0]}, {paths[1]}); "
                   "--label-from folder labels by the first folder under SRC")
    return tuple(sorted(folders)), warning


def _labels_left_behind(sources: list[str | os.PathLike]) -> str | None:
    """A warning when a source is labelled shards (a labels.json beside them) and the run keeps
    no labels: re-sharding without --label-from would drop the classes without a word."""
    for spec in map(str, sources):
        folder = spec if os.path.isdir(spec) else os.path.dirname(spec)
        if os.path.isfile(os.path.join(folder, LABELS_NAME)):
            return (f"{spec} holds labelled shards ({LABELS_NAME}) but the output is unlabelled; "
                    "add --label-from folder to keep each sample's class")
    return None


def _write_labels(out: Path, classes: tuple[str, ...], warning: str | None) -> dict:
    """OUT/labels.json (written before summary.json marks the output finished); what the
    summary says of the classes."""
    write_json_atomic(out / LABELS_NAME, list(classes))
    return {"classes": len(classes), **({"label_warning": warning} if warning else {})}


def read_exclude(path: str | os.PathLike) -> frozenset[str]:
    """Keys to leave out, one per line (the format of dedup's duplicates.txt)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise StageError(f"--exclude {path}: not a text file of keys; give a list with one key "
                         "per line, like dedup's duplicates.txt")
    return frozenset(line for line in text.split("\n") if line.strip())


def match_exclude(listed: frozenset[str], source: Source, path: str | os.PathLike
                  ) -> tuple[frozenset[str], int]:
    """The record keys `listed` names, and how many listed keys name none. A listed key names
    a record by its key, or by its key within its own source: dedup run over one of several
    sources wrote keys without the source-name prefix a multi-source run adds. Matching
    nothing at all means the list belongs to other data: refused, rather than silently
    excluding nothing."""
    matched, used = set(), set()
    for key, own in source.record_keys():
        for name in (key, own):
            if name in listed:
                matched.add(key)
                used.add(name)
    if listed and not matched:
        example = next(iter(sorted(listed)))
        raise StageError(f"--exclude {path}: none of its {len(listed)} keys (e.g. {example!r}) "
                         "names an input of this source; was it written for other data?")
    return frozenset(matched), len(listed - used)


def make_shards(
    sources: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    size: int = 64,
    fmt: str = "png",
    maxcount: int = 10_000,
    exclude: str | os.PathLike | None = None,
    workers: int | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    label_from: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Center-crop every image in `sources` to `size` and write WebDataset shards to `out`
    (labelled by `label_from`, if given)."""
    if size < 1:
        raise ValueError("size must be positive")
    if label_from not in (None, *LABEL_SOURCES):
        raise ValueError(f"label_from must be one of {LABEL_SOURCES} or None, got {label_from!r}")
    source = open_sources(list(sources), max_bytes=max_bytes, skip=Path(out),
                          labels=label_from is not None)
    listed = read_exclude(exclude) if exclude else frozenset()
    excluded, unmatched = match_exclude(listed, source, exclude) if exclude else (listed, 0)
    classes, label_warning = (class_names(source, label_from) if label_from
                              else ((), _labels_left_behind(sources)))
    if label_warning:
        print(f"warning: {label_warning}", file=sys.stderr)
    params = ShardParams(size=size, fmt=fmt, max_pixels=max_pixels, exclude=excluded,
                         classes=classes, label_from=label_from or "folder")
    settings = {"sources": [str(s) for s in sources], "size": size, "format": fmt,
                "maxcount": maxcount, "max_pixels": max_pixels, "max_bytes": max_bytes,
                "exclude": str(exclude) if exclude else None, "excluded_keys": len(listed),
                "exclude_unmatched": unmatched, "label_from": label_from}
    stage = Stage("shards", shard_chunk, params, settings, KEPT,
                  extra_outputs=(LABELS_NAME,) if label_from else (),
                  index_info={"image_size": size, "format": fmt},
                  summarize=functools.partial(_write_labels, classes=classes,
                                                       warning=label_warning) if label_from
                  else None)
    summary = run_stage(stage, source, Path(out), workers=workers or default_workers(),
                        engine=engine, ray_address=ray_address,
                        maxcount=maxcount, resume=resume, overwrite=overwrite, progress=progress)
    if unmatched:
        summary["line"] += f"; {unmatched} of {len(listed)} --exclude keys matched no input"
    if label_warning:
        summary["line"] += f"; warning: {label_warning}"
    return summary
