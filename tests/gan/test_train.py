"""`gan train` in Python: learning, files, exact resume, divergence guard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import gan.train as train_module
from core.errors import UserError
from core.outputs import OutputError, claim_output, hold_output
from core.pixels import to_uint8
from gan.checkpoint import CheckpointError, load_checkpoint, load_models, save_checkpoint
from gan.metrics import read_metrics
from gan.models import build_models
from gan.runtime import TrainingError
from gan.sample import generate, sample_z
from gan.train import train
from tests.gan.conftest import TARGET_RGB, TINY


def _color_error(G, seed: int = 5) -> float:
    z = sample_z(64, G.nz, "uniform", torch.Generator().manual_seed(seed))
    mean_rgb = to_uint8(generate(G, z)).reshape(-1, 3).mean(0)
    return float(np.abs(mean_rgb - np.array(TARGET_RGB)).mean())


@pytest.mark.slow
def test_short_run_learns_and_writes_its_files(training_shards, tmp_path: Path) -> None:
    shards = training_shards(shards=2, per_shard=64)
    run = tmp_path / "run"
    summary = train(shards, run, **{**TINY, "batch_size": 16}, steps=60, lr=1e-3,
                    sample_every=30, ckpt_every=30, seed=3)
    assert summary["steps"] == 60
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 61))
    assert {"loss_D", "loss_G", "D_x", "D_G_z", "images_per_s", "data_wait"} <= set(rows[0])
    # D separates real from fake early on ...
    late = rows[10:]
    assert np.mean([r["D_x"] for r in late]) > np.mean([r["D_G_z"] for r in late]) + 0.2
    # ... and G's samples move toward the (orange) training images.
    torch.manual_seed(3)
    G0, _ = build_models({**TINY, "prior": "uniform"})
    G, _, config = load_models(run / "checkpoints" / "last.pt")
    assert config["arch"] == "compact" and config["width"] == 32
    assert _color_error(G) < 0.7 * _color_error(G0)
    for name in ("samples/step-0000030.png", "samples/step-0000060.png", "loss_curve.png",
                 "checkpoints/step-0000030.pt", "checkpoints/step-0000060.pt", "config.json"):
        assert (run / name).is_file(), name
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 60 and set(ckpt) >= {"G", "D", "opt_G", "opt_D", "rng", "config"}


@pytest.mark.parametrize(("cache", "workers"), [("none", 2), ("ram", 0)])
def test_resume_is_exact(training_shards, tmp_path: Path, cache: str, workers: int) -> None:
    """6 steps/epoch; stop at step 4 (mid-epoch), resume to 9 (across an epoch boundary)."""
    shards = training_shards(shards=2, per_shard=24)
    options = {**TINY, "workers": workers, "cache": cache, "sample_every": 100, "seed": 1}
    train(shards, tmp_path / "whole", **options, steps=9, ckpt_every=100)
    train(shards, tmp_path / "split", **options, steps=4, ckpt_every=100)
    summary = train(shards, tmp_path / "split", **options, steps=9, ckpt_every=100, resume=True)
    assert summary["steps"] == 9
    whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    split = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    for part in ("G", "D"):
        for key, value in whole[part].items():
            assert torch.equal(value, split[part][key]), (part, key)
    for part in ("opt_G", "opt_D"):
        for idx, state in whole[part]["state"].items():
            for key, value in state.items():
                assert torch.equal(value, split[part]["state"][idx][key]), (part, idx, key)
    assert (whole["epoch"], whole["batch_in_epoch"]) == (split["epoch"], split["batch_in_epoch"])
    losses = [[r["loss_D"], r["loss_G"]] for r in read_metrics(tmp_path / "whole/metrics.jsonl")]
    again = [[r["loss_D"], r["loss_G"]] for r in read_metrics(tmp_path / "split/metrics.jsonl")]
    assert losses == again


def test_resume_drops_metrics_logged_after_the_checkpoint(training_shards, tmp_path: Path) -> None:
    shards = training_shards(shards=1, per_shard=32)
    run = tmp_path / "run"
    train(shards, run, **TINY, steps=3, sample_every=100, ckpt_every=100)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:  # a crash after step 3
        f.write(json.dumps({"step": 4, "loss_D": 0.0}) + "\n")
    train(shards, run, **TINY, steps=5, sample_every=100, ckpt_every=100, resume=True)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_existing_run_needs_resume_or_overwrite_and_resume_needs_a_run(
    training_shards, tmp_path: Path
) -> None:
    shards = training_shards(shards=1, per_shard=16)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match="no checkpoint"):
        train(shards, run, **TINY, steps=1, resume=True)
    # A run that crashed before its first checkpoint leaves a log; a fresh run starts over.
    claim_output(run, command="gan train", overwrite=False)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    summary = train(shards, run, **TINY, steps=1, sample_every=100)
    assert len(read_metrics(run / "metrics.jsonl")[0]) > 1
    assert json.loads((run / "summary.json").read_text()) == summary  # the finished mark
    # A finished run: every command's rule (refused unless --overwrite).
    with pytest.raises(OutputError, match="already holds a finished run.*--overwrite"):
        train(shards, run, **TINY, steps=1)
    # An unfinished one (a checkpoint, no summary): --resume continues it.
    (run / "summary.json").unlink()
    with pytest.raises(TrainingError, match="already holds a run: pass --resume"):
        train(shards, run, **TINY, steps=1)
    with pytest.raises(UserError, match="not both"):
        train(shards, run, **TINY, steps=1, resume=True, overwrite=True)


def test_overwrite_replaces_only_the_runs_own_files(training_shards, tmp_path: Path) -> None:
    shards = training_shards(shards=1, per_shard=24)
    run = tmp_path / "run"
    options = {**TINY, "cache": "ram", "sample_every": 2, "ckpt_every": 2}
    train(shards, run, **options, steps=4)
    (run / "notes.txt").write_text("mine")
    summary = train(shards, run, **options, steps=2, seed=5, overwrite=True)
    assert summary["steps"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "last.pt", "step-0000002.pt"]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-0000002.png"]
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["config"]["seed"] == 5
    assert (run / "notes.txt").read_text() == "mine"
    assert (run / "cache" / "images-32px.u8").is_file()  # the cache checks itself: kept
    assert (run / "summary.json").is_file()


def test_nan_losses_stop_the_run_and_keep_the_last_good_checkpoint(
    training_shards, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = training_shards(shards=1, per_shard=64)
    real_step = train_module.gan_step
    calls = []

    def step_that_diverges(*args, **kwargs):
        stats = real_step(*args, **kwargs)
        calls.append(1)
        return stats * float("nan") if len(calls) >= 5 else stats

    monkeypatch.setattr(train_module, "gan_step", step_that_diverges)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"non-finite at step 5.*checkpoint .*\(step 4\)"):
        train(shards, run, **TINY, steps=8, ckpt_every=2, sample_every=100)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4]


def test_exploding_weights_are_never_checkpointed(training_shards, tmp_path: Path) -> None:
    shards = training_shards(shards=1, per_shard=16)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match="non-finite.*no checkpoint had been written"):
        train(shards, run, **TINY, steps=2, ckpt_every=1, lr=float("inf"))
    assert not (run / "checkpoints" / "last.pt").exists()


def test_epochs_and_steps_are_exclusive(training_shards, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not both"):
        train(training_shards(shards=1, per_shard=8), tmp_path / "run", **TINY, epochs=1, steps=1)


def test_epochs_count_full_batches(training_shards, tmp_path: Path) -> None:
    # Two loader workers each read one shard: 2 full batches of 8 each, the rest dropped.
    shards = training_shards(shards=2, per_shard=20)
    summary = train(shards, tmp_path / "run", **{**TINY, "workers": 2}, epochs=2,
                    sample_every=100)
    assert summary["steps"] == 8
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [0] * 4 + [1] * 4


def test_paper_arch_with_normal_prior_trains_and_reloads(training_shards, tmp_path: Path) -> None:
    shards = training_shards(shards=1, per_shard=16)
    options = {**TINY, "arch": "paper", "prior": "normal"}
    train(shards, tmp_path / "run", **options, steps=2, sample_every=100)
    G, D, config = load_models(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (config["arch"], config["prior"], G.arch, D.arch) == ("paper", "normal", "paper",
                                                                 "paper")
    assert isinstance(G.blocks[0][0], torch.nn.Linear)
    assert torch.all(torch.isfinite(generate(G, sample_z(4, 16, "normal"))))


def test_bf16_precision_is_opt_in_on_cpu_and_kept_on_resume(
    training_shards, tmp_path: Path
) -> None:
    shards = training_shards(shards=1, per_shard=24)
    options = {**TINY, "cache": "ram", "sample_every": 100, "ckpt_every": 100, "seed": 2}
    train(shards, tmp_path / "fp32", **options, steps=3)
    train(shards, tmp_path / "auto", **options, steps=3, precision="auto")
    train(shards, tmp_path / "bf16", **options, steps=2, precision="bf16")
    train(shards, tmp_path / "bf16", **options, steps=3, resume=True)  # precision from ckpt

    def weights(run: str) -> torch.Tensor:
        ckpt = load_checkpoint(tmp_path / run / "checkpoints" / "last.pt")
        return torch.cat([v.flatten().float() for v in ckpt["G"].values()])

    assert torch.equal(weights("fp32"), weights("auto"))  # auto is fp32 on a CPU
    bf16 = weights("bf16")
    assert torch.isfinite(bf16).all() and not torch.equal(bf16, weights("fp32"))
    config = load_checkpoint(tmp_path / "bf16" / "checkpoints" / "last.pt")["config"]
    assert config["precision"] == "bf16"
    with pytest.raises(UserError, match="precision"):
        train(shards, tmp_path / "bad", **options, steps=1, precision="fp8")


def test_resume_of_a_finished_run_says_how_to_continue(training_shards, tmp_path: Path) -> None:
    shards = training_shards(shards=1, per_shard=16)
    run = tmp_path / "run"
    train(shards, run, **TINY, steps=2, sample_every=100)
    with pytest.raises(TrainingError, match="done 2 steps already.*--steps"):
        train(shards, run, **TINY, resume=True)
    assert (run / "summary.json").is_file()  # still marked finished
    assert train(shards, run, **TINY, steps=3, resume=True)["steps"] == 3


def test_resume_on_other_data_is_refused_but_moved_data_is_fine(training_shards,
                                                                 tmp_path: Path) -> None:
    shards = training_shards(shards=1, per_shard=16)
    other = training_shards("other", shards=2, per_shard=16)
    run = tmp_path / "run"
    train(shards, run, **TINY, steps=2, sample_every=100)
    with pytest.raises(TrainingError, match="trained on other shards.*1 shards, 16 images.*"
                                            "2 shards, 32 images"):
        train(other, run, **TINY, steps=3, resume=True)
    moved = shards.rename(tmp_path / "moved")
    assert train(moved, run, **TINY, steps=3, resume=True)["steps"] == 3


def test_resume_from_another_device_type_rederives_the_z_stream(training_shards,
                                                                tmp_path: Path) -> None:
    """A checkpoint written on a GPU (fabricated: a CUDA generator's 16-byte state and CUDA
    states for 3 GPUs) resumes on the CPU: it goes on and says why it is not exact."""
    shards = training_shards(shards=1, per_shard=32)
    run = tmp_path / "run"
    train(shards, run, **TINY, steps=2, sample_every=100, seed=7)
    path = run / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    state["rng"][0].update(device="cuda", z=torch.zeros(16, dtype=torch.uint8),
                           cuda=[torch.zeros(16, dtype=torch.uint8)] * 3)
    save_checkpoint(path, state)
    summary = train(shards, run, **TINY, steps=4, resume=True)
    assert summary["steps"] == 4
    assert summary["notes"] == ["the checkpoint's z streams were drawn on cuda, this run draws "
                                "on cpu: z streams re-derived from (seed, rank, step)"]
    assert load_checkpoint(path)["rng"][0]["device"] == "cpu"


def test_a_full_disk_while_checkpointing_names_the_file(training_shards, tmp_path: Path) -> None:
    """/dev/full answers every write with ENOSPC: a real full disk for one file."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    shards = training_shards(shards=1, per_shard=16)
    run = tmp_path / "run"
    train(shards, run, **TINY, steps=1, sample_every=100)
    before = (run / "checkpoints" / "last.pt").read_bytes()
    (run / "checkpoints" / "last.pt.tmp").symlink_to("/dev/full")
    with pytest.raises(CheckpointError, match=r"last\.pt: could not write the checkpoint "
                                              r"\(No space left on device\).*last\.pt\.tmp"):
        train(shards, run, **TINY, steps=2, resume=True)
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_a_damaged_metrics_file_is_named(training_shards, tmp_path: Path) -> None:
    shards = training_shards(shards=1, per_shard=16)
    run = tmp_path / "run"
    train(shards, run, **TINY, steps=1, sample_every=100)
    (run / "metrics.jsonl").write_text("not json\n")
    with pytest.raises(UserError, match=r"metrics\.jsonl: line 1 is not JSON"):
        train(shards, run, **TINY, steps=2, resume=True)
    (run / "metrics.jsonl").write_text('{"loss": 1}\n')
    with pytest.raises(TrainingError, match=r"metrics\.jsonl: a line without a step number"):
        train(shards, run, **TINY, steps=2, resume=True)


