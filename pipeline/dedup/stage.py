"""`pipeline dedup`: the paper's semantic-hash de-duplication of LSUN: near-duplicate
photos are proposed by hashing small center crops with an autoencoder, and confirmed from the
images themselves.

Passes, each linear in the number of images and none holding the images in RAM:

1. **Crops** (pipeline.dedup.crops): every record's 32x32 center crop and whole-frame thumbnails,
   streamed to files on disk that the later passes read as memory maps; undecodable records get
   their status at once.
2. **Train** the 3072-128-3072 autoencoder on a random sample of the crops
   (pipeline.dedup.autoencoder), or load a saved one with `model=` so the same hash applies to new
   data.
3. **Hash** (pipeline.dedup.hashing). Encode all crops in large batches, in numpy on the CPU; the
   active ReLUs are the 128-bit code. With `--engine ray` the batches are tasks on the cluster
   (pipeline.engines).
4. **Verify** (the default): codes within `radius` bits propose a bounded number of candidate
   pairs per image (pipeline.dedup.grouping); each pair is judged on the whole-frame thumbnails
   against a threshold calibrated on the data itself (pipeline.dedup.verify); a borderline pair
   gets a second opinion from its keypoints (pipeline.dedup.keypoints), and groups form around
   anchor images from the pairs that pass. Codes of zoomed (and, with `mirrors="same"`,
   mirrored) crops propose candidates too, and so do the crops' palette codes
   (pipeline.dedup.palette), for fine textures that a small zoom gives a far hash code.
   **Paper's mode** (`verify=False`, `radius=0`): equal codes are the groups (one sort of the
   codes); with `radius > 0`, codes within that Hamming distance of a group's anchor join it.

In every group one member is kept (rule in `pipeline.dedup.grouping.keep_order`); the others are
listed in `duplicates.txt`, the file `pipeline shards --exclude` reads (pipeline.dedup.results
writes it, the manifest, the group list and the sheets).

Restart rule (core.outputs): a finished output folder (it has summary.json) is refused
unless `overwrite`; an unfinished one is started over (hashing is a few passes over the data, so
there is nothing worth resuming).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.files import write_figure_atomic, write_json_atomic
from core.outputs import claim_output, hold_output
from core.signals import Interrupted, signal_name
from pipeline.decode import DEFAULT_MAX_PIXELS
from pipeline.dedup.crops import (
    CROPS_NAME,
    INNER_NAME,
    KEYPOINTS_NAME,
    LOG_NAME,
    SIDE,
    VIEWS_NAME,
    ZOOM_NAME,
    CropParams,
    Crops,
    extract_crops,
)
from pipeline.dedup.grouping import (
    IMAGES_PER_CODE,
    NEAREST_CODES,
    CodeNeighbours,
    candidate_pairs,
    code_neighbours,
    group_codes,
    group_pairs,
    resolve_groups,
)
from pipeline.dedup.hashing import BITS, bit_usage, hash_all
from pipeline.dedup.palette import palette_neighbours
from pipeline.dedup.results import (
    DUPLICATES_NAME,
    GEOMETRIC_NAME,
    GROUPS_NAME,
    HISTOGRAM_NAME,
    LOSS_NAME,
    REJECTED_NAME,
    SHEET_NAME,
    loss_plot,
    write_collision_sheet,
    write_outputs,
    write_rejected_sheet,
)
from pipeline.dedup.verify import (
    Calibration,
    Verdicts,
    calibration_distances,
    histogram,
    screen_pairs,
    second_opinion,
)
from pipeline.engines import Engine, engine_line, open_engine
from pipeline.engines.local import default_workers
from pipeline.manifest import MANIFEST_NAME, SUMMARY_NAME, stage_summary, summary_line
from pipeline.runner import StageError
from pipeline.sources import DEFAULT_MAX_BYTES, open_sources
from pipeline.statuses import DUPLICATE, UNIQUE

if TYPE_CHECKING:  # torch is imported only when hashing, so `pipeline --help` stays quick
    import torch

    from pipeline.dedup.autoencoder import SemanticHashAutoencoder

MODEL_NAME = "autoencoder.pt"
OUTPUTS = (MANIFEST_NAME, SUMMARY_NAME, GROUPS_NAME, DUPLICATES_NAME, MODEL_NAME, LOSS_NAME,
           SHEET_NAME, REJECTED_NAME, GEOMETRIC_NAME, HISTOGRAM_NAME, CROPS_NAME, VIEWS_NAME,
           INNER_NAME, KEYPOINTS_NAME, ZOOM_NAME, LOG_NAME)

# Defaults that benchmarks/dedup_quality.py measured (docs/dedup.md, "Quality"); the code has
# pipeline.dedup.hashing.BITS bits, the paper's 3072-128-3072 autoencoder.
# Candidate radius under verification: the widest allowed. Verification, not the radius, keeps
# the precision, and on the 4,709-image quality set 15 rather than 12 bits proposed 4 % more
# pairs and raised recall from 0.939 to 0.951 (copies' codes spread more on a larger set;
# docs/dedup.md, "Quality").
DEFAULT_RADIUS = 15
CALIBRATION_SAMPLES = 1000  # images that get a synthetic re-upload for the calibration ...
CALIBRATION_RATE = 0.1  # ... but never more than this fraction of them ...
MIN_CALIBRATION_SAMPLES = 200  # ... nor fewer than this many (the 0.9 quantile needs ~20 above)
DEFAULT_TRAIN_SAMPLES = 200_000
DEFAULT_EPOCHS = 20
DEFAULT_MIN_STEPS = 2000  # measured: fewer steps leave the hash unselective on small samples
DEFAULT_NOISE = 1.0  # strength of the realistic de-noising corruption (autoencoder.corrupt)
DEFAULT_DROPOUT = 0.1  # on the code units during training (the paper's regularizer)
DEFAULT_CODE_NOISE = 1.0  # on the code pre-activations while training (autoencoder module doc)
DEFAULT_BATCH_SIZE = 256  # training mini-batch


# ---- the driver: the steps in the order they run ---------------------------------------------

def dedup(
    sources: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    train_samples: int | None = None,
    epochs: int | None = None,
    min_steps: int | None = None,
    noise: float | None = None,
    dropout: float | None = None,
    code_noise: float | None = None,
    radius: int = DEFAULT_RADIUS,
    verify: bool = True,
    mirrors: str = "different",
    batch_size: int | None = None,
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

    The decoder is trained on the binarized code (pipeline.dedup.autoencoder), with `code_noise` on
    the pre-activations; `code_noise` is a Python-only setting (the CLI uses the default).
    The training options (`TRAINING`; None = the stage default) only apply when a hash is
    trained: with `model` they are refused, since the saved hash keeps its own.
    `verify=False, radius=0` is the paper's rule: equal codes are duplicates. `mirrors="same"`
    counts a left-right mirror image as a copy (its code proposes, its thumbnail verifies).
    Returns the summary (also OUT/summary.json); `summary["line"]` is the one-line report.
    """
    given = {"train_samples": train_samples, "epochs": epochs, "min_steps": min_steps,
             "noise": noise, "dropout": dropout, "code_noise": code_noise,
             "batch_size": batch_size}
    training = training_options(given, model)
    device = check_request(radius=radius, model=model, device=device, training=training,
                           mirrors=mirrors, verify=verify)
    out = Path(out)
    source = open_sources(list(sources), max_bytes=max_bytes, skip=out)
    hash_model, info = load_saved_model(model) if model is not None else (None, None)
    mapper = open_engine(engine, workers=workers or default_workers(), address=ray_address)
    with hold_output(out, command="pipeline dedup"), mapper, _stopped_cleanly(out):
        claim_output(out, command="pipeline dedup", overwrite=overwrite)
        for name in OUTPUTS:
            (out / name).unlink(missing_ok=True)
        timings: dict[str, float] = {}
        started = time.perf_counter()

        with _timed(timings, "crops_s"):
            params = CropParams(max_pixels=max_pixels, seed=seed, verify=verify,
                                calibration_rate=calibration_rate(source.count(), verify))
            crops = extract_crops(source, out, params, workers or default_workers(),
                                  engine=mapper, progress=progress)
        history: list[float] = []
        if hash_model is None and len(crops.images) >= 2:
            with _timed(timings, "train_s"):
                hash_model, info, history = train_hash(
                    crops, out, sources, **training, seed=seed, device=device,
                    progress=progress)
        with _timed(timings, "hash_s"):
            encoder = None
            if hash_model is not None:
                from pipeline.dedup.autoencoder import hash_encoder

                encoder = hash_encoder(hash_model)
            codes = hash_all(encoder, crops.images, mapper, progress=progress)
            if verify:  # the inner, zoomed (and mirrored) crops' codes only propose candidates
                extra_codes = np.concatenate([
                    hash_all(encoder, crops.inner, mapper, progress=False),
                    hash_all(encoder, crops.zoomed, mapper, progress=False),
                    *([hash_all(encoder, crops.images, mapper, progress=False, mirrored=True)]
                      if mirrors == "same" else [])])
        verification: dict = {"enabled": verify}
        if verify:
            with _timed(timings, "verify_s"):
                group, verification = verified_groups(out, crops, codes, extra_codes, radius,
                                                      seed, mirrors == "same", mapper)
        else:
            group = group_codes(codes, radius)
        with _timed(timings, "group_s"):
            groups = resolve_groups(group, crops.pixels)
            counts = write_outputs(out, groups, codes, progress)
            write_collision_sheet(out, crops, groups)
        del crops  # closes the memory maps before their files go
        _remove_scratch(out)

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
                      "mirrors": mirrors,
                      "training": training if model is None else None,  # model_info, hash
                      "seed": seed, "max_pixels": max_pixels, "max_bytes": max_bytes,
                      "hash": asdict(hash_model.config) if hash_model is not None else None},
            timings_s={k: round(v, 3) for k, v in timings.items()},
            device=str(device),
            engine=mapper.describe(),
        )
        write_json_atomic(out / SUMMARY_NAME, summary)
        usage = summary["bit_usage"]
        summary["line"] = (summary_line("dedup", counts, UNIQUE, seconds, str(out))
                           + f" ({engine_line(summary['engine'])})"
                           + f"; {groups.count} groups, bits on {usage['ever_on']}/{usage['bits']}"
                           + verification_line(verification))
        return summary


