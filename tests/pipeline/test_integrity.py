"""The edges a careless or hostile user finds: a folder two runs write at once, names that
collide once made tar-safe, files that vanish, hang or never end, folders that are not ours."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from core.files import read_jsonl
from core.outputs import LOCK_NAME, OutputError, hold_output
from pipeline.cli import main as cli
from pipeline.runner import Stage, StageError, run_stage
from pipeline.shards import ShardParams, make_shards, shard_chunk
from pipeline.sources import SourceError, open_sources, read_shards
from pipeline.statuses import KEPT
from tests.conftest import (
    COLLIDING_NAMES,
    make_fifo,
    make_foreign_out,
    make_sparse_file,
    write_photos,
)
from tests.processes import read_line, run, started

HOLD_SCRIPT = """
import signal, sys
from core.outputs import hold_output
with hold_output(sys.argv[1], command="pipeline shards"):
    print("held", flush=True)
    signal.pause()
"""


@contextlib.contextmanager
def held_elsewhere(out) -> Iterator[subprocess.Popen]:
    """Another process holding `out`'s lock until the block ends (then it is killed)."""
    with started([sys.executable, "-c", HOLD_SCRIPT, str(out)], stdout=subprocess.PIPE,
                 text=True) as proc:
        assert read_line(proc, timeout=60, what="the lock held").strip() == "held"
        yield proc


def test_a_held_folder_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    with held_elsewhere(out) as proc:
        with pytest.raises(OutputError) as err, hold_output(out, command="pipeline faces"):
            pass
        message = str(err.value)
        assert "\n" not in message
        assert "`pipeline shards`" in message and f"pid {proc.pid}" in message


def test_the_lock_dies_with_its_holder(tmp_path):
    out = tmp_path / "out"
    with held_elsewhere(out) as proc:
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


# ---- through the stages ---------------------------------------------------------------------

def shards_cli(*args) -> object:
    return CliRunner().invoke(cli, ["shards", *map(str, args), "--size", "32", "--workers", "1"])


