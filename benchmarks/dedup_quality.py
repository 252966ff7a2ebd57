"""Near-duplicate quality of `pipeline dedup` against imagehash's pHash, on real photographs.

The set: non-overlapping tiles of the photographs that ship inside scikit-image, scikit-learn
and matplotlib, each stored losslessly as the base image, plus one variant per transform. A base
must be a genuinely distinct picture, or the ground truth itself is wrong (two patches of clear
sky are the same picture to anyone). The rule looks at the bases alone, before any hash is
computed, and the same set is scored for every method:

- texture: the tile's grey levels (luminance) vary by a standard deviation of at least
  `MIN_TILE_STD`; measured on luminance, not across the RGB values, which counts a flat orange
  patch as "textured" because its red and blue differ;
- distinct: its 16x16 grey thumbnail differs from every base already chosen (tiles are visited
  photo by photo, row by row) by at least `MIN_THUMB_DIFF` grey levels on average; this drops
  e.g. adjacent dark-sky tiles and the black corners of the retina image.

The transforms:

- jpeg: JPEG re-encode at quality 60-85      - webp: WebP re-encode at quality 60-85
- resize: downscaled to 60-85 %              - shift: 2-4 px cut from the top and left
- crop: 3-6 % cut from the borders, unevenly - brightness: +8 to +16 grey levels

A pair of images is a true duplicate pair when both come from the same tile. Per transform the
pair universe is the bases plus that transform's variants (one true pair per base); "all" is
the whole set. Reported: pairwise precision, recall, and the per-pair false-positive rate
(false pairs / all non-duplicate pairs), which is what counts at LSUN scale (3M images make
4.5e12 pairs). `pipeline dedup` is trained once on the set with the stage defaults and then
regrouped at each radius with --model (the same codes); pHash pairs are all pairs within the
Hamming threshold (no grouping, which can only help it).

    python benchmarks/dedup_quality.py [--tile 96] [--radii 0,1,2] [--epochs E] ...
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import click
import numpy as np
from PIL import Image

from pipeline import demo
from pipeline.dedup import (
    DEFAULT_CODE_NOISE,
    DEFAULT_EPOCHS,
    DEFAULT_MIN_STEPS,
    DEFAULT_NOISE,
    DEFAULT_RADIUS,
    dedup,
)
from pipeline.files import read_jsonl
from pipeline.geometry import resize_area

# Real photographs (synthetic images, silhouettes and the stereo twin motorcycle_right, whose
# tiles are near duplicates of motorcycle_left's, are left out).
SKIMAGE = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "coffee.png",
           "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
           "motorcycle_left.png", "rocket.jpg", "retina.jpg", "clock_motion.png",
           "grace_hopper.jpg")
SKLEARN = ("china.jpg", "flower.jpg")
TRANSFORMS = ("jpeg", "webp", "resize", "shift", "crop", "brightness")
PHASH_THRESHOLDS = (0, 2, 4, 6, 8, 10)
MIN_TILE_STD = 12.0  # grey levels of luminance; flatter tiles are indistinguishable by anyone
MIN_THUMB_DIFF = 4.0  # mean grey-level difference of 16x16 thumbnails between any two bases
THUMB = 16


def photographs() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_image

    return [demo.photo(n) for n in SKIMAGE] + [load_sample_image(n) for n in SKLEARN]


def tiles(photo: np.ndarray, side: int) -> list[np.ndarray]:
    """The photo's non-overlapping side x side tiles with enough texture (`MIN_TILE_STD`)."""
    h, w = photo.shape[:2]
    out = []
    for y in range(0, h - side + 1, side):
        for x in range(0, w - side + 1, side):
            tile = np.ascontiguousarray(photo[y : y + side, x : x + side])
            if grey(tile).std() >= MIN_TILE_STD:
                out.append(tile)
    return out


def grey(tile: np.ndarray) -> np.ndarray:
    """Luminance (ITU-R 601 weights) as float32."""
    return tile.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def distinct_bases(candidates: list[np.ndarray]) -> list[np.ndarray]:
    """Greedily keep each candidate whose 16x16 grey thumbnail is at least `MIN_THUMB_DIFF`
    grey levels (mean absolute difference) from every base kept before it."""
    kept, thumbs = [], []
    for tile in candidates:
        thumb = resize_area(grey(tile), THUMB).ravel()
        if thumbs and np.abs(np.stack(thumbs) - thumb).mean(axis=1).min() < MIN_THUMB_DIFF:
            continue
        kept.append(tile)
        thumbs.append(thumb)
    return kept


