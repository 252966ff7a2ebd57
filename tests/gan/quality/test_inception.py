"""The FID network: our module against pytorch-fid's InceptionV3 with the same random weights
(the real ones cannot be downloaded here), and, when the real weight file is present, FID
against pytorch-fid's own `fid_score` on the same PNGs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from core.pixels import to_float
from gan.quality.extractors import ExtractorError, load_inception
from gan.quality.inception import FIDInceptionV3
from tests.conftest import natural_tiles, write_photos
from tests.gan.quality.references import references


def random_inception(seed: int = 0) -> FIDInceptionV3:
    """Random weights, and BatchNorm statistics that are not the identity (they matter)."""
    torch.manual_seed(seed)
    net = FIDInceptionV3()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    return net.eval()


def reference_inception(state: dict, monkeypatch):
    """pytorch-fid's InceptionV3 (2048-d pool block), its weight download answered by `state`."""
    references()
    import pytorch_fid.inception as reference

    monkeypatch.setattr(reference, "load_state_dict_from_url", lambda *a, **k: state)
    return reference.InceptionV3([reference.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()


def test_state_dict_is_the_reference_networks(monkeypatch) -> None:
    """The same names and shapes as torchvision's Inception3(num_classes=1008,
    aux_logits=False), the network pytorch-fid's weight file was saved from."""
    references()
    import torchvision

    theirs = torchvision.models.inception_v3(num_classes=1008, aux_logits=False,
                                             init_weights=False).state_dict()
    ours = FIDInceptionV3().state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in theirs.items()}


def test_features_equal_pytorch_fids_network(monkeypatch) -> None:
    """Two 48x48 photo tiles (resized to 299 inside both networks) -> the same 2048 features."""
    ours = random_inception()
    theirs = reference_inception(ours.state_dict(), monkeypatch)
    images = to_float(np.stack(natural_tiles(2, side=48)))
    with torch.inference_mode():
        expected = theirs((images + 1) / 2)[0].flatten(1)  # pytorch-fid takes [0, 1]
        got = ours(images)
    assert got.shape == (2, 2048)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_weights_of_another_network_are_refused(tmp_path) -> None:
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_inception().state_dict(), path)
    with pytest.raises(ExtractorError, match="SHA-256 .* is not that of"):
        load_inception(path)
    assert load_inception(path, check_sha256=False).sha256  # random weights, for tests only
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ExtractorError, match="not the FID Inception state dict"):
        load_inception(tmp_path / "other.pth", check_sha256=False)


def test_fid_of_two_halves_matches_pytorch_fid(tmp_path, monkeypatch) -> None:
    """With the real weights: FID between two halves of photo tiles, ours (from shards) vs
    pytorch-fid's calculate_fid_given_paths (from the same images as PNG files)."""
    weights = os.environ.get("DCGAN_INCEPTION_REAL")  # the tests' cache folder is empty
    if not weights:
        pytest.skip("no real Inception file (DCGAN_INCEPTION_REAL=PATH runs this test)")
    references()
    import pytorch_fid.inception as reference
    from pytorch_fid.fid_score import calculate_fid_given_paths

    from core.torch_files import load_plain
    from gan.quality.evaluate import run_metrics
    from pipeline.sinks import write_image_shards

    monkeypatch.setattr(reference, "load_state_dict_from_url",
                        lambda *a, **k: load_plain(weights))
    tiles = natural_tiles(40)
    halves = tiles[:20], tiles[20:]
    folders = [tmp_path / "png0", tmp_path / "png1"]
    for folder, half in zip(folders, halves, strict=True):
        write_photos(folder, [f"{j:03d}.png" for j in range(20)], half)
    write_image_shards(tmp_path / "real", iter(halves[0]), prefix="real", per_shard=20,
                       image_size=64, format="png")
    report = run_metrics(real=str(tmp_path / "real"), fake=str(folders[1]), n=20,
                         metrics=("fid",), inception=weights, out=tmp_path / "scored",
                         progress=False)
    expected = calculate_fid_given_paths([str(f) for f in folders], 20, "cpu", 2048, 0)
    assert report["values"]["fid"] == pytest.approx(expected, rel=1e-3)
