"""`gan metrics` and `gan train --metrics-every` end to end on real shards, with a small
TorchScript extractor (Inception at 299 x 299 is too slow for a CPU test suite; the network
itself is checked in test_inception.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from gan.cli import main
from gan.metrics import read_metrics
from gan.train import train
from tests.gan.conftest import TINY, write_shards

SCORES = ("fid", "kid", "kid_std", "precision", "recall")


def invoke(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def one_error_line(result, text: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and text in lines[0], result.output


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> dict[str, Path]:
    """Real shards, another set of shards, a 2-step checkpoint and a TorchScript extractor."""
    root = tmp_path_factory.mktemp("quality")
    torch.manual_seed(0)
    extractor = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                    torch.nn.Linear(48, 24), torch.nn.Tanh())
    torch.jit.save(torch.jit.script(extractor), root / "extractor.pt")
    real = write_shards(root / "real", shards=2, per_shard=24, seed=0)
    train(real, root / "run", **TINY, steps=2, sample_every=100)
    return {"real": real, "other": write_shards(root / "other", shards=1, per_shard=30, seed=1),
            "ckpt": root / "run" / "checkpoints" / "last.pt", "features": root / "extractor.pt"}


def test_metrics_of_a_checkpoint(material, tmp_path, private_cache) -> None:
    args = ("metrics", "--ckpt", material["ckpt"], "--real", material["real"], "--n", 40,
            "--features", material["features"], "--seed", 3, "--batch-size", 16,
            "--kid-subset-size", 20, "--no-progress")
    result = invoke(*args, "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "FID" in result.output and "recall" in result.output
    report = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert all(math.isfinite(report["values"][k]) for k in SCORES)
    assert report["values"]["fid"] > 0
    assert (report["n_fake"], report["n_real"], report["seed"]) == (40, 40, 3)
    assert report["extractor"]["name"] == "torchscript:extractor.pt"
    assert len(report["extractor"]["sha256"]) == 64
    assert report["fake"]["checkpoint"] == str(material["ckpt"])
    assert {"torch", "numpy", "scipy", "python"} <= set(report["versions"])
    assert report["values"]["kid_subset_size"] == 20
    assert not list((tmp_path / "a").glob(".features-*"))  # the fakes' scratch is gone

    # a second checkpoint (here: the same one, another seed) reuses the real statistics
    entries = list((private_cache / "real-statistics").iterdir())
    again = invoke(*args[:-5], "--seed", 4, "--no-progress", "--out", tmp_path / "b")
    assert again.exit_code == 0, again.output
    assert list((private_cache / "real-statistics").iterdir()) == entries
    second = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert second["real"]["cache"] == report["real"]["cache"]
    assert second["values"]["fid"] != report["values"]["fid"]  # other samples

    # a finished report is not replaced without --overwrite
    one_error_line(invoke(*args, "--out", tmp_path / "a"), "--overwrite")


def test_metrics_of_two_image_sets(material, tmp_path) -> None:
    same = invoke("metrics", "--fake", material["real"], "--real", material["real"], "--n",
                  1000, "--features", material["features"], "--no-progress", "--out",
                  tmp_path / "same")
    assert same.exit_code == 0, same.output
    values = json.loads((tmp_path / "same" / "metrics.json").read_text())["values"]
    assert abs(values["fid"]) < 1e-6 and values["precision"] == values["recall"] == 1.0
    other = invoke("metrics", "--fake", material["other"], "--real", material["real"],
                   "--metrics", "fid", "--features", material["features"], "--no-progress",
                   "--out", tmp_path / "other")
    assert other.exit_code == 0, other.output
    report = json.loads((tmp_path / "other" / "metrics.json").read_text())
    assert set(report["values"]) == {"fid"} and report["values"]["fid"] > 1e-4
    assert (report["n_fake"], report["n_real"]) == (30, 48)  # the sets are smaller than --n


def test_a_missing_inception_file_is_one_line(material, tmp_path) -> None:
    result = invoke("metrics", "--ckpt", material["ckpt"], "--real", material["real"], "--out",
                    tmp_path / "out")
    one_error_line(result, "no Inception weights: download https://github.com/mseitzer/"
                           "pytorch-fid/releases/download/fid_weights/"
                           "pt_inception-2015-12-05-6726825d.pth and put it in")
    assert not (tmp_path / "out").exists()
    one_error_line(invoke("metrics", "--ckpt", material["ckpt"], "--real", material["real"],
                          "--inception", tmp_path / "nope.pth", "--out", tmp_path / "out"),
                   "nope.pth: no such file")
    one_error_line(invoke("metrics", "--real", material["real"], "--features",
                          material["features"], "--out", tmp_path / "out"),
                   "give --ckpt (score a generator) or --fake")
    one_error_line(invoke("metrics", "--ckpt", material["ckpt"], "--real", tmp_path / "none",
                          "--features", material["features"], "--out", tmp_path / "out"),
                   "none: no such file or folder")
    assert not (tmp_path / "out").exists()
    (tmp_path / "garbage.pt").write_bytes(b"not a zip archive")
    one_error_line(invoke("metrics", "--fake", material["real"], "--real", material["real"],
                          "--features", tmp_path / "garbage.pt", "--out", tmp_path / "out"),
                   "garbage.pt: not a TorchScript module")


@pytest.mark.slow
def test_training_scores_its_samples_and_keeps_the_best(material, tmp_path) -> None:
    run = tmp_path / "run"
    result = invoke("train", "--data", material["real"], "--out", run, "--image-size", 32,
                    "--batch-size", 8, "--nz", 16, "--width", 32, "--arch", "compact",
                    "--workers", 0, "--device", "cpu", "--steps", 4, "--log-every", 2,
                    "--metrics-every", 2, "--metrics-real", material["real"], "--metrics-n", 24,
                    "--metrics-features", material["features"], "--no-progress")
    assert result.exit_code == 0, result.output
    rows = read_metrics(run / "metrics.jsonl")
    scored = [row for row in rows if "fid" in row]
    assert [row["step"] for row in scored] == [2, 4]
    assert all(math.isfinite(row[k]) for row in scored for k in SCORES)
    assert scored[0]["extractor"] == "torchscript:extractor.pt"
    assert [row["step"] for row in rows if "loss_D" in row] == [1, 2, 3, 4]
    assert (run / "loss_curve.png").is_file() and (run / "checkpoints" / "best.pt").is_file()
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["step"]
    assert best == min(scored, key=lambda row: row["fid"])["step"]
    assert not list(run.glob(".features-*"))

    # resumed, the run goes on scoring, and best.pt stays the lowest FID of the whole log
    train(material["real"], run, **TINY, steps=6, resume=True, metrics_every=2,
          metrics_real=str(material["real"]), metrics_n=24,
          metrics_features=str(material["features"]))
    scored = [row for row in read_metrics(run / "metrics.jsonl") if "fid" in row]
    assert [row["step"] for row in scored] == [2, 4, 6]
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["step"]
    assert best == min(scored, key=lambda row: row["fid"])["step"]


def test_metrics_every_needs_real_images_and_an_extractor(material, tmp_path) -> None:
    one_error_line(invoke("train", "--data", material["real"], "--out", tmp_path / "run",
                          "--image-size", 32, "--metrics-every", 2), "--metrics-real")
    one_error_line(invoke("train", "--data", material["real"], "--out", tmp_path / "run",
                          "--image-size", 32, "--metrics-every", 2, "--metrics-real",
                          material["real"]), "or pass --metrics-inception PATH")
    assert not (tmp_path / "run").exists()  # refused before the run folder is made
