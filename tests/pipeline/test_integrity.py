"""The edges a careless or hostile user finds: a folder two runs write at once, names that
collide once made tar-safe, files that vanish, hang or never end, folders that are not ours."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from pipeline.outputs import LOCK_NAME, OutputError, hold_output

HOLD_SCRIPT = """
import sys, time
from pipeline.outputs import hold_output
with hold_output(sys.argv[1], command="pipeline shards"):
    print("held", flush=True)
    time.sleep(60)
"""


def hold_in_another_process(out) -> subprocess.Popen:
    """A process holding `out`'s lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(out)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_folder_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    proc = hold_in_another_process(out)
    try:
        with pytest.raises(OutputError) as err, hold_output(out, command="pipeline faces"):
            pass
        message = str(err.value)
        assert "\n" not in message
        assert "`pipeline shards`" in message and f"pid {proc.pid}" in message
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_dies_with_its_holder(tmp_path):
    out = tmp_path / "out"
    proc = hold_in_another_process(out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with hold_output(out, command="pipeline shards") as held:
        assert held == out


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    with (hold_output(tmp_path, command="gan train"),
          pytest.raises(OutputError, match="`gan train`"),
          hold_output(tmp_path, command="gan train")):
        pass
    with hold_output(tmp_path, command="gan train"):  # released on leaving the block
        pass
    assert (tmp_path / LOCK_NAME).read_text() == ""


def test_out_under_a_regular_file_is_one_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"), \
            hold_output(tmp_path / "file" / "out", command="pipeline shards"):
        pass
