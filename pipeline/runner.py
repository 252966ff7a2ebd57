"""The thin driver every shard-writing stage shares: source -> worker chunks -> shards + manifest.

A stage is a pure per-chunk function (`worker(records, params) -> [Outcome]`); this module owns
everything around it: output-folder safety, ordered parallel mapping, the manifest, shard
rollover, checkpoints for `--resume`, the contact sheet and the summary.

Restart rules (the same for every stage):
- one run at a time: the folder is locked for the whole run (core.outputs.hold_output), and
  only an empty folder or one this stage owns is used (core.outputs.claim_output);
- a finished output folder (it has `summary.json`) is refused unless `overwrite`;
- an unfinished one (killed midway) is started over, or continued with `resume`;
- a checkpoint (`progress.json`) is written each time a shard is completed, at an input-record
  boundary, so a resumed run skips exactly the records whose samples are already in finished
  shards and ends with the same shards as an uninterrupted run;
- the checkpoint holds the fingerprint of the run's input set (pipeline.sources), and a resume
  over a different input set is refused: skipping "the first N records" of other inputs would
  leave some without a status and give others two;
- a run stopped by Ctrl-C or SIGTERM (core.signals) ends with one line saying what it kept and
  where `--resume` continues.
"""

from __future__ import annotations

import errno
import json
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.errors import UserError
from core.files import write_json_atomic, write_png_atomic
from core.outputs import claim_output, hold_output
from core.samples import is_image, split_member
from core.sheets import contact_sheet
from core.signals import Interrupted, signal_name
from pipeline.decode import decode_shard_image
from pipeline.engines import ChunkLost, Engine, engine_line, open_engine
from pipeline.engines.local import chunked
from pipeline.manifest import (
    MANIFEST_NAME,
    SUMMARY_NAME,
    Manifest,
    Outcome,
    stage_summary,
    summary_line,
)
from pipeline.sinks import INDEX_NAME, ShardSink, shard_keys, write_index
from pipeline.sources import Record, Source

PROGRESS_NAME = "progress.json"
SHEET_NAME = "contact_sheet.png"
SHEET_SIZE = 64  # samples shown on the contact sheet
# Errors that mean the disk (or the user's file-size limit) is full, not that the code is wrong.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class StageError(UserError):
    """A problem with the user's request (output folder state, options); message is for them."""


@dataclass
class Stage:
    """What makes one stage different from another; everything else is the runner's."""

    name: str  # also the shard prefix: OUT/<name>-000000.tar
    worker: Callable[[list[Record], Any], list[Outcome]]
    params: Any  # picklable; sent to each worker process once
    settings: dict  # JSON-able parameters: recorded, and must match to resume
    main_status: str  # the status that means "produced samples"
    extra_outputs: tuple[str, ...] = ()  # other files the stage writes into OUT
    index_info: dict = field(default_factory=dict)  # extra fields for index.json
    # extra summary.json fields computed from the finished OUT (e.g. read back from the manifest)
    summarize: Callable[[Path], dict] | None = None
    # OUT/contact_sheet.png of the first samples; off where they are not the runner's own
    # encodings (download keeps the bytes as served: large, and possibly undecodable)
    contact_sheet: bool = True


