"""The `gan` commands: one-line errors for user mistakes, PNGs for people, DDP via torchrun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gan.checkpoint import load_checkpoint
from gan.cli import main
from gan.metrics import read_metrics
from gan.train import train
from tests.gan.conftest import TINY
from tests.processes import run as run_command
from tests.processes import script, started, wait_for

REPO = Path(__file__).resolve().parents[2]


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_user_error(result, text: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert text in result.output


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from tests.gan.conftest import write_shards

    root = tmp_path_factory.mktemp("ckpt")
    torch.set_num_threads(1)
    train(write_shards(root / "shards", shards=1, per_shard=16), root / "run", **TINY, steps=2,
          sample_every=100)
    return root / "run" / "checkpoints" / "last.pt"


def test_help_explains_the_options() -> None:
    result = invoke("train", "--help")
    assert result.exit_code == 0
    words = " ".join(result.output.split())  # as wrapped for any terminal width
    for text in ("--cache", "--arch", "compact", "uniform", "[default: 0.0002; x>0]", "--resume",
                 "--overwrite", "--no-progress"):
        assert text in words
    for command in ("sample", "interpolate", "arithmetic"):
        assert "--bn" in invoke(command, "--help").output


def test_missing_shards(tmp_path: Path) -> None:
    assert_user_error(invoke("train", "--data", tmp_path / "nope", "--out", tmp_path / "run"),
                      "nope")


def test_wrong_image_size(training_shards, tmp_path: Path) -> None:
    shards = training_shards(shards=1, per_shard=8, size=32)
    result = invoke("train", "--data", shards, "--out", tmp_path / "run", "--image-size", "64")
    assert_user_error(result, "--size 64")
    assert not (tmp_path / "run").exists()


def test_gpu_cache_without_gpu(training_shards, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = invoke("train", "--data", training_shards(shards=1, per_shard=8), "--out",
                    tmp_path / "run", "--image-size", "32", "--cache", "gpu", "--batch-size", "4")
    assert_user_error(result, "needs a CUDA device")


def test_an_existing_run_is_refused_in_one_line(checkpoint: Path) -> None:
    run, shards = checkpoint.parents[1], checkpoint.parents[2] / "shards"
    assert_user_error(invoke("train", "--data", shards, "--out", run, "--image-size", "32"),
                      "already holds a finished run")
    assert_user_error(invoke("train", "--data", shards, "--out", run, "--resume", "--overwrite"),
                      "not both")


def test_sample_writes_a_numbered_grid_and_z(checkpoint: Path, tmp_path: Path) -> None:
    result = invoke("sample", "--ckpt", checkpoint, "--n", 12, "--nrow", 6, "--out",
                    tmp_path / "grid.png", "--save-z", tmp_path / "z.npy")
    assert result.exit_code == 0, result.output
    grid = cv2.imread(str(tmp_path / "grid.png"))
    assert grid.shape[1] == 6 * 34 + 2 and grid.shape[0] > 2 * 34 + 2  # number strips added
    z = np.load(tmp_path / "z.npy")
    assert z.shape == (12, 16) and np.abs(z).max() <= 1


def test_interpolate(checkpoint: Path, tmp_path: Path) -> None:
    result = invoke("interpolate", "--ckpt", checkpoint, "--points", 3, "--steps", 5, "--slerp",
                    "--out", tmp_path / "walk.png")
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(tmp_path / "walk.png")).shape == (2 * 34 + 2, 5 * 34 + 2, 3)


def test_arithmetic(checkpoint: Path, tmp_path: Path) -> None:
    invoke("sample", "--ckpt", checkpoint, "--n", 9, "--out", tmp_path / "g.png",
           "--save-z", tmp_path / "z.npy")
    result = invoke("arithmetic", "--ckpt", checkpoint, "--z", tmp_path / "z.npy", "--a", "0,1,2",
                    "--b", "3,4,5", "--c", "6,7,8", "--out", tmp_path / "arith.png")
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(tmp_path / "arith.png")).shape == (5 * 34 + 2, 9 * 34 + 2, 3)
    assert_user_error(invoke("arithmetic", "--ckpt", checkpoint, "--z", tmp_path / "z.npy",
                             "--a", "0", "--b", "1", "--c", "42"), "outside")
    np.save(tmp_path / "bad.npy", np.zeros((3, 5)))
    assert_user_error(invoke("arithmetic", "--ckpt", checkpoint, "--z", tmp_path / "bad.npy",
                             "--a", "0", "--b", "1", "--c", "2"), "expected an (N, 16)")


def test_bad_checkpoint_or_device(checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "x.pt").write_text("hello")
    assert_user_error(invoke("sample", "--ckpt", tmp_path / "x.pt"), "not a readable checkpoint")
    assert_user_error(invoke("sample", "--ckpt", tmp_path / "y.pt"), "no such checkpoint")
    assert_user_error(invoke("sample", "--ckpt", checkpoint, "--device", "gpu"), "--device 'gpu'")
    assert_user_error(invoke("sample", "--ckpt", checkpoint, "--device", "bogus"),
                      "expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        assert_user_error(invoke("sample", "--ckpt", checkpoint, "--device", "cuda"),
                          "torch sees no CUDA GPU here")


def test_absurd_figure_sizes_are_refused_before_allocating(checkpoint: Path) -> None:
    """--n's range in --help is the cap; --points and --steps each have theirs, and their
    product is capped too."""
    result = invoke("sample", "--ckpt", checkpoint, "--n", 2049)
    assert result.exit_code == 2
    assert "Invalid value for '--n': 2049 is not in the range 1<=x<=2048" in result.output
    assert "1<=x<=2048" in invoke("sample", "--help").output
    assert invoke("sample", "--ckpt", checkpoint, "--n", 2048, "--out",
                  checkpoint.parent / "big.png").exit_code == 0
    result = invoke("interpolate", "--ckpt", checkpoint, "--points", 10_000)
    assert result.exit_code == 2 and "not in the range 2<=x<=1025" in result.output
    assert_user_error(invoke("interpolate", "--ckpt", checkpoint, "--points", 1025, "--steps",
                             3), "--points 1025 --steps 3 asks for 3072 images in one figure")


@pytest.mark.parametrize(("z", "message"), [
    (np.full((9, 16), np.nan), "holds NaN or infinite"),
    (np.ones((9, 16), np.complex64), "expected real numbers, found complex64"),
    (np.array([["a"] * 16] * 9), "expected real numbers"),
])
def test_arithmetic_refuses_z_that_is_not_finite_real_numbers(checkpoint: Path, tmp_path: Path,
                                                              z: np.ndarray,
                                                              message: str) -> None:
    np.save(tmp_path / "z.npy", z)
    result = invoke("arithmetic", "--ckpt", checkpoint, "--z", tmp_path / "z.npy", "--a", "0",
                    "--b", "1", "--c", "2", "--out", tmp_path / "arith.png")
    assert_user_error(result, f"z.npy: {message}")
    assert not (tmp_path / "arith.png").exists()


@pytest.mark.slow
def test_ddp_two_cpu_processes_write_one_set_of_files(training_shards, tmp_path: Path) -> None:
    shards = training_shards(shards=4, per_shard=16)  # 2 shards per rank, 2 batches each
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "gan.cli", "train", "--data", str(shards),
               "--out", str(run), "--image-size", "32", "--batch-size", "8", "--nz", "16",
               "--width", "32", "--arch", "compact", "--workers", "0", "--device", "cpu",
               "--epochs", "2", "--sample-every", "4", "--ckpt-every", "4", "--log-every", "2"]
    done = run_command(command, env=env, timeout=240)  # a hang ends all torchrun ranks
    stdout, stderr = done.stdout, done.stderr
    assert done.returncode == 0, stderr[-3000:]
    assert "trained 8 steps" in stdout and "on 2 x cpu" in stdout
    assert stdout.count("trained") == 1  # only rank 0 reports
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, 9))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "last.pt", "step-0000004.pt", "step-0000008.pt"]
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "step-0000004.png", "step-0000008.png"]
    assert not list(run.rglob("*.tmp"))


def _cli_options(options: dict) -> list[str]:
    """TrainConfig options as `gan train` flags."""
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append(f"--no-{key}" if key == "progress" else "")
        else:
            flags += [flag, str(value)]
    return [f for f in flags if f]


@pytest.mark.slow
@pytest.mark.parametrize("how, sigint_ignored", [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_a_stop_signal_saves_the_step_and_resume_continues_exactly(
        training_shards, tmp_path: Path, how, sigint_ignored) -> None:
    """Ctrl-C (even in a process that inherited SIGINT as ignored) or SIGTERM ends training
    between two steps with last.pt saved there and one line; --resume then gives what an
    uninterrupted run of the same length gives."""
    shards = training_shards(shards=2, per_shard=24)
    options = {**TINY, "seed": 1, "sample_every": 1000, "ckpt_every": 1000}
    args = ["train", "--data", str(shards), "--out", str(tmp_path / "split"),
            *_cli_options(options)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as this process computes (one_thread)
    with started(script("gan", *args, "--steps", "100000"), sigint_ignored=sigint_ignored,
                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        metrics = tmp_path / "split" / "metrics.jsonl"
        wait_for(lambda: metrics.is_file() and metrics.read_text().count("\n") >= 4
                 or process.poll() is not None, timeout=120, what="4 training steps logged")
        process.send_signal(how)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + how, stderr
    assert "Traceback" not in stderr and stdout == ""
    line = stderr.strip().splitlines()[-1]
    stopped = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["step"]
    assert line.startswith(f"gan train: stopped by {how.name} at step {stopped};")
    assert "--resume continues exactly" in line
    assert read_metrics(metrics)[-1]["step"] == stopped

    total = stopped + 5
    resumed = run_command(script("gan", *args, "--steps", str(total), "--resume"), env=env,
                          timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    train(shards, tmp_path / "whole", **options, steps=total)
    whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    split = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    for part in ("G", "D"):
        for key, value in whole[part].items():
            assert torch.equal(value, split[part][key]), (part, key)


def test_resume_names_a_default_given_explicitly_that_the_checkpoint_keeps(
        training_shards, tmp_path: Path) -> None:
    """The checkpoint trained with --batch-size 8 and --lr 0.001; the resumed command gives the
    defaults 128 and 0.0002 explicitly, which are not used: said in one line."""
    shards = training_shards(shards=1, per_shard=16)
    run = tmp_path / "run"
    train(shards, run, **{**TINY, "lr": 1e-3}, steps=1, sample_every=100)
    tiny = ["--image-size", 32, "--nz", 16, "--width", 32, "--arch", "compact", "--workers", 0,
            "--device", "cpu", "--no-progress", "--sample-every", 100]
    result = invoke("train", "--data", shards, "--out", run, *tiny, "--steps", 2, "--resume",
                    "--batch-size", 128, "--lr", 2e-4, "--seed", 0)
    assert result.exit_code == 0, result.output
    assert ("note: --resume continues the checkpoint's run as it began: --batch-size 128, --lr "
            "0.0002 not used (it keeps 8, 0.001); start a new run (another --out) to change "
            "them") in result.output.splitlines()
    result = invoke("train", "--data", shards, "--out", run, *tiny, "--steps", 3, "--resume")
    assert result.exit_code == 0, result.output
    assert "note:" not in result.output  # the defaults left unsaid are not named
