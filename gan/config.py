"""Every setting of a training run, and the values each may take, as plain Python: the command
line reads its choices and defaults from here without importing torch, checkpoints store a run's
config as plain data, and the modules that act on a setting (models, data, runtime, sampling)
take their allowed values from here.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Collection
from dataclasses import dataclass

from core.errors import UserError
from gan.cli_options import BN_MODES
from pipeline.engines.local import default_workers

ARCHS = ("paper", "compact")
IMAGE_SIZES = (32, 64, 128)
# Channels of the 4x4 maps (G's first block, D's last conv) when --width is not given.
DEFAULT_WIDTH = {"paper": 1024, "compact": 512}
# The least --width any image size takes: channels halve per doubling from 4x4 (check_shape).
MIN_WIDTH = 2 ** (int(math.log2(min(IMAGE_SIZES) // 4)) - 1)
# Images a drawing command generates as one batch (a figure is one batch, gan/sample.py): ~2 GB
# of activations for the paper's G at 64x64, and more tiles than a person can pick from.
MAX_IMAGES = 2048
PRIORS = ("uniform", "normal")  # z ~ U(-1, 1) (the paper) or N(0, 1) (reimplementations)
CACHES = ("none", "ram", "gpu")
PRECISIONS = ("auto", "bf16", "fp32")  # auto = bf16 autocast on CUDA, fp32 on CPU
PRECISION_HELP = (
    "auto = bf16 autocast on CUDA (TF32 allowed for what stays fp32), fp32 on CPU. bf16 also "
    "on CPUs with bf16 units (~1.6x faster on AVX512-BF16, no longer bit-exact fp32). fp32 = "
    "true fp32 everywhere: no autocast and no TF32 on GPUs.")

# Settings a resumed run may change; everything else comes from the checkpoint so that the
# continuation is the same computation.
RESUMABLE = ("steps", "epochs", "sample_every", "ckpt_every", "log_every", "device", "compile",
             "progress", "resume", "overwrite", "metrics_every", "metrics_real", "metrics_n",
             "metrics_inception", "metrics_features")


def check_shape(image_size: int, width: int | None, arch: str) -> tuple[int, int]:
    """The networks' shape arguments checked (a UserError says what is wrong); returns (width,
    number of doublings from 4x4 to the image)."""
    if arch not in ARCHS:
        raise UserError(f"arch must be one of {ARCHS}, got {arch!r}")
    if image_size not in IMAGE_SIZES:
        raise UserError(f"image_size must be one of {IMAGE_SIZES}, got {image_size}")
    width = DEFAULT_WIDTH[arch] if width is None else width
    doublings = int(math.log2(image_size // 4))
    if width < 2 ** (doublings - 1) or width % 2 ** (doublings - 1):
        raise UserError(f"width {width} must be a multiple of {2 ** (doublings - 1)} "
                        f"for {image_size}x{image_size} images (channels halve per layer)")
    return width, doublings


def default_loader_workers() -> int:
    """Loader workers per training process: up to 8, and the node's cores shared between the
    processes torchrun starts on it (LOCAL_WORLD_SIZE), so 8 ranks on 16 cores do not start
    64 decoders."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, default_workers() // max(local_world, 1)))


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
    width: int | None = None  # None: the arch's own (DEFAULT_WIDTH)
    arch: str = "paper"
    prior: str = "uniform"
    workers: int = dataclasses.field(default_factory=default_loader_workers)
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
    overwrite: bool = False
    progress: bool = True
    metrics_every: int | None = None  # steps between FID/KID/PR scores (gan/quality/)
    metrics_real: str | None = None  # the real images they compare with
    metrics_n: int = 10000
    metrics_inception: str | None = None
    metrics_features: str | None = None

    def __post_init__(self) -> None:
        if self.width is None:  # a default that depends on another field
            self.width = DEFAULT_WIDTH.get(self.arch)
        self.validate()

    def validate(self) -> None:
        """UserError if the settings contradict each other or are unknown."""
        if self.epochs is not None and self.steps is not None:
            raise UserError("give --epochs or --steps, not both")
        if self.resume and self.overwrite:
            raise UserError("give --resume (continue the run in --out) or --overwrite (replace "
                            "it), not both")
        for name, allowed in (("cache", CACHES), ("bn", BN_MODES), ("prior", PRIORS),
                              ("precision", PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise UserError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        check_shape(self.image_size, self.width, self.arch)
        if self.metrics_every is not None and self.metrics_real is None:
            raise UserError("--metrics-every needs --metrics-real (the real images to compare "
                            "with)")


def kept_on_resume(config: TrainConfig, state: dict, given: Collection[str]) -> str | None:
    """One line naming the settings `given` to a resumed run (the options the caller chose,
    a default among them when it was chosen explicitly) whose value differs from the one the
    checkpoint keeps, or None."""
    stored = state["config"]
    kept = [f.name for f in dataclasses.fields(TrainConfig)
            if f.name in given and f.name not in (*RESUMABLE, "data", "out")
            and f.name in stored and getattr(config, f.name) != stored[f.name]]
    if not kept:
        return None
    given_values = ", ".join(f"--{name.replace('_', '-')} {getattr(config, name)}" for name in kept)
    stays = ", ".join(f"{stored[name]}" for name in kept)
    return (f"--resume continues the checkpoint's run as it began: {given_values} not used (it "
            f"keeps {stays}); start a new run (another --out) to change them")


def resumed_config(config: TrainConfig, state: dict) -> TrainConfig:
    """The checkpoint's settings, except those a resumed run may change."""
    stored = dict(state["config"])
    stored.update({k: getattr(config, k) for k in RESUMABLE})
    stored["data"], stored["out"] = config.data, config.out
    return TrainConfig(**stored)
