"""`pipeline dedup`: what a user relies on when dropping near duplicates before training."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import tracemalloc

import cv2
import faiss
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from core.files import read_jsonl
from pipeline import demo
from pipeline.cli import main
from pipeline.dedup import DEFAULT_RADIUS, grouping
from pipeline.dedup import dedup as run_dedup
from pipeline.dedup.autoencoder import hash_encoder, load_model
from pipeline.dedup.crops import CropParams, crop_chunk, extract_crops
from pipeline.dedup.grouping import (
    IMAGES_PER_CODE,
    NEAREST_CODES,
    candidate_pairs,
    code_neighbours,
    group_codes,
    group_pairs,
    hamming_neighbours,
    keep_order,
    nearest_neighbours,
)
from pipeline.dedup.hashing import hash_crops
from pipeline.dedup.reuploads import reupload
from pipeline.dedup.verify import DEFAULT_THRESHOLD
from pipeline.shards import make_shards
from pipeline.sources import Record, open_source
from tests.conftest import natural_tiles
from tests.processes import script, started, wait_for

FAST = {"epochs": 1, "min_steps": 300, "batch_size": 32, "workers": 1, "progress": False,
        "device": "cpu"}  # the same RNG stream on a machine with a GPU


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
    lines = list(read_jsonl(tmp_path / "out" / "manifest.jsonl"))
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
                      device="cpu", progress=False)
    assert again["loss_per_epoch"] == []  # nothing trained
    assert again["settings"]["training"] is None  # the model's own: model_info and hash
    assert again["settings"]["hash"]["noise"] == payload["config"]["noise"]
    assert groups_of(tmp_path / "first") == groups_of(tmp_path / "second")
    model, _ = load_model(model_path)
    crops = extract_crops(open_source(folder), tmp_path, CropParams(), 1, progress=False)
    codes = hash_crops(hash_encoder(model), crops.images, progress=False)
    assert codes.shape == (41, 16)
    first = groups_of(tmp_path / "first")[0]
    assert first["code"] == codes[1].tobytes().hex()


def test_finished_output_is_refused_without_overwrite(tmp_path, tiles):
    folder = write_folder(tmp_path / "src", tiles[:10])
    args = ["dedup", str(folder), "--out", str(tmp_path / "out"), "--epochs", "1",
            "--min-steps", "5", "--workers", "1", "--device", "cpu"]
    assert CliRunner().invoke(main, args).exit_code == 0
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1 and "--overwrite" in refused.output
    assert "Traceback" not in refused.output
    again = CliRunner().invoke(main, [*args, "--overwrite"])
    assert again.exit_code == 0 and "dedup: 10 of 10 inputs unique" in again.output


def test_training_options_with_a_saved_model_are_refused_before_anything_is_written(tmp_path,
                                                                                     tiles):
    """--model keeps the saved hash's own settings; --epochs or --noise given with it would be
    ignored while the summary said otherwise, so the combination is one line, and nothing made."""
    folder = write_folder(tmp_path / "src", tiles[:4])
    model = tmp_path / "autoencoder.pt"
    model.write_bytes(b"never read: the options are refused first")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["dedup", str(folder), "--out", str(out), "--model",
                                       str(model), "--epochs", "3", "--noise", "0.5"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "--epochs, --noise only apply when training" in result.output
    assert not out.exists()


def test_the_radius_range_in_help_is_the_one_enforced():
    help_text = " ".join(CliRunner().invoke(main, ["dedup", "--help"]).output.split())
    assert "--radius INTEGER RANGE" in help_text and "0<=x<=15" in help_text
    refused = CliRunner().invoke(main, ["dedup", "src", "--out", "o", "--radius", "64"])
    assert refused.exit_code == 2 and "0<=x<=15" in refused.output


def test_a_tiny_set_falls_back_to_the_default_threshold_and_says_so(tmp_path, tiles):
    """Three photos and their JPEG copies: too few pairs of different images to calibrate on.
    The threshold is the documented default (not 0, which rejected every copy)."""
    folder = write_folder(tmp_path / "src", tiles[:3])
    for i in range(3):
        copy = reupload(tiles[i], "jpeg", np.random.default_rng(i))
        (folder / f"t{i:03d}_jpeg").write_bytes(copy)
    summary = run_dedup([folder], tmp_path / "out", **FAST)
    check = summary["verification"]
    assert check["threshold"] == DEFAULT_THRESHOLD
    assert check["threshold_source"].startswith("default: only")
    assert f"<= {DEFAULT_THRESHOLD} (default: only" in summary["line"]
    found = {frozenset(g["members"]) for g in groups_of(tmp_path / "out")}
    assert found == {frozenset({f"t{i:03d}.png", f"t{i:03d}_jpeg"}) for i in range(3)}


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
        hash_crops(hash_encoder(model), crops.images, batch=32, progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    per_extra_image = (peaks[1] - peaks[0]) / 180
    assert per_extra_image < 3 * 32 * 32 * 3 / 4  # well below one crop (3072 B) per image


def run_model(crops):
    from pipeline.dedup.autoencoder import HashConfig, train

    return train(crops, HashConfig(side=32, bits=128, noise=1.0, dropout=0.1), epochs=1,
                 batch_size=32, progress=False, device="cpu")


def test_the_largest_copy_is_kept():
    pixels = np.array([100, 400, 400, 50])
    rank = keep_order(pixels)
    assert rank.tolist() == [2, 0, 1, 3]  # most pixels first; ties: first in source order


def test_verified_pairs_group_around_anchors_without_chaining():
    """A path of matches 0~1~2~3~4 (each image like the next, the ends unlike) does not become
    one group: every member was verified against its group's anchor. Image 2 matches one
    member of each group (1, the first anchor, and 3, which anchors 4): ambiguous, it stays
    alone rather than join either through a single link."""
    left, right = np.array([0, 1, 2, 3]), np.array([1, 2, 3, 4])
    groups = group_pairs(6, left, right, pixels=np.full(6, 100))
    assert groups[5] == -1  # no verified partner
    assert groups[0] == groups[1] != -1
    assert groups[3] == groups[4] != groups[0]
    assert groups[2] == -1
    members = {g: set(np.flatnonzero(groups == g)) for g in set(groups.tolist()) - {-1}}
    pairs = set(zip(left.tolist(), right.tolist(), strict=True))
    for rows in members.values():  # each member is verified against one member: the anchor
        assert any(all(r == a or (min(a, r), max(a, r)) in pairs for r in rows) for a in rows)


def test_an_image_an_outlier_anchor_left_out_joins_the_group_it_matches_mostly():
    """Anchor 4 (a cropped copy, say) matched more images than the original 0 did; image 6
    matches 0, 1, 2 and 3 but not the anchor, so it joins by majority (4 of the 7 members).
    Image 5 matches the anchor and image 7, which matches nothing else: half of its partners
    are outside the group, so it does not join through its single link to the anchor; 5 and 7,
    left alone, are a pair of their own (a single link never chains 7 into the group)."""
    pairs = [(0, 1), (0, 2), (0, 3), (0, 4), (1, 4), (2, 4), (3, 4), (4, 5), (4, 8),
             (0, 6), (1, 6), (2, 6), (3, 6), (5, 7)]
    left, right = (np.array(x) for x in zip(*pairs, strict=True))
    groups = group_pairs(9, left, right, pixels=np.full(9, 100))
    assert groups.tolist() == [0, 0, 0, 0, 0, 1, 0, 1, 0]


@pytest.mark.parametrize("wrong", [(0, 5), (1, 6), (4, 9)])
def test_one_wrong_pair_neither_merges_two_groups_nor_moves_a_member(wrong):
    """Two sets of copies (0-4 and 5-9, every pair within each verified) and one wrong pair
    between them (two look-alike pictures): union-find merges them into one group (25 false
    pairs); anchors alone let the first anchor take the look-alike (5 false pairs). The
    look-alike matches four members of its own group against one of the other: it stays."""
    pairs = [(a, b) for rows in (range(5), range(5, 10)) for a in rows for b in rows if a < b]
    left, right = (np.array(x) for x in zip(*pairs, wrong, strict=True))
    groups = group_pairs(10, left, right, pixels=np.full(10, 100))
    assert groups.tolist() == [0] * 5 + [1] * 5


def test_a_look_alike_left_alone_is_not_taken_by_a_leftover_pair():
    """Copies 0-3 of one picture and 4-7 of another (every pair within each verified).
    Image 8, a crop of the first, matches member 1 and its own crop 9; image 10, a rotated copy
    of the second, matches member 5, its own near copy 11 - and, wrongly, the look-alike 8.
    The vote leaves 8 and 10 alone (one partner of three each in any group). Among the images
    left alone, 8 anchors a group and would take 10 through its one wrong link; 10 votes too,
    and one of its three partners is not a majority. In the next round 10, alone again, and 11
    are a pair of their own."""
    pairs = [(a, b) for rows in (range(4), range(4, 8)) for a in rows for b in rows if a < b]
    pairs += [(1, 8), (8, 9), (8, 10), (5, 10), (10, 11)]
    left, right = (np.array(x) for x in zip(*pairs, strict=True))
    pixels = np.full(12, 100)
    pixels[8] = 200  # visited before 10 among the images of three partners
    groups = group_pairs(12, left, right, pixels)
    assert groups.tolist() == [0] * 4 + [1] * 4 + [2, 2, 3, 3]


def test_a_second_code_per_image_proposes_pairs_of_images_never_with_itself():
    """dedup gives a framed picture a second code (of the picture inside the frame); pairs
    are then of images, and an image's two codes never pair it with itself."""
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 256, (50, 16), dtype=np.uint8)
    one_bit = np.eye(16, dtype=np.uint8)[0]
    inner = codes[[7, 20, 9]] ^ one_bit  # second codes near 7's and 20's own (image 20's two),
    owners = np.concatenate([np.arange(50), [20, 20, 30]])  # and near 9's (image 30's)
    neighbours = code_neighbours(np.concatenate([codes, inner]), radius=4)
    pairs = [(int(a), int(b)) for left, right in candidate_pairs([(neighbours, owners)])
             for a, b in zip(left, right, strict=True)]
    assert set(pairs) == {(7, 20), (9, 30)}


