"""The one rule for output folders, shared by every command that writes one.

`--out` must be a folder (created when missing). A command writes only into an empty folder or
into one it owns: the first thing it writes there is `OUT/.owner.json`, naming the command
(`pipeline shards`, `gan train`, ...). A folder that holds anything else (someone's files, or
another command's output) is refused, with or without `--overwrite`: `--overwrite` replaces a
command's own finished run, and removes only the files that command writes, so it can never
delete someone else's data or leave another stage's shards mixed into the new output. (Deleting
a folder of another command is a decision for a person, not for a flag.)

A finished run (its summary file is there) is never replaced silently: the command refuses
unless `--overwrite` is given. What a command does with an *unfinished* run of its own (start
over, or continue with `--resume`) is its own business; this module only decides whether it
may touch the folder at all.

One writer at a time: `hold_output` takes an exclusive lock on the folder for the whole run, so
a second command pointed at the same folder stops at once, naming the first, instead of
interleaving its manifest or metrics with it. The lock is an `fcntl.flock` on `OUT/.lock`; the
operating system drops it when the holding process ends, however it ends (kill -9 included), so
a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.errors import UserError
from core.files import write_json_atomic

LOCK_NAME = ".lock"
OWNER_NAME = ".owner.json"
# The files this module makes in an output folder: bookkeeping, never data (sources skip them).
MARKER_NAMES = frozenset({LOCK_NAME, OWNER_NAME})


class OutputError(UserError):
    """The output folder cannot be used as asked; the message says what to do instead."""


@contextmanager
def hold_output(out: Path, *, command: str) -> Iterator[Path]:
    """Hold the exclusive lock on `out` (created if missing) while the block runs; yields `out`
    as a Path. A folder already held by another process is an OutputError naming the holder
    (its command, pid, host and start time). A folder `command` may not use is refused before
    anything is created in it, the lock included."""
    out = make_folder(out)
    check_may_use(out, command=command)
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock(fd, out)
        _write_holder(fd, {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        try:
            yield out
        finally:
            # Emptied while still held: a reader never sees a finished holder as the current one.
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def own_output(out: Path, *, command: str, overwrite: bool,
               finished: str = "summary.json") -> Iterator[Path]:
    """`hold_output` and `claim_output` together, for a command that writes its folder in one
    go: the block runs holding `out`, which `command` owns."""
    with hold_output(out, command=command) as held:
        yield claim_output(held, command=command, overwrite=overwrite, finished=finished)


def make_folder(out: Path) -> Path:
    """`out` as a Path, created with its parents; a file in the way is an OutputError."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = next(p for p in out.parents if p.exists())
        raise OutputError(f"cannot create {out}: {blocking} is a file, not a folder; "
                          "choose another --out") from None
    return out


def claim_output(out: Path, *, command: str, overwrite: bool,
                 finished: str = "summary.json") -> Path:
    """Create `out` if needed, make sure `command` owns it (an empty folder becomes its own),
    and refuse a finished run (`out/finished` exists) unless `overwrite`. Returns `out` as a
    Path. Call it while holding the folder (`hold_output`)."""
    out = make_folder(out)
    if check_output(out, command=command, overwrite=overwrite, finished=finished) is None:
        write_json_atomic(out / OWNER_NAME, {"command": command})
    return out


def check_output(out: Path, *, command: str, overwrite: bool,
                 finished: str = "summary.json") -> str | None:
    """What `claim_output` will refuse, found without touching anything: a command that works
    a while before it writes calls this first, so a wrong --out costs nothing. Returns the
    folder's owner (None when it is new or empty)."""
    out = Path(out)
    if not out.exists():
        return None
    if not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder; choose another --out")
    owner = check_may_use(out, command=command)
    if (out / finished).exists() and not overwrite:
        raise OutputError(
            f"{out} already holds a finished run ({finished}); "
            "pass --overwrite to replace it, or choose another --out"
        )
    return owner


def check_may_use(out: Path, *, command: str) -> str | None:
    """Refuse `out` unless it is empty (a lock left by an earlier attempt aside) or owned by
    `command`; returns its owner (None for an empty folder). Reads only."""
    owner = read_owner(out)
    if owner is None:
        found = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
        if found:
            more = f" and {len(found) - 1} more" if len(found) > 1 else ""
            raise OutputError(f"{out} is not empty ({found[0]}{more}) and was not written by "
                              f"`{command}`; choose an empty or new --out")
    elif owner != command:
        raise OutputError(f"{out} holds the output of `{owner}` ({OWNER_NAME}), not of "
                          f"`{command}`; choose another --out")
    return owner


def read_owner(out: Path) -> str | None:
    """The command that owns `out`, from its marker; None when there is none."""
    try:
        with open(Path(out) / OWNER_NAME, encoding="utf-8") as f:
            return json.load(f)["command"]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        raise OutputError(f"{Path(out) / OWNER_NAME} is damaged; choose another --out") from None


def _lock(fd: int, out: Path) -> None:
    """The exclusive lock on `out`'s lock file; held by another process, or a file system that
    has no locks (some network and FUSE mounts), is an OutputError."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputError(f"{out} is in use by {_describe_holder(fd)}; wait for it to end or "
                          "choose another --out") from None
    except OSError as err:
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        raise OutputError(f"{out}: its file system cannot lock files ({err.strerror}), so two "
                          "runs could write it at once; choose an --out on a local disk") from None


def _write_holder(fd: int, holder: dict) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode("utf-8"), 0)


def _describe_holder(fd: int) -> str:
    """The holder written in the lock file, in words (it may not have written it yet)."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return (f"`{holder['command']}` (pid {holder['pid']} on {holder['host']}, "
                f"since {holder['started']})")
    except (ValueError, KeyError, TypeError):
        return "another process"
