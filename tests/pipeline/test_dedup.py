"""`pipeline dedup`: what a user relies on when dropping near duplicates before training."""

from __future__ import annotations

import hashlib
import tracemalloc

import faiss
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline import demo
from pipeline.autoencoder import load_model
from pipeline.cli import main
from pipeline.crops import CropParams, extract_crops
from pipeline.dedup import dedup as run_dedup
from pipeline.dedup import hash_crops
from pipeline.files import read_jsonl
from pipeline.grouping import group_codes, keep_order
from pipeline.manifest import read_manifest
from pipeline.shards import make_shards
from pipeline.sources import open_source

FAST = {"epochs": 1, "min_steps": 300, "batch_size": 32, "workers": 1, "progress": False}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_folder(folder, tiles, copies=()):
    """Tiles as PNGs; `copies` are indices written a second time, byte for byte."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, tile in enumerate(tiles):
        (folder / f"t{i:03d}.png").write_bytes(demo.encode(tile, "PNG"))
    for i in copies:
        (folder / f"t{i:03d}_copy.png").write_bytes((folder / f"t{i:03d}.png").read_bytes())
    return folder


def groups_of(out) -> list[dict]:
    return list(read_jsonl(out / "groups.jsonl"))


def test_exact_copies_collide_and_distinct_photos_do_not(tmp_path, tiles):
    folder = write_folder(tmp_path / "src", tiles, copies=(3, 17, 40))
    summary = run_dedup([folder], tmp_path / "out", **FAST)
    groups = groups_of(tmp_path / "out")
    assert sorted(sorted(g["members"]) for g in groups) == [
        [f"t{i:03d}.png", f"t{i:03d}_copy.png"] for i in (3, 17, 40)]
    duplicates = (tmp_path / "out" / "duplicates.txt").read_text().split()
    assert len(duplicates) == 3 and summary["duplicates"] == 3
    assert summary["counts"] == {"duplicate": 3, "unique": 60}
    assert (tmp_path / "out" / "collisions.png").stat().st_size > 0
    assert (tmp_path / "out" / "loss.png").stat().st_size > 0
    assert not (tmp_path / "out" / "crops.u8").exists()  # scratch removed


def lsun_lmdb(folder, images) -> list[str]:
    """LSUN's layout: 40-hex-char keys, WebP values, in `folder` (data.mdb inside)."""
    keys = [hashlib.sha1(f"{i}".encode()).hexdigest() for i in range(len(images))]
    demo.write_lmdb(folder, zip(keys, (demo.encode(img, "WEBP", quality=90) for img in images),
                                strict=True))
    return keys


def test_lsun_lmdb_then_shards_exclude_leaves_duplicates_out(tmp_path, tiles):
    images = tiles[:30] + [tiles[5], tiles[9]]  # two exact re-uploads
    keys = lsun_lmdb(tmp_path / "lsun" / "bedroom_train_lmdb", images)
    summary = run_dedup([tmp_path / "lsun"], tmp_path / "dedup", **FAST)
    assert summary["inputs"] == 32 and summary["duplicates"] == 2
    duplicates = (tmp_path / "dedup" / "duplicates.txt").read_text().split()
    assert set(duplicates) <= set(keys)
    for group in groups_of(tmp_path / "dedup"):
        assert {keys.index(k) for k in group["members"]} in ({5, 30}, {9, 31})
    shards = make_shards([tmp_path / "lsun"], tmp_path / "shards", size=32, workers=1,
                         exclude=tmp_path / "dedup" / "duplicates.txt", progress=False)
    assert shards["counts"] == {"excluded": 2, "kept": 30}