def variant(img: np.ndarray, kind: str, rng: np.random.Generator) -> bytes:
    """The encoded bytes of one near duplicate of `img`."""
    if kind == "jpeg":
        return demo.encode(img, "JPEG", quality=int(rng.integers(60, 86)))
    if kind == "webp":
        return demo.encode(img, "WEBP", quality=int(rng.integers(60, 86)))
    if kind == "crop":
        h, w = img.shape[:2]
        cut = rng.uniform(0.03, 0.06, 4) * [h, h, w, w]
        top, bottom, left, right = (int(c) for c in cut)
        return demo.encode(img[top : h - bottom, left : w - right], "PNG")
    if kind == "shift":
        d = int(rng.integers(2, 5))
        return demo.encode(img[d:, d:], "PNG")
    return demo.encode(demo.near_duplicate(img, kind, rng), "PNG")


def build_set(folder: Path, side: int, seed: int) -> dict[str, tuple[int, str]]:
    """Write the set into `folder`; returns file name -> (base id, transform or "base")."""
    rng = np.random.default_rng(seed)
    truth: dict[str, tuple[int, str]] = {}
    bases = distinct_bases([t for photo in photographs() for t in tiles(photo, side)])
    for i, tile in enumerate(bases):
        files = {"base": demo.encode(tile, "PNG")}
        files.update({kind: variant(tile, kind, rng) for kind in TRANSFORMS})
        for kind, data in files.items():
            name = f"{i:05d}_{kind}"
            (folder / name).write_bytes(data)
            truth[name] = (i, kind)
    return truth


