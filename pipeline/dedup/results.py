"""What `pipeline dedup` leaves in its output folder besides the summary: the manifest (one line
per input), `groups.jsonl`, `duplicates.txt` (what `pipeline shards --exclude` reads), and the
pictures a person checks before trusting the result (collisions, rejected candidates, the loss).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from core.files import read_jsonl, write_bytes_atomic, write_figure_atomic, write_png_atomic
from core.sheets import contact_sheet
from pipeline.dedup.crops import LOG_NAME, Crops
from pipeline.dedup.grouping import Groups
from pipeline.dedup.verify import Verdicts
from pipeline.manifest import MANIFEST_NAME, Manifest, Outcome
from pipeline.statuses import DUPLICATE, UNIQUE

GROUPS_NAME = "groups.jsonl"
DUPLICATES_NAME = "duplicates.txt"
LOSS_NAME = "loss.png"
SHEET_NAME = "collisions.png"
REJECTED_NAME = "rejected.png"
GEOMETRIC_NAME = "geometric.png"
HISTOGRAM_NAME = "distances.png"


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


def write_collision_sheet(out: Path, crops: Crops, groups: Groups) -> None:
    sheet = collision_sheet(crops.images, groups)
    if sheet is not None:
        write_png_atomic(out / SHEET_NAME, sheet)


def write_rejected_sheet(out: Path, crops: Crops, verdicts: Verdicts, *, scale: int = 2,
                         per_row: int = 3) -> None:
    """The rejected candidates nearest the threshold, side by side (whole-frame thumbnails as
    compared, then the two center crops, then the thumbnail distance and the geometric check's
    inlier count, "-" when the pair was beyond its band): what a person checks before trusting
    a threshold. Then `geometric.png`: the borderline pairs the geometric check accepted with
    the fewest inliers, the same way."""
    rejected = [(left, right, f"d {d:.3f}", f"in {'-' if n < 0 else int(n)}")
                for d, left, right, n in verdicts.rejected]
    accepted = [(left, right, f"d {d:.3f}", f"in {int(n)} ok")
                for n, left, right, d in verdicts.accepted_near]
    for name, pairs in ((REJECTED_NAME, rejected), (GEOMETRIC_NAME, accepted)):
        if pairs:
            write_png_atomic(out / name, pair_sheet(crops, pairs, scale, per_row))


def pair_sheet(crops: Crops, pairs: list, scale: int, per_row: int) -> np.ndarray:
    """Per pair: both whole-frame thumbnails, both center crops, and a caption tile."""
    tiles = []
    for left, right, *caption in pairs:
        for row in (int(left), int(right)):
            grey = np.asarray(crops.views[row, 0])
            tiles.append(_enlarge(np.repeat(grey[..., None], 3, axis=2), scale))
        tiles.extend(_enlarge(np.asarray(crops.images[int(r)]), scale) for r in (left, right))
        tiles.append(_caption(caption, tiles[-1].shape[0]))
    return contact_sheet(tiles, cols=5 * per_row)


def _caption(lines: list[str], side: int) -> np.ndarray:
    tile = np.full((side, side, 3), 255, np.uint8)
    for k, text in enumerate(lines):
        cv2.putText(tile, text, (2, 14 + 16 * k), cv2.FONT_HERSHEY_PLAIN, 0.8, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return tile


def _enlarge(img: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(img, scale, 0), scale, 1)


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
