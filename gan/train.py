"""`gan train`: the paper's DCGAN training loop, readable top to bottom.

`train` claims the run folder, sets up the data and the models (or restores them from the last
checkpoint), runs the loop (step, log, sample, checkpoint) and finishes with the loss plot and
the summary, in that order.

One step (gan/step.py) = one D update on a real and a fake batch, then one G update through D
with D's parameters frozen.

Speed without changing the maths: channels_last tensors and fused Adam everywhere; on CUDA also
bf16 autocast, cudnn benchmark, pinned host memory with non-blocking copies, and no host syncs
inside the step: the per-step statistics stay on the device and are copied out every
`log_every` steps. `precision="bf16"` asks for bf16 autocast on a CPU too (~1.6x faster where it
has bf16 units, but no longer the fp32 computation, so it is opt-in there); `precision="fp32"`
also turns TF32 off on GPUs. Multi-GPU/multi-node runs go through torchrun (DDP); only rank 0
writes files.

The run folder and its rules (`resume`, `overwrite`) are gan/run_folder.py's; the state the
steps change, seeded or restored from a checkpoint, is gan/state.py's. `resume=True` continues
exactly: on CPU, N steps + resume + M steps equals an uninterrupted N + M step run bit for bit,
with one rank or several (another number of ranks or device type: see gan/state.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from core.files import write_json_atomic
from core.signals import Interrupted, deferred_stop, signal_name, stop_requested
from gan.checkpoint import rng_state, save_checkpoint
from gan.config import TrainConfig, kept_on_resume, resumed_config
from gan.data import (
    CachedBatches,
    DataError,
    StreamingBatches,
    build_cache,
    check_gpu_cache_fits,
    check_image_size,
    open_cache,
    open_shards,
    to_model_input,
)
from gan.metrics import LOGGED, STATS, MetricsLog, plot_losses
from gan.quality.training import QualityLog, check_scoring, open_quality
from gan.run_folder import (
    FINISHED,
    claim_run,
    kept_checkpoint,
    prepare_folder,
    resume_from,
    stopped,
)
from gan.runtime import (
    Runtime,
    TrainingError,
    any_rank,
    autocast_for,
    barrier,
    gather_from_ranks,
    on_every_rank,
    run_on_main,
    set_tf32,
    start_runtime,
    stop_runtime,
    wrap_models,
)
from gan.sample import generate, sample_z, save_grid
from gan.state import TrainState, check_same_data, new_state, restore, shard_list
from gan.step import gan_step

# ---------------------------------------------------------------------------------------------
# Set up: the run folder, the data, the models


def make_batches(config: TrainConfig, rt: Runtime, out: Path, urls: list[str],
                 counts: list[int]) -> StreamingBatches | CachedBatches:
    """The run's batch source: streamed from shards, or a decoded cache in RAM or on the GPU."""
    if config.cache == "none":
        batches = StreamingBatches(urls, counts, image_size=config.image_size,
                                   batch_size=config.batch_size, workers=config.workers,
                                   seed=config.seed, world=rt.world, pin_memory=rt.cuda)
        if batches.warning and rt.is_main:
            print(batches.warning, file=sys.stderr)
        return batches
    if config.cache == "gpu":
        if not rt.cuda:
            raise TrainingError("--cache gpu needs a CUDA device (use --cache ram on CPU)")
        check_gpu_cache_fits(sum(counts), config.image_size, rt.world,
                             torch.cuda.mem_get_info(rt.device)[0], str(rt.device))
    run_on_main(rt, lambda: build_cache(urls, counts, out / "cache", image_size=config.image_size,
                                        workers=config.workers, progress=config.progress),
                slow=True)
    images = on_every_rank(rt, lambda: open_cache(urls, counts, out / "cache",
                                                  image_size=config.image_size))
    return CachedBatches(images, batch_size=config.batch_size, seed=config.seed,
                         device=rt.device, on_device=config.cache == "gpu", rank=rt.rank,
                         world=rt.world)


def accelerate(st: TrainState, config: TrainConfig, rt: Runtime) -> None:
    """cudnn autotuning on CUDA, TF32 as the precision says, DDP wrappers under torchrun,
    torch.compile when asked for."""
    if rt.cuda:
        torch.backends.cudnn.benchmark = True
    set_tf32(config.precision)
    st.G, st.D, st.D_plain = wrap_models(st.G_raw, st.D_raw, rt,
                                         "inductor" if config.compile else None)


# ---------------------------------------------------------------------------------------------
# The loop: step, log, sample, checkpoint


@dataclass
class Run:
    """What the loop reads but never changes."""

    config: TrainConfig
    rt: Runtime
    out: Path
    batches: StreamingBatches | CachedBatches
    metrics: MetricsLog
    total_steps: int
    shards: list[list]  # shard names and counts, kept in checkpoints (see check_same_data)
    notes: list[str]  # said to the user once and kept in the summary
    quality: QualityLog | None = None  # rank 0's FID/KID/PR scorer with --metrics-every


