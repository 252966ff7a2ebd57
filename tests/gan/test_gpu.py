"""Training on a CUDA GPU: skipped without one. GPU kernels are not bit-reproducible across
runs (cuDNN autotuning), so these compare with tolerances."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gan.checkpoint import load_checkpoint
from gan.train import train
from tests.gan.conftest import TINY

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
GPU = {**TINY, "device": "cuda", "sample_every": 100, "ckpt_every": 100}


def test_bf16_training_with_the_gpu_cache_resumes_on_the_gpu_and_onto_the_cpu(
    training_shards, tmp_path: Path
) -> None:
    shards = training_shards(shards=2, per_shard=32)
    whole = train(shards, tmp_path / "whole", **GPU, cache="gpu", steps=6)
    train(shards, tmp_path / "split", **GPU, cache="gpu", steps=3)
    split = train(shards, tmp_path / "split", **GPU, cache="gpu", steps=6, resume=True)
    assert split["notes"] == [] and whole["steps"] == split["steps"] == 6
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")["G"]
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["G"]
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), atol=1e-2, rtol=1e-2)
    on_cpu = train(shards, tmp_path / "split", **{**GPU, "device": "cpu"}, steps=8, resume=True)
    assert on_cpu["steps"] == 8
    assert "drawn on cuda, this run draws on cpu" in on_cpu["notes"][0]


def test_gpu_cache_too_large_for_the_gpu_is_refused_in_one_line(training_shards,
                                                               tmp_path: Path) -> None:
    from gan.data import DataError, check_gpu_cache_fits

    free = torch.cuda.mem_get_info()[0]
    with pytest.raises(DataError, match="--cache ram"):
        check_gpu_cache_fits(free // (64 * 64 * 3) + 1, 64, 1, free, "cuda:0")
