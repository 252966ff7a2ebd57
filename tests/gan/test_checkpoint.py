"""Checkpoints are plain data: they load with weights_only=True and rebuild the same networks."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from gan.checkpoint import CheckpointError, load_checkpoint, load_models, save_checkpoint
from gan.models import build_models

CONFIG = {"image_size": 32, "nz": 16, "width": 32, "arch": "compact", "prior": "uniform"}


def _save(path: Path, **extra) -> tuple:
    torch.manual_seed(1)
    G, D = build_models(CONFIG)
    G(torch.rand(4, 16))  # move BatchNorm running stats off their initial values
    save_checkpoint(path, {"config": CONFIG, "G": G.state_dict(), "D": D.state_dict(), **extra})
    return G, D


def test_round_trip_rebuilds_identical_models(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    G, D = _save(path, step=7)
    raw = torch.load(path, weights_only=True)  # plain data, no code unpickled
    assert raw["step"] == 7
    G2, D2, config = load_models(path)
    assert config == CONFIG
    assert not G2.training and not D2.training
    G.eval()
    D.eval()
    z = torch.rand(5, 16)
    assert torch.equal(G(z), G2(z))
    x = torch.rand(5, 3, 32, 32)
    assert torch.equal(D(x), D2(x))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")


def test_garbage_and_truncated_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(junk)
    good = tmp_path / "good.pt"
    _save(good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(truncated)


def test_other_torch_files_are_not_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a dcgan-pipeline checkpoint"):
        load_checkpoint(path)


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": "dcgan-pipeline/checkpoint", "x": Payload()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refused: it holds pickled Python objects") as err:
        load_checkpoint(path)
    assert "weights_only" not in str(err.value)  # never torch's advice to load it anyway


def test_config_without_model_keys(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"config": {"nz": 16}})
    with pytest.raises(CheckpointError, match="lacks image_size"):
        load_models(path)