def test_candidates_are_bounded_per_image_and_listed_once():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (3000, 16), dtype=np.uint8)
    codes[:200] = codes[0]  # a crowd of 200 equal codes (a flat picture, say)
    codes[200:400] = codes[0] ^ np.eye(16, dtype=np.uint8)[rng.integers(0, 16, 200)]  # 1 bit
    neighbours = code_neighbours(codes, radius=3)
    left, right = (np.concatenate(x) for x in zip(*candidate_pairs([(neighbours, None)], chunk=500),
                                                 strict=True))
    assert (left < right).all()
    assert len(set(zip(left.tolist(), right.tolist(), strict=True))) == len(left)  # once each
    assert len(left) <= len(codes) * IMAGES_PER_CODE * (NEAREST_CODES + 1)
    crowd = (left < 200) & (right < 200)
    assert crowd.sum() < 200 * IMAGES_PER_CODE  # each member meets the crowd's first few only,
    assert np.isin(np.arange(200), np.concatenate([left[crowd], right[crowd]])).all()  # all


def test_code_search_ignores_a_gpu_faiss_and_matches_brute_force(monkeypatch):
    """The same neighbours whatever faiss build is installed: a faiss that sees a GPU must not
    switch to a capped brute-force k-NN."""
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (400, 16), dtype=np.uint8)
    codes[1::5] = codes[::5][: len(codes[1::5])] ^ np.uint8(1)  # planted one-bit neighbours
    codes[2::5, 3] = codes[::5][: len(codes[2::5]), 3] ^ np.uint8(7)  # and three-bit ones
    lims, labels = hamming_neighbours(codes, radius=3)
    bits = np.bitwise_count(codes[:, None, :] ^ codes[None, :, :]).sum(axis=2)
    for i in range(len(codes)):
        assert labels[lims[i] : lims[i + 1]].tolist() == np.flatnonzero(bits[i] <= 3).tolist()
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    again = hamming_neighbours(codes, radius=3)
    assert np.array_equal(again[0], lims) and np.array_equal(again[1], labels)


