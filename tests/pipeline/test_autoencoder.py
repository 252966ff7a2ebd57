"""The semantic-hash autoencoder: the properties the dedup stage's hash depends on."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from core.torch_files import TorchFileError, UnsafeFileError
from pipeline import demo
from pipeline.dedup.autoencoder import (
    HashConfig,
    SemanticHashAutoencoder,
    corrupt,
    hash_encoder,
    load_model,
    save_model,
    to_input,
)

CONFIG = HashConfig(side=32, bits=128, noise=1.0, dropout=0.1, binary=True, code_noise=3.0)


def semantic_hash(model: SemanticHashAutoencoder, crops: np.ndarray) -> np.ndarray:
    return hash_encoder(model).codes(crops)


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    img = demo.photo("astronaut.png")
    return np.stack([img[y : y + 32, x : x + 32] for y in range(0, 256, 32)
                     for x in range(0, 256, 32)])


def test_codes_ignore_brightness(crops):
    """Each crop is standardized first, so a global brightness change keeps its code, even for
    an untrained encoder whose pre-activations sit anywhere near the threshold."""
    torch.manual_seed(0)
    model = SemanticHashAutoencoder(CONFIG).eval()
    unclipped = crops[crops.reshape(len(crops), -1).max(axis=1) <= 235]
    assert len(unclipped) > 20
    brighter = unclipped + np.uint8(20)
    assert np.array_equal(semantic_hash(model, unclipped), semantic_hash(model, brighter))


def test_numpy_codes_are_the_trained_encoders_active_units(crops):
    """Hashing runs in numpy on the weights (pipeline.dedup.hashing); each bit must be the torch
    encoder's own ReLU, wherever the pre-activation is not within rounding of the threshold."""
    torch.manual_seed(5)
    model = SemanticHashAutoencoder(CONFIG).eval()
    with torch.no_grad():
        pre = model.preactivation(to_input(crops)).numpy()
    bits = np.unpackbits(semantic_hash(model, crops), axis=1).astype(bool)
    clear = np.abs(pre) > 1e-4
    assert clear.mean() > 0.99
    assert np.array_equal(bits[clear], pre[clear] > 0)


def test_corruption_is_realistic_and_off_at_zero(crops):
    x = to_input(crops)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(corrupt(x, 0.0, gen), x)
    noisy = corrupt(x, 1.0, gen)
    assert noisy.shape == x.shape and noisy.min() >= -1 and noisy.max() <= 1
    change = (noisy - x).abs().mean().item() * 127.5
    assert 1 < change < 40  # grey levels: a re-upload, not a different picture


def test_a_quarter_of_the_training_crops_carry_a_caption():
    """The caption corruption: on a flat grey crop (no other change shows as a sharp stroke),
    about a quarter get a thin band of white or black, 1-3 px high, across part of a row."""
    x = torch.zeros(4000, 3, 32, 32)
    marked = corrupt(x, 1.0, torch.Generator().manual_seed(0)).abs() > 0.3
    with_band = marked.any(dim=(1, 2, 3))
    assert 0.18 < with_band.float().mean().item() < 0.32
    rows = marked[with_band].any(dim=(1, 3)).sum(dim=1)  # rows the band covers
    assert rows.min() >= 1 and rows.max() <= 3
    cols = marked[with_band].any(dim=(1, 2)).sum(dim=1)
    assert cols.max() <= 32 and cols.float().mean() > 8


def test_saved_model_reloads_safely_with_identical_codes(tmp_path, crops):
    torch.manual_seed(1)
    model = SemanticHashAutoencoder(CONFIG).eval()
    save_model(model, tmp_path / "ae.pt", {"note": "test"})
    payload = torch.load(tmp_path / "ae.pt", weights_only=True)
    assert payload["config"] == {"side": 32, "bits": 128, "noise": 1.0, "dropout": 0.1,
                                 "binary": True, "code_noise": 3.0}
    again, info = load_model(tmp_path / "ae.pt")
    assert info == {"note": "test"}
    assert np.array_equal(semantic_hash(model, crops), semantic_hash(again, crops))


def test_a_file_that_is_not_a_hash_model_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(TorchFileError, match="not a semantic-hash autoencoder"):
        load_model(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello\n")
    with pytest.raises(TorchFileError, match="not a file saved by torch.save"):
        load_model(tmp_path / "text.pt")
    # A pickled builtin: code. (Not `print`: importing ray, as other tests do, replaces it.)
    torch.save({"config": len}, tmp_path / "code.pt")
    with pytest.raises(UnsafeFileError, match=r"refused: it holds pickled Python objects \(len\)"
                       ) as err:
        load_model(tmp_path / "code.pt")
    assert "weights_only" not in str(err.value)


def test_binary_decoder_sees_only_the_hash(crops):
    """With `binary`, the reconstruction is a function of the 128-bit code alone: the decoder
    is trained on exactly what the hash keeps, so the information has to live in the bits."""
    torch.manual_seed(2)
    model = SemanticHashAutoencoder(CONFIG).eval()
    with torch.no_grad():
        bits = (model.preactivation(to_input(crops)) > 0).float()
    expected = model.decoder(bits).view(len(crops), 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(to_input(crops)), expected, atol=1e-5)


def test_code_noise_acts_only_while_training(crops):
    """The noise that trains stable bits never touches the codes a user gets."""
    torch.manual_seed(3)
    model = SemanticHashAutoencoder(replace(CONFIG, dropout=0.0))
    quiet = SemanticHashAutoencoder(replace(CONFIG, dropout=0.0, code_noise=0.0)).train()
    x = to_input(crops)
    with torch.no_grad():
        assert torch.equal(quiet(x), quiet(x))
        model.train()
        assert not torch.equal(model(x), model(x))  # the code noise, while training
        model.eval()
        assert torch.equal(model(x), model(x))
    assert np.array_equal(semantic_hash(model, crops), semantic_hash(model, crops))


def test_models_saved_before_binary_codes_still_load(tmp_path, crops):
    """A hash saved with the older four-field config is the ReLU-decoder model it was."""
    torch.manual_seed(4)
    old = SemanticHashAutoencoder(HashConfig(side=32, bits=128, noise=1.0, dropout=0.1))
    torch.save({"config": {"side": 32, "bits": 128, "noise": 1.0, "dropout": 0.1},
                "state_dict": old.state_dict(), "info": {}}, tmp_path / "old.pt")
    model, _ = load_model(tmp_path / "old.pt")
    assert not model.config.binary and model.config.code_noise == 0.0
    assert np.array_equal(semantic_hash(model, crops), semantic_hash(old, crops))
