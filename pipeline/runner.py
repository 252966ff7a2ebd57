"""The thin driver every shard-writing stage shares: source -> worker chunks -> shards + manifest.

A stage is a pure per-chunk function (`worker(records, params) -> [Outcome]`); this module owns
everything around it: output-folder safety, ordered parallel mapping, the manifest, shard
rollover, checkpoints for `--resume`, the contact sheet and the summary.

Restart rules (the same for every stage):
- a finished output folder (it has `summary.json`) is refused unless `overwrite`;
- an unfinished one (killed midway) is started over, or continued with `resume`;
- a checkpoint (`progress.json`) is written each time a shard is completed, at an input-record
  boundary, so a resumed run skips exactly the records whose samples are already in finished
  shards and ends with the same shards as an uninterrupted run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.files import write_json_atomic, write_png_atomic
from pipeline.manifest import (
    MANIFEST_NAME,
    SUMMARY_NAME,
    Manifest,
    Outcome,
    stage_summary,
    summary_line,
)
from pipeline.outputs import claim_output
from pipeline.parallel import chunked, map_ordered
from pipeline.sheets import contact_sheet, decode_encoded
from pipeline.sinks import INDEX_NAME, ShardSink, write_index
from pipeline.sources import Record, Source

PROGRESS_NAME = "progress.json"
SHEET_NAME = "contact_sheet.png"
SHEET_SIZE = 64  # samples shown on the contact sheet


class StageError(Exception):
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


def run_stage(
    stage: Stage,
    source: Source,
    out: Path,
    *,
    workers: int,
    maxcount: int = 10_000,
    resume: bool = False,
    overwrite: bool = False,
    chunk_size: int = 32,
    progress: bool = True,
) -> dict:
    """Run `stage` over `source` into `out`; returns the summary (also in OUT/summary.json)."""
    if maxcount < 1:
        raise StageError("--maxcount must be at least 1")
    out = Path(out)
    state = _prepare_output(stage, out, resume=resume, overwrite=overwrite)
    started = time.perf_counter()
    total = source.count()
    manifest = Manifest(out / MANIFEST_NAME, state["manifest_offset"], state["counts"])
    sink = ShardSink(out, stage.name, start_shard=len(state["shards"]))
    shards: list[dict] = state["shards"]
    records_done = state["records_done"]
    preview: list[bytes] = []

    records = islice(iter(source), records_done, None)
    bar = tqdm(total=total, initial=records_done, unit="img", disable=not progress,
               desc=stage.name, dynamic_ncols=True)
    try:
        for outcomes in map_ordered(stage.worker, stage.params, chunked(records, chunk_size),
                                    workers):
            for outcome in outcomes:
                manifest.record(outcome)
                for sample in outcome.samples:
                    sink.write(sample)
                    if len(preview) < SHEET_SIZE:
                        preview.append(sample.image)
                records_done += 1
                if sink.count >= maxcount:
                    shards.append(sink.close_shard())
                    _checkpoint(stage, out, records_done, manifest, shards)
            bar.update(len(outcomes))
            bar.set_postfix({stage.main_status: manifest.counts[stage.main_status]}, refresh=False)
    finally:
        bar.close()
    last = sink.close_shard()
    if last is not None:
        shards.append(last)
    manifest.close()

    seconds = time.perf_counter() - started
    write_index(out, shards, stage=stage.name, **stage.index_info)
    if preview:
        write_png_atomic(out / SHEET_NAME, contact_sheet([decode_encoded(b) for b in preview]))
    summary = _summary(stage, manifest, shards, seconds, total, state)
    if stage.summarize is not None:
        summary.update(stage.summarize(out))
    write_json_atomic(out / SUMMARY_NAME, summary)
    (out / PROGRESS_NAME).unlink(missing_ok=True)
    summary["line"] = summary_line(stage.name, summary["counts"], stage.main_status,
                                   seconds, str(out))
    return summary


def _prepare_output(stage: Stage, out: Path, *, resume: bool, overwrite: bool) -> dict:
    """Decide fresh start / resume / refusal, and clean up only files this stage owns."""
    fresh = {"records_done": 0, "manifest_offset": 0, "counts": {}, "shards": [],
             "resumed_from": 0}
    claim_output(out, overwrite=overwrite, finished=SUMMARY_NAME)
    if resume and not overwrite and (out / PROGRESS_NAME).exists():
        with open(out / PROGRESS_NAME, encoding="utf-8") as f:
            saved = json.load(f)
        if saved["stage"] != stage.name or saved["settings"] != stage.settings:
            raise StageError(
                f"{out} holds an unfinished run with other settings "
                f"({saved['settings']}); rerun without --resume to start over"
            )
        _remove_partial_shards(out, stage.name, keep=saved["shards"])
        return {**saved, "resumed_from": saved["records_done"]}
    _clean(out, stage)
    return fresh


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


def _checkpoint(stage: Stage, out: Path, records_done: int, manifest: Manifest,
                shards: list[dict]) -> None:
    write_json_atomic(out / PROGRESS_NAME, {
        "stage": stage.name,
        "settings": stage.settings,
        "records_done": records_done,
        "manifest_offset": manifest.offset,
        "counts": dict(manifest.counts),
        "shards": shards,
    })


def _summary(stage: Stage, manifest: Manifest, shards: list[dict], seconds: float,
             expected: int | None, state: dict) -> dict:
    if expected is not None and manifest.total != expected:
        raise RuntimeError(f"manifest holds {manifest.total} records, source had {expected}")
    return stage_summary(
        stage.name, manifest.counts, seconds, manifest.total - state["resumed_from"],
        samples=sum(s["samples"] for s in shards),
        shards=len(shards),
        settings=stage.settings,
        resumed_from_record=state["resumed_from"],
    )
