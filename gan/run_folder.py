"""A training run's folder: who may use it, what `--overwrite` clears, the checkpoint `--resume`
continues from, and what a stopped run tells its user.

A run folder holds `metrics.jsonl` (one line per step), `samples/step-*.png` (a fixed z batch
for the whole run), `checkpoints/last.pt` and `checkpoints/step-*.pt`, `loss_curve.png`,
`config.json` and, once the run has finished, `summary.json`. A finished run is refused unless
`overwrite=True` (the rule of every command, core.outputs) or continued for more steps with
`resume=True`; an unfinished one (a checkpoint but no summary) is continued with `resume=True`
or started over with `overwrite=True`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from pathlib import Path

from core.files import write_json_atomic
from core.outputs import claim_output, hold_output
from gan.checkpoint import load_checkpoint
from gan.config import TrainConfig
from gan.runtime import Runtime, TrainingError, barrier

COMMAND = "gan train"  # the owner named in a run folder and in its lock
FINISHED = "summary.json"  # written last: its presence marks a finished run
# What a run writes in its folder; --overwrite removes these and nothing else (the decoded
# cache stays: it checks itself against the shards).
RUN_FILES = ("checkpoints", "samples", "tensorboard", "metrics.jsonl", "loss_curve.png",
             "config.json", FINISHED)


def resume_from(config: TrainConfig, out: Path) -> dict | None:
    """The checkpoint a `resume` run continues from (None for a fresh run); reads only."""
    if not config.resume:
        return None
    last = out / "checkpoints" / "last.pt"
    if not last.is_file():
        raise TrainingError(f"--resume: no checkpoint at {last}")
    return load_checkpoint(last)


def claim_run(config: TrainConfig, out: Path, held: contextlib.ExitStack) -> None:
    """Hold `out` for this run (a second run into it stops at once, naming this one) and
    refuse it if it may not be used as asked: another command's folder, a finished run
    without --overwrite, an unfinished one without --resume or --overwrite."""
    held.enter_context(hold_output(out, command=COMMAND))
    claim_output(out, command=COMMAND, overwrite=config.overwrite or config.resume,
                 finished=FINISHED)
    if (out / "checkpoints" / "last.pt").exists() and not (config.resume or config.overwrite):
        raise TrainingError(f"{out} already holds a run: pass --resume to continue it, "
                            f"--overwrite to start it over, or choose another --out")


def prepare_folder(config: TrainConfig, rt: Runtime, out: Path) -> None:
    """Rank 0 empties a run being overwritten, marks the run unfinished until it ends, and
    writes config.json."""
    if rt.is_main:
        if config.overwrite:
            for name in RUN_FILES:
                path = out / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        (out / FINISHED).unlink(missing_ok=True)
        (out / "samples").mkdir(parents=True, exist_ok=True)
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "config.json", dataclasses.asdict(config))
    barrier(rt)


def stopped(err: TrainingError, out: Path) -> TrainingError:
    """`err` with what the user still has: the last good checkpoint, if any."""
    return TrainingError(f"{err}; stopped, {kept_checkpoint(out)}")


def kept_checkpoint(out: Path) -> str:
    """What a stopped run leaves to resume from, in words."""
    kept = out / "checkpoints" / "last.pt"
    if not kept.is_file():
        return "no checkpoint had been written"
    return f"the last good checkpoint is {kept} (step {load_checkpoint(kept)['step']})"
