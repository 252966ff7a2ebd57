"""`pipeline shards`: geometry, shard contents, manifests, determinism, restarts, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import webdataset as wds
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from core.files import read_jsonl
from pipeline import demo
from pipeline.cli import main as cli
from pipeline.geometry import center_crop, resize_area
from pipeline.shards import make_shards
from pipeline.sinks import read_index
from tests.processes import run, script, started, wait_for

AWKWARD_STATUS = {
    "truncated.jpg": "corrupt", "zero_bytes.jpg": "empty", "error_page.jpg": "not_image",
    "notes.png": "not_image", "one_pixel.png": "too_small", "bomb.png": "too_large",
}


def make_corpus(folder: Path, n: int, seed: int = 0) -> Path:
    """n real-photo variants of assorted sizes and formats, plus the awkward files."""
    rng = np.random.default_rng(seed)
    base = [demo.photo(name) for name in ("coffee.png", "chelsea.png", "rocket.jpg")]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = demo.variant(base[i % 3], rng)
        img = cv2.resize(img, (int(rng.integers(70, 260)), int(rng.integers(70, 260))))
        fmt = ("JPEG", "PNG", "WEBP")[i % 3]
        (folder / f"img_{i:04d}.{fmt.lower()}").write_bytes(demo.encode(img, fmt))
    awkward = folder / "awkward"
    awkward.mkdir(exist_ok=True)
    for name, data in demo.awkward_files(base[0][::2, ::2].copy()).items():
        (awkward / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"), 40)


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shards-*.tar"))}


def test_center_crop_takes_the_middle_square():
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, 100:200] = 255
    crop = center_crop(img)
    assert crop.shape == (100, 100, 3) and (crop == 255).all()
    tall = np.arange(300 * 50 * 3, dtype=np.uint32).reshape(300, 50, 3).astype(np.uint8)
    assert np.array_equal(center_crop(tall), tall[125:175])


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 400), st.integers(1, 400))
def test_center_crop_is_the_largest_centred_square(height, width):
    img = np.zeros((height, width, 3), np.uint8)
    crop = center_crop(img)
    side = min(height, width)
    assert crop.shape == (side, side, 3)
    assert np.shares_memory(crop, img)  # a view: no copy before the resize
    top, left = (height - side) // 2, (width - side) // 2
    assert abs(top - (height - side - top)) <= 1 and abs(left - (width - side - left)) <= 1


def test_area_resize_averages_blocks():
    img = np.zeros((128, 128, 3), np.uint8)
    img[::2] = 200  # stripes average to 100 under area interpolation
    small = resize_area(img, 64)
    assert small.shape == (64, 64, 3) and np.all(np.abs(small.astype(int) - 100) <= 1)


def test_shards_contents_manifest_and_index(corpus, tmp_path):
    out = tmp_path / "out"
    summary = make_shards([corpus], out, size=32, maxcount=16, workers=1, progress=False)
    n_inputs = 40 + len(demo.awkward_files(np.zeros((8, 8, 3), np.uint8)))
    assert summary["inputs"] == n_inputs == sum(summary["counts"].values())
    manifest = {m["key"]: m for m in read_jsonl(out / "manifest.jsonl")}
    assert len(manifest) == n_inputs
    for name, status in AWKWARD_STATUS.items():
        assert manifest[f"awkward/{name}"]["status"] == status
        assert manifest[f"awkward/{name}"]["reason"]
    kept = [k for k, m in manifest.items() if m["status"] == "kept"]
    assert summary["counts"]["kept"] == len(kept) == summary["samples"]

    index = read_index(out)
    assert [s["samples"] for s in index] == [16, 16, 16][: len(index) - 1] + [index[-1]["samples"]]
    assert sum(s["samples"] for s in index) == len(kept)
    assert not list(out.glob("*.tmp"))
    assert (out / "contact_sheet.png").is_file()

    # Plain tarfile sees <key>.png + <key>.json members, keys without dots.
    with tarfile.open(out / index[0]["name"]) as tar:
        names = tar.getnames()
    assert all(n.count(".") == 1 for n in names) and len(names) == 2 * 16
    # webdataset reads the samples back: 32x32 PNGs with provenance.
    samples = list(wds.WebDataset([str(out / s["name"]) for s in index], shardshuffle=False))
    assert len(samples) == len(kept)
    for sample in samples:
        img = cv2.imdecode(np.frombuffer(sample["png"], np.uint8), cv2.IMREAD_UNCHANGED)
        assert img.shape == (32, 32, 3)
        meta = json.loads(sample["json"])
        assert meta["source_key"] in kept and meta["size"] == 32
    assert [json.loads(s["json"])["source_key"] for s in samples] == kept


def test_shards_match_the_crop_of_the_input(tmp_path):
    img = cv2.resize(demo.photo("chelsea.png"), (200, 120), interpolation=cv2.INTER_AREA)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cat.png").write_bytes(demo.encode(img, "PNG"))
    make_shards([tmp_path / "in"], tmp_path / "out", size=64, workers=1, progress=False)
    shard = str(tmp_path / "out" / "shards-000000.tar")
    sample = next(iter(wds.WebDataset(shard, shardshuffle=False)))
    got = cv2.imdecode(np.frombuffer(sample["png"], np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    assert sample["__key__"] == "cat_png"
    assert np.array_equal(got, resize_area(center_crop(img), 64))


def test_jpeg_format_option(corpus, tmp_path):
    make_shards([corpus], tmp_path, size=32, fmt="jpg", workers=1, progress=False)
    sample = next(iter(wds.WebDataset(str(tmp_path / "shards-000000.tar"), shardshuffle=False)))
    assert "jpg" in sample and sample["jpg"][:2] == b"\xff\xd8"


def test_output_is_identical_for_one_and_two_workers(corpus, tmp_path):
    make_shards([corpus], tmp_path / "w1", size=32, maxcount=10, workers=1, progress=False)
    make_shards([corpus], tmp_path / "w2", size=32, maxcount=10, workers=2, progress=False)
    assert shard_bytes(tmp_path / "w1") == shard_bytes(tmp_path / "w2")
    assert (tmp_path / "w1/manifest.jsonl").read_bytes() == \
        (tmp_path / "w2/manifest.jsonl").read_bytes()


def test_exclude_leaves_keys_out_and_records_them(corpus, tmp_path):
    exclude = tmp_path / "dups.txt"
    exclude.write_text("img_0000.jpeg\nimg_0001.png\n")
    summary = make_shards([corpus], tmp_path / "out", size=32, exclude=exclude, workers=1,
                          progress=False)
    manifest = {m["key"]: m["status"] for m in read_jsonl(tmp_path / "out" / "manifest.jsonl")}
    assert manifest["img_0000.jpeg"] == manifest["img_0001.png"] == "excluded"
    assert summary["counts"]["excluded"] == 2


def test_finished_output_is_refused_unless_overwrite(corpus, tmp_path):
    make_shards([corpus], tmp_path, size=32, workers=1, progress=False)
    before = shard_bytes(tmp_path)
    from core.outputs import OutputError

    with pytest.raises(OutputError, match="--overwrite"):
        make_shards([corpus], tmp_path, size=32, workers=1, progress=False)
    assert shard_bytes(tmp_path) == before
    make_shards([corpus], tmp_path, size=32, maxcount=5, workers=1, overwrite=True,
                progress=False)
    assert len(shard_bytes(tmp_path)) > len(before)


def stop_cli_midway(args: list[str], out: Path, how: signal.Signals,
                    sigint_ignored: bool = False) -> str:
    """Start `pipeline shards` and send it `how` once two shards are complete: SIGKILL, SIGTERM
    to the process, or SIGINT to its process group (a terminal's Ctrl-C); returns stderr."""
    with started(script("pipeline", *args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                 text=True, sigint_ignored=sigint_ignored) as proc:
        wait_for(lambda: (out / "shards-000001.tar").exists() or proc.poll() is not None,
                 timeout=120, what="two finished shards")
        assert proc.poll() is None, "run ended before it could be stopped"
        if how == signal.SIGINT:
            os.killpg(proc.pid, how)
        else:
            os.kill(proc.pid, how)
        stderr = proc.communicate(timeout=60)[1]
        assert proc.returncode == (-9 if how == signal.SIGKILL else 128 + how), stderr
    assert not (out / "summary.json").exists(), "run finished before it was stopped"
    return stderr


@pytest.mark.slow
@pytest.mark.parametrize("how, mode, sigint_ignored", [
    (signal.SIGKILL, [], False),
    (signal.SIGKILL, ["--resume"], False),
    (signal.SIGTERM, ["--resume"], False),
    (signal.SIGINT, ["--resume"], True),  # a background job: SIGINT inherited as ignored
])
def test_stopped_run_then_rerun_or_resume_gives_the_clean_shards(tmp_path, how, mode,
                                                                  sigint_ignored):
    corpus = make_corpus(tmp_path / "big", 400)
    args = ["shards", str(corpus), "--size", "32", "--maxcount", "20", "--workers", "1",
            "--no-progress"]
    make_shards([corpus], tmp_path / "clean", size=32, maxcount=20, workers=1, progress=False)
    clean = shard_bytes(tmp_path / "clean")
    clean_manifest = (tmp_path / "clean/manifest.jsonl").read_bytes()

    out = tmp_path / "stopped"
    said = stop_cli_midway([*args, "--out", str(out)], out, how, sigint_ignored)
    if how != signal.SIGKILL:  # one line: what is kept, and how to go on
        assert said.strip().splitlines() == [said.strip()] and "Traceback" not in said
        assert f"shards: stopped by {how.name} after" in said and "--resume" in said
    result = run(script("pipeline", *args, "--out", str(out), *mode), timeout=300)
    assert result.returncode == 0, result.stderr
    assert shard_bytes(out) == clean
    assert (out / "manifest.jsonl").read_bytes() == clean_manifest
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["resumed_from_record"] > 0) == bool(mode)


def test_cli_success_prints_one_summary_line(corpus, tmp_path):
    result = CliRunner().invoke(cli, ["shards", str(corpus), "--out", str(tmp_path / "o"),
                                      "--size", "32", "--workers", "1"])
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("shards: ") and "kept" in last and "images/s" in last


def test_cli_no_progress_prints_only_the_summary_line(corpus, tmp_path):
    result = CliRunner().invoke(cli, ["shards", str(corpus), "--out", str(tmp_path / "o"),
                                      "--size", "32", "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shards: ")


@pytest.mark.parametrize(
    "args, code, message",
    [(["shards", "/no/such/folder", "--out", "{out}"], 1, "no such file"),
     (["shards", "{corpus}", "--out", "{out}", "--size", "0"], 2, "--size"),
     (["shards", "{corpus}", "--out", "{out}", "--format", "gif"], 2, "--format"),
     (["shards", "{corpus}", "--out", "{out}", "--exclude", "/no/list.txt"], 2, "--exclude"),
     (["shards", "{corpus}"], 2, "--out")],
)
def test_cli_user_errors_are_one_line_without_traceback(corpus, tmp_path, args, code, message):
    args = [a.format(out=tmp_path / "o", corpus=corpus) for a in args]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code
    assert message in result.output and "Traceback" not in result.output


def test_cli_refuses_finished_output_in_one_line(corpus, tmp_path):
    args = ["shards", str(corpus), "--out", str(tmp_path), "--size", "32", "--workers", "1"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1
    assert again.output.startswith("Error: ") and "--overwrite" in again.output
    assert len(again.output.strip().splitlines()) == 1