TRAINING_DEFAULTS = {"train_samples": DEFAULT_TRAIN_SAMPLES, "epochs": DEFAULT_EPOCHS,
                     "min_steps": DEFAULT_MIN_STEPS, "noise": DEFAULT_NOISE,
                     "dropout": DEFAULT_DROPOUT, "code_noise": DEFAULT_CODE_NOISE,
                     "batch_size": DEFAULT_BATCH_SIZE}
MAX_RADIUS = BITS // 8 - 1  # wider radii propose too many candidates (docs/dedup.md, "Quality")


def training_options(given: dict, model: object) -> dict:
    """The training settings, the given ones over the defaults. With a saved `model` none may
    be given: the saved hash keeps its own, and a summary that recorded unused values would
    contradict the model's (a UserError naming them)."""
    named = [name for name, value in given.items() if value is not None]
    if model is not None and named:
        options = ", ".join("--" + name.replace("_", "-") for name in named)
        raise StageError(f"{options} only apply when training a hash; --model applies a saved "
                         "one with its own settings: leave them out")
    return {name: TRAINING_DEFAULTS[name] if value is None else value
            for name, value in given.items()}


def check_request(*, radius: int, model: object, device: str | torch.device,
                  training: dict, mirrors: str, verify: bool) -> torch.device:
    """Refuse options that cannot work before any output is touched (a UserError); returns the
    device the hash trains on (a misspelt device, or a GPU torch cannot see, is refused)."""
    if not 0 <= radius <= MAX_RADIUS:
        raise StageError(f"--radius must be between 0 and {MAX_RADIUS}")
    if training["train_samples"] < 2 and model is None:
        raise StageError("--train-samples must be at least 2")
    if mirrors not in ("different", "same"):
        raise StageError(f"--mirrors must be 'different' or 'same', not {mirrors!r}")
    if mirrors == "same" and not verify:
        raise StageError("--mirrors same needs --verify (mirror images are confirmed on their "
                         "mirrored thumbnails)")
    from core.devices import resolve_device

    return resolve_device(device)