def test_a_run_folder_is_held_and_owned(training_shards, tmp_path: Path) -> None:
    shards = training_shards(shards=1, per_shard=16)
    run = tmp_path / "run"
    with hold_output(run, command="gan train"), pytest.raises(OutputError,
                                                              match="in use by `gan train`"):
        train(shards, run, **TINY, steps=1)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"mine")
    with pytest.raises(OutputError, match="not empty.*not written by `gan train`"):
        train(shards, foreign, **TINY, steps=1, overwrite=True)
    assert (foreign / "holiday.jpg").read_bytes() == b"mine"


def test_streaming_with_more_workers_than_shards_says_how_to_fix_it(training_shards, tmp_path,
                                                                    capsys) -> None:
    shards = training_shards(shards=1, per_shard=16)
    train(shards, tmp_path / "run", **{**TINY, "batch_size": 8, "workers": 2}, steps=1,
          cache="none")
    warning = [line for line in capsys.readouterr().err.splitlines() if "idle" in line]
    assert warning == ["warning: 1 shards for 1 rank(s) x 2 loader worker(s): 1 worker(s) idle; "
                       "remake the shards with `pipeline shards --maxcount 8` (or use fewer "
                       "--workers)"]


def test_resume_names_the_settings_the_checkpoint_keeps(training_shards, tmp_path, capfd):
    shards = training_shards(shards=1, per_shard=32)
    run = tmp_path / "run"
    train(shards, run, **TINY, steps=1, sample_every=100, ckpt_every=100)
    capfd.readouterr()
    changed = {**TINY, "batch_size": 4, "lr": 1e-3}
    train(shards, run, **changed, steps=2, sample_every=100, ckpt_every=100, resume=True)
    assert ("note: --resume continues the checkpoint's run as it began: --batch-size 4, --lr "
            "0.001 not used (it keeps 8, 0.0002); start a new run (another --out) to change "
            "them") in capfd.readouterr().err.splitlines()