def run_stage(
    stage: Stage,
    source: Source,
    out: Path,
    *,
    workers: int,
    engine: str | Engine = "local",
    ray_address: str | None = None,
    maxcount: int = 10_000,
    resume: bool = False,
    overwrite: bool = False,
    chunk_size: int = 32,
    progress: bool = True,
) -> dict:
    """Run `stage` over `source` into `out`; returns the summary (also in OUT/summary.json).
    `source` should have been opened with `skip=out`, so the run never reads its own output.
    The chunks run on `engine` (pipeline.engines: "local" with `workers` processes, or "ray"),
    or on an engine object a stage brings (pipeline.download's event loop)."""
    if maxcount < 1:
        raise StageError("--maxcount must be at least 1")
    mapper = open_engine(engine, workers=workers, address=ray_address) \
        if isinstance(engine, str) else engine
    # Joined (or started) before --out is touched: a cluster that is not there costs nothing.
    with mapper, hold_output(Path(out), command=f"pipeline {stage.name}") as out:
        try:
            return _run_held(stage, source, out, engine=mapper, maxcount=maxcount,
                             resume=resume, overwrite=overwrite, chunk_size=chunk_size,
                             progress=progress)
        except OSError as err:
            if err.errno not in DISK_FULL:
                raise
            raise StageError(
                f"{out}: {err.strerror} while writing; finished shards are kept and the "
                "unfinished one stays .tmp: free some space, then rerun with --resume") from None


def _run_held(stage: Stage, source: Source, out: Path, *, engine: Engine, maxcount: int,
              resume: bool, overwrite: bool, chunk_size: int, progress: bool) -> dict:
    started = time.perf_counter()
    total = source.count()  # lists a folder: from here on, that listing is the input set
    inputs = {"count": total, "fingerprint": source.fingerprint()}
    state = _prepare_output(stage, out, inputs, resume=resume, overwrite=overwrite)
    manifest = Manifest(out / MANIFEST_NAME, state["manifest_offset"], state["counts"])
    shards: list[dict] = state["shards"]
    sink = ShardSink(out, stage.name, start_shard=len(shards), taken=shard_keys(out, shards))
    records_done = kept = state["records_done"]  # kept: the records of checkpointed shards
    kept_shards = len(shards)
    sheet_size = SHEET_SIZE if stage.contact_sheet else 0
    preview = _first_images(out, shards, sheet_size)

    records = islice(iter(source), records_done, None)
    bar = tqdm(total=total, initial=records_done, unit="img", disable=not progress,
               desc=stage.name, dynamic_ncols=True)
    try:
        for outcomes in engine.map(stage.worker, stage.params, chunked(records, chunk_size)):
            for outcome in outcomes:
                manifest.record(outcome)
                for sample in outcome.samples:
                    sink.write(sample)
                    if len(preview) < sheet_size:
                        preview.append(sample.image)
                records_done += 1
                if sink.count >= maxcount:
                    shards.append(sink.close_shard())
                    _checkpoint(stage, out, inputs, records_done, manifest, shards)
                    kept, kept_shards = records_done, len(shards)
            bar.update(len(outcomes))
            bar.set_postfix({stage.main_status: manifest.counts[stage.main_status]}, refresh=False)
        last = sink.close_shard()
        if last is not None:
            shards.append(last)
        manifest.close()

        seconds = time.perf_counter() - started
        write_index(out, shards, stage=stage.name, **stage.index_info)
        if preview:
            write_png_atomic(out / SHEET_NAME,
                             contact_sheet([decode_shard_image(b) for b in preview]))
        summary = _summary(stage, manifest, shards, seconds, total, state, inputs)
        if stage.summarize is not None:
            summary.update(stage.summarize(out))
        summary["engine"] = engine.describe()
        write_json_atomic(out / SUMMARY_NAME, summary)
    except KeyboardInterrupt:
        manifest.close()
        raise Interrupted(
            f"{stage.name}: stopped by {signal_name()} after {records_done} of {total} inputs; "
            f"{_kept(out, kept_shards, kept)}") from None
    except ChunkLost as err:
        manifest.close()
        raise StageError(f"{stage.name}: {err}; {_kept(out, kept_shards, kept)}") from None
    finally:
        bar.close()
    (out / PROGRESS_NAME).unlink(missing_ok=True)
    summary["line"] = summary_line(stage.name, summary["counts"], stage.main_status,
                                   seconds, str(out)) + f" ({engine_line(summary['engine'])})"
    if total == 0:
        summary["line"] += "; warning: nothing was found in the source"
    return summary


