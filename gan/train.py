"""`gan train`: the paper's DCGAN training loop (DESIGN.md §2), readable top to bottom.

One step = one D update on a real and a fake batch, then one G update through D with D's
parameters frozen (no weight gradients are computed for D there). Losses use logits and
BCEWithLogitsLoss; D is still the paper's sigmoid-output discriminator, D(x) = sigmoid(logit).

Speed without changing the maths: channels_last tensors and fused Adam everywhere; on CUDA also
bf16 autocast, cudnn benchmark, pinned host memory with non-blocking copies, and no host syncs
inside the step: the per-step statistics stay on the device and are copied out every
`log_every` steps. `precision="bf16"` asks for bf16 autocast on a CPU too (~1.6x faster where it
has bf16 units, but no longer the fp32 computation, so it is opt-in there). Multi-GPU/multi-node
runs go through torchrun (DDP); only rank 0 writes files.

A run folder holds `metrics.jsonl` (one line per step), `samples/step-*.png` (a fixed z batch
for the whole run), `checkpoints/last.pt` and `checkpoints/step-*.pt`, `loss_curve.png` and
`config.json`. `resume=True` continues exactly: on CPU, N steps + resume + M steps equals an
uninterrupted N + M step run bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from gan.checkpoint import load_checkpoint, save_checkpoint
from gan.data import (
    CACHES,
    CachedBatches,
    DataError,
    StreamingBatches,
    build_cache,
    open_shards,
    to_model_input,
)
from gan.models import DEFAULT_WIDTH, build_models
from gan.sample import BN_MODES, PRIORS, generate, sample_z, save_grid
from pipeline.files import write_figure_atomic, write_json_atomic
from pipeline.parallel import default_workers
from pipeline.reader import decode_sample
from pipeline.sources import SHARD_IMAGE_EXTS

SAMPLE_GRID = 64  # images in each periodic sample grid (8 x 8)
# Settings a resumed run may change; everything else comes from the checkpoint so that the
# continuation is the same computation.
RESUMABLE = ("steps", "epochs", "sample_every", "ckpt_every", "log_every", "device", "compile",
             "progress", "resume")
STATS = ("loss_D", "loss_G", "D_x", "D_G_z")
PRECISIONS = ("auto", "bf16", "fp32")  # auto = bf16 autocast on CUDA, fp32 on CPU


class TrainingError(Exception):
    """The run cannot go on (diverged, nothing to resume, ...); the message is for the user."""


@dataclass
class TrainConfig:
    """Every setting of a run, as plain values (stored in checkpoints and config.json)."""

    data: str
    out: str
    image_size: int = 64
    batch_size: int = 128
    epochs: int | None = None
    steps: int | None = None
    lr: float = 2e-4
    beta1: float = 0.5
    nz: int = 100
    width: int | None = None
    arch: str = "paper"
    prior: str = "uniform"
    workers: int = dataclasses.field(default_factory=lambda: min(8, default_workers()))
    device: str = "auto"
    seed: int = 0
    sample_every: int = 500
    ckpt_every: int = 5000
    log_every: int = 10
    cache: str = "none"
    bn: str = "batch"
    compile: bool = False
    precision: str = "auto"
    resume: bool = False
    progress: bool = True

    def check(self) -> None:
        if self.epochs is not None and self.steps is not None:
            raise ValueError("give --epochs or --steps, not both")
        for name, allowed in (("cache", CACHES), ("bn", BN_MODES), ("prior", PRIORS),
                              ("precision", PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.width is None:
            self.width = DEFAULT_WIDTH.get(self.arch, self.width)


# ---------------------------------------------------------------------------------------------
# The step


def bce_step_losses(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's loss: real -> 1, fake -> 0, on logits (stable, autocast-safe)."""
    bce = nn.functional.binary_cross_entropy_with_logits
    return (bce(real_logits, torch.ones_like(real_logits))
            + bce(fake_logits, torch.zeros_like(fake_logits)))


