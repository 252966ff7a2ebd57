"""Memorization: exact streaming k-NN, Meehan et al.'s C_T, and the copying proof."""

import csv

import cv2
import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu

from analysis.knn import IvfKnn, StreamingKnn
from analysis.memorization import (
    data_copying_statistic,
    mann_whitney_z,
    measure_copying,
    pixel_embedding,
)


def _brute_force(xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = ((xq[:, None, :].astype(np.float64) - xb[None]) ** 2).sum(-1)
    ids = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.sqrt(np.take_along_axis(d, ids, 1)), ids


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(20, d)) * 3
    return (centres[rng.integers(0, 20, n)] + rng.normal(size=(n, d))).astype(np.float32)


def test_streaming_knn_is_exact_across_chunks():
    xb, xq = _clustered(3000, 48, 0), _clustered(200, 48, 1)
    knn = StreamingKnn(xq, 4)
    for start in range(0, len(xb), 700):  # chunk boundaries fall inside neighbour lists
        knn.add(xb[start : start + 700])
    dist, ids = knn.result()
    want_d, want_ids = _brute_force(xq, xb, 4)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(dist, want_d, rtol=1e-4, atol=1e-3)


def test_ivf_with_reranking_finds_neighbours_with_exact_distances():
    xb, xq = _clustered(6000, 32, 2), _clustered(200, 32, 3)
    knn = IvfKnn(xq, 3, nlist=16, nprobe=4)
    for start in range(0, len(xb), 3000):
        knn.add(xb[start : start + 3000])
    knn.propose()
    for start in range(0, len(xb), 3000):
        knn.rerank(xb[start : start + 3000])
    dist, ids = knn.result()
    want_d, want_ids = _brute_force(xq, xb, 3)
    assert (ids[:, 0] == want_ids[:, 0]).mean() > 0.95
    exact = np.sqrt(((xq[:, None, :] - xb[ids]) ** 2).sum(-1))
    np.testing.assert_allclose(dist, exact, rtol=1e-4, atol=1e-3)


def test_mann_whitney_z_matches_scipy():
    rng = np.random.default_rng(0)
    gen, hold = rng.normal(size=30), np.round(rng.normal(0.5, size=40), 1)  # ties included
    u = mannwhitneyu(gen, hold).statistic
    m, n = len(gen), len(hold)
    assert mann_whitney_z(gen, hold) == pytest.approx((u - m * n / 2) / np.sqrt(m * n * (m + n + 1)
                                                                                 / 12))
    assert mann_whitney_z(gen - 10, hold) < -5  # generated much closer: strongly negative


def test_cells_without_generated_samples_are_left_out_not_crashed_on():
    rng = np.random.default_rng(0)
    hold_cells = np.repeat([0, 1, 2, 3], 50)  # cell 3 has held-out images only
    gen_cells = np.repeat([0, 1, 2], 40)
    stats = data_copying_statistic(gen_cells, rng.random(120), hold_cells, rng.random(200),
                                   cells=5)
    assert stats["generated_per_cell"] == [40, 40, 40, 0, 0]
    assert stats["cells_used"] == 3 and stats["cell_z"][3] is None
    assert stats["holdout_share_unvisited"] == pytest.approx(0.25)
    assert np.isfinite(stats["C_T"])


def _images(n: int, seed: int) -> torch.Tensor:
    """A fixed synthetic distribution: smooth 32x32 images from a 12-d latent, plus noise."""
    basis = np.random.default_rng(1234).normal(size=(12, 8 * 8 * 3))
    rng = np.random.default_rng(seed)
    small = (rng.normal(size=(n, 12)) @ basis / 3).reshape(n, 8, 8, 3).astype(np.float32)
    big = np.stack([cv2.resize(s, (32, 32), interpolation=cv2.INTER_CUBIC) for s in small])
    big += rng.normal(0, 0.05, big.shape).astype(np.float32)
    return torch.from_numpy(np.tanh(big)).permute(0, 3, 1, 2).contiguous()


def _batches(x: torch.Tensor, size: int = 500):
    return [x[i : i + size] for i in range(0, len(x), size)]


@pytest.fixture(scope="module")
def synthetic():
    return {"train": _images(3000, 0), "holdout": _images(500, 1), "fresh": _images(500, 2)}


def test_a_generator_that_returns_training_images_is_flagged_as_copying(synthetic, tmp_path):
    train = synthetic["train"]
    source = torch.from_numpy(np.random.default_rng(5).choice(len(train), 500, replace=False))
    copies = (train[source] + 0.01 * torch.randn(500, 3, 32, 32)).clamp(-1, 1)
    report = measure_copying(_batches(copies), lambda: iter(_batches(train)),
                             _batches(synthetic["holdout"]), tmp_path, k=3, cells=5, show=4)
    assert report["C_T"] < -10
    assert report["verdict"].startswith("data copying")
    # The grid and the CSV point at the very images that were copied.
    with open(tmp_path / "distances.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["set"] == "generated"]
    assert [int(r["train_index1"]) for r in rows] == source.tolist()
    sheet = cv2.imread(str(tmp_path / "neighbours.png"))
    assert sheet.shape[:2] == (2 + 4 * 34, 2 + 4 * 34)  # 4 samples x (sample + 3 neighbours)
    assert (tmp_path / "distances.png").stat().st_size > 10_000


def test_fresh_samples_from_the_same_distribution_are_not_flagged(synthetic, tmp_path):
    train = synthetic["train"]
    report = measure_copying(_batches(synthetic["fresh"]), lambda: iter(_batches(train)),
                             _batches(synthetic["holdout"]), tmp_path, k=3, cells=5, show=4)
    assert abs(report["C_T"]) < 3
    assert report["verdict"].startswith("no evidence of data copying")
    assert report["train"] == 3000 and report["generated"] == 500 and report["holdout"] == 500
    assert report["faiss_build"] in ("cpu", "gpu") and report["faiss_version"]  # which search ran


def test_ivf_search_gives_the_same_verdict(synthetic, tmp_path):
    train = synthetic["train"]
    copies = train[:500] + 0.01 * torch.randn(500, 3, 32, 32)
    report = measure_copying(_batches(copies), lambda: iter(_batches(train, 1500)),
                             _batches(synthetic["holdout"]), tmp_path, k=3, cells=5,
                             search="ivf", show=2)
    assert report["C_T"] < -10


def test_pixel_embedding_is_32x32_whatever_the_image_size():
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    emb = pixel_embedding(x)
    assert emb.shape == (2, 3072) and emb.dtype == np.float32
    np.testing.assert_allclose(emb[0, 0], x[0, 0, :2, :2].mean().item(), rtol=1e-5)
