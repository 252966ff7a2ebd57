"""Forgetting to draw objects (paper section 6.3.1): find the generator's "window" feature maps
with a logistic regression on hand-drawn boxes, then drop them and sample again.

The paper drew window boxes on 52 of 150 samples, labelled the activations of G's second-highest
conv layer inside the boxes as positives and random activations from the same images as
negatives, and dropped every feature map whose logistic-regression weight was positive. Windows
then vanished or turned into other objects while the rest of the scene stayed.

Here a spatial cell of the chosen layer is positive when the centre of the pixel block it maps to
lies inside a box, and "dropped" means the map is zeroed at every location. Whether G samples with
batch statistics (the authors' Theano code; the next BatchNorm renormalizes after the drop) or
running statistics (PyTorch eval) is a parameter and is recorded in the report. The boxes are
only meaningful on the images they were drawn over: a boxes file from `analysis annotate` says
how its samples were drawn (analysis.drawing), and another checkpoint or `--bn` is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from torch import nn
from tqdm import tqdm

from analysis.data import AnalysisError, load_run
from analysis.drawing import RECORD_KEY, DrawnWith, drawn_batches
from analysis.hooks import captured_outputs, layer_module, zeroed_channels
from core.devices import resolve_device
from core.files import write_json_atomic, write_npy_atomic, write_png_atomic
from core.outputs import check_output, own_output
from core.pixels import to_uint8
from core.sheets import contact_sheet
from gan.models import Generator
from gan.sample import generate

WindowBox = tuple[float, float, float, float]  # x0, y0, x1, y1 in output-image pixels


@dataclass
class Annotations:
    """The z that produced the annotated samples, how they were drawn (None when the file does
    not say, e.g. written by hand) and, per listed sample, its boxes (x0, y0, x1, y1 in
    output-image pixels)."""

    z: torch.Tensor
    boxes: dict[int, list[WindowBox]]
    drawn_with: DrawnWith | None = None


def load_boxes(path: str | os.PathLike) -> Annotations:
    """Read and check a boxes file: `{"z": "z.npy", "samples": [{"index": 0, "boxes": [[x0, y0,
    x1, y1], ...]}, ...]}`; `z` is relative to the JSON's folder unless absolute."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnalysisError(f"{path}: no such boxes file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnalysisError(f"{path}: not JSON ({err})") from None
    if not isinstance(spec, dict) or "z" not in spec or not isinstance(spec.get("samples"), list):
        raise AnalysisError(f'{path}: expected {{"z": "z.npy", "samples": [{{"index": 0, '
                            f'"boxes": [[x0, y0, x1, y1]]}}]}}')
    z_path = path.parent / spec["z"]
    try:
        z = np.load(z_path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise AnalysisError(f"{z_path}: cannot read the z array ({err})") from None
    if z.ndim != 2:
        raise AnalysisError(f"{z_path}: expected an [N, nz] array, found shape {z.shape}")
    if not (np.issubdtype(z.dtype, np.floating) or np.issubdtype(z.dtype, np.integer)) \
            or not np.isfinite(z).all():
        raise AnalysisError(f"{z_path}: z must hold finite real numbers (found {z.dtype}"
                            f"{', with NaN or infinity' if z.dtype.kind == 'f' else ''}); "
                            "write it again, e.g. from `analysis annotate`")
    boxes = {_sample_index(s, len(z), path): _sample_boxes(s, path) for s in spec["samples"]}
    if not any(boxes.values()):
        raise AnalysisError(f"{path}: no boxes: annotate at least one object in one sample")
    drawn = DrawnWith.from_json(spec[RECORD_KEY], str(path)) if RECORD_KEY in spec else None
    return Annotations(torch.from_numpy(z.astype(np.float32)), boxes, drawn)


def _sample_index(sample: object, n: int, path: Path) -> int:
    index = sample.get("index") if isinstance(sample, dict) else None
    if not isinstance(index, int) or not 0 <= index < n:
        raise AnalysisError(f"{path}: sample {sample!r} needs an integer index in [0, {n})")
    return index


def _sample_boxes(sample: dict, path: Path) -> list[WindowBox]:
    boxes = sample.get("boxes", [])
    good = isinstance(boxes, list) and all(
        isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)
        and b[0] < b[2] and b[1] < b[3]
        for b in boxes
    )
    if not good:
        raise AnalysisError(f"{path}: sample {sample['index']}: boxes must be [x0, y0, x1, y1] "
                            "lists with x0 < x1 and y0 < y1")
    return [tuple(b) for b in boxes]