def one_line_error(result) -> str:
    """The error a user sees: exit code 1, one line, no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def statuses(out: Path) -> dict[str, dict]:
    return {line["key"]: line for line in read_jsonl(out / "manifest.jsonl")}


def sample_keys(out: Path) -> list[str]:
    return [s["__key__"] for s in read_shards(sorted(str(p) for p in out.glob("shards-*.tar")))]


def test_names_that_collide_once_tar_safe_stay_distinct(tiles, tmp_path):
    write_photos(tmp_path / "src", COLLIDING_NAMES, tiles)
    summary = make_shards([tmp_path / "src"], tmp_path / "out", size=32, workers=1,
                          progress=False)
    assert summary["counts"] == {"kept": 4}
    keys = sample_keys(tmp_path / "out")
    assert len(set(keys)) == 4 and "a_b_png" in keys  # the first keeps today's key
    originals = {json.loads(s["json"])["source_key"]
                 for s in read_shards([str(tmp_path / "out" / "shards-000000.tar")])}
    assert originals == set(COLLIDING_NAMES)


def test_a_resumed_run_keeps_keys_unique_across_the_kept_shards(tiles, tmp_path):
    write_photos(tmp_path / "src", COLLIDING_NAMES, tiles)
    out = tmp_path / "out"
    make_shards([tmp_path / "src"], out, size=32, maxcount=1, workers=1, progress=False)
    clean = sample_keys(out)
    progress = {"stage": "shards", "records_done": 2}  # as if killed after two shards
    source = open_sources([tmp_path / "src"], skip=out)
    stage_settings = json.loads((out / "summary.json").read_text())["settings"]
    (out / "summary.json").unlink()
    for name in ("shards-000002.tar", "shards-000003.tar"):
        (out / name).unlink()
    offset = sum(len(line) for line in (out / "manifest.jsonl").read_bytes().splitlines(True)[:2])
    progress.update(settings=stage_settings, manifest_offset=offset, counts={"kept": 2},
                    shards=[{"name": "shards-000000.tar", "samples": 1},
                            {"name": "shards-000001.tar", "samples": 1}],
                    inputs={"count": source.count(), "fingerprint": source.fingerprint()})
    (out / "progress.json").write_text(json.dumps(progress))
    make_shards([tmp_path / "src"], out, size=32, maxcount=1, workers=1, resume=True,
                progress=False)
    assert sample_keys(out) == clean


def test_a_second_run_into_a_held_folder_stops_at_once(tiles, tmp_path):
    write_photos(tmp_path / "src", ["x.png"], tiles)
    with held_elsewhere(tmp_path / "out") as proc:
        line = one_line_error(shards_cli(tmp_path / "src", "--out", tmp_path / "out"))
    assert "in use by `pipeline shards`" in line and f"pid {proc.pid}" in line
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_a_file_that_vanishes_after_listing_is_recorded_unreadable(tiles, tmp_path):
    paths = write_photos(tmp_path / "src", ["1.png", "2.png", "3.png"], tiles)
    source = open_sources([tmp_path / "src"], skip=tmp_path / "out")
    assert source.count() == 3  # the run's input set is taken here
    paths[1].unlink()
    stage = Stage("shards", shard_chunk, ShardParams(size=32), {}, KEPT)
    summary = run_stage(stage, source, tmp_path / "out", workers=1, progress=False)
    assert summary["counts"] == {"kept": 2, "unreadable": 1}
    assert "No such file" in statuses(tmp_path / "out")["2.png"]["reason"]


def test_an_out_inside_the_source_is_never_read(tiles, tmp_path):
    write_photos(tmp_path, ["1.png", "2.png"], tiles)
    for overwrite in (False, True):
        summary = make_shards([tmp_path], tmp_path / "out", size=32, workers=1,
                              overwrite=overwrite, progress=False)
        assert summary["inputs"] == 2
    with pytest.raises(SourceError, match="inside --out"):
        make_shards([tmp_path / "out"], tmp_path / "out", size=32, workers=1, overwrite=True,
                    progress=False)


def test_resume_over_a_changed_source_is_refused(tiles, tmp_path):
    write_photos(tmp_path / "src", ["1.png", "2.png", "3.png"], tiles)
    out = tmp_path / "out"
    crash = {"at": "3.png"}  # a stage that dies on one record, after a shard was completed

    def fragile(records, params):
        if any(r.key == crash["at"] for r in records):
            raise KeyboardInterrupt
        return shard_chunk(records, params)

    stage = Stage("shards", fragile, ShardParams(size=32), {"size": 32}, KEPT)
    with pytest.raises(KeyboardInterrupt):
        run_stage(stage, open_sources([tmp_path / "src"], skip=out), out, workers=1,
                  maxcount=1, chunk_size=1, progress=False)
    assert (out / "progress.json").exists()
    write_photos(tmp_path / "src", ["0.png"], tiles[5:])
    with pytest.raises(StageError, match="source changed since this run began"):
        run_stage(stage, open_sources([tmp_path / "src"], skip=out), out, workers=1,
                  maxcount=1, chunk_size=1, resume=True, progress=False)
    (tmp_path / "src" / "0.png").unlink()
    crash["at"] = None
    summary = run_stage(stage, open_sources([tmp_path / "src"], skip=out), out, workers=1,
                        maxcount=1, chunk_size=1, resume=True, progress=False)
    assert summary["resumed_from_record"] == 2 and summary["counts"] == {"kept": 3}


def test_exclude_keys_written_for_one_source_match_in_a_multi_source_run(tiles, tmp_path):
    write_photos(tmp_path / "a", ["1.png", "2.png"], tiles)
    write_photos(tmp_path / "b", ["3.png"], tiles[2:])
    listed = tmp_path / "dups.txt"
    listed.write_text("2.png\nnot-there.png\n")  # as dedup over `a` alone writes them
    summary = make_shards([tmp_path / "a", tmp_path / "b"], tmp_path / "out", size=32,
                          exclude=listed, workers=1, progress=False)
    assert statuses(tmp_path / "out")["a/2.png"]["status"] == "excluded"
    assert summary["counts"] == {"kept": 2, "excluded": 1}
    assert "1 of 2 --exclude keys matched no input" in summary["line"]
    listed.write_text("other.png\n")
    line = one_line_error(shards_cli(tmp_path / "a", "--out", tmp_path / "out2",
                                     "--exclude", listed))
    assert "none of its 1 keys" in line


def test_exclude_pointing_at_a_binary_file_is_one_line(tiles, tmp_path):
    write_photos(tmp_path / "src", ["1.png"], tiles)
    line = one_line_error(shards_cli(tmp_path / "src", "--out", tmp_path / "out",
                                     "--exclude", tmp_path / "src" / "1.png"))
    assert "not a text file of keys" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists every folder")
def test_an_unreadable_subfolder_gets_a_record(tiles, tmp_path):
    write_photos(tmp_path / "src", ["1.png", "locked/2.png"], tiles)
    (tmp_path / "src" / "locked").chmod(0)
    try:
        summary = make_shards([tmp_path / "src"], tmp_path / "out", size=32, workers=1,
                              progress=False)
    finally:
        (tmp_path / "src" / "locked").chmod(0o755)
    assert summary["counts"] == {"kept": 1, "unreadable": 1}
    assert "folder not listed" in statuses(tmp_path / "out")["locked/"]["reason"]


def test_fifos_devices_and_huge_files_get_a_status_and_never_hang(tiles, tmp_path):
    write_photos(tmp_path / "src", ["1.png"], tiles)
    make_fifo(tmp_path / "src" / "pipe")
    make_sparse_file(tmp_path / "src" / "huge.png")
    listed = tmp_path / "list.txt"
    listed.write_text(f"{tmp_path / 'src' / '1.png'}\n/dev/zero\n{tmp_path / 'src' / 'pipe'}\n")
    start = time.monotonic()
    folder = make_shards([tmp_path / "src"], tmp_path / "out1", size=32, workers=1,
                         progress=False)
    from_list = make_shards([listed], tmp_path / "out2", size=32, workers=1, progress=False)
    assert time.monotonic() - start < 60
    assert folder["counts"] == {"kept": 1, "too_large": 1, "unreadable": 1}
    assert statuses(tmp_path / "out1")["pipe"]["reason"] == "not a regular file (a FIFO)"
    assert "over the --max-bytes limit" in statuses(tmp_path / "out1")["huge.png"]["reason"]
    assert from_list["counts"] == {"kept": 1, "unreadable": 2}
    assert "character device" in statuses(tmp_path / "out2")["/dev/zero"]["reason"]


def test_max_bytes_is_an_option(tiles, tmp_path):
    write_photos(tmp_path / "src", ["1.png"], tiles)
    result = shards_cli(tmp_path / "src", "--out", tmp_path / "out", "--max-bytes", "100")
    assert result.exit_code == 0 and "1 too_large" in result.output


def test_a_foreign_folder_is_never_written_into(tiles, tmp_path):
    write_photos(tmp_path / "src", ["1.png"], tiles)
    foreign = make_foreign_out(tmp_path / "theirs")
    before = {p.name: p.read_bytes() for p in foreign.iterdir()}
    for extra in ([], ["--overwrite"]):
        line = one_line_error(shards_cli(tmp_path / "src", "--out", foreign, *extra))
        assert "not empty" in line and "choose an empty or new --out" in line
    assert {p.name: p.read_bytes() for p in foreign.iterdir() if p.name != LOCK_NAME} == before


def test_overwrite_never_takes_another_stages_folder(tiles, tmp_path):
    write_photos(tmp_path / "src", ["1.png"], tiles)
    out = tmp_path / "out"
    make_shards([tmp_path / "src"], out, size=32, workers=1, progress=False)
    shards_before = sorted(p.name for p in out.glob("*.tar"))
    line = one_line_error(CliRunner().invoke(cli, ["faces", str(tmp_path / "src"), "--out",
                                                   str(out), "--overwrite", "--workers", "1"]))
    assert "holds the output of `pipeline shards`" in line
    assert sorted(p.name for p in out.glob("*.tar")) == shards_before


def test_out_under_a_regular_file_is_one_line_through_the_cli(tiles, tmp_path):
    write_photos(tmp_path / "src", ["1.png"], tiles)
    (tmp_path / "file").write_text("x")
    line = one_line_error(shards_cli(tmp_path / "src", "--out", tmp_path / "file" / "out"))
    assert "is a file, not a folder" in line


def test_resume_and_overwrite_together_are_refused(tiles, tmp_path):
    write_photos(tmp_path / "src", ["1.png"], tiles)
    line = one_line_error(shards_cli(tmp_path / "src", "--out", tmp_path / "out", "--resume",
                                     "--overwrite"))
    assert "not both" in line


def test_an_empty_source_finishes_with_a_warning(tmp_path):
    (tmp_path / "src").mkdir()
    result = shards_cli(tmp_path / "src", "--out", tmp_path / "out")
    assert result.exit_code == 0
    assert "warning: nothing was found in the source" in result.output


def test_an_invalid_cascade_xml_is_one_line(tiles, tmp_path):
    write_photos(tmp_path / "src", ["1.png"], tiles)
    bad = tmp_path / "cascade.xml"
    bad.write_text("<opencv_storage><cascade>nonsense</cascade></opencv_storage>")
    line = one_line_error(CliRunner().invoke(cli, ["faces", str(tmp_path / "src"), "--out",
                                                   str(tmp_path / "out"), "--cascade", str(bad)]))
    assert str(bad) in line and "Haar cascade" in line


DISK_FULL_SCRIPT = """
import resource, signal
from core.launch import pipeline
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
pipeline()
"""


def test_disk_full_while_writing_shards_is_one_line_and_leaves_tmp_files(tiles, tmp_path):
    write_photos(tmp_path / "src", [f"{i}.png" for i in range(12)], tiles)
    out = tmp_path / "out"
    result = run([sys.executable, "-c", DISK_FULL_SCRIPT, "shards", str(tmp_path / "src"),
                  "--out", str(out), "--size", "64", "--workers", "1", "--maxcount", "4"],
                 timeout=300)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.strip().splitlines()
             if not line.startswith("shards:")]  # progress bars
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert "File too large" in lines[0] and "--resume" in lines[0]
    assert list(out.glob("*.tar.tmp"))


def test_contact_sheet_after_resume_matches_an_uninterrupted_run(tiles, tmp_path):
    write_photos(tmp_path / "src", [f"{i:02d}.png" for i in range(6)], tiles)
    clean, out = tmp_path / "clean", tmp_path / "out"
    crash = {"at": "04.png"}

    def fragile(records, params):
        if any(r.key == crash["at"] for r in records):
            raise KeyboardInterrupt
        return shard_chunk(records, params)

    stage = Stage("shards", fragile, ShardParams(size=32), {"size": 32}, KEPT)
    run_stage(Stage("shards", shard_chunk, ShardParams(size=32), {"size": 32}, KEPT),
              open_sources([tmp_path / "src"]), clean, workers=1, maxcount=2, chunk_size=1,
              progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_stage(stage, open_sources([tmp_path / "src"]), out, workers=1, maxcount=2,
                  chunk_size=1, progress=False)
    crash["at"] = None
    run_stage(stage, open_sources([tmp_path / "src"]), out, workers=1, maxcount=2, chunk_size=1,
              resume=True, progress=False)
    assert (out / "contact_sheet.png").read_bytes() == (clean / "contact_sheet.png").read_bytes()


def test_dedup_crops_pass_records_an_oversized_file_as_too_large(tiles, tmp_path):
    """dedup reads through the same records as the shard stages: too_large, not unreadable."""
    from pipeline.dedup.crops import CropParams, crop_chunk

    write_photos(tmp_path / "src", ["1.png"], tiles)
    make_sparse_file(tmp_path / "src" / "huge.png")
    records = list(open_sources([tmp_path / "src"], max_bytes=10_000_000))
    chunk = crop_chunk(records, CropParams())
    assert {e.key: e.status for e in chunk.entries} == {"1.png": None, "huge.png": "too_large"}
