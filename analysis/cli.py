"""`analysis`: look inside a trained DCGAN (paper section 6) and check it for memorization.

Parse, call the analysis's Python function (same defaults), print one summary line. User errors
(missing checkpoint, shards of another image size, an empty boxes file, a finished analysis in
--out without --overwrite, an unknown --device) end with a one-line message and exit code 1,
never a traceback.
"""

from __future__ import annotations

import math
from pathlib import Path

import click

from core.cli import (
    SEED,
    device_option,
    out_dir_option,
    overwrite_option,
    progress_option,
    run,
    user_errors,
)
from gan.cli_options import bn_option, ckpt_option


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Analyses of a trained DCGAN: annotate (draw window boxes in a browser) and
    remove-windows (paper 6.3.1), guided-backprop (6.2), classify (D's features + a linear SVM,
    5.1), memorization (nearest neighbours and Meehan et al.'s data-copying test)."""


@main.command("remove-windows")
@ckpt_option
@click.option("--boxes", required=True, type=click.Path(path_type=Path),
              help='JSON: {"z": "z.npy", "samples": [{"index": 0, "boxes": [[x0, y0, x1, y1]]}]}; '
                   "z from `gan sample --save-z` (relative to the JSON's folder), boxes in "
                   "output-image pixels; unlisted samples are not used.")
@out_dir_option
@click.option("--layer", default=None,
              help="G layer to read and drop, by output side: 4x4, 8x8, 16x16, 32x32 (64x64 "
                   "images; up to 64x64 for 128x128). Default: the paper's \"second highest\", "
                   "8x8.")
@click.option("--negatives", type=click.IntRange(min=1), default=None,
              help="Random cells outside the boxes used as negatives. Default: as many as "
                   "there are positive cells.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seed for the negatives and the held-out split.")
@bn_option("With 'batch', the BatchNorm after the dropped layer renormalizes.")
@click.option("--show", type=click.IntRange(min=1), default=16, show_default=True,
              help="Samples in comparison.png (the first ones of z).")
@device_option
@progress_option
@overwrite_option
@user_errors
def remove_windows(ckpt, boxes, out, layer, negatives, seed, bn, show, device, progress,
                   overwrite):
    """Find G's "window" feature maps from hand-drawn boxes (logistic regression on the layer's
    per-cell activations; maps with weight > 0 are dropped) and sample the same z without them.

    Writes OUT/comparison.png (top row: original, bottom: maps dropped), window_mask.npy and
    window_mask.json (dropped channel ids), report.json (held-out accuracy and AUC)."""
    from analysis.windows import remove_windows as run

    r = run(ckpt, boxes, out, layer=layer, negatives=negatives, seed=seed, bn=bn, show=show,
            device=device, progress=progress, overwrite=overwrite)
    click.echo(f"dropped {r['dropped']} of {r['channels']} maps at {r['layer']} "
               f"(held-out accuracy {r['heldout_accuracy']:.3f}, AUC {r['heldout_auc']:.3f}, "
               f"BatchNorm {bn} statistics); comparison in {out / 'comparison.png'}")


@main.command()
@ckpt_option
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Annotation folder, new or empty (then created) or an earlier annotation "
                   "(then resumed, on its own z.npy): z.npy, samples/, boxes.json.")
@click.option("--n", type=click.IntRange(min=1), default=None,
              help="Samples to draw for a new annotation.  [default: 150]")
@click.option("--z", "z_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Annotate these z's (e.g. from `gan sample --save-z`) instead of drawing new "
                   "ones; copied to OUT/z.npy.")
@click.option("--seed", type=SEED, default=None,
              help="Seed of the z's drawn for a new annotation.  [default: 0]")
@bn_option("Use the same mode for remove-windows.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port on 127.0.0.1 (0 = a free one).")
@click.option("--scale", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Pixels on screen per sample pixel (nearest neighbour).")
@click.option("--label", default="window", show_default=True,
              help="What to box (the page's instructions).")
@device_option
@user_errors
def annotate(ckpt, out, n, z_path, seed, bn, port, scale, label, device):
    """Draw the boxes remove-windows reads, in a browser: samples G, serves a page on
    127.0.0.1 and saves every change to OUT/boxes.json at once. Runs until the page's Done
    button or Ctrl-C; reopening OUT resumes."""
    from analysis.annotate import annotate as start

    server = start(ckpt, out, n=n, z=z_path, seed=seed, bn=bn, port=port, scale=scale,
                   label=label, device=device)
    a = server.annotation
    try:  # from here on, Ctrl-C or SIGTERM is the ordinary way to finish
        resumed = a.summary()
        click.echo(f"annotating {a.count} samples at {server.url} (boxes saved to {a.path} as "
                   f"you draw; {resumed['seen']} seen, {resumed['boxed']} with boxes so far); "
                   "Done in the page or Ctrl-C to finish")
        server.done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    s = a.summary()
    click.echo(f"{s['seen']} images seen, {s['boxed']} with boxes, {s['boxes']} boxes -> "
               f"{a.path}")


@main.command("guided-backprop")
@ckpt_option
@click.option("--data", required=True,
              help="Image shards to pick the top images from (at the checkpoint's image size).")
@out_dir_option
@click.option("--layer", default="last", show_default=True,
              help="D layer by output side (32x32, 16x16, 8x8, 4x4 for 64x64 images) or "
                   "'last' (D's last conv layer, as the paper).")
@click.option("--features", default="0-5", show_default=True,
              help="Features of the layer: a range and/or ids, e.g. 0-5 or 0,3,7.")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True,
              help="Images per feature, by maximal response.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Scan only the first N images (default: all).")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seed of the randomly initialized baseline D.")
