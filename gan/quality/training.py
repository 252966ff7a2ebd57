"""Scores during training (`gan train --metrics-every`): FID, KID and precision/recall of the
generator's samples, every so many steps, into `metrics.jsonl` and TensorBoard, on rank 0.

The samples come from the same z's at every evaluation (drawn from the run's seed), so the
values of two steps differ by the generator alone; the real features are computed at the first
evaluation and cached (gan/quality/cache.py). The lowest FID so far decides `best.pt`; after a
resume it is read back from the log, which holds the rows up to the resumed step.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import torch
from torch import nn

from core.files import read_jsonl
from gan.config import TrainConfig
from gan.quality.cache import FeatureSet, real_features
from gan.quality.evaluate import generator_features, score
from gan.quality.extractors import Extractor, find_extractor, open_extractor
from gan.quality.images import open_images
from gan.quality.options import METRICS
from gan.runtime import Runtime, run_on_main

SCORES = ("fid", "kid", "kid_std", "precision", "recall")  # what TensorBoard shows


class QualityLog:
    """Rank 0's scorer: the extractor, the real features once computed, the best FID."""

    def __init__(self, config: TrainConfig, device: torch.device, out: Path):
        self.config, self.device, self.out = config, device, out
        self.extractor: Extractor = open_extractor(config.metrics_inception,
                                                   config.metrics_features, "metrics-")
        self.reals: FeatureSet | None = None
        self.best = best_fid(out / "metrics.jsonl")

    def evaluate(self, G: nn.Module, step: int, epoch: int, tensorboard) -> bool:
        """Score G's samples, log the row; True when its FID is the best so far."""
        config = self.config
        if self.reals is None:
            self.reals = real_features(config.metrics_real, config.metrics_n, self.extractor,
                                       self.device, config.batch_size, config.progress)
        with tempfile.TemporaryDirectory(dir=self.out, prefix=".features-") as scratch:
            fakes = generator_features(G, config.nz, config.prior, config.metrics_n,
                                       config.seed, config.bn, self.extractor, self.device,
                                       config.batch_size, Path(scratch), progress=False)
            values = score(self.reals, fakes, METRICS, self.device, seed=config.seed)
        row = {"step": step, "epoch": epoch, **values, "metrics_n_fake": fakes.stats.n,
               "metrics_n_real": self.reals.stats.n, "extractor": self.extractor.name,
               "extractor_sha256": self.extractor.sha256}
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if tensorboard is not None:
            for key in SCORES:
                tensorboard.add_scalar(f"quality/{key}", values[key], step)
        improved = values["fid"] < self.best
        self.best = min(self.best, values["fid"])
        return improved


def check_scoring(config: TrainConfig) -> None:
    """Before the run folder is claimed: the extractor's file is there and the real images
    can be scored (a UserError, in one line, otherwise)."""
    if config.metrics_every:
        find_extractor(config.metrics_inception, config.metrics_features, "metrics-")
        open_images(config.metrics_real)


def open_quality(config: TrainConfig, rt: Runtime, out: Path) -> QualityLog | None:
    """Rank 0's scorer when the run scores its samples (None elsewhere); the extractor is
    found and checked here, before the first step, and a failure stops every rank."""
    if not config.metrics_every:
        return None
    opened: list[QualityLog] = []
    run_on_main(rt, lambda: opened.append(QualityLog(config, rt.device, out)))
    return opened[0] if opened else None


def best_fid(log: Path) -> float:
    """The lowest FID in a run's log so far (infinity when none)."""
    if not log.is_file():
        return math.inf
    return min((row["fid"] for row in read_jsonl(log) if "fid" in row), default=math.inf)
