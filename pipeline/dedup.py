"""`pipeline dedup`: the paper's semantic-hash de-duplication of LSUN (DESIGN.md §2 "LSUN").

Four passes, each linear in the number of images and none holding the images in RAM:

1. **Crops.** Every record is decoded and turned into its 32x32 center crop by a pure per-chunk
   worker (`crop_chunk`) mapped over all cores; crops stream in input order into a uint8 file on
   disk that the later passes read as a memory map. Records that cannot be decoded get their
   decoder status right away.
2. **Train** the 3072-128-3072 autoencoder on a random sample of the crops (pipeline.autoencoder),
   or load a saved one with `model=` so the same hash applies to new data.
3. **Hash.** Encode all crops in large batches; the active ReLUs are the 128-bit code.
4. **Group** equal codes with one sort of the codes (never all pairs). With `radius > 0`,
   codes within that Hamming distance of a group's *anchor* join it (see `group_codes` for the
   rule that prevents chaining).

In every group one member is kept (rule in `keep_order`); the others are listed in
`duplicates.txt`, the file `pipeline shards --exclude` reads.

Restart rule (as pipeline.runner): a finished output folder (it has summary.json) is refused
unless `overwrite`; an unfinished one is started over (hashing is a few passes over the data, so
there is nothing worth resuming).
"""

from __future__ import annotations

import json
import os
import time
from array import array
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from pipeline.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image, image_size
from pipeline.files import (
    write_bytes_atomic,
    write_figure_atomic,
    write_json_atomic,
    write_png_atomic,
)
from pipeline.geometry import center_crop, resize_area
from pipeline.manifest import (
    MANIFEST_NAME,
    SUMMARY_NAME,
    Manifest,
    Outcome,
    software_versions,
    summary_line,
)
from pipeline.outputs import claim_output
from pipeline.parallel import chunked, default_workers, map_ordered
from pipeline.runner import StageError
from pipeline.sheets import contact_sheet
from pipeline.sources import Record, open_sources
from pipeline.statuses import DESCRIPTIONS, DUPLICATE, UNIQUE, UNREADABLE

if TYPE_CHECKING:  # torch is imported only when hashing, so `pipeline --help` stays quick
    from pipeline.autoencoder import SemanticHashAutoencoder

GROUPS_NAME = "groups.jsonl"
DUPLICATES_NAME = "duplicates.txt"
MODEL_NAME = "autoencoder.pt"
LOSS_NAME = "loss.png"
SHEET_NAME = "collisions.png"
CROPS_NAME = "crops.u8"  # pass-1 scratch, removed at the end
LOG_NAME = "records.jsonl"  # pass-1 scratch: one line per input, in input order
OUTPUTS = (MANIFEST_NAME, SUMMARY_NAME, GROUPS_NAME, DUPLICATES_NAME, MODEL_NAME, LOSS_NAME,
           SHEET_NAME, CROPS_NAME, LOG_NAME)
ENCODE_BATCH = 8192  # crops per encoder call in pass 3 (bounded memory, large matmuls)

# Defaults that benchmarks/dedup_quality.py measured (README "Dedup quality").
SIDE = 32  # the paper's 32x32 downsampled center crops
BITS = 128  # the paper's 3072-128-3072 autoencoder
DEFAULT_RADIUS = 1  # measured: no false pair at 0 or 1; 1 finds ~1.5x the pairs (README)
DEFAULT_TRAIN_SAMPLES = 200_000
DEFAULT_EPOCHS = 20
DEFAULT_MIN_STEPS = 2000  # measured: fewer steps leave the hash unselective on small samples
DEFAULT_NOISE = 1.0  # strength of the realistic de-noising corruption (autoencoder.corrupt)
DEFAULT_DROPOUT = 0.1  # on the code units during training (the paper's regularizer)
DEFAULT_CODE_NOISE = 1.0  # on the code pre-activations while training (autoencoder module doc)


# ---- pass 1: crops (the per-chunk worker) -----------------------------------------------------

@dataclass(frozen=True)
class CropParams:
    side: int = SIDE
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass
class CropChunk:
    """What a worker returns for one chunk: one entry per record, crops for the decoded ones."""

    entries: list[tuple[str, str, str]]  # (key, rejection status or "", reason)
    crops: np.ndarray  # k x side x side x 3 uint8, k = decoded records, in order
    pixels: list[int]  # header width * height of each decoded record (the keep rule uses it)


