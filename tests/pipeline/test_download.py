"""`pipeline download` against a real HTTP server on 127.0.0.1 (tests/pipeline/http_server.py):
every fault the web gives ends in its own status, the limits hold, shards are byte-identical
whatever the concurrency, and a killed run resumes to the same shards."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import demo
from pipeline.cli import main as cli
from pipeline.download import FetchSettings, download
from pipeline.download.lists import UrlListSource
from pipeline.sinks import read_index
from tests.pipeline.http_server import SERVER_THREAD, serving
from tests.processes import ROOT, run, script, started, wait_for

# The fault list's one slow answer (/trickle) sends a byte every TRICKLE_GAP (6 s): a read
# timeout of 3 s ends it, and leaves a busy machine room between two reads of an ordinary
# answer; the total of 15 s is never what ends one here. (The ordinary answers that timed out
# in earlier CI runs were the test server's own stall, mended in http_server._hung_up.)
FAST = dict(retries=2, retry_wait=0.05, connect_timeout=2.0, read_timeout=3.0,
            total_timeout=15.0, max_bytes=300_000)
# For lists without a slow answer: a long read timeout, so that a busy machine cannot turn an
# ordinary answer into a timeout in one run and not in the run it is compared with.
PATIENT = {**FAST, "read_timeout": 10.0, "total_timeout": 30.0}


def jpeg(rgb: np.ndarray, side: int = 384) -> bytes:
    """A real photo as the web serves it: a JPEG of a few tens of kB."""
    import cv2

    return demo.encode(cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA), "JPEG",
                       quality=85)


def photos() -> dict[str, bytes]:
    """The test server's images, by name."""
    found = {name.split(".")[0]: jpeg(demo.photo(name))
             for name in ("astronaut.png", "grace_hopper.jpg", "coffee.png", "chelsea.png")}
    found["grace.png"] = found["grace_hopper"]  # a JPEG behind a .png name
    return found


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return photos()


@pytest.fixture(scope="module")
def crops() -> dict[str, bytes]:
    """20 different real images (crops of one photo), for runs long enough to interrupt."""
    rgb = demo.photo("chelsea.png")
    return {f"c{i}": jpeg(rgb[i * 3:i * 3 + 200, i * 4:i * 4 + 200], side=200) for i in range(20)}


def running_threads() -> set[threading.Thread]:
    """This process's threads, less tqdm's monitor (tqdm's own, kept for the process)."""
    return {t for t in threading.enumerate() if t.name != "tqdm_monitor"}