def load_saved_model(path: str | os.PathLike) -> tuple[SemanticHashAutoencoder, dict]:
    """A hash saved by an earlier run (`--model`), so new data gets the same codes."""
    from pipeline.dedup.autoencoder import load_model

    return load_model(Path(path))


def train_hash(crops: Crops, out: Path, sources: list, *, train_samples: int, epochs: int,
               min_steps: int, noise: float, dropout: float, code_noise: float,
               batch_size: int, seed: int, device: torch.device,
               progress: bool) -> tuple[SemanticHashAutoencoder, dict, list[float]]:
    """Train the hash on a random sample of the crops; save it and its loss plot in `out`."""
    from pipeline.dedup.autoencoder import HashConfig, save_model, train

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


def verified_groups(out: Path, crops: Crops, codes: np.ndarray, extra_codes: np.ndarray,
                    radius: int, seed: int, mirrors: bool,
                    engine: Engine) -> tuple[np.ndarray, dict]:
    """Calibrate the threshold, judge every candidate pair, group from the pairs that pass;
    writes the histogram and the sheet of rejected candidates. Returns the group ids and the
    summary's `verification` entry.

    Candidates come from every image's code and from `extra_codes`: for bordered pictures the
    code of the picture inside the borders (rows `crops.inner_rows`), then every image's
    zoomed center crop's code (pipeline.dedup.crops.ZOOM), and with `mirrors` every image's
    mirrored crop's code (pairs are then also judged against the mirrored thumbnail); the
    palette codes propose too (`proposers`). The geometric checks of borderline pairs run on
    `engine`'s workers."""
    # The code searches run in a thread while this one calibrates: neither needs the other,
    # and both spend most of their time in numpy and faiss, outside the GIL.
    with ThreadPoolExecutor(1) as searching:
        proposed = searching.submit(proposers, crops, codes, extra_codes, radius, mirrors)
        calibration = calibration_distances(crops.views, crops.framed, codes, radius,
                                            crops.sampled, crops.reuploads,
                                            crops.reuploads_framed, seed=seed, mirrors=mirrors)
        screened = screen_pairs(crops.views, crops.framed, candidate_pairs(proposed.result()),
                                calibration.threshold, mirrors)
    # The histogram is drawn here while the workers run the geometric checks (~0.1 s of
    # matplotlib that would otherwise wait for them, or they for it).
    with ThreadPoolExecutor(1) as drawing:
        drawn = drawing.submit(write_histogram, out, calibration, screened.counts)
        verdicts = second_opinion(screened, calibration.threshold, crops.keypoints, engine)
        drawn.result()
    write_rejected_sheet(out, crops, verdicts)
    group = group_pairs(len(codes), verdicts.left, verdicts.right, crops.pixels)
    return group, verification_summary(radius, len(codes), int(crops.framed.sum()),
                                       len(crops.inner_rows), calibration, verdicts)