def crop_chunk(records: list[Record], params: CropParams) -> CropChunk:
    """Decode each record into its side x side center crop, or record why it cannot be."""
    entries, crops, pixels = [], [], []
    for rec in records:
        try:
            data = rec.read()
        except OSError as err:
            entries.append((rec.key, UNREADABLE, str(err)))
            continue
        try:
            rgb = decode_image(data, max_pixels=params.max_pixels, draft_side=params.side)
            width, height = image_size(data)
        except DecodeError as err:
            entries.append((rec.key, err.status, err.reason))
            continue
        entries.append((rec.key, "", ""))
        crops.append(resize_area(center_crop(rgb), params.side))
        pixels.append(width * height)
    stacked = (np.stack(crops) if crops
               else np.zeros((0, params.side, params.side, 3), np.uint8))
    return CropChunk(entries, stacked, pixels)


@dataclass
class Crops:
    """Pass-1 result: the crops on disk, and what the records log holds."""

    images: np.ndarray  # memmap, n x side x side x 3
    pixels: np.ndarray  # n, header pixel counts
    inputs: int
    rejected: dict[str, int] = field(default_factory=dict)


def extract_crops(source, out: Path, params: CropParams, workers: int, *,
                  chunk_size: int = 64, progress: bool = True) -> Crops:
    """Stream every record's crop into OUT/crops.u8 and its key into OUT/records.jsonl."""
    total = source.count()
    pixels = array("q")  # 8 bytes per image, not a Python int object each
    rejected: dict[str, int] = {}
    inputs = 0
    bar = tqdm(total=total, unit="img", desc="crops", disable=not progress, dynamic_ncols=True)
    with open(out / CROPS_NAME, "wb") as crop_file, \
            open(out / LOG_NAME, "w", encoding="utf-8") as log:
        for chunk in map_ordered(crop_chunk, params, chunked(iter(source), chunk_size), workers):
            crop_file.write(chunk.crops.tobytes())
            row = len(pixels)
            for key, status, reason in chunk.entries:
                if status:
                    log.write(json.dumps({"key": key, "status": status, "reason": reason}) + "\n")
                    rejected[status] = rejected.get(status, 0) + 1
                else:
                    log.write(json.dumps({"key": key, "row": row}) + "\n")
                    row += 1
            pixels.extend(chunk.pixels)
            inputs += len(chunk.entries)
            bar.update(len(chunk.entries))
    bar.close()
    n = len(pixels)
    shape = (n, params.side, params.side, 3)
    images = (np.memmap(out / CROPS_NAME, np.uint8, "r", shape=shape) if n
              else np.zeros(shape, np.uint8))
    return Crops(images, np.asarray(pixels, np.int64), inputs, rejected)


