"""`gan metrics`: FID, KID and precision/recall of a checkpoint's samples (or of an image set)
against real images, into `DIR/metrics.json` and one printed line; and `score`, the part
`gan train --metrics-every` shares.

Order of work: the extractor is found and checked first (a missing Inception file ends the
command before anything is read), then the real features come from the cache or are computed
once, then N samples are drawn from G in batches with a recorded seed, embedded and scored.
"""

from __future__ import annotations

import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import scipy
import torch
from torch import nn

from core.errors import UserError
from core.files import write_json_atomic
from core.outputs import own_output
from core.signals import Interrupted, signal_name
from gan.quality.cache import FeatureSet, real_features
from gan.quality.extractors import Extractor, open_extractor
from gan.quality.images import embed, generated_batches, open_images, pick, set_batches
from gan.quality.options import METRICS
from gan.quality.scores import (
    KID_SUBSET_SIZE,
    KID_SUBSETS,
    PR_K,
    frechet_distance,
    kid,
    precision_recall,
)
from gan.quality.statistics import collect

FINISHED = "metrics.json"


def score(real: FeatureSet, fake: FeatureSet, metrics: tuple[str, ...], device: torch.device,
          seed: int = 0, kid_subsets: int = KID_SUBSETS,
          kid_subset_size: int = KID_SUBSET_SIZE) -> dict:
    """The asked-for values: fid; kid, kid_std, kid_subset_size; precision, recall."""
    values: dict = {}
    if "fid" in metrics:
        values["fid"] = frechet_distance(real.stats.mu, real.stats.sigma, fake.stats.mu,
                                         fake.stats.sigma)
    if "kid" in metrics:
        mean, std, size = kid(real.array(), fake.array(), subsets=kid_subsets,
                              subset_size=kid_subset_size, seed=seed)
        values.update(kid=mean, kid_std=std, kid_subsets=kid_subsets, kid_subset_size=size)
    if "pr" in metrics:
        precision, recall = precision_recall(real.array(), fake.array(), k=PR_K, device=device)
        values.update(precision=precision, recall=recall, pr_k=PR_K)
    return values


def generator_features(G: nn.Module, nz: int, prior: str, n: int, seed: int, bn: str,
                       extractor: Extractor, device: torch.device, batch_size: int,
                       folder: Path, progress: bool) -> FeatureSet:
    """Features of n samples of G, written to `folder`."""
    batches = generated_batches(G, nz, prior, n, seed, batch_size, bn, device)
    path = folder / "fake-features.npy"
    stats = collect(embed(extractor, batches, device, n, "fake features", progress), n, path)
    return FeatureSet(stats, path, {"n": n, "seed": seed, "bn": bn})


def set_features(spec: str | os.PathLike, n: int, seed: int, extractor: Extractor,
                 device: torch.device, batch_size: int, folder: Path,
                 progress: bool) -> FeatureSet:
    """Features of min(n, size) images of an image set (`--fake`), written to `folder`."""
    source, count = open_images(spec)
    used = min(n, count)
    batches = set_batches(source, pick(count, used, seed), batch_size)
    path = folder / "fake-features.npy"
    stats = collect(embed(extractor, batches, device, used, "fake features", progress), used,
                    path)
    return FeatureSet(stats, path, {"n": used, "of": count, "seed": seed, "data": str(spec)})


def versions() -> dict:
    """The software a score depends on, for the report."""
    try:
        ours = metadata.version("dcgan-pipeline")
    except metadata.PackageNotFoundError:
        ours = None
    return {"dcgan-pipeline": ours, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__}


def summary_line(values: dict, n_fake: int, n_real: int, extractor: Extractor) -> str:
    parts = []
    if "fid" in values:
        parts.append(f"FID {values['fid']:.3f}")
    if "kid" in values:
        parts.append(f"KID {values['kid']:.5f} ± {values['kid_std']:.5f}")
    if "precision" in values:
        parts.append(f"precision {values['precision']:.3f}, recall {values['recall']:.3f}")
    return (f"{'; '.join(parts)} ({n_fake} fake vs {n_real} real images, "
            f"{extractor.name} {extractor.sha256[:12]})")


def run_metrics(real: str, out: str | os.PathLike, **options) -> dict:
    """`measure`, ended by a stop signal with one line: nothing is written to `out`, and
    finished real statistics stay cached for the next try."""
    try:
        return measure(real=real, out=out, **options)
    except KeyboardInterrupt as err:
        if isinstance(err, Interrupted):
            raise
        raise Interrupted(f"gan metrics: stopped by {signal_name()}; nothing written to {out} "
                          "(real statistics already computed stay cached); run it again"
                          ) from None


def measure(*, real: str, out: str | os.PathLike, ckpt: str | os.PathLike | None = None,
            fake: str | None = None, n: int = 50000, metrics: tuple[str, ...] = METRICS,
            inception: str | None = None, features: str | None = None,
            device: torch.device | str = "cpu", seed: int = 0, batch_size: int = 100,
            bn: str = "batch", kid_subsets: int = KID_SUBSETS,
            kid_subset_size: int = KID_SUBSET_SIZE, overwrite: bool = False,
            progress: bool = True) -> dict:
    """Score `ckpt`'s samples (or the images of `fake`) against `real`; writes
    `out/metrics.json` and returns it (its "line" is what the command prints)."""
    from gan.checkpoint import load_models

    if (ckpt is None) == (fake is None):
        raise UserError("give --ckpt (score a generator) or --fake (score an image set), "
                        "one of the two")
    device = torch.device(device)
    extractor = open_extractor(inception, features)  # what can be refused, before any work
    if ckpt is not None:
        G, _, config = load_models(ckpt, device)
        source = {"checkpoint": str(ckpt), "arch": config.get("arch")}
    for spec in (real, fake):
        if spec is not None:
            open_images(spec)
    with own_output(Path(out), command="gan metrics", overwrite=overwrite,
                    finished=FINISHED) as folder:
        reals = real_features(real, n, extractor, device, batch_size, progress)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".features-") as scratch:
            if ckpt is not None:
                fakes = generator_features(G, config["nz"], config["prior"], n, seed, bn,
                                           extractor, device, batch_size, Path(scratch),
                                           progress)
            else:
                fakes = set_features(fake, n, seed, extractor, device, batch_size,
                                     Path(scratch), progress)
                source = {"images": str(fake)}
            values = score(reals, fakes, metrics, device, seed, kid_subsets, kid_subset_size)
        report = {
            "values": values, "metrics": list(metrics), "n_fake": fakes.stats.n,
            "n_real": reals.stats.n, "seed": seed, "fake": {**source, **fakes.info},
            "real": reals.info, "extractor": extractor.describe(), "device": str(device),
            "versions": versions(),
            "line": summary_line(values, fakes.stats.n, reals.stats.n, extractor),
        }
        write_json_atomic(folder / FINISHED, report)
    return report
