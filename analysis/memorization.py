"""Does G copy its training images? Nearest neighbours and Meehan et al.'s data-copying test.

The paper argued against memorization from one-epoch samples and smooth latent walks and did no
nearest-neighbour search; users ask for one, so this adds two views:

- k-NN: every generated sample and every held-out real image against the training set (exact,
  faiss, database streamed), shown as a grid (sample, then its training neighbours, closest first)
  and as a histogram of 1-NN distances. Copies sit much closer to the training set than held-out
  images do.
- C_T (Meehan, Chaudhuri & Dasgupta 2020): cut the training embeddings into k-means cells; in
  every cell compare the 1-NN distances of generated vs held-out images with a Mann-Whitney U,
  z-scored as (U - nm/2) / sqrt(nm(n+m+1)/12), and average the z-scores over cells with enough
  generated samples, weighted by the cell's share of held-out images. Strongly negative means
  copying (generated samples closer than fresh real data), strongly positive underfitting.
  Cells G never visits (mode dropping, or copying a few regions) are counted with
  bincount(minlength=cells) and reported, not crashed on.

Embeddings: pixels at 32x32 (area-downsampled, 3072-d), or D's features (the output of its
last conv layer, flattened: what D's final unit reads).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from scipy.stats import rankdata
from tqdm import tqdm

from analysis.data import (
    AnalysisError,
    check_image_size,
    count_images,
    image_batches,
    load_run,
    shard_files,
)
from analysis.hooks import captured_outputs, layer_module
from analysis.knn import IvfKnn, StreamingKnn
from core.devices import resolve_device
from core.faiss_build import faiss_build, import_faiss
from core.files import (
    write_bytes_atomic,
    write_figure_atomic,
    write_json_atomic,
    write_png_atomic,
)
from core.outputs import own_output
from core.pixels import to_uint8
from core.sheets import contact_sheet
from gan.models import Discriminator, Generator
from gan.sample import generate, sample_z

Embed = Callable[[torch.Tensor], np.ndarray]
COPYING_THRESHOLD = 3.0  # |C_T| beyond this: a verdict; each cell's z is ~N(0, 1) without effect
KMEANS_SAMPLE = 20_000  # training embeddings the k-means cells are fitted on (a uniform sample)


def pixel_embedding(images: torch.Tensor) -> np.ndarray:
    """[N, 3, S, S] in [-1, 1] -> [N, 3072]: the images area-resized to 32x32, flattened."""
    small = F.interpolate(images.float(), size=(32, 32), mode="area")
    return small.flatten(1).cpu().numpy().astype(np.float32)


def disc_embedding(D: Discriminator) -> Embed:
    """D's last conv layer output, flattened (eval mode: running BatchNorm statistics), computed
    on D's device."""
    _, last = layer_module(D, "last")
    device = next(D.parameters()).device

    def embed(images: torch.Tensor) -> np.ndarray:
        was_training = D.training
        D.eval()
        try:
            with torch.no_grad(), captured_outputs(last) as outs:
                D(images.to(device))
        finally:
            D.train(was_training)
        return outs[0].flatten(1).cpu().numpy().astype(np.float32)

    return embed


def mann_whitney_z(gen: np.ndarray, holdout: np.ndarray) -> float:
    """z-score of U = #(generated distance > held-out distance) (+1/2 per tie); negative when
    generated samples are closer to the training set."""
    m, n = len(gen), len(holdout)
    ranks = rankdata(np.concatenate([gen, holdout]))
    u = ranks[:m].sum() - m * (m + 1) / 2
    return float((u - m * n / 2) / np.sqrt(m * n * (m + n + 1) / 12))