def samples(out) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes} over the shards of a stage output folder."""
    found: dict[str, dict[str, bytes]] = {}
    for shard in read_index(out):
        with tarfile.open(out / shard["name"]) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                found.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return found


def manifest(out) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def shard_bytes(out) -> dict[str, bytes]:
    return {s["name"]: (out / s["name"]).read_bytes() for s in read_index(out)}


# ---- every fault ends in its status ----------------------------------------------------------

FAULTS = [  # (path, name column, expected status)
    ("/img/astronaut", "plain image", "ok"),
    ("/missing/x.jpg", "404", "http_error"),
    ("/flaky/chelsea", "500 then 200", "ok"),
    ("/busy/coffee", "429 Retry-After: 1 then 200", "ok"),
    ("/trickle/x.jpg", "slower than the read timeout", "timeout"),
    ("/endless/x.jpg", "endless body", "too_large"),
    ("/redirect/3/astronaut", "three redirects", "ok"),
    ("/loop/a", "redirect loop", "redirect_loop"),
    ("/html/x.jpg", "HTML served as image/jpeg", "not_image"),
    ("/mislabelled/grace.png", "JPEG served as text/plain", "ok"),
    ("/truncated/coffee", "half the Content-Length", "connection_error"),
    ("/gzip/grace_hopper", "gzip content encoding", "ok"),
    ("/reset/x.jpg", "connection reset", "connection_error"),
    ("/noai/astronaut", "X-Robots-Tag: noai", "opted_out"),
]


@pytest.fixture(scope="module")
def fault_run(images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    threads = running_threads()
    with serving(images) as server:
        rows = [(server.url(path), name) for path, name, _ in FAULTS]
        rows += [("ftp://127.0.0.1/x.jpg", "not http"), ("", "empty cell"),
                 (server.url("/img/astronaut"), "the first URL again")]
        with open(folder / "list.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["url", "name"])
            writer.writerows(rows)
        summary = download([folder / "list.csv"], folder / "out", progress=False,
                           settings=FetchSettings(concurrency=8, per_host=2, **FAST))
        left = [t for t in running_threads() - threads  # the client's, if any
                if t.name != SERVER_THREAD and not t.name.endswith("request_thread)")]
    assert running_threads() == threads  # and the server's are joined too
    yield folder / "out", summary, server, rows, left


def test_every_fault_ends_in_its_status(fault_run):
    out, summary, _, rows, _ = fault_run
    lines = manifest(out)
    expected = [status for _, _, status in FAULTS] + ["bad_url", "bad_url", "duplicate_url"]
    assert [line["status"] for line in lines] == expected
    assert [line["key"] for line in lines] == [f"{i:09d}" for i in range(len(rows))]
    assert summary["inputs"] == len(rows) == sum(summary["counts"].values())
    assert summary["counts"]["ok"] == 6 == summary["samples"]
    by_name = {row[1]: line for row, line in zip(rows, lines, strict=True)}
    assert by_name["404"]["http_status"] == 404
    assert by_name["500 then 200"]["attempts"] == 2
    assert by_name["connection reset"]["attempts"] == 3  # --retries 2
    assert by_name["three redirects"]["final_url"].endswith("/img/astronaut")
    assert "redirected back to" in by_name["redirect loop"]["reason"]
    assert "HTML page, served as image/jpeg" in by_name["HTML served as image/jpeg"]["reason"]
    assert "not an http(s) URL" in by_name["not http"]["reason"]
    assert by_name["the first URL again"]["reason"] == "same URL as row 000000000"
    assert all(line["seconds"] >= 0 and "fetched_at" in line for line in lines[:14])


def test_retry_after_is_honoured_and_the_user_agent_names_the_tool(fault_run):
    _, _, server, _, _ = fault_run
    times = [t for path, t, _ in server.log if path == "/busy/coffee"]
    assert len(times) == 2 and times[1] - times[0] >= 0.95
    assert {agent.split(" ")[0] for _, _, agent in server.log} == {"dcgan-pipeline/0.1.0"}


def test_no_thread_outlives_the_download(fault_run):
    *_, left = fault_run
    assert not left, [thread.name for thread in left]


def test_the_server_never_sees_more_connections_than_per_host(fault_run):
    _, _, server, _, _ = fault_run
    assert 1 <= server.max_connections <= 2


def test_samples_hold_the_original_bytes_and_their_provenance(fault_run, images):
    out, _, _, _, _ = fault_run
    found = samples(out)
    assert sorted(found) == ["000000000", "000000002", "000000003", "000000006", "000000009",
                             "000000011"]
    mislabelled = found["000000009"]
    assert set(mislabelled) == {"jpg", "json"}  # the sniffed type names the member, not the URL
    meta = json.loads(mislabelled["json"])
    assert mislabelled["jpg"] == images["grace.png"]
    assert meta["content_type"] == "image/jpeg" and meta["served_type"] == "text/plain"
    assert meta["sha256"] == hashlib.sha256(images["grace.png"]).hexdigest()
    assert meta["bytes"] == len(images["grace.png"]) and meta["columns"] == {
        "name": "JPEG served as text/plain"}
    assert found["000000011"]["jpg"] == images["grace_hopper"]  # gzip undone
    redirected = json.loads(found["000000006"]["json"])
    assert redirected["redirects"] == 3 and redirected["url"].endswith("/redirect/3/astronaut")
    assert not {"fetched_at", "seconds"} & set(meta)  # no clock times: shards reproduce


def test_ignore_opt_out_fetches_and_is_recorded(images, tmp_path):
    with serving(images) as server:
        (tmp_path / "list.txt").write_text(f"# one row\n{server.url('/noai/astronaut')}\n")
        summary = download([tmp_path / "list.txt"], tmp_path / "out", progress=False,
                           settings=FetchSettings(ignore_opt_out=True, **PATIENT))
    assert summary["counts"] == {"ok": 1}
    assert summary["settings"]["ignore_opt_out"] is True and summary["opt_out_ignored"] == 1
    meta = json.loads(samples(tmp_path / "out")["000000000"]["json"])
    assert meta["opt_out_ignored"] == "noai"


# ---- reproducible, limited, resumable ---------------------------------------------------------

def test_shards_are_identical_for_any_concurrency(images, tmp_path):
    paths = ["/img/astronaut", "/missing/a", "/redirect/2/coffee", "/img/chelsea",
             "/mislabelled/grace.png", "/gzip/grace_hopper", "/html/b", "/img/coffee"] * 2
    with serving(images, delay=0.02) as server:
        lines = [server.url(p) + f"?copy={i // 8}" for i, p in enumerate(paths)]
        (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
        runs = {}
        for concurrency, per_host in ((1, 1), (8, 3)):
            wait_for(lambda: server.open_connections == 0, timeout=10, what="idle server")
            server.max_connections = 0
            out = tmp_path / f"c{concurrency}"
            download([tmp_path / "list.txt"], out, maxcount=3, progress=False,
                     settings=FetchSettings(concurrency=concurrency, per_host=per_host, **PATIENT))
            assert 1 <= server.max_connections <= per_host
            runs[concurrency] = out
    one, many = runs[1], runs[8]
    assert shard_bytes(one) == shard_bytes(many) and len(shard_bytes(one)) == 4
    assert (one / "index.json").read_text() == (many / "index.json").read_text()
    assert [(m["key"], m["status"]) for m in manifest(one)] == \
        [(m["key"], m["status"]) for m in manifest(many)]


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM])
def test_a_stopped_run_resumes_to_the_same_shards(crops, tmp_path, stop):
    paths = [f"/img/{name}?copy={k}" for k in range(3) for name in crops]  # 60 distinct rows
    with serving(crops, delay=0.2) as server:  # ~6 s a run: time to stop it midway
        (tmp_path / "list.txt").write_text("".join(server.url(path) + "\n" for path in paths))
        args = ["download", str(tmp_path / "list.txt"), "--maxcount", "4", "--concurrency", "2",
                "--no-progress"]
        stopped = tmp_path / "stopped"
        with started(script("pipeline", *args, "--out", str(stopped)), stderr=subprocess.PIPE,
                     text=True) as process:
            wait_for(lambda: (stopped / "download-000001.tar").exists(), timeout=60,
                     what="the second shard")
            os.killpg(process.pid, stop)
            assert process.wait(timeout=30) == (-9 if stop == signal.SIGKILL else 143)
            message = process.stderr.read()
        if stop == signal.SIGTERM:
            assert "stopped by SIGTERM" in message and "--resume" in message
        kept = json.loads((stopped / "progress.json").read_text())["records_done"]
        assert 4 <= kept < len(paths)  # the checkpoint may trail the second shard's rename
        finished = run(script("pipeline", *args, "--out", str(stopped), "--resume"), timeout=60)
        assert finished.returncode == 0, finished.stderr
        for path in paths[:kept]:  # the rows of finished shards were not fetched again
            assert server.hits[path] == 1
        download([tmp_path / "list.txt"], tmp_path / "whole", maxcount=4, progress=False,
                 settings=FetchSettings(concurrency=2))
    assert shard_bytes(stopped) == shard_bytes(tmp_path / "whole")
    assert [m["key"] for m in manifest(stopped)] == [f"{i:09d}" for i in range(len(paths))]
    assert {m["status"] for m in manifest(stopped)} == {"ok"}


# ---- the flow: URL list -> download -> faces / shards -----------------------------------------

@pytest.mark.slow
def test_downloaded_shards_feed_faces_and_shards(images, tmp_path):
    with serving(images) as server:
        (tmp_path / "faces.txt").write_text("".join(
            server.url(f"/img/{name}") + "\n" for name in ("astronaut", "grace_hopper", "coffee")))
        result = CliRunner().invoke(cli, ["download", str(tmp_path / "faces.txt"), "--out",
                                          str(tmp_path / "dl"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("download: 3 of 3 inputs ok")
    result = CliRunner().invoke(cli, ["faces", str(tmp_path / "dl"), "--out",
                                      str(tmp_path / "faces"), "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = manifest(tmp_path / "faces")
    assert [m["key"] for m in lines] == ["000000000", "000000001", "000000002"]
    assert [m["status"] for m in lines] == ["faces", "faces", "no_face"]
    result = CliRunner().invoke(cli, ["shards", str(tmp_path / "faces"), "--out",
                                      str(tmp_path / "train"), "--workers", "1",
                                      "--no-progress"])
    assert result.exit_code == 0 and "2 of 2 inputs kept" in result.output, result.output


# ---- lists ------------------------------------------------------------------------------------

def test_every_list_format_gives_rows_with_their_columns(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    (tmp_path / "a.txt").write_text("# comment\n\nhttp://h/1.jpg\n  http://h/2.jpg  \n")
    (tmp_path / "b.tsv").write_text("name\tlink\nAda\thttp://h/3.jpg\nBob\t\n")
    (tmp_path / "c.jsonl").write_text('{"link": "http://h/4.jpg", "n": 1}\nnot json\n[1]\n\n')
    pq.write_table(pa.table({"link": ["http://h/5.jpg", "http://h/1.jpg"], "w": [5, 6]}),
                   tmp_path / "d.parquet")
    txt = UrlListSource([tmp_path / "a.txt"])
    assert txt.count() == 2 and [r.meta["url"] for r in txt] == ["http://h/1.jpg",
                                                                 "http://h/2.jpg"]
    source = UrlListSource([tmp_path / n for n in ("b.tsv", "c.jsonl", "d.parquet")],
                           url_col="link")
    records = list(source)
    assert source.count() == len(records) == 7
    assert [(r.meta["url"], r.meta["columns"], r.error) for r in records] == [
        ("http://h/3.jpg", {"name": "Ada"}, None),
        (None, {"name": "Bob"}, "bad_url: empty 'link' cell"),
        ("http://h/4.jpg", {"n": 1}, None),
        (None, {}, "bad_url: line 2: not JSON (Expecting value)"),
        (None, {}, "bad_url: line 3: not a JSON object"),
        ("http://h/5.jpg", {"w": 5}, None),
        ("http://h/1.jpg", {"w": 6}, None),
    ]
    assert [r.meta["list"] for r in records][-1] == "d.parquet"


@pytest.mark.parametrize("args, message", [
    (["--url-col", "link"], "no column 'link' (columns: url, name)"),
    (["--workers", "2"], "--workers 2 is for --engine ray: the local engine fetches from one"),
    (["--engine", "ray", "--workers", "5", "--per-host", "4"],
     "--workers 5 is more than --per-host 4 or --concurrency 64 allow"),
    (["--ray-address", "127.0.0.1:6379"], "--ray-address 127.0.0.1:6379 is for --engine ray"),
    (["--engine", "ray", "--ray-address", "127.0.0.1:9"],  # nothing listens on port 9
     "cannot join the Ray cluster at 127.0.0.1:9: Connection refused"),
])
def test_user_errors_end_in_one_line(tmp_path, args, message):
    (tmp_path / "list.csv").write_text("url,name\nhttp://127.0.0.1:9/x.jpg,x\n")
    result = CliRunner().invoke(cli, ["download", str(tmp_path / "list.csv"), "--out",
                                      str(tmp_path / "out"), "--no-progress", *args])
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_list_of_another_kind_is_refused(tmp_path):
    (tmp_path / "list.xlsx").write_bytes(b"PK")
    result = CliRunner().invoke(cli, ["download", str(tmp_path / "list.xlsx"), "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 1 and "not a URL list (expected one of .txt" in result.output


def test_jsonl_columns_survive_in_the_sample(images, tmp_path):
    with serving(images) as server:
        row = {"url": server.url("/img/coffee"), "caption": "a cup", "person": "nobody"}
        (tmp_path / "l.jsonl").write_text(json.dumps(row) + "\n")
        download([tmp_path / "l.jsonl"], tmp_path / "out", progress=False,
                 settings=FetchSettings(**PATIENT))
    meta = json.loads(samples(tmp_path / "out")["000000000"]["json"])
    assert meta["columns"] == {"caption": "a cup", "person": "nobody"}
    assert meta["list"] == "l.jsonl" and meta["row"] == 1
    assert io.BytesIO(samples(tmp_path / "out")["000000000"]["jpg"]).read(3) == b"\xff\xd8\xff"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_shards_downloads_face_urls_first(tmp_path):
    result = run(["make", "-n", "-C", str(ROOT), "shards", "FACES_URLS=urls.txt",
                  f"DATA={tmp_path}"], timeout=30)
    lines = [line for line in result.stdout.splitlines() if "bin/pipeline" in line]
    download_line = next(i for i, line in enumerate(lines) if " download urls.txt " in line)
    assert f"--out {tmp_path}/downloads/faces" in lines[download_line]
    assert f"faces {tmp_path}/downloads/faces --out" in lines[download_line + 1]


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "list.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    result = CliRunner().invoke(cli, ["download", str(tmp_path / "list.parquet"), "--out",
                                      str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 1 and "pip install 'dcgan-pipeline[parquet]'" in result.output
    assert len(result.output.strip().splitlines()) == 1
