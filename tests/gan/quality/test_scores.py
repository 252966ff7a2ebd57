"""The maths against the references' own functions (pytorch-fid's FID, torch-fidelity's KID and
precision/recall) on synthetic features, and precision/recall against its definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gan.quality.scores import ScoreError, frechet_distance, kid, precision_recall
from gan.quality.statistics import RunningMoments, collect
from tests.gan.quality.references import references


def feature_sets(case: str) -> tuple[np.ndarray, np.ndarray]:
    """Two feature sets: same Gaussian, shifted and rescaled, or fewer samples than features
    (rank-deficient covariances, as with N < 2048 Inception features)."""
    rng = np.random.default_rng({"gaussian": 0, "shifted": 1, "rank-deficient": 2}[case])
    n, d = (60, 128) if case == "rank-deficient" else (600, 64)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    a = rng.normal(size=(n, d)) @ mixing + 3.0
    b = rng.normal(size=(n, d)) @ mixing + 3.0
    if case == "shifted":
        b = b * 1.3 + rng.normal(0, 0.5, size=d)
    return a, b


def moments(features: np.ndarray, batch: int = 37) -> tuple[np.ndarray, np.ndarray]:
    running = RunningMoments()
    for start in range(0, len(features), batch):
        running.add(torch.from_numpy(features[start:start + batch]))
    stats = running.statistics()
    return stats.mu, stats.sigma


@pytest.mark.parametrize("case", ["gaussian", "shifted", "rank-deficient"])
def test_fid_equals_pytorch_fid(case: str) -> None:
    references()
    from pytorch_fid.fid_score import calculate_frechet_distance

    a, b = feature_sets(case)
    (mu1, s1), (mu2, s2) = moments(a), moments(b)
    np.testing.assert_allclose(s1, np.cov(a, rowvar=False), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(mu1, a.mean(axis=0), rtol=1e-12)
    expected = calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0),
                                          np.cov(b, rowvar=False))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_fid_of_a_set_with_itself_is_zero_and_nan_is_refused() -> None:
    a, _ = feature_sets("shifted")
    mu, sigma = moments(a)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8
    sigma[0, 0] = np.nan
    with pytest.raises(ScoreError, match="NaN or infinity"):
        frechet_distance(mu, sigma, mu, sigma)


@pytest.mark.parametrize("case", ["gaussian", "shifted", "rank-deficient"])
def test_kid_equals_torch_fidelity(case: str) -> None:
    references()
    from torch_fidelity.metric_kid import kid_features_to_metric

    a, b = feature_sets(case)
    expected = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=20,
                                      kid_subset_size=50, rng_seed=7, verbose=False)
    mean, std, size = kid(a, b, subsets=20, subset_size=50, seed=7)
    assert size == 50
    assert mean == pytest.approx(expected["kernel_inception_distance_mean"], rel=1e-6)
    assert std == pytest.approx(expected["kernel_inception_distance_std"], rel=1e-6)


def test_kid_shrinks_its_subsets_to_the_smaller_set() -> None:
    a, b = feature_sets("shifted")
    assert kid(a[:50], b, subsets=3)[2] == 50


def precision_recall_by_definition(real: np.ndarray, fake: np.ndarray, k: int = 3):
    """Kynkaanniemi et al. 2019, written out with full distance matrices."""

    def distances(x, y):
        return np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))

    real_radius = np.sort(distances(real, real), axis=1)[:, k]  # column 0 is the point itself
    fake_radius = np.sort(distances(fake, fake), axis=1)[:, k]
    precision = (distances(fake, real) <= real_radius[None, :]).any(axis=1).mean()
    recall = (distances(real, fake) <= fake_radius[None, :]).any(axis=1).mean()
    return precision, recall


@pytest.mark.parametrize("case", ["gaussian", "shifted", "rank-deficient"])
def test_precision_recall_equals_the_definition_and_torch_fidelity(case: str) -> None:
    references()
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    a, b = feature_sets(case)
    a, b = a[:300, :32], b[:250, :32]  # balls that overlap, unequal sets
    ours = precision_recall(a, b, block=64)  # blocks smaller than the sets
    assert ours == pytest.approx(precision_recall_by_definition(a, b), abs=1e-12)
    theirs = calculate_precision_recall_full(torch.from_numpy(b), torch.from_numpy(a), 3, 100)
    assert ours == pytest.approx(theirs, abs=1e-6)


def test_precision_recall_of_clouds_with_known_overlap() -> None:
    """Real = clouds A and B, fake = the same A and a far cloud C: half the fakes lie on real
    points and half the reals on fake points, so both are exactly 0.5; same-distribution
    draws score high on both, disjoint ones zero."""
    rng = np.random.default_rng(0)
    cloud_a, cloud_b, cloud_c = (rng.normal(size=(200, 8)) + shift for shift in (0, 40, -40))
    real, fake = np.vstack([cloud_a, cloud_b]), np.vstack([cloud_a, cloud_c])
    assert precision_recall(real, fake, block=128) == (0.5, 0.5)
    same = precision_recall(rng.normal(size=(1000, 2)), rng.normal(size=(1000, 2)))
    assert min(same) > 0.9
    assert precision_recall(cloud_a, cloud_b) == (0.0, 0.0)


def test_collect_streams_features_to_disk(tmp_path) -> None:
    a, _ = feature_sets("gaussian")
    batches = (torch.from_numpy(a[i:i + 64]).float() for i in range(0, len(a), 64))
    stats = collect(batches, len(a), tmp_path / "f.npy")
    stored = np.load(tmp_path / "f.npy")
    np.testing.assert_array_equal(stored, a.astype(np.float32))
    np.testing.assert_allclose(stats.sigma, np.cov(stored.astype(np.float64), rowvar=False),
                               rtol=1e-6, atol=1e-9)
