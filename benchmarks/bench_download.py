"""Images/s of `pipeline download` against img2dataset, the same local server, the same run.

A minimal local HTTP server (its own process) serves N JPEGs of ~500 px cut from real photographs;
both tools fetch all of them into WebDataset shards of the original bytes (img2dataset with
`--resize_mode no`, its defaults otherwise). Rounds alternate, medians are kept. Each rate is
images over the wall time of the whole command, start-up included, for both alike.

Then every answer is delayed by --latency seconds: with the network as the limit, a client
that keeps --concurrency requests in flight reaches concurrency / latency images/s; the target
is 0.8 of that.

img2dataset is not a project dependency: install it where this script can run it, e.g.
`python -m venv /tmp/i2d && /tmp/i2d/bin/pip install img2dataset`, and pass
`--img2dataset /tmp/i2d/bin/img2dataset` (without it, only the latency test runs).

    python benchmarks/bench_download.py [--n 3000] [--rounds 3] [--img2dataset PATH]
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click


class ImageServer(asyncio.Protocol):
    """A minimal HTTP/1.1 server: each request gets its prepared answer (an image, or a 404)
    `delay` seconds later. Far lighter than any framework, so on a shared 2-core machine the
    clients, not the server, use the CPU."""

    def __init__(self, answers: dict[bytes, bytes], delay: float):
        self.answers = answers
        self.delay = delay
        self.buffer = b""

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            answer = self.answers.get(head.split(b" ", 2)[1], NOT_FOUND)
            close = b"connection: close" in head.lower()
            if self.delay:
                asyncio.get_running_loop().call_later(self.delay, self.send, answer, close)
            else:
                self.send(answer, close)

    def send(self, answer: bytes, close: bool) -> None:
        if not self.transport.is_closing():
            self.transport.write(answer)
            if close:
                self.transport.close()


NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


def serve(folder: str, delay: float, port_out) -> None:
    """The server process: /<name> answers with the file <name> of `folder`."""
    answers = {}
    for path in Path(folder).glob("*.jpg"):
        body = path.read_bytes()
        answers[f"/{path.name}".encode()] = (
            b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: ImageServer(answers, delay), "127.0.0.1", 0,
                                          backlog=1024)
        port_out.send(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


class Server:
    """The image server in a process of its own (so it does not share a GIL with a client)."""

    def __init__(self, folder: Path, delay: float):
        ctx = mp.get_context("spawn")
        receive, send = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=serve, args=(str(folder), delay, send), daemon=True)
        self.process.start()
        self.port = receive.recv()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.join()


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    # albumentations (an img2dataset dependency) would otherwise look for updates online
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=env)
    return time.perf_counter() - start


def ours(url_list: Path, out: Path, concurrency: int) -> tuple[float, int, float]:
    """(seconds, images, the stage's own seconds: without Python's start-up) of one
    `pipeline download` run."""
    shutil.rmtree(out, ignore_errors=True)
    seconds = timed([str(Path(sys.executable).parent / "pipeline"), "download", str(url_list),
                     "--out", str(out), "--concurrency", str(concurrency), "--per-host",
                     str(concurrency), "--no-progress"])
    summary = json.loads((out / "summary.json").read_text())
    return seconds, summary["counts"].get("ok", 0), summary["seconds"]


def theirs(img2dataset: str, url_list: Path, out: Path) -> tuple[float, int]:
    """(seconds, images) of one img2dataset run, its defaults but --resize_mode no."""
    shutil.rmtree(out, ignore_errors=True)
    seconds = timed([img2dataset, "--url_list", str(url_list), "--input_format", "txt",
                     "--output_format", "webdataset", "--output_folder", str(out),
                     "--resize_mode", "no"])
    stats = [json.loads(p.read_text()) for p in out.glob("*_stats.json")]
    return seconds, sum(s["successes"] for s in stats)


@click.command()
@click.option("--n", default=3000, show_default=True, help="Number of JPEGs served.")
@click.option("--rounds", default=3, show_default=True, help="Alternating rounds (medians).")
@click.option("--concurrency", default=64, show_default=True,
              help="pipeline download --concurrency (and --per-host: one host serves all).")
@click.option("--latency", default=0.1, show_default=True,
              help="Seconds added to every answer in the latency test.")
@click.option("--latency-concurrency", default="16,64", show_default=True,
              help="--concurrency values for the latency test, comma-separated.")
@click.option("--img2dataset", "img2dataset", default=None,
              help="The img2dataset command (default: on PATH, else skipped).")
def main(n: int, rounds: int, concurrency: int, latency: float, latency_concurrency: str,
         img2dataset: str | None) -> None:
    from bench_shards import make_jpegs  # the same ~500 px JPEGs (run as a script: a sibling)

    img2dataset = img2dataset or shutil.which("img2dataset")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "jpegs").mkdir()
        paths = make_jpegs(tmp / "jpegs", n)
        mb = sum(p.stat().st_size for p in paths) / 2**20
        print(f"{n} JPEGs of ~500 px ({mb:.0f} MB) from a local HTTP server, "
              f"{rounds} alternating rounds, medians")
        url_list = tmp / "urls.txt"
        with Server(tmp / "jpegs", 0.0) as server:
            url_list.write_text("".join(f"http://127.0.0.1:{server.port}/{p.name}\n"
                                        for p in paths))
            rates: dict[str, list[float]] = {"ours": [], "img2dataset": []}
            for _ in range(rounds):
                seconds, got, _ = ours(url_list, tmp / "ours", concurrency)
                assert got == n, f"pipeline download fetched {got} of {n}"
                rates["ours"].append(n / seconds)
                if img2dataset:
                    seconds, got = theirs(img2dataset, url_list, tmp / "theirs")
                    assert got == n, f"img2dataset fetched {got} of {n}"
                    rates["img2dataset"].append(n / seconds)
        mine = statistics.median(rates["ours"])
        print(f"pipeline download --concurrency {concurrency}   : {mine:8.0f} images/s")
        if img2dataset:
            other = statistics.median(rates["img2dataset"])
            print(f"img2dataset --resize_mode no          : {other:8.0f} images/s")
            print(f"ratio pipeline download / img2dataset : {mine / other:8.2f}  (target >= 1.5)")
        else:
            print("img2dataset: not found (--img2dataset PATH), comparison skipped")

        with Server(tmp / "jpegs", latency) as server:
            url_list.write_text("".join(f"http://127.0.0.1:{server.port}/{p.name}\n"
                                        for p in paths))
            for slots in map(int, latency_concurrency.split(",")):
                runs = [ours(url_list, tmp / "ours", slots) for _ in range(rounds)]
                bound = slots / latency
                for what, rate in (("whole command", statistics.median(n / r[0] for r in runs)),
                                   ("stage", statistics.median(n / r[2] for r in runs))):
                    print(f"{latency * 1000:.0f} ms per answer, --concurrency {slots:3d}, "
                          f"{what:13s}: {rate:6.0f} images/s = {rate / bound:.2f} x concurrency"
                          f" / latency ({bound:.0f})  (target >= 0.8)")


if __name__ == "__main__":
    main()