def gan_step(G: nn.Module, D: nn.Module, D_raw: nn.Module, opt_G: torch.optim.Optimizer,
             opt_D: torch.optim.Optimizer, real: torch.Tensor, z: torch.Tensor,
             autocast: Callable[[], contextlib.AbstractContextManager]) -> torch.Tensor:
    """One D update then one G update; returns [loss_D, loss_G, D(x), D(G(z))] on the device.

    `D` may be DDP-wrapped (its gradients are all-reduced); the G update runs through `D_raw`
    with D's parameters frozen, so no D weight gradients are computed or synchronised there.
    """
    with autocast():
        fake = G(z)
    opt_D.zero_grad(set_to_none=True)
    with autocast():
        real_logits = D(real)
        fake_logits = D(fake.detach())
        loss_D = bce_step_losses(real_logits, fake_logits)
    loss_D.backward()
    opt_D.step()

    D_raw.requires_grad_(False)
    opt_G.zero_grad(set_to_none=True)
    with autocast():
        gen_logits = D_raw(fake)
        loss_G = nn.functional.binary_cross_entropy_with_logits(gen_logits,
                                                                torch.ones_like(gen_logits))
    loss_G.backward()
    opt_G.step()
    D_raw.requires_grad_(True)
    with torch.no_grad():
        return torch.stack([loss_D.float(), loss_G.float(),
                            torch.sigmoid(real_logits.float()).mean(),
                            torch.sigmoid(fake_logits.float()).mean()])


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Adam:
    """The paper's Adam (lr 2e-4, beta1 0.5); fused kernels where this torch has them."""
    kwargs = {"lr": config.lr, "betas": (config.beta1, 0.999)}
    try:
        return torch.optim.Adam(model.parameters(), fused=True, **kwargs)
    except (RuntimeError, TypeError):  # no fused Adam for this device/torch
        return torch.optim.Adam(model.parameters(), **kwargs)


# ---------------------------------------------------------------------------------------------
# Devices and processes


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def start_runtime(device: str) -> Runtime:
    """Pick the device and, under torchrun, join the process group (NCCL on GPUs, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda requested but no CUDA device is available")
    if world == 1:
        return Runtime(dev)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        # Long timeout: rank 0 may spend a while decoding the cache while the others wait.
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(hours=2))
    return Runtime(dev, dist.get_rank(), dist.get_world_size())


def barrier(rt: Runtime) -> None:
    if rt.world > 1:
        dist.barrier()


# ---------------------------------------------------------------------------------------------
# RNG states as plain data


def rng_state(z_rng: torch.Generator) -> dict:
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "z": z_rng.get_state(),
        "torch": torch.get_rng_state(),
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, z_rng: torch.Generator) -> None:
    z_rng.set_state(state["z"])
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Logging


class MetricsLog:
    """Per-step statistics, kept on the device and written out every `log_every` steps.

    Writing is the only place the host waits for the device; it is also where non-finite
    losses are caught.
    """

    def __init__(self, path: Path, write: bool, images_per_step: int):
        self.path, self.write, self.images_per_step = path, write, images_per_step
        self.pending: list[tuple[int, int, torch.Tensor]] = []
        self.window_start = time.perf_counter()
        self.data_wait = 0.0
        self.last: dict = {}
        self.tensorboard = _tensorboard(path.parent) if write else None

    def add(self, step: int, epoch: int, stats: torch.Tensor, data_wait: float) -> None:
        self.pending.append((step, epoch, stats))
        self.data_wait += data_wait

    def flush(self) -> dict:
        """Write the pending steps; raise TrainingError if a loss is NaN/inf."""
        if not self.pending:
            return self.last
        values = torch.stack([s for _, _, s in self.pending]).cpu().tolist()
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        rate = self.images_per_step * len(values) / elapsed
        wait = min(self.data_wait / elapsed, 1.0)
        lines, diverged = [], None
        for (step, epoch, _), row in zip(self.pending, values, strict=True):
            if not all(math.isfinite(v) for v in row):
                diverged = (f"losses became non-finite at step {step} "
                            f"(loss_D={row[0]}, loss_G={row[1]})")
                break
            lines.append({"step": step, "epoch": epoch, **dict(zip(STATS, row, strict=True)),
                          "images_per_s": rate, "data_wait": wait})
        self._write(lines)
        if diverged:
            raise TrainingError(diverged)
        self.pending, self.data_wait = [], 0.0
        self.window_start = time.perf_counter()
        self.last = lines[-1]
        return self.last

    def _write(self, lines: list[dict]) -> None:
        """Append to metrics.jsonl (and TensorBoard when installed), on rank 0 only."""
        if self.write:
            with open(self.path, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(line) + "\n" for line in lines)
            if self.tensorboard is not None:
                for line in lines:
                    for key in (*STATS, "images_per_s", "data_wait"):
                        self.tensorboard.add_scalar(key, line[key], line["step"])

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after the checkpoint being resumed (they will be redone), or all
        of them for a fresh run in a folder where an earlier run crashed before a checkpoint."""
        if not (self.write and self.path.is_file()):
            return
        with open(self.path, encoding="utf-8") as f:
            kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(kept), encoding="utf-8")