def test_nearest_codes_are_the_brute_force_ones_whatever_the_query_chunk(monkeypatch):
    """Each code's nearest codes within the radius (ties: lower index), searched a chunk of
    queries at a time so that a crowd of close codes never holds all its pairs in memory."""
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 256, (300, 16), dtype=np.uint8)
    codes[100:200] = codes[0] ^ np.eye(16, dtype=np.uint8)[rng.integers(0, 16, 100)]  # a crowd
    bits = np.bitwise_count(codes[:, None, :] ^ codes[None, :, :]).sum(axis=2)
    np.fill_diagonal(bits, 99)
    expected = [np.lexsort((np.arange(len(codes)), row))[: 5] for row in bits]
    expected = [e[bits[i, e] <= 3] for i, e in enumerate(expected)]
    for chunk in (7, 1024):
        monkeypatch.setattr(grouping, "QUERY_CHUNK", chunk)
        owner, other = nearest_neighbours(codes, radius=3, nearest=5)
        assert [other[owner == i].tolist() for i in range(len(codes))] == \
            [e.tolist() for e in expected]


def near_copies(folder, tiles, kinds, seed=0):
    """The tiles as PNGs plus, for the first len(kinds) tiles, one re-upload each."""
    write_folder(folder, tiles)
    rng = np.random.default_rng(seed)
    for i, kind in enumerate(kinds):
        (folder / f"t{i:03d}_{kind}").write_bytes(reupload(tiles[i], kind, rng))
    return folder