def pair_metrics(pred: set[tuple[str, str]], truth: dict[str, tuple[int, str]],
                 kind: str | None) -> dict:
    """Precision, recall, per-pair FPR over the bases + `kind` variants (all if None)."""
    names = [k for k, (_, t) in truth.items() if kind is None or t in ("base", kind)]
    universe = set(names)
    per_base: dict[int, int] = {}
    for name in names:
        per_base[truth[name][0]] = per_base.get(truth[name][0], 0) + 1
    positives = sum(c * (c - 1) // 2 for c in per_base.values())
    negatives = len(names) * (len(names) - 1) // 2 - positives
    inside = [(a, b) for a, b in pred if a in universe and b in universe]
    tp = sum(truth[a][0] == truth[b][0] for a, b in inside)
    fp = len(inside) - tp
    return {"precision": tp / len(inside) if inside else 1.0, "recall": tp / positives,
            "fpr": fp / negatives, "tp": tp, "fp": fp}


def dedup_pairs(out: Path) -> set[tuple[str, str]]:
    pairs = set()
    for group in read_jsonl(out / "groups.jsonl"):
        members = sorted(group["members"])
        pairs.update((a, b) for i, a in enumerate(members) for b in members[i + 1 :])
    return pairs


def phash_pairs(folder: Path, names: list[str]) -> dict[int, set[tuple[str, str]]]:
    """pHash (imagehash, 64 bits) pairs at each Hamming threshold; all pairs are compared."""
    import imagehash

    names = sorted(names)
    hashes = []
    for name in names:
        with Image.open(io.BytesIO((folder / name).read_bytes())) as img:
            bits = imagehash.phash(img.convert("RGB")).hash.flatten()
        hashes.append(int("".join("1" if b else "0" for b in bits), 2))
    codes = np.array(hashes, dtype=np.uint64)
    found: dict[int, set[tuple[str, str]]] = {t: set() for t in PHASH_THRESHOLDS}
    for i in range(len(codes) - 1):
        dist = np.bitwise_count(codes[i] ^ codes[i + 1 :])
        for t in PHASH_THRESHOLDS:
            for j in np.flatnonzero(dist <= t):
                found[t].add((names[i], names[i + 1 + j]))
    return found


def table(rows: list[tuple[str, dict[str, dict]]]) -> str:
    kinds = ["all", *TRANSFORMS]
    lines = ["| method | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for label, metrics in rows:
        cells = [f"P {m['precision']:.3f} / R {m['recall']:.2f} / FPR {m['fpr']:.1e}"
                 for m in (metrics[k] for k in kinds)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate(pred: set[tuple[str, str]], truth: dict) -> dict[str, dict]:
    return {k: pair_metrics(pred, truth, None if k == "all" else k) for k in ["all", *TRANSFORMS]}


def compare(ours: dict[str, dict], phash: dict[int, dict[str, dict]], label: str) -> list[str]:
    """Per transform: pHash's best recall at a precision at least ours, against our recall."""
    lines = []
    for kind in ["all", *TRANSFORMS]:
        mine = ours[kind]
        ok = [(m[kind]["recall"], t) for t, m in phash.items()
              if m[kind]["precision"] >= mine["precision"]]
        best, at = max(ok) if ok else (0.0, None)
        verdict = "higher" if mine["recall"] > best else "NOT higher"
        where = f"pHash <= {at}" if at is not None else "no pHash threshold"
        lines.append(f"- {label}, {kind}: recall {mine['recall']:.3f} vs {best:.3f} "
                     f"({where} at precision >= {mine['precision']:.3f}): {verdict}")
    return lines


def compare_global(ours: dict[str, dict], phash: dict[int, dict[str, dict]],
                   label: str) -> list[str]:
    """pHash at its largest threshold whose precision over the whole set is at least ours.

    One threshold serves every transform in a real run, so this is the comparison that matters
    at scale (`compare` lets pHash pick a threshold per transform, after seeing the answers).
    """
    ok = [t for t, m in phash.items() if m["all"]["precision"] >= ours["all"]["precision"]]
    if not ok:
        return [f"- {label}: no pHash threshold reaches precision {ours['all']['precision']:.3f}"]
    at = max(ok)
    cells = ", ".join(f"{k} {ours[k]['recall']:.2f} vs {phash[at][k]['recall']:.2f}"
                      for k in ["all", *TRANSFORMS])
    return [f"- {label} vs pHash <= {at} (whole-set precision {ours['all']['precision']:.3f} vs "
            f"{phash[at]['all']['precision']:.3f}, false pairs {ours['all']['fp']} vs "
            f"{phash[at]['all']['fp']}), recall: {cells}"]


@click.command()
@click.option("--tile", default=96, show_default=True, help="Side of the base tiles (px).")
@click.option("--radii", default="0,1,2", show_default=True, help="Radii to evaluate.")
@click.option("--epochs", default=DEFAULT_EPOCHS, show_default=True)
@click.option("--noise", default=DEFAULT_NOISE, show_default=True)
@click.option("--code-noise", default=DEFAULT_CODE_NOISE, show_default=True)
@click.option("--min-steps", default=DEFAULT_MIN_STEPS, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the set and outputs here (default: a temporary folder).")
def main(tile: int, radii: str, epochs: int, noise: float, code_noise: float, min_steps: int,
         seed: int, workdir: Path | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = workdir or Path(tmp)
        folder = root / "set"
        folder.mkdir(parents=True, exist_ok=True)
        truth = build_set(folder, tile, seed)
        n_bases = len({b for b, _ in truth.values()})
        rows = []
        model = None
        ours = {}
        for radius in (int(r) for r in radii.split(",")):
            out = root / f"dedup_r{radius}"
            summary = dedup([folder], out, model=model, radius=radius, epochs=epochs,
                            min_steps=min_steps, noise=noise, code_noise=code_noise, seed=seed,
                            overwrite=True, progress=False)
            model = model or out / "autoencoder.pt"
            ours[radius] = evaluate(dedup_pairs(out), truth)
            default = " (default)" if radius == DEFAULT_RADIUS else ""
            rows.append((f"semantic hash, radius {radius}{default}", ours[radius]))
            usage = summary["bit_usage"]
        phash = {t: evaluate(pairs, truth) for t, pairs in phash_pairs(folder, list(truth)).items()}
        rows += [(f"pHash, Hamming <= {t}", m) for t, m in phash.items()]
    print(f"{len(truth)} images: {n_bases} base tiles of {tile} px from "
          f"{len(SKIMAGE) + len(SKLEARN)} photographs + {len(TRANSFORMS)} variants each; "
          f"hash trained {summary['model_info']['epochs']} epochs (min steps {min_steps}), "
          f"noise {noise}, code noise {code_noise}, seed {seed}; "
          f"bits ever on {usage['ever_on']}/128, "
          f"always on {usage['always_on']}, distinct codes {usage['distinct_codes']}\n")
    print("Cells: pairwise precision / recall / per-pair false-positive rate.\n")
    print(table(rows))
    print()
    print("Per transform, pHash at its best threshold for that transform:")
    for radius, metrics in ours.items():
        print("\n".join(compare(metrics, phash, f"radius {radius}")))
    print("\nOne pHash threshold for the whole set, at whole-set precision at least ours:")
    for radius, metrics in ours.items():
        print("\n".join(compare_global(metrics, phash, f"radius {radius}")))


if __name__ == "__main__":
    main()