def proposers(crops: Crops, codes: np.ndarray, extra_codes: np.ndarray, radius: int,
              mirrors: bool = False) -> list[tuple[CodeNeighbours, np.ndarray | None]]:
    """What proposes candidate pairs (pipeline.dedup.grouping.candidate_pairs): the hash codes
    with `extra_codes` (`verified_groups` lists them), and the crops' palette codes
    (pipeline.dedup.palette), for the fine textures whose hash codes a zoom scatters."""
    rows = np.arange(len(codes))
    owners = np.concatenate([rows, crops.inner_rows, rows, *([rows] if mirrors else [])])
    return [(code_neighbours(np.concatenate([codes, extra_codes]), radius), owners),
            (palette_neighbours(crops.images), None)]


def write_histogram(out: Path, calibration: Calibration, counts: np.ndarray) -> None:
    write_figure_atomic(out / HISTOGRAM_NAME, histogram(calibration, counts))


def verification_summary(radius: int, n: int, framed: int, bordered: int,
                         calibration: Calibration,
                         verdicts: Verdicts) -> dict:
    return {"enabled": True, "candidate_radius": radius,
            "candidate_pairs": verdicts.candidates,
            "candidates_per_image": round(verdicts.candidates / max(1, n), 2),
            "max_proposed_per_image": IMAGES_PER_CODE * (NEAREST_CODES + 1),
            "verified_pairs": int(len(verdicts.left)),
            "geometric_checked": verdicts.geometric_checked,
            "geometric_accepted": verdicts.geometric_accepted,
            "framed_images": framed,
            "bordered_images": bordered,
            **calibration.describe(),
            "nearest_rejected": [round(float(d), 4) for d in verdicts.rejected[:8, 0]]}


def verification_line(verification: dict) -> str:
    if not verification.get("enabled"):
        return "; paper's mode (no verification)"
    source = verification["threshold_source"]
    return (f"; {verification['candidate_pairs']} candidate pairs, "
            f"{verification['verified_pairs']} verified at distance <= "
            f"{verification['threshold']}" + ("" if source == "calibrated" else f" ({source})"))


def _remove_scratch(out: Path) -> None:
    for name in (CROPS_NAME, VIEWS_NAME, INNER_NAME, KEYPOINTS_NAME, ZOOM_NAME, LOG_NAME):
        (out / name).unlink(missing_ok=True)


@contextmanager
def _stopped_cleanly(out: Path) -> Iterator[None]:
    """A run stopped by Ctrl-C or SIGTERM removes its scratch files (the size of the input's
    crops) and ends with one line; an unfinished dedup is started over when rerun."""
    try:
        yield
    except KeyboardInterrupt:
        _remove_scratch(out)
        raise Interrupted(f"dedup: stopped by {signal_name()} before it finished; {out} holds "
                          "no result (a rerun starts over)") from None


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall time of the `with` body as `timings[name]` (the summary's timings_s)."""
    clock = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - clock