@device_option
@progress_option
@overwrite_option
@user_errors
def guided_backprop(ckpt, data, out, layer, features, top, limit, seed, device, progress,
                    overwrite):
    """Guided backpropagation of D's maximal feature responses, beside a random-filter baseline
    (paper Fig. 5). Writes OUT/guided_backprop.png (random left, trained right),
    trained_filters.png, random_filters.png, top_images.png and report.json."""
    from analysis.guided_backprop import guided_backprop as run

    r = run(ckpt, data, out, layer=layer, features=features, top=top, limit=limit, seed=seed,
            device=device, progress=progress, overwrite=overwrite)
    click.echo(f"guided backprop of {len(r['features'])} features of D's {r['layer']} layer, "
               f"top {top} images each; panels in {out / 'guided_backprop.png'}")


@main.command()
@ckpt_option
@click.option("--train", "train_shards", required=True, help="The training shards.")
@click.option("--holdout", required=True,
              help="Real images G never saw, from the same distribution (at most --n are used).")
@out_dir_option
@click.option("--n", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Generated samples.")
@click.option("--space", type=click.Choice(["pixels", "disc"]), default="pixels",
              show_default=True,
              help="Embedding: pixels at 32x32, or D's last conv layer features.")
@click.option("--k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Nearest training images per sample (shown and in distances.csv).")
@click.option("--cells", type=click.IntRange(min=1), default=20, show_default=True,
              help="k-means cells for the data-copying statistic C_T.")
@click.option("--min-gen", type=click.IntRange(min=1), default=20, show_default=True,
              help="Generated samples a cell needs to enter C_T.")
@click.option("--search", type=click.Choice(["flat", "ivf"]), default="flat", show_default=True,
              help="flat: exact, one streaming pass; ivf: inverted-file candidates with exact "
                   "re-ranking (two passes), for millions of training images.")
@bn_option()
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seed for the generated z and the k-means cells.")
@device_option
@progress_option
@overwrite_option
@user_errors
def memorization(ckpt, train_shards, holdout, out, n, space, k, cells, min_gen, search, bn,
                 seed, device, progress, overwrite):
    """Is G copying its training set? Nearest training images of generated and held-out
    images, and Meehan et al. (2020)'s C_T (strongly negative = copying). Writes
    OUT/neighbours.png, distances.png, distances.csv, report.json."""
    from analysis.memorization import memorization as run

    r = run(ckpt, train_shards, holdout, out, n=n, space=space, k=k, cells=cells,
            min_gen=min_gen, search=search, bn=bn, seed=seed, device=device,
            progress=progress, overwrite=overwrite)
    for warning in r["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{r['verdict']}; {r['generated']} generated, {r['holdout']} held-out vs "
               f"{r['train']} training images; report in {out / 'report.json'}")


def _c_value(_ctx, _param, value: str) -> float | str:
    """--C: "auto" or a finite number > 0 (what its help says)."""
    if value == "auto":
        return value
    try:
        c = float(value)
    except ValueError:
        c = float("nan")
    if not (math.isfinite(c) and c > 0):
        raise click.BadParameter(f"{value!r} is neither 'auto' nor a finite number > 0")
    return c


@main.command()
@ckpt_option
@click.option("--train", "train_shards", required=True,
              help="Labelled shards the SVM learns from (`pipeline shards --label-from folder`).")
@click.option("--test", "test_shards", required=True,
              help="Labelled shards it is tested on, with the same classes.")
@out_dir_option
@click.option("--labels-per-class", type=click.IntRange(min=1), default=None,
              help="Train on this many random images per class (the paper's SVHN test: 100). "
                   "Default: every training image not held out for validation.")
@click.option("--validation", type=click.IntRange(min=0), default=None,
              help="Training images held out to choose C (--C auto). Default: 10,000 (the "
                   "paper's) or a fifth of the training images, whichever is fewer.")
@click.option("--C", "c", default="auto", show_default=True, callback=_c_value,
              help="SVM regularization, a number > 0 (larger = weaker), or auto: the best of "
                   "1e-4 ... 1 on the validation images.")
@click.option("--layers", default="all", show_default=True,
              help="D's conv layers whose 4x4-max-pooled maps are the features: all, or names "
                   "by output side, e.g. 16x16,8x8 or last.")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="Also fit the same SVM on raw pixels and on a freshly initialized D.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seed of the splits, the random D and the SVM's SGD.")
@device_option
@progress_option
@overwrite_option
@user_errors
def classify(ckpt, train_shards, test_shards, out, labels_per_class, validation, c, layers,
             baselines, seed, device, progress, overwrite):
    """The paper's representation test (5.1, 5.2): every conv layer of D max-pooled to 4x4 and
    concatenated, a linear L2-SVM (squared hinge) on standardized features, tested on labelled
    shards against raw pixels and a random-init D. Writes OUT/report.json, confusion.png and the
    features as float16 memory maps in OUT/features/."""
    from analysis.classify import classify as run

    r = run(ckpt, train_shards, test_shards, out, labels_per_class=labels_per_class,
            validation=validation, C=c, layers=layers, baselines=baselines, seed=seed,
            device=device, progress=progress, overwrite=overwrite)
    accuracies = ", ".join(f"{m} {v['accuracy']:.1%}" for m, v in r["methods"].items())
    counts = r["counts"]
    click.echo(f"test accuracy: {accuracies} ({r['feature_dim']:,}-d D features, C "
               f"{r['methods']['trained_D']['C']:g}; {counts['train']} training, "
               f"{counts['test']} test images); report in {out / 'report.json'}")


if __name__ == "__main__":
    run(main, "analysis")