def data_copying_statistic(
    gen_cells: np.ndarray,
    gen_dist: np.ndarray,
    holdout_cells: np.ndarray,
    holdout_dist: np.ndarray,
    cells: int,
    min_gen: int = 20,
) -> dict:
    """Meehan et al.'s C_T from cell ids and 1-NN distances to the training set.

    Cells with fewer than `min_gen` generated samples (including none at all) or without
    held-out images are left out of the average; the held-out share they carry is reported as
    `holdout_share_unvisited` (large values mean G leaves parts of the data unvisited)."""
    gen_counts = np.bincount(gen_cells, minlength=cells)
    hold_counts = np.bincount(holdout_cells, minlength=cells)
    used = (gen_counts >= min_gen) & (hold_counts > 0)
    z = np.full(cells, np.nan)
    for c in np.flatnonzero(used):
        z[c] = mann_whitney_z(gen_dist[gen_cells == c], holdout_dist[holdout_cells == c])
    weights = hold_counts[used] / hold_counts.sum()
    ct = float((weights * z[used]).sum() / weights.sum()) if used.any() else float("nan")
    return {
        "C_T": ct,
        "cells": cells,
        "cells_used": int(used.sum()),
        "min_generated_per_cell": min_gen,
        "cell_z": [None if np.isnan(v) else round(float(v), 4) for v in z],
        "generated_per_cell": gen_counts.tolist(),
        "holdout_per_cell": hold_counts.tolist(),
        "holdout_share_unvisited": float(hold_counts[~used].sum() / hold_counts.sum()),
    }


def verdict(ct: float) -> str:
    """C_T in plain words."""
    if np.isnan(ct):
        return ("no verdict: no cell has enough generated samples; generate more (--n) or use "
                "fewer cells")
    if ct < -COPYING_THRESHOLD:
        return (f"data copying: generated samples lie closer to training images than held-out "
                f"real images do (C_T = {ct:.2f})")
    if ct > COPYING_THRESHOLD:
        return (f"no copying, but underfitting: generated samples lie farther from the training "
                f"images than held-out real images do (C_T = {ct:.2f})")
    return (f"no evidence of data copying: generated samples are as close to the training "
            f"images as held-out real images are (C_T = {ct:.2f})")


class _Reservoir:
    """A uniform random sample of a stream of vectors (Algorithm R), for the k-means cells."""

    def __init__(self, size: int, seed: int):
        self.size, self.seen = size, 0
        self.rows: list[np.ndarray] = []
        self.rng = np.random.default_rng(seed)

    def add(self, x: np.ndarray) -> None:
        for row in x:
            if len(self.rows) < self.size:
                self.rows.append(row)
            else:
                j = self.rng.integers(0, self.seen + 1)
                if j < self.size:
                    self.rows[j] = row
            self.seen += 1

    def array(self) -> np.ndarray:
        return np.stack(self.rows)


def _keep_neighbour_images(store: dict[int, np.ndarray], wanted: np.ndarray,
                           images: np.ndarray, offset: int) -> None:
    """Keep the images of the training ids in `wanted` (the shown queries' current neighbours)
    from this chunk, and forget those no longer wanted: one streaming pass, bounded memory."""
    for i in np.unique(wanted):
        if offset <= i < offset + len(images):
            store[int(i)] = images[i - offset]
    for i in set(store) - set(wanted.ravel().tolist()):
        del store[i]


