"""Stopping a long run cleanly, however it was started.

Ctrl-C (SIGINT) and SIGTERM both become a KeyboardInterrupt in the main thread, whatever
disposition the process inherited: a command started as a background job (`make test &`, a CI
runner, nohup) inherits SIGINT as *ignored*, and Python would then never raise one. Each
long-running command catches the interrupt where it knows what it has kept, and raises
`Interrupted` with that summary; the command lines print it and exit with 128 + the signal
number (130 for Ctrl-C, 143 for SIGTERM), as a shell does.

A signal that arrives while a module is being imported (numpy, torch, scikit-learn load for
seconds) is held until the import is done: an exception raised half-way through a library's
import leaves it half-initialized, and some libraries swallow it there and fail later with an
unrelated error. A second signal while the first is being handled ends the process at once: a
user pressing Ctrl-C twice means it. Worker processes ignore both signals (`ignore_in_worker`):
the process that started them stops them, so a terminal's Ctrl-C, sent to the whole process
group, does not fill the screen with one traceback per worker.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: list[int] = []  # the signals received so far, in order
_deferred = False  # inside `deferred_stop`: note the signal instead of raising
_held = threading.Event()  # a signal waits for an import to end (see _redeliver_after_import)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; the message says what it kept and how to continue."""


def stop_on_signals() -> None:
    """Make SIGINT and SIGTERM raise KeyboardInterrupt in this (main) thread from now on."""
    for number in STOP_SIGNALS:
        signal.signal(number, _on_signal)


def _on_signal(number: int, frame: FrameType | None) -> None:
    if _held.is_set():  # the held signal again (or another one meanwhile): raise once it may
        if not _importing(frame):
            _held.clear()
            raise KeyboardInterrupt
        return
    _received.append(number)
    if len(_received) > 1:  # a second signal: stop now, without cleaning up
        sys.stderr.write(f"\nstopped at once by a second {signal_name()}\n")
        sys.stderr.flush()
        os._exit(128 + number)
    if _deferred:
        return
    if _importing(frame):
        _held.set()
        threading.Thread(target=_redeliver_after_import, args=(number,), daemon=True).start()
        return
    raise KeyboardInterrupt


def _importing(frame: FrameType | None) -> bool:
    """Whether `frame` runs inside an import (a module's code or importlib's own)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _redeliver_after_import(number: int) -> None:
    """Send the held signal again once the main thread is out of every import (handlers run
    in the main thread; it raises there then)."""
    main = threading.main_thread().ident
    while _held.is_set():
        if not _importing(sys._current_frames().get(main)):
            os.kill(os.getpid(), number)
        time.sleep(0.02)


def signal_name() -> str:
    """The name of the signal that stopped the run ('SIGINT' when none was recorded: a
    KeyboardInterrupt raised by other means, e.g. in a notebook)."""
    return signal.Signals(_received[0]).name if _received else "SIGINT"


def exit_code() -> int:
    """A shell's exit code for the stopping signal: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + (_received[0] if _received else signal.SIGINT)


def stop_requested() -> bool:
    """Whether a stop signal arrived while it was deferred (see `deferred_stop`)."""
    return bool(_received)


@contextmanager
def deferred_stop() -> Iterator[None]:
    """Inside the block a stop signal is only noted (`stop_requested()` turns true), so a loop
    can finish the unit of work it is in (a training step) and stop between two of them."""
    global _deferred
    before, _deferred = _deferred, True
    try:
        yield
    finally:
        _deferred = before


def ignore_in_worker() -> None:
    """For worker processes: leave SIGINT and SIGTERM to the process that started them."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
