"""Starting commands from tests as a user's shell would, whatever the test run inherited, and
never leaving one behind.

A test suite may itself run as a background job (`make test &`, a CI runner, nohup), and its
children would then inherit SIGINT as ignored; `started` gives every command the default
dispositions (or, with `sigint_ignored`, deliberately the background job's), its own process
group, and kills that whole group when the test ends, passes or fails. Waiting is on a
condition with a deadline (`wait_for`), never on a fixed sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script(package: str, *args: str) -> list[str]:
    """The command line of `pipeline`, `gan` or `analysis` as its console script runs it."""
    return [sys.executable, "-c", f"from core.launch import {package}; {package}()", *args]


def _dispositions(sigint_ignored: bool) -> Callable[[], None]:
    def reset() -> None:
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(number, signal.SIG_DFL)
        if sigint_ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    return reset


@contextmanager
def started(args: list[str], *, sigint_ignored: bool = False,
            **popen: object) -> Iterator[subprocess.Popen]:
    """`args` running in a process group of its own, killed (the whole group) when the block
    ends however it ends."""
    process = subprocess.Popen(args, start_new_session=True, cwd=popen.pop("cwd", ROOT),
                               preexec_fn=_dispositions(sigint_ignored), **popen)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def run(args: list[str], *, timeout: float, **popen: object) -> subprocess.CompletedProcess:
    """`subprocess.run` with text output captured, through `started`: on a timeout the whole
    process group is killed (not just the first process) and the test fails with the output."""
    with started(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                 **popen) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise AssertionError(f"{args[:4]}... still running after {timeout} s:\n"
                                 f"{stdout[-2000:]}{stderr[-2000:]}") from None
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def wait_for(condition: Callable[[], T], *, timeout: float, what: str) -> T:
    """The first true value of `condition()`, polled until `timeout` seconds have passed
    (then the test fails, saying `what` did not happen)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.01)
    return value


def read_line(process: subprocess.Popen, *, timeout: float, what: str) -> str:
    """The next line `process` writes to its stdout (a text pipe), waiting at most `timeout`
    seconds; an ended process or the deadline fails the test, naming `what` was awaited."""
    import select

    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    if not line:
        raise AssertionError(f"{what}: no line within {timeout} s (exit code "
                             f"{process.poll()})")
    return line
