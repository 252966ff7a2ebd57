"""`pipeline download --engine ray`: download workers on a real Ray (started here, on 127.0.0.1
only) against the real test server: the same shards as the local engine for any number of
workers, the politeness limits held by the cluster as a whole, a killed worker retried, a
killed run resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from functools import partial
from pathlib import Path

import pytest

from pipeline.download import FetchSettings, download
from pipeline.download.lists import UrlListSource
from pipeline.download.stage import download_chunk, open_fetch_engine
from pipeline.engines import EngineError
from pipeline.runner import Stage, StageError, run_stage
from tests.pipeline.http_server import serving
from tests.pipeline.test_download import PATIENT, manifest, photos, shard_bytes
from tests.pipeline.test_engines import ray_in_this_process
from tests.processes import script, started, wait_for

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

# One row of each kind the Ray workers must give the same status and bytes for as the local
# engine (the fault statuses themselves are tested in test_download.py).
PATHS = ["/img/astronaut", "/missing/a", "/redirect/2/coffee", "/flaky/chelsea",
         "/mislabelled/grace.png", "/gzip/grace_hopper", "/html/b", "/noai/coffee"]
ROWS = 160  # five chunks of 32: every one of four workers gets one


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return photos()


@pytest.fixture(scope="module")
def four_cpu_ray():
    """A Ray of 4 CPUs in this process, which the download's Ray engine joins."""
    with ray_in_this_process(cpus=4):
        yield


def write_list(server, folder, paths) -> os.PathLike:
    lines = [server.url(path) + f"?copy={i}" for i, path in enumerate(paths)]
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


def fresh_count(server) -> None:
    """Start counting simultaneous connections anew, once the last run's are all closed."""
    wait_for(lambda: server.open_connections == 0, timeout=10, what="idle server")
    server.max_connections = 0


def assert_same_download(local, other) -> None:
    assert [(m["key"], m["status"], m.get("reason")) for m in manifest(other)] == \
        [(m["key"], m["status"], m.get("reason")) for m in manifest(local)]
    assert shard_bytes(other) == shard_bytes(local)
    assert (other / "index.json").read_text() == (local / "index.json").read_text()


@pytest.mark.usefixtures("four_cpu_ray")
def test_ray_workers_give_the_local_shards_and_hold_per_host_together(images, tmp_path):
    settings = FetchSettings(concurrency=8, per_host=4, **PATIENT)
    paths = [PATHS[i % len(PATHS)] for i in range(ROWS)]
    with serving(images, delay=0.02) as server:
        listed = write_list(server, tmp_path, paths)
        summaries, most = {}, {}
        for name, engine, workers in (("local", "local", None), ("ray4", "ray", 4),
                                      ("ray2", "ray", 2)):
            fresh_count(server)
            summaries[name] = download([listed], tmp_path / name, settings=settings,
                                       engine=engine, workers=workers, maxcount=25,
                                       progress=False)
            most[name] = server.max_connections
    for name in ("ray4", "ray2"):
        assert_same_download(tmp_path / "local", tmp_path / name)
        assert summaries[name]["counts"] == summaries["local"]["counts"]
        assert summaries[name]["engine"]["workers"] == int(name[-1])
    assert summaries["local"]["counts"]["ok"] == 100 and len(shard_bytes(tmp_path / "local")) == 4
    assert sum(summaries["ray4"]["counts"].values()) == ROWS
    # each of 4 workers holds one of the host's 4 slots: more than one connection at a time
    # means several workers fetched at once, and never more than --per-host in all
    assert all(1 <= n <= 4 for n in most.values()), most
    assert most["ray4"] >= 2, most


