"""`pipeline dedup`: the paper's semantic-hash de-duplication of LSUN: near-duplicate
photos are proposed by hashing small center crops with an autoencoder, and confirmed from the
images themselves.

Passes, each linear in the number of images and none holding the images in RAM:

1. **Crops** (pipeline.crops): every record's 32x32 center crop and whole-frame thumbnails,
   streamed to files on disk that the later passes read as memory maps; undecodable records get
   their status at once.
2. **Train** the 3072-128-3072 autoencoder on a random sample of the crops (pipeline.autoencoder),
   or load a saved one with `model=` so the same hash applies to new data.
3. **Hash.** Encode all crops in large batches; the active ReLUs are the 128-bit code. With
   `--engine ray` the batches are tasks on the cluster (pipeline.engines).
4. **Verify** (the default): codes within `radius` bits propose a bounded number of candidate
   pairs per image (pipeline.grouping); each pair is judged on the whole-frame thumbnails
   against a threshold calibrated on the data itself (pipeline.verify), and groups form around
   anchor images from the pairs that pass.
   **Paper's mode** (`verify=False`, `radius=0`): equal codes are the groups (one sort of the
   codes); with `radius > 0`, codes within that Hamming distance of a group's anchor join it.

In every group one member is kept (rule in `pipeline.grouping.keep_order`); the others are
listed in `duplicates.txt`, the file `pipeline shards --exclude` reads.

Restart rule (pipeline.outputs): a finished output folder (it has summary.json) is refused
unless `overwrite`; an unfinished one is started over (hashing is a few passes over the data, so
there is nothing worth resuming).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from pipeline.crops import (
    CROPS_NAME,
    LOG_NAME,
    SIDE,
    VIEWS_NAME,
    CropParams,
    Crops,
    extract_crops,
)
from pipeline.decode import DEFAULT_MAX_PIXELS
from pipeline.engines import Engine, engine_line, open_engine
from pipeline.files import (
    read_jsonl,
    write_bytes_atomic,
    write_figure_atomic,
    write_json_atomic,
    write_png_atomic,
)
from pipeline.grouping import (
    IMAGES_PER_CODE,
    NEAREST_CODES,
    Groups,
    candidate_pairs,
    code_neighbours,
    group_codes,
    group_pairs,
    resolve_groups,
)
from pipeline.manifest import (
    MANIFEST_NAME,
    SUMMARY_NAME,
    Manifest,
    Outcome,
    stage_summary,
    summary_line,
)
from pipeline.outputs import claim_output, hold_output
from pipeline.parallel import default_workers
from pipeline.runner import StageError
from pipeline.sheets import contact_sheet
from pipeline.sources import DEFAULT_MAX_BYTES, open_sources
from pipeline.statuses import DUPLICATE, UNIQUE
from pipeline.verify import (
    Calibration,
    Verdicts,
    calibration_distances,
    histogram,
    verify_pairs,
)

if TYPE_CHECKING:  # torch is imported only when hashing, so `pipeline --help` stays quick
    from pipeline.autoencoder import SemanticHashAutoencoder

GROUPS_NAME = "groups.jsonl"
DUPLICATES_NAME = "duplicates.txt"
MODEL_NAME = "autoencoder.pt"
LOSS_NAME = "loss.png"
SHEET_NAME = "collisions.png"
REJECTED_NAME = "rejected.png"
HISTOGRAM_NAME = "distances.png"
OUTPUTS = (MANIFEST_NAME, SUMMARY_NAME, GROUPS_NAME, DUPLICATES_NAME, MODEL_NAME, LOSS_NAME,
           SHEET_NAME, REJECTED_NAME, HISTOGRAM_NAME, CROPS_NAME, VIEWS_NAME, LOG_NAME)
ENCODE_BATCH = 8192  # crops per encoder call in pass 3 (bounded memory, large matmuls)

# Defaults that benchmarks/dedup_quality.py measured (README "Dedup quality").
BITS = 128  # the paper's 3072-128-3072 autoencoder
DEFAULT_RADIUS = 10  # candidate radius under verification (README "Dedup quality")
CALIBRATION_SAMPLES = 1000  # images that get a synthetic re-upload for the calibration ...
CALIBRATION_RATE = 0.02  # ... but never more than this fraction of them ...
MIN_CALIBRATION_SAMPLES = 50  # ... nor fewer than this many
DEFAULT_TRAIN_SAMPLES = 200_000
DEFAULT_EPOCHS = 20
DEFAULT_MIN_STEPS = 2000  # measured: fewer steps leave the hash unselective on small samples
DEFAULT_NOISE = 1.0  # strength of the realistic de-noising corruption (autoencoder.corrupt)
DEFAULT_DROPOUT = 0.1  # on the code units during training (the paper's regularizer)
DEFAULT_CODE_NOISE = 1.0  # on the code pre-activations while training (autoencoder module doc)


# ---- pass 3: hash -----------------------------------------------------------------------------

def hash_crops(model: SemanticHashAutoencoder, crops: np.ndarray, *, device: str = "auto",
               batch: int = ENCODE_BATCH, progress: bool = True) -> np.ndarray:
    """uint8 n x 16 codes, encoding `batch` crops at a time from the memory map."""
    from pipeline.autoencoder import semantic_hash
    from pipeline.devices import resolve_device

    dev = resolve_device(device)
    codes = np.zeros((len(crops), model.config.bits // 8), np.uint8)
    starts = range(0, len(crops), batch)
    for start in tqdm(starts, unit="batch", desc="hash", disable=not progress,
                      dynamic_ncols=True):
        chunk = np.asarray(crops[start : start + batch])
        codes[start : start + len(chunk)] = semantic_hash(model, chunk, dev)
    return codes


@dataclass(frozen=True)
class HashJob:
    """What every hashing task shares: the model (in Ray's object store once) and the crops
    file, which the workers read themselves (OUT must be on a filesystem every node reads)."""

    model: SemanticHashAutoencoder
    crops: str
    shape: tuple[int, ...]


def hash_all(model: SemanticHashAutoencoder | None, crops: np.ndarray, engine: Engine, *,
             device: str, progress: bool) -> np.ndarray:
    """Every crop's code: on the cluster's workers, or here on `device`; all zero without a
    model (fewer than two images to train on)."""
    if model is None:
        return np.zeros((len(crops), BITS // 8), np.uint8)
    if engine.distributed:
        return hash_on_cluster(model, crops, engine, progress=progress)
    return hash_crops(model, crops, device=device, progress=progress)


def hash_rows(chunk: list[int], job: HashJob) -> np.ndarray:
    """Codes of crops [start, stop) (`chunk`), on the worker's CPU."""
    from pipeline.autoencoder import semantic_hash

    start, stop = chunk
    crops = np.memmap(job.crops, np.uint8, "r", shape=job.shape)
    return semantic_hash(job.model, np.asarray(crops[start:stop]), "cpu")


def hash_on_cluster(model: SemanticHashAutoencoder, crops: np.ndarray, engine: Engine, *,
                    batch: int = ENCODE_BATCH, progress: bool = True) -> np.ndarray:
    """`hash_crops` as tasks on `engine`, in the same batches, so the codes are the same."""
    if len(crops) == 0:
        return np.zeros((0, model.config.bits // 8), np.uint8)
    job = HashJob(model, str(crops.filename), crops.shape)
    chunks = ([start, min(start + batch, len(crops))] for start in range(0, len(crops), batch))
    results = engine.map(hash_rows, job, chunks)
    return np.concatenate(list(tqdm(results, total=-(-len(crops) // batch), unit="batch",
                                    desc="hash", disable=not progress, dynamic_ncols=True)))


# ---- outputs ----------------------------------------------------------------------------------

def write_outputs(out: Path, groups: Groups, codes: np.ndarray, progress: bool) -> dict:
    """Manifest (input order), groups.jsonl and duplicates.txt from the pass-1 log; returns
    the manifest's counts by status."""
    counts, keys_of = write_manifest(out, groups, progress)
    write_group_files(out, groups, codes, keys_of)
    return counts


def write_manifest(out: Path, groups: Groups,
                   progress: bool) -> tuple[dict[str, int], dict[int, str]]:
    """One manifest line per input, in input order; returns the counts by status and the key
    of every grouped row."""
    keys_of: dict[int, str] = {}
    manifest = Manifest(out / MANIFEST_NAME)
    try:
        for line in tqdm(read_jsonl(out / LOG_NAME), desc="manifest", unit="img",
                         disable=not progress, dynamic_ncols=True):
            if "row" not in line:
                manifest.record(Outcome(line["key"], line["status"], line["reason"]))
                continue
            row, g = line["row"], int(groups.ids[line["row"]])
            if g < 0:
                manifest.record(Outcome(line["key"], UNIQUE))
                continue
            keys_of[row] = line["key"]
            info = {"group": g}
            if groups.kept[g] == row:
                manifest.record(Outcome(line["key"], UNIQUE, "kept from its group", info))
            else:
                manifest.record(Outcome(line["key"], DUPLICATE, "near duplicate", info))
    finally:
        manifest.close()
    return dict(sorted(manifest.counts.items())), keys_of


def write_group_files(out: Path, groups: Groups, codes: np.ndarray,
                      keys_of: dict[int, str]) -> None:
    """groups.jsonl (one line per group) and duplicates.txt (every member but the kept one)."""
    members: dict[int, list[int]] = {}
    for row in sorted(keys_of):
        members.setdefault(int(groups.ids[row]), []).append(row)
    lines, dup_keys = [], []
    for g in range(groups.count):
        rows, kept = members[g], int(groups.kept[g])
        anchor = codes[kept]
        distance = max(int(np.unpackbits(codes[r] ^ anchor).sum()) for r in rows)
        lines.append(json.dumps({"group": g, "code": anchor.tobytes().hex(), "size": len(rows),
                                 "kept": keys_of[kept], "members": [keys_of[r] for r in rows],
                                 "max_bits_from_kept": distance}))
        dup_keys.extend(keys_of[r] for r in rows if r != kept)
    write_bytes_atomic(out / GROUPS_NAME, "".join(x + "\n" for x in lines).encode("utf-8"))
    write_bytes_atomic(out / DUPLICATES_NAME, "".join(k + "\n" for k in dup_keys).encode("utf-8"))


def bit_usage(codes: np.ndarray) -> dict:
    """How many code bits ever fire / always fire: dead or saturated bits weaken the hash."""
    bits = codes.shape[1] * 8
    if len(codes) == 0:
        return {"bits": bits, "ever_on": 0, "always_on": 0, "never_on": bits,
                "mean_on_fraction": 0.0, "distinct_codes": 0}
    rate = np.zeros(bits)
    for start in range(0, len(codes), 1 << 16):
        rate += np.unpackbits(codes[start : start + (1 << 16)], axis=1).sum(axis=0)
    rate /= len(codes)
    return {"bits": bits, "ever_on": int((rate > 0).sum()), "always_on": int((rate == 1).sum()),
            "never_on": int((rate == 0).sum()), "mean_on_fraction": round(float(rate.mean()), 4),
            "distinct_codes": int(len(np.unique(codes, axis=0)))}


def collision_sheet(crops: np.ndarray, groups: Groups, *, rows: int = 16, cols: int = 8,
                    scale: int = 2) -> np.ndarray | None:
    """A row per group (largest first): the kept image, then its duplicates; None if no groups."""
    if groups.count == 0:
        return None
    sizes = np.bincount(groups.ids[groups.ids >= 0], minlength=groups.count)
    cols = min(cols, int(sizes.max()))
    side = crops.shape[1] * scale
    blank = np.full((side, side, 3), 255, np.uint8)
    tiles = []
    for g in np.argsort(-sizes, kind="stable")[:rows]:
        kept = int(groups.kept[g])
        members = [kept, *(r for r in np.flatnonzero(groups.ids == g) if r != kept)][:cols]
        big = [_enlarge(np.asarray(crops[r]), scale) for r in members]
        tiles.extend(big + [blank] * (cols - len(big)))
    return contact_sheet(tiles, cols=cols)


def loss_plot(history: list[float], path: Path) -> None:

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.2), dpi=100)
    ax = fig.add_subplot()
    ax.plot(range(1, len(history) + 1), history, marker="o", markersize=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_title("semantic-hash autoencoder")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_figure_atomic(path, fig)


# ---- the driver: the steps in the order they run ---------------------------------------------

def dedup(
    sources: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    train_samples: int = DEFAULT_TRAIN_SAMPLES,
    epochs: int = DEFAULT_EPOCHS,
    min_steps: int = DEFAULT_MIN_STEPS,
    noise: float = DEFAULT_NOISE,
    dropout: float = DEFAULT_DROPOUT,
    code_noise: float = DEFAULT_CODE_NOISE,
    radius: int = DEFAULT_RADIUS,
    verify: bool = True,
    batch_size: int = 256,
    device: str = "auto",
    workers: int | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Find near duplicates in `sources` with the paper's semantic hash; results in `out`.

    The decoder is trained on the binarized code (pipeline.autoencoder), with `code_noise` on
    the pre-activations; `code_noise` is a Python-only setting (the CLI uses the default).
    `verify=False, radius=0` is the paper's rule: equal codes are duplicates.
    Returns the summary (also OUT/summary.json); `summary["line"]` is the one-line report.
    """
    check_request(radius=radius, train_samples=train_samples, model=model, device=device)
    out = Path(out)
    source = open_sources(list(sources), max_bytes=max_bytes, skip=out)
    hash_model, info = load_saved_model(model) if model is not None else (None, None)
    mapper = open_engine(engine, workers=workers or default_workers(), address=ray_address)
    with hold_output(out, command="pipeline dedup"), mapper:
        claim_output(out, command="pipeline dedup", overwrite=overwrite)
        for name in OUTPUTS:
            (out / name).unlink(missing_ok=True)
        timings: dict[str, float] = {}
        started = time.perf_counter()

        with _timed(timings, "crops_s"):
            params = CropParams(max_pixels=max_pixels, seed=seed,
                                calibration_rate=calibration_rate(source.count(), verify))
            crops = extract_crops(source, out, params, workers or default_workers(),
                                  engine=mapper, progress=progress)
        history: list[float] = []
        if hash_model is None and len(crops.images) >= 2:
            with _timed(timings, "train_s"):
                hash_model, info, history = train_hash(
                    crops, out, sources, train_samples=train_samples, epochs=epochs,
                    min_steps=min_steps, noise=noise, dropout=dropout, code_noise=code_noise,
                    batch_size=batch_size, seed=seed, device=device, progress=progress)
        with _timed(timings, "hash_s"):
            codes = hash_all(hash_model, crops.images, mapper, device=device,
                             progress=progress)
        verification: dict = {"enabled": verify}
        if verify:
            with _timed(timings, "verify_s"):
                group, verification = verified_groups(out, crops, codes, radius, seed)
        else:
            group = group_codes(codes, radius)
        with _timed(timings, "group_s"):
            groups = resolve_groups(group, crops.pixels)
            counts = write_outputs(out, groups, codes, progress)
            write_collision_sheet(out, crops, groups)
        del crops  # closes the memory maps before their files go
        for name in (CROPS_NAME, VIEWS_NAME, LOG_NAME):
            (out / name).unlink(missing_ok=True)

        seconds = time.perf_counter() - started
        summary = stage_summary(
            "dedup", counts, seconds, sum(counts.values()),
            images=int(len(codes)),
            groups=groups.count,
            duplicates=counts.get(DUPLICATE, 0),
            bit_usage=bit_usage(codes),
            model=str(model) if model is not None else str(out / MODEL_NAME),
            model_info=info or {},
            loss_per_epoch=[round(x, 6) for x in history],
            verification=verification,
            settings={"sources": [str(s) for s in sources], "radius": radius, "verify": verify,
                      "train_samples": train_samples, "epochs": epochs, "min_steps": min_steps,
                      "noise": noise, "dropout": dropout, "code_noise": code_noise,
                      "batch_size": batch_size, "seed": seed, "max_pixels": max_pixels,
                      "max_bytes": max_bytes,
                      "hash": asdict(hash_model.config) if hash_model is not None else None},
            timings_s={k: round(v, 3) for k, v in timings.items()},
            engine=mapper.describe(),
        )
        write_json_atomic(out / SUMMARY_NAME, summary)
        usage = summary["bit_usage"]
        summary["line"] = (summary_line("dedup", counts, UNIQUE, seconds, str(out))
                           + f" ({engine_line(summary['engine'])})"
                           + f"; {groups.count} groups, bits on {usage['ever_on']}/{usage['bits']}"
                           + verification_line(verification))
        return summary


def check_request(*, radius: int, train_samples: int, model: object, device: str) -> None:
    """Refuse options that cannot work before any output is touched (StageError)."""
    if not 0 <= radius < BITS // 8:
        raise StageError(f"--radius must be between 0 and {BITS // 8 - 1}")
    if train_samples < 2 and model is None:
        raise StageError("--train-samples must be at least 2")
    import torch

    from pipeline.devices import resolve_device

    try:
        dev = resolve_device(device)
    except ValueError as err:
        raise StageError(str(err)) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise StageError(f"--device {device} was requested but torch sees no CUDA device")


def load_saved_model(path: str | os.PathLike) -> tuple[SemanticHashAutoencoder, dict]:
    """A hash saved by an earlier run (`--model`), so new data gets the same codes."""
    from pipeline.autoencoder import load_model

    try:
        return load_model(Path(path))
    except ValueError as err:
        raise StageError(str(err)) from None


def train_hash(crops: Crops, out: Path, sources: list, *, train_samples: int, epochs: int,
               min_steps: int, noise: float, dropout: float, code_noise: float,
               batch_size: int, seed: int, device: str,
               progress: bool) -> tuple[SemanticHashAutoencoder, dict, list[float]]:
    """Train the hash on a random sample of the crops; save it and its loss plot in `out`."""
    from pipeline.autoencoder import HashConfig, save_model, train

    config = HashConfig(side=SIDE, bits=BITS, noise=noise, dropout=dropout, binary=True,
                        code_noise=code_noise)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.permutation(len(crops.images))[:train_samples])
    hash_model, history = train(crops.images, config, rows=sample, epochs=epochs,
                                min_steps=min_steps, batch_size=batch_size, seed=seed,
                                device=device, progress=progress)
    info = {"trained_on": [str(s) for s in sources], "train_samples": int(len(sample)),
            "epochs": len(history), "final_loss": history[-1]}
    save_model(hash_model, out / MODEL_NAME, info)
    loss_plot(history, out / LOSS_NAME)
    return hash_model, info, history


def calibration_rate(total: int, verify: bool) -> float:
    """The fraction of records that get a synthetic re-upload: about CALIBRATION_SAMPLES, but
    at most CALIBRATION_RATE of them (a re-upload costs about as much as a decode), and never
    fewer than MIN_CALIBRATION_SAMPLES (a small collection still needs a threshold)."""
    if not verify or total == 0:
        return 0.0
    wanted = min(CALIBRATION_SAMPLES / total, CALIBRATION_RATE)
    return min(1.0, max(wanted, MIN_CALIBRATION_SAMPLES / total))


def verified_groups(out: Path, crops: Crops, codes: np.ndarray, radius: int,
                    seed: int) -> tuple[np.ndarray, dict]:
    """Calibrate the threshold, judge every candidate pair, group from the pairs that pass;
    writes the histogram and the sheet of rejected candidates. Returns the group ids and the
    summary's `verification` entry."""
    calibration = calibration_distances(crops.views, codes, radius, crops.sampled,
                                        crops.reuploads, seed=seed)
    neighbours = code_neighbours(codes, radius)
    verdicts = verify_pairs(crops.views, candidate_pairs(neighbours), calibration.threshold)
    write_figure_atomic(out / HISTOGRAM_NAME, histogram(calibration, verdicts.counts))
    write_rejected_sheet(out, crops, verdicts)
    group = group_pairs(len(codes), verdicts.left, verdicts.right, crops.pixels)
    return group, verification_summary(radius, len(codes), calibration, verdicts)


def verification_summary(radius: int, n: int, calibration: Calibration,
                         verdicts: Verdicts) -> dict:
    return {"enabled": True, "candidate_radius": radius,
            "candidate_pairs": verdicts.candidates,
            "candidates_per_image": round(verdicts.candidates / max(1, n), 2),
            "max_proposed_per_image": IMAGES_PER_CODE * (NEAREST_CODES + 1),
            "verified_pairs": int(len(verdicts.left)),
            **calibration.describe(),
            "nearest_rejected": [round(float(d), 4) for d in verdicts.rejected[:8, 0]]}


def verification_line(verification: dict) -> str:
    if not verification.get("enabled"):
        return "; paper's mode (no verification)"
    return (f"; {verification['candidate_pairs']} candidate pairs, "
            f"{verification['verified_pairs']} verified at distance <= "
            f"{verification['threshold']}")


def write_rejected_sheet(out: Path, crops: Crops, verdicts: Verdicts, *, scale: int = 2,
                         per_row: int = 4) -> None:
    """The rejected candidates nearest the threshold, side by side (whole-frame thumbnails as
    compared, then the two center crops): what a person checks before trusting a threshold."""
    if len(verdicts.rejected) == 0:
        return
    tiles = []
    for _, left, right in verdicts.rejected:
        for row in (int(left), int(right)):
            grey = np.asarray(crops.views[row, 0])
            tiles.append(_enlarge(np.repeat(grey[..., None], 3, axis=2), scale))
        tiles.extend(_enlarge(np.asarray(crops.images[int(r)]), scale) for r in (left, right))
    write_png_atomic(out / REJECTED_NAME, contact_sheet(tiles, cols=4 * per_row))


def _enlarge(img: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(img, scale, 0), scale, 1)


def write_collision_sheet(out: Path, crops: Crops, groups: Groups) -> None:
    sheet = collision_sheet(crops.images, groups)
    if sheet is not None:
        write_png_atomic(out / SHEET_NAME, sheet)


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall time of the `with` body as `timings[name]` (the summary's timings_s)."""
    clock = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - clock