def _log_lines(out: Path) -> Iterator[dict]:
    with open(out / LOG_NAME, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


# ---- pass 3: hash -----------------------------------------------------------------------------

def hash_crops(model: SemanticHashAutoencoder, crops: np.ndarray, *, device: str = "auto",
               batch: int = ENCODE_BATCH, progress: bool = True) -> np.ndarray:
    """uint8 n x 16 codes, encoding `batch` crops at a time from the memory map."""
    from pipeline.autoencoder import pick_device, semantic_hash

    dev = pick_device(device)
    codes = np.zeros((len(crops), model.config.bits // 8), np.uint8)
    starts = range(0, len(crops), batch)
    for start in tqdm(starts, unit="batch", desc="hash", disable=not progress,
                      dynamic_ncols=True):
        chunk = np.asarray(crops[start : start + batch])
        codes[start : start + len(chunk)] = semantic_hash(model, chunk, dev)
    return codes


# ---- pass 4: group ----------------------------------------------------------------------------

def group_codes(codes: np.ndarray, radius: int = 0) -> np.ndarray:
    """A group id per image (-1 for images alone in their group), never comparing all pairs.

    Equal codes always share a group (one sort of the codes, np.unique). With `radius > 0` the
    distinct codes are visited from the most frequent down (ties: first seen); each code not yet
    placed becomes an *anchor* and takes every unplaced code within `radius` bits **of the
    anchor**.
    Members of a group are thus within 2 * radius of each other: near duplicates cannot chain
    into one giant group through long paths of one-bit steps, the failure union-find has. The
    neighbours come from a faiss multi-index hash (`radius + 1` exact-match substrings: by
    pigeonhole every code within `radius` shares one with the query), so the candidates checked
    grow with the number of images, not its square.
    """
    n = len(codes)
    if n == 0:
        return np.zeros(0, np.int64)
    distinct, first, inverse, counts = np.unique(
        codes, axis=0, return_index=True, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    if radius > 0 and len(distinct) > 1:
        code_group = _anchor_groups(distinct, first, counts, radius)
    else:
        code_group = np.arange(len(distinct))
    group = code_group[inverse]
    multi = np.bincount(group, minlength=len(distinct))[group] > 1
    # Renumber so group ids follow first appearance in the input (deterministic and readable).
    ids, first_row = np.unique(group[multi], return_index=True)
    renumber = np.full(len(distinct), -1, np.int64)
    renumber[ids[np.argsort(first_row)]] = np.arange(len(ids))
    return np.where(multi, renumber[group], -1)


def _anchor_groups(distinct: np.ndarray, first: np.ndarray, counts: np.ndarray,
                   radius: int) -> np.ndarray:
    lims, neighbours = hamming_neighbours(distinct, radius)
    code_group = np.full(len(distinct), -1, np.int64)
    for anchor in np.lexsort((first, -counts)):
        if code_group[anchor] >= 0:
            continue
        near = neighbours[lims[anchor] : lims[anchor + 1]]
        near = near[code_group[near] < 0]
        code_group[near] = anchor
        code_group[anchor] = anchor
    return code_group


def hamming_neighbours(codes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """For each code, the indices of all codes within `radius` bits (itself included), CSR-style.

    faiss' binary range search counts distances strictly below its argument, hence radius + 1.
    On a GPU faiss, a brute-force GpuIndexBinaryFlat k-NN is used instead (fast there).
    """
    import faiss

    bits = codes.shape[1] * 8
    if faiss.get_num_gpus() > 0:
        return _gpu_neighbours(codes, radius)
    nhash = radius + 1
    if bits // nhash < 8:
        raise ValueError(f"radius {radius} is too large for {bits}-bit codes")
    index = faiss.IndexBinaryMultiHash(bits, nhash, min(64, bits // nhash))
    index.add(np.ascontiguousarray(codes))
    lims, _, labels = index.range_search(np.ascontiguousarray(codes), radius + 1)
    return lims, labels


def _gpu_neighbours(codes: np.ndarray, radius: int, k: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """k nearest codes by brute force on the GPU, cut at `radius` (a code with more than k
    neighbours that close is already in a large group through its anchor)."""
    import faiss

    index = faiss.GpuIndexBinaryFlat(faiss.StandardGpuResources(), codes.shape[1] * 8)
    index.add(np.ascontiguousarray(codes))
    dist, labels = index.search(np.ascontiguousarray(codes), min(k, len(codes)))
    keep = (dist <= radius) & (labels >= 0)
    return np.concatenate([[0], np.cumsum(keep.sum(axis=1))]), labels[keep]


def keep_order(pixels: np.ndarray) -> np.ndarray:
    """Rank images for keeping: within a group the one with the most pixels (the original, not a
    downscaled re-upload) is kept; ties go to the first in source order."""
    rows = np.arange(len(pixels))
    rank = np.empty(len(pixels), np.int64)
    rank[np.lexsort((rows, -pixels))] = rows
    return rank


# ---- outputs ----------------------------------------------------------------------------------

@dataclass
class Groups:
    ids: np.ndarray  # group id per row, -1 alone
    kept: np.ndarray  # row kept for each group id
    count: int


def resolve_groups(group: np.ndarray, pixels: np.ndarray) -> Groups:
    count = int(group.max()) + 1 if len(group) else 0
    kept = np.full(count, -1, np.int64)
    rows = np.flatnonzero(group >= 0)
    rank = keep_order(pixels)
    ordered = rows[np.lexsort((rank[rows], group[rows]))]  # by group, best rank first
    first = np.r_[True, group[ordered][1:] != group[ordered][:-1]] if len(ordered) else []
    kept[group[ordered[first]]] = ordered[first]
    return Groups(group, kept, count)


def write_outputs(out: Path, groups: Groups, codes: np.ndarray, progress: bool) -> dict:
    """Manifest (input order), groups.jsonl and duplicates.txt from the pass-1 log."""
    keys_of: dict[int, str] = {}
    manifest = Manifest(out / MANIFEST_NAME)
    try:
        for line in tqdm(_log_lines(out), desc="manifest", unit="img", disable=not progress,
                         dynamic_ncols=True):
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
    counts = dict(sorted(manifest.counts.items()))
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
    return counts


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
        big = [np.repeat(np.repeat(np.asarray(crops[r]), scale, 0), scale, 1) for r in members]
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


# ---- the driver -------------------------------------------------------------------------------

def _prepare_output(out: Path, overwrite: bool) -> None:
    claim_output(out, overwrite=overwrite)
    for name in OUTPUTS:
        (out / name).unlink(missing_ok=True)


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
    batch_size: int = 256,
    device: str = "auto",
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Find near duplicates in `sources` with the paper's semantic hash; results in `out`.

    The decoder is trained on the binarized code (pipeline.autoencoder), with `code_noise` on
    the pre-activations; `code_noise` is a Python-only setting (the CLI uses the default).
    Returns the summary (also OUT/summary.json); `summary["line"]` is the one-line report.
    """
    if not 0 <= radius < BITS // 8:
        raise StageError(f"--radius must be between 0 and {BITS // 8 - 1}")
    if train_samples < 2 and model is None:
        raise StageError("--train-samples must be at least 2")
    from pipeline.autoencoder import HashConfig, load_model, pick_device, save_model, train

    try:
        pick_device(device)
    except ValueError as err:
        raise StageError(str(err)) from None
    out = Path(out)
    source = open_sources(list(sources))
    hash_model = info = None
    if model is not None:
        try:
            hash_model, info = load_model(Path(model))
        except ValueError as err:
            raise StageError(str(err)) from None
    _prepare_output(out, overwrite)
    timings: dict[str, float] = {}
    started = clock = time.perf_counter()

    crops = extract_crops(source, out, CropParams(max_pixels=max_pixels),
                          workers or default_workers(), progress=progress)
    timings["crops_s"] = time.perf_counter() - clock
    history: list[float] = []
    if hash_model is None and len(crops.images) >= 2:
        clock = time.perf_counter()
        config = HashConfig(side=SIDE, bits=BITS, noise=noise, dropout=dropout, binary=True,
                            code_noise=code_noise)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.permutation(len(crops.images))[:train_samples])
        hash_model, history = train(crops.images, config, rows=sample, epochs=epochs,
                                    min_steps=min_steps,
                                    batch_size=batch_size, seed=seed, device=device,
                                    progress=progress)
        info = {"trained_on": [str(s) for s in sources], "train_samples": int(len(sample)),
                "epochs": len(history), "final_loss": history[-1]}
        save_model(hash_model, out / MODEL_NAME, info)
        loss_plot(history, out / LOSS_NAME)
        timings["train_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    if hash_model is not None:
        codes = hash_crops(hash_model, crops.images, device=device, progress=progress)
    else:
        codes = np.zeros((len(crops.images), BITS // 8), np.uint8)
    timings["hash_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    groups = resolve_groups(group_codes(codes, radius), crops.pixels)
    counts = write_outputs(out, groups, codes, progress)
    sheet = collision_sheet(crops.images, groups)
    if sheet is not None:
        write_png_atomic(out / SHEET_NAME, sheet)
    timings["group_s"] = time.perf_counter() - clock
    del crops
    (out / CROPS_NAME).unlink(missing_ok=True)
    (out / LOG_NAME).unlink(missing_ok=True)

    seconds = time.perf_counter() - started
    inputs = sum(counts.values())
    summary = {
        "stage": "dedup",
        "inputs": inputs,
        "images": int(len(codes)),
        "groups": groups.count,
        "duplicates": counts.get(DUPLICATE, 0),
        "counts": counts,
        "statuses": {s: DESCRIPTIONS[s] for s in counts},
        "bit_usage": bit_usage(codes),
        "model": str(model) if model is not None else str(out / MODEL_NAME),
        "model_info": info or {},
        "loss_per_epoch": [round(x, 6) for x in history],
        "settings": {"sources": [str(s) for s in sources], "radius": radius,
                     "train_samples": train_samples, "epochs": epochs,
                     "min_steps": min_steps, "noise": noise,
                     "dropout": dropout, "code_noise": code_noise,
                     "batch_size": batch_size, "seed": seed,
                     "max_pixels": max_pixels,
                     "hash": asdict(hash_model.config) if hash_model is not None else None},
        "seconds": round(seconds, 3),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "images_per_s": round(inputs / seconds, 1) if seconds > 0 else None,
        "versions": software_versions(),
    }
    write_json_atomic(out / SUMMARY_NAME, summary)
    summary["line"] = (summary_line("dedup", counts, UNIQUE, seconds, str(out))
                       + f"; {groups.count} groups, bits on {summary['bit_usage']['ever_on']}"
                       f"/{summary['bit_usage']['bits']}")
    return summary