def test_bad_images_are_recorded_and_counts_add_up(tmp_path, tiles):
    folder = write_folder(tmp_path / "src", tiles[:20])
    good = (folder / "t000.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "page.jpg").write_bytes(b"<!DOCTYPE html><html>404</html>")
    summary = run_dedup([folder], tmp_path / "out", **FAST)
    lines = read_manifest(tmp_path / "out")
    assert len(lines) == 23 == summary["inputs"] == sum(summary["counts"].values())
    status = {line["key"]: line["status"] for line in lines}
    assert (status["truncated.png"], status["empty.jpg"], status["page.jpg"]) == (
        "corrupt", "empty", "not_image")
    assert summary["images"] == 20


def test_model_reuse_gives_identical_codes(tmp_path, tiles):
    folder = write_folder(tmp_path / "src", tiles[:40], copies=(1,))
    run_dedup([folder], tmp_path / "first", **FAST)
    model_path = tmp_path / "first" / "autoencoder.pt"
    payload = torch.load(model_path, weights_only=True)  # plain tensors and values only
    assert payload["config"]["bits"] == 128 and payload["config"]["side"] == 32
    again = run_dedup([folder], tmp_path / "second", model=model_path, workers=2,
                      progress=False)
    assert again["loss_per_epoch"] == []  # nothing trained
    assert groups_of(tmp_path / "first") == groups_of(tmp_path / "second")
    model, _ = load_model(model_path)
    crops = extract_crops(open_source(folder), tmp_path, CropParams(), 1, progress=False)
    codes = hash_crops(model, crops.images, device="cpu", progress=False)
    assert codes.shape == (41, 16)
    first = groups_of(tmp_path / "first")[0]
    assert first["code"] == codes[1].tobytes().hex()


def test_finished_output_is_refused_without_overwrite(tmp_path, tiles):
    folder = write_folder(tmp_path / "src", tiles[:10])
    args = ["dedup", str(folder), "--out", str(tmp_path / "out"), "--epochs", "1",
            "--min-steps", "5", "--workers", "1"]
    assert CliRunner().invoke(main, args).exit_code == 0
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1 and "--overwrite" in refused.output
    assert "Traceback" not in refused.output
    again = CliRunner().invoke(main, [*args, "--overwrite"])
    assert again.exit_code == 0 and "dedup: 10 of 10 inputs unique" in again.output


def test_radius_groups_around_anchors_without_chaining():
    rng = np.random.default_rng(0)
    start = rng.integers(0, 256, 16, dtype=np.uint8)
    chain = [start.copy()]
    for bit in range(10):  # each code one bit from the previous: a path of 10 steps
        nxt = chain[-1].copy()
        nxt[bit // 8] ^= 1 << (bit % 8)
        chain.append(nxt)
    codes = np.stack([chain[0], *chain])  # chain[0] twice: the most frequent, the first anchor
    groups = group_codes(codes, radius=1)
    assert groups[0] == groups[1] == groups[2]  # chain[0] (x2) and chain[1] join the anchor
    assert len(set(groups.tolist()) - {-1}) < len(codes) // 2  # the rest pair up...
    assert np.bincount(groups[groups >= 0]).max() == 3  # ...but never chain into one group
    assert (group_codes(codes, radius=0) >= 0).sum() == 2  # radius 0: only the equal codes


def test_grouping_cost_is_linear_in_images():
    """The Hamming search checks candidates in proportion to N (counted by faiss), not N^2."""
    stats = faiss.cvar.indexBinaryHash_stats
    checked = []
    sizes = (2_000, 8_000, 32_000)
    for n in sizes:
        rng = np.random.default_rng(n)
        codes = rng.integers(0, 256, (n, 16), dtype=np.uint8)
        codes[n // 2 :: 7] = codes[: len(codes[n // 2 :: 7])]  # planted exact duplicates
        codes[1::11, 0] ^= 1  # planted one-bit neighbours
        stats.reset()
        group_codes(codes, radius=2)
        checked.append(stats.ndis)
    per_image = [c / n for c, n in zip(checked, sizes, strict=True)]
    assert max(per_image) < 1.5 * min(per_image)  # a quadratic search would grow 16x here


def test_memory_does_not_grow_with_the_number_of_images(tmp_path, tiles):
    """Crops go to a file on disk: Python-side peak memory is flat as N grows 4x."""
    model, _ = run_model(np.stack([t[::2, ::2] for t in tiles]))
    peaks = []
    for n in (60, 240):
        folder = tmp_path / f"src{n}"
        folder.mkdir()
        for i in range(n):
            tile = np.roll(tiles[i % len(tiles)], i // len(tiles), axis=1)
            (folder / f"{i:04d}.png").write_bytes(demo.encode(tile, "PNG"))
        out = tmp_path / f"out{n}"
        out.mkdir()
        tracemalloc.start()
        crops = extract_crops(open_source(folder), out, CropParams(), 1, chunk_size=16,
                              progress=False)
        hash_crops(model, crops.images, device="cpu", batch=32, progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    per_extra_image = (peaks[1] - peaks[0]) / 180
    assert per_extra_image < 3 * 32 * 32 * 3 / 4  # well below one crop (3072 B) per image


def run_model(crops):
    from pipeline.autoencoder import HashConfig, train

    return train(crops, HashConfig(side=32, bits=128, noise=1.0, dropout=0.1), epochs=1,
                 batch_size=32, progress=False, device="cpu")


def test_the_largest_copy_is_kept():
    pixels = np.array([100, 400, 400, 50])
    rank = keep_order(pixels)
    assert rank.tolist() == [2, 0, 1, 3]  # most pixels first; ties: first in source order