def client_process(port: int) -> int:
    """The pid of the process (not this one) holding the TCP connection from local `port`:
    the socket's inode from /proc/net/tcp, then the process with that socket open."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    inodes = {row[9] for row in rows if row[1].endswith(f":{port:04X}")}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        except OSError:  # ended meanwhile, or not ours
            continue
        if any(f"socket:[{inode}]" in links for inode in inodes):
            return int(pid)
    raise AssertionError(f"no process holds the connection from port {port}")


@pytest.mark.usefixtures("four_cpu_ray")
def test_a_killed_download_worker_is_retried_and_the_shards_are_unchanged(images, tmp_path):
    settings = FetchSettings(concurrency=4, per_host=4, **PATIENT)
    paths = ["/hold/astronaut"] + [PATHS[i % len(PATHS)] for i in range(1, 64)]
    with serving(images) as server:
        listed = write_list(server, tmp_path, paths)
        killed: list[int] = []

        def kill_the_held_worker() -> None:  # the process whose request /hold/ keeps waiting
            wait_for(lambda: server.held, timeout=60, what="the held request")
            pid = client_process(server.held[0])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

        killer = threading.Thread(target=kill_the_held_worker)
        killer.start()
        try:
            summary = download([listed], tmp_path / "ray", settings=settings, engine="ray",
                               workers=2, maxcount=10, progress=False)
        finally:
            killer.join()
        download([listed], tmp_path / "local", settings=settings, maxcount=10, progress=False)
    assert len(killed) == 1
    assert server.hits["/hold/astronaut?copy=0"] == 3  # held, fetched again on Ray, then locally
    assert summary["counts"]["ok"] > 0
    assert_same_download(tmp_path / "local", tmp_path / "ray")


@pytest.mark.usefixtures("four_cpu_ray")
def test_a_killed_local_run_resumes_on_ray_to_the_same_shards(images, tmp_path):
    paths = [f"/img/{name}" for name in ("astronaut", "coffee", "chelsea", "grace_hopper")] * 10
    with serving(images, delay=0.2) as server:  # ~4 s: time to stop the run midway
        listed = write_list(server, tmp_path, paths)
        stopped = tmp_path / "stopped"
        with started(script("pipeline", "download", str(listed), "--out", str(stopped),
                            "--maxcount", "4", "--concurrency", "2", "--no-progress"),
                     stderr=subprocess.DEVNULL) as process:
            wait_for(lambda: (stopped / "download-000001.tar").exists(), timeout=60,
                     what="the second shard")
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        server.delay = 0  # the rest at full speed
        kept = json.loads((stopped / "progress.json").read_text())["records_done"]
        assert 4 <= kept < len(paths)
        settings = FetchSettings(concurrency=2)
        summary = download([listed], stopped, settings=settings, engine="ray", workers=2,
                           maxcount=4, resume=True, progress=False)
        assert summary["resumed_from_record"] == kept
        assert all(server.hits[f"{path}?copy={i}"] == 1 for i, path in enumerate(paths[:kept]))
        download([listed], tmp_path / "whole", settings=settings, maxcount=4, progress=False)
    assert_same_download(tmp_path / "whole", stopped)
    assert {m["status"] for m in manifest(stopped)} == {"ok"}


async def deadly_download_chunk(records: list, fetcher, *, key: str) -> list:
    """`download_chunk`, but the process running the chunk holding `key` dies (SIGKILL),
    every time."""
    if any(rec.key == key for rec in records):
        os.kill(os.getpid(), signal.SIGKILL)
    return await download_chunk(records, fetcher)


@pytest.mark.usefixtures("four_cpu_ray")
def test_a_chunk_that_always_kills_its_download_worker_is_one_line(images, tmp_path):
    settings = FetchSettings(concurrency=2, per_host=2, **PATIENT)
    with serving(images) as server:
        listed = write_list(server, tmp_path, ["/img/coffee"] * 64)
        stage = Stage("download", partial(deadly_download_chunk, key="000000040"), settings,
                      {}, "ok", index_info={"format": "original"}, contact_sheet=False)
        with pytest.raises(StageError) as refused:
            run_stage(stage, UrlListSource([listed]), tmp_path / "out", workers=1,
                      engine=open_fetch_engine("ray", settings, 2, None), maxcount=10,
                      chunk_size=32, progress=False)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("download: chunk 1 (first input '000000032'): its worker process "
                              "died each of the 4 times it ran")
    assert message.endswith(f"3 finished shard(s) in {tmp_path / 'out'} hold the first 30: "
                            "rerun with --resume to continue from there")


@pytest.mark.usefixtures("four_cpu_ray")
def test_more_workers_than_the_cluster_has_cpus_is_refused_before_out_is_touched(tmp_path):
    (tmp_path / "list.txt").write_text("http://127.0.0.1:9/x.jpg\n")
    with pytest.raises(EngineError) as refused:
        download([tmp_path / "list.txt"], tmp_path / "out", engine="ray", workers=5,
                 progress=False)
    assert str(refused.value) == ("--workers 5 is more than the Ray cluster's 4 CPUs: each "
                                  "download worker takes one; give --workers 4 at most")
    assert not (tmp_path / "out").exists()
    assert ray.is_initialized()  # the cluster this process joined is left running