def test_verification_finds_reuploads_and_reports_its_threshold(tmp_path, tiles):
    kinds = ("jpeg", "border", "downscale", "gamma", "text")
    folder = near_copies(tmp_path / "src", tiles, kinds)
    summary = run_dedup([folder], tmp_path / "out", **FAST)
    check = summary["verification"]
    assert check["enabled"] and check["candidate_radius"] == DEFAULT_RADIUS
    assert check["candidate_pairs"] >= check["verified_pairs"] >= 1
    assert check["candidates_per_image"] <= IMAGES_PER_CODE * (NEAREST_CODES + 1)
    assert 0 < check["threshold"] < 2 and check["same_pairs"] > 0
    assert "candidate pairs" in summary["line"] and "verified at distance" in summary["line"]
    found = {frozenset(g["members"]) for g in groups_of(tmp_path / "out")}
    for i, kind in enumerate(kinds[:3]):  # the frame is trimmed, so even the border copy
        assert frozenset({f"t{i:03d}.png", f"t{i:03d}_{kind}"}) in found
    assert all(len(g) == 2 for g in found)  # no distinct photos joined
    for name in ("distances.png", "collisions.png", "rejected.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert not (tmp_path / "out" / "views.u8").exists()  # scratch removed


def test_a_framed_copy_is_found_though_its_center_crop_code_is_far(tmp_path, tiles):
    """A frame shrinks the picture inside the center crop, so the hash alone cannot propose
    the pair; the code of the picture inside the frame does."""
    folder = write_folder(tmp_path / "src", tiles[:30])
    for i in range(3):
        framed = np.pad(tiles[i], ((8, 8), (8, 8), (0, 0)))  # a black frame, 8 px of 64
        (folder / f"t{i:03d}_framed.png").write_bytes(demo.encode(framed, "PNG"))
    summary = run_dedup([folder], tmp_path / "out", **FAST)
    hash_model, _ = load_model(tmp_path / "out" / "autoencoder.pt")
    crops = extract_crops(open_source(folder), tmp_path, CropParams(), 1, progress=False)
    codes = hash_crops(hash_encoder(hash_model), crops.images, progress=False)
    keys = [line["key"] for line in read_jsonl(tmp_path / "records.jsonl")]
    row = {key: r for r, key in enumerate(keys)}
    bits = [int(np.bitwise_count(codes[row[f"t{i:03d}.png"]] ^ codes[row[f"t{i:03d}_framed.png"]])
                .sum()) for i in range(3)]
    assert max(bits) > DEFAULT_RADIUS  # at least one pair the frame's own code cannot reach
    assert summary["verification"]["framed_images"] >= 3  # and tiles with a flat edge
    found = {frozenset(g["members"]) for g in groups_of(tmp_path / "out")}
    assert found == {frozenset({f"t{i:03d}.png", f"t{i:03d}_framed.png"}) for i in range(3)}


def test_paper_mode_is_radius_0_without_verification(tmp_path, tiles):
    folder = near_copies(tmp_path / "src", tiles, ("jpeg", "downscale"))
    first = run_dedup([folder], tmp_path / "trained", **FAST)
    model = tmp_path / "trained" / "autoencoder.pt"
    paper = run_dedup([folder], tmp_path / "paper", model=model, radius=0, verify=False,
                      workers=1, device="cpu", progress=False)
    assert paper["verification"] == {"enabled": False}
    assert not (tmp_path / "paper" / "distances.png").exists()
    hash_model, _ = load_model(model)
    crops = extract_crops(open_source(folder), tmp_path, CropParams(), 1, progress=False)
    codes = hash_crops(hash_encoder(hash_model), crops.images, progress=False)
    expected = group_codes(codes, radius=0)  # equal codes, nothing else
    keys = [line["key"] for line in read_jsonl(tmp_path / "records.jsonl")]
    want = {frozenset(keys[r] for r in np.flatnonzero(expected == g))
            for g in set(expected.tolist()) - {-1}}
    assert {frozenset(g["members"]) for g in groups_of(tmp_path / "paper")} == want
    assert first["verification"]["enabled"]


def test_crops_and_rotations_are_found_through_zoomed_codes_and_keypoints(tmp_path):
    """Copies that move the whole frame (a crop, a crop + resize, a rotation): the thumbnail
    distance alone refuses some; the geometric check accepts them, and no different photos are
    joined."""
    photos = natural_tiles(30, side=128)  # the later ones include look-alike night sky
    kinds = ("crop", "crop_resize", "rotate") * 4
    folder = near_copies(tmp_path / "src", photos, kinds, seed=1)
    summary = run_dedup([folder], tmp_path / "out", **FAST)
    check = summary["verification"]
    assert check["geometric_accepted"] >= 1 and check["geometric_checked"] >= 1
    found = {frozenset(g["members"]) for g in groups_of(tmp_path / "out")}
    truth = {frozenset({f"t{i:03d}.png", f"t{i:03d}_{kind}"}) for i, kind in enumerate(kinds)}
    assert found <= truth  # pure: no photo joined to another photo's copy
    assert len(found) >= 9  # of 12
    for name in ("rejected.png", "geometric.png"):  # the decisions near the inlier threshold
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_mirror_images_are_copies_only_when_the_policy_says_so(tmp_path, tiles):
    """--mirrors same (training with flip augmentation): a left-right mirror image is a copy;
    the default keeps it as a different picture."""
    folder = write_folder(tmp_path / "src", tiles[:40])
    for i in range(4):
        (folder / f"t{i:03d}_mirror.png").write_bytes(demo.encode(tiles[i][:, ::-1], "PNG"))
    default = run_dedup([folder], tmp_path / "different", **FAST)
    assert default["settings"]["mirrors"] == "different" and default["duplicates"] == 0
    model = tmp_path / "different" / "autoencoder.pt"
    same = run_dedup([folder], tmp_path / "same", model=model, mirrors="same", workers=1,
                     device="cpu", progress=False)
    found = {frozenset(g["members"]) for g in groups_of(tmp_path / "same")}
    assert found == {frozenset({f"t{i:03d}.png", f"t{i:03d}_mirror.png"}) for i in range(4)}
    assert same["settings"]["mirrors"] == "same"
    refused = CliRunner().invoke(main, ["dedup", str(folder), "--out", str(tmp_path / "x"),
                                        "--mirrors", "same", "--no-verify"])
    assert refused.exit_code == 1 and "--mirrors same needs --verify" in refused.output


@pytest.mark.slow
def test_a_stop_signal_leaves_one_line_and_no_scratch(tmp_path, tiles):
    """SIGTERM while the hash trains: one line, exit 143, the crops' scratch files removed, and
    the folder is started over by the next run."""
    folder = write_folder(tmp_path / "src", tiles)
    out = tmp_path / "out"
    args = ["dedup", str(folder), "--out", str(out), "--min-steps", "100000", "--workers", "1",
            "--no-progress", "--device", "cpu"]
    with started(script("pipeline", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 text=True) as process:
        records = out / "records.jsonl"  # made just after crops.u8: wait for both
        wait_for(lambda: (out / "autoencoder.pt").exists() or (out / "crops.u8").exists()
                 and records.exists() and records.stat().st_size > 0, timeout=120,
                 what="the crops pass done")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 143 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("dedup: stopped by SIGTERM")
    assert not list(out.glob("*.u8")) and not (out / "summary.json").exists()
    summary = run_dedup([folder], out, **FAST)  # unfinished: started over without --overwrite
    assert summary["inputs"] == len(tiles)


def test_the_keep_rule_counts_the_pixels_the_header_states():
    """A large JPEG is decoded at a reduced scale (its draft); the keep rule must still see its
    full size, as it sees a PNG's or a WebP's (whose header the crops pass does not reread)."""
    rng = np.random.default_rng(0)
    img = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (1600, 1200),
                     interpolation=cv2.INTER_CUBIC)
    records = [Record(f"{fmt}", data=demo.encode(img, fmt, quality=90))
               for fmt in ("JPEG", "PNG", "WEBP")]
    chunk = crop_chunk(records, CropParams())
    assert [entry.status for entry in chunk.entries] == [None, None, None]
    assert chunk.pixels == [1600 * 1200] * 3
