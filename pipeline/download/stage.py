"""`pipeline download`: URL lists -> WebDataset shards of the original image bytes.

The runner (pipeline.runner) drives it like every shard-writing stage: the output-folder rule,
rows in fixed chunks, one manifest line per row in list order, shards rolled over at a row
boundary, `--resume` from the last finished shard (whose rows are never fetched again), the
summary and index. What differs is where the per-chunk work runs: `download_chunk` is a
coroutine, run on an event loop here or on Ray download workers (pipeline.download.engines),
which hold --per-host and --concurrency in total either way.

A sample is `<row key>.<sniffed suffix>` (the bytes as served) plus a `.json` of provenance
without clock times, so the same answers give byte-identical shards; the manifest line of
each row adds when and how long it was fetched, and how many requests it took.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from pipeline.download.engines import CHUNK_ROWS, FetchEngine, RayFetchEngine
from pipeline.download.fetch import Fetcher, FetchError, FetchSettings, user_agent
from pipeline.download.lists import UrlListSource, record_problem
from pipeline.download.sniff import sniff_image
from pipeline.engines import EngineError, RayEngine, open_engine
from pipeline.engines.local import default_workers
from pipeline.manifest import MANIFEST_NAME, Outcome
from pipeline.runner import Stage, run_stage
from pipeline.sinks import Sample
from pipeline.sources import Record
from pipeline.statuses import OK, RecordError


async def download_chunk(records: list[Record], fetcher: Fetcher) -> list[Outcome]:
    """The outcome of every row of one chunk, in order (fetched concurrently)."""
    return list(await asyncio.gather(*(download_row(rec, fetcher) for rec in records)))


async def download_row(record: Record, fetcher: Fetcher) -> Outcome:
    """One row: its image as a sample, or the status that says why there is none."""
    url = record.meta["url"]
    known = record_problem(record)  # bad_url / duplicate_url, known from the list itself
    if known is not None:
        return Outcome(record.key, known[0], known[1], info={"url": url})
    started = time.monotonic()
    timing = {"fetched_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
    try:
        got = await fetcher.fetch(url)
        mime, suffix = sniff_image(got.body, got.served_type)
    except FetchError as err:
        timing["seconds"] = round(time.monotonic() - started, 3)
        return Outcome(record.key, err.status, err.reason, info={"url": url, **err.info,
                                                                 **timing})
    except RecordError as err:  # fetched, but not an image
        timing["seconds"] = round(time.monotonic() - started, 3)
        return Outcome(record.key, err.status, err.reason,
                       info={"url": url, "final_url": got.final_url,
                             "http_status": got.http_status, "attempts": got.attempts, **timing})
    provenance = {
        "url": url, "final_url": got.final_url, "http_status": got.http_status,
        "content_type": mime, "served_type": got.served_type, "bytes": len(got.body),
        "sha256": hashlib.sha256(got.body).hexdigest(), "redirects": got.redirects,
        "list": record.meta["list"], "row": record.meta["row"],
        "columns": record.meta["columns"],
    }
    if got.opt_out:
        provenance["opt_out_ignored"] = got.opt_out
    info = {k: provenance[k] for k in ("url", "final_url", "http_status", "bytes", "sha256")}
    info.update(attempts=got.attempts, seconds=round(time.monotonic() - started, 3),
                fetched_at=timing["fetched_at"])
    if got.opt_out:
        info["opt_out_ignored"] = got.opt_out
    return Outcome(record.key, OK, info=info,
                   samples=[Sample(record.key, suffix, got.body, provenance)])


def _count_ignored_opt_outs(out: Path) -> dict:
    """summary.json's count of rows fetched despite an opt-out (with --ignore-opt-out)."""
    with open(out / MANIFEST_NAME, encoding="utf-8") as f:
        # the key is quoted only as a key: inside a JSON string its quotes are escaped
        return {"opt_out_ignored": sum('"opt_out_ignored"' in line for line in f)}


def download(
    lists: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    url_col: str = "url",
    settings: FetchSettings | None = None,
    engine: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    maxcount: int = 10_000,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Fetch every URL of `lists` into WebDataset shards in `out` (the client behaving as
    `settings` says, FetchSettings' defaults if None) on `engine`: "local" (one event loop
    here) or "ray" (`workers` download workers on the cluster at `ray_address`; default: as
    many as the cluster's CPUs and the limits allow); returns the summary."""
    settings = settings or FetchSettings()
    fetch_engine = open_fetch_engine(engine, settings, workers, ray_address)
    source = UrlListSource([Path(p) for p in lists], url_col)
    stage_settings = {"lists": [str(p) for p in lists], "url_col": url_col,
                      "maxcount": maxcount, "user_agent": user_agent().split(" (")[0],
                      **asdict(settings)}
    stage = Stage("download", download_chunk, settings, stage_settings, OK,
                  index_info={"format": "original"}, summarize=_count_ignored_opt_outs,
                  contact_sheet=False)
    return run_stage(stage, source, Path(out), workers=1, engine=fetch_engine,
                     maxcount=maxcount, resume=resume, overwrite=overwrite,
                     chunk_size=CHUNK_ROWS, progress=progress)


def open_fetch_engine(engine: str, settings: FetchSettings, workers: int | None,
                      ray_address: str | None) -> FetchEngine | RayFetchEngine:
    """The engine download's chunks run on; EngineError (before anything is touched) for an
    engine that cannot be had or options that do not go with it."""
    if engine == "local" and workers is not None:
        raise EngineError(f"--workers {workers} is for --engine ray: the local engine fetches "
                          "from one process, whose event loop holds --concurrency; drop "
                          "--workers, or add --engine ray")
    # checks the engine's name and address; a Ray started here gets --workers CPUs, or all
    checked = open_engine(engine, workers=workers or default_workers(), address=ray_address)
    if isinstance(checked, RayEngine):
        return RayFetchEngine(settings, checked, workers)
    return FetchEngine(settings)