def _tensorboard(folder: Path):
    """A SummaryWriter when TensorBoard is installed (optional), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder / "tensorboard"))


def read_metrics(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_losses(metrics_path: Path, out: Path) -> Path:
    """Loss curves and D outputs per step as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    steps = [r["step"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for key in ("loss_D", "loss_G"):
        top.plot(steps, [r[key] for r in rows], label=key, linewidth=0.8)
    top.set_ylabel("loss")
    top.legend()
    for key, label in (("D_x", "D(x)"), ("D_G_z", "D(G(z))")):
        bottom.plot(steps, [r[key] for r in rows], label=label, linewidth=0.8)
    bottom.set_ylabel("mean D output")
    bottom.set_xlabel("step")
    bottom.set_ylim(0, 1)
    bottom.legend()
    fig.tight_layout()
    write_figure_atomic(out, fig)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------
# The run


def check_image_size(urls: list[str], image_size: int) -> None:
    """Fail before training, with the fix, if the shards hold another image size."""
    import webdataset as wds

    first = wds.WebDataset(urls[:1], shardshuffle=False, nodesplitter=None, empty_check=False)
    for sample in first:
        if any(ext in sample for ext in SHARD_IMAGE_EXTS):
            try:
                decode_sample(sample, image_size)
            except ValueError as err:
                raise DataError(str(err)) from None
            return


def make_batches(config: TrainConfig, rt: Runtime, out: Path):
    """The run's batch source: streamed from shards, or a decoded cache in RAM or on the GPU."""
    urls, counts = open_shards(config.data)
    check_image_size(urls, config.image_size)
    if config.cache == "none":
        return StreamingBatches(urls, counts, image_size=config.image_size,
                                batch_size=config.batch_size, workers=config.workers,
                                seed=config.seed, rank=rt.rank, world=rt.world,
                                pin_memory=rt.cuda)
    if config.cache == "gpu" and not rt.cuda:
        raise TrainingError("--cache gpu needs a CUDA device (use --cache ram on CPU)")
    if rt.is_main:
        build_cache(urls, counts, out / "cache", image_size=config.image_size,
                    workers=config.workers, progress=config.progress)
    barrier(rt)
    images = build_cache(urls, counts, out / "cache", image_size=config.image_size,
                         workers=0, progress=False)  # opens the finished file
    return CachedBatches(images, batch_size=config.batch_size, seed=config.seed,
                         device=rt.device, on_device=config.cache == "gpu", rank=rt.rank,
                         world=rt.world)


def resolve_resume(config: TrainConfig, ckpt_path: Path) -> tuple[TrainConfig, dict | None]:
    """The config to run with and the checkpoint to continue from (None for a fresh run)."""
    if not config.resume:
        if ckpt_path.exists():
            raise TrainingError(f"{ckpt_path.parent.parent} already holds a run: pass --resume "
                                f"to continue it or choose another --out")
        return config, None
    if not ckpt_path.is_file():
        raise TrainingError(f"--resume: no checkpoint at {ckpt_path}")
    state = load_checkpoint(ckpt_path)
    stored = dict(state["config"])
    stored.update({k: getattr(config, k) for k in RESUMABLE})
    stored["data"], stored["out"] = config.data, config.out
    return TrainConfig(**stored), state


def train(data: str | os.PathLike, out: str | os.PathLike, **options) -> dict:
    """Train a DCGAN on the shards in `data`, writing the run to `out`.

    Options are TrainConfig's fields with the same defaults as `gan train`. Returns the summary
    (also printed by the CLI as one line).
    """
    config = TrainConfig(data=str(data), out=str(out), **options)
    config.check()
    out = Path(out)
    ckpt_path = out / "checkpoints" / "last.pt"
    config, state = resolve_resume(config, ckpt_path)
    config.check()
    rt = start_runtime(config.device)
    try:
        return _run(config, rt, out, state)
    finally:
        if rt.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _run(config: TrainConfig, rt: Runtime, out: Path, state: dict | None) -> dict:
    batches = make_batches(config, rt, out)  # first: bad shards leave no run folder behind
    if rt.is_main:
        (out / "samples").mkdir(parents=True, exist_ok=True)
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "config.json", dataclasses.asdict(config))
    barrier(rt)
    total_steps = config.steps or (config.epochs or 1) * batches.steps_per_epoch

    torch.manual_seed(config.seed)
    G, D = build_models(dataclasses.asdict(config))
    G = G.to(rt.device, memory_format=torch.channels_last)
    D = D.to(rt.device, memory_format=torch.channels_last)
    opt_G, opt_D = make_optimizer(G, config), make_optimizer(D, config)
    z_rng = torch.Generator(rt.device).manual_seed(config.seed + 1)
    fixed_z = sample_z(SAMPLE_GRID, config.nz, config.prior,
                       torch.Generator().manual_seed(config.seed + 2))
    step, epoch, batch_in_epoch = 0, 0, 0
    metrics = MetricsLog(out / "metrics.jsonl", rt.is_main, config.batch_size * rt.world)
    if state is not None:
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        opt_G.load_state_dict(state["opt_G"])
        opt_D.load_state_dict(state["opt_D"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        fixed_z = state["fixed_z"]
        set_rng_state(state["rng"], z_rng)
    metrics.truncate_after(step)  # a fresh run starts a fresh log

    if rt.cuda:
        torch.backends.cudnn.benchmark = True
    G_raw, D_raw = G, D
    if config.compile:
        G_raw.compile()
        D_raw.compile()
    if rt.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [rt.device.index] if rt.cuda else None
        G, D = DDP(G_raw, device_ids=ids), DDP(D_raw, device_ids=ids)

    bf16 = config.precision == "bf16" or (config.precision == "auto" and rt.cuda)

    def autocast():
        if bf16:
            return torch.autocast(rt.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def save(name: str) -> None:
        if not rt.is_main:
            return
        params = [p for m in (G_raw, D_raw) for p in m.parameters()]
        if not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            raise TrainingError(f"weights became non-finite by step {step}")
        save_checkpoint(out / "checkpoints" / name, {
            "config": dataclasses.asdict(config), "step": step, "epoch": epoch,
            "batch_in_epoch": batch_in_epoch, "G": G_raw.state_dict(), "D": D_raw.state_dict(),
            "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(), "fixed_z": fixed_z,
            "rng": rng_state(z_rng)})

    def sample_grid() -> None:
        if rt.is_main:
            save_grid(generate(G_raw, fixed_z, config.bn), out / "samples" / f"step-{step:07d}.png")

    bar = tqdm(total=total_steps, initial=step, desc="training", unit="step",
               disable=not (config.progress and rt.is_main))
    try:
        while step < total_steps:  # epochs
            batch_iter = iter(batches.epoch(epoch, skip=batch_in_epoch))
            while step < total_steps:
                waited = time.perf_counter()
                batch = next(batch_iter, None)
                if batch is None:
                    raise DataError(f"the shards delivered {batch_in_epoch} batches in epoch "
                                    f"{epoch}, fewer than the {batches.steps_per_epoch} their "
                                    f"index promises")
                real = to_model_input(batch, rt.device, channels_last=True)
                waited = time.perf_counter() - waited
                z = sample_z(len(real), config.nz, config.prior, z_rng)
                stats = gan_step(G, D, D_raw, opt_G, opt_D, real, z, autocast)
                metrics.add(step + 1, epoch, stats, waited)
                step, batch_in_epoch = step + 1, batch_in_epoch + 1
                epoch_done = batch_in_epoch == batches.steps_per_epoch
                if epoch_done:  # checkpoints taken now already point at the next epoch
                    epoch, batch_in_epoch = epoch + 1, 0
                bar.update(1)
                due_ckpt = step % config.ckpt_every == 0
                if step % config.log_every == 0 or due_ckpt or step == total_steps:
                    last = metrics.flush()
                    bar.set_postfix({k: f"{last[k]:.3g}"
                                    for k in (*STATS, "images_per_s", "data_wait")})
                if step % config.sample_every == 0:
                    sample_grid()
                if due_ckpt:
                    save(f"step-{step:07d}.pt")
                    save("last.pt")
                if epoch_done:
                    break
        last = metrics.flush()
        sample_grid()
        save("last.pt")
    except TrainingError as err:
        kept = out / "checkpoints" / "last.pt"
        where = (f"the last good checkpoint is {kept} (step {load_checkpoint(kept)['step']})"
                 if kept.is_file() else "no checkpoint had been written")
        raise TrainingError(f"{err}; stopped, {where}") from None
    finally:
        bar.close()
    barrier(rt)
    curve = plot_losses(out / "metrics.jsonl", out / "loss_curve.png") if rt.is_main else None
    summary = {
        "steps": step, "epochs": step / batches.steps_per_epoch, "ranks": rt.world,
        "device": str(rt.device), **{k: last.get(k) for k in (*STATS, "images_per_s")},
        "checkpoint": str(out / "checkpoints" / "last.pt"),
        "loss_curve": str(curve) if curve else None,
    }
    if rt.is_main:  # one line per run, not per process
        summary["line"] = (f"trained {step} steps ({summary['epochs']:.2f} epochs) on "
                           f"{rt.world} x {rt.device.type}: loss_D {last['loss_D']:.3f}, "
                           f"loss_G {last['loss_G']:.3f}; run in {out}")
    return summary