def _embed_all(batches: Iterable[torch.Tensor], embed: Embed, show: int, desc: str,
               progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of every image, and the first `show` images as uint8 for the grid."""
    vectors, shown = [], []
    for batch in tqdm(batches, desc=desc, unit="batch", leave=False, disable=not progress):
        vectors.append(embed(batch))
        if sum(len(s) for s in shown) < show:
            shown.append(to_uint8(batch[:show]))
    images = np.concatenate(shown)[:show] if shown else np.empty((0, 0, 0, 3), np.uint8)
    return np.concatenate(vectors), images


def nearest_training(
    queries: np.ndarray,
    train: Callable[[], Iterator[torch.Tensor]],
    embed: Embed,
    k: int,
    shown: int,
    search: str = "flat",
    seed: int = 0,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, _Reservoir, dict[int, np.ndarray]]:
    """k-NN of `queries` among the training embeddings, streaming the training batches
    (`train()` starts a fresh pass; "ivf" needs two). Returns distances, ids, a uniform sample
    of KMEANS_SAMPLE training embeddings (for the cells; `.seen` counts them all) and the
    neighbour images of the first `shown` queries."""
    reservoir = _Reservoir(KMEANS_SAMPLE, seed)
    images: dict[int, np.ndarray] = {}
    knn = StreamingKnn(queries, k) if search == "flat" else IvfKnn(queries, k)
    offset = 0
    for batch in tqdm(train(), desc="train k-NN", unit="batch", leave=False,
                      disable=not progress):
        vectors = embed(batch)
        knn.add(vectors)
        reservoir.add(vectors)
        if search == "flat":
            _keep_neighbour_images(images, knn.ids[:shown], to_uint8(batch), offset)
        offset += len(batch)
    if search == "ivf":
        knn.propose()
        offset = 0
        for batch in tqdm(train(), desc="re-rank", unit="batch", leave=False,
                          disable=not progress):
            knn.rerank(embed(batch))
            _keep_neighbour_images(images, knn.candidates[:shown], to_uint8(batch), offset)
            offset += len(batch)
    dist, ids = knn.result()
    return dist, ids, reservoir, images


def assign_cells(train_sample: np.ndarray, cells: int, points: list[np.ndarray],
                 seed: int = 0) -> tuple[int, list[np.ndarray]]:
    """k-means on the training sample; the cell of each point in each array of `points`."""
    cells = min(cells, len(train_sample))
    kmeans = import_faiss().Kmeans(train_sample.shape[1], cells, niter=20, seed=seed)
    kmeans.train(np.ascontiguousarray(train_sample, np.float32))
    return cells, [kmeans.index.search(np.ascontiguousarray(p, np.float32), 1)[1][:, 0]
                   for p in points]


def measure_copying(
    generated: Iterable[torch.Tensor],
    train: Callable[[], Iterator[torch.Tensor]],
    holdout: Iterable[torch.Tensor],
    out: str | os.PathLike,
    embed: Embed = pixel_embedding,
    k: int = 5,
    cells: int = 20,
    min_gen: int = 20,
    search: str = "flat",
    show: int = 16,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    warnings: list[str] | None = None,
    device: str = "cpu",
) -> dict:
    """The whole analysis on image batches in [-1, 1]: writes neighbours.png, distances.png,
    distances.csv and report.json (last: a finished analysis) into `out` and returns the
    report. `out` is claimed before the first batch is drawn. `warnings` (what makes the
    result doubtful) and the `device` the batches were made and embedded on are kept in the
    report."""
    with own_output(out, command="analysis memorization", overwrite=overwrite,
                    finished="report.json") as out:
        gen_x, gen_shown = _embed_all(generated, embed, show, "embed generated", progress)
        hold_x, _ = _embed_all(holdout, embed, 0, "embed holdout", progress)
        dist, ids, train_sample, neighbour_images = nearest_training(
            np.concatenate([gen_x, hold_x]), train, embed, k, len(gen_shown), search, seed=seed,
            progress=progress)
        n_gen = len(gen_x)
        cells, (gen_cells, hold_cells) = assign_cells(train_sample.array(), cells, [gen_x, hold_x],
                                                      seed)
        stats = data_copying_statistic(gen_cells, dist[:n_gen, 0], hold_cells, dist[n_gen:, 0],
                                       cells, min_gen)
        grid = [img for i, g in enumerate(gen_shown)
                for img in [g, *(neighbour_images[int(j)] for j in ids[i])]]
        write_png_atomic(out / "neighbours.png", contact_sheet(grid, cols=k + 1))
        _write_histogram(out / "distances.png", dist[:n_gen, 0], dist[n_gen:, 0])
        _write_distances_csv(out / "distances.csv", dist, ids, n_gen,
                             np.concatenate([gen_cells, hold_cells]))
        report = {
            "generated": n_gen,
            "holdout": len(hold_x),
            "train": train_sample.seen,
            "embedding_dim": int(gen_x.shape[1]),
            "k": k,
            "search": search,
            "median_nn_distance_generated": float(np.median(dist[:n_gen, 0])),
            "median_nn_distance_holdout": float(np.median(dist[n_gen:, 0])),
            "generated_closer_than_any_holdout": float(np.mean(dist[:n_gen, 0] <
                                                               dist[n_gen:, 0].min())),
            **stats,
            "warnings": warnings or [],
            "device": device,
            **faiss_build(),
        }
        report["verdict"] = verdict(report["C_T"])
        write_json_atomic(out / "report.json", report)
    return report


def _write_histogram(path: Path, gen: np.ndarray, holdout: np.ndarray) -> None:
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    bins = np.linspace(0, max(gen.max(), holdout.max()) * 1.02 + 1e-9, 60)
    for values, name in ((holdout, "held-out"), (gen, "generated")):
        ax.hist(values, bins=bins, alpha=0.6, density=True,
                label=f"{name} -> train (n={len(values)})")
    ax.set_xlabel("distance to the nearest training image")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    write_figure_atomic(path, fig)


def _write_distances_csv(path: Path, dist: np.ndarray, ids: np.ndarray, n_gen: int,
                         cells: np.ndarray) -> None:
    """One row per query: which set, its index there, its cell, then k (distance, train id)."""
    k = dist.shape[1]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["set", "index", "cell"] + [f"{c}{r}" for r in range(1, k + 1)
                                                for c in ("distance", "train_index")])
    for row, (d, i) in enumerate(zip(dist, ids, strict=True)):
        name, index = ("generated", row) if row < n_gen else ("holdout", row - n_gen)
        pairs = [v for r in range(k) for v in (f"{d[r]:.6g}", int(i[r]))]
        writer.writerow([name, index, int(cells[row]), *pairs])
    write_bytes_atomic(path, buf.getvalue().encode("utf-8"))


def generated_batches(G: Generator, n: int, nz: int, prior: str, batch_size: int = 128,
                      bn: str = "batch", seed: int = 0) -> Iterator[torch.Tensor]:
    """n samples from G in batches (batch statistics depend on the batch: 128, the paper's), on
    G's device; z is drawn on the CPU so a seed gives the same samples on every device."""
    rng = torch.Generator().manual_seed(seed)
    for start in range(0, n, batch_size):
        yield generate(G, sample_z(min(batch_size, n - start), nz, prior, generator=rng), bn=bn)


def memorization(
    ckpt: str | os.PathLike,
    train: str | os.PathLike,
    holdout: str | os.PathLike,
    out: str | os.PathLike,
    n: int = 10_000,
    space: str = "pixels",
    k: int = 5,
    cells: int = 20,
    min_gen: int = 20,
    search: str = "flat",
    bn: str = "batch",
    show: int = 16,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """`analysis memorization`: n samples of the checkpoint's G against training and held-out
    shards (at most n held-out images are used)."""
    device = resolve_device(device)
    G, D, config = load_run(ckpt, device)
    size = config["image_size"]
    embed = pixel_embedding if space == "pixels" else disc_embedding(D)
    check_image_size(train, size)
    check_image_size(holdout, size)
    train_images = count_images(train)
    if k > train_images:
        raise AnalysisError(f"--k {k}: {train} holds only {train_images} training images; "
                            "choose a smaller --k")
    return measure_copying(
        generated_batches(G, n, config["nz"], config["prior"], bn=bn, seed=seed),
        lambda: image_batches(train, size, batch_size),
        image_batches(holdout, size, batch_size, limit=n), out, embed, k=k, cells=cells,
        min_gen=min_gen, search=search, show=show, seed=seed, progress=progress,
        overwrite=overwrite, warnings=holdout_warnings(train, holdout), device=str(device),
    )


def holdout_warnings(train: str | os.PathLike, holdout: str | os.PathLike) -> list[str]:
    """What makes the test meaningless: held-out shards that are (some of) the training
    shards, so "held-out" images were trained on."""
    shared = ({os.path.realpath(u) for u in shard_files(train)}
              & {os.path.realpath(u) for u in shard_files(holdout)})
    if not shared:
        return []
    return [f"--holdout shares {len(shared)} shard file(s) with --train (e.g. "
            f"{sorted(shared)[0]}): its images were trained on, so the comparison is "
            "meaningless; give shards the run never saw"]
