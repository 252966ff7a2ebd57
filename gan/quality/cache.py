"""The real images' statistics and features, computed once per (data set, extractor, N,
resize rule) and kept under the cache folder, so scoring a second checkpoint against the same
data embeds only its samples.

The key hashes the image set's fingerprint (its files' names, sizes and modification times,
as `pipeline` lists them), the extractor's SHA-256, N, the resize rule and the draw of which
images are used. An entry is a folder (`features.npy`, `statistics.npz`, `meta.json`) built
under a temporary name and renamed when complete, so an interrupted computation leaves nothing
that looks finished, and two processes racing for the same entry both end with a whole one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.files import write_json_atomic
from gan.quality.extractors import Extractor, cache_root
from gan.quality.images import embed, open_images, pick, set_batches
from gan.quality.statistics import Statistics, collect

REAL_SEED = 0  # which real images are used is fixed, so every run compares with the same ones


@dataclass
class FeatureSet:
    """A scored image set: its statistics, its features on disk, and where it came from."""

    stats: Statistics
    features: Path
    info: dict

    def array(self) -> np.ndarray:
        """The features, memory-mapped (read as needed, never all at once)."""
        return np.load(self.features, mmap_mode="r")


def entry_key(fingerprint: str, extractor: Extractor, n: int) -> str:
    parts = {"images": fingerprint, "extractor": extractor.sha256, "n": n,
             "resize": extractor.resize_rule, "draw": REAL_SEED}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def real_features(spec: str | os.PathLike, n: int, extractor: Extractor, device: torch.device,
                  batch_size: int, progress: bool) -> FeatureSet:
    """The features of min(n, size of the set) images of `spec`, from the cache when there."""
    source, count = open_images(spec)
    used = min(n, count)
    folder = cache_root() / "real-statistics" / entry_key(source.fingerprint(), extractor, used)
    if not (folder / "meta.json").is_file():
        build_entry(folder, source, count, used, extractor, device, batch_size, progress)
    meta = json.loads((folder / "meta.json").read_text())
    with np.load(folder / "statistics.npz") as saved:
        stats = Statistics(saved["mu"], saved["sigma"], int(saved["n"]))
    return FeatureSet(stats, folder / "features.npy", {**meta, "data": str(spec),
                                                       "cache": str(folder)})


def build_entry(folder: Path, source, count: int, used: int, extractor: Extractor,
                device: torch.device, batch_size: int, progress: bool) -> None:
    """Embed the images and write the entry under a temporary name, then rename it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    try:
        batches = set_batches(source, pick(count, used, REAL_SEED), batch_size)
        stats = collect(embed(extractor, batches, device, used, "real features", progress),
                        used, building / "features.npy")
        np.savez(building / "statistics.npz", mu=stats.mu, sigma=stats.sigma, n=stats.n)
        write_json_atomic(building / "meta.json", {"n": used, "of": count,
                                                   "fingerprint": source.fingerprint(),
                                                   "extractor_sha256": extractor.sha256})
        try:
            os.replace(building, folder)
        except OSError:  # another process finished the same entry first: keep theirs
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