def epoch_batches(run: Run, epoch: int, skip: int) -> Iterator[tuple[torch.Tensor, float]]:
    """The rest of an epoch as model inputs on the device, each with the seconds spent waiting
    for it; DataError if the shards deliver fewer batches than their index promises."""
    steps = run.batches.steps_per_epoch
    source = iter(run.batches.epoch(epoch, skip=skip))
    for index in range(skip, steps):
        start = time.perf_counter()
        batch = next(source, None)
        if batch is None:
            raise DataError(f"the shards delivered {index} batches in epoch {epoch}, fewer than "
                            f"the {steps} their index promises")
        real = to_model_input(batch, run.rt.device)
        yield real, time.perf_counter() - start


def save_samples(st: TrainState, run: Run) -> None:
    """The fixed z's grid as `samples/step-<step>.png` (rank 0)."""
    if run.rt.is_main:
        save_grid(generate(st.G_raw, st.fixed_z, run.config.bn),
                  run.out / "samples" / f"step-{st.step:07d}.png")


def save_state(st: TrainState, run: Run, name: str) -> None:
    """`checkpoints/<name>`, with every rank's RNG states (gathered to rank 0, which writes);
    non-finite weights are an error, never a checkpoint. Every rank calls this (the gathering
    is collective, and every rank decides alike: DDP keeps the weights equal)."""
    params = [p for m in (st.G_raw, st.D_raw) for p in m.parameters()]
    if not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
        raise TrainingError(f"weights became non-finite by step {st.step}")
    rng = gather_from_ranks(rng_state(st.z_rng), run.rt)
    if run.rt.is_main:
        save_checkpoint(run.out / "checkpoints" / name, {
            "config": dataclasses.asdict(run.config), "step": st.step, "epoch": st.epoch,
            "batch_in_epoch": st.batch_in_epoch, "G": st.G_raw.state_dict(),
            "D": st.D_raw.state_dict(), "opt_G": st.opt_G.state_dict(),
            "opt_D": st.opt_D.state_dict(), "fixed_z": st.fixed_z, "rng": rng,
            "shards": run.shards})


def score_samples(st: TrainState, run: Run) -> None:
    """FID, KID and precision/recall of G's samples into metrics.jsonl (rank 0 scores, the
    others wait), and `best.pt` when the FID is the lowest so far (every rank saves: see
    save_state)."""
    run.metrics.flush()  # the log stays in step order
    best = [False]

    def on_main() -> None:
        best[0] = run.quality.evaluate(st.G_raw, st.step, st.epoch, run.metrics.tensorboard)

    run_on_main(run.rt, on_main)
    run.metrics.window_start = time.perf_counter()  # images/s counts training steps only
    if any_rank(best[0], run.rt):
        save_state(st, run, "best.pt")


def stop_agreed(st: TrainState, run: Run) -> bool:
    """Whether to stop after this step for Ctrl-C or SIGTERM (core.signals): at once with one
    process; with several, all together at the next logging step (the ranks agree there, so
    none is left waiting in a collective for one that stopped)."""
    if run.rt.world == 1:
        return stop_requested()
    return st.step % run.config.log_every == 0 and any_rank(stop_requested(), run.rt)


def train_loop(st: TrainState, run: Run) -> dict:
    """Step until `total_steps`, logging, sampling and checkpointing on their schedules; ends
    with a sample grid and `last.pt`. Returns the last step's statistics. A stop signal ends
    the loop between two steps, with `last.pt` saved there (Interrupted)."""
    config = run.config
    autocast = autocast_for(config.precision, run.rt)
    bar = tqdm(total=run.total_steps, initial=st.step, desc="training", unit="step",
               disable=not (config.progress and run.rt.is_main))
    with deferred_stop(), contextlib.closing(bar):
        while st.step < run.total_steps:  # epochs
            for real, waited in epoch_batches(run, st.epoch, st.batch_in_epoch):
                z = sample_z(len(real), config.nz, config.prior, st.z_rng)
                stats = gan_step(st.G, st.D, st.D_plain, st.opt_G, st.opt_D, real, z, autocast)
                run.metrics.add(st.step + 1, st.epoch, stats, waited)
                st.advance(run.batches.steps_per_epoch)
                bar.update(1)
                due_ckpt = st.step % config.ckpt_every == 0
                if st.step % config.log_every == 0 or due_ckpt or st.step == run.total_steps:
                    last = run.metrics.flush()
                    bar.set_postfix({k: f"{last[k]:.3g}" for k in LOGGED})
                if st.step % config.sample_every == 0:
                    save_samples(st, run)
                if due_ckpt:
                    save_state(st, run, f"step-{st.step:07d}.pt")
                    save_state(st, run, "last.pt")
                if config.metrics_every and st.step % config.metrics_every == 0:
                    score_samples(st, run)
                if stop_agreed(st, run):
                    stop_here(st, run)
                if st.step == run.total_steps:
                    break
        last = run.metrics.flush()
        save_samples(st, run)
        save_state(st, run, "last.pt")
        return last