def cell_labels(boxes: list[WindowBox], grid: int, image_size: int) -> np.ndarray:
    """[grid, grid] bools: is the centre of the cell's pixel block inside any of the boxes?"""
    centres = (np.arange(grid) + 0.5) * (image_size / grid)
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    inside = np.zeros((grid, grid), bool)
    for x0, y0, x1, y1 in boxes:
        inside |= (cx >= x0) & (cx <= x1) & (cy >= y0) & (cy <= y1)
    return inside


def _outside(box: WindowBox, image_size: int) -> bool:
    x0, y0, x1, y1 = box
    return x1 <= 0 or y1 <= 0 or x0 >= image_size or y0 >= image_size


def cell_dataset(
    features: torch.Tensor,
    boxes: dict[int, list[WindowBox]],
    image_size: int,
    negatives: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell channel vectors X [cells, C] and labels y: every cell inside a box, and
    `negatives` random cells outside the boxes of the listed images (default: as many as there
    are positives)."""
    grid = features.shape[-1]
    cells = features.permute(0, 2, 3, 1).cpu().numpy()  # [N, h, w, C]
    pos, neg = [], []
    for index, sample_boxes in sorted(boxes.items()):
        inside = cell_labels(sample_boxes, grid, image_size)
        pos.append(cells[index][inside])
        neg.append(cells[index][~inside])
    pos_x, neg_x = np.concatenate(pos), np.concatenate(neg)
    if len(pos_x) == 0 and all(_outside(b, image_size) for bs in boxes.values() for b in bs):
        raise AnalysisError(f"every box lies outside the {image_size}x{image_size} image: boxes "
                            "are [x0, y0, x1, y1] in the samples' pixels, 0 to "
                            f"{image_size}")
    if len(pos_x) == 0:
        raise AnalysisError("no feature cell has its centre inside a box: boxes are too small "
                            "for this layer; draw larger boxes or pick a finer --layer")
    wanted = len(pos_x) if negatives is None else negatives
    take = np.random.default_rng(seed).choice(len(neg_x), min(wanted, len(neg_x)), replace=False)
    x = np.concatenate([pos_x, neg_x[take]])
    y = np.concatenate([np.ones(len(pos_x), bool), np.zeros(len(take), bool)])
    return x, y


def fit_window_classifier(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[
        LogisticRegression, dict]:
    """Held-out accuracy/AUC from a stratified 75/25 split, then the final fit on every cell
    (the paper had few annotations; all of them should shape the mask)."""
    if min(y.sum(), (~y).sum()) < 4:
        raise AnalysisError(f"too few cells to fit and check a classifier ({int(y.sum())} "
                            f"positive, {int((~y).sum())} negative; need at least 4 of each)")
    x_fit, x_test, y_fit, y_test = train_test_split(x, y, test_size=0.25, stratify=y,
                                                    random_state=seed)
    probe = LogisticRegression(max_iter=2000).fit(x_fit, y_fit)
    metrics = {
        "heldout_cells": len(y_test),
        "heldout_accuracy": float(accuracy_score(y_test, probe.predict(x_test))),
        "heldout_auc": float(roc_auc_score(y_test, probe.predict_proba(x_test)[:, 1])),
    }
    return LogisticRegression(max_iter=2000).fit(x, y), metrics


def default_layer(G: Generator) -> str:
    """The paper's "second highest" layer: counting from z, the second feature layer (8x8)."""
    names = list(G.feature_layers())
    return names[1] if len(names) > 1 else names[0]


def generate_all(G: Generator, z: torch.Tensor, bn: str = "batch",
                 batch_size: int | None = None) -> torch.Tensor:
    """G(z) drawn in consecutive batches of `batch_size` (None: one batch), as annotate drew
    the samples, so that with batch statistics every sample is the image that was boxed."""
    return torch.cat([images for _, images in drawn_batches(G, z, bn, batch_size)])


def generate_pair(
    G: Generator, z: torch.Tensor, module: nn.Module, mask: np.ndarray, bn: str = "batch"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples from the same z (as one batch) without and with the masked feature maps
    zeroed."""
    original = generate(G, z, bn=bn)
    with zeroed_channels(module, mask):
        dropped = generate(G, z, bn=bn)
    return original, dropped


def drawing_of(annotations: Annotations, now: DrawnWith,
               boxes: str | os.PathLike) -> tuple[int | None, list[str]]:
    """The batch size the boxed samples were drawn in, and warnings: a boxes file that records
    another checkpoint or `bn` than `now` is refused; one that records none is taken to be
    drawn as `now` in one batch (as `gan sample` draws), with a warning."""
    recorded = annotations.drawn_with
    if recorded is None:
        return None, [f"{boxes} does not record how its samples were drawn (written by hand, or "
                      f"by annotate before it recorded it): taken to be {now.describe()}, as one "
                      "batch"]
    differences = recorded.differences(now)
    if differences:
        raise AnalysisError(f"{boxes}: the boxes were drawn over other samples: "
                            f"{'; '.join(differences)} (pass {recorded.describe()}, or annotate "
                            "again with these)")
    return recorded.batch_size, []


BN_NOTES = {
    "batch": "batch statistics (as the authors' Theano code): BatchNorm after the dropped layer "
             "renormalizes",
    "running": "running statistics (PyTorch eval): no renormalization after the drop",
}


def remove_windows(
    ckpt: str | os.PathLike,
    boxes: str | os.PathLike,
    out: str | os.PathLike,
    layer: str | None = None,
    negatives: int | None = None,
    seed: int = 0,
    bn: str = "batch",
    show: int = 16,
    device: str | torch.device = "auto",
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Fit the window classifier on annotated samples, drop the maps it weighs positively, and
    write comparison.png (top: original, bottom: dropped), window_mask.npy/.json and
    report.json (last: a finished analysis) into `out`. Returns the report."""
    check_output(out, command="analysis remove-windows", overwrite=overwrite,
                 finished="report.json")
    device = resolve_device(device)
    G, _D, config = load_run(ckpt, device)
    annotations = load_boxes(boxes)
    if annotations.z.shape[1] != config["nz"]:
        raise AnalysisError(f"{boxes}: z has {annotations.z.shape[1]} dimensions, the "
                            f"checkpoint's G takes {config['nz']}")
    now = DrawnWith.of(ckpt, bn)
    batch_size, warnings = drawing_of(annotations, now, boxes)
    name, module = layer_module(G, layer or default_layer(G))
    with tqdm(total=3, desc="remove windows", unit="step", disable=not progress,
              leave=False) as bar:
        with captured_outputs(module) as features:
            original = generate_all(G, annotations.z, bn, batch_size)
        bar.update()
        x, y = cell_dataset(torch.cat(features), annotations.boxes, config["image_size"],
                            negatives, seed)
        classifier, metrics = fit_window_classifier(x, y, seed)
        mask = classifier.coef_[0] > 0
        bar.update()
        with zeroed_channels(module, mask):
            dropped = generate_all(G, annotations.z, bn, batch_size)
        bar.update()

    with own_output(out, command="analysis remove-windows", overwrite=overwrite,
                    finished="report.json") as out:
        shown = min(show, len(original))
        sheet = contact_sheet(list(to_uint8(original[:shown])) + list(to_uint8(dropped[:shown])),
                              cols=shown)
        write_png_atomic(out / "comparison.png", sheet)
        write_npy_atomic(out / "window_mask.npy", mask)
        dropped_ids = np.flatnonzero(mask).tolist()
        write_json_atomic(out / "window_mask.json", {"layer": name, "channels": int(mask.size),
                                                      "dropped": dropped_ids})
        report = {
            "layer": name,
            "channels": int(mask.size),
            "dropped": len(dropped_ids),
            "annotated_samples": sum(1 for b in annotations.boxes.values() if b),
            "listed_samples": len(annotations.boxes),
            "positive_cells": int(y.sum()),
            "negative_cells": int((~y).sum()),
            **metrics,
            "batchnorm": bn,
            "batchnorm_note": BN_NOTES[bn],
            "ckpt_sha256": now.ckpt_sha256,
            "batch_size": batch_size or len(original),
            "samples": len(original),
            "mean_abs_change": float((original - dropped).abs().mean()),
            "device": str(device),
            "warnings": warnings,
        }
        write_json_atomic(out / "report.json", report)
    return report

