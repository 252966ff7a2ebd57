"""Where `pipeline download`'s fetches run: one event loop on this machine (`FetchEngine`, the
local engine) or download workers on a Ray cluster (`RayFetchEngine`, `--engine ray`).

Locally, fetching is waiting, so instead of a process pool the chunks' fetches run as
coroutines on one event loop, many chunks overlapping, and each chunk's outcomes are handed
back in list order. One process holds `--per-host` and `--concurrency`, so they hold globally.

On Ray, each of N download workers (a long-lived Ray actor: pipeline.engines.ray_engine's
lanes) runs the same `Fetcher` on its own event loop, many chunks at once, with a fixed share
of `--per-host` and `--concurrency`: worker i gets `limit // N`, plus one while i < `limit % N`,
so the shares add up to exactly the limit and no host ever sees more than `--per-host`
connections from the whole cluster. Why shares rather than a service handing out leases on
slots: a share belongs to a process, so when the process dies its connections die with it and
nothing has to be given back; a lease service would cost a round trip per request and need a
way to take back a dead holder's slots. The price is that a worker cannot borrow a share
another leaves idle, so N is at most `--per-host` and `--concurrency` (each worker needs one of
each) and at most the cluster's CPUs (each worker takes one).

Either way the runner writes the outcomes in chunk order, so shards depend only on the rows
and the bytes the servers gave: not on --concurrency, the engine or the number of workers.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

from pipeline.download.fetch import Fetcher, FetchSettings
from pipeline.engines import EngineError, RayEngine
from pipeline.manifest import Outcome

CHUNK_ROWS = 32  # rows per chunk: the unit the runner hands out and writes in order
ROWS_AHEAD_PER_SLOT = 4  # rows scheduled per concurrency slot: busy slots, bounded memory


def chunks_ahead(settings: FetchSettings, chunk_rows: int = CHUNK_ROWS) -> int:
    """How many chunks are in flight at once: enough rows for every concurrency slot, a few
    times over, so slots stay busy while the driver writes; at least two."""
    return max(2, math.ceil(ROWS_AHEAD_PER_SLOT * settings.concurrency / chunk_rows))


def most_workers(settings: FetchSettings) -> int:
    """The most download workers the limits allow: each needs one per-host and one overall
    slot of its own."""
    return min(settings.per_host, settings.concurrency)


def check_workers(workers: int, settings: FetchSettings) -> None:
    """Refuse, in one line and before anything starts, more workers than the limits split into."""
    if workers > most_workers(settings):
        raise EngineError(
            f"--workers {workers} is more than --per-host {settings.per_host} or --concurrency "
            f"{settings.concurrency} allow: each download worker holds at least one of the "
            f"slots; give --workers {most_workers(settings)} at most, or raise the limits")


def shares(settings: FetchSettings, workers: int) -> list[FetchSettings]:
    """Each worker's settings: its share of --per-host and --concurrency, the rest unchanged.
    The shares of each limit add up to exactly the limit."""

    def share(total: int, i: int) -> int:
        return total // workers + (i < total % workers)

    return [replace(settings, per_host=share(settings.per_host, i),
                    concurrency=share(settings.concurrency, i)) for i in range(workers)]


class FetchEngine:
    """The runner's engine for async per-chunk functions: chunks run as tasks on one event
    loop, a bounded window of rows ahead, results handed back in chunk order.

    The loop runs in a thread of its own, so requests keep going while the runner (in the
    main thread, which alone receives Ctrl-C and SIGTERM) writes shards and the manifest."""

    name = "local"
    distributed = False

    def __init__(self, settings: FetchSettings, chunk_rows: int = CHUNK_ROWS):
        self.settings = settings
        self.window = chunks_ahead(settings, chunk_rows)

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


class RayFetchEngine:
    """The runner's engine for `download --engine ray`: joins (or starts) the cluster like
    every stage's Ray engine, then fetches on `workers` lanes (module doc)."""

    name = "ray"
    distributed = True

    def __init__(self, settings: FetchSettings, ray: RayEngine, workers: int | None = None):
        if workers is not None:
            check_workers(workers, settings)
        self.settings = settings
        self.ray = ray
        self.requested = workers
        self.workers = 0  # known once the cluster is joined

    def __enter__(self) -> RayFetchEngine:
        """Join the cluster and settle the number of workers, before --out is touched."""
        self.ray.__enter__()
        cpus = self.ray.describe()["cpus"]
        if self.requested is not None and self.requested > cpus:
            self.ray.__exit__(None, None, None)
            raise EngineError(f"--workers {self.requested} is more than the Ray cluster's "
                              f"{cpus} CPUs: each download worker takes one; give --workers "
                              f"{cpus} at most")
        self.workers = self.requested or max(1, min(cpus, most_workers(self.settings)))
        return self

    def __exit__(self, *exc: object) -> None:
        self.ray.__exit__(*exc)

    def map(self, fn: Callable[[list, Fetcher], Any], params: FetchSettings,
            chunks: Iterable[list]) -> Iterator[list[Outcome]]:
        window = max(2 * self.workers, chunks_ahead(params))
        return self.ray.map_lanes(fn, Fetcher, shares(params, self.workers), chunks, window)

    def describe(self) -> dict:
        return {**self.ray.describe(), "workers": self.workers,
                "concurrency": self.settings.concurrency, "per_host": self.settings.per_host}