def _kept(out: Path, shards: int, kept: int) -> str:
    """What a stopped run leaves (the shards of its last checkpoint), and how to continue it."""
    return (f"{shards} finished shard(s) in {out} hold the first {kept}: rerun with "
            "--resume to continue from there")


def _prepare_output(stage: Stage, out: Path, inputs: dict, *, resume: bool,
                    overwrite: bool) -> dict:
    """Decide fresh start / resume / refusal, and clean up only files this stage owns."""
    if resume and overwrite:
        raise StageError("give --resume (continue the run in --out) or --overwrite (replace "
                         "it), not both")
    fresh = {"records_done": 0, "manifest_offset": 0, "counts": {}, "shards": [],
             "resumed_from": 0}
    claim_output(out, command=f"pipeline {stage.name}", overwrite=overwrite,
                 finished=SUMMARY_NAME)
    if resume and (out / PROGRESS_NAME).exists():
        with open(out / PROGRESS_NAME, encoding="utf-8") as f:
            saved = json.load(f)
        if saved["stage"] != stage.name or saved["settings"] != stage.settings:
            raise StageError(
                f"{out} holds an unfinished run with other settings "
                f"({saved['settings']}); rerun without --resume to start over"
            )
        if saved.get("inputs") != inputs:
            then = saved.get("inputs", {}).get("count", "?")
            raise StageError(
                f"{out}: the source changed since this run began ({then} inputs then, "
                f"{inputs['count']} now, or the same number with other files); rerun without "
                "--resume to start over")
        _remove_partial_shards(out, stage.name, keep=saved["shards"])
        return {**saved, "resumed_from": saved["records_done"]}
    _clean(out, stage)
    return fresh


def _first_images(out: Path, shards: list[dict], n: int) -> list[bytes]:
    """The encoded images of the first `n` samples in `shards` (a resumed run's contact sheet
    starts with them, as an uninterrupted run's does)."""
    images: list[bytes] = []
    for shard in shards:
        with tarfile.open(out / shard["name"]) as tar:
            for member in tar:
                if len(images) == n:
                    return images
                parts = split_member(member.name)
                if parts is not None and is_image(parts[1]):
                    images.append(tar.extractfile(member).read())
    return images


def _clean(out: Path, stage: Stage) -> None:
    for path in out.glob(f"{stage.name}-*.tar*"):
        path.unlink()
    for name in (MANIFEST_NAME, SUMMARY_NAME, INDEX_NAME, PROGRESS_NAME, SHEET_NAME,
                 *stage.extra_outputs):
        (out / name).unlink(missing_ok=True)


def _remove_partial_shards(out: Path, prefix: str, keep: list[dict]) -> None:
    kept = {s["name"] for s in keep}
    for path in out.glob(f"{prefix}-*.tar*"):
        if path.name not in kept:
            path.unlink()


def _checkpoint(stage: Stage, out: Path, inputs: dict, records_done: int, manifest: Manifest,
                shards: list[dict]) -> None:
    write_json_atomic(out / PROGRESS_NAME, {
        "stage": stage.name,
        "settings": stage.settings,
        "inputs": inputs,
        "records_done": records_done,
        "manifest_offset": manifest.offset,
        "counts": dict(manifest.counts),
        "shards": shards,
    })


def _summary(stage: Stage, manifest: Manifest, shards: list[dict], seconds: float,
             expected: int | None, state: dict, inputs: dict) -> dict:
    if expected is not None and manifest.total != expected:
        raise StageError(f"the source gave {manifest.total} records but was counted as "
                         f"{expected} (its index.json does not match its shards?)")
    return stage_summary(
        stage.name, manifest.counts, seconds, manifest.total - state["resumed_from"],
        samples=sum(s["samples"] for s in shards),
        shards=len(shards),
        settings=stage.settings,
        inputs_fingerprint=inputs["fingerprint"],
        resumed_from_record=state["resumed_from"],
    )
