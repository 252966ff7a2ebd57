"""Sampling helpers: priors, BatchNorm modes, grids, walks and vector arithmetic."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
import torch

from core.errors import UserError
from gan.models import Generator
from gan.sample import (
    arithmetic,
    arithmetic_sheet,
    generate,
    interpolate,
    sample_z,
    save_grid,
    walk_z,
)


@pytest.fixture
def G() -> Generator:
    torch.manual_seed(0)
    g = Generator(32, nz=8, width=32, arch="compact")
    g.train()
    for _ in range(3):  # running stats that differ from the batch statistics
        g(torch.rand(16, 8) * 2 - 1)
    return g


def test_priors() -> None:
    u = sample_z(10_000, 4, "uniform", torch.Generator().manual_seed(0))
    assert u.min() >= -1 and u.max() <= 1 and u.min() < -0.99 and u.max() > 0.99
    n = sample_z(10_000, 4, "normal", torch.Generator().manual_seed(0))
    assert n.std().item() == pytest.approx(1, rel=0.05)
    again = sample_z(10_000, 4, "uniform", torch.Generator().manual_seed(0))
    assert torch.equal(u, again)
    with pytest.raises(ValueError):
        sample_z(1, 4, "cauchy")


def test_batch_statistics_make_a_sample_depend_on_its_batch(G: Generator) -> None:
    z = sample_z(8, 8, "uniform", torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in G.state_dict().items()}
    alone_batch = generate(G, z[:4], "batch")
    whole_batch = generate(G, z, "batch")[:4]
    assert not torch.allclose(alone_batch, whole_batch, atol=1e-4)
    alone_running = generate(G, z[:4], "running")
    whole_running = generate(G, z, "running")[:4]
    torch.testing.assert_close(alone_running, whole_running)
    assert not torch.allclose(alone_batch, alone_running, atol=1e-4)
    # Sampling leaves the model as it found it: same mode, same running statistics.
    assert G.training
    for k, v in G.state_dict().items():
        assert torch.equal(v, before[k]), k
    G.eval()
    generate(G, z, "batch")
    assert not G.training


def test_save_grid(tmp_path: Path, G: Generator) -> None:
    images = generate(G, sample_z(10, 8, "uniform"))
    plain = save_grid(images, tmp_path / "plain.png", nrow=5)
    numbered = save_grid(images, tmp_path / "numbered.png", nrow=5, numbered=True)
    a, b = cv2.imread(str(plain)), cv2.imread(str(numbered))
    assert a.shape == (2 * 34 + 2, 5 * 34 + 2, 3)
    assert b.shape[0] > a.shape[0] and b.shape[1] == a.shape[1]
    assert not list(tmp_path.glob("*.tmp"))


def test_walk_rows_join_consecutive_points() -> None:
    points = sample_z(4, 6, "uniform", torch.Generator().manual_seed(0))
    for spherical in (False, True):
        walk = walk_z(points, 5, spherical).view(3, 5, 6)
        torch.testing.assert_close(walk[:, 0], points[:-1])
        torch.testing.assert_close(walk[:, -1], points[1:])
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    mid = walk_z(torch.cat([a, b]), 3, spherical=True)[1]
    assert mid.norm().item() == pytest.approx(1.0)  # slerp stays on the sphere, lerp does not
    assert walk_z(torch.cat([a, b]), 3)[1].norm().item() == pytest.approx(2**-0.5)


def test_interpolate_shape(G: Generator) -> None:
    assert interpolate(G, "uniform", points=3, steps=4).shape == (8, 3, 32, 32)


def test_arithmetic(G: Generator) -> None:
    z = sample_z(12, 8, "uniform", torch.Generator().manual_seed(2))
    out = arithmetic(G, z, [0, 1, 2], [3, 4, 5], [6, 7, 8], bn="running")
    y = z[0:3].mean(0) - z[3:6].mean(0) + z[6:9].mean(0)
    torch.testing.assert_close(out["result"], generate(G, y[None], "running")[0])
    assert out["samples"].shape == (8, 3, 32, 32)
    ex = out["exemplars"]
    pixel = (ex[0:3].mean(0) - ex[3:6].mean(0) + ex[6:9].mean(0)).clamp(-1, 1)
    torch.testing.assert_close(out["pixel_result"], pixel)
    sheet = arithmetic_sheet(out)
    assert sheet.shape == (5 * 34 + 2, 9 * 34 + 2, 3)
    with pytest.raises(UserError, match="outside"):
        arithmetic(G, z, [0], [1], [99])