def stop_here(st: TrainState, run: Run) -> None:
    """End the run at this step for a stop signal: the log flushed, `last.pt` saved here (every
    rank takes part), and Interrupted with what to do next (said once, by rank 0)."""
    run.metrics.flush()
    save_state(st, run, "last.pt")
    where = run.out / "checkpoints" / "last.pt"
    raise Interrupted(f"gan train: stopped by {signal_name()} at step {st.step}; {where} is "
                      "saved there and --resume continues exactly" if run.rt.is_main else "")


# ---------------------------------------------------------------------------------------------
# Finish


def finish(st: TrainState, run: Run, last: dict) -> dict:
    """The loss plot and the summary (rank 0 writes both; summary.json marks the run finished).
    """
    rt, out = run.rt, run.out
    barrier(rt)
    curve = plot_losses(out / "metrics.jsonl", out / "loss_curve.png") if rt.is_main else None
    summary = {
        "steps": st.step, "epochs": st.step / run.batches.steps_per_epoch, "ranks": rt.world,
        "device": str(rt.device), **{k: last.get(k) for k in (*STATS, "images_per_s")},
        "checkpoint": str(out / "checkpoints" / "last.pt"),
        "loss_curve": str(curve) if curve else None, "notes": run.notes,
    }
    if rt.is_main:  # one line per run, not per process
        summary["line"] = (f"trained {st.step} steps ({summary['epochs']:.2f} epochs) on "
                           f"{rt.world} x {rt.device.type}: loss_D {last['loss_D']:.3f}, "
                           f"loss_G {last['loss_G']:.3f}; run in {out}")
        write_json_atomic(out / FINISHED, summary)
    return summary


# ---------------------------------------------------------------------------------------------
# The run


def train(data: str | os.PathLike, out: str | os.PathLike, *,
          given: Collection[str] | None = None, **options) -> dict:
    """Train a DCGAN on the shards in `data`, writing the run to `out`.

    Options are TrainConfig's fields with the same defaults as `gan train`. `given` names the
    options the user chose (default: every option passed; the CLI passes those not left at
    their default): a resumed run names those the checkpoint keeps. Returns the summary (also
    `out/summary.json`; the CLI prints its one line).
    """
    config = TrainConfig(data=str(data), out=str(out), **options)
    out = Path(out)
    checkpoint = resume_from(config, out)
    unused = None if checkpoint is None else kept_on_resume(
        config, checkpoint, options if given is None else given)
    if checkpoint is not None:
        config = resumed_config(config, checkpoint)
    rt = start_runtime(config.device)  # a bad --device is refused before the data is read
    if unused and rt.is_main:
        print(f"note: {unused}", file=sys.stderr)
    try:
        urls, counts = open_shards(config.data)  # reads only: bad shards leave no run folder
        check_image_size(urls, config.image_size)
        check_scoring(config)  # --metrics-every: the extractor and the real images are there
        with contextlib.ExitStack() as held:  # rank 0 holds the run folder until the end
            run_on_main(rt, lambda: claim_run(config, out, held))
            return _run(config, rt, out, checkpoint, urls, counts)
    except KeyboardInterrupt as err:
        if isinstance(err, Interrupted):
            raise
        raise Interrupted(f"gan train: stopped by {signal_name()} outside a training step; "
                          f"{kept_checkpoint(out)}") from None
    finally:
        stop_runtime(rt)


def _run(config: TrainConfig, rt: Runtime, out: Path, checkpoint: dict | None, urls: list[str],
         counts: list[int]) -> dict:
    batches = make_batches(config, rt, out, urls, counts)
    total_steps = config.steps or (config.epochs or 1) * batches.steps_per_epoch
    if checkpoint is not None:
        check_same_data(checkpoint, shard_list(urls, counts), config.data)
        if checkpoint["step"] >= total_steps:
            raise TrainingError(f"{out}: the run has done {checkpoint['step']} steps already; "
                                f"to continue it, pass --steps (the new total) or --epochs")
    prepare_folder(config, rt, out)
    st = new_state(config, rt)
    notes = []
    if checkpoint is not None:
        note = restore(st, checkpoint, config, rt, batches.steps_per_epoch)
        notes = [note] if note else []
    if notes and rt.is_main:
        print(f"note: {notes[0]}", file=sys.stderr)
    metrics = MetricsLog(out / "metrics.jsonl", rt, config.batch_size * rt.world)
    metrics.truncate_after(st.step)  # a fresh run starts a fresh log
    quality = open_quality(config, rt, out)
    accelerate(st, config, rt)
    run = Run(config, rt, out, batches, metrics, total_steps, shard_list(urls, counts), notes,
              quality)
    try:
        last = train_loop(st, run)
    except TrainingError as err:
        raise stopped(err, out) from None
    finally:
        metrics.close()  # TensorBoard's last scalars
    return finish(st, run, last)
