"""`pipeline download`: URL lists -> WebDataset shards of the original image bytes.

The runner (pipeline.runner) drives it like every shard-writing stage: the output-folder rule,
rows in fixed chunks, one manifest line per row in list order, shards rolled over at a row
boundary, `--resume` from the last finished shard (whose rows are never fetched again), the
summary and index. What differs is where the per-chunk work runs: fetching is waiting, so
instead of a process pool, `FetchEngine` runs the chunks' fetches as coroutines on one event
loop, many chunks overlapping, and hands back each chunk's outcomes in list order. Shards
therefore depend only on the rows and the bytes the servers gave, not on --concurrency or on
which answer came first; and the per-host limit is held by one process, so it holds globally.

A sample is `<row key>.<sniffed suffix>` (the bytes as served) plus a `.json` of provenance
without clock times, so the same answers give byte-identical shards; the manifest line of
each row adds when and how long it was fetched, and how many requests it took.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.download.fetch import Fetcher, FetchError, FetchSettings, user_agent
from pipeline.download.lists import UrlListSource, record_problem
from pipeline.download.sniff import sniff_image
from pipeline.manifest import MANIFEST_NAME, Outcome
from pipeline.runner import Stage, run_stage
from pipeline.sinks import Sample
from pipeline.sources import Record
from pipeline.statuses import OK, RecordError

CHUNK_ROWS = 32  # rows per chunk: the unit the runner hands out and writes in order
ROWS_AHEAD_PER_SLOT = 4  # rows scheduled per concurrency slot: busy slots, bounded memory


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


class FetchEngine:
    """The runner's engine for async per-chunk functions: chunks run as tasks on one event
    loop, a bounded window of rows ahead, results handed back in chunk order.

    The loop runs in a thread of its own, so requests keep going while the runner (in the
    main thread, which alone receives Ctrl-C and SIGTERM) writes shards and the manifest."""

    name = "local"
    distributed = False

    def __init__(self, settings: FetchSettings, chunk_rows: int = CHUNK_ROWS):
        self.settings = settings
        self.window = max(2, math.ceil(ROWS_AHEAD_PER_SLOT * settings.concurrency / chunk_rows))

    def __enter__(self) -> FetchEngine:  # the loop lives for one `map` (nothing to join first)
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn: Callable[[list, Fetcher], Any], params: FetchSettings,
            chunks: Iterable[list]) -> Iterator[list[Outcome]]:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="download-loop", daemon=True)
        thread.start()
        fetcher = Fetcher(params)
        pending: deque = deque()  # concurrent futures of the chunks in flight, in order
        try:
            asyncio.run_coroutine_threadsafe(fetcher.__aenter__(), loop).result()
            for chunk in chunks:
                pending.append(asyncio.run_coroutine_threadsafe(fn(chunk, fetcher), loop))
                if len(pending) >= self.window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # finished, stopped by a signal or the caller: nothing left running
            asyncio.run_coroutine_threadsafe(_stop(fetcher), loop).result()
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def describe(self) -> dict:
        return {"name": self.name, "nodes": 1, "cpus": 1,
                "concurrency": self.settings.concurrency, "per_host": self.settings.per_host}


async def _stop(fetcher: Fetcher) -> None:
    """Cancel the chunks not handed back yet, close the connections, end the resolver's
    threads."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await fetcher.__aexit__(None, None, None)
    await asyncio.get_running_loop().shutdown_default_executor()


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
    maxcount: int = 10_000,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Fetch every URL of `lists` into WebDataset shards in `out` (the client behaving as
    `settings` says, FetchSettings' defaults if None); returns the summary."""
    settings = settings or FetchSettings()
    source = UrlListSource([Path(p) for p in lists], url_col)
    stage_settings = {"lists": [str(p) for p in lists], "url_col": url_col,
                      "maxcount": maxcount, "user_agent": user_agent().split(" (")[0],
                      **asdict(settings)}
    stage = Stage("download", download_chunk, settings, stage_settings, OK,
                  index_info={"format": "original"}, summarize=_count_ignored_opt_outs,
                  contact_sheet=False)
    return run_stage(stage, source, Path(out), workers=1, engine=FetchEngine(settings),
                     maxcount=maxcount, resume=resume, overwrite=overwrite,
                     chunk_size=CHUNK_ROWS, progress=progress)
