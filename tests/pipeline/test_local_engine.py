"""The local engine's pool: kept across maps while the engine is open, each map with its own
params, and replaced when a worker dies."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.engines.local import PARAMS_WITH_EACH_CHUNK, LocalEngine, map_ordered


def pid_and_params(chunk: list[int], params: str) -> list[tuple[int, str, int]]:
    return [(os.getpid(), params, item) for item in chunk]


def dies_once(chunk: list[int], marker: str) -> list[int]:
    """Kills its worker the first time it meets item 0 (the marker file remembers)."""
    if 0 in chunk and not Path(marker).exists():
        Path(marker).touch()
        os._exit(1)
    return chunk


def run(engine: LocalEngine, params: str) -> list[tuple[int, str, int]]:
    chunks = ([k, k + 1] for k in range(0, 40, 2))
    return [row for rows in engine.map(pid_and_params, params, chunks) for row in rows]


def test_an_open_engine_runs_its_maps_on_the_same_workers_each_with_its_params():
    with LocalEngine(2) as engine:
        first, second = run(engine, "first"), run(engine, "second")
    assert [item for _, _, item in first] == list(range(40))  # in order
    assert {params for _, params, _ in first} == {"first"}
    assert {params for _, params, _ in second} == {"second"}  # not the warm worker's old ones
    # The same pool: its warm workers serve the second map, and no more than its two processes
    # ever ran (the pool may start its second worker only once the first map is under way).
    first_pids, second_pids = ({pid for pid, _, _ in rows} for rows in (first, second))
    assert first_pids & second_pids and len(first_pids | second_pids) <= 2
    assert os.getpid() not in first_pids


def test_large_params_go_once_to_each_worker_of_a_pool_of_their_own():
    """Params too large to travel with every chunk (an exclude set of many keys) are installed
    in each worker as the pool starts, so that map does not run on the open engine's pool."""
    large = "k" * (2 * PARAMS_WITH_EACH_CHUNK)
    with LocalEngine(2) as engine:
        small, big = run(engine, "small"), run(engine, large)
    assert {params for _, params, _ in big} == {large}
    assert [item for _, _, item in big] == list(range(40))
    assert not {pid for pid, _, _ in small} & {pid for pid, _, _ in big}


def test_a_map_outside_an_open_engine_has_a_pool_of_its_own():
    engine = LocalEngine(2)
    first, second = run(engine, "a"), run(engine, "b")
    assert not {pid for pid, _, _ in first} & {pid for pid, _, _ in second}


def test_a_dead_worker_is_replaced_and_the_engine_serves_the_next_map(tmp_path):
    marker = str(tmp_path / "died")
    with LocalEngine(2) as engine:
        survived = [x for rows in engine.map(dies_once, marker, ([k] for k in range(6)))
                    for x in rows]
        after = run(engine, "after")
    assert Path(marker).exists()  # a worker did die
    assert survived == list(range(6))  # its chunk ran again
    assert [item for _, _, item in after] == list(range(40))


def test_one_worker_maps_in_this_process():
    assert list(map_ordered(pid_and_params, "p", [[1]], workers=1)) == \
        [[(os.getpid(), "p", 1)]]
